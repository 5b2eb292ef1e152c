//! `relgraph explain`: why a saved model predicts what it does for one entity, as
//! shares per table and column, and the linked rows that weighed most; and the same
//! summaries as columns of `predict --explain`.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{Result, anyhow};
use arrow::array::RecordBatch;
use relgraph_common::Database;
use relgraph_common::time::format_timestamp;
use relgraph_worker::label::{key_text, value_at};
use relgraph_worker::model::explain::{Explanation, Method, RowAttribution};
use relgraph_worker::model::{self, Output, TargetCode, metrics};
use serde_json::json;

use crate::pql::{DataArgs, plan_query};
use crate::predict::{anchor_of, same_question};
use crate::train::{load_model, set_threads};

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The query the model was trained for (WHERE and FOR ... IN may differ).
    pub query: String,
    /// The model directory (`relgraph train --out`).
    #[arg(long)]
    pub model: PathBuf,
    /// --anchor TIME: when to predict (default: the data's last timestamp).
    #[command(flatten)]
    pub data: DataArgs,
    /// The entity's key (repeat for more).
    #[arg(long, required = true)]
    pub entity: Vec<String>,
    /// `gradient` (gradient x input) or `integrated[:STEPS]` (integrated gradients).
    #[arg(long, default_value = "integrated")]
    pub method: Method,
    /// Columns and rows listed.
    #[arg(long, default_value_t = 8)]
    pub top: usize,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Names and values for an explanation: the model's columns and the data's rows.
pub struct Describer<'a> {
    db: &'a Database,
    /// Rows appended to each table of `db` after its own (serving).
    appended: &'a [Vec<RecordBatch>],
    /// Per model table: its name, its columns' names, its table in `db`, key and time
    /// column indices there.
    tables: Vec<TableInfo>,
}

struct TableInfo {
    name: String,
    columns: Vec<String>,
    table: Option<usize>,
    key: Option<usize>,
    time: Option<usize>,
}

impl<'a> Describer<'a> {
    pub fn new(db: &'a Database, model: &model::Model) -> Self {
        let tables = model
            .manifest
            .codes
            .iter()
            .map(|code| {
                let table = db.tables.iter().position(|t| t.name() == code.table);
                let schema = table.map(|t| &db.tables[t].schema);
                let index =
                    |c: Option<&String>| schema.and_then(|s| c.and_then(|c| s.column_index(c)));
                TableInfo {
                    name: code.table.clone(),
                    columns: code.columns.iter().map(|c| c.name().to_string()).collect(),
                    table,
                    key: index(schema.and_then(|s| s.primary_key.as_ref())),
                    time: index(schema.and_then(|s| s.time_column.as_ref())),
                }
            })
            .collect();
        Describer {
            db,
            appended: &[],
            tables,
        }
    }

    /// Also describes rows appended after each table's own, per table of the database.
    pub fn with_appended(mut self, appended: &'a [Vec<RecordBatch>]) -> Self {
        self.appended = appended;
        self
    }

    pub fn column(&self, table: usize, column: usize) -> String {
        let t = &self.tables[table];
        format!("{}.{}", t.name, t.columns[column])
    }

    fn cell(&self, table: usize, column: &str, row: u32) -> Option<String> {
        let index = self.tables[table].table?;
        let t = &self.db.tables[index];
        let c = t.schema.column_index(column)?;
        let dtype = t.schema.columns[c].dtype;
        let mut row = row as usize;
        let batches =
            std::iter::once(&t.batch).chain(self.appended.get(index).into_iter().flatten());
        for batch in batches {
            if row < batch.num_rows() {
                let array = batch.column_by_name(column)?;
                return Some(key_text(&value_at(array, dtype, row)));
            }
            row -= batch.num_rows();
        }
        None
    }

    fn at(&self, table: usize, column: Option<usize>, row: u32) -> Option<String> {
        let t = &self.tables[table];
        let name = &self.db.tables[t.table?].schema.columns[column?].name;
        self.cell(table, name, row)
    }

    /// "orders O-1 at 2025-06-01 10:00:00: price=35.2, status=shipped" (the row's
    /// columns that weighed most first).
    pub fn row(&self, r: &RowAttribution, columns: usize) -> String {
        let t = &self.tables[r.table];
        let mut out = t.name.clone();
        if let Some(key) = self.at(r.table, t.key, r.row) {
            let _ = write!(out, " {key}");
        }
        if let Some(time) = self.at(r.table, t.time, r.row) {
            let _ = write!(out, " at {time}");
        }
        let mut order: Vec<usize> = (0..r.columns.len()).collect();
        order.sort_by(|&a, &b| r.columns[b].abs().total_cmp(&r.columns[a].abs()));
        let values: Vec<String> = order
            .iter()
            .filter(|&&k| Some(t.columns[k].as_str()) != self.time_name(r.table))
            .take(columns)
            .filter_map(|&k| {
                let v = self.cell(r.table, &t.columns[k], r.row)?;
                Some(format!("{}={v}", t.columns[k]))
            })
            .collect();
        if !values.is_empty() {
            let _ = write!(out, ": {}", values.join(", "));
        }
        out
    }

    fn time_name(&self, table: usize) -> Option<&str> {
        let t = &self.tables[table];
        Some(
            self.db.tables[t.table?].schema.columns[t.time?]
                .name
                .as_str(),
        )
    }

    /// The `top` columns as "orders.price +31%; customers.segment -12%".
    pub fn top_columns(&self, e: &Explanation, top: usize) -> String {
        let mut cols: Vec<_> = e.columns.iter().collect();
        cols.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
        cols.iter()
            .take(top)
            .map(|c| {
                format!(
                    "{} {:+.0}%",
                    self.column(c.table, c.column),
                    e.share(c.value)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The `top` rows as "orders O-1 at ...: price=35.2 +12%; ...".
    pub fn top_rows(&self, e: &Explanation, top: usize) -> String {
        e.rows
            .iter()
            .take(top)
            .map(|r| format!("{} {:+.0}%", self.row(r, 2), e.share(r.value)))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn json(&self, e: &Explanation, top: usize) -> serde_json::Value {
        let mut cols: Vec<_> = e.columns.iter().collect();
        cols.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
        json!({
            "explained": e.explained,
            "output": e.output,
            "baseline": (!e.baseline.is_nan()).then_some(e.baseline),
            "method": match e.method {
                Method::Gradient => "gradient".to_string(),
                Method::Integrated { steps } => format!("integrated:{steps}"),
            },
            "tables": e.tables().iter().map(|(t, s)| json!({
                "table": self.tables[*t].name, "share": s,
            })).collect::<Vec<_>>(),
            "columns": cols.iter().map(|c| json!({
                "table": self.tables[c.table].name,
                "column": self.tables[c.table].columns[c.column],
                "share": e.share(c.value),
                "attribution": c.value,
            })).collect::<Vec<_>>(),
            "rows": e.rows.iter().take(top).map(|r| {
                let t = &self.tables[r.table];
                json!({
                    "table": t.name,
                    "key": self.at(r.table, t.key, r.row),
                    "time": self.at(r.table, t.time, r.row),
                    "share": e.share(r.value),
                    "text": self.row(r, 3),
                })
            }).collect::<Vec<_>>(),
        })
    }

    /// The readable explanation.
    pub fn text(&self, e: &Explanation, top: usize) -> String {
        let mut out = String::new();
        let baseline = match e.baseline.is_nan() {
            true => String::new(),
            false => format!(", {:.4} with no column information", e.baseline),
        };
        let _ = writeln!(
            out,
            "  explaining {}: {:.4}{baseline}",
            e.explained, e.output
        );
        let tables: Vec<String> = e
            .tables()
            .iter()
            .map(|(t, s)| format!("{} {s:+.0}%", self.tables[*t].name))
            .collect();
        let _ = writeln!(out, "  by table: {}", tables.join(", "));
        let _ = writeln!(out, "  by column:");
        let mut cols: Vec<_> = e.columns.iter().collect();
        cols.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
        for c in cols.iter().take(top) {
            let _ = writeln!(
                out,
                "    {:<40} {:+6.1}%",
                self.column(c.table, c.column),
                e.share(c.value)
            );
        }
        let _ = writeln!(out, "  most influential rows:");
        for r in e.rows.iter().take(top) {
            let _ = writeln!(out, "    {} — {:+.1}%", self.row(r, 3), e.share(r.value));
        }
        out
    }
}

/// The prediction for one entity, as text.
pub fn prediction_text(output: &Output, code: &TargetCode) -> String {
    match output {
        Output::Probs(p) => format!("prob {:.4}", p[0]),
        Output::Values(v) => format!("value {:.4}", v[0]),
        Output::Uplift { with, without } => format!(
            "with {:.4}, without {:.4}, uplift {:+.4}",
            with[0],
            without[0],
            with[0] - without[0]
        ),
        Output::Classes(p) => {
            let best = metrics::argmax(&p[0]);
            let name = match code {
                TargetCode::Multiclass { classes } => classes.get(best).map_or("", String::as_str),
                _ => "",
            };
            format!("class `{name}` prob {:.4}", p[0][best])
        }
        Output::Series(s) => format!("steps {:?}", s[0]),
        Output::Ranked(r, s) => format!(
            "top item score {:.4} ({} ranked)",
            s[0].first().copied().unwrap_or(f64::NAN),
            r[0].top.len()
        ),
    }
}

/// Rows of the entity table by key text.
pub fn key_index(db: &Database, table: usize) -> HashMap<String, usize> {
    model::fit::keys(db, table)
        .into_iter()
        .enumerate()
        .map(|(r, k)| (k, r))
        .collect()
}

pub fn run(args: &ExplainArgs) -> Result<()> {
    set_threads(args.threads);
    let db = Database::load(args.data.dir()?, args.data.schema.as_deref())?;
    let (model, prepared, trained) = load_model(&args.model, &db)?;
    let anchor = anchor_of(&db, &args.data)?;
    let plan = plan_query(
        &db,
        &args.query,
        &relgraph_common::pql::PlanOptions {
            step: None,
            anchors: vec![anchor],
        },
    )?;
    same_question(&trained, &plan, &model)?;
    let index = key_index(&db, plan.task.entity_table);
    let describer = Describer::new(&db, &model);
    let mut all = Vec::new();
    for key in &args.entity {
        let row = *index.get(key).ok_or_else(|| {
            anyhow!(
                "no `{}` with key {key}",
                db.tables[plan.task.entity_table].name()
            )
        })?;
        let facts = relgraph_worker::label::LocalFacts { db: &db };
        if relgraph_worker::label::select(&plan, &db, &[row], &facts, anchor)?.is_empty() {
            eprintln!(
                "note: `{key}` does not exist at {} or the query's WHERE does not hold for it; explained anyway",
                format_timestamp(anchor)
            );
        }
        let output = model.infer(&prepared, &[row as u32], &[anchor], None)?;
        let e = model.explain(prepared.inputs(), row as u32, anchor, args.method)?;
        if args.json {
            let mut j = describer.json(&e, args.top);
            j["entity"] = json!(key);
            j["anchor"] = json!(format_timestamp(anchor));
            j["prediction"] = json!(prediction_text(&output, &model.manifest.target));
            all.push(j);
        } else {
            println!(
                "{key} at {}: {}",
                format_timestamp(anchor),
                prediction_text(&output, &model.manifest.target)
            );
            print!("{}", describer.text(&e, args.top));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&all)?);
    }
    Ok(())
}
