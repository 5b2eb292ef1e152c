//! `relgraph demo`: the tour of what works. Generates both worlds, loads them back and
//! checks that inference recovered what was generated, then asks the questions of
//! PQL.md §10 of them: trains a model per question, shows its metrics beside the best
//! simple baseline, and a few of its predictions at the data's last timestamp.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use relgraph_common::Database;
use relgraph_common::pql::PlanOptions;
use relgraph_common::time::format_timestamp;
use relgraph_worker::model::TrainConfig;

use crate::generate::{self, Promotions, PromotionsSize, Retail, RetailSize, World};
use crate::pql::plan_query;
use crate::predict::{last_timestamp, predictions, preview};
use crate::train::{Trained, assessment_text, train_on};

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
        "purchase within 4 days, given a push (binary, conditional)",
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
        println!(
            "== {name}\n$ relgraph train \"{query}\" --data {} --out {}",
            data_dir.display(),
            model_dir.display()
        );
        let plan = plan_query(db, query, &PlanOptions::default())?;
        let Trained {
            model,
            data,
            assessment,
            report,
        } = train_on(db, query, &plan, &config, &model_dir, true)?;
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
        let (_, batch) = predictions(db, &plan, &predict, &model, &data, anchor)?;
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
