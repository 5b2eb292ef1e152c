//! `relgraph bench`: measured throughput of the hot paths on real or generated data.

mod explain;
mod serve;
mod train;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use relgraph_common::Database;
use relgraph_sampler::{
    HeteroGraph, Owners, Routed, SampleConfig, Seed, Shard, Strategy, owner, sample,
};
use relgraph_worker::store::PartitionStore;
use serde_json::json;

use crate::cluster::flight::{self, Served};

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Model training and inference: seeds/s of the default model on a generated
    /// users / products / transactions graph (the PyG reference's shape).
    Train(train::TrainBenchArgs),
    /// Temporal neighbor sampling: graph build rate, seeds/s, sampled edges/s, bytes/edge.
    Sample(SampleArgs),
    /// Ingest into RocksDB partitions: placement and write rate (rows/s).
    Ingest(IngestArgs),
    /// Serving over Flight on loopback: online p50/p99 at a fixed request rate per
    /// model (scores, or top-k for ranking models) and batch entities/s.
    Serve(serve::ServeBenchArgs),
    /// Explanations: each attribution method's faithfulness (agreement with the effect
    /// of removing each column) and cost.
    Explain(explain::ExplainBenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// The database directory.
    #[arg(long)]
    data: PathBuf,
    /// Partitions to split the rows into.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Workers (stores) to spread the partitions over, round-robin.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Where the stores go (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
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
    /// Also sample with the graph split between this many workers (a comma-separated
    /// list), each holding its partition and serving it over Flight on loopback in this
    /// process; each worker samples its own seeds, remote hops going to their owners.
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// Partitions the rows are placed in before they are dealt to the workers.
    #[arg(long, default_value_t = 48)]
    partitions: u32,
    #[arg(long)]
    json: bool,
}

pub fn run(command: &BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Sample(args) => sample_bench(args),
        BenchCommand::Train(args) => train::run(args),
        BenchCommand::Ingest(args) => ingest_bench(args),
        BenchCommand::Serve(args) => serve::run(args),
        BenchCommand::Explain(args) => explain::run(args),
    }
}

fn ingest_bench(args: &IngestArgs) -> Result<()> {
    crate::train::set_threads(args.threads);
    let db = Database::load(&args.data, None)?;
    let rows: usize = db.tables.iter().map(|t| t.num_rows()).sum();
    let tmp = tempfile::tempdir()?;
    let root = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let started = Instant::now();
    let mut bytes = 0u64;
    for w in 0..args.workers.max(1) {
        let owned: Vec<u32> = (0..args.partitions)
            .filter(|p| p % args.workers.max(1) == w)
            .collect();
        let store = PartitionStore::open(&root.join(format!("worker-{w}")))?;
        bytes += store.ingest(&db, &owned, args.partitions)?.bytes;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = rows as f64 / seconds.max(1e-9);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"rows": rows, "partitions": args.partitions, "workers": args.workers,
                "seconds": seconds, "rows_per_second": rate, "stored_bytes": bytes,
                "threads": rayon::current_num_threads()})
        );
    } else {
        println!(
            "ingested {rows} rows into {} partitions on {} store(s) in {seconds:.2} s: {rate:.0} rows/s \
             ({:.1} MB stored, {} threads)",
            args.partitions,
            args.workers,
            bytes as f64 / 1e6,
            rayon::current_num_threads()
        );
    }
    Ok(())
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
        workers,
        partitions,
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
    let mut split = Vec::new();
    for &n in workers {
        let owners = flight::owners(&db, &flight::round_robin(n, *partitions));
        let timing = Timing {
            batch: *batch,
            batches: *batches,
            rounds: *rounds,
        };
        split.push(distributed(
            &graph, &owners, n, &config, &pool, &mut draw, &timing,
        )?);
    }
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
        "distributed": split,
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
        for d in &split {
            println!(
                "  over {} worker(s) (Flight on loopback): {:.2} M sampled edges/s (median round; \
                 {:.2}-{:.2}), {:.1}% of neighbor requests remote, largest partition {} edges",
                d["workers"],
                d["sampled_edges_per_second"].as_f64().unwrap_or(0.0) / 1e6,
                d["sampled_edges_per_second_min"].as_f64().unwrap_or(0.0) / 1e6,
                d["sampled_edges_per_second_max"].as_f64().unwrap_or(0.0) / 1e6,
                d["remote_request_share"].as_f64().unwrap_or(0.0) * 100.0,
                d["largest_partition_edges"]
            );
        }
    }
    Ok(())
}

struct Timing {
    batch: usize,
    batches: usize,
    rounds: usize,
}

/// Samples with the graph split between `workers` Flight servers in this process: each
/// batch's seeds go to their owners, which sample them at the same time through their
/// [`Routed`] views. Checks first that the subgraphs are the in-process sampler's.
fn distributed(
    graph: &HeteroGraph,
    owners: &Owners,
    workers: usize,
    config: &SampleConfig,
    pool: &rayon::ThreadPool,
    draw: &mut dyn FnMut(usize) -> Vec<Seed>,
    timing: &Timing,
) -> Result<serde_json::Value> {
    let parts: Vec<Arc<HeteroGraph>> = (0..workers)
        .map(|w| {
            pool.install(|| graph.partition(|t, n| owner(owners, t, n) == w))
                .map(Arc::new)
        })
        .collect::<Result<_, _>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shared = Arc::new(owners.clone());
    let remote: Vec<Arc<dyn Shard>> = (0..workers)
        .map(|w| {
            let served = Served {
                part: parts[w].clone(),
                // Sampling only: no encoded rows asked for.
                features: Arc::default(),
                owners: shared.clone(),
                rank: w as u16,
            };
            let shard = flight::serve_loopback(served, (0, 0), None, runtime.handle().clone());
            Ok(Arc::new(runtime.block_on(shard)?) as Arc<dyn Shard>)
        })
        .collect::<Result<_>>()?;
    let views: Vec<Routed> = (0..workers)
        .map(|home| {
            let shards = (0..workers)
                .map(|s| (s != home).then(|| remote[s].clone()))
                .collect();
            Routed::new(parts[home].clone(), shared.clone(), shards, home).map_err(|e| anyhow!(e))
        })
        .collect::<Result<_>>()?;
    let split = |seeds: Vec<Seed>| {
        let mut per = vec![Vec::new(); workers];
        for s in seeds {
            per[owner(owners, s.table, s.node)].push(s);
        }
        per
    };
    for (w, seeds) in split(draw(timing.batch)).iter().enumerate() {
        let got = pool.install(|| sample(&views[w], seeds, config))?;
        let want = pool.install(|| sample(graph, seeds, config))?;
        anyhow::ensure!(
            got == want,
            "worker {w}'s subgraphs differ from the in-process sampler's"
        );
    }
    let mut rates = Vec::new();
    for _ in 0..timing.rounds.max(1) {
        let (timed, mut edges) = (Instant::now(), 0);
        for _ in 0..timing.batches {
            let per = split(draw(timing.batch));
            edges += std::thread::scope(|scope| {
                let running: Vec<_> = per
                    .iter()
                    .zip(&views)
                    .map(|(seeds, view)| {
                        scope.spawn(move || pool.install(|| sample(view, seeds, config)))
                    })
                    .collect();
                running
                    .into_iter()
                    .map(|r| match r.join() {
                        Ok(b) => Ok(b?.num_edges()),
                        Err(_) => Err(anyhow!("a sampling thread panicked")),
                    })
                    .sum::<Result<usize>>()
            })?;
        }
        rates.push(edges as f64 / timed.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let (routed, total) = views
        .iter()
        .map(Routed::traffic)
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    Ok(json!({
        "workers": workers,
        "sampled_edges_per_second": rates[rates.len() / 2],
        "sampled_edges_per_second_min": rates[0],
        "sampled_edges_per_second_max": rates[rates.len() - 1],
        "remote_request_share": routed as f64 / total.max(1) as f64,
        "largest_partition_edges": parts.iter().map(|p| p.num_edges()).max(),
    }))
}
