//! Labels over Flight: in a data-parallel job each worker computes the labels of the
//! entities it owns and serves them to the others, which merge every worker's into the
//! labels one process would compute ([`Labels::merge`]), in the same order.
//!
//! Wire format, one `DoExchange` per call: the client sends an empty batch whose first
//! message carries the command `{"v":1,"op":"labels","job":J,"attempt":A}`; the server
//! answers one batch, an example per row: `entity` (u32, the entity table's row),
//! `anchor` (i64 seconds), `split` (utf8), `label` (bool, f64, utf8, or a list of utf8
//! or of f64, by task) and, for a counterfactual ASSUMING, `treated` (bool); the schema's
//! metadata `dropped` holds the candidate examples left out, by reason (JSON), and
//! `complete` is `true` when the batch holds every entity's labels, merged and ASSUMING
//! read (a worker whose store kept them from an earlier attempt), not only the server's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use relgraph_common::pql::Split;
use relgraph_worker::label::{LabelColumn, Labels, drop};

use super::flight::column;
use crate::labels::label_column;

/// `labels` as one record batch, marked `complete` or not.
pub fn encode(labels: &Labels, complete: bool) -> Result<RecordBatch, String> {
    let label = label_column(&labels.labels);
    let mut fields = vec![
        Field::new("entity", DataType::UInt32, false),
        Field::new("anchor", DataType::Int64, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("label", label.data_type().clone(), true),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(
            labels.entities.iter().map(|&e| e as u32),
        )),
        Arc::new(Int64Array::from(labels.anchors.clone())),
        Arc::new(StringArray::from_iter_values(
            labels.splits.iter().map(|s| s.as_str()),
        )),
        label,
    ];
    if !labels.treated.is_empty() {
        fields.push(Field::new("treated", DataType::Boolean, false));
        columns.push(Arc::new(BooleanArray::from(labels.treated.clone())));
    }
    let dropped = serde_json::to_string(&labels.dropped).map_err(|e| e.to_string())?;
    let mut metadata = HashMap::from([("dropped".to_string(), dropped)]);
    if complete {
        metadata.insert("complete".into(), "true".into());
    }
    let schema = Schema::new(fields).with_metadata(metadata);
    RecordBatch::try_new(Arc::new(schema), columns).map_err(|e| e.to_string())
}

/// The labels in an answer's batches, and whether they are marked complete.
pub fn decode(batches: &[RecordBatch]) -> Result<(Labels, bool), String> {
    let mut out = Labels::default();
    let mut complete = false;
    for b in batches {
        complete |= b.schema().metadata().get("complete").map(String::as_str) == Some("true");
        if let Some(dropped) = b.schema().metadata().get("dropped") {
            let counts: BTreeMap<String, u64> =
                serde_json::from_str(dropped).map_err(|e| format!("`dropped`: {e}"))?;
            for (reason, n) in counts {
                let known = drop::ALL
                    .iter()
                    .find(|&&r| r == reason)
                    .ok_or_else(|| format!("unknown reason `{reason}` in `dropped`"))?;
                *out.dropped.entry(known).or_default() += n;
            }
        }
        let entity = column::<UInt32Array>(b, "entity")?;
        out.entities
            .extend(entity.values().iter().map(|&e| e as usize));
        out.anchors
            .extend_from_slice(column::<Int64Array>(b, "anchor")?.values());
        for s in column::<StringArray>(b, "split")?.iter() {
            let s = s.unwrap_or_default();
            let split = Split::ALL
                .into_iter()
                .find(|x| x.as_str() == s)
                .ok_or_else(|| format!("unknown split `{s}`"))?;
            out.splits.push(split);
        }
        if b.column_by_name("treated").is_some() {
            out.treated
                .extend(column::<BooleanArray>(b, "treated")?.values().iter());
        }
        let label = b
            .column_by_name("label")
            .ok_or("column `label` is missing")?;
        out.labels.extend(label_values(label.as_ref())?);
    }
    if out.labels.len() != out.entities.len() && !out.labels.is_empty() {
        return Err(format!(
            "{} labels for {} examples",
            out.labels.len(),
            out.entities.len()
        ));
    }
    Ok((out, complete))
}

/// A `label` column back in its [`LabelColumn`] (the inverse of [`label_column`]).
fn label_values(array: &dyn Array) -> Result<LabelColumn, String> {
    let any = array.as_any();
    let strings = |a: &dyn Array| -> Result<Vec<String>, String> {
        let s = a
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or("label items are not utf8")?;
        Ok(s.iter()
            .map(|x| x.unwrap_or_default().to_string())
            .collect())
    };
    Ok(match array.data_type() {
        DataType::Null => LabelColumn::Empty,
        DataType::Boolean => LabelColumn::Bool(
            any.downcast_ref::<BooleanArray>()
                .ok_or("bad bool labels")?
                .iter()
                .map(|x| x.unwrap_or(false))
                .collect(),
        ),
        DataType::Float64 => LabelColumn::Number(
            any.downcast_ref::<Float64Array>()
                .ok_or("bad numeric labels")?
                .values()
                .to_vec(),
        ),
        DataType::Utf8 => LabelColumn::Class(strings(array)?),
        DataType::List(item) => {
            let list = any.downcast_ref::<ListArray>().ok_or("bad list labels")?;
            let rows = (0..list.len()).map(|r| list.value(r));
            match item.data_type() {
                DataType::Utf8 => LabelColumn::Items(
                    rows.map(|v| strings(v.as_ref()))
                        .collect::<Result<_, _>>()?,
                ),
                DataType::Float64 => LabelColumn::Series(
                    rows.map(|v| {
                        v.as_any()
                            .downcast_ref::<Float64Array>()
                            .map(|f| f.values().to_vec())
                            .ok_or_else(|| "bad series labels".to_string())
                    })
                    .collect::<Result<_, _>>()?,
                ),
                other => return Err(format!("labels of lists of {other}")),
            }
        }
        other => return Err(format!("labels of type {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_label_goes_over_the_wire_and_back() {
        let kinds = [
            LabelColumn::Bool(vec![true, false]),
            LabelColumn::Number(vec![1.5, -2.0]),
            LabelColumn::Class(vec!["a".into(), "b".into()]),
            LabelColumn::Items(vec![vec!["x".into(), "y".into()], vec!["z".into()]]),
            LabelColumn::Series(vec![vec![1.0, 2.0], vec![]]),
        ];
        for (k, labels) in kinds.into_iter().enumerate() {
            let sent = Labels {
                entities: vec![3, 7],
                anchors: vec![100, 200],
                splits: vec![Split::Train, Split::Test],
                labels,
                treated: if k == 0 {
                    vec![true, false]
                } else {
                    Vec::new()
                },
                dropped: BTreeMap::from([(drop::WHERE, 4)]),
            };
            let complete = k % 2 == 1;
            let (got, marked) =
                decode(&[encode(&sent, complete).expect("encode")]).expect("decode");
            assert_eq!(marked, complete);
            assert_eq!(got.entities, sent.entities);
            assert_eq!(got.anchors, sent.anchors);
            assert_eq!(got.splits, sent.splits);
            assert_eq!(got.labels, sent.labels);
            assert_eq!(got.treated, sent.treated);
            assert_eq!(got.dropped, sent.dropped);
        }
    }
}
