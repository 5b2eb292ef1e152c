//! [`Routed`]: a [`GraphView`] over a graph split between workers. Each node's neighbor
//! lists live with one owner ([`HeteroGraph::partition`]); a hop's requests are grouped
//! per owner, each group sampled where it lives (in process, or over the network through
//! a [`Shard`]), and the answers put back in request order, so the subgraphs are exactly
//! those of the whole graph.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::graph::{EdgeType, HeteroGraph};
use crate::view::{GraphView, Neighbor, Request, Strategy};

/// Another shard's neighbor lists: a remote owner, or (in one process) its partition.
pub trait Shard: Send + Sync {
    fn sample_shard(
        &self,
        edge_type: usize,
        requests: &[Request],
        strategy: Strategy,
        out: &mut Vec<Neighbor>,
    ) -> Result<(), String>;
}

impl Shard for HeteroGraph {
    fn sample_shard(
        &self,
        edge_type: usize,
        requests: &[Request],
        strategy: Strategy,
        out: &mut Vec<Neighbor>,
    ) -> Result<(), String> {
        self.sample(edge_type, requests, strategy, out);
        Ok(())
    }
}

/// Per table, the shard of each node.
pub type Owners = Vec<Vec<u16>>;

/// The shard owning `node` of `table` (0 for a node past the end, which owns nothing).
pub fn owner(owners: &Owners, table: usize, node: u32) -> usize {
    owners[table]
        .get(node as usize)
        .map_or(0, |&o| usize::from(o))
}

pub struct Routed {
    /// This worker's partition: node times, the schema, and the home shard's lists.
    local: Arc<HeteroGraph>,
    owners: Arc<Owners>,
    /// The other shards by index; `None` at `home`, which `local` samples.
    shards: Vec<Option<Arc<dyn Shard>>>,
    home: usize,
    /// The first failure of a shard, which [`crate::sample`] turns into its error.
    error: Mutex<Option<String>>,
    routed: AtomicU64,
    total: AtomicU64,
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Routed {
    /// Shard `owners[table][node]` samples `node`'s neighbor lists: `local` where that is
    /// `home` (`shards[home]` is `None`), `shards[s]` for every other shard `s`.
    pub fn new(
        local: Arc<HeteroGraph>,
        owners: Arc<Owners>,
        shards: Vec<Option<Arc<dyn Shard>>>,
        home: usize,
    ) -> Result<Self, String> {
        let most = owners
            .iter()
            .flatten()
            .copied()
            .max()
            .map_or(0, usize::from);
        let complete = shards
            .iter()
            .enumerate()
            .all(|(s, shard)| shard.is_some() == (s != home));
        if most >= shards.len() || home >= shards.len() || !complete {
            return Err(format!(
                "{} shards, nodes owned by up to shard {most}, this is shard {home}: every \
                 shard but this one needs a way to reach it",
                shards.len()
            ));
        }
        Ok(Routed {
            local,
            owners,
            shards,
            home,
            error: Mutex::new(None),
            routed: AtomicU64::new(0),
            total: AtomicU64::new(0),
        })
    }

    /// Requests sent to shards other than `home`, and all requests, since creation.
    pub fn traffic(&self) -> (u64, u64) {
        (
            self.routed.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    fn fail(&self, message: String) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(message);
        }
    }

    /// Shard `s`'s neighbors for `requests`, appended to `out` (none when it failed).
    fn ask(
        &self,
        s: usize,
        edge_type: usize,
        requests: &[Request],
        strategy: Strategy,
        out: &mut Vec<Neighbor>,
    ) {
        match &self.shards[s] {
            None => self.local.sample(edge_type, requests, strategy, out),
            Some(shard) => {
                let before = out.len();
                if let Err(e) = shard.sample_shard(edge_type, requests, strategy, out) {
                    self.fail(format!("sampling on shard {s}: {e}"));
                    out.truncate(before);
                }
            }
        }
    }
}

impl GraphView for Routed {
    fn num_tables(&self) -> usize {
        self.local.num_tables()
    }

    fn edge_types(&self) -> &[EdgeType] {
        self.local.edge_types()
    }

    fn node_times(&self, table: usize, nodes: &[u32], out: &mut Vec<i64>) {
        self.local.node_times(table, nodes, out);
    }

    fn take_failure(&self) -> Option<String> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }

    fn sample(
        &self,
        edge_type: usize,
        requests: &[Request],
        strategy: Strategy,
        out: &mut Vec<Neighbor>,
    ) {
        let src = self.local.edge_types[edge_type].src;
        let owner = |node: u32| owner(&self.owners, src, node);
        self.total
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        if requests.iter().all(|r| owner(r.node) == self.home) {
            // The common case under co-located placement: nothing to route.
            self.local.sample(edge_type, requests, strategy, out);
            return;
        }
        // Per shard, its requests and where each came from.
        let mut groups: Vec<(Vec<Request>, Vec<u32>)> = vec![Default::default(); self.shards.len()];
        for (i, r) in requests.iter().enumerate() {
            let (group, origin) = &mut groups[owner(r.node)];
            group.push(*r);
            origin.push(i as u32);
        }
        // Every other shard on a thread of its own, at the same time, while this thread
        // samples the home shard (plain threads: a rayon fork here could run another
        // chunk of the same sampling call on this thread, in the middle of this one).
        let fill = |s: usize| {
            let (group, origin) = &groups[s];
            let mut found = Vec::new();
            self.ask(s, edge_type, group, strategy, &mut found);
            for n in &mut found {
                n.request = origin[n.request as usize];
            }
            found
        };
        let asked = |s: usize| !groups[s].0.is_empty();
        let answers: Vec<Vec<Neighbor>> = std::thread::scope(|scope| {
            let remote: Vec<_> = (0..groups.len())
                .filter(|&s| s != self.home && asked(s))
                .map(|s| (s, scope.spawn(move || fill(s))))
                .collect();
            let mut answers = vec![Vec::new(); groups.len()];
            if self.home < groups.len() && asked(self.home) {
                answers[self.home] = fill(self.home);
            }
            for (s, thread) in remote {
                answers[s] = thread
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e));
            }
            answers
        });
        let away = requests.len() - groups.get(self.home).map_or(0, |g| g.0.len());
        self.routed.fetch_add(away as u64, Ordering::Relaxed);
        // Back in request order (each shard answers its requests in order): a counting
        // placement by request.
        let mut starts = vec![0u32; requests.len() + 1];
        for n in answers.iter().flatten() {
            starts[n.request as usize + 1] += 1;
        }
        for i in 0..requests.len() {
            starts[i + 1] += starts[i];
        }
        let base = out.len();
        let total = starts[requests.len()] as usize;
        out.resize(
            base + total,
            Neighbor {
                request: 0,
                node: 0,
                time: 0,
            },
        );
        for n in answers.into_iter().flatten() {
            let at = &mut starts[n.request as usize];
            out[base + *at as usize] = n;
            *at += 1;
        }
    }
}
