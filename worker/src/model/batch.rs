//! [`ModelBatch`]: what one forward pass needs, built on the host from a sampled
//! subgraph (on a loader thread while the previous step runs).
//!
//! The sampled subgraph holds every node within the hops; a layer only needs to compute
//! the nodes the next layer reads. Working back from the last layer (the seeds, and for
//! ranking the item nodes of each seed's subgraph), each layer's rows are the next
//! layer's rows plus their sampled neighbors. The encoder runs once per distinct table
//! row of the batch (a row's columns do not depend on the seed), and the time encoding
//! once per distinct (row, age) pair, which is all a node's input depends on: nodes that
//! share both (a product reached from many seeds at one anchor, every node of a static
//! table's row) share one input row, and the first layer reads the nodes through it.

use std::sync::Arc;

use relgraph_sampler::{GraphView, STATIC, SampleConfig, SampleError, Seed, SubgraphBatch};
use rustc_hash::FxHashMap;

use super::features::{EncoderInput, FeatureSource};

/// Neighbor lists as CSR: `(offsets, neighbors)`.
pub type Lists = (Arc<Vec<u32>>, Arc<Vec<u32>>);

/// The rows one layer computes: per table, positions into the previous layer's rows;
/// per edge type, each computed row's neighbors as CSR over the previous layer's rows of
/// the destination table.
#[derive(Clone, Debug, Default)]
pub struct LayerPlan {
    pub rows: Vec<Vec<u32>>,
    pub edges: Vec<Lists>,
}

/// One table's nodes at the input: the encoder's distinct rows, and the distinct
/// (encoder row, age) pairs the nodes have, each pair one row of the input the first
/// layer reads (its plan indexes these pairs, not the nodes).
#[derive(Clone, Debug, Default)]
pub struct TableBatch {
    pub input: EncoderInput,
    /// The table row of each of the encoder's rows.
    pub rows: Vec<u32>,
    /// Each input row's position among the encoder's rows (ascending).
    pub encoded: Arc<Vec<u32>>,
    /// Each input row's age at its seed's anchor in days (0 for static rows).
    pub days: Vec<f32>,
}

#[derive(Clone, Debug, Default)]
pub struct ModelBatch {
    pub tables: Vec<TableBatch>,
    pub layers: Vec<LayerPlan>,
    /// Per seed, its row in the last layer's output of the entity table.
    pub seeds: Vec<u32>,
    /// Ranking: per seed, the item rows in its subgraph and their rows in the last
    /// layer's output of the item table.
    pub items: Vec<FxHashMap<u32, u32>>,
}

/// A node list sorted ascending, with membership by position.
fn positions(rows: &[u32], n: usize) -> Vec<u32> {
    let mut at = vec![u32::MAX; n];
    for (i, &r) in rows.iter().enumerate() {
        at[r as usize] = i as u32;
    }
    at
}

/// Neighbors per source node of each edge type, as CSR over local node ids.
fn adjacency(sub: &SubgraphBatch) -> Vec<(Vec<u32>, Vec<u32>)> {
    sub.edges
        .iter()
        .map(|e| {
            let n = e.src.iter().map(|&s| s as usize + 1).max().unwrap_or(0);
            let mut offsets = vec![0u32; n + 1];
            for &s in &e.src {
                offsets[s as usize + 1] += 1;
            }
            for i in 0..n {
                offsets[i + 1] += offsets[i];
            }
            let mut fill = offsets.clone();
            let mut nbrs = vec![0u32; e.src.len()];
            for (&s, &d) in e.src.iter().zip(&e.dst) {
                nbrs[fill[s as usize] as usize] = d;
                fill[s as usize] += 1;
            }
            (offsets, nbrs)
        })
        .collect()
}

impl ModelBatch {
    /// Samples the subgraphs of `seeds` (all of table `entity`) and lays out the
    /// forward pass of a `layers`-layer model; `items` names the item table of a
    /// ranking task.
    pub fn build(
        graph: &dyn GraphView,
        features: &dyn FeatureSource,
        seeds: &[Seed],
        config: &SampleConfig,
        layers: usize,
        items: Option<usize>,
    ) -> Result<ModelBatch, SampleError> {
        let sub = relgraph_sampler::sample(graph, seeds, config)?;
        let tables = sub.nodes.len();
        let counts: Vec<usize> = sub.nodes.iter().map(|n| n.ids.len()).collect();
        let adjacency = adjacency(&sub);
        let endpoints: Vec<(usize, usize)> =
            graph.edge_types().iter().map(|e| (e.src, e.dst)).collect();
        // rows[l][t]: the local nodes of table t that layer l computes (layer 0: input).
        let mut last: Vec<Vec<u32>> = vec![Vec::new(); tables];
        for &(t, local) in &sub.seeds {
            last[t as usize].push(local);
        }
        if let Some(items) = items {
            last[items] = (0..counts[items] as u32).collect();
        }
        let mut rows = vec![last];
        for _ in 0..layers {
            let next = rows
                .last()
                .map(|r| widen(r, &adjacency, &endpoints, &counts));
            rows.extend(next);
        }
        rows.reverse();
        let mut plans: Vec<LayerPlan> = (1..rows.len())
            .map(|l| layer_plan(&rows[l - 1], &rows[l], &adjacency, &endpoints, &counts))
            .collect();
        let (mut input, node_inputs): (Vec<TableBatch>, Vec<Vec<u32>>) = (0..tables)
            .map(|t| table_batch(&sub, t, &rows[0][t]))
            .unzip();
        // Every table's rows at once: a split job's remote rows come in one round.
        let wanted: Vec<Vec<u32>> = input
            .iter_mut()
            .map(|b| std::mem::take(&mut b.rows))
            .collect();
        let encoded = features
            .gather_tables(&wanted)
            .map_err(|e| SampleError::Shard(format!("encoded rows: {e}")))?;
        for ((b, rows), e) in input.iter_mut().zip(wanted).zip(encoded) {
            (b.rows, b.input) = (rows, e);
        }
        if let Some(first) = plans.first_mut() {
            read_inputs(first, &node_inputs, &endpoints);
        }
        let top = &rows[rows.len() - 1];
        let seed_rows = sub
            .seeds
            .iter()
            .map(|&(t, local)| top[t as usize].binary_search(&local).unwrap_or(0) as u32)
            .collect();
        let mut by_seed = vec![FxHashMap::default(); seeds.len()];
        if let Some(items) = items {
            let block = &sub.nodes[items];
            for (i, (&row, &seed)) in block.ids.iter().zip(&block.seeds).enumerate() {
                by_seed[seed as usize].insert(row, i as u32);
            }
        }
        Ok(ModelBatch {
            tables: input,
            layers: plans,
            seeds: seed_rows,
            items: by_seed,
        })
    }
}

/// The rows a layer must read to compute `rows`: them and their neighbors.
fn widen(
    rows: &[Vec<u32>],
    adjacency: &[(Vec<u32>, Vec<u32>)],
    endpoints: &[(usize, usize)],
    counts: &[usize],
) -> Vec<Vec<u32>> {
    let mut keep: Vec<Vec<bool>> = counts.iter().map(|&n| vec![false; n]).collect();
    for (t, r) in rows.iter().enumerate() {
        for &u in r {
            keep[t][u as usize] = true;
        }
    }
    for (e, &(s, d)) in endpoints.iter().enumerate() {
        let (offsets, nbrs) = &adjacency[e];
        for &u in &rows[s] {
            let u = u as usize;
            if u + 1 < offsets.len() {
                for &v in &nbrs[offsets[u] as usize..offsets[u + 1] as usize] {
                    keep[d][v as usize] = true;
                }
            }
        }
    }
    keep.iter()
        .map(|k| (0..k.len() as u32).filter(|&i| k[i as usize]).collect())
        .collect()
}

fn layer_plan(
    input: &[Vec<u32>],
    output: &[Vec<u32>],
    adjacency: &[(Vec<u32>, Vec<u32>)],
    endpoints: &[(usize, usize)],
    counts: &[usize],
) -> LayerPlan {
    let at: Vec<Vec<u32>> = input
        .iter()
        .zip(counts)
        .map(|(r, &n)| positions(r, n))
        .collect();
    let rows = output
        .iter()
        .enumerate()
        .map(|(t, r)| r.iter().map(|&u| at[t][u as usize]).collect())
        .collect();
    let edges = endpoints
        .iter()
        .enumerate()
        .map(|(e, &(s, d))| {
            let (offsets, nbrs) = &adjacency[e];
            let mut out_offsets = Vec::with_capacity(output[s].len() + 1);
            let mut idx = Vec::new();
            out_offsets.push(0);
            for &u in &output[s] {
                let u = u as usize;
                if u + 1 < offsets.len() {
                    let list = &nbrs[offsets[u] as usize..offsets[u + 1] as usize];
                    idx.extend(list.iter().map(|&v| at[d][v as usize]));
                }
                out_offsets.push(idx.len() as u32);
            }
            (Arc::new(out_offsets), Arc::new(idx))
        })
        .collect();
    LayerPlan { rows, edges }
}

/// Table `t`'s input for its nodes `rows` (local ids), but for the encoded rows
/// themselves, and the input row of each node.
fn table_batch(sub: &SubgraphBatch, t: usize, rows: &[u32]) -> (TableBatch, Vec<u32>) {
    let block = &sub.nodes[t];
    let mut distinct: Vec<u32> = rows.iter().map(|&u| block.ids[u as usize]).collect();
    distinct.sort_unstable();
    distinct.dedup();
    // Each node's (encoder row, age in days as bits): nodes equal in both are one input.
    let keys: Vec<(u32, u32)> = rows
        .iter()
        .map(|&u| {
            let row = distinct.binary_search(&block.ids[u as usize]).unwrap_or(0) as u32;
            let days = match block.rel_times[u as usize] {
                STATIC => 0.0f32,
                s => s as f32 / 86_400.0,
            };
            (row, days.to_bits())
        })
        .collect();
    let mut pairs = keys.clone();
    pairs.sort_unstable();
    pairs.dedup();
    let node_inputs = keys
        .iter()
        .map(|k| pairs.binary_search(k).unwrap_or(0) as u32)
        .collect();
    let batch = TableBatch {
        input: EncoderInput::default(),
        rows: distinct,
        encoded: Arc::new(pairs.iter().map(|p| p.0).collect()),
        days: pairs.iter().map(|p| f32::from_bits(p.1)).collect(),
    };
    (batch, node_inputs)
}

/// Points the first layer's plan, which indexes input nodes, at their input rows.
fn read_inputs(plan: &mut LayerPlan, node_inputs: &[Vec<u32>], endpoints: &[(usize, usize)]) {
    for (rows, map) in plan.rows.iter_mut().zip(node_inputs) {
        for r in rows.iter_mut() {
            *r = map[*r as usize];
        }
    }
    for ((_, idx), &(_, d)) in plan.edges.iter_mut().zip(endpoints) {
        *idx = Arc::new(idx.iter().map(|&v| node_inputs[d][v as usize]).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::features::TableFeatures;
    use relgraph_sampler::{EdgeBlock, NodeBlock};

    /// Table 0: a seed (local 0) with two neighbors in table 1 (locals 0, 1); local 1 of
    /// table 1 has a neighbor in table 0 (local 1), two hops out.
    fn two_hops() -> SubgraphBatch {
        SubgraphBatch {
            nodes: vec![
                NodeBlock {
                    ids: vec![7, 3],
                    seeds: vec![0, 0],
                    rel_times: vec![0, 86_400],
                },
                NodeBlock {
                    ids: vec![5, 9],
                    seeds: vec![0, 0],
                    rel_times: vec![STATIC, 2 * 86_400],
                },
            ],
            edges: vec![
                EdgeBlock {
                    src: vec![1],
                    dst: vec![1],
                },
                EdgeBlock {
                    src: vec![0, 0],
                    dst: vec![0, 1],
                },
            ],
            seeds: vec![(0, 0)],
        }
    }

    #[test]
    fn each_layer_computes_only_what_the_next_reads() {
        let sub = two_hops();
        let adjacency = adjacency(&sub);
        // Edge type 0: table 1 -> table 0; edge type 1: table 0 -> table 1.
        let endpoints = [(1, 0), (0, 1)];
        let counts = [2, 2];
        let last = vec![vec![0], vec![]];
        let middle = widen(&last, &adjacency, &endpoints, &counts);
        assert_eq!(middle, vec![vec![0], vec![0, 1]]);
        let first = widen(&middle, &adjacency, &endpoints, &counts);
        assert_eq!(first, vec![vec![0, 1], vec![0, 1]]);
        let plan = layer_plan(&first, &middle, &adjacency, &endpoints, &counts);
        assert_eq!(plan.rows, vec![vec![0], vec![0, 1]]);
        // The seed reads both table-1 nodes; table-1 node 1 reads table-0 node 1.
        assert_eq!(*plan.edges[1].0, vec![0, 2]);
        assert_eq!(*plan.edges[1].1, vec![0, 1]);
        assert_eq!(*plan.edges[0].0, vec![0, 0, 1]);
        assert_eq!(*plan.edges[0].1, vec![1]);
        let top = layer_plan(&middle, &last, &adjacency, &endpoints, &counts);
        assert_eq!(top.rows, vec![vec![0], vec![]]);
        assert_eq!(*top.edges[1].1, vec![0, 1]);
    }

    #[test]
    fn encoder_rows_are_distinct_and_ages_in_days() {
        let sub = two_hops();
        let features = TableFeatures {
            rows: 10,
            dense_width: 1,
            dense: (0..10).map(|r| r as f32).collect(),
            ..TableFeatures::default()
        };
        let (b, inputs) = table_batch(&sub, 1, &[0, 1]);
        assert_eq!(features.gather(&b.rows).dense, vec![5.0, 9.0]);
        assert_eq!(*b.encoded, vec![0, 1]);
        assert_eq!(b.days, vec![0.0, 2.0]);
        assert_eq!(inputs, vec![0, 1]);
    }

    #[test]
    fn nodes_of_one_row_at_one_age_share_an_input_row() {
        // Table 1: row 5 reached three times (twice at the same age), row 9 once.
        let mut sub = two_hops();
        sub.nodes[1] = NodeBlock {
            ids: vec![5, 9, 5, 5],
            seeds: vec![0, 0, 1, 1],
            rel_times: vec![86_400, STATIC, 86_400, 3 * 86_400],
        };
        let (b, inputs) = table_batch(&sub, 1, &[0, 1, 2, 3]);
        assert_eq!(b.rows, vec![5, 9]);
        assert_eq!(*b.encoded, vec![0, 0, 1]);
        assert_eq!(b.days, vec![1.0, 3.0, 0.0]);
        assert_eq!(inputs, vec![0, 2, 0, 1]);
        // A first layer reading nodes 3 and 2 of table 1 (and node 1 of table 0) reads
        // their inputs instead.
        let mut plan = LayerPlan {
            rows: vec![vec![1], vec![3, 2]],
            edges: vec![(Arc::new(vec![0, 2]), Arc::new(vec![2, 3]))],
        };
        read_inputs(&mut plan, &[vec![0, 1], inputs], &[(0, 1)]);
        assert_eq!(plan.rows, vec![vec![1], vec![1, 0]]);
        assert_eq!(*plan.edges[0].1, vec![0, 1]);
        assert_eq!(*plan.edges[0].0, vec![0, 2]);
    }
}
