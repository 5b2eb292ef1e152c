//! `relgraph demo`: the tour of what works. Generates both worlds, loads them back and
//! checks that inference recovered what was generated, then asks the questions of
//! PQL.md §10 of them: trains a model per question, shows its metrics beside the best
//! simple baseline, and a few of its predictions at the data's last timestamp.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use arrow::array::{Array, Float64Array, RecordBatch, StringArray};
use relgraph_common::Database;
use relgraph_common::pql::PlanOptions;
use relgraph_common::time::format_timestamp;
use relgraph_kernels::Device;
use relgraph_worker::model::explain::Method;
use relgraph_worker::model::{Model, Prepared, TrainConfig, metrics};

use crate::explain::{self, Describer};
use crate::generate::{self, Promotions, PromotionsSize, Retail, RetailSize, World};
use crate::pql::plan_query;
use crate::predict::{last_timestamp, predictions, preview};
use crate::train::{Trained, assessment_text, train_on};
use crate::uplift;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where to write the demo data and models.
    #[arg(long, default_value = "relgraph-demo")]
    dir: PathBuf,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Epochs per model (the demo trains short: see README, "Demo").
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Steps per epoch.
    #[arg(long, default_value_t = 30)]
    steps: usize,
}

/// (world, name, question, the same question in another written form to predict with)
const QUESTIONS: [(&str, &str, &str, Option<&str>); 6] = [
    (
        "retail",
        "churn (binary)",
        "PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID WHERE COUNT(ORDERS.*, -90, 0, days) > 0",
        None,
    ),
    (
        "retail",
        "6-month spend (regression)",
        "PREDICT SUM(ORDERS.PRICE, 0, 180, days) FOR EACH CUSTOMERS.CUSTOMER_ID",
        None,
    ),
    (
        "retail",
        "30-day orders of active customers (regression)",
        "PREDICT COUNT(ORDERS.*, 0, 30, days) FOR EACH CUSTOMERS.CUSTOMER_ID WHERE COUNT(ORDERS.*, -30, 0, days) > 0",
        None,
    ),
    (
        "retail",
        "14-day recommendations (ranking)",
        "PREDICT LIST_DISTINCT(ORDERS.PRODUCT_ID, 0, 14, days) RANK TOP 5 FOR EACH CUSTOMERS.CUSTOMER_ID",
        Some(
            "PREDICT BOOL(ORDERS.PRODUCT_ID, 0, 14, days) FOR EACH CUSTOMERS.CUSTOMER_ID, PRODUCTS.PRODUCT_ID RANK TOP 5",
        ),
    ),
    (
        "retail",
        "customer segment (multiclass)",
        "PREDICT CUSTOMERS.SEGMENT FOR EACH CUSTOMERS.CUSTOMER_ID",
        None,
    ),
    (
        "promotions",
        "purchase within 4 days if pushed: uplift (binary, counterfactual ASSUMING)",
        "PREDICT COUNT(PURCHASES.*, 1, 4, days) > 0 FOR EACH USERS.USER_ID WHERE USERS.NOTIF_ELIGIBLE = 1 ASSUMING COUNT(NOTIFICATIONS.* WHERE NOTIFICATIONS.TYPE = 'PUSH', 0, 1, days) > 0",
        None,
    ),
];

fn generate_world(name: &str, world: &dyn World, dir: &Path, seed: u64) -> Result<Database> {
    generate::write(world, dir, seed, &[])?;
    let db = Database::load(dir, None)?;
    let diff = world.schema().diff(&db.schema());
    if !diff.is_empty() {
        bail!(
            "inference disagrees with the generated {name} schema:\n  {}",
            diff.join("\n  ")
        );
    }
    let rows: usize = db.tables.iter().map(|t| t.num_rows()).sum();
    println!(
        "== {name}: {} tables, {rows} rows in {} (inference recovered the generated schema exactly)",
        db.tables.len(),
        dir.display()
    );
    Ok(db)
}

/// The seed use case told through a counterfactual model: who buys because of the push,
/// who would buy anyway, how well the ranking by uplift matches the generated truth,
/// and why the top user's uplift is what it is.
fn uplift_story(
    db: &Database,
    data_dir: &Path,
    model: &Model,
    data: &Prepared,
    batch: &RecordBatch,
    anchor: i64,
) -> Result<()> {
    let column = |name: &str| -> Result<Vec<f64>> {
        let c = batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
            .ok_or_else(|| anyhow!("no `{name}` column in the predictions"))?;
        Ok(c.values().to_vec())
    };
    let (with, without, uplift) = (
        column("prob_with")?,
        column("prob_without")?,
        column("uplift")?,
    );
    let keys = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| anyhow!("the key column is not text"))?;
    let truth = uplift::read_truth(&data_dir.join("_truth").join("uplift.csv"))?;
    let mut order: Vec<usize> = (0..uplift.len()).collect();
    order.sort_by(|&a, &b| uplift[b].total_cmp(&uplift[a]));
    println!(
        "  the 10 users a push moves most (true uplift from the generator's _truth/uplift.csv):"
    );
    println!(
        "    {:<10} {:>9} {:>12} {:>8} {:>12}",
        "user_id", "prob_with", "prob_without", "uplift", "true uplift"
    );
    for &i in order.iter().take(10) {
        let key = keys.value(i);
        println!(
            "    {key:<10} {:>9.4} {:>12.4} {:>+8.4} {:>+12.4}",
            with[i],
            without[i],
            uplift[i],
            truth.get(key).copied().unwrap_or(f64::NAN)
        );
    }
    let (sum_with, sum_uplift): (f64, f64) = (with.iter().sum(), uplift.iter().sum());
    println!(
        "  if every one of these {} users got a push: {:.0} expected buyers, {:.0} ({:.0}%) because of the push, {:.0} ({:.0}%) who would buy anyway",
        uplift.len(),
        sum_with,
        sum_uplift,
        100.0 * sum_uplift / sum_with,
        sum_with - sum_uplift,
        100.0 * (sum_with - sum_uplift) / sum_with
    );
    let effects: Vec<f64> = (0..uplift.len())
        .map(|i| truth.get(keys.value(i)).copied().unwrap_or(0.0))
        .collect();
    let m = metrics::uplift_truth(&uplift, &effects);
    let best = order.first().ok_or_else(|| anyhow!("no user to explain"))?;
    println!(
        "  ranking users by predicted uplift against their true effect: Qini {:.3} (1 = the true ranking, 0 = random), Spearman {:.3}; `relgraph evaluate --t-learner` compares a T-learner",
        m["qini"], m["spearman"]
    );
    let key = keys.value(*best);
    let row = explain::key_index(db, model.net.entity_table)
        .get(key)
        .copied()
        .ok_or_else(|| anyhow!("no user `{key}`"))?;
    let e = model.explain(
        data.inputs(),
        row as u32,
        anchor,
        Method::Integrated { steps: 16 },
    )?;
    println!(
        "$ relgraph explain \"...\" --model ... --data {} --entity {key}",
        data_dir.display()
    );
    print!("{}", Describer::new(db, model).text(&e, 5));
    Ok(())
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let retail = Retail::new(
        RetailSize {
            customers: 5_000,
            products: 500,
            days: 730,
        },
        args.seed,
    );
    let promotions = Promotions::new(PromotionsSize {
        users: 5_000,
        days: 180,
    });
    let worlds = [
        (
            "retail",
            generate_world("retail", &retail, &args.dir.join("retail"), args.seed)?,
        ),
        (
            "promotions",
            generate_world(
                "promotions",
                &promotions,
                &args.dir.join("promotions"),
                args.seed,
            )?,
        ),
    ];
    let config = TrainConfig {
        epochs: args.epochs,
        max_steps_per_epoch: args.steps,
        ..TrainConfig::default()
    };
    println!(
        "\nTraining one model per question: {} epochs of up to {} steps of {} seeds, fanouts {:?}.\n",
        config.epochs, config.max_steps_per_epoch, config.batch_size, config.fanouts
    );
    for (k, (world, name, query, other_form)) in QUESTIONS.iter().enumerate() {
        let (_, db) = worlds
            .iter()
            .find(|(w, _)| w == world)
            .expect("every question names a generated world");
        let data_dir = args.dir.join(world);
        let model_dir = args.dir.join("models").join(format!("{k}"));
        // The uplift's effect head learns from the treated twelfth of the examples: the
        // demo gives it a smaller model trained longer (same time budget, a far better
        // ranking by uplift; README, "Explanations and uplift").
        let (config, config_text) = if *world == "promotions" {
            let uplift = TrainConfig {
                channels: 64,
                encoder_blocks: 1,
                fanouts: vec![32, 16],
                epochs: 4,
                max_steps_per_epoch: 250,
                ..config.clone()
            };
            let text = " --config uplift.toml  # channels = 64, encoder_blocks = 1, fanouts = [32, 16], epochs = 4, max_steps_per_epoch = 250";
            (uplift, text)
        } else {
            (config.clone(), "")
        };
        println!(
            "== {name}\n$ relgraph train \"{query}\" --data {} --out {}{config_text}",
            data_dir.display(),
            model_dir.display()
        );
        let plan = plan_query(db, query, &PlanOptions::default())?;
        let Trained {
            model,
            data,
            assessment,
            report,
        } = train_on(db, query, &plan, &config, &model_dir, true, Device::Cpu)?;
        print!("{}", assessment_text(&assessment));
        println!(
            "  {} epochs, {:.1} s, {:.0} seeds/s",
            report.epochs, report.train_seconds, report.seeds_per_second
        );
        let anchor = last_timestamp(db).unwrap_or(0);
        let asked = other_form.unwrap_or(query);
        let predict = plan_query(
            db,
            asked,
            &PlanOptions {
                step: None,
                anchors: vec![anchor],
            },
        )?;
        let (_, batch) = predictions(db, &plan, &predict, &model, &data, anchor, None)?;
        println!(
            "$ relgraph predict \"{asked}\" --model {} --data {} --out predictions.parquet\n  at {}:",
            model_dir.display(),
            data_dir.display(),
            format_timestamp(anchor)
        );
        print!(
            "{}",
            preview(&batch, if other_form.is_some() { 10 } else { 5 })
        );
        if model.manifest.treatment {
            uplift_story(db, &data_dir, &model, &data, &batch, anchor)?;
        }
        println!();
    }
    println!(
        "models and data are in {}; `relgraph evaluate {}/models/0 --data {}/retail` scores one again.",
        args.dir.display(),
        args.dir.display(),
        args.dir.display()
    );
    Ok(())
}
