//! `relgraph predict`: a saved model's predictions for every entity a query selects at
//! one anchor time, written as Parquet or CSV; or, with `--server`, a serving node's
//! ([`remote`]).

pub mod remote;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampSecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use relgraph_common::pql::{self, PlanOptions};
use relgraph_common::time::format_timestamp;
use relgraph_common::{Database, pql::plan::time_range};
use relgraph_worker::model::{self, Output, TargetCode, metrics};

use std::collections::HashMap;

use relgraph_worker::model::explain::{Method, on_threads};

use crate::explain::Describer;
use crate::pql::{DataArgs, ensure_parent, entity_rows, plan_query};
use crate::train::{load_model, set_threads};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Parquet,
    Csv,
}

/// `--explain` on `predict`: add each entity's explanation as columns.
#[derive(Clone, Copy, Debug)]
pub struct ExplainOptions {
    pub method: Method,
    pub top: usize,
}

pub fn run(
    query: &str,
    model_dir: &Path,
    data: &DataArgs,
    out: &Path,
    format: Format,
    threads: Option<usize>,
    explain: Option<ExplainOptions>,
) -> Result<()> {
    set_threads(threads);
    let db = Database::load(data.dir()?, data.schema.as_deref())?;
    let (model, prepared, trained) = load_model(model_dir, &db)?;
    let anchor = anchor_of(&db, data)?;
    let plan = plan_query(
        &db,
        query,
        &PlanOptions {
            step: None,
            anchors: vec![anchor],
        },
    )?;
    let (entities, batch) = predictions(&db, &trained, &plan, &model, &prepared, anchor, explain)?;
    ensure_parent(out)?;
    match format {
        Format::Parquet => {
            let file = std::fs::File::create(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)?;
            writer.write(&batch)?;
            writer.close()?;
        }
        Format::Csv => write_csv(&batch, out)?,
    }
    println!(
        "scored {} entities at {} -> {} ({} rows)",
        entities,
        format_timestamp(anchor),
        out.display(),
        batch.num_rows()
    );
    Ok(())
}

/// The anchor time `--anchor` names (once), or the data's last timestamp.
pub fn anchor_of(db: &Database, data: &DataArgs) -> Result<i64> {
    match data.anchor.as_slice() {
        [] => {
            last_timestamp(db).ok_or_else(|| anyhow!("the data holds no timestamps: give --anchor"))
        }
        [one] => relgraph_common::time::parse_timestamp(one)
            .ok_or_else(|| anyhow!("--anchor: `{one}` is not a timestamp (YYYY-MM-DD[ HH:MM:SS])")),
        _ => bail!("predict scores one anchor time; give --anchor once"),
    }
}

/// Fails unless `plan` asks what the model (trained for `trained`) answers: it may
/// differ in WHERE and `FOR ... IN` only.
pub fn same_question(
    trained: &pql::TaskPlan,
    plan: &pql::TaskPlan,
    model: &model::Model,
) -> Result<()> {
    let (t, m) = (&plan.task, &trained.task);
    if t.task != m.task || t.target != m.target || t.entity_table != m.entity_table {
        bail!(
            "this query asks something else than the model was trained for ({}); predict may change WHERE and FOR ... IN only",
            model.manifest.query
        );
    }
    Ok(())
}

/// The data's last timestamp: where predictions look from unless told otherwise.
pub fn last_timestamp(db: &Database) -> Option<i64> {
    time_range(db, 0..db.tables.len()).map(|r| r.1)
}

/// The predictions of `model` (trained for `trained`) for the entities `plan` selects at
/// `anchor`, and how many entities that is. `plan` may differ from `trained` in WHERE
/// and `FOR ... IN` only.
pub fn predictions(
    db: &Database,
    trained: &pql::TaskPlan,
    plan: &pql::TaskPlan,
    model: &model::Model,
    prepared: &model::Prepared,
    anchor: i64,
    explain: Option<ExplainOptions>,
) -> Result<(usize, RecordBatch)> {
    same_question(trained, plan, model)?;
    let entities = entity_rows(db, plan)?;
    let (rows, output) = model::predict(model, prepared, db, plan, &entities, anchor)?;
    let keys = model::fit::keys(db, plan.task.entity_table);
    let keys: Vec<&str> = rows.iter().map(|&r| keys[r].as_str()).collect();
    let entity = &db.tables[plan.task.entity_table];
    let key_name = &entity.schema.columns[plan.task.entity_key].name;
    let batch = to_batch(key_name, &keys, anchor, &output, &model.manifest.target)?;
    let Some(options) = explain else {
        return Ok((rows.len(), batch));
    };
    let describer = Describer::new(db, model);
    let texts: Vec<(String, String)> = on_threads(&rows, |&r| {
        let e = model.explain(prepared.inputs(), r as u32, anchor, options.method)?;
        Ok((
            describer.top_columns(&e, options.top),
            describer.top_rows(&e, options.top.min(3)),
        ))
    })
    .into_iter()
    .collect::<Result<_, model::ModelError>>()?;
    let batch = add_explanations(batch, &keys, &texts)?;
    Ok((rows.len(), batch))
}

/// The schema of predictions with explanation columns (`explain`) or without.
pub fn explained_schema(schema: &SchemaRef, explain: bool) -> SchemaRef {
    if !explain {
        return schema.clone();
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| (**f).clone()).collect();
    fields.push(Field::new("top_columns", DataType::Utf8, false));
    fields.push(Field::new("top_rows", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// `batch` (predictions of the entities `keys`) with each row's entity's
/// `(top_columns, top_rows)` from `texts` (one per key) as two more columns.
pub fn add_explanations(
    batch: RecordBatch,
    keys: &[&str],
    texts: &[(String, String)],
) -> Result<RecordBatch> {
    // Output rows follow the entities in order (several per entity for rankings).
    let by_key: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let column = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| anyhow!("the key column is not text"))?;
    let entity: Vec<usize> = (0..batch.num_rows())
        .map(|i| by_key[column.value(i)])
        .collect();
    let schema = explained_schema(&batch.schema(), true);
    let mut arrays = batch.columns().to_vec();
    arrays.push(Arc::new(StringArray::from_iter_values(
        entity.iter().map(|&e| texts[e].0.as_str()),
    )));
    arrays.push(Arc::new(StringArray::from_iter_values(
        entity.iter().map(|&e| texts[e].1.as_str()),
    )));
    Ok(RecordBatch::try_new(schema, arrays)?)
}

/// The columns a model's predictions have after the entity key and `anchor_time`
/// (PQL.md §4): `prob`; `value`; `class`, `prob`; `step`, `value`; or `item`, `rank`,
/// `score` (one row per entity and item). A treatment model (counterfactual ASSUMING,
/// §7) gives `prob_with`, `prob_without`, `uplift` (`value_with`, ... for a number).
fn output_fields(code: &TargetCode, treatment: bool) -> Vec<Field> {
    let f = |name: &str, t: DataType| Field::new(name, t, false);
    if treatment {
        let kind = match code {
            TargetCode::Binary => "prob",
            _ => "value",
        };
        return vec![
            f(&format!("{kind}_with"), DataType::Float64),
            f(&format!("{kind}_without"), DataType::Float64),
            f("uplift", DataType::Float64),
        ];
    }
    match code {
        TargetCode::Binary => vec![f("prob", DataType::Float64)],
        TargetCode::Regression { .. } => vec![f("value", DataType::Float64)],
        TargetCode::Multiclass { .. } => {
            vec![f("class", DataType::Utf8), f("prob", DataType::Float64)]
        }
        TargetCode::Forecast { .. } => {
            vec![f("step", DataType::UInt32), f("value", DataType::Float64)]
        }
        TargetCode::Ranking { .. } => vec![
            f("item", DataType::Utf8),
            f("rank", DataType::UInt32),
            f("score", DataType::Float64),
        ],
    }
}

/// The schema of a model's predictions, whose entity key column is `key_name`.
pub fn output_schema(key_name: &str, code: &TargetCode, treatment: bool) -> Arc<Schema> {
    let mut fields = vec![
        Field::new(key_name, DataType::Utf8, false),
        Field::new(
            "anchor_time",
            DataType::Timestamp(TimeUnit::Second, None),
            false,
        ),
    ];
    fields.extend(output_fields(code, treatment));
    Arc::new(Schema::new(fields))
}

/// The predictions `output` for the entities `keys` at `anchor`, as one batch of
/// [`output_schema`].
pub fn to_batch(
    key_name: &str,
    keys: &[&str],
    anchor: i64,
    output: &Output,
    code: &TargetCode,
) -> Result<RecordBatch> {
    // Rows of the output: (entity position, extra columns).
    let mut entity_of: Vec<usize> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    match (output, code) {
        (Output::Uplift { with, without }, _) => {
            entity_of.extend(0..keys.len());
            let uplift: Vec<f64> = with.iter().zip(without).map(|(a, b)| a - b).collect();
            columns.push(Arc::new(Float64Array::from(with.clone())));
            columns.push(Arc::new(Float64Array::from(without.clone())));
            columns.push(Arc::new(Float64Array::from(uplift)));
        }
        (Output::Probs(p), _) => {
            entity_of.extend(0..keys.len());
            columns.push(Arc::new(Float64Array::from(p.clone())));
        }
        (Output::Values(v), _) => {
            entity_of.extend(0..keys.len());
            columns.push(Arc::new(Float64Array::from(v.clone())));
        }
        (Output::Classes(p), TargetCode::Multiclass { classes }) => {
            entity_of.extend(0..keys.len());
            let best: Vec<usize> = p.iter().map(|q| metrics::argmax(q)).collect();
            let names = StringArray::from_iter_values(
                best.iter()
                    .map(|&c| classes.get(c).map_or("", String::as_str)),
            );
            let probs = Float64Array::from_iter_values(best.iter().zip(p).map(|(&c, q)| q[c]));
            columns.push(Arc::new(names));
            columns.push(Arc::new(probs));
        }
        (Output::Series(s), _) => {
            let (mut steps, mut values) = (Vec::new(), Vec::new());
            for (e, series) in s.iter().enumerate() {
                for (k, v) in series.iter().enumerate() {
                    entity_of.push(e);
                    steps.push(k as u32 + 1);
                    values.push(*v);
                }
            }
            columns.push(Arc::new(UInt32Array::from(steps)));
            columns.push(Arc::new(Float64Array::from(values)));
        }
        (Output::Ranked(ranked, scores), TargetCode::Ranking { items, .. }) => {
            let (mut item, mut rank, mut score) = (Vec::new(), Vec::new(), Vec::new());
            for (e, (r, s)) in ranked.iter().zip(scores).enumerate() {
                for (k, (&i, &v)) in r.top.iter().zip(s).enumerate() {
                    entity_of.push(e);
                    item.push(items[i as usize].clone());
                    rank.push(k as u32 + 1);
                    score.push(v);
                }
            }
            columns.push(Arc::new(StringArray::from(item)));
            columns.push(Arc::new(UInt32Array::from(rank)));
            columns.push(Arc::new(Float64Array::from(score)));
        }
        _ => bail!("the model's output does not match its task"),
    }
    let key: ArrayRef = Arc::new(StringArray::from_iter_values(
        entity_of.iter().map(|&e| keys[e]),
    ));
    let anchors: ArrayRef = Arc::new(TimestampSecondArray::from(vec![anchor; entity_of.len()]));
    let mut arrays = vec![key, anchors];
    arrays.extend(columns);
    let treatment = matches!(output, Output::Uplift { .. });
    Ok(RecordBatch::try_new(
        output_schema(key_name, code, treatment),
        arrays,
    )?)
}

/// One cell as text.
fn cell(column: &ArrayRef, r: usize) -> String {
    let any = column.as_any();
    if let Some(s) = any.downcast_ref::<StringArray>() {
        s.value(r).to_string()
    } else if let Some(f) = any.downcast_ref::<Float64Array>() {
        f.value(r).to_string()
    } else if let Some(u) = any.downcast_ref::<UInt32Array>() {
        u.value(r).to_string()
    } else if let Some(t) = any.downcast_ref::<TimestampSecondArray>() {
        format_timestamp(t.value(r))
    } else {
        String::new()
    }
}

fn write_csv(batch: &RecordBatch, out: &Path) -> Result<()> {
    let mut w =
        csv::Writer::from_path(out).with_context(|| format!("cannot create {}", out.display()))?;
    let names: Vec<&str> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    w.write_record(&names)?;
    for r in 0..batch.num_rows() {
        w.write_record(batch.columns().iter().map(|c| cell(c, r)))?;
    }
    w.flush()?;
    Ok(())
}

/// The first `n` rows as an aligned text table (numbers to 4 decimals).
pub fn preview(batch: &RecordBatch, n: usize) -> String {
    let schema = batch.schema();
    let mut rows: Vec<Vec<String>> =
        vec![schema.fields().iter().map(|f| f.name().clone()).collect()];
    for r in 0..batch.num_rows().min(n) {
        rows.push(
            batch
                .columns()
                .iter()
                .map(|c| match c.as_any().downcast_ref::<Float64Array>() {
                    Some(f) => format!("{:.4}", f.value(r)),
                    None => cell(c, r),
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str("    ");
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
