//! Rows appended after a graph was built. Their edges go to a [`Delta`] per edge type,
//! which sampling reads beside the CSR, so new events are visible at once; `compact`
//! folds the deltas into the CSRs in one linear merge (no sort, no key lookups), and
//! `append` does so by itself for an edge type whose delta has grown past an eighth of
//! its CSR.

use rayon::prelude::*;
use relgraph_common::NO_ROW;
use rustc_hash::FxHashMap;

use crate::graph::{Csr, GraphError, HeteroGraph, STATIC};

/// Appended edges of one edge type: per source node, its new neighbors as (time, node),
/// oldest first (ties in the order they came, as a rebuild would order them).
#[derive(Clone, Debug, Default)]
pub struct Delta {
    lists: FxHashMap<u32, Vec<(i64, u32)>>,
    edges: usize,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.edges == 0
    }

    pub fn num_edges(&self) -> usize {
        self.edges
    }

    /// New neighbors of `node`, oldest first.
    pub fn of(&self, node: u32) -> &[(i64, u32)] {
        self.lists.get(&node).map_or(&[], Vec::as_slice)
    }

    /// Bytes held (entries and per-list overhead, not the hash table's spare room).
    pub fn bytes(&self) -> usize {
        self.edges * 16 + self.lists.len() * (4 + 3 * 8)
    }

    fn insert(&mut self, node: u32, time: i64, neighbor: u32) {
        let list = self.lists.entry(node).or_default();
        let at = list.partition_point(|&(t, _)| t <= time);
        list.insert(at, (time, neighbor));
        self.edges += 1;
    }
}

/// Merges a CSR list (`nodes`, `times`) with appended `(time, node)` entries, oldest
/// first; on equal times the CSR's (older) rows come first.
pub(crate) fn merge_lists(
    nodes: &[u32],
    times: &[i64],
    extra: &[(i64, u32)],
    mut push: impl FnMut(i64, u32),
) {
    let (mut i, mut j) = (0, 0);
    while i < nodes.len() || j < extra.len() {
        if j == extra.len() || (i < nodes.len() && times[i] <= extra[j].0) {
            push(times[i], nodes[i]);
            i += 1;
        } else {
            push(extra[j].0, extra[j].1);
            j += 1;
        }
    }
}

impl Csr {
    /// This CSR with `delta` merged in, over `nodes` source nodes (at least as many as the
    /// CSR has). Each list stays sorted by time; on equal times the older rows come first.
    pub fn merged(&self, delta: &Delta, nodes: usize, name: &str) -> Result<Csr, GraphError> {
        let total = self.num_edges() + delta.num_edges();
        if total > u32::MAX as usize {
            return Err(GraphError::TooManyEdges(name.to_string()));
        }
        // Where node `n`'s list starts (nodes added since the build have empty lists).
        let last = self.offsets.last().copied().unwrap_or(0);
        let at = |n: usize| self.offsets.get(n).copied().unwrap_or(last);
        let mut offsets = Vec::with_capacity(nodes + 1);
        offsets.push(0u32);
        let (mut neighbors, mut times) = (Vec::with_capacity(total), Vec::with_capacity(total));
        let mut keys: Vec<usize> = delta.lists.keys().map(|&k| k as usize).collect();
        keys.sort_unstable();
        let (mut node, mut shift) = (0usize, 0u32);
        for key in keys.into_iter().chain([nodes]) {
            // Nodes without new edges keep their lists: one bulk copy, offsets shifted.
            let (lo, hi) = (at(node) as usize, at(key) as usize);
            neighbors.extend_from_slice(&self.neighbors[lo..hi]);
            times.extend_from_slice(&self.times[lo..hi]);
            offsets.extend((node..key).map(|n| at(n + 1) + shift));
            if key == nodes {
                break;
            }
            let (lo, hi) = (at(key) as usize, at(key + 1) as usize);
            let (base_n, base_t) = (&self.neighbors[lo..hi], &self.times[lo..hi]);
            let extra = delta.of(key as u32);
            merge_lists(base_n, base_t, extra, |t, n| {
                neighbors.push(n);
                times.push(t);
            });
            shift += extra.len() as u32;
            offsets.push(neighbors.len() as u32);
            node = key + 1;
        }
        Ok(Csr {
            offsets,
            neighbors,
            times,
        })
    }
}

impl HeteroGraph {
    /// The child→parent edge types of `table`'s foreign keys, in schema order (edge type
    /// `e` is a foreign key's child→parent direction when even, `e + 1` its reverse).
    pub fn foreign_keys(&self, table: usize) -> Vec<usize> {
        (0..self.edge_types.len())
            .step_by(2)
            .filter(|&e| self.edge_types[e].src == table)
            .collect()
    }

    /// Appends rows to `table`: their times ([`STATIC`] where none) and, per foreign key
    /// of [`HeteroGraph::foreign_keys`], each row's parent row ([`NO_ROW`] for a null or
    /// dangling key). The new rows get the next node ids. Sampling sees them at once.
    pub fn append(
        &mut self,
        table: usize,
        times: &[i64],
        parents: &[Vec<u32>],
    ) -> Result<(), GraphError> {
        let fks = self.foreign_keys(table);
        let fail = |problem: String| GraphError::Append {
            table: self.tables[table].clone(),
            problem,
        };
        if parents.len() != fks.len() {
            return Err(fail(format!(
                "{} parent columns given, the table has {} foreign keys",
                parents.len(),
                fks.len()
            )));
        }
        let rows = times.len();
        if self.num_nodes[table] + rows >= NO_ROW as usize {
            return Err(GraphError::TooManyNodes(self.tables[table].clone()));
        }
        for (column, &e) in parents.iter().zip(&fks) {
            let (name, p) = (&self.edge_types[e].name, self.edge_types[e].dst);
            if column.len() != rows {
                return Err(fail(format!(
                    "`{name}` has {} parents for {rows} rows",
                    column.len()
                )));
            }
            let known = self.num_nodes[p] + if p == table { rows } else { 0 };
            if let Some((i, &bad)) = column
                .iter()
                .enumerate()
                .find(|&(_, &x)| x != NO_ROW && x as usize >= known)
            {
                return Err(fail(format!(
                    "new row {i}: `{name}` points at row {bad}, but `{}` has {known} rows",
                    self.tables[p]
                )));
            }
        }
        let first = self.num_nodes[table] as u32;
        let node_times = &mut self.node_times[table];
        // A table without times so far keeps none unless a new row brings one.
        if !node_times.is_empty() || times.iter().any(|&t| t != STATIC) {
            node_times.resize(self.num_nodes[table], STATIC);
            node_times.extend_from_slice(times);
        }
        self.num_nodes[table] += rows;
        for (column, &e) in parents.iter().zip(&fks) {
            let p = self.edge_types[e].dst;
            for (i, &parent) in column.iter().enumerate() {
                if parent != NO_ROW {
                    let child = first + i as u32;
                    let parent_time = self.node_time(p, parent);
                    self.delta[e].insert(child, parent_time, parent);
                    self.delta[e + 1].insert(parent, times[i], child);
                }
            }
        }
        for e in fks.iter().flat_map(|&e| [e, e + 1]) {
            if self.delta[e].num_edges() > self.csr[e].num_edges() / 8 + 4096 {
                self.compact_edge_type(e)?;
            }
        }
        Ok(())
    }

    /// Folds every delta into its CSR.
    pub fn compact(&mut self) -> Result<(), GraphError> {
        let nodes: Vec<usize> = self
            .edge_types
            .iter()
            .map(|e| self.num_nodes[e.src])
            .collect();
        let merged: Vec<Option<Csr>> = (0..self.csr.len())
            .into_par_iter()
            .map(|e| {
                let delta = &self.delta[e];
                (!delta.is_empty())
                    .then(|| self.csr[e].merged(delta, nodes[e], &self.edge_types[e].name))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        for (e, csr) in merged.into_iter().enumerate() {
            if let Some(csr) = csr {
                self.csr[e] = csr;
                self.delta[e] = Delta::default();
            }
        }
        Ok(())
    }

    fn compact_edge_type(&mut self, e: usize) -> Result<(), GraphError> {
        let nodes = self.num_nodes[self.edge_types[e].src];
        self.csr[e] = self.csr[e].merged(&self.delta[e], nodes, &self.edge_types[e].name)?;
        self.delta[e] = Delta::default();
        Ok(())
    }
}
