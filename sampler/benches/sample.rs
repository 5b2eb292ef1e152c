//! Criterion benches of graph building and temporal sampling on a small, cache-resident
//! graph shaped like the RelBench reference: 3 tables (users, items, 200k events linking
//! them), 400k directed edges, seeds of 512 users, uniform, fanouts [128, 128].
//!
//! `cargo bench -p relgraph-sampler` (one thread: `RAYON_NUM_THREADS=1`).

use std::fmt::Write as _;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use relgraph_common::Database;
use relgraph_sampler::{HeteroGraph, SampleConfig, Seed, sample};

const USERS: u32 = 10_000;
const ITEMS: u32 = 2_000;
const EVENTS: u32 = 200_000;
const T0: i64 = 1_700_000_000;

fn database(dir: &std::path::Path) -> Database {
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    let mut users = String::from("user_id\n");
    for u in 0..USERS {
        let _ = writeln!(users, "U{u}");
    }
    let mut items = String::from("item_id\n");
    for i in 0..ITEMS {
        let _ = writeln!(items, "I{i}");
    }
    let mut events = String::from("event_id,user_id,item_id,timestamp\n");
    for e in 0..EVENTS {
        let (u, i) = (rng.random_range(0..USERS), rng.random_range(0..ITEMS));
        let t = relgraph_common::time::format_timestamp(T0 + rng.random_range(0..86_400 * 365));
        let _ = writeln!(events, "E{e},U{u},I{i},{t}");
    }
    for (name, text) in [("users", users), ("items", items), ("events", events)] {
        std::fs::write(dir.join(format!("{name}.csv")), text).expect("write");
    }
    Database::load(dir, None).expect("load")
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path());
    let graph = HeteroGraph::from_database(&db).expect("graph");
    let users = graph
        .tables
        .iter()
        .position(|t| t == "users")
        .expect("users");
    let mut group = c.benchmark_group("sampler");
    group.throughput(Throughput::Elements(graph.num_edges() as u64));
    group.bench_function("build 400k edges", |b| {
        b.iter(|| HeteroGraph::from_database(&db).expect("graph"))
    });
    let mut rng = Pcg64Mcg::seed_from_u64(2);
    let seeds: Vec<Seed> = (0..512)
        .map(|_| Seed {
            table: users,
            node: rng.random_range(0..USERS),
            anchor: T0 + 86_400 * 365,
        })
        .collect();
    let config = SampleConfig {
        fanouts: vec![128, 128],
        ..SampleConfig::default()
    };
    let edges = sample(&graph, &seeds, &config).expect("sample").num_edges();
    group.throughput(Throughput::Elements(edges as u64));
    group.bench_function("sample 512 seeds [128, 128] uniform", |b| {
        b.iter(|| sample(&graph, &seeds, &config).expect("sample"))
    });
    let deep = SampleConfig {
        fanouts: vec![128, 128, 128],
        ..SampleConfig::default()
    };
    let seeds_2048: Vec<Seed> = (0..2048).map(|i| seeds[i % 512]).collect();
    let edges = sample(&graph, &seeds_2048, &deep)
        .expect("sample")
        .num_edges();
    group.throughput(Throughput::Elements(edges as u64));
    group.bench_function("sample 2048 seeds [128, 128, 128] uniform", |b| {
        b.iter(|| sample(&graph, &seeds_2048, &deep).expect("sample"))
    });

    // 20k new events in batches of 1,000 (40k directed edges), then folding them in.
    let events = graph
        .tables
        .iter()
        .position(|t| t == "events")
        .expect("events");
    let fks = graph.foreign_keys(events);
    let batches: Vec<(Vec<i64>, Vec<Vec<u32>>)> = (0..20)
        .map(|_| {
            let times = (0..1000)
                .map(|_| T0 + rng.random_range(0..86_400 * 400))
                .collect();
            let parents = fks
                .iter()
                .map(|&e| {
                    let n = graph.num_nodes[graph.edge_types[e].dst] as u32;
                    (0..1000).map(|_| rng.random_range(0..n)).collect()
                })
                .collect();
            (times, parents)
        })
        .collect();
    let appended = |mut g: HeteroGraph| {
        for (times, parents) in &batches {
            g.append(events, times, parents).expect("append");
        }
        g
    };
    group.throughput(Throughput::Elements(40_000));
    group.bench_function("append 20k events", |b| {
        b.iter_batched(|| graph.clone(), appended, BatchSize::LargeInput)
    });
    let grown = appended(graph.clone());
    group.throughput(Throughput::Elements(grown.num_edges() as u64));
    group.bench_function("compact 440k edges", |b| {
        b.iter_batched(
            || grown.clone(),
            |mut g| g.compact().expect("compact"),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(sampler, benches);
criterion_main!(sampler);
