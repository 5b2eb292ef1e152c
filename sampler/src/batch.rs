//! [`SubgraphBatch`]: the disjoint subgraphs of a batch of seeds, and its Arrow form.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt16Array, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;

use crate::graph::STATIC;

/// The sampled nodes of one table: global ids (rows), the seed each belongs to, and the
/// relative time `anchor - node time` in seconds ([`STATIC`] for static nodes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeBlock {
    pub ids: Vec<u32>,
    pub seeds: Vec<u32>,
    pub rel_times: Vec<i64>,
}

/// The sampled edges of one edge type, as local indices: `src` into the block of the
/// edge type's source table (the node whose neighbors were read), `dst` into the block
/// of its destination table (the neighbor).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EdgeBlock {
    pub src: Vec<u32>,
    pub dst: Vec<u32>,
}

/// One subgraph per seed, all in one batch; a node reached twice within one seed's
/// subgraph is one node, a node reached by two seeds is two.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubgraphBatch {
    /// Per table.
    pub nodes: Vec<NodeBlock>,
    /// Per edge type.
    pub edges: Vec<EdgeBlock>,
    /// Per seed: its table and its local index there.
    pub seeds: Vec<(u16, u32)>,
}

/// One column of every part, end to end, each value passed through `map(part, value)`;
/// the parts are copied in parallel, each into its own slice of the output.
fn gather<T, F>(parts: &[SubgraphBatch], column: F, map: impl Fn(usize, T) -> T + Sync) -> Vec<T>
where
    T: Copy + Default + Send + Sync,
    F: Fn(&SubgraphBatch) -> &Vec<T> + Sync,
{
    let total = parts.iter().map(|p| column(p).len()).sum();
    let mut out = vec![T::default(); total];
    let mut slices = Vec::with_capacity(parts.len());
    let mut rest = out.as_mut_slice();
    for p in parts {
        let (head, tail) = rest.split_at_mut(column(p).len());
        slices.push(head);
        rest = tail;
    }
    slices.into_par_iter().enumerate().for_each(|(p, slice)| {
        for (d, &v) in slice.iter_mut().zip(column(&parts[p])) {
            *d = map(p, v);
        }
    });
    out
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("subgraph batch: {0}")]
    Shape(String),
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, WireError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| WireError::Shape(format!("missing or mistyped column `{name}`")))
}

impl SubgraphBatch {
    pub fn empty(tables: usize, edge_types: usize) -> Self {
        SubgraphBatch {
            nodes: vec![NodeBlock::default(); tables],
            edges: vec![EdgeBlock::default(); edge_types],
            seeds: Vec::new(),
        }
    }

    pub fn num_edges(&self) -> usize {
        self.edges.iter().map(|e| e.src.len()).sum()
    }

    pub fn num_nodes(&self) -> usize {
        self.nodes.iter().map(|n| n.ids.len()).sum()
    }

    /// The batches of consecutive seed chunks as one, local indices shifted past the
    /// nodes of the parts before; each part has `tables` node blocks, and `endpoints[e]`
    /// is edge type `e`'s (source table, destination table). Parts are copied in parallel.
    pub fn concat(
        parts: &[SubgraphBatch],
        tables: usize,
        endpoints: &[(usize, usize)],
    ) -> SubgraphBatch {
        // shifts[p][t]: nodes of table t in the parts before part p.
        let mut shifts = Vec::with_capacity(parts.len());
        let mut before = vec![0u32; tables];
        for part in parts {
            shifts.push(before.clone());
            for (b, block) in before.iter_mut().zip(&part.nodes) {
                *b += block.ids.len() as u32;
            }
        }
        let nodes = (0..tables)
            .map(|t| NodeBlock {
                ids: gather(parts, |p| &p.nodes[t].ids, |_, v| v),
                seeds: gather(parts, |p| &p.nodes[t].seeds, |_, v| v),
                rel_times: gather(parts, |p| &p.nodes[t].rel_times, |_, v| v),
            })
            .collect();
        let edges = endpoints
            .iter()
            .enumerate()
            .map(|(e, &(s, d))| EdgeBlock {
                src: gather(parts, |p| &p.edges[e].src, |p, v| v + shifts[p][s]),
                dst: gather(parts, |p| &p.edges[e].dst, |p, v| v + shifts[p][d]),
            })
            .collect();
        let seeds = gather(
            parts,
            |p| &p.seeds,
            |p, (t, i)| (t, i + shifts[p][t as usize]),
        );
        SubgraphBatch {
            nodes,
            edges,
            seeds,
        }
    }

    /// Three record batches: nodes (table, id, seed, rel_time; null rel_time for static
    /// nodes), edges (edge_type, src, dst) and seeds (seed, table, local).
    pub fn to_arrow(&self) -> Result<[RecordBatch; 3], WireError> {
        let mut table = Vec::new();
        let (mut ids, mut seeds, mut rel) = (Vec::new(), Vec::new(), Vec::new());
        for (t, block) in self.nodes.iter().enumerate() {
            table.extend(std::iter::repeat_n(t as u16, block.ids.len()));
            ids.extend_from_slice(&block.ids);
            seeds.extend_from_slice(&block.seeds);
            rel.extend(block.rel_times.iter().map(|&r| (r != STATIC).then_some(r)));
        }
        let nodes = batch(vec![
            ("table", Arc::new(UInt16Array::from(table)) as ArrayRef),
            ("id", Arc::new(UInt32Array::from(ids))),
            ("seed", Arc::new(UInt32Array::from(seeds))),
            ("rel_time", Arc::new(Int64Array::from(rel))),
        ])?;
        let mut edge_type = Vec::new();
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        for (e, block) in self.edges.iter().enumerate() {
            edge_type.extend(std::iter::repeat_n(e as u16, block.src.len()));
            src.extend_from_slice(&block.src);
            dst.extend_from_slice(&block.dst);
        }
        let edges = batch(vec![
            (
                "edge_type",
                Arc::new(UInt16Array::from(edge_type)) as ArrayRef,
            ),
            ("src", Arc::new(UInt32Array::from(src))),
            ("dst", Arc::new(UInt32Array::from(dst))),
        ])?;
        let seeds = batch(vec![
            (
                "table",
                Arc::new(UInt16Array::from_iter_values(
                    self.seeds.iter().map(|s| s.0),
                )) as ArrayRef,
            ),
            (
                "local",
                Arc::new(UInt32Array::from_iter_values(
                    self.seeds.iter().map(|s| s.1),
                )),
            ),
        ])?;
        Ok([nodes, edges, seeds])
    }

    /// Reads [`SubgraphBatch::to_arrow`]'s form back.
    pub fn from_arrow(
        batches: &[RecordBatch; 3],
        tables: usize,
        edge_types: usize,
    ) -> Result<Self, WireError> {
        let mut out = SubgraphBatch::empty(tables, edge_types);
        let [nodes, edges, seeds] = batches;
        let table = column::<UInt16Array>(nodes, "table")?;
        let (ids, seed, rel) = (
            column::<UInt32Array>(nodes, "id")?,
            column::<UInt32Array>(nodes, "seed")?,
            column::<Int64Array>(nodes, "rel_time")?,
        );
        for i in 0..nodes.num_rows() {
            let block = out.nodes.get_mut(table.value(i) as usize).ok_or_else(|| {
                WireError::Shape(format!("node table {} out of range", table.value(i)))
            })?;
            block.ids.push(ids.value(i));
            block.seeds.push(seed.value(i));
            block.rel_times.push(if rel.is_valid(i) {
                rel.value(i)
            } else {
                STATIC
            });
        }
        let kind = column::<UInt16Array>(edges, "edge_type")?;
        let (src, dst) = (
            column::<UInt32Array>(edges, "src")?,
            column::<UInt32Array>(edges, "dst")?,
        );
        for i in 0..edges.num_rows() {
            let block = out.edges.get_mut(kind.value(i) as usize).ok_or_else(|| {
                WireError::Shape(format!("edge type {} out of range", kind.value(i)))
            })?;
            block.src.push(src.value(i));
            block.dst.push(dst.value(i));
        }
        let (st, local) = (
            column::<UInt16Array>(seeds, "table")?,
            column::<UInt32Array>(seeds, "local")?,
        );
        out.seeds = (0..seeds.num_rows())
            .map(|i| (st.value(i), local.value(i)))
            .collect();
        Ok(out)
    }
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, WireError> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), *a.data_type() == DataType::Int64))
        .collect();
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| WireError::Shape(e.to_string()))
}
