//! A coordinator as a network service: the Raft transport and the admin API over tonic on
//! one port, the worker leases and the job scheduler (which act only on the leader), and
//! joining an existing group.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::Message;
use relgraph_proto::cluster::admin_server::{Admin, AdminServer};
use relgraph_proto::cluster::raft_transport_client::RaftTransportClient;
use relgraph_proto::cluster::raft_transport_server::{RaftTransport, RaftTransportServer};
use relgraph_proto::cluster::{
    AssignJob, CancelJob, ClusterState, HeartbeatReply, HeartbeatRequest, Job, JobProgress,
    JobRequest, JobsReply, JoinReply, JoinRequest, ListRequest, ModelsReply, RaftAck, RaftBatch,
    RegisterWorker, StatusReply, StatusRequest, SubmitJob, TablesReply, Worker, WorkerLost,
    command::Op,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::tls::TlsFiles;
use tonic::{Request, Response, Status};

use crate::auth::{Auth, check_token};
use crate::client::AdminClient;
use crate::core::{Core, ProposeError};
use crate::node::{self, NodeHandle, Peers, Transport};
use crate::state::{self, Applied, Rejected};

/// The metadata key that carries the leader's address when a follower refuses a call.
pub const LEADER_KEY: &str = "relgraph-leader";

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This coordinator's Raft id (unique in the group, not 0).
    pub id: u64,
    /// Where to serve gRPC (Raft transport and admin API); port 0 picks one.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where the Raft log, hard state and snapshots live.
    pub data_dir: PathBuf,
    /// Addresses of running coordinators to join; empty starts a new group.
    #[serde(default)]
    pub join: Vec<String>,
    /// Bearer token every gRPC call must carry (none: no authentication).
    #[serde(default)]
    pub token: Option<String>,
    /// A worker silent for this long is declared lost and its jobs move.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Serve Prometheus text at `/metrics` here (e.g. "127.0.0.1:9100").
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// TLS (see [`crate::tls`]): this node's certificate and key, and the CA it trusts;
    /// `RELGRAPH_TLS_CERT` / `_KEY` / `_CA` where not given.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:0".into()
}

fn default_lease_ms() -> u64 {
    3000
}

/// A running coordinator.
#[derive(Debug)]
pub struct Coordinator {
    pub addr: SocketAddr,
    pub node: NodeHandle,
    server: tokio::task::JoinHandle<()>,
    scheduler: tokio::task::JoinHandle<()>,
}

impl Coordinator {
    pub fn stop(self) {
        self.server.abort();
        self.scheduler.abort();
    }
}

pub fn status_of(e: ProposeError, node: &NodeHandle) -> Status {
    match e {
        ProposeError::NotLeader { leader } => {
            let mut s = Status::failed_precondition(format!(
                "coordinator {} is not the leader (leader: {})",
                node.status().id,
                if leader == 0 {
                    "none yet".to_string()
                } else {
                    leader.to_string()
                }
            ));
            if let Some(addr) = node.leader_addr()
                && let Ok(v) = addr.parse()
            {
                s.metadata_mut().insert(LEADER_KEY, v);
            }
            s
        }
        ProposeError::Rejected(r @ (Rejected::NoJob(_) | Rejected::NoWorker(_))) => {
            Status::not_found(r.to_string())
        }
        ProposeError::Rejected(r) => Status::aborted(r.to_string()),
        ProposeError::Invalid(m) => Status::invalid_argument(m),
        e @ (ProposeError::Dropped | ProposeError::Timeout | ProposeError::Stopped) => {
            Status::unavailable(e.to_string())
        }
    }
}

/// When each worker was last heard from (kept by the leader only).
#[derive(Debug, Default)]
struct Leases(Mutex<HashMap<u64, Lease>>);

/// When a worker was last heard from, and when a peer last said it could not reach it.
#[derive(Clone, Copy, Debug)]
struct Lease {
    seen: Instant,
    suspected: Option<Instant>,
}

impl Leases {
    fn touch(&self, worker: u64) {
        if let Ok(mut m) = self.0.lock() {
            let now = Instant::now();
            m.entry(worker)
                .and_modify(|l| l.seen = now)
                .or_insert(Lease::heard(now));
        }
    }

    /// A peer could not reach `worker`; true if no peer had said so since it last beat.
    fn suspect(&self, worker: u64) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        let Some(l) = m.get_mut(&worker) else {
            return false;
        };
        let new = l.suspected.is_none_or(|t| t < l.seen);
        l.suspected = Some(Instant::now());
        new
    }

    fn reset(&self, workers: impl Iterator<Item = u64>) {
        if let Ok(mut m) = self.0.lock() {
            m.clear();
            let now = Instant::now();
            m.extend(workers.map(|w| (w, Lease::heard(now))));
        }
    }

    fn expired(&self, worker: u64, lease: Duration) -> bool {
        let now = Instant::now();
        self.0
            .lock()
            .map(|m| m.get(&worker).is_none_or(|l| l.expired(now, lease)))
            .unwrap_or(false)
    }
}

impl Lease {
    fn heard(now: Instant) -> Lease {
        Lease {
            seen: now,
            suspected: None,
        }
    }

    /// Silent at `now` for the whole `lease`, or for a third of it since a peer could
    /// not reach it (within the last lease): a process that died is then found in about
    /// a second, and a live one that beats on time is never taken for dead on a peer's
    /// word.
    fn expired(&self, now: Instant, lease: Duration) -> bool {
        let silent = now.saturating_duration_since(self.seen);
        let suspected = self
            .suspected
            .is_some_and(|t| now.saturating_duration_since(t) <= lease);
        silent > lease || (suspected && silent > lease / 3)
    }
}

struct AdminService {
    node: NodeHandle,
    leases: Arc<Leases>,
    lease: Duration,
}

impl AdminService {
    async fn propose(&self, op: Op) -> Result<Applied, Status> {
        self.node
            .propose(op)
            .await
            .map_err(|e| status_of(e, &self.node))
    }

    async fn propose_job(&self, op: Op) -> Result<Response<Job>, Status> {
        match self.propose(op).await? {
            Applied::Job(j) => Ok(Response::new(*j)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// The state, confirmed current through ReadIndex when `current` is asked for.
    async fn state(&self, current: bool) -> Result<ClusterState, Status> {
        if current {
            self.node
                .read_index()
                .await
                .map_err(|e| status_of(e, &self.node))?;
        }
        let r = self
            .node
            .replica
            .read()
            .map_err(|_| Status::internal("replica lock poisoned"))?;
        Ok(r.state.clone())
    }

    fn require_leader(&self) -> Result<(), Status> {
        let s = self.node.status();
        if s.is_leader {
            Ok(())
        } else {
            Err(status_of(
                ProposeError::NotLeader { leader: s.leader },
                &self.node,
            ))
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let r = req.into_inner();
        if r.id == 0 || r.addr.is_empty() {
            return Err(Status::invalid_argument(
                "join needs a non-zero id and an address",
            ));
        }
        self.node
            .add_voter(r.id, r.addr)
            .await
            .map_err(|e| status_of(e, &self.node))?;
        Ok(Response::new(JoinReply {
            voters: self.node.status().voters,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let s = self.node.status();
        let state = self.state(false).await?;
        let mut jobs_by_state: std::collections::BTreeMap<String, u64> = Default::default();
        for j in state.jobs.values() {
            *jobs_by_state
                .entry(state::state_name(j.state()).to_string())
                .or_default() += 1;
        }
        Ok(Response::new(StatusReply {
            id: s.id,
            leader: s.leader,
            leader_addr: self.node.leader_addr().unwrap_or_default(),
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            voters: s.voters,
            coordinators: state.coordinators,
            workers: state.workers.into_values().collect(),
            jobs_by_state,
        }))
    }

    async fn tables(&self, req: Request<ListRequest>) -> Result<Response<TablesReply>, Status> {
        let state = self.state(req.into_inner().current).await?;
        Ok(Response::new(TablesReply {
            tables: state.tables.into_values().collect(),
        }))
    }

    async fn jobs(&self, req: Request<ListRequest>) -> Result<Response<JobsReply>, Status> {
        let state = self.state(req.into_inner().current).await?;
        Ok(Response::new(JobsReply {
            jobs: state.jobs.into_values().collect(),
        }))
    }

    async fn models(&self, req: Request<ListRequest>) -> Result<Response<ModelsReply>, Status> {
        let state = self.state(req.into_inner().current).await?;
        Ok(Response::new(ModelsReply {
            models: state.models.into_values().collect(),
        }))
    }

    async fn submit(&self, req: Request<SubmitJob>) -> Result<Response<Job>, Status> {
        let r = req.into_inner();
        if r.query.trim().is_empty() || r.data_dir.is_empty() || r.output_dir.is_empty() {
            return Err(Status::invalid_argument(
                "a job needs a query, a data directory and an output directory",
            ));
        }
        self.propose_job(Op::SubmitJob(r)).await
    }

    async fn get_job(&self, req: Request<JobRequest>) -> Result<Response<Job>, Status> {
        let id = req.into_inner().job;
        let state = self.state(false).await?;
        state
            .jobs
            .get(&id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(Rejected::NoJob(id).to_string()))
    }

    async fn cancel(&self, req: Request<JobRequest>) -> Result<Response<Job>, Status> {
        let job = req.into_inner().job;
        self.propose_job(Op::CancelJob(CancelJob { job })).await
    }

    async fn register(&self, req: Request<RegisterWorker>) -> Result<Response<Worker>, Status> {
        let r = req.into_inner();
        if r.addr.is_empty() {
            return Err(Status::invalid_argument(
                "a worker registers with its address",
            ));
        }
        match self.propose(Op::RegisterWorker(r)).await? {
            Applied::Worker(w) => {
                self.leases.touch(w.id);
                Ok(Response::new(w))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        self.require_leader()?;
        let HeartbeatRequest {
            worker,
            unreachable,
        } = req.into_inner();
        let state = self.state(false).await?;
        match state.workers.get(&worker) {
            Some(w) if w.alive => {}
            _ => {
                return Err(Status::not_found(format!(
                    "worker {worker} is not registered or was declared lost; register again"
                )));
            }
        }
        self.leases.touch(worker);
        for w in unreachable {
            if self.leases.suspect(w) {
                tracing::warn!(worker = w, "worker {worker} cannot reach it");
                metrics::counter!("relgraph_workers_suspected_total").increment(1);
            }
        }
        let jobs: Vec<Job> = state
            .jobs
            .into_values()
            .filter(|j| j.workers.contains(&worker) && !state::is_finished(j.state()))
            .collect();
        let peers = jobs
            .iter()
            .flat_map(|j| &j.workers)
            .filter_map(|w| state.workers.get(w).map(|x| (*w, x.addr.clone())))
            .collect();
        Ok(Response::new(HeartbeatReply {
            jobs,
            lease_ms: self.lease.as_millis() as u64,
            peers,
        }))
    }

    async fn report(&self, req: Request<JobProgress>) -> Result<Response<Job>, Status> {
        let r = req.into_inner();
        self.leases.touch(r.worker);
        self.propose_job(Op::JobProgress(r)).await
    }
}

struct RaftService {
    node: NodeHandle,
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let batch = req.into_inner();
        if !batch.from_addr.is_empty() {
            self.node.peers.learn(batch.from, &batch.from_addr);
        }
        let msgs = batch
            .messages
            .iter()
            .map(|b| Message::parse_from_bytes(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
        self.node.deliver(msgs);
        Ok(Response::new(RaftAck {}))
    }
}

/// Sends Raft messages over gRPC: one task per peer, batching what queued up meanwhile.
struct GrpcTransport {
    id: u64,
    addr: String,
    token: Option<String>,
    peers: Peers,
    replica: crate::store::Shared,
    queues: Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>,
    runtime: tokio::runtime::Handle,
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Message>) {
        let Ok(mut queues) = self.queues.lock() else {
            return;
        };
        for m in msgs {
            let to = m.to;
            let q = queues.entry(to).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                self.runtime.spawn(peer_sender(
                    to,
                    rx,
                    (self.id, self.addr.clone()),
                    self.token.clone(),
                    self.peers.clone(),
                    self.replica.clone(),
                ));
                tx
            });
            let _ = q.send(m);
        }
    }
}

async fn peer_sender(
    to: u64,
    mut rx: mpsc::UnboundedReceiver<Message>,
    (from, from_addr): (u64, String),
    token: Option<String>,
    peers: Peers,
    replica: crate::store::Shared,
) {
    type Client =
        RaftTransportClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;
    let mut client: Option<(String, Client)> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        let Some(addr) = peers.addr(to, &replica) else {
            continue;
        };
        if client.as_ref().is_none_or(|(a, _)| *a != addr) {
            client = connect(&addr).await.map(|ch| {
                (
                    addr.clone(),
                    RaftTransportClient::with_interceptor(ch, Auth::new(token.as_deref())),
                )
            });
        }
        let Some((_, c)) = client.as_mut() else {
            continue;
        };
        let messages = batch
            .iter()
            .filter_map(|m| m.write_to_bytes().ok())
            .collect();
        let req = RaftBatch {
            from,
            from_addr: from_addr.clone(),
            messages,
        };
        let sent = tokio::time::timeout(Duration::from_secs(1), c.send(req)).await;
        if !matches!(sent, Ok(Ok(_))) {
            // Reconnect next time; Raft resends what matters.
            client = None;
        }
    }
}

/// The connections `listener` accepts, with Nagle's algorithm off: a small gRPC answer
/// would otherwise wait for the caller's delayed ACK (40 ms on Linux). tonic sets this
/// only on listeners it binds itself.
pub fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

/// A channel to the gRPC server at `addr` (TLS when this process is configured for it).
pub async fn connect(addr: &str) -> Option<Channel> {
    let endpoint = crate::tls::endpoint(addr).ok()?;
    endpoint
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .ok()
}

/// Starts a coordinator: opens its store, serves gRPC, joins the group when asked to,
/// and runs the leader's duties (leases, scheduling) whenever it leads.
pub async fn start(config: &CoordinatorConfig) -> anyhow::Result<Coordinator> {
    anyhow::ensure!(config.id != 0, "coordinator id must not be 0");
    crate::tls::configure(TlsFiles::of_node(
        &config.tls_cert,
        &config.tls_key,
        &config.tls_ca,
    ))?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("coordinator: cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let advertised = addr.to_string();
    std::fs::create_dir_all(&config.data_dir)?;
    let bootstrap = config.join.is_empty().then(|| ClusterState {
        coordinators: [(config.id, advertised.clone())].into(),
        ..ClusterState::default()
    });
    let mut core = Core::open(
        &config.data_dir,
        config.id,
        bootstrap,
        &crate::quiet_logger(),
    )?;
    if config.join.is_empty() && core.voters() == [config.id] {
        core.campaign();
    }
    let peers = Peers::default();
    let transport = Arc::new(GrpcTransport {
        id: config.id,
        addr: advertised.clone(),
        token: config.token.clone(),
        peers: peers.clone(),
        replica: core.replica().clone(),
        queues: Mutex::new(HashMap::new()),
        runtime: tokio::runtime::Handle::current(),
    });
    let node = node::spawn(core, transport, peers);
    let leases = Arc::new(Leases::default());
    let lease = Duration::from_millis(config.lease_ms);
    let admin = AdminService {
        node: node.clone(),
        leases: leases.clone(),
        lease,
    };
    let raft = RaftService { node: node.clone() };
    let token = config.token.clone();
    let incoming = incoming(listener);
    let mut builder = crate::tls::server()?;
    let server = tokio::spawn(async move {
        let checker = move |req| check_token(req, token.as_deref());
        let result = builder
            .add_service(RaftTransportServer::with_interceptor(raft, checker.clone()))
            .add_service(AdminServer::with_interceptor(admin, checker))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            tracing::error!("coordinator gRPC server stopped: {e}");
        }
    });
    let scheduler = tokio::spawn(schedule(node.clone(), leases, lease));
    if !config.join.is_empty() {
        let mut client = AdminClient::new(config.join.clone(), config.token.clone());
        let req = JoinRequest {
            id: config.id,
            addr: advertised.clone(),
        };
        client
            .call(|mut c| {
                let req = req.clone();
                async move { c.join(req).await }
            })
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "coordinator {}: cannot join {:?}: {}",
                    config.id,
                    config.join,
                    e.message()
                )
            })?;
    }
    Ok(Coordinator {
        addr,
        node,
        server,
        scheduler,
    })
}

/// The leader's duties, every 200 ms: declare silent workers lost, assign jobs without a
/// worker to the least loaded live worker, and publish metrics.
async fn schedule(node: NodeHandle, leases: Arc<Leases>, lease: Duration) {
    let mut led_term = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let status = node.status();
        crate::metrics::publish(&node, &status);
        if !status.is_leader {
            led_term = 0;
            continue;
        }
        // Act only on a state known to be current.
        if node.read_index().await.is_err() {
            continue;
        }
        let state = match node.replica.read() {
            Ok(r) => r.state.clone(),
            Err(_) => continue,
        };
        if status.term != led_term {
            // A new leader gives every live worker a full lease to find it.
            leases.reset(state.workers.values().filter(|w| w.alive).map(|w| w.id));
            led_term = status.term;
        }
        for w in state.workers.values().filter(|w| w.alive) {
            if leases.expired(w.id, lease) {
                tracing::warn!(
                    worker = w.id,
                    "worker silent for its lease (a third of it once a peer could not reach it); declaring it lost"
                );
                let _ = node
                    .propose(Op::WorkerLost(WorkerLost { worker: w.id }))
                    .await;
            }
        }
        let mut load: HashMap<u64, usize> = state
            .workers
            .values()
            .filter(|w| w.alive && !leases.expired(w.id, lease))
            .map(|w| (w.id, 0))
            .collect();
        for j in state
            .jobs
            .values()
            .filter(|j| !state::is_finished(j.state()))
        {
            for w in &j.workers {
                if let Some(n) = load.get_mut(w) {
                    *n += 1;
                }
            }
        }
        for j in state.jobs.values() {
            if state::is_finished(j.state()) || j.worker != 0 || load.is_empty() {
                continue;
            }
            // The least loaded live workers, as many as the job asks for (0: all).
            let mut by_load: Vec<(usize, u64)> = load.iter().map(|(&w, &n)| (n, w)).collect();
            by_load.sort_unstable();
            let want = match j.want_workers as usize {
                0 => by_load.len(),
                n => n.min(by_load.len()),
            };
            let mut workers: Vec<u64> = by_load[..want].iter().map(|&(_, w)| w).collect();
            workers.sort_unstable();
            let assign = AssignJob {
                job: j.id,
                workers: workers.clone(),
            };
            match node.propose(Op::AssignJob(assign)).await {
                Ok(_) => {
                    for w in workers {
                        *load.entry(w).or_default() += 1;
                    }
                }
                Err(e) => tracing::warn!(job = j.id, "cannot assign: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_s_word_shortens_a_silent_worker_s_lease_only() {
        let lease = Duration::from_millis(3000);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let quiet = Lease::heard(t0);
        assert!(!quiet.expired(at(2900), lease));
        assert!(quiet.expired(at(3100), lease));
        // Suspected: silent for a third of the lease is enough.
        let suspected = Lease {
            suspected: Some(at(200)),
            ..quiet
        };
        assert!(!suspected.expired(at(900), lease));
        assert!(suspected.expired(at(1100), lease));
        // Still beating on time: a peer's word changes nothing.
        let beating = Lease {
            seen: at(800),
            ..suspected
        };
        assert!(!beating.expired(at(1100), lease));
        // A suspicion older than a lease is forgotten.
        let old = Lease {
            seen: at(4000),
            suspected: Some(at(200)),
        };
        assert!(!old.expired(at(5100), lease));
    }
}
