//! [`GraphView`]: what sampling reads through. Calls are batched per edge type (and, for a
//! distributed graph, per owner): one call serves every frontier node of a hop.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use rustc_hash::FxHashSet;

use crate::graph::{EdgeType, HeteroGraph};

/// How neighbors are picked among the eligible ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Uniformly, without replacement.
    Uniform,
    /// The most recent first.
    Recent,
}

/// One frontier node asking for up to `k` neighbors no newer than `anchor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub node: u32,
    pub anchor: i64,
    pub k: u32,
    /// Seed of this request's random draws, so results do not depend on batching.
    pub rng: u64,
}

pub trait GraphView: Sync {
    fn num_tables(&self) -> usize;
    fn edge_types(&self) -> &[EdgeType];
    /// Appends the times of `nodes` of `table` to `out` ([`crate::STATIC`] where none).
    fn node_times(&self, table: usize, nodes: &[u32], out: &mut Vec<i64>);
    /// For each request, up to `k` neighbors over `edge_type` whose time is at most the
    /// request's anchor, appended to `out` as (request index, neighbor).
    fn sample(
        &self,
        edge_type: usize,
        requests: &[Request],
        strategy: Strategy,
        out: &mut Vec<(u32, u32)>,
    );
}

/// Indices of up to `k` of the `n` eligible neighbors (`0..n`, oldest first); `seen` is
/// scratch space reused across calls.
pub fn pick(
    n: usize,
    k: usize,
    strategy: Strategy,
    rng: u64,
    chosen: &mut Vec<u32>,
    seen: &mut FxHashSet<u32>,
) {
    chosen.clear();
    if n <= k {
        chosen.extend(0..n as u32);
        return;
    }
    match strategy {
        Strategy::Recent => chosen.extend((n - k..n).rev().map(|i| i as u32)),
        Strategy::Uniform => {
            let mut rng = Pcg64Mcg::seed_from_u64(rng);
            if k <= 32 {
                // Floyd's algorithm with a linear membership test: k is small.
                for j in n - k..n {
                    let t = rng.random_range(0..=j) as u32;
                    chosen.push(if chosen.contains(&t) { j as u32 } else { t });
                }
            } else {
                seen.clear();
                for j in n - k..n {
                    let t = rng.random_range(0..=j) as u32;
                    let v = if seen.insert(t) { t } else { j as u32 };
                    seen.insert(v);
                    chosen.push(v);
                }
            }
        }
    }
}

impl GraphView for HeteroGraph {
    fn num_tables(&self) -> usize {
        self.tables.len()
    }

    fn edge_types(&self) -> &[EdgeType] {
        &self.edge_types
    }

    fn node_times(&self, table: usize, nodes: &[u32], out: &mut Vec<i64>) {
        out.extend(nodes.iter().map(|&n| self.node_time(table, n)));
    }

    fn sample(
        &self,
        edge_type: usize,
        requests: &[Request],
        strategy: Strategy,
        out: &mut Vec<(u32, u32)>,
    ) {
        let csr = &self.csr[edge_type];
        let (mut chosen, mut seen) = (Vec::new(), FxHashSet::default());
        for (i, r) in requests.iter().enumerate() {
            let (neighbors, times) = csr.of(r.node);
            let eligible = times.partition_point(|&t| t <= r.anchor);
            if eligible <= r.k as usize {
                out.extend(neighbors[..eligible].iter().map(|&n| (i as u32, n)));
                continue;
            }
            pick(
                eligible,
                r.k as usize,
                strategy,
                r.rng,
                &mut chosen,
                &mut seen,
            );
            out.extend(chosen.iter().map(|&c| (i as u32, neighbors[c as usize])));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_distinct_and_in_range() {
        let (mut chosen, mut seen) = (Vec::new(), FxHashSet::default());
        for (n, k) in [(10, 3), (100, 64), (5, 5), (3, 10), (1000, 128), (40, 33)] {
            pick(n, k, Strategy::Uniform, 7, &mut chosen, &mut seen);
            let set: std::collections::HashSet<u32> = chosen.iter().copied().collect();
            assert_eq!(chosen.len(), k.min(n));
            assert_eq!(set.len(), chosen.len(), "distinct for n={n} k={k}");
            assert!(chosen.iter().all(|&c| (c as usize) < n));
        }
        pick(10, 3, Strategy::Recent, 0, &mut chosen, &mut seen);
        assert_eq!(chosen, vec![9, 8, 7]);
    }
}
