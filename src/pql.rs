//! `relgraph pql check`: what a query means, its anchors and its label statistics.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use relgraph_common::Database;
use relgraph_common::pql::{self, PlanOptions, Split, TaskPlan};
use relgraph_common::time::{DAY, parse_timestamp};
use relgraph_worker::label::{LabelColumn, Labels, LocalFacts, build, build_treated};
use relgraph_worker::model::config::Assuming;
use serde_json::json;

#[derive(Debug, clap::Subcommand)]
pub enum PqlCommand {
    /// Validate and plan a query against a database; show its task, anchors and labels.
    Check {
        query: String,
        #[command(flatten)]
        data: DataArgs,
        /// How ASSUMING is read: auto, conditional or counterfactual (PQL.md §7).
        #[arg(long, default_value = "auto")]
        assuming: Assuming,
        #[arg(long)]
        json: bool,
    },
}

/// The database a query runs on and how its history is replayed.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// The database directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A schema.toml overriding inference (default: DATA/schema.toml).
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Time between anchors, e.g. `--step 7 days` (default: the target window's length).
    #[arg(long, num_args = 2, value_names = ["N", "UNIT"])]
    pub step: Option<Vec<String>>,
    /// Explicit anchor time(s) to label (split `predict`), e.g. `--anchor 2025-06-01`.
    #[arg(long)]
    pub anchor: Vec<String>,
}

impl DataArgs {
    /// The database directory (`--data`), which every command but `predict --server`
    /// needs.
    pub fn dir(&self) -> Result<&Path> {
        self.data
            .as_deref()
            .ok_or_else(|| anyhow!("--data DIR is required: the database directory"))
    }

    pub fn options(&self) -> Result<PlanOptions> {
        let step = match &self.step {
            Some(v) if v.len() == 2 => {
                let n: f64 = v[0]
                    .parse()
                    .map_err(|_| anyhow!("--step: `{}` is not a number", v[0]))?;
                let unit = pql::ast::TimeUnit::from_name(&v[1]).ok_or_else(|| {
                    anyhow!(
                        "--step: unknown unit `{}` (seconds, minutes, hours, days, weeks, months)",
                        v[1]
                    )
                })?;
                Some((n * unit.seconds() as f64).round() as i64)
            }
            _ => None,
        };
        let anchors = self
            .anchor
            .iter()
            .map(|a| {
                parse_timestamp(a).ok_or_else(|| {
                    anyhow!("--anchor: `{a}` is not a timestamp (YYYY-MM-DD[ HH:MM:SS])")
                })
            })
            .collect::<Result<_>>()?;
        Ok(PlanOptions { step, anchors })
    }
}

/// Loads the data, then parses, validates and plans the query.
pub fn prepare(query: &str, data: &DataArgs) -> Result<(Database, TaskPlan)> {
    let db = Database::load(data.dir()?, data.schema.as_deref())?;
    let plan = plan_query(&db, query, &data.options()?)?;
    Ok((db, plan))
}

/// Parses, validates and plans a query over a loaded database.
pub fn plan_query(db: &Database, query: &str, options: &PlanOptions) -> Result<TaskPlan> {
    let task = pql::compile(query, &db.schema()).map_err(|e| anyhow!("{}", e.render(query)))?;
    pql::plan(task, db, options).context("cannot plan the query")
}

/// Labels of every entity (or of the ids the query names), with the query's ASSUMING
/// read as `assuming` says (PQL.md §7); the reading is reported on stderr.
pub fn label_all(db: &Database, plan: &TaskPlan, assuming: Assuming) -> Result<Labels> {
    let entities = entity_rows(db, plan)?;
    let labels = label_entities(db, plan, &entities, assuming)?;
    read_assuming(plan, labels, assuming)
}

/// The labels of `entities` (rows of the entity table), with the assumption's outcome
/// per example when ASSUMING may be read as a treatment: what [`read_assuming`] reads
/// once the labels of every entity are together.
pub fn label_entities(
    db: &Database,
    plan: &TaskPlan,
    entities: &[usize],
    assuming: Assuming,
) -> Result<Labels> {
    let facts = LocalFacts { db };
    if !maybe_treatment(plan, assuming) {
        return Ok(build(plan, db, entities, &facts)?);
    }
    Ok(build_treated(plan, db, entities, &facts)?)
}

/// Whether the query's ASSUMING may be read as a treatment.
fn maybe_treatment(plan: &TaskPlan, assuming: Assuming) -> bool {
    plan.task.assuming.is_some() && assuming != Assuming::Conditional
}

/// Reads the query's ASSUMING on `labels` from [`label_entities`]: as a treatment (the
/// labels as they are) or a condition (the examples where it held), as `assuming` says
/// or as the labels suggest; the reading is reported on stderr.
pub fn read_assuming(plan: &TaskPlan, labels: Labels, assuming: Assuming) -> Result<Labels> {
    if !maybe_treatment(plan, assuming) {
        return Ok(labels);
    }
    let insist = (assuming == Assuming::Counterfactual).then_some(true);
    let (labels, reading) = labels
        .read_assuming(&plan.task.task, insist)
        .map_err(|e| anyhow!("{e}"))?;
    eprintln!(
        "ASSUMING read as {}: {}",
        if reading.counterfactual {
            "a treatment (counterfactual: one model, scored with it on and off)"
        } else {
            "a condition (training on the examples where it held)"
        },
        reading.why
    );
    Ok(labels)
}

pub fn entity_rows(db: &Database, plan: &TaskPlan) -> Result<Vec<usize>> {
    let table = &db.tables[plan.task.entity_table];
    let Some(ids) = &plan.task.ids else {
        return Ok((0..table.num_rows()).collect());
    };
    let key = table.batch.column(plan.task.entity_key);
    let dtype = table.schema.columns[plan.task.entity_key].dtype;
    let index: std::collections::HashMap<String, usize> = (0..table.num_rows())
        .map(|r| {
            (
                relgraph_worker::label::key_text(&relgraph_worker::label::value_at(key, dtype, r)),
                r,
            )
        })
        .collect();
    ids.iter()
        .map(|id| {
            let text = relgraph_worker::label::key_text(id);
            index
                .get(&text)
                .copied()
                .ok_or_else(|| anyhow!("no `{}` with key {id}", table.name()))
        })
        .collect()
}

pub fn run(command: &PqlCommand) -> Result<()> {
    let PqlCommand::Check {
        query,
        data,
        assuming,
        json,
    } = command;
    let (db, plan) = prepare(query, data)?;
    let labels = label_all(&db, &plan, *assuming)?;
    if *json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&db, &plan, &labels))?
        );
    } else {
        print!("{}", check_text(&db, &plan, &labels));
    }
    Ok(())
}

/// The plan, anchors and label statistics of a query, as `pql check` prints them.
pub fn check_text(db: &Database, plan: &TaskPlan, labels: &Labels) -> String {
    format!(
        "{}{}{}",
        plan.task.describe(&db.schema()),
        plan.describe_anchors(),
        stats_text(labels)
    )
}

/// Mean and quantiles of some numbers.
fn describe_numbers(mut xs: Vec<f64>) -> serde_json::Value {
    if xs.is_empty() {
        return json!(null);
    }
    xs.sort_by(f64::total_cmp);
    let q = |p: f64| xs[((xs.len() - 1) as f64 * p).round() as usize];
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    json!({ "mean": mean, "p10": q(0.1), "p50": q(0.5), "p90": q(0.9) })
}

/// Per split: the number of examples and what their labels look like.
fn split_stats(labels: &Labels, split: Split) -> serde_json::Value {
    let idx: Vec<usize> = (0..labels.len())
        .filter(|&i| labels.splits[i] == split)
        .collect();
    let mut out = json!({ "examples": idx.len() });
    if !labels.treated.is_empty() {
        let treated = idx.iter().filter(|&&i| labels.treated[i]).count();
        out["treated_rate"] = json!(treated as f64 / idx.len().max(1) as f64);
    }
    match &labels.labels {
        LabelColumn::Bool(v) => {
            let positives = idx.iter().filter(|&&i| v[i]).count();
            out["positive_rate"] = json!(positives as f64 / idx.len().max(1) as f64);
        }
        LabelColumn::Number(v) => {
            out["label"] = describe_numbers(idx.iter().map(|&i| v[i]).collect())
        }
        LabelColumn::Series(v) => {
            out["label"] =
                describe_numbers(idx.iter().flat_map(|&i| v[i].iter().copied()).collect())
        }
        LabelColumn::Class(v) => {
            let mut classes = std::collections::BTreeMap::<&str, u64>::new();
            for &i in &idx {
                *classes.entry(v[i].as_str()).or_default() += 1;
            }
            out["classes"] = json!(classes);
        }
        LabelColumn::Items(v) => {
            let items: usize = idx.iter().map(|&i| v[i].len()).sum();
            out["mean_items"] = json!(items as f64 / idx.len().max(1) as f64);
        }
        LabelColumn::Empty => {}
    }
    out
}

fn to_json(db: &Database, plan: &TaskPlan, labels: &Labels) -> serde_json::Value {
    let schema = db.schema();
    let task = &plan.task;
    let mut splits = serde_json::Map::new();
    for s in Split::ALL {
        if labels.splits.contains(&s) {
            splits.insert(s.as_str().to_string(), split_stats(labels, s));
        }
    }
    let anchors: Vec<_> = plan
        .anchors()
        .iter()
        .map(|(t, s)| {
            let split = s.map_or("per entity", Split::as_str);
            json!({ "time": relgraph_common::time::format_timestamp(*t), "split": split })
        })
        .collect();
    let entity = &schema.tables[task.entity_table];
    json!({
        "mode": format!("{:?}", task.mode).to_lowercase(),
        "task": task.task.name(),
        "loss": task.task.loss(),
        "entity": format!("{}.{}", entity.name, entity.columns[task.entity_key].name),
        "plan": task.describe(&schema),
        "metrics": task.task.metrics(),
        "baseline": task.task.baseline(),
        "step_days": plan.step as f64 / DAY as f64,
        "anchors": anchors,
        "labels": splits,
        "dropped": labels.dropped,
        "notes": task.notes,
    })
}

fn stats_text(labels: &Labels) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("labels:\n");
    for s in Split::ALL {
        if labels.splits.contains(&s) {
            let _ = writeln!(out, "  {}: {}", s.as_str(), split_stats(labels, s));
        }
    }
    for (reason, n) in &labels.dropped {
        let _ = writeln!(out, "  not examples: {n} ({reason})");
    }
    out
}

/// Used by `labels` for the output path's parent check.
pub fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Ok(())
}
