//! Sampling properties on random databases: nothing newer than the anchor, every edge a
//! real foreign-key link, fanouts respected, subgraphs disjoint, `recent` takes the
//! latest, `uniform` is uniform, results independent of threads, Arrow round trips.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use proptest::prelude::{
    ProptestConfig, TestCaseError, any, prop, prop_assert, prop_assert_eq, proptest,
};
use relgraph_common::Database;
use relgraph_common::hash::mix;
use relgraph_sampler::{
    HeteroGraph, Owners, Routed, STATIC, SampleConfig, Seed, Segment, Shard, Strategy,
    SubgraphBatch, sample,
};

const T0: i64 = 1_700_000_000;

/// Per (child table, parent table): the child's foreign-key values.
type ForeignKeys = HashMap<(usize, usize), Vec<Option<String>>>;
/// Customers' join times, orders (customer, time), items (order, time).
type World = (
    Vec<Option<i64>>,
    Vec<(Option<usize>, i64)>,
    Vec<(usize, i64)>,
);

/// Customers (some with a join time), orders (customer may dangle or be null), items.
fn database(
    customers: &[Option<i64>],
    orders: &[(Option<usize>, i64)],
    items: &[(usize, i64)],
) -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = String::from("customer_id,joined\n");
    for (i, j) in customers.iter().enumerate() {
        let joined = j.map_or(String::new(), |t| {
            relgraph_common::time::format_timestamp(T0 + t)
        });
        let _ = writeln!(c, "C{i},{joined}");
    }
    let mut o = String::from("order_id,customer_id,timestamp\n");
    for (i, (cust, t)) in orders.iter().enumerate() {
        let _ = writeln!(
            o,
            "O{i},{},{}",
            cust.map_or(String::new(), |c| format!("C{c}")),
            relgraph_common::time::format_timestamp(T0 + t)
        );
    }
    let mut it = String::from("item_id,order_id,timestamp\n");
    for (i, (order, t)) in items.iter().enumerate() {
        let _ = writeln!(
            it,
            "I{i},O{order},{}",
            relgraph_common::time::format_timestamp(T0 + t)
        );
    }
    std::fs::write(dir.path().join("customers.csv"), c).expect("write");
    std::fs::write(dir.path().join("orders.csv"), o).expect("write");
    std::fs::write(dir.path().join("items.csv"), it).expect("write");
    std::fs::write(
        dir.path().join("schema.toml"),
        "[tables.customers]\nprimary_key = \"customer_id\"\ntime_column = \"joined\"\ncolumns = { joined = { dtype = \"timestamp\" } }\n\
         [tables.orders]\nprimary_key = \"order_id\"\nforeign_keys = { customer_id = \"customers\" }\n\
         [tables.items]\nprimary_key = \"item_id\"\nforeign_keys = { order_id = \"orders\" }\n",
    )
    .expect("schema");
    let db = Database::load(dir.path(), None).expect("load");
    (dir, db)
}

/// The key string of every row of every table, and each foreign key's values.
fn keys(db: &Database) -> (Vec<Vec<String>>, ForeignKeys) {
    let text = |t: usize, column: &str| -> Vec<Option<String>> {
        let a = db.tables[t].column(column).expect("column");
        let s = a
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("strings");
        s.iter().map(|v| v.map(str::to_string)).collect()
    };
    let pks = (0..db.tables.len())
        .map(|t| {
            text(t, db.tables[t].schema.primary_key.as_deref().expect("pk"))
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect()
        })
        .collect();
    let mut fks = HashMap::new();
    for (c, t) in db.tables.iter().enumerate() {
        for fk in &t.schema.foreign_keys {
            let p = db
                .tables
                .iter()
                .position(|x| x.name() == fk.references)
                .expect("parent");
            fks.insert((c, p), text(c, &fk.column));
        }
    }
    (pks, fks)
}

fn check_batch(
    db: &Database,
    graph: &HeteroGraph,
    seeds: &[Seed],
    batch: &SubgraphBatch,
    fanout: u32,
) -> Result<(), TestCaseError> {
    let (pks, fks) = keys(db);
    prop_assert_eq!(batch.seeds.len(), seeds.len());
    let seed_locals: HashSet<(usize, u32)> =
        batch.seeds.iter().map(|&(t, l)| (t as usize, l)).collect();
    for (t, block) in batch.nodes.iter().enumerate() {
        prop_assert!(
            block.ids.len() == block.seeds.len() && block.ids.len() == block.rel_times.len()
        );
        for i in 0..block.ids.len() {
            let rel = block.rel_times[i];
            if !seed_locals.contains(&(t, i as u32)) {
                prop_assert!(
                    rel == STATIC || rel >= 0,
                    "node {} of {} is newer than its anchor",
                    block.ids[i],
                    graph.tables[t]
                );
            }
            let anchor = seeds[block.seeds[i] as usize].anchor;
            let time = graph.node_time(t, block.ids[i]);
            prop_assert_eq!(
                rel,
                if time == STATIC {
                    STATIC
                } else {
                    anchor - time
                }
            );
        }
    }
    for (e, block) in batch.edges.iter().enumerate() {
        let et = &graph.edge_types[e];
        let mut per_src: HashMap<u32, u32> = HashMap::new();
        for (&s, &d) in block.src.iter().zip(&block.dst) {
            let (src, dst) = (&batch.nodes[et.src], &batch.nodes[et.dst]);
            prop_assert_eq!(
                src.seeds[s as usize],
                dst.seeds[d as usize],
                "subgraphs are disjoint"
            );
            let (a, b) = (src.ids[s as usize] as usize, dst.ids[d as usize] as usize);
            let linked = match fks.get(&(et.src, et.dst)) {
                Some(values) => values[a].as_deref() == Some(pks[et.dst][b].as_str()),
                None => fks[&(et.dst, et.src)][b].as_deref() == Some(pks[et.src][a].as_str()),
            };
            prop_assert!(linked, "edge {} {a}->{b} is not in the database", et.name);
            *per_src.entry(s).or_default() += 1;
        }
        prop_assert!(
            per_src.values().all(|&n| n <= fanout),
            "fanout exceeded on {}",
            et.name
        );
    }
    Ok(())
}

/// The picks (table, node, anchor offset) that name a node of `graph`, as seeds.
fn seeds_in(graph: &HeteroGraph, picks: &[(usize, u32, i64)]) -> Vec<Seed> {
    picks
        .iter()
        .filter(|(t, n, _)| (*n as usize) < graph.num_nodes[*t])
        .map(|&(table, node, a)| Seed {
            table,
            node,
            anchor: T0 + a,
        })
        .collect()
}

fn config_of(fanout: u32, hops: usize, recent: bool, rng: u64, chunk: usize) -> SampleConfig {
    SampleConfig {
        fanouts: vec![fanout; hops],
        strategy: if recent {
            Strategy::Recent
        } else {
            Strategy::Uniform
        },
        seed: rng,
        chunk,
        ..SampleConfig::default()
    }
}

fn arb_world() -> impl proptest::strategy::Strategy<Value = World> {
    (
        prop::collection::vec(prop::option::weighted(0.7, 0i64..1000), 1..8),
        prop::collection::vec((prop::option::weighted(0.9, 0usize..10), 0i64..1000), 0..60),
        prop::collection::vec((0usize..70, 0i64..1000), 0..60),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn samples_are_temporal_real_bounded_and_disjoint(
        (customers, orders, items) in arb_world(),
        picks in prop::collection::vec((0usize..3, 0u32..70, 0i64..1100), 1..12),
        fanout in 1u32..6,
        hops in 1usize..4,
        recent in any::<bool>(),
        rng in any::<u64>(),
    ) {
        let (_dir, db) = database(&customers, &orders, &items);
        let graph = HeteroGraph::from_database(&db).expect("graph");
        let seeds = seeds_in(&graph, &picks);
        let config = config_of(fanout, hops, recent, rng, 3);
        let batch = sample(&graph, &seeds, &config).expect("sample");
        check_batch(&db, &graph, &seeds, &batch, fanout)?;
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
        let again = one.install(|| sample(&graph, &seeds, &config)).expect("sample");
        prop_assert_eq!(&again, &batch, "the same with one thread");
        let wire = batch.to_arrow().expect("arrow");
        let back = SubgraphBatch::from_arrow(&wire, graph.tables.len(), graph.edge_types.len()).expect("from arrow");
        prop_assert_eq!(back, batch);
    }

    /// Appending rows to a graph built from a prefix of the tables samples exactly as a
    /// graph built from all rows, before and after compaction, which rebuilds the CSRs.
    #[test]
    fn appends_sample_as_a_rebuild_would(
        (customers, orders, items) in arb_world(),
        cuts in (0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0),
        picks in prop::collection::vec((0usize..3, 0u32..70, 0i64..1100), 1..12),
        hops in 1usize..4,
        recent in any::<bool>(),
        rng in any::<u64>(),
    ) {
        let (_full_dir, full_db) = database(&customers, &orders, &items);
        let full = HeteroGraph::from_database(&full_db).expect("graph");
        // A prefix of each table whose links are those of the full database: a row of
        // the prefix may not point at a parent row that only the appended part holds.
        let cut = |f: f64, n: usize| ((f * n as f64) as usize).min(n);
        let kc = cut(cuts.0, customers.len()).max(1);
        let ko = orders
            .iter()
            .take(cut(cuts.1, orders.len()))
            .take_while(|(c, _)| c.is_none_or(|c| c < kc || c >= customers.len()))
            .count();
        let ki = items
            .iter()
            .take(cut(cuts.2, items.len()))
            .take_while(|(o, _)| *o < ko || *o >= orders.len())
            .count();
        let (_dir, db) = database(&customers[..kc], &orders[..ko], &items[..ki]);
        let mut graph = HeteroGraph::from_database(&db).expect("graph");
        let row = |i: Option<usize>, n: usize| i.filter(|&i| i < n).map_or(u32::MAX, |i| i as u32);
        let time = |t: i64| T0 + t;
        let c_times: Vec<i64> = customers[kc..].iter().map(|j| j.map_or(STATIC, time)).collect();
        graph.append(table(&graph, "customers"), &c_times, &[]).expect("append customers");
        let o_times: Vec<i64> = orders[ko..].iter().map(|&(_, t)| time(t)).collect();
        let o_parents = orders[ko..].iter().map(|&(c, _)| row(c, customers.len())).collect();
        graph.append(table(&graph, "orders"), &o_times, &[o_parents]).expect("append orders");
        let i_times: Vec<i64> = items[ki..].iter().map(|&(_, t)| time(t)).collect();
        let i_parents = items[ki..].iter().map(|&(o, _)| row(Some(o), orders.len())).collect();
        graph.append(table(&graph, "items"), &i_times, &[i_parents]).expect("append items");
        prop_assert_eq!(&graph.num_nodes, &full.num_nodes);
        prop_assert_eq!(graph.num_edges(), full.num_edges());

        let seeds = seeds_in(&full, &picks);
        let config = config_of(3, hops, recent, rng, 2);
        let want = sample(&full, &seeds, &config).expect("sample");
        prop_assert_eq!(&sample(&graph, &seeds, &config).expect("sample"), &want, "with deltas");
        graph.compact().expect("compact");
        for (e, (got, want)) in graph.csr.iter().zip(&full.csr).enumerate() {
            prop_assert!(graph.delta[e].is_empty());
            for node in 0..full.num_nodes[full.edge_types[e].src] as u32 {
                let ((a, b), (c, d)) = (got.range(node), want.range(node));
                prop_assert_eq!(&got.neighbors[a..b], &want.neighbors[c..d], "{}", full.edge_types[e].name);
                prop_assert_eq!(&got.times[a..b], &want.times[c..d], "{} node {}", full.edge_types[e].name, node);
            }
        }
        prop_assert_eq!(&sample(&graph, &seeds, &config).expect("sample"), &want, "compacted");
    }

    /// A graph split between shards by arbitrary owners samples, through [`Routed`],
    /// exactly as the whole graph; each partition alone holds only its owners' lists, and
    /// is what building only those lists from the database gives.
    #[test]
    fn a_split_graph_samples_as_the_whole(
        (customers, orders, items) in arb_world(),
        shards in 1usize..4,
        salt in any::<u64>(),
        picks in prop::collection::vec((0usize..3, 0u32..70, 0i64..1100), 1..12),
        hops in 1usize..4,
        recent in any::<bool>(),
        rng in any::<u64>(),
    ) {
        let (_dir, db) = database(&customers, &orders, &items);
        let whole = HeteroGraph::from_database(&db).expect("graph");
        let owners: Owners = whole
            .num_nodes
            .iter()
            .enumerate()
            .map(|(t, &n)| (0..n).map(|i| (mix(salt ^ ((t as u64) << 40) ^ i as u64) % shards as u64) as u16).collect())
            .collect();
        let parts: Vec<Arc<HeteroGraph>> = (0..shards)
            .map(|s| Arc::new(whole.partition(|t, n| usize::from(owners[t][n as usize]) == s).expect("partition")))
            .collect();
        // Each part built directly from the database is the same part.
        for (s, part) in parts.iter().enumerate() {
            let direct = HeteroGraph::from_database_where(&db, |t, n| usize::from(owners[t][n as usize]) == s).expect("graph");
            prop_assert_eq!(&direct.node_times, &part.node_times);
            for (a, b) in direct.csr.iter().zip(&part.csr) {
                prop_assert_eq!((&a.offsets, &a.neighbors, &a.times), (&b.offsets, &b.neighbors, &b.times));
            }
            // And so is the part put together from its nodes' stored neighbor lists, in
            // two segments per edge type (as a store holding two partitions keeps them).
            let segments: Vec<Vec<Segment>> = (0..whole.edge_types.len())
                .map(|e| {
                    let src = whole.edge_types[e].src;
                    let mine: Vec<u32> = (0..whole.num_nodes[src] as u32)
                        .filter(|&n| usize::from(owners[src][n as usize]) == s)
                        .collect();
                    let (a, b) = mine.split_at(mine.len() / 2);
                    [a, b].iter()
                        .map(|nodes| Segment::from_bytes(&whole.segment(e, nodes).to_bytes()).expect("segment"))
                        .collect()
                })
                .collect();
            let stored = HeteroGraph::from_segments(
                whole.tables.clone(),
                (whole.num_nodes.clone(), whole.node_times.clone()),
                whole.edge_types.clone(),
                &segments,
            ).expect("from segments");
            for (a, b) in stored.csr.iter().zip(&part.csr) {
                prop_assert_eq!((&a.offsets, &a.neighbors, &a.times), (&b.offsets, &b.neighbors, &b.times));
            }
        }
        let owners = Arc::new(owners);
        prop_assert_eq!(parts.iter().map(|p| p.num_edges()).sum::<usize>(), whole.num_edges());
        let seeds = seeds_in(&whole, &picks);
        let config = config_of(3, hops, recent, rng, 2);
        let want = sample(&whole, &seeds, &config).expect("sample");
        for home in 0..shards {
            let shards: Vec<Option<Arc<dyn Shard>>> = (0..shards)
                .map(|s| (s != home).then(|| parts[s].clone() as Arc<dyn Shard>))
                .collect();
            let view = Routed::new(parts[home].clone(), owners.clone(), shards, home).expect("routed");
            prop_assert_eq!(&sample(&view, &seeds, &config).expect("sample"), &want, "from shard {}", home);
        }
    }

    #[test]
    fn recent_takes_the_latest_eligible(
        times in prop::collection::vec(0i64..100, 1..40),
        anchor in 0i64..120,
        k in 1u32..8,
    ) {
        let orders: Vec<(Option<usize>, i64)> = times.iter().map(|&t| (Some(0), t)).collect();
        let (_dir, db) = database(&[None], &orders, &[]);
        let graph = HeteroGraph::from_database(&db).expect("graph");
        let customers = table(&graph, "customers");
        let seeds = [Seed { table: customers, node: 0, anchor: T0 + anchor }];
        let config = SampleConfig { fanouts: vec![k], strategy: Strategy::Recent, seed: 1, chunk: 1, ..SampleConfig::default() };
        let batch = sample(&graph, &seeds, &config).expect("sample");
        let orders_t = table(&graph, "orders");
        let mut got: Vec<u32> = batch.nodes[orders_t].ids.clone();
        got.sort_unstable();
        let mut eligible: Vec<(i64, u32)> = times.iter().enumerate().filter(|(_, t)| **t <= anchor).map(|(i, &t)| (t, i as u32)).collect();
        eligible.sort_unstable();
        let mut want: Vec<u32> = eligible.iter().rev().take(k as usize).map(|&(_, i)| i).collect();
        want.sort_unstable();
        prop_assert_eq!(got, want);
    }
}

/// The index of table `name` in the graph.
fn table(graph: &HeteroGraph, name: &str) -> usize {
    graph.tables.iter().position(|t| t == name).expect("table")
}

/// Chi-square over a star: a customer with 20 orders, 5 drawn per sample, 4000 samples.
/// Stored neighbor lists that were cut, grown or do not add up are refused, and so are
/// lists that name nodes the graph does not have.
#[test]
fn damaged_segments_are_refused() {
    let s = Segment {
        nodes: vec![0, 2],
        degrees: vec![2, 1],
        neighbors: vec![1, 0, 1],
    };
    let bytes = s.to_bytes();
    assert_eq!(Segment::from_bytes(&bytes), Some(s.clone()));
    for cut in [0, 8, 15, 16, bytes.len() - 4, bytes.len() - 1] {
        assert_eq!(Segment::from_bytes(&bytes[..cut]), None, "cut at {cut}");
    }
    let mut wrong = s.clone();
    wrong.degrees[0] = 3;
    assert_eq!(Segment::from_bytes(&wrong.to_bytes()), None);
    let edge = relgraph_sampler::EdgeType {
        name: "a->a".into(),
        src: 0,
        dst: 0,
    };
    let build = |seg: Segment, nodes: usize| {
        HeteroGraph::from_segments(
            vec!["a".into()],
            (vec![nodes], vec![Vec::new()]),
            vec![edge.clone()],
            &[vec![seg]],
        )
    };
    assert!(build(s.clone(), 3).is_ok());
    // Node 2 of a 2-node table, and neighbor 1 of a 1-node table.
    assert!(build(s.clone(), 2).is_err());
    let far = Segment {
        nodes: vec![0],
        degrees: vec![1],
        neighbors: vec![5],
    };
    assert!(build(far, 3).is_err());
}

#[test]
fn uniform_is_uniform_on_a_star() {
    let orders: Vec<(Option<usize>, i64)> = (0..20).map(|i| (Some(0), i)).collect();
    let (_dir, db) = database(&[None], &orders, &[]);
    let graph = HeteroGraph::from_database(&db).expect("graph");
    let customers = table(&graph, "customers");
    let orders_t = table(&graph, "orders");
    let seeds: Vec<Seed> = (0..4000)
        .map(|_| Seed {
            table: customers,
            node: 0,
            anchor: T0 + 100,
        })
        .collect();
    let batch = sample(
        &graph,
        &seeds,
        &SampleConfig {
            fanouts: vec![5],
            strategy: Strategy::Uniform,
            seed: 11,
            chunk: 64,
            ..SampleConfig::default()
        },
    )
    .expect("sample");
    let mut counts = [0f64; 20];
    for &id in &batch.nodes[orders_t].ids {
        counts[id as usize] += 1.0;
    }
    let expected = 4000.0 * 5.0 / 20.0;
    let chi2: f64 = counts
        .iter()
        .map(|c| (c - expected).powi(2) / expected)
        .sum();
    assert_eq!(counts.iter().sum::<f64>(), 20_000.0);
    assert!(
        chi2 < 43.8,
        "chi-square {chi2} over 19 degrees of freedom (p < 0.001 above 43.8)"
    );
}

#[test]
fn appends_are_checked() {
    let (_dir, db) = database(&[None, None], &[(Some(0), 1)], &[]);
    let mut graph = HeteroGraph::from_database(&db).expect("graph");
    let orders = table(&graph, "orders");
    let err = |graph: &mut HeteroGraph, parents: &[Vec<u32>]| {
        graph
            .append(orders, &[T0, T0], parents)
            .expect_err("bad append")
            .to_string()
    };
    assert_eq!(
        err(&mut graph, &[]),
        "appending to `orders`: 0 parent columns given, the table has 1 foreign keys"
    );
    assert_eq!(
        err(&mut graph, &[vec![0]]),
        "appending to `orders`: `orders.customer_id->customers` has 1 parents for 2 rows"
    );
    assert_eq!(
        err(&mut graph, &[vec![0, 2]]),
        "appending to `orders`: new row 1: `orders.customer_id->customers` points at row 2, \
         but `customers` has 2 rows"
    );
    assert_eq!(
        graph.num_nodes[orders], 1,
        "a failed append changes nothing"
    );
    graph
        .append(orders, &[T0, T0], &[vec![1, u32::MAX]])
        .expect("append");
    assert_eq!(graph.num_nodes[orders], 3);
    assert_eq!(graph.num_edges(), 4);
}

/// A delta past an eighth of its CSR (and a few thousand edges) folds in by itself.
#[test]
fn large_appends_fold_into_the_csr() {
    let (_dir, db) = database(&[None], &[(Some(0), 0)], &[]);
    let mut graph = HeteroGraph::from_database(&db).expect("graph");
    let (customers, orders) = (table(&graph, "customers"), table(&graph, "orders"));
    // Out of time order, newest first, to exercise the sorted inserts and the merge.
    let times: Vec<i64> = (0..5000).rev().map(|t| T0 + t).collect();
    graph
        .append(orders, &times, &[vec![0; 5000]])
        .expect("append");
    assert!(graph.delta.iter().all(|d| d.is_empty()), "compacted");
    let reverse = graph.foreign_keys(orders)[0] + 1;
    let (lo, hi) = graph.csr[reverse].range(0);
    assert_eq!(hi - lo, 5001);
    assert!(graph.csr[reverse].times[lo..hi].is_sorted());
    let seeds = [Seed {
        table: customers,
        node: 0,
        anchor: T0 + 2,
    }];
    let config = SampleConfig {
        fanouts: vec![2],
        strategy: Strategy::Recent,
        ..SampleConfig::default()
    };
    let batch = sample(&graph, &seeds, &config).expect("sample");
    // Times T0 + 2 and T0 + 1 are rows 1 + 4997 and 1 + 4998.
    assert_eq!(batch.nodes[orders].ids, vec![4998, 4999]);
}

#[test]
fn fanouts_can_be_set_per_edge_type() {
    let orders: Vec<(Option<usize>, i64)> = (0..20).map(|i| (Some(0), i)).collect();
    let items: Vec<(usize, i64)> = (0..20).map(|i| (i, i as i64)).collect();
    let (_dir, db) = database(&[None], &orders, &items);
    let graph = HeteroGraph::from_database(&db).expect("graph");
    let customers = table(&graph, "customers");
    let orders_t = table(&graph, "orders");
    let seeds = [Seed {
        table: customers,
        node: 0,
        anchor: T0 + 100,
    }];
    let config = SampleConfig {
        fanouts: vec![5, 5],
        edge_fanouts: vec![("customers<-orders.customer_id".to_string(), vec![2, 0])],
        ..SampleConfig::default()
    };
    let batch = sample(&graph, &seeds, &config).expect("sample");
    assert_eq!(batch.nodes[orders_t].ids.len(), 2, "two orders at hop 1");
    let wrong = SampleConfig {
        edge_fanouts: vec![("customers<-orders".to_string(), vec![1, 1])],
        ..config.clone()
    };
    let err = sample(&graph, &seeds, &wrong).expect_err("unknown edge type");
    assert!(
        err.to_string().contains("no edge type `customers<-orders`"),
        "{err}"
    );
    let short = SampleConfig {
        edge_fanouts: vec![("customers<-orders.customer_id".to_string(), vec![1])],
        ..config
    };
    assert!(sample(&graph, &seeds, &short).is_err());
}
