//! The whole loop for one PQL task: labels in, a trained model and an honest report out
//! ([`fit`]); the same scoring of a saved model against its stored splits
//! ([`assess`]); and the entities and anchors a prediction scores ([`predict`]).

use std::collections::HashMap;

use rayon::prelude::*;
use relgraph_common::Database;
use relgraph_common::pql::bound::{Target, TaskType};
use relgraph_common::pql::{Split, TaskPlan};
use serde::Serialize;

use super::checkpoint::{FORMAT, Manifest, StoredSplits, VERSION};
use super::config::TrainConfig;
use super::explain::Method;
use super::features::{EncoderOptions, TableCode};
use super::metrics::{self, Metrics};
use super::task::{self, Output, TargetCode, Targets};
use super::trainer::{
    self, Examples, GraphSplit, Model, ModelError, Prepared, Session, Together, TrainReport,
};
use crate::label::{self, Labels, LocalFacts, key_text, value_at};

/// One split's metrics, the model's and the best baseline's.
#[derive(Clone, Debug, Serialize)]
pub struct Assessment {
    pub task_type: String,
    pub metrics: SplitMetrics,
    pub baseline: BaselineMetrics,
    pub examples: ExampleCounts,
    /// Global column importance: each column's mean absolute share of the explanations
    /// of a sample of validation examples (gradient x input), largest first.
    pub importance: Vec<ColumnImportance>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ColumnImportance {
    pub table: String,
    pub column: String,
    /// Percent.
    pub share: f64,
}

/// Validation examples whose explanations make the global column importance.
const IMPORTANCE_SAMPLE: usize = 256;

#[derive(Clone, Debug, Default, Serialize)]
pub struct SplitMetrics {
    pub val: Metrics,
    pub test: Metrics,
}

#[derive(Clone, Debug, Serialize)]
pub struct BaselineMetrics {
    pub name: String,
    pub val: Metrics,
    pub test: Metrics,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ExampleCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// The keys of a table's rows, as text.
pub fn keys(db: &Database, table: usize) -> Vec<String> {
    let t = &db.tables[table];
    let Some(pk) = t
        .schema
        .primary_key
        .as_ref()
        .and_then(|k| t.schema.column_index(k))
    else {
        return (0..t.num_rows()).map(|r| r.to_string()).collect();
    };
    let dtype = t.schema.columns[pk].dtype;
    (0..t.num_rows())
        .map(|r| key_text(&value_at(t.batch.column(pk), dtype, r)))
        .collect()
}

/// For each of a model's item keys, the data's row with that key (`u32::MAX` if none).
pub fn item_rows(db: &Database, code: &TargetCode) -> Vec<u32> {
    let TargetCode::Ranking { table, items, .. } = code else {
        return Vec::new();
    };
    let Some(t) = db.tables.iter().position(|x| x.name() == table) else {
        return vec![u32::MAX; items.len()];
    };
    rows_of_keys(&keys(db, t), items)
}

/// The row (in `keys`' order) of each of `items` (`u32::MAX` if gone).
fn rows_of_keys(keys: &[String], items: &[String]) -> Vec<u32> {
    let index: HashMap<&str, u32> = keys
        .iter()
        .enumerate()
        .map(|(r, k)| (k.as_str(), r as u32))
        .collect();
    items
        .iter()
        .map(|k| index.get(k.as_str()).copied().unwrap_or(u32::MAX))
        .collect()
}

pub fn split_examples(labels: &Labels, targets: &Targets, split: Split) -> (Examples, Vec<usize>) {
    let idx: Vec<usize> = (0..labels.len())
        .filter(|&i| labels.splits[i] == split)
        .collect();
    let examples = Examples {
        rows: idx.iter().map(|&i| labels.entities[i] as u32).collect(),
        anchors: idx.iter().map(|&i| labels.anchors[i]).collect(),
        targets: targets.select(&idx),
        treated: if labels.treated.is_empty() {
            Vec::new()
        } else {
            idx.iter().map(|&i| labels.treated[i]).collect()
        },
    };
    (examples, idx)
}

/// Trains a model for `plan` on `labels`, then scores it and the baselines on the
/// validation and test splits.
pub fn fit(
    db: &Database,
    query: &str,
    plan: &TaskPlan,
    labels: &Labels,
    config: &TrainConfig,
    session: Session<'_>,
) -> Result<(Model, Prepared, Assessment, TrainReport), ModelError> {
    let Setup {
        mut model,
        data,
        train,
        val,
    } = setup(db, query, plan, labels, config, session.split)?;
    let past = PastValues::of(db, plan, labels)?;
    let (group, split) = (session.group, session.split);
    let report = trainer::train(&mut model, &data, &train, &val, session)?;
    let together = group.map(|group| Together { group, split });
    let metrics = split_metrics(&model, &data, labels, together.as_ref())?;
    let assessment = assess(&model, &data, plan, labels, &past, metrics)?;
    Ok((model, data, assessment, report))
}

/// The model's metrics on the validation and test examples of `labels`, for
/// [`assess`]. With `together`, every worker of the group calls this and they score the
/// examples together ([`Model::evaluate_together`]).
pub fn split_metrics(
    model: &Model,
    data: &Prepared,
    labels: &Labels,
    together: Option<&Together<'_>>,
) -> Result<[Metrics; 2], ModelError> {
    let targets = model.manifest.target.targets(&labels.labels)?;
    let metrics = |split: Split| {
        let (examples, _) = split_examples(labels, &targets, split);
        match together {
            Some(t) => model.evaluate_together(data, &examples, t),
            None => model.evaluate(data, &examples),
        }
    };
    Ok([metrics(Split::Val)?, metrics(Split::Test)?])
}

/// What assessing a model reads of the raw rows: each validation and test example's
/// value of the target over the window before its anchor (for the baselines that carry
/// it forward), so that the rows need not be kept until then.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PastValues {
    val: Vec<Option<f64>>,
    test: Vec<Option<f64>>,
}

impl PastValues {
    pub fn of(db: &Database, plan: &TaskPlan, labels: &Labels) -> Result<Self, ModelError> {
        let of = |split: Split| {
            let (rows, anchors): (Vec<usize>, Vec<i64>) = (0..labels.len())
                .filter(|&i| labels.splits[i] == split)
                .map(|i| (labels.entities[i], labels.anchors[i]))
                .unzip();
            label::past_values(plan, db, (&rows, &anchors), &LocalFacts { db })
                .map_err(|e| ModelError::Mismatch(e.to_string()))
        };
        Ok(PastValues {
            val: of(Split::Val)?,
            test: of(Split::Test)?,
        })
    }
}

/// A model ready to train, and all it trains on: nothing in it refers to the database
/// it came from.
#[derive(Debug)]
pub struct Setup {
    pub model: Model,
    pub data: Prepared,
    pub train: Examples,
    pub val: Examples,
}

/// Fits the column encoders and the target's code, prepares the graph and the encoded
/// rows (with `split`, this worker's part), and initializes a model for `plan`.
pub fn setup(
    db: &Database,
    query: &str,
    plan: &TaskPlan,
    labels: &Labels,
    config: &TrainConfig,
    split: Option<&dyn GraphSplit>,
) -> Result<Setup, ModelError> {
    config.check()?;
    let codes = fit_codes(db, plan, config)?;
    let data = Prepared::new(db, &codes, split)?;
    let rows = Rows::of(db, plan);
    setup_with(query, plan, labels, config, (codes, data), &rows)
}

/// What [`setup_with`] reads of the rows besides the prepared graph: the entity table's
/// name and, for a ranking, the item table's name and keys (row order).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rows {
    pub entity_table: String,
    pub items: Option<(String, Vec<String>)>,
}

impl Rows {
    pub fn of(db: &Database, plan: &TaskPlan) -> Rows {
        Rows {
            entity_table: db.tables[plan.task.entity_table].name().to_string(),
            items: match plan.task.task {
                TaskType::Ranking { items, .. } => {
                    Some((db.tables[items].name().to_string(), keys(db, items)))
                }
                _ => None,
            },
        }
    }
}

/// The encoders of `db`'s tables for `plan`: every column but the target's.
pub fn fit_codes(
    db: &Database,
    plan: &TaskPlan,
    config: &TrainConfig,
) -> Result<Vec<TableCode>, ModelError> {
    let options = EncoderOptions {
        max_vocab: config.max_vocab,
        text_buckets: config.text_buckets,
    };
    let target_column = match &plan.task.target {
        Target::Column(c, _) => Some(*c),
        _ => None,
    };
    (0..db.tables.len())
        .into_par_iter()
        .map(|t| {
            let skip: Vec<usize> = target_column
                .filter(|c| c.table == t)
                .map(|c| c.column)
                .into_iter()
                .collect();
            TableCode::fit(db, t, &skip, options)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(ModelError::from)
}

/// [`setup`] from fitted encoders `codes` and the graph and encoded rows `data`
/// prepared with them.
pub fn setup_with(
    query: &str,
    plan: &TaskPlan,
    labels: &Labels,
    config: &TrainConfig,
    (codes, data): (Vec<TableCode>, Prepared),
    rows: &Rows,
) -> Result<Setup, ModelError> {
    config.check()?;
    let train_mask: Vec<bool> = labels.splits.iter().map(|&s| s == Split::Train).collect();
    let items = rows
        .items
        .as_ref()
        .map(|(name, keys)| (name.as_str(), keys.clone()));
    let target = TargetCode::fit(&plan.task.task, labels, &train_mask, items)?;
    let treatment = !labels.treated.is_empty();
    if treatment && !matches!(target, TargetCode::Binary | TargetCode::Regression { .. }) {
        return Err(ModelError::Mismatch(format!(
            "counterfactual ASSUMING needs a yes/no or numeric target (uplift of a probability or a value), not a {} task; use the conditional reading",
            plan.task.task.name()
        )));
    }
    let splits = StoredSplits::of(&plan.splits).ok_or_else(|| {
        ModelError::Mismatch("training needs split anchors, not given ones".into())
    })?;
    let manifest = Manifest {
        format: FORMAT.to_string(),
        version: VERSION,
        query: query.to_string(),
        task: plan.task.task.name().to_string(),
        entity_table: rows.entity_table.clone(),
        tables: data.graph.tables.clone(),
        edge_types: data
            .graph
            .edge_types
            .iter()
            .map(|e| e.name.clone())
            .collect(),
        config: config.clone(),
        treatment,
        codes,
        target,
        splits,
        params: Vec::new(),
        checksum: String::new(),
        report: serde_json::Value::Null,
    };
    let item_rows = match (&manifest.target, &rows.items) {
        (TargetCode::Ranking { items, .. }, Some((_, keys))) => rows_of_keys(keys, items),
        _ => Vec::new(),
    };
    let model = trainer::init(manifest, &data, item_rows);
    let targets = model.manifest.target.targets(&labels.labels)?;
    let (train, _) = split_examples(labels, &targets, Split::Train);
    let (val, _) = split_examples(labels, &targets, Split::Val);
    Ok(Setup {
        model,
        data,
        train,
        val,
    })
}

/// The model's metrics (`metrics`, of [`split_metrics`]: validation, test) beside the
/// baselines' on the validation and test examples of `labels`; the baseline shown is
/// the one best on validation.
pub fn assess(
    model: &Model,
    data: &Prepared,
    plan: &TaskPlan,
    labels: &Labels,
    past: &PastValues,
    metrics: [Metrics; 2],
) -> Result<Assessment, ModelError> {
    let [val_metrics, test_metrics] = metrics;
    let code = &model.manifest.target;
    let targets = code.targets(&labels.labels)?;
    let (train, _) = split_examples(labels, &targets, Split::Train);
    let mut out = Assessment {
        task_type: plan.task.task.name().to_string(),
        metrics: SplitMetrics::default(),
        baseline: BaselineMetrics {
            name: String::new(),
            val: Metrics::new(),
            test: Metrics::new(),
        },
        examples: ExampleCounts {
            train: train.rows.len(),
            ..ExampleCounts::default()
        },
        importance: Vec::new(),
    };
    let mut candidates: Vec<(String, Metrics, Metrics)> = Vec::new();
    for split in [Split::Val, Split::Test] {
        let (examples, idx) = split_examples(labels, &targets, split);
        let past = match split {
            Split::Val => &past.val,
            _ => &past.test,
        };
        let has_past = past.iter().any(Option::is_some);
        let baselines = match (code, &examples.targets) {
            (TargetCode::Ranking { items, .. }, Targets::Items(rel)) => {
                let order = task::popularity(items.len(), &train.targets);
                vec![task::Baseline {
                    name: "most popular items",
                    output: task::popular_output(&order, code.k(), rel),
                }]
            }
            _ => task::baselines(
                code,
                &train.targets,
                has_past.then_some(&past[..]),
                idx.len(),
            ),
        };
        for (b, baseline) in baselines.iter().enumerate() {
            let m = task::evaluate(code, &baseline.output, &examples.targets);
            if split == Split::Val {
                candidates.push((baseline.name.to_string(), m, Metrics::new()));
            } else if let Some(c) = candidates.get_mut(b) {
                c.2 = m;
            }
        }
        match split {
            Split::Val => {
                out.metrics.val = val_metrics.clone();
                out.examples.val = idx.len();
                out.importance = importance(model, data, &examples)?;
            }
            _ => {
                out.metrics.test = test_metrics.clone();
                out.examples.test = idx.len();
            }
        }
    }
    let best = candidates.into_iter().reduce(|a, b| {
        let (name, larger) = metrics::primary(&a.1);
        let (x, y) = (a.1.get(name).copied(), b.1.get(name).copied());
        let b_better = match (x, y) {
            (Some(x), Some(y)) if y.is_finite() => {
                !x.is_finite() || (larger && y > x) || (!larger && y < x)
            }
            _ => false,
        };
        if b_better { b } else { a }
    });
    if let Some((name, val, test)) = best {
        out.baseline = BaselineMetrics { name, val, test };
    }
    Ok(out)
}

/// Global column importance over an evenly spaced sample of `examples`.
fn importance(
    model: &Model,
    data: &Prepared,
    examples: &Examples,
) -> Result<Vec<ColumnImportance>, ModelError> {
    let n = examples.rows.len();
    let step = n.div_ceil(IMPORTANCE_SAMPLE).max(1);
    let pick: Vec<usize> = (0..n).step_by(step).collect();
    let rows: Vec<u32> = pick.iter().map(|&i| examples.rows[i]).collect();
    let anchors: Vec<i64> = pick.iter().map(|&i| examples.anchors[i]).collect();
    let columns = model.importance(data.inputs(), &rows, &anchors, Method::Gradient)?;
    Ok(columns
        .iter()
        .map(|c| {
            let code = &model.manifest.codes[c.table];
            ColumnImportance {
                table: code.table.clone(),
                column: code.columns[c.column].name().to_string(),
                share: c.value,
            }
        })
        .collect())
}

/// The model's output for the entities `plan` selects at `anchor` (rows of the entity
/// table), in row order.
pub fn predict(
    model: &Model,
    data: &Prepared,
    db: &Database,
    plan: &TaskPlan,
    entities: &[usize],
    anchor: i64,
) -> Result<(Vec<usize>, Output), ModelError> {
    let rows = label::select(plan, db, entities, &LocalFacts { db }, anchor)
        .map_err(|e| ModelError::Mismatch(e.to_string()))?;
    let seeds: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    let anchors = vec![anchor; seeds.len()];
    let output = model.infer(data, &seeds, &anchors, None)?;
    Ok((rows, output))
}
