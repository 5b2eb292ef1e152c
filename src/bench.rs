//! `relgraph bench`: measured throughput of the hot paths on real or generated data.

mod train;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use relgraph_common::Database;
use relgraph_sampler::{HeteroGraph, SampleConfig, Seed, Strategy, sample};
use serde_json::json;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Model training and inference: seeds/s of the default model on a generated
    /// users / products / transactions graph (the PyG reference's shape).
    Train(train::TrainBenchArgs),
    /// Temporal neighbor sampling: graph build rate, seeds/s, sampled edges/s, bytes/edge.
    Sample(SampleArgs),
}

#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// The database directory.
    #[arg(long)]
    data: PathBuf,
    /// The seed table (default: the table with the most rows that has a primary key).
    #[arg(long)]
    table: Option<String>,
    /// Neighbors per node and edge type, per hop.
    #[arg(long, value_delimiter = ',', default_value = "128,64")]
    fanout: Vec<u32>,
    /// Seeds per batch.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Batches to time per round (after one warm-up batch).
    #[arg(long, default_value_t = 100)]
    batches: usize,
    /// Timed rounds; the report gives the median round and the range.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seeds sampled together in one batched pass (the unit of parallel work); 0: from
    /// the fanouts, up to 64.
    #[arg(long, default_value_t = 0)]
    chunk: usize,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// `uniform` or `recent`.
    #[arg(long, default_value = "uniform")]
    strategy: String,
    /// Anchor times: `random` over the data's time range, or `last` (all history visible).
    #[arg(long, default_value = "random")]
    anchor: String,
    #[arg(long)]
    json: bool,
}

pub fn run(command: &BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Sample(args) => sample_bench(args),
        BenchCommand::Train(args) => train::run(args),
    }
}

fn sample_bench(args: &SampleArgs) -> Result<()> {
    let SampleArgs {
        data,
        table,
        fanout,
        batch,
        batches,
        rounds,
        threads,
        strategy,
        anchor,
        chunk,
        json,
    } = args;
    let strategy = match strategy.as_str() {
        "uniform" => Strategy::Uniform,
        "recent" => Strategy::Recent,
        other => {
            return Err(anyhow!(
                "--strategy: `{other}` is neither uniform nor recent"
            ));
        }
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()?;
    let db = Database::load(data, None)?;
    let started = Instant::now();
    let graph = pool.install(|| HeteroGraph::from_database(&db))?;
    let build = started.elapsed().as_secs_f64();
    let seed_table = match table {
        Some(name) => db
            .tables
            .iter()
            .position(|t| t.name() == name)
            .with_context(|| format!("no table `{name}`"))?,
        None => (0..db.tables.len())
            .filter(|&t| db.tables[t].schema.primary_key.is_some())
            .max_by_key(|&t| db.tables[t].num_rows())
            .context("no table with a primary key to draw seeds from")?,
    };
    let (mut first, last) =
        relgraph_common::pql::plan::time_range(&db, 0..db.tables.len()).unwrap_or((0, 0));
    match anchor.as_str() {
        "random" => {}
        "last" => first = last,
        other => return Err(anyhow!("--anchor: `{other}` is neither random nor last")),
    }
    let mut rng = Pcg64Mcg::seed_from_u64(7);
    let nodes = graph.num_nodes[seed_table].max(1) as u32;
    let mut draw = |n: usize| -> Vec<Seed> {
        (0..n)
            .map(|_| Seed {
                table: seed_table,
                node: rng.random_range(0..nodes),
                anchor: rng.random_range(first..=last.max(first)),
            })
            .collect()
    };
    let config = SampleConfig {
        fanouts: fanout.clone(),
        strategy,
        seed: 1,
        chunk: *chunk,
        ..SampleConfig::default()
    };
    let chunk = config.chunk_for(&fanout.iter().map(|&f| vec![f]).collect::<Vec<_>>());
    pool.install(|| sample(&graph, &draw(*batch), &config))?;
    let (mut edges, mut nodes_sampled, mut seconds) = (0usize, 0usize, 0.0);
    let mut rates = Vec::with_capacity(*rounds);
    for _ in 0..(*rounds).max(1) {
        let (timed, mut round_edges) = (Instant::now(), 0);
        for _ in 0..*batches {
            let seeds = draw(*batch);
            let out = pool.install(|| sample(&graph, &seeds, &config))?;
            round_edges += out.num_edges();
            nodes_sampled += out.num_nodes();
        }
        let elapsed = timed.elapsed().as_secs_f64();
        rates.push(round_edges as f64 / elapsed);
        (edges, seconds) = (edges + round_edges, seconds + elapsed);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let seeds_total = *batch * *batches * rates.len();
    let report = json!({
        "graph": { "tables": graph.tables.len(), "edge_types": graph.edge_types.len(), "edges": graph.num_edges(),
                   "bytes_per_edge": graph.bytes_per_edge(), "build_seconds": build, "build_edges_per_second": graph.num_edges() as f64 / build },
        "seed_table": graph.tables[seed_table],
        "fanout": fanout, "batch": batch, "batches": batches, "rounds": rates.len(), "chunk": chunk,
        "threads": pool.current_num_threads(),
        "seeds_per_second": seeds_total as f64 / seconds,
        "sampled_edges_per_second": median,
        "sampled_edges_per_second_min": rates[0],
        "sampled_edges_per_second_max": rates[rates.len() - 1],
        "sampled_edges_per_seed": edges as f64 / seeds_total as f64,
        "sampled_nodes": nodes_sampled,
    });
    if *json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let g = &report["graph"];
        println!(
            "graph: {} edges in {} edge types, {:.1} bytes/edge, built in {:.2} s ({:.1} M edges/s)",
            g["edges"],
            g["edge_types"],
            graph.bytes_per_edge(),
            build,
            graph.num_edges() as f64 / build / 1e6
        );
        println!(
            "sample {} seeds of `{}` x {} batches x {} rounds, fanout {:?}, chunk {}, {} thread(s): \
             {:.0} seeds/s, {:.2} M sampled edges/s (median round; {:.2}-{:.2}), {:.0} edges/seed",
            batch,
            graph.tables[seed_table],
            batches,
            rates.len(),
            fanout,
            chunk,
            pool.current_num_threads(),
            report["seeds_per_second"].as_f64().unwrap_or(0.0),
            median / 1e6,
            rates[0] / 1e6,
            rates[rates.len() - 1] / 1e6,
            report["sampled_edges_per_seed"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
