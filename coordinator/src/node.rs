//! A coordinator replica running for real: a dedicated thread owns the [`Core`] (Raft's
//! state is single-threaded and its store writes block on fsync), ticks it every
//! [`TICK`], feeds it inputs from the gRPC services, and hands its outgoing messages to a
//! [`Transport`].

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raft::prelude::Message;
use relgraph_proto::cluster::command::Op;
use tokio::sync::{oneshot, watch};

use crate::core::{Core, ProposeError};
use crate::state::{Applied, Command};
use crate::store::Shared;

pub const TICK: Duration = Duration::from_millis(100);
/// How long a caller waits for its proposal or read to be answered.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum Input {
    Raft(Vec<Message>),
    Propose(Command, oneshot::Sender<Result<Applied, ProposeError>>),
    AddVoter(u64, String, oneshot::Sender<Result<Applied, ProposeError>>),
    ReadIndex(oneshot::Sender<Result<(), ProposeError>>),
}

/// Delivers Raft messages to peers (gRPC in a cluster; tests may use their own).
pub trait Transport: Send + Sync + 'static {
    fn send(&self, msgs: Vec<Message>);
}

/// What a replica reports about itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeStatus {
    pub id: u64,
    pub leader: u64,
    pub is_leader: bool,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<u64>,
    /// Set when the replica stopped because its store failed.
    pub failed: Option<String>,
}

/// Where peers serve: learned from their traffic (newest) or from the replicated
/// membership.
#[derive(Clone, Debug, Default)]
pub struct Peers(Arc<RwLock<HashMap<u64, String>>>);

impl Peers {
    pub fn learn(&self, id: u64, addr: &str) {
        if let Ok(mut m) = self.0.write()
            && m.get(&id).map(String::as_str) != Some(addr)
        {
            m.insert(id, addr.to_string());
        }
    }

    pub fn addr(&self, id: u64, replica: &Shared) -> Option<String> {
        if let Some(a) = self.0.read().ok().and_then(|m| m.get(&id).cloned()) {
            return Some(a);
        }
        replica
            .read()
            .ok()
            .and_then(|r| r.state.coordinators.get(&id).cloned())
    }
}

#[derive(Clone, Debug)]
pub struct NodeHandle {
    tx: mpsc::Sender<Input>,
    pub replica: Shared,
    pub peers: Peers,
    status: watch::Receiver<NodeStatus>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl NodeHandle {
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change (leadership, commit, ...).
    pub fn watch(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    pub fn leader_addr(&self) -> Option<String> {
        let s = self.status();
        (s.leader != 0)
            .then(|| self.peers.addr(s.leader, &self.replica))
            .flatten()
    }

    pub fn deliver(&self, msgs: Vec<Message>) {
        let _ = self.tx.send(Input::Raft(msgs));
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ProposeError>>) -> Input,
    ) -> Result<T, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| ProposeError::Stopped)?;
        match tokio::time::timeout(ANSWER_WITHIN, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout),
        }
    }

    /// Replicates `op` through Raft and returns what applying it did.
    pub async fn propose(&self, op: Op) -> Result<Applied, ProposeError> {
        let cmd = Command {
            now_ms: now_ms(),
            op: Some(op),
        };
        self.ask(|tx| Input::Propose(cmd, tx)).await
    }

    pub async fn add_voter(&self, id: u64, addr: String) -> Result<Applied, ProposeError> {
        self.ask(|tx| Input::AddVoter(id, addr, tx)).await
    }

    /// Waits until this replica's state is current (ReadIndex; leader only).
    pub async fn read_index(&self) -> Result<(), ProposeError> {
        self.ask(Input::ReadIndex).await
    }
}

/// Runs `core` on its own thread until every handle is dropped.
pub fn spawn(mut core: Core, transport: Arc<dyn Transport>, peers: Peers) -> NodeHandle {
    let (tx, rx) = mpsc::channel::<Input>();
    let replica = core.replica().clone();
    let (status_tx, status) = watch::channel(NodeStatus {
        id: core.id,
        ..NodeStatus::default()
    });
    let id = core.id;
    let spawned = std::thread::Builder::new()
        .name(format!("raft-{id}"))
        .spawn(move || {
            let mut next_tick = Instant::now() + TICK;
            loop {
                let wait = next_tick.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(input) => {
                        handle(&mut core, input);
                        for input in rx.try_iter().take(1024) {
                            handle(&mut core, input);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                if Instant::now() >= next_tick {
                    core.tick();
                    next_tick += TICK;
                }
                let failed = match core.ready() {
                    Ok(msgs) => {
                        transport.send(msgs);
                        None
                    }
                    Err(e) => Some(e.to_string()),
                };
                let status = NodeStatus {
                    id: core.id,
                    leader: core.leader(),
                    is_leader: core.is_leader(),
                    term: core.term(),
                    commit: core.commit(),
                    applied: core.applied(),
                    voters: core.voters(),
                    failed: failed.clone(),
                };
                status_tx.send_if_modified(|s| {
                    let changed = *s != status;
                    *s = status;
                    changed
                });
                if let Some(e) = failed {
                    tracing::error!(node = id, "raft store failed, replica stopped: {e}");
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the raft thread: {e}");
    }
    NodeHandle {
        tx,
        replica,
        peers,
        status,
    }
}

fn handle(core: &mut Core, input: Input) {
    match input {
        Input::Raft(msgs) => {
            for m in msgs {
                core.step(m);
            }
        }
        Input::Propose(cmd, reply) => core.propose(&cmd, reply),
        Input::AddVoter(id, addr, reply) => core.propose_add(id, &addr, reply),
        Input::ReadIndex(reply) => core.read_index(reply),
    }
}
