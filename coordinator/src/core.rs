//! One coordinator's Raft replica, driven synchronously: the async node (`node.rs`) and the
//! in-memory network harness (tests) call the same `tick`, `step`, `propose` and `ready`.
//! `ready` handles raft-rs's `Ready` in the documented order: send messages, install a
//! snapshot, apply committed entries, persist entries and hard state, send persisted
//! messages, advance, then the light ready (commit index, messages, committed entries).

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, StateRole};
use relgraph_proto::cluster::ClusterState;
use tokio::sync::oneshot;

use crate::state::{self, Applied, Command, Rejected};
use crate::store::{Replica, RocksStore, Shared, StoreError};

/// Log entries applied between two snapshots (which also truncate the log).
pub const COMPACT_EVERY: u64 = 1000;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProposeError {
    #[error("this coordinator is not the leader (leader: {leader})")]
    NotLeader { leader: u64 },
    #[error("the proposal was dropped (leadership changed); retry")]
    Dropped,
    #[error("{0}")]
    Rejected(#[from] Rejected),
    #[error("no answer from the Raft group in time; retry")]
    Timeout,
    #[error("the coordinator is shutting down")]
    Stopped,
    #[error("bad request: {0}")]
    Invalid(String),
}

pub type Reply<T> = oneshot::Sender<Result<T, ProposeError>>;

/// Raft timing in ticks (the node ticks every 100 ms).
pub fn raft_config(id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: 10,
        heartbeat_tick: 3,
        applied,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..raft::Config::default()
    }
}

pub struct Core {
    pub id: u64,
    raw: RawNode<RocksStore>,
    replica: Shared,
    seq: u64,
    proposals: HashMap<u64, Reply<Applied>>,
    reads: HashMap<u64, Reply<()>>,
    /// ReadIndex answers waiting for the state to catch up: (index, request).
    ready_reads: Vec<(u64, u64)>,
    /// Reads asked before this leader committed an entry of its term (raft-rs drops
    /// those); issued once it has.
    deferred_reads: Vec<Vec<u8>>,
    since_compact: u64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("id", &self.id).finish()
    }
}

fn raft_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged {
        path: String::new(),
        what: "raft state",
        detail: e.to_string(),
    }
}

impl Core {
    /// Opens the replica stored in `dir`. `bootstrap` starts a new group with this node as
    /// its only voter (ignored when `dir` already holds a replica).
    pub fn open(
        dir: &Path,
        id: u64,
        bootstrap: Option<ClusterState>,
        logger: &slog::Logger,
    ) -> Result<Self, StoreError> {
        let (store, replica) = RocksStore::open(dir, id, bootstrap)?;
        let config = raft_config(id, store.snapshot_index());
        let raw = RawNode::new(&config, store, logger).map_err(raft_err)?;
        // Proposal ids start from the clock so that a restarted node never mistakes an
        // old entry for one of its new proposals.
        let seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(Core {
            id,
            raw,
            replica,
            seq,
            proposals: HashMap::new(),
            reads: HashMap::new(),
            ready_reads: Vec::new(),
            deferred_reads: Vec::new(),
            since_compact: 0,
        })
    }

    pub fn replica(&self) -> &Shared {
        &self.replica
    }

    pub fn leader(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn commit(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        v.sort_unstable();
        v
    }

    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// Starts an election now (tests; a new group elects itself without waiting).
    pub fn campaign(&mut self) {
        let _ = self.raw.campaign();
    }

    pub fn step(&mut self, msg: Message) {
        // Messages from unknown peers or stale terms are dropped; Raft retries.
        let _ = self.raw.step(msg);
    }

    fn context(&mut self) -> (u64, Vec<u8>) {
        self.seq += 1;
        let mut ctx = self.id.to_be_bytes().to_vec();
        ctx.extend_from_slice(&self.seq.to_be_bytes());
        (self.seq, ctx)
    }

    /// Our own proposal id in an entry's context, if it is one of ours.
    fn ours(&self, ctx: &[u8]) -> Option<u64> {
        if ctx.len() == 16 && ctx[..8] == self.id.to_be_bytes() {
            Some(u64::from_be_bytes(ctx[8..].try_into().ok()?))
        } else {
            None
        }
    }

    fn not_leader(&self) -> ProposeError {
        ProposeError::NotLeader {
            leader: self.leader(),
        }
    }

    pub fn propose(&mut self, cmd: &Command, reply: Reply<Applied>) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let (seq, ctx) = self.context();
        match self.raw.propose(ctx, cmd.encode_to_vec()) {
            Ok(()) => {
                self.proposals.insert(seq, reply);
            }
            Err(_) => {
                let _ = reply.send(Err(ProposeError::Dropped));
            }
        }
    }

    /// Proposes adding coordinator `id` (serving at `addr`) as a voter.
    pub fn propose_add(&mut self, id: u64, addr: &str, reply: Reply<Applied>) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if self.voters().contains(&id) {
            let _ = reply.send(Ok(Applied::Done));
            return;
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = id;
        let (seq, mut ctx) = self.context();
        ctx.extend_from_slice(addr.as_bytes());
        match self.raw.propose_conf_change(ctx, cc) {
            Ok(()) => {
                self.proposals.insert(seq, reply);
            }
            Err(_) => {
                let _ = reply.send(Err(ProposeError::Dropped));
            }
        }
    }

    /// Answers once this node's state is known to be at least as new as the leader's
    /// commit index at the time of the call (Raft's ReadIndex).
    pub fn read_index(&mut self, reply: Reply<()>) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let (seq, ctx) = self.context();
        if self.raw.raft.commit_to_current_term() {
            self.raw.read_index(ctx);
        } else {
            self.deferred_reads.push(ctx);
        }
        self.reads.insert(seq, reply);
    }

    /// Handles whatever Raft has ready; returns the messages to send.
    pub fn ready(&mut self) -> Result<Vec<Message>, StoreError> {
        if !self.deferred_reads.is_empty() && self.raw.raft.commit_to_current_term() {
            for ctx in std::mem::take(&mut self.deferred_reads) {
                self.raw.read_index(ctx);
            }
        }
        let mut out = Vec::new();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss()
            && ss.raft_state != StateRole::Leader
        {
            // Proposals of a deposed leader may still commit; their callers retry by
            // request id, which the state machine de-duplicates.
            for (_, r) in self.proposals.drain() {
                let _ = r.send(Err(ProposeError::Dropped));
            }
            for (_, r) in self.reads.drain() {
                let _ = r.send(Err(ProposeError::Dropped));
            }
            self.ready_reads.clear();
            self.deferred_reads.clear();
        }
        out.extend(rd.take_messages());
        if !rd.snapshot().is_empty() {
            self.install(rd.snapshot().clone())?;
        }
        self.apply(rd.take_committed_entries())?;
        if !rd.entries().is_empty() {
            self.raw
                .mut_store()
                .append(rd.entries())
                .map_err(raft_err)?;
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs).map_err(raft_err)?;
        }
        for rs in rd.take_read_states() {
            if let Some(seq) = self.ours(&rs.request_ctx) {
                self.ready_reads.push((rs.index, seq));
            }
        }
        out.extend(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit).map_err(raft_err)?;
        }
        out.extend(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.answer_reads();
        if self.since_compact >= COMPACT_EVERY {
            self.raw.mut_store().compact().map_err(raft_err)?;
            self.since_compact = 0;
        }
        Ok(out)
    }

    fn answer_reads(&mut self) {
        let applied = self.applied();
        let reads = &mut self.reads;
        self.ready_reads.retain(|&(index, seq)| {
            if index > applied {
                return true;
            }
            if let Some(r) = reads.remove(&seq) {
                let _ = r.send(Ok(()));
            }
            false
        });
    }

    pub fn applied(&self) -> u64 {
        self.replica.read().map_or(0, |r| r.applied)
    }

    fn install(&mut self, snap: Snapshot) -> Result<(), StoreError> {
        let state = ClusterState::decode(&snap.data[..]).map_err(raft_err)?;
        self.raw
            .mut_store()
            .apply_snapshot(&snap)
            .map_err(raft_err)?;
        let meta = snap.get_metadata();
        let mut r = self.replica.write().map_err(raft_err)?;
        *r = Replica {
            state,
            applied: meta.index,
            applied_term: meta.term,
            conf: meta.get_conf_state().clone(),
        };
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        for e in entries {
            let (outcome, compact) = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => (Ok(Applied::Done), false),
                EntryType::EntryNormal => {
                    let outcome = match Command::decode(&e.data[..]) {
                        Ok(cmd) => {
                            let mut r = self.replica.write().map_err(raft_err)?;
                            state::apply(&mut r.state, &cmd).map_err(ProposeError::from)
                        }
                        Err(err) => Err(ProposeError::Invalid(err.to_string())),
                    };
                    (outcome, false)
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(raft_err)?;
                    let cs = self.raw.apply_conf_change(&cc).map_err(raft_err)?;
                    let mut r = self.replica.write().map_err(raft_err)?;
                    r.conf = cs;
                    match cc.get_change_type() {
                        ConfChangeType::RemoveNode => {
                            r.state.coordinators.remove(&cc.node_id);
                        }
                        _ if e.context.len() > 16 => {
                            let addr = String::from_utf8_lossy(&e.context[16..]).into_owned();
                            r.state.coordinators.insert(cc.node_id, addr);
                        }
                        _ => {}
                    }
                    (Ok(Applied::Done), true)
                }
                EntryType::EntryConfChangeV2 => (
                    Err(ProposeError::Invalid("joint consensus is not used".into())),
                    false,
                ),
            };
            {
                let mut r = self.replica.write().map_err(raft_err)?;
                r.applied = e.index;
                r.applied_term = e.term;
            }
            self.since_compact += 1;
            if compact {
                // A restart then never replays a configuration change.
                self.raw.mut_store().compact().map_err(raft_err)?;
                self.since_compact = 0;
            }
            if let Some(seq) = self.ours(&e.context[..e.context.len().min(16)])
                && let Some(reply) = self.proposals.remove(&seq)
            {
                let _ = reply.send(outcome);
            }
        }
        Ok(())
    }
}
