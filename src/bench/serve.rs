//! `relgraph bench serve`: online scoring, top-k recommendations and batch scoring over
//! Arrow Flight on loopback, with the server and its clients in this process (so they
//! share the machine's cores, as a client would on a small box).
//!
//! Online requests are sent open-loop at a fixed rate, one entity each, and each
//! latency is counted from when the request was due, so a server falling behind shows
//! in the tail instead of slowing the clients down (no coordinated omission).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use arrow_flight::Ticket;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::flight_service_client::FlightServiceClient;
use futures::TryStreamExt;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::transport::Channel;

use crate::serve::server::{ServeArgs, setup_serving, spawn_flight};

#[derive(Debug, clap::Args)]
pub struct ServeBenchArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Online requests per second (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Recommendation requests per second (open loop).
    #[arg(long, default_value_t = 100.0)]
    recommend_rate: f64,
    /// Seconds of each online phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Connections the clients spread their requests over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Items per recommendation.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Skip the batch phase (a catalog of a million items makes it long).
    #[arg(long)]
    no_batch: bool,
    /// Passes of the batch phase over every entity: the first starts with the server's
    /// buffer pools empty, as a new server does; later ones run as a long batch job does
    /// once the pools hold its working set.
    #[arg(long, default_value_t = 3)]
    batch_rounds: usize,
    #[arg(long)]
    json: bool,
}

/// Latency percentiles of one online phase.
#[derive(Debug, serde::Serialize)]
struct Online {
    model: String,
    requests: usize,
    failed: usize,
    target_rate: f64,
    achieved_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn get(client: &FlightServiceClient<Channel>, ticket: String) -> Result<usize> {
    let stream = client
        .clone()
        .do_get(Ticket::new(ticket))
        .await?
        .into_inner();
    let batches: Vec<_> = FlightRecordBatchStream::new_from_flight_data(
        stream.map_err(|s| arrow_flight::error::FlightError::Tonic(Box::new(s))),
    )
    .try_collect()
    .await?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Sends `rate` requests per second for `seconds`, each for one random entity.
async fn online(
    clients: &[FlightServiceClient<Channel>],
    ticket: impl Fn(&str) -> Value,
    keys: &[String],
    rate: f64,
    seconds: f64,
    model: &str,
) -> Result<Online> {
    let total = (rate * seconds).round() as usize;
    let mut rng = Pcg64Mcg::seed_from_u64(7);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let key = &keys[rng.random_range(0..keys.len())];
        let t = ticket(key).to_string();
        let client = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            let ok = get(&client, t).await.is_ok();
            (ok, due.elapsed().as_secs_f64() * 1e3)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failed = 0;
    for t in tasks {
        let (ok, ms) = t.await?;
        if ok {
            latencies.push(ms);
        } else {
            failed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(Online {
        model: model.to_string(),
        requests: total,
        failed,
        target_rate: rate,
        achieved_rate: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
    })
}

pub fn run(args: &ServeBenchArgs) -> Result<()> {
    crate::train::set_threads(args.serve.threads);
    let serving = setup_serving(&args.serve)?;
    let models = serving.models();
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = server.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    server.block_on(async { spawn_flight(listener, serving.clone(), None) })?;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let report = clients.block_on(async {
        let mut connections = Vec::new();
        for _ in 0..args.connections.max(1) {
            let channel = relgraph_coordinator::tls::endpoint(&addr.to_string())?
                .connect()
                .await
                .context("connect to the bench server")?;
            connections.push(FlightServiceClient::new(channel));
        }
        let mut phases = Vec::new();
        let mut batch = Vec::new();
        for served in &models {
            let keys = serving.entity_keys(served);
            if keys.is_empty() {
                return Err(anyhow!("model `{}` has no entities", served.name));
            }
            let name = served.name.clone();
            let ranking = served.items().is_some();
            let (rate, k) = if ranking {
                (args.recommend_rate, Some(args.k))
            } else {
                (args.rate, None)
            };
            let ticket = |key: &str| json!({"v": 1, "model": name, "keys": [key], "k": k});
            // Warm up: every connection once.
            for c in &connections {
                get(c, ticket(&keys[0]).to_string()).await?;
            }
            phases.push(online(&connections, ticket, &keys, rate, args.seconds, &name).await?);
            if args.no_batch {
                continue;
            }
            // Batch: every entity, one partition per connection, in parallel.
            let parts = connections.len();
            for round in 0..args.batch_rounds.max(1) {
                let started = Instant::now();
                let mut tasks = Vec::new();
                for (i, c) in connections.iter().enumerate() {
                    let t = json!({"v": 1, "model": name, "part": [i, parts], "k": k});
                    let (c, t) = (c.clone(), t.to_string());
                    tasks.push(tokio::spawn(async move { get(&c, t).await }));
                }
                let mut rows = 0;
                for t in tasks {
                    rows += t.await??;
                }
                let seconds = started.elapsed().as_secs_f64();
                batch.push(
                    json!({"model": name, "round": round, "entities": keys.len(),
                    "rows": rows, "seconds": seconds,
                    "entities_per_second": keys.len() as f64 / seconds,
                    "items": served.items()}),
                );
            }
        }
        Ok::<_, anyhow::Error>((phases, batch))
    })?;
    let (phases, batch) = report;
    if args.json {
        println!(
            "{}",
            json!({"online": phases, "batch": batch, "threads": rayon::current_num_threads()})
        );
        return Ok(());
    }
    for p in &phases {
        println!(
            "{:<10} {:>6} requests at {:>6.0}/s: achieved {:>6.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} failed",
            p.model,
            p.requests,
            p.target_rate,
            p.achieved_rate,
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            p.failed
        );
    }
    for b in &batch {
        println!(
            "{:<10} batch round {}: {} entities in {:.2} s: {:.0} entities/s",
            b["model"].as_str().unwrap_or_default(),
            b["round"],
            b["entities"],
            b["seconds"].as_f64().unwrap_or_default(),
            b["entities_per_second"].as_f64().unwrap_or_default()
        );
    }
    drop(server);
    Ok(())
}
