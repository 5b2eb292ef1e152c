//! Temporal neighbor sampling (ARCHITECTURE.md §4): from each seed (node, anchor time),
//! hop by hop, up to `fanout` neighbors per node and edge type whose time is at most the
//! seed's anchor (static nodes always). One disjoint subgraph per seed. The result is the
//! same for an RNG seed whatever the thread count: every draw is seeded by (RNG seed,
//! seed index, hop, edge type, node).

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::batch::SubgraphBatch;
use crate::graph::STATIC;
use crate::view::{GraphView, Request, Strategy};

/// A seed: node `node` of table `table`, seen at time `anchor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    pub table: usize,
    pub node: u32,
    pub anchor: i64,
}

#[derive(Clone, Debug)]
pub struct SampleConfig {
    /// Neighbors per node, per edge type, per hop.
    pub fanouts: Vec<u32>,
    /// Per-hop fanouts of named edge types, overriding `fanouts` for them.
    pub edge_fanouts: Vec<(String, Vec<u32>)>,
    pub strategy: Strategy,
    pub seed: u64,
    /// Seeds sampled together in one batched pass (the unit of parallel work).
    pub chunk: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            fanouts: vec![128, 64],
            edge_fanouts: Vec::new(),
            strategy: Strategy::Uniform,
            seed: 0,
            chunk: 64,
        }
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn draw_seed(base: u64, seed: u64, hop: usize, edge_type: usize, node: u32) -> u64 {
    mix(base ^ mix(seed ^ mix(((hop as u64) << 48) ^ ((edge_type as u64) << 32) ^ u64::from(node))))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SampleError {
    #[error("no edge type `{name}` to set a fanout for (edge types: {known})")]
    UnknownEdgeType { name: String, known: String },
    #[error("edge type `{name}` has fanouts for {given} hops, but the sampler runs {hops}")]
    HopCount {
        name: String,
        given: usize,
        hops: usize,
    },
}

/// Fanout per hop and edge type.
fn fanout_table(view: &dyn GraphView, config: &SampleConfig) -> Result<Vec<Vec<u32>>, SampleError> {
    let types = view.edge_types();
    let mut table: Vec<Vec<u32>> = config
        .fanouts
        .iter()
        .map(|&f| vec![f; types.len()])
        .collect();
    for (name, per_hop) in &config.edge_fanouts {
        let Some(e) = types.iter().position(|t| t.name == *name) else {
            let known: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
            return Err(SampleError::UnknownEdgeType {
                name: name.clone(),
                known: known.join(", "),
            });
        };
        if per_hop.len() != table.len() {
            return Err(SampleError::HopCount {
                name: name.clone(),
                given: per_hop.len(),
                hops: table.len(),
            });
        }
        for (hop, &f) in per_hop.iter().enumerate() {
            table[hop][e] = f;
        }
    }
    Ok(table)
}

/// Samples one subgraph per seed; chunks of seeds run in parallel on rayon's pool.
pub fn sample(
    view: &dyn GraphView,
    seeds: &[Seed],
    config: &SampleConfig,
) -> Result<SubgraphBatch, SampleError> {
    let fanouts = fanout_table(view, config)?;
    let endpoints: Vec<(usize, usize)> = view.edge_types().iter().map(|e| (e.src, e.dst)).collect();
    let chunk = config.chunk.max(1);
    let parts: Vec<SubgraphBatch> = seeds
        .par_chunks(chunk)
        .enumerate()
        .map(|(c, part)| sample_chunk(view, part, c * chunk, config, &fanouts))
        .collect();
    let mut out = SubgraphBatch::empty(view.num_tables(), endpoints.len());
    for part in parts {
        out.append(part, &endpoints);
    }
    Ok(out)
}

/// A frontier node: its table, local index, id, seed (global index) and anchor.
#[derive(Clone, Copy)]
struct Frontier {
    table: usize,
    local: u32,
    id: u32,
    seed: u32,
    anchor: i64,
}

fn sample_chunk(
    view: &dyn GraphView,
    seeds: &[Seed],
    first: usize,
    config: &SampleConfig,
    fanouts: &[Vec<u32>],
) -> SubgraphBatch {
    let edge_types = view.edge_types();
    let mut out = SubgraphBatch::empty(view.num_tables(), edge_types.len());
    let mut local: FxHashMap<(u32, u32, u32), u32> = FxHashMap::default();
    let mut anchors: Vec<Vec<i64>> = vec![Vec::new(); view.num_tables()];
    let mut frontier: Vec<Frontier> = Vec::with_capacity(seeds.len());
    for (i, s) in seeds.iter().enumerate() {
        let block = &mut out.nodes[s.table];
        let index = block.ids.len() as u32;
        let seed = (first + i) as u32;
        local.insert((seed, s.table as u32, s.node), index);
        block.ids.push(s.node);
        block.seeds.push(seed);
        anchors[s.table].push(s.anchor);
        out.seeds.push((s.table as u16, index));
        frontier.push(Frontier {
            table: s.table,
            local: index,
            id: s.node,
            seed,
            anchor: s.anchor,
        });
    }
    let (mut requests, mut owners, mut found) = (Vec::new(), Vec::new(), Vec::new());
    for (hop, per_type) in fanouts.iter().enumerate() {
        let mut next = Vec::new();
        frontier.sort_by_key(|f| f.table);
        for (e, et) in edge_types.iter().enumerate() {
            let fanout = per_type[e];
            if fanout == 0 {
                continue;
            }
            requests.clear();
            owners.clear();
            let lo = frontier.partition_point(|f| f.table < et.src);
            let hi = frontier.partition_point(|f| f.table <= et.src);
            for f in &frontier[lo..hi] {
                let rng = draw_seed(config.seed, u64::from(f.seed), hop, e, f.id);
                requests.push(Request {
                    node: f.id,
                    anchor: f.anchor,
                    k: fanout,
                    rng,
                });
                owners.push(*f);
            }
            if requests.is_empty() {
                continue;
            }
            found.clear();
            view.sample(e, &requests, config.strategy, &mut found);
            for &(r, neighbor) in &found {
                let owner = owners[r as usize];
                let key = (owner.seed, et.dst as u32, neighbor);
                let block = &mut out.nodes[et.dst];
                let index = *local.entry(key).or_insert_with(|| {
                    let index = block.ids.len() as u32;
                    block.ids.push(neighbor);
                    block.seeds.push(owner.seed);
                    anchors[et.dst].push(owner.anchor);
                    next.push(Frontier {
                        table: et.dst,
                        local: index,
                        id: neighbor,
                        seed: owner.seed,
                        anchor: owner.anchor,
                    });
                    index
                });
                out.edges[e].src.push(owner.local);
                out.edges[e].dst.push(index);
            }
        }
        frontier = next;
    }
    let mut times = Vec::new();
    for (t, block) in out.nodes.iter_mut().enumerate() {
        times.clear();
        view.node_times(t, &block.ids, &mut times);
        block.rel_times = times
            .iter()
            .zip(&anchors[t])
            .map(|(&time, &anchor)| {
                if time == STATIC {
                    STATIC
                } else {
                    anchor - time
                }
            })
            .collect();
    }
    out
}
