//! [`GraphView`]: what sampling reads through. Calls are batched per edge type (and, for a
//! distributed graph, per owner): one call serves every frontier node of a hop.

use std::cell::RefCell;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use rustc_hash::FxHashSet;

use crate::delta::merge_lists;
use crate::graph::{EdgeType, HeteroGraph};

/// How neighbors are picked among the eligible ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Uniformly, without replacement.
    Uniform,
    /// The most recent first.
    Recent,
}

/// A sampled neighbor: the request it answers, its node id and its time ([`crate::STATIC`]
/// for static nodes), which sampling needs for the relative time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbor {
    pub request: u32,
    pub node: u32,
    pub time: i64,
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

/// Sampling calls a view from rayon's threads, holding per-thread scratch space across
/// the call, so an implementation must not fork rayon work of its own.
pub trait GraphView: Sync {
    fn num_tables(&self) -> usize;
    fn edge_types(&self) -> &[EdgeType];
    /// Appends the times of `nodes` of `table` to `out` ([`crate::STATIC`] where none).
    fn node_times(&self, table: usize, nodes: &[u32], out: &mut Vec<i64>);
    /// For each request, up to `k` neighbors over `edge_type` whose time is at most the
    /// request's anchor, appended to `out`.
    fn sample(
        &self,
        edge_type: usize,
        requests: &[Request],
        strategy: Strategy,
        out: &mut Vec<Neighbor>,
    );
    /// A failure since the last call that left some answers out (a remote owner that did
    /// not answer), clearing it; [`crate::sample`] fails the whole call with it.
    fn take_failure(&self) -> Option<String> {
        None
    }
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

    /// Four passes over the requests, so that the cache misses of one pass (list bounds,
    /// then each list's newest time) are independent and overlap, instead of forming one
    /// chain per request: (1) where each list lies; (2) whether the whole list is old
    /// enough, which is the common case; (3) a binary search where it is not; (4) the
    /// picks. Appended edges (the delta) merge in per node.
    fn sample(
        &self,
        edge_type: usize,
        requests: &[Request],
        strategy: Strategy,
        out: &mut Vec<Neighbor>,
    ) {
        let (csr, delta) = (&self.csr[edge_type], &self.delta[edge_type]);
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            s.ranges.clear();
            s.ranges.extend(requests.iter().map(|r| csr.range(r.node)));
            s.eligible.clear();
            s.eligible
                .extend(s.ranges.iter().zip(requests).map(|(&(lo, hi), r)| {
                    if hi > lo && csr.times[hi - 1] > r.anchor {
                        u32::MAX
                    } else {
                        (hi - lo) as u32
                    }
                }));
            for ((n, &(lo, hi)), r) in s.eligible.iter_mut().zip(&s.ranges).zip(requests) {
                if *n == u32::MAX {
                    *n = csr.times[lo..hi].partition_point(|&t| t <= r.anchor) as u32;
                }
            }
            for (i, r) in requests.iter().enumerate() {
                let lo = s.ranges[i].0;
                let n = s.eligible[i] as usize;
                let extra = if delta.is_empty() {
                    &[][..]
                } else {
                    delta.of(r.node)
                };
                if extra.is_empty() {
                    let (nodes, times) = (&csr.neighbors[lo..lo + n], &csr.times[lo..lo + n]);
                    s.emit(i as u32, n, r, strategy, out, |c| (nodes[c], times[c]));
                } else {
                    let fresh = extra.partition_point(|&(t, _)| t <= r.anchor);
                    s.merge(
                        &csr.neighbors[lo..lo + n],
                        &csr.times[lo..lo + n],
                        &extra[..fresh],
                    );
                    let merged = std::mem::take(&mut s.merged);
                    s.emit(i as u32, merged.len(), r, strategy, out, |c| {
                        (merged[c].1, merged[c].0)
                    });
                    s.merged = merged;
                }
            }
        });
    }
}

/// Buffers one thread reuses across calls.
#[derive(Default)]
struct Scratch {
    ranges: Vec<(usize, usize)>,
    eligible: Vec<u32>,
    chosen: Vec<u32>,
    seen: FxHashSet<u32>,
    /// A node's eligible base and appended neighbors, (time, node), oldest first.
    merged: Vec<(i64, u32)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Scratch {
    /// Emits up to `r.k` of the `n` eligible neighbors `at(0..n)` (oldest first).
    fn emit(
        &mut self,
        request: u32,
        n: usize,
        r: &Request,
        strategy: Strategy,
        out: &mut Vec<Neighbor>,
        at: impl Fn(usize) -> (u32, i64),
    ) {
        let neighbor = |c: usize| {
            let (node, time) = at(c);
            Neighbor {
                request,
                node,
                time,
            }
        };
        if n <= r.k as usize {
            out.extend((0..n).map(neighbor));
        } else {
            pick(
                n,
                r.k as usize,
                strategy,
                r.rng,
                &mut self.chosen,
                &mut self.seen,
            );
            out.extend(self.chosen.iter().map(|&c| neighbor(c as usize)));
        }
    }

    fn merge(&mut self, nodes: &[u32], times: &[i64], extra: &[(i64, u32)]) {
        self.merged.clear();
        merge_lists(nodes, times, extra, |t, n| self.merged.push((t, n)));
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
