//! `relgraph bench explain`: which attribution method is more faithful, and what each
//! costs. For a sample of entities, each encoded column is removed from the entity's
//! whole subgraph in turn and the change of the explained number measured (ablation);
//! a faithful attribution orders the columns as those changes do. Reported per method:
//! the mean Spearman correlation of attributions with ablation effects, how often the
//! top attributed column is the one whose removal moves the output most, the gap of
//! the attributions' sum to output minus baseline (integrated gradients add up to it
//! by construction, up to the step count; summed over entities, relative to the summed
//! change), and the time per explanation.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use relgraph_common::Database;
use relgraph_common::pql::PlanOptions;
use relgraph_worker::model::explain::{ColumnAttribution, Method, on_threads};
use relgraph_worker::model::metrics::spearman;
use serde_json::json;

use crate::pql::{DataArgs, entity_rows, plan_query};
use crate::predict::anchor_of;
use crate::train::{load_model, set_threads};

#[derive(Debug, clap::Args)]
pub struct ExplainBenchArgs {
    /// The model directory.
    #[arg(long)]
    model: PathBuf,
    /// --data DIR, --anchor TIME (default: the data's last timestamp).
    #[command(flatten)]
    data: DataArgs,
    /// Entities explained (evenly spaced over those the query selects).
    #[arg(long, default_value_t = 100)]
    entities: usize,
    /// Integrated gradients' steps.
    #[arg(long, default_value_t = 16)]
    steps: usize,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

fn values(columns: &[ColumnAttribution], order: &[(usize, usize)]) -> Vec<f64> {
    order
        .iter()
        .map(|key| {
            columns
                .iter()
                .find(|c| (c.table, c.column) == *key)
                .map_or(0.0, |c| c.value)
        })
        .collect()
}

fn argmax_abs(v: &[f64]) -> Option<usize> {
    (0..v.len()).max_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs()))
}

pub fn run(args: &ExplainBenchArgs) -> Result<()> {
    set_threads(args.threads);
    let db = Database::load(args.data.dir()?, args.data.schema.as_deref())?;
    let (model, prepared, _) = load_model(&args.model, &db)?;
    let anchor = anchor_of(&db, &args.data)?;
    let plan = plan_query(
        &db,
        &model.manifest.query,
        &PlanOptions {
            step: None,
            anchors: vec![anchor],
        },
    )?;
    let all = entity_rows(&db, &plan)?;
    let selected = relgraph_worker::label::select(
        &plan,
        &db,
        &all,
        &relgraph_worker::label::LocalFacts { db: &db },
        anchor,
    )?;
    if selected.is_empty() {
        bail!("the query selects no entity at this anchor");
    }
    let step = selected.len().div_ceil(args.entities.max(1)).max(1);
    let rows: Vec<u32> = selected.iter().step_by(step).map(|&r| r as u32).collect();
    let data = prepared.inputs();
    let ablations = on_threads(&rows, |&r| model.ablation(data, r, anchor))
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = Vec::new();
    for method in [
        Method::Gradient,
        Method::Integrated {
            steps: args.steps.max(1),
        },
    ] {
        let started = Instant::now();
        let explanations = on_threads(&rows, |&r| model.explain(data, r, anchor, method))
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let seconds = started.elapsed().as_secs_f64();
        let (mut rho, mut top, mut counted) = (0.0, 0.0, 0.0f64);
        let (mut gap, mut moved) = (0.0, 0.0);
        for (e, ablation) in explanations.iter().zip(&ablations) {
            let order: Vec<(usize, usize)> = ablation.iter().map(|c| (c.table, c.column)).collect();
            let (a, b) = (values(&e.columns, &order), values(ablation, &order));
            let r = spearman(&a, &b);
            if r.is_finite() {
                rho += r;
                counted += 1.0;
            }
            if argmax_abs(&a).is_some() && argmax_abs(&a) == argmax_abs(&b) {
                top += 1.0;
            }
            if !e.baseline.is_nan() {
                let sum: f64 = e.columns.iter().map(|c| c.value).sum();
                let change = e.output - e.baseline;
                gap += (sum - change).abs();
                moved += change.abs();
            }
        }
        let n = explanations.len() as f64;
        report.push(json!({
            "method": match method {
                Method::Gradient => "gradient x input".to_string(),
                Method::Integrated { steps } => format!("integrated gradients ({steps} steps)"),
            },
            "spearman_with_ablation": rho / counted.max(1.0),
            "top_column_agrees": top / n,
            "completeness_gap": match method {
                Method::Gradient => None,
                Method::Integrated { .. } => Some(gap / f64::max(moved, 1e-12)),
            },
            "ms_per_explanation": 1000.0 * seconds / n,
        }));
    }
    if args.json {
        println!(
            "{}",
            json!({"entities": rows.len(), "model": model.manifest.query, "methods": report})
        );
        return Ok(());
    }
    println!("{} entities, {}", rows.len(), model.manifest.query);
    println!(
        "    {:<32} {:>12} {:>12} {:>12} {:>10}",
        "method", "spearman", "top agrees", "sum gap", "ms each"
    );
    for r in &report {
        let gap = r["completeness_gap"]
            .as_f64()
            .map_or("-".to_string(), |g| format!("{:.1}%", 100.0 * g));
        println!(
            "    {:<32} {:>12.3} {:>11.0}% {:>12} {:>10.1}",
            r["method"].as_str().unwrap_or(""),
            r["spearman_with_ablation"].as_f64().unwrap_or(f64::NAN),
            100.0 * r["top_column_agrees"].as_f64().unwrap_or(f64::NAN),
            gap,
            r["ms_per_explanation"].as_f64().unwrap_or(f64::NAN),
        );
    }
    Ok(())
}
