//! `relgraph bench train`: training and inference throughput of the default model on the
//! graph the PyG reference was measured on: users, products and transactions
//! (5,000 / 1,000 / 100,000 by default), a binary task per user, batch 512.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use relgraph_common::Database;
use relgraph_common::pql::{PlanOptions, Split};
use relgraph_common::time::{DAY, days_from_civil, format_timestamp};
use relgraph_kernels::Device;
use relgraph_worker::model::Session;
use relgraph_worker::model::{self, TrainConfig};
use serde_json::json;

use crate::pql::{label_all, plan_query};
use crate::train::set_threads;

#[derive(Debug, clap::Args)]
pub struct TrainBenchArgs {
    #[arg(long, default_value_t = 5_000)]
    users: usize,
    #[arg(long, default_value_t = 1_000)]
    products: usize,
    #[arg(long, default_value_t = 100_000)]
    transactions: usize,
    /// Neighbors per hop (the reference: 128,128).
    #[arg(long, value_delimiter = ',', default_value = "128,128")]
    fanouts: Vec<u32>,
    /// Timed training steps (after two warm-up steps).
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

/// Writes the three tables as CSV: users with an activity rate, products with a Zipf-like
/// popularity, transactions drawn from both over a year.
fn write_shop(dir: &Path, args: &TrainBenchArgs) -> Result<()> {
    let mut rng = Pcg64Mcg::seed_from_u64(7);
    let start = days_from_civil(2024, 1, 1) * DAY;
    let countries = ["US", "UK", "DE", "FR", "ES", "IT"];
    let categories = [
        "books", "games", "music", "garden", "toys", "tools", "food", "sport",
    ];
    let mut users = String::from("user_id,age,country,signup\n");
    let mut rates = Vec::with_capacity(args.users);
    for u in 0..args.users {
        let _ = writeln!(
            users,
            "U{u},{},{},{}",
            rng.random_range(18..80),
            countries[rng.random_range(0..countries.len())],
            format_timestamp(start - rng.random_range(0..365) * DAY)
        );
        rates.push(rng.random_range(0.05f64..1.0).powi(2));
    }
    let mut products = String::from("product_id,category,price\n");
    for p in 0..args.products {
        let _ = writeln!(
            products,
            "P{p},{},{:.2}",
            categories[p % categories.len()],
            rng.random_range(2.0..200.0)
        );
    }
    let total: f64 = rates.iter().sum();
    let mut cumulative = Vec::with_capacity(rates.len());
    let mut acc = 0.0;
    for r in &rates {
        acc += r / total;
        cumulative.push(acc);
    }
    let mut tx = String::from("transaction_id,user_id,product_id,amount,timestamp\n");
    for t in 0..args.transactions {
        let u = cumulative
            .partition_point(|&c| c < rng.random::<f64>())
            .min(args.users - 1);
        let p = ((rng.random::<f64>().powi(3)) * args.products as f64) as usize;
        let _ = writeln!(
            tx,
            "T{t},U{u},P{p},{:.2},{}",
            rng.random_range(1.0..300.0),
            format_timestamp(start + rng.random_range(0..365 * DAY))
        );
    }
    std::fs::write(dir.join("users.csv"), users)?;
    std::fs::write(dir.join("products.csv"), products)?;
    std::fs::write(dir.join("transactions.csv"), tx)?;
    Ok(())
}

pub fn run(args: &TrainBenchArgs) -> Result<()> {
    set_threads(args.threads);
    let dir = tempfile::tempdir()?;
    write_shop(dir.path(), args)?;
    let db = Database::load(dir.path(), None)?;
    let query = "PREDICT COUNT(transactions.*, 0, 7, days) > 0 FOR EACH users.user_id";
    let plan = plan_query(&db, query, &PlanOptions::default())?;
    let labels = label_all(&db, &plan, model::config::Assuming::Auto)?;
    let config = TrainConfig {
        layers: args.fanouts.len(),
        fanouts: args.fanouts.clone(),
        epochs: 1,
        max_steps_per_epoch: args.steps + 2,
        ..TrainConfig::default()
    };
    let stop = AtomicBool::new(false);
    // Two warm-up steps, then the timed ones: the report's rate covers all, so time here.
    let mut marks = Vec::new();
    let mut record = |p: &model::Progress| {
        if p.step == 2 || p.step == p.steps {
            marks.push((p.step, Instant::now()));
        }
    };
    let (trained, data, _, report) = model::fit(
        &db,
        query,
        &plan,
        &labels,
        &config,
        Session {
            stop: &stop,
            progress: &mut record,
            resume: None,
            on_epoch: &mut |_| Ok(()),
            group: None,
            split: None,
            device: Device::Cpu,
        },
    )?;
    let (steps, seconds) = match marks.as_slice() {
        [(a, ta), (b, tb)] => (b - a, (*tb - *ta).as_secs_f64()),
        _ => (report.steps as usize, report.train_seconds),
    };
    let train_rate = (steps * config.batch_size) as f64 / seconds;
    let (rows, anchors) = train_seeds(&labels, 8 * config.batch_size);
    let started = Instant::now();
    trained.infer(&data, &rows, &anchors, None)?;
    let infer_rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    let params: usize = trained.params.values.iter().map(|t| t.len()).sum();
    let threads = rayon::current_num_threads();
    let epoch_seconds =
        labels.splits.iter().filter(|&&s| s == Split::Train).count() as f64 / train_rate;
    if args.json {
        println!(
            "{}",
            json!({
                "threads": threads,
                "parameters": params,
                "train_seeds_per_second": train_rate,
                "infer_seeds_per_second": infer_rate,
                "epoch_seconds": epoch_seconds,
                "timed_steps": steps,
            })
        );
    } else {
        println!(
            "{} users, {} products, {} transactions; fanouts {:?}; {params} parameters; {threads} thread(s)",
            args.users, args.products, args.transactions, args.fanouts
        );
        println!(
            "  training:  {train_rate:>8.0} seeds/s ({steps} steps of {}), {epoch_seconds:.1} s per epoch",
            config.batch_size
        );
        println!("  inference: {infer_rate:>8.0} seeds/s");
    }
    Ok(())
}

fn train_seeds(labels: &relgraph_worker::label::Labels, n: usize) -> (Vec<u32>, Vec<i64>) {
    // Spread over the anchors: early anchors see little history, late ones much.
    let train: Vec<usize> = (0..labels.len())
        .filter(|&i| labels.splits[i] == Split::Train)
        .collect();
    let stride = (train.len() / n.max(1)).max(1);
    let idx: Vec<usize> = train.iter().step_by(stride).take(n).copied().collect();
    (
        idx.iter().map(|&i| labels.entities[i] as u32).collect(),
        idx.iter().map(|&i| labels.anchors[i]).collect(),
    )
}
