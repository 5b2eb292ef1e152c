//! `relgraph labels`: the training table of a query, written to Parquet.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Float64Builder, ListBuilder, RecordBatch, StringArray,
    StringBuilder, TimestampSecondArray, UInt32Array,
};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use relgraph_common::Database;
use relgraph_worker::label::{LabelColumn, Labels};

use relgraph_worker::model::config::Assuming;

use crate::pql::{DataArgs, ensure_parent, label_all, prepare};

pub fn run(query: &str, data: &DataArgs, out: &Path, assuming: Assuming) -> Result<()> {
    let started = Instant::now();
    let (db, plan) = prepare(query, data)?;
    let loaded = started.elapsed().as_secs_f64();
    let labels = label_all(&db, &plan, assuming)?;
    let labelled = started.elapsed().as_secs_f64() - loaded;
    let batch = to_batch(&db, plan.task.entity_table, plan.task.entity_key, &labels)?;
    ensure_parent(out)?;
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    let written = started.elapsed().as_secs_f64() - loaded - labelled;
    println!("wrote {} examples to {}", labels.len(), out.display());
    println!("  load {loaded:.2} s, labels {labelled:.2} s, write {written:.2} s");
    for (reason, n) in &labels.dropped {
        println!("  not examples: {n} ({reason})");
    }
    Ok(())
}

/// The label column in its natural Arrow type.
pub(crate) fn label_column(labels: &LabelColumn) -> ArrayRef {
    match labels {
        LabelColumn::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
        LabelColumn::Number(v) => Arc::new(Float64Array::from(v.clone())),
        LabelColumn::Class(v) => Arc::new(StringArray::from_iter_values(v)),
        LabelColumn::Items(v) => {
            let mut b = ListBuilder::new(StringBuilder::new());
            for items in v {
                for item in items {
                    b.values().append_value(item);
                }
                b.append(true);
            }
            Arc::new(b.finish())
        }
        LabelColumn::Series(v) => {
            let mut b = ListBuilder::new(Float64Builder::new());
            for xs in v {
                b.values().append_slice(xs);
                b.append(true);
            }
            Arc::new(b.finish())
        }
        LabelColumn::Empty => Arc::new(arrow::array::NullArray::new(0)),
    }
}

/// Columns: the entity key under its own name, `anchor_time`, `label`, `split`, and for
/// a counterfactual ASSUMING `treated` (whether the assumption held).
pub fn to_batch(db: &Database, table: usize, key: usize, labels: &Labels) -> Result<RecordBatch> {
    let entity = &db.tables[table];
    let rows = UInt32Array::from_iter_values(labels.entities.iter().map(|&r| r as u32));
    let keys = take(entity.batch.column(key), &rows, None)?;
    let label = label_column(&labels.labels);
    let key_name = &entity.schema.columns[key].name;
    let mut fields = vec![
        Field::new(key_name, keys.data_type().clone(), true),
        Field::new(
            "anchor_time",
            DataType::Timestamp(TimeUnit::Second, None),
            false,
        ),
        Field::new("label", label.data_type().clone(), true),
        Field::new("split", DataType::Utf8, false),
    ];
    let anchors: ArrayRef = Arc::new(TimestampSecondArray::from(labels.anchors.clone()));
    let splits: ArrayRef = Arc::new(StringArray::from_iter_values(
        labels.splits.iter().map(|s| s.as_str()),
    ));
    let mut columns = vec![keys, anchors, label, splits];
    if !labels.treated.is_empty() {
        fields.push(Field::new("treated", DataType::Boolean, false));
        columns.push(Arc::new(BooleanArray::from(labels.treated.clone())));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}
