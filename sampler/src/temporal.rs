//! Temporal neighbor sampling (ARCHITECTURE.md §4): from each seed (node, anchor time),
//! hop by hop, up to `fanout` neighbors per node and edge type whose time is at most the
//! seed's anchor (static nodes always). One disjoint subgraph per seed. The result is the
//! same for an RNG seed whatever the thread count: every draw is seeded by (RNG seed,
//! seed index, hop, edge type, node).

use std::cell::RefCell;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::batch::SubgraphBatch;
use crate::graph::STATIC;
use relgraph_common::hash::mix;

use crate::view::{GraphView, Neighbor, Request, Strategy};

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
    /// Seeds sampled together in one batched pass (the unit of parallel work); 0 picks it
    /// from the fanouts (see [`auto_chunk`]). The subgraphs do not depend on it, only the
    /// order of nodes within the batch does.
    pub chunk: usize,
    /// Per seed, the number its draws are keyed by instead of its index in the batch, so
    /// that a seed samples the same subgraph in any batch that holds it (data-parallel
    /// workers sample their part of a global batch exactly as one worker would). Empty:
    /// the index.
    pub keys: Vec<u64>,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            fanouts: vec![128, 64],
            edge_fanouts: Vec::new(),
            strategy: Strategy::Uniform,
            seed: 0,
            chunk: 0,
            keys: Vec::new(),
        }
    }
}

/// `anchor - time`, or [`STATIC`] for a static node.
fn relative(anchor: i64, time: i64) -> i64 {
    if time == STATIC {
        STATIC
    } else {
        anchor - time
    }
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
    #[error("sampling through another worker: {0}")]
    Shard(String),
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

impl SampleConfig {
    /// Seeds per chunk for `fanouts` (per hop, per edge type): `chunk`, or [`auto_chunk`]
    /// where it is 0.
    pub fn chunk_for(&self, fanouts: &[Vec<u32>]) -> usize {
        match self.chunk {
            0 => auto_chunk(fanouts),
            n => n,
        }
    }
}

/// Seeds per chunk for these fanouts: up to 64, fewer when a seed's subgraph may be so
/// large (the bound: the product of the largest fanouts, summed over hops) that a chunk's
/// dedup tables would outgrow the caches; at [128, 128, 128] it is 2.
pub fn auto_chunk(fanouts: &[Vec<u32>]) -> usize {
    let (mut width, mut bound) = (1u64, 0u64);
    for per_type in fanouts {
        width = width.saturating_mul(u64::from(per_type.iter().copied().max().unwrap_or(0)));
        bound = bound.saturating_add(width);
    }
    ((1u64 << 22) / bound.max(1)).clamp(1, 64) as usize
}

/// Samples one subgraph per seed; chunks of seeds run in parallel on rayon's pool.
pub fn sample(
    view: &dyn GraphView,
    seeds: &[Seed],
    config: &SampleConfig,
) -> Result<SubgraphBatch, SampleError> {
    let fanouts = fanout_table(view, config)?;
    let endpoints: Vec<(usize, usize)> = view.edge_types().iter().map(|e| (e.src, e.dst)).collect();
    let chunk = config.chunk_for(&fanouts);
    // One job on the pool for the whole call: the parallel steps inside then run on its
    // workers without a hand-off from the caller's thread each time.
    rayon::scope(|_| {
        let parts: Vec<SubgraphBatch> = seeds
            .par_chunks(chunk)
            .enumerate()
            .map(|(c, part)| sample_chunk(view, part, c * chunk, config, &fanouts))
            .collect();
        if let Some(failure) = view.take_failure() {
            return Err(SampleError::Shard(failure));
        }
        Ok(SubgraphBatch::concat(&parts, view.num_tables(), &endpoints))
    })
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

/// Buffers one thread reuses from chunk to chunk, so sampling allocates only its output.
#[derive(Default)]
struct Scratch {
    /// Per table, (seed within the chunk << 32 | node) -> local index: the dedup that makes
    /// each seed's subgraph hold a node once.
    local: Vec<FxHashMap<u64, u32>>,
    frontier: Vec<Frontier>,
    next: Vec<Frontier>,
    requests: Vec<Request>,
    owners: Vec<Frontier>,
    found: Vec<Neighbor>,
    times: Vec<i64>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn sample_chunk(
    view: &dyn GraphView,
    seeds: &[Seed],
    first: usize,
    config: &SampleConfig,
    fanouts: &[Vec<u32>],
) -> SubgraphBatch {
    SCRATCH.with(|s| sample_chunk_with(view, seeds, first, config, fanouts, &mut s.borrow_mut()))
}

fn sample_chunk_with(
    view: &dyn GraphView,
    seeds: &[Seed],
    first: usize,
    config: &SampleConfig,
    fanouts: &[Vec<u32>],
    scratch: &mut Scratch,
) -> SubgraphBatch {
    let edge_types = view.edge_types();
    let mut out = SubgraphBatch::empty(view.num_tables(), edge_types.len());
    let Scratch {
        local,
        frontier,
        next,
        requests,
        owners,
        found,
        times,
    } = scratch;
    local.resize_with(view.num_tables(), FxHashMap::default);
    local.iter_mut().for_each(FxHashMap::clear);
    frontier.clear();
    let key = |seed: u32, node: u32| (u64::from(seed - first as u32) << 32) | u64::from(node);
    for (i, s) in seeds.iter().enumerate() {
        let block = &mut out.nodes[s.table];
        let index = block.ids.len() as u32;
        let seed = (first + i) as u32;
        local[s.table].insert(key(seed, s.node), index);
        block.ids.push(s.node);
        block.seeds.push(seed);
        out.seeds.push((s.table as u16, index));
        frontier.push(Frontier {
            table: s.table,
            local: index,
            id: s.node,
            seed,
            anchor: s.anchor,
        });
    }
    // The seeds' own times, one call per table; every other node's time comes with it.
    for (t, block) in out.nodes.iter_mut().enumerate() {
        if !block.ids.is_empty() {
            times.clear();
            view.node_times(t, &block.ids, times);
            let anchors = frontier.iter().filter(|f| f.table == t).map(|f| f.anchor);
            block.rel_times = times
                .iter()
                .zip(anchors)
                .map(|(&time, anchor)| relative(anchor, time))
                .collect();
        }
    }
    for (hop, per_type) in fanouts.iter().enumerate() {
        next.clear();
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
                let key = config
                    .keys
                    .get(f.seed as usize)
                    .copied()
                    .unwrap_or(u64::from(f.seed));
                let rng = draw_seed(config.seed, key, hop, e, f.id);
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
            view.sample(e, requests, config.strategy, found);
            let (block, seen, edges) = (
                &mut out.nodes[et.dst],
                &mut local[et.dst],
                &mut out.edges[e],
            );
            edges.src.reserve(found.len());
            edges.dst.reserve(found.len());
            for n in found.iter() {
                let owner = owners[n.request as usize];
                let index = *seen.entry(key(owner.seed, n.node)).or_insert_with(|| {
                    let index = block.ids.len() as u32;
                    block.ids.push(n.node);
                    block.seeds.push(owner.seed);
                    block.rel_times.push(relative(owner.anchor, n.time));
                    next.push(Frontier {
                        table: et.dst,
                        local: index,
                        id: n.node,
                        seed: owner.seed,
                        anchor: owner.anchor,
                    });
                    index
                });
                edges.src.push(owner.local);
                edges.dst.push(index);
            }
        }
        std::mem::swap(frontier, next);
    }
    out
}
