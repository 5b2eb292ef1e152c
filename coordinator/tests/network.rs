//! An in-memory Raft network harness: three coordinators (real RocksDB stores in temp
//! dirs) exchange messages through a simulated network that drops, delays, partitions
//! and heals, while commands are proposed to whoever leads and nodes crash and restart.
//! Checks: replicas never hold different states at the same applied index, every
//! acknowledged submission survives exactly once, and all replicas converge after healing.

use std::collections::{BTreeMap, HashMap};

use prost::Message as _;
use raft::prelude::Message;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use relgraph_coordinator::core::{Core, ProposeError};
use relgraph_coordinator::quiet_logger;
use relgraph_coordinator::state::{Applied, Command};
use relgraph_proto::cluster::{ClusterState, RegisterWorker, SubmitJob, command::Op};
use tokio::sync::oneshot;

const N: u64 = 3;

struct Net {
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, Option<Core>>,
    in_flight: Vec<(u64, Message)>,
    round: u64,
    /// Partition: the group of each node (messages only flow inside a group).
    group: HashMap<u64, u8>,
    drop_p: f64,
    max_delay: u64,
    /// applied index -> state hash, per node.
    seen: HashMap<u64, BTreeMap<u64, u64>>,
}

fn hash(state: &ClusterState) -> u64 {
    relgraph_common::hash::fnv1a(state.encode_to_vec(), relgraph_common::hash::FNV_BASIS)
}

impl Net {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = BTreeMap::new();
        for id in 1..=N {
            let boot = (id == 1).then(|| ClusterState {
                coordinators: [(1, "n1".to_string())].into(),
                ..ClusterState::default()
            });
            nodes.insert(id, Some(open(&dir, id, boot)));
        }
        Net {
            dir,
            nodes,
            in_flight: Vec::new(),
            round: 0,
            group: HashMap::new(),
            drop_p: 0.0,
            max_delay: 0,
            seen: HashMap::new(),
        }
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.as_ref().filter(|c| c.is_leader()).map(|_| id))
            .max_by_key(|&id| self.nodes[&id].as_ref().map(|c| c.term()))
    }

    fn core(&mut self, id: u64) -> Option<&mut Core> {
        self.nodes.get_mut(&id).and_then(Option::as_mut)
    }

    /// One tick of every live node, then delivery and ready handling.
    fn round(&mut self, rng: &mut Pcg64Mcg) {
        self.round += 1;
        let mut outgoing = Vec::new();
        for node in self.nodes.values_mut().flatten() {
            node.tick();
            outgoing.extend(node.ready().expect("ready"));
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|(at, _)| *at <= self.round);
        self.in_flight = later;
        for (_, m) in due {
            let to = m.to;
            if let Some(node) = self.core(to) {
                node.step(m);
            }
        }
        for m in outgoing {
            let same_side =
                self.group.get(&m.from).unwrap_or(&0) == self.group.get(&m.to).unwrap_or(&0);
            if !same_side || rng.random_bool(self.drop_p) {
                continue;
            }
            let at = self.round + 1 + rng.random_range(0..=self.max_delay);
            self.in_flight.push((at, m));
        }
        for (&id, node) in &mut self.nodes {
            let Some(node) = node else { continue };
            let extra = node.ready().expect("ready");
            for m in extra {
                self.in_flight.push((self.round + 1, m));
            }
            let r = node.replica().read().expect("replica");
            self.seen
                .entry(id)
                .or_default()
                .insert(r.applied, hash(&r.state));
        }
    }

    fn crash(&mut self, id: u64) {
        self.nodes.insert(id, None);
    }

    fn restart(&mut self, id: u64) {
        let core = open(&self.dir, id, None);
        self.nodes.insert(id, Some(core));
    }
}

fn open(dir: &tempfile::TempDir, id: u64, boot: Option<ClusterState>) -> Core {
    Core::open(&dir.path().join(id.to_string()), id, boot, &quiet_logger()).expect("open")
}

fn wait<T>(
    net: &mut Net,
    rng: &mut Pcg64Mcg,
    mut rx: oneshot::Receiver<Result<T, ProposeError>>,
) -> Result<T, ProposeError> {
    for _ in 0..400 {
        net.round(rng);
        match rx.try_recv() {
            Ok(r) => return r,
            Err(oneshot::error::TryRecvError::Empty) => {}
            Err(_) => return Err(ProposeError::Dropped),
        }
    }
    Err(ProposeError::Timeout)
}

fn elect(net: &mut Net, rng: &mut Pcg64Mcg) -> u64 {
    for _ in 0..500 {
        if let Some(l) = net.leader() {
            return l;
        }
        net.round(rng);
    }
    panic!("no leader after 500 rounds");
}

fn form_group(net: &mut Net, rng: &mut Pcg64Mcg) {
    let leader = elect(net, rng);
    assert_eq!(leader, 1);
    for id in 2..=N {
        let (tx, rx) = oneshot::channel();
        net.core(1)
            .expect("node 1")
            .propose_add(id, &format!("n{id}"), tx);
        wait(net, rng, rx).expect("add voter");
    }
}

fn check_no_divergence(net: &Net) {
    let mut by_index: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (&id, seen) in &net.seen {
        for (&index, &h) in seen {
            match by_index.get(&index) {
                Some(&(other, oh)) => assert_eq!(
                    h, oh,
                    "nodes {id} and {other} hold different states at applied index {index}"
                ),
                None => {
                    by_index.insert(index, (id, h));
                }
            }
        }
    }
}

fn run(seed: u64) {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut net = Net::new();
    form_group(&mut net, &mut rng);
    assert_eq!(net.core(1).expect("node 1").voters(), vec![1, 2, 3]);
    net.drop_p = 0.1;
    net.max_delay = 3;
    let mut acked: Vec<String> = Vec::new();
    let mut pending: Vec<(String, oneshot::Receiver<Result<Applied, ProposeError>>)> = Vec::new();
    let mut down: Option<(u64, u64)> = None;
    for k in 0..1200u64 {
        net.round(&mut rng);
        // Faults: partitions that heal, crashes that restart.
        if k % 150 == 40 {
            let isolated = rng.random_range(1..=N);
            net.group = (1..=N).map(|id| (id, u8::from(id == isolated))).collect();
        }
        if k % 150 == 100 {
            net.group.clear();
        }
        if down.is_none() && k % 200 == 120 {
            let id = rng.random_range(1..=N);
            net.crash(id);
            down = Some((id, k + 60));
        }
        if let Some((id, until)) = down
            && k >= until
        {
            net.restart(id);
            down = None;
        }
        if k % 7 == 0
            && let Some(l) = net.leader()
        {
            let request = format!("req-{seed}-{k}");
            let op = if k % 3 == 0 {
                Op::RegisterWorker(RegisterWorker {
                    addr: request.clone(),
                    capacity: 1,
                })
            } else {
                Op::SubmitJob(SubmitJob {
                    request_id: request.clone(),
                    query: format!("PREDICT {k}"),
                    ..SubmitJob::default()
                })
            };
            let (tx, rx) = oneshot::channel();
            let cmd = Command {
                now_ms: k as i64,
                op: Some(op),
            };
            net.core(l).expect("leader").propose(&cmd, tx);
            if k % 3 != 0 {
                pending.push((request, rx));
            }
        }
        pending.retain_mut(|(request, rx)| match rx.try_recv() {
            Ok(Ok(_)) => {
                acked.push(request.clone());
                false
            }
            Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => false,
            Err(oneshot::error::TryRecvError::Empty) => true,
        });
        check_no_divergence(&net);
    }
    // Heal everything and let the replicas converge.
    net.group.clear();
    net.drop_p = 0.0;
    if let Some((id, _)) = down {
        net.restart(id);
    }
    for _ in 0..300 {
        net.round(&mut rng);
    }
    check_no_divergence(&net);
    let states: Vec<(u64, ClusterState)> = net
        .nodes
        .values()
        .flatten()
        .map(|c| {
            let r = c.replica().read().expect("replica");
            (r.applied, r.state.clone())
        })
        .collect();
    for (applied, s) in &states[1..] {
        assert_eq!(
            *applied, states[0].0,
            "replicas at different applied indexes"
        );
        assert_eq!(s, &states[0].1, "replicas hold different states");
    }
    let state = &states[0].1;
    assert!(
        acked.len() > 20,
        "too few commands went through: {}",
        acked.len()
    );
    for request in &acked {
        let n = state
            .jobs
            .values()
            .filter(|j| &j.request_id == request)
            .count();
        assert_eq!(n, 1, "acknowledged submission {request} is held {n} times");
    }
    assert_eq!(state.coordinators.len(), N as usize);
}

#[test]
fn replicas_never_diverge_under_drops_delays_partitions_and_restarts() {
    for seed in 1..=3 {
        run(seed);
    }
}

#[test]
fn a_snapshot_brings_a_new_voter_up_to_date_and_state_survives_restart() {
    let mut rng = Pcg64Mcg::seed_from_u64(9);
    let mut net = Net::new();
    net.crash(3);
    let leader = elect(&mut net, &mut rng);
    let (tx, rx) = oneshot::channel();
    net.core(leader).expect("leader").propose_add(2, "n2", tx);
    wait(&mut net, &mut rng, rx).expect("add voter 2");
    // More entries than one compaction interval, so that node 3 must get a snapshot.
    for k in 0..1100 {
        let (tx, rx) = oneshot::channel();
        let cmd = Command {
            now_ms: k,
            op: Some(Op::SubmitJob(SubmitJob {
                request_id: format!("r{k}"),
                ..SubmitJob::default()
            })),
        };
        let l = elect(&mut net, &mut rng);
        net.core(l).expect("leader").propose(&cmd, tx);
        if k % 100 == 99 {
            wait(&mut net, &mut rng, rx).expect("submit");
        }
    }
    net.restart(3);
    let l = elect(&mut net, &mut rng);
    let (tx, rx) = oneshot::channel();
    net.core(l).expect("leader").propose_add(3, "n3", tx);
    wait(&mut net, &mut rng, rx).expect("add voter 3");
    for _ in 0..100 {
        net.round(&mut rng);
    }
    let jobs = |net: &mut Net, id| {
        net.core(id)
            .expect("node")
            .replica()
            .read()
            .expect("replica")
            .state
            .jobs
            .len()
    };
    assert_eq!(jobs(&mut net, 3), 1100);
    let l = elect(&mut net, &mut rng);
    let (tx, rx) = oneshot::channel();
    net.core(l).expect("leader").read_index(tx);
    wait(&mut net, &mut rng, rx).expect("read index before restart");
    // Every node restarts from its store alone and reaches the same state.
    for id in 1..=N {
        net.crash(id);
    }
    for id in 1..=N {
        net.restart(id);
    }
    let l = elect(&mut net, &mut rng);
    let (tx, rx) = oneshot::channel();
    net.core(l).expect("leader").read_index(tx);
    wait(&mut net, &mut rng, rx).expect("read index");
    for id in 1..=N {
        assert_eq!(jobs(&mut net, id), 1100, "node {id} after restart");
    }
}
