//! `relgraph train` and `relgraph evaluate`: a model for a PQL question, its metrics
//! beside the best simple baseline, and the same scoring of a saved model again.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use relgraph_common::Database;
use relgraph_common::pql::{PlanOptions, TaskPlan};
use relgraph_kernels::Device;
use relgraph_worker::label::Labels;
use relgraph_worker::model::config::Assuming;
use relgraph_worker::model::metrics::Metrics;
use relgraph_worker::model::{
    self, Assessment, Prepared, Progress, Session, TrainConfig, TrainReport,
};
use serde_json::json;

use crate::pql::{DataArgs, label_all, plan_query, prepare};
use crate::uplift;

/// Set by Ctrl-C: training stops after the current step and saves what it has.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Hyper-parameters a flag can override (the rest: `--config FILE`).
#[derive(Debug, Default, clap::Args)]
pub struct ConfigArgs {
    /// A TOML file of hyper-parameters (see README, "Model").
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub max_steps_per_epoch: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub channels: Option<usize>,
    /// Neighbors per hop, e.g. `128,64` (one per layer).
    #[arg(long, value_delimiter = ',')]
    pub fanouts: Option<Vec<u32>>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// How ASSUMING is read: `auto` (counterfactual when the assumption is a treatment
    /// the data varies), `conditional` or `counterfactual` (PQL.md §7).
    #[arg(long)]
    pub assuming: Option<Assuming>,
    /// Threads for sampling and kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where training runs: `auto` (a CUDA device when this build and machine have
    /// one, else the CPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long)]
    pub device: Option<String>,
}

impl ConfigArgs {
    pub fn config(&self) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                TrainConfig::from_toml(&text).with_context(|| format!("in {}", p.display()))?
            }
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = &self.$f { c.$f = v.clone(); })* };
        }
        set!(
            epochs,
            max_steps_per_epoch,
            batch_size,
            lr,
            channels,
            seed,
            assuming
        );
        if let Some(f) = &self.fanouts {
            c.layers = f.len();
            c.fanouts = f.clone();
        }
        c.check()?;
        Ok(c)
    }

    /// The device `--device` names (default `auto`), saying on stderr which it is.
    pub fn device(&self) -> Result<Device> {
        let (device, chosen) = Device::choose(self.device.as_deref().unwrap_or("auto"))?;
        eprintln!("training on {chosen}");
        Ok(device)
    }
}

/// Sizes rayon's pool once per process (`None`: all cores).
pub fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        // Fails only if the pool was already built, which keeps the first size.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}

fn progress_bar(enabled: bool) -> impl FnMut(&Progress) {
    let mut last = Instant::now();
    move |p: &Progress| {
        let end = p.step == p.steps;
        if !enabled || (!end && last.elapsed().as_millis() < 200) {
            return;
        }
        last = Instant::now();
        let width = 30;
        let filled = p.step * width / p.steps.max(1);
        eprint!(
            "\repoch {}/{} [{}{}] {}/{} steps  loss {:.4}  {:.0} seeds/s ",
            p.epoch,
            p.epochs,
            "#".repeat(filled),
            " ".repeat(width - filled),
            p.step,
            p.steps,
            p.loss,
            p.seeds_per_second
        );
        if end {
            eprintln!();
        }
    }
}

/// The metrics of one split as `name value (baseline b, lift)` lines.
pub fn metrics_text(model: &Metrics, baseline: &Metrics) -> String {
    let mut out = String::new();
    for (name, value) in model {
        let b = baseline.get(name).copied().unwrap_or(f64::NAN);
        out.push_str(&format!(
            "    {name:<13} {value:>9.4}   baseline {b:>9.4}   {:+.4}\n",
            value - b
        ));
    }
    out
}

pub fn assessment_text(a: &Assessment) -> String {
    let mut out = format!(
        "{} — val {} / test {} examples ({} train); baseline: {}\n  val\n{}  test\n{}",
        a.task_type,
        a.examples.val,
        a.examples.test,
        a.examples.train,
        a.baseline.name,
        metrics_text(&a.metrics.val, &a.baseline.val),
        metrics_text(&a.metrics.test, &a.baseline.test),
    );
    if !a.importance.is_empty() {
        out.push_str("  column importance (mean share of validation explanations)\n");
        for c in a.importance.iter().take(8) {
            let name = format!("{}.{}", c.table, c.column);
            out.push_str(&format!("    {name:<40} {:>5.1}%\n", c.share));
        }
    }
    out
}

/// The `--json` object of `train`.
pub fn report_json(a: &Assessment, r: &TrainReport) -> serde_json::Value {
    json!({
        "task_type": a.task_type,
        "metrics": a.metrics,
        "baseline": a.baseline,
        "epochs": r.epochs,
        "best_epoch": r.best_epoch,
        "train_seconds": r.train_seconds,
        "seeds_per_second": r.seeds_per_second,
        "interrupted": r.interrupted,
        "examples": a.examples,
        "importance": a.importance,
    })
}

/// A trained and saved model, the data it was prepared with, and its report.
pub struct Trained {
    pub model: model::Model,
    pub data: Prepared,
    pub assessment: Assessment,
    pub report: TrainReport,
}

/// Trains a model for `query` on the database `db` and saves it to `out`.
pub fn train_on(
    db: &Database,
    query: &str,
    plan: &TaskPlan,
    config: &TrainConfig,
    out: &Path,
    show_progress: bool,
    device: Device,
) -> Result<Trained> {
    let labels = label_all(db, plan, config.assuming)?;
    let mut bar = progress_bar(show_progress && std::io::stderr().is_terminal());
    let session = Session {
        stop: &STOP,
        progress: &mut bar,
        resume: None,
        on_epoch: &mut |_| Ok(()),
        group: None,
        split: None,
        device,
    };
    fit_and_save(db, query, plan, &labels, config, out, session)
}

/// Saves a model with its assessment and training report in its manifest.
pub fn save_trained(
    model: &mut model::Model,
    assessment: &Assessment,
    report: &TrainReport,
    out: &Path,
) -> Result<()> {
    model.manifest.report = json!({
        "assessment": assessment,
        "training": report,
    });
    Ok(model::save(model, out)?)
}

/// Fits a model on labelled data and saves it (with its assessment and training report)
/// to `out`.
pub fn fit_and_save(
    db: &Database,
    query: &str,
    plan: &TaskPlan,
    labels: &Labels,
    config: &TrainConfig,
    out: &Path,
    session: Session<'_>,
) -> Result<Trained> {
    let (mut model, data, assessment, report) =
        model::fit(db, query, plan, labels, config, session)?;
    save_trained(&mut model, &assessment, &report, out)?;
    Ok(Trained {
        model,
        data,
        assessment,
        report,
    })
}

pub fn run_train(
    query: &str,
    data: &DataArgs,
    config: &ConfigArgs,
    out: &Path,
    json: bool,
) -> Result<()> {
    set_threads(config.threads);
    let device = config.device()?;
    let config = config.config()?;
    let (db, plan) = prepare(query, data)?;
    let Trained {
        assessment, report, ..
    } = train_on(&db, query, &plan, &config, out, true, device)?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&report_json(&assessment, &report))?
        );
        return Ok(());
    }
    print!("{}", assessment_text(&assessment));
    println!(
        "  {} epochs (best {}), {:.1} s, {:.0} seeds/s{}; saved to {}",
        report.epochs,
        report.best_epoch,
        report.train_seconds,
        report.seeds_per_second,
        if report.interrupted {
            ", interrupted"
        } else {
            ""
        },
        out.display()
    );
    Ok(())
}

/// How a saved model read its query's ASSUMING.
pub fn reading_of(manifest: &model::Manifest) -> Assuming {
    match manifest.treatment {
        true => Assuming::Counterfactual,
        false => Assuming::Conditional,
    }
}

/// Loads a saved model for the database at `data`.
pub fn load_model(dir: &Path, db: &Database) -> Result<(model::Model, Prepared, TaskPlan)> {
    let manifest = model::read_manifest(dir)?;
    let mut plan = plan_query(db, &manifest.query, &PlanOptions::default())?;
    plan.splits = manifest.splits.splits();
    let data = Prepared::new(db, &manifest.codes, None)?;
    let rows = model::fit::item_rows(db, &manifest.target);
    let model = model::load(dir, &data, rows)?;
    Ok((model, data, plan))
}

/// What `relgraph evaluate` scores.
#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// The model directory.
    pub model: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Counterfactual models: each entity's true effect (CSV: entity key first, a
    /// `true_uplift` column; default DATA/_truth/uplift.csv where it exists).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Counterfactual models: also train a T-learner (two models of the same
    /// configuration, on the treated and on the untreated examples) and rank by it.
    #[arg(long)]
    pub t_learner: bool,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_evaluate(args: &EvaluateArgs) -> Result<()> {
    set_threads(args.threads);
    let db = Database::load(&args.data, args.schema.as_deref())?;
    let (model, prepared, plan) = load_model(&args.model, &db)?;
    let labels = label_all(&db, &plan, reading_of(&model.manifest))?;
    let past = model::PastValues::of(&db, &plan, &labels)?;
    let metrics = model::split_metrics(&model, &prepared, &labels, None)?;
    let assessment = model::assess(&model, &prepared, &plan, &labels, &past, metrics)?;
    let uplift = if model.manifest.treatment {
        let truth_path = args.truth.clone().or_else(|| {
            let p = args.data.join("_truth").join("uplift.csv");
            p.exists().then_some(p)
        });
        let truth = truth_path.as_deref().map(uplift::read_truth).transpose()?;
        let evaluation = uplift::Evaluation {
            db: &db,
            query: &model.manifest.query,
            plan: &plan,
            labels: &labels,
        };
        Some(evaluation.run(&model, &prepared, truth.as_ref(), args.t_learner)?)
    } else if args.t_learner || args.truth.is_some() {
        bail!(
            "--t-learner and --truth evaluate uplift: the model was not trained with ASSUMING as a treatment"
        );
    } else {
        None
    };
    if args.json {
        let mut out = serde_json::to_value(&assessment)?;
        if let Some((n, share, rankings)) = &uplift {
            out["uplift"] = json!({"examples": n, "treated_share": share, "rankings": rankings});
        }
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    print!("{}", assessment_text(&assessment));
    if let Some((n, share, rankings)) = &uplift {
        println!(
            "uplift — test split, {n} examples, {:.1}% treated",
            100.0 * share
        );
        print!("{}", uplift::table(rankings));
    }
    Ok(())
}
