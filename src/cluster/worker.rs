//! A worker node: registers with the coordinators, heartbeats to the leader, runs the
//! jobs the leader assigns to it (on their own threads), and reports their progress and
//! checkpoints. A job it no longer holds (cancelled, or reassigned after this worker was
//! declared lost) is stopped; a reassigned job resumes from its last checkpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use relgraph_common::Database;
use relgraph_common::pql::TaskPlan;
use relgraph_coordinator::auth::check_token;
use relgraph_coordinator::client::AdminClient;
use relgraph_coordinator::state::PARTITIONS_PER_WORKER;
use relgraph_coordinator::tls::{self, TlsFiles};
use relgraph_kernels::Device;
use relgraph_proto::cluster::collective_server::CollectiveServer;
use relgraph_proto::cluster::{
    HeartbeatRequest, Job, JobProgress, JobState, ListRequest, RegisterWorker, TableInfo,
};
use relgraph_worker::label::Labels;
use relgraph_worker::model::config::Assuming;
use relgraph_worker::model::parallel::Collective;
use relgraph_worker::model::{
    self, GraphSplit, ModelError, Progress, Session, TrainConfig, TrainState,
};
use relgraph_worker::store::{PartitionStore, placement};
use tokio::net::TcpListener;

use super::flight::{self, FlightSplit, SampleService};
use super::prepared::{self, Derived};
use super::ring::{CollectiveService, Mailbox, Ring, Unreachable};
use tokio::sync::mpsc;
use tonic::Code;

use crate::pql::{DataArgs, entity_rows, label_all, label_entities, prepare, read_assuming};
use crate::serve::{Limits, Serving};
use crate::train::{report_json, save_trained};

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Coordinator addresses (any of them; calls follow the leader).
    #[serde(default)]
    pub coordinators: Vec<String>,
    /// Where this worker serves gRPC to other workers (gradient all-reduce); the address
    /// it registers.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Threads for sampling and kernels (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub token: Option<String>,
    /// Where `/metrics` is served (its address is the one the worker registers).
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: String,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A database directory whose ready models this worker serves over its Flight
    /// service (scores, recommendations, explanations), each under the name of its
    /// job's output directory; a newer ready model for the same name is swapped in.
    #[serde(default)]
    pub serve_data: Option<String>,
    /// With `serve_data`: a RocksDB directory logging rows appended over Flight
    /// (`DoPut`, here or through the router); without it appends are refused.
    #[serde(default)]
    pub serve_store: Option<String>,
    /// A directory where this worker keeps its partitions of each data-parallel job it
    /// runs (a RocksDB store per job, written at the job's ingest, its encoded rows read
    /// back from it, removed when the job ends here); none: they are taken from the
    /// loaded data directly.
    #[serde(default)]
    pub store: Option<String>,
    /// The CUDA device this worker trains on (one worker per GPU); none: the CPU.
    #[serde(default)]
    pub gpu: Option<usize>,
    /// TLS (see `relgraph_coordinator::tls`): this worker's certificate and key, and the
    /// CA it trusts; `RELGRAPH_TLS_CERT` / `_KEY` / `_CA` where not given.
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

fn default_metrics_listen() -> String {
    "127.0.0.1:0".into()
}

fn default_heartbeat_ms() -> u64 {
    500
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            coordinators: Vec::new(),
            listen: default_listen(),
            threads: None,
            token: None,
            metrics_listen: default_metrics_listen(),
            heartbeat_ms: default_heartbeat_ms(),
            serve_data: None,
            serve_store: None,
            store: None,
            gpu: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

struct Running {
    attempt: u32,
    stop: Arc<AtomicBool>,
    /// Set when the attempt did its part to the end (a rank other than the lead is done
    /// once it has trained, while the lead still assesses and saves the model).
    completed: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

pub struct Worker {
    config: WorkerConfig,
    /// Where this worker's gRPC server (and its Flight service) listens.
    pub addr: SocketAddr,
    mailbox: Arc<Mailbox>,
    /// Peers this worker's rings and sampling calls could not reach, named at the next
    /// heartbeat.
    unreachable: Arc<Unreachable>,
    sampling: SampleService,
    /// With `serve_data`: the served database and models.
    serving: Option<Arc<Serving>>,
    /// Where this worker's training steps run.
    device: Device,
}

impl Worker {
    /// Binds the worker's gRPC server (serving other workers) and starts it.
    pub async fn start(config: WorkerConfig) -> Result<Self> {
        tls::configure(TlsFiles::of_node(
            &config.tls_cert,
            &config.tls_key,
            &config.tls_ca,
        ))?;
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("worker: cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let device = match config.gpu {
            None => Device::Cpu,
            Some(n) => {
                let (device, chosen) = Device::choose(&format!("cuda:{n}"))?;
                println!("worker trains on {chosen}");
                device
            }
        };
        let mailbox = Arc::new(Mailbox::default());
        let service = CollectiveService(mailbox.clone());
        let sampling = SampleService::default();
        let serving = match &config.serve_data {
            None => None,
            Some(dir) => {
                let dir = PathBuf::from(dir);
                let store = config.serve_store.clone();
                let serving = tokio::task::spawn_blocking(move || {
                    let db = Database::load(&dir, None)?;
                    let store = store
                        .map(|s| {
                            PartitionStore::open(Path::new(&s))
                                .with_context(|| format!("cannot open the append store {s}"))
                        })
                        .transpose()?;
                    anyhow::Ok(Serving::new(db, store, Limits::default())?)
                })
                .await??;
                Some(Arc::new(serving))
            }
        };
        let flight = flight::server(sampling.clone(), config.token.clone(), serving.clone());
        let token = config.token.clone();
        let incoming = relgraph_coordinator::service::incoming(listener);
        let mut builder = tls::server()?;
        tokio::spawn(async move {
            let checker = move |req| check_token(req, token.as_deref());
            let result = builder
                .add_service(CollectiveServer::with_interceptor(service, checker))
                .add_service(flight)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = result {
                tracing::error!("worker gRPC server stopped: {e}");
            }
        });
        Ok(Worker {
            config,
            addr,
            mailbox,
            unreachable: Arc::default(),
            sampling,
            serving,
            device,
        })
    }

    /// Loads the ready models of the served database that are newer than those serving
    /// (`served`: model id by name).
    async fn follow_models(&self, client: &mut AdminClient, served: &mut HashMap<String, u64>) {
        let (Some(serving), Some(dir)) = (&self.serving, &self.config.serve_data) else {
            return;
        };
        let (models, jobs) = match (
            client
                .call(|mut c| async move { c.models(ListRequest { current: false }).await })
                .await,
            client
                .call(|mut c| async move { c.jobs(ListRequest { current: false }).await })
                .await,
        ) {
            (Ok(m), Ok(j)) => (m.models, j.jobs),
            (Err(s), _) | (_, Err(s)) => {
                tracing::warn!("cannot list models: {}", s.message());
                return;
            }
        };
        let canon = |p: &str| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
        let dir = canon(dir);
        let same = |a: &str| canon(a) == dir;
        for m in models {
            let Some(job) = jobs.iter().find(|j| j.id == m.job) else {
                continue;
            };
            if job.state() != JobState::Ready || !same(&job.data_dir) {
                continue;
            }
            let name = Path::new(&job.output_dir).file_name().map_or_else(
                || format!("model-{}", m.id),
                |n| n.to_string_lossy().into_owned(),
            );
            if served.get(&name).is_some_and(|&id| id >= m.id) {
                continue;
            }
            let (serving, path, loaded) = (serving.clone(), PathBuf::from(&m.path), name.clone());
            match tokio::task::spawn_blocking(move || serving.load_model(&loaded, &path)).await {
                Ok(Ok(version)) => {
                    println!("serving model {} as `{name}` (version {version})", m.id);
                    served.insert(name, m.id);
                }
                Ok(Err(e)) => {
                    tracing::warn!("cannot serve model {}: {e:#}", m.id);
                    // Not retried every beat: a later model for the name is.
                    served.insert(name, m.id);
                }
                Err(e) => tracing::warn!("model loader: {e}"),
            }
        }
    }

    pub async fn run(self) -> Result<()> {
        let mut client =
            AdminClient::new(self.config.coordinators.clone(), self.config.token.clone());
        let (tx, mut reports) = mpsc::unbounded_channel::<JobProgress>();
        let mut running: HashMap<u64, Running> = HashMap::new();
        let mut id: Option<u64> = None;
        let mut beat = tokio::time::interval(Duration::from_millis(self.config.heartbeat_ms));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut served: HashMap<String, u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    self.follow_models(&mut client, &mut served).await;
                    let worker = match id {
                        Some(w) => w,
                        None => {
                            let req = RegisterWorker {
                                addr: self.addr.to_string(),
                                capacity: rayon::current_num_threads() as u32,
                            };
                            let w = client
                                .call(|mut c| { let req = req.clone(); async move { c.register(req).await } })
                                .await;
                            match w {
                                Ok(w) => {
                                    println!("worker registered as {}", w.id);
                                    id = Some(w.id);
                                    w.id
                                }
                                Err(e) => {
                                    tracing::warn!("cannot register: {}", e.message());
                                    continue;
                                }
                            }
                        }
                    };
                    let unreachable = self.unreachable.take();
                    let beat = HeartbeatRequest { worker, unreachable };
                    let reply = client
                        .call(|mut c| { let beat = beat.clone(); async move { c.heartbeat(beat).await } })
                        .await;
                    if reply.is_err() {
                        // Named again at the next heartbeat.
                        beat.unreachable.iter().for_each(|&w| self.unreachable.add(w));
                    }
                    match reply {
                        Ok(reply) => {
                            let group = Group {
                                worker,
                                peers: reply.peers,
                                token: self.config.token.clone(),
                                mailbox: self.mailbox.clone(),
                                unreachable: self.unreachable.clone(),
                                sampling: self.sampling.clone(),
                                runtime: tokio::runtime::Handle::current(),
                                device: self.device,
                                store: self.config.store.as_ref().map(PathBuf::from),
                            };
                            reconcile(&mut running, &group, reply.jobs, &tx);
                        }
                        Err(s) if s.code() == Code::NotFound => {
                            tracing::warn!("{}; stopping my jobs", s.message());
                            for r in running.values() {
                                r.stop.store(true, Ordering::Relaxed);
                            }
                            id = None;
                        }
                        Err(s) => tracing::warn!("heartbeat: {}", s.message()),
                    }
                }
                Some(p) = reports.recv() => {
                    let (job, terminal) = (p.job, state_is_terminal(p.state()));
                    loop {
                        let r = client.call(|mut c| { let p = p.clone(); async move { c.report(p).await } }).await;
                        match r {
                            Ok(_) => {
                                // The coordinator now resumes from this checkpoint or a
                                // later one: the older ones can go.
                                if !p.checkpoint.is_empty() {
                                    let (dir, step) = (PathBuf::from(&p.checkpoint), p.checkpoint_step);
                                    tokio::task::spawn_blocking(move || prune_checkpoints(&dir, step));
                                }
                                break;
                            }
                            Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => {
                                // Not ours any more: cancelled or moved elsewhere.
                                tracing::warn!(job, "{}", s.message());
                                if let Some(r) = running.get(&job) {
                                    r.stop.store(true, Ordering::Relaxed);
                                }
                                break;
                            }
                            Err(s) if terminal => {
                                tracing::warn!(job, "final report not delivered yet: {}", s.message());
                            }
                            Err(s) => {
                                tracing::warn!(job, "progress report lost: {}", s.message());
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn state_is_terminal(s: JobState) -> bool {
    matches!(s, JobState::Ready | JobState::Failed)
}

/// What a job thread needs to reach the other workers of its job.
#[derive(Clone, Debug)]
struct Group {
    worker: u64,
    peers: std::collections::BTreeMap<u64, String>,
    token: Option<String>,
    mailbox: Arc<Mailbox>,
    unreachable: Arc<Unreachable>,
    sampling: SampleService,
    runtime: tokio::runtime::Handle,
    device: Device,
    /// Where jobs keep their partitions (`WorkerConfig::store`).
    store: Option<PathBuf>,
}

impl Group {
    /// This worker's rank in `job`'s group (None when it trains alone).
    fn rank(&self, job: &Job) -> Result<Option<usize>> {
        if job.workers.len() <= 1 {
            return Ok(None);
        }
        let rank = job.workers.iter().position(|&w| w == self.worker);
        rank.context("this worker is not in the job's group")
            .map(Some)
    }

    fn addr(&self, worker: u64) -> Result<String> {
        self.peers
            .get(&worker)
            .cloned()
            .with_context(|| format!("no address for worker {worker}"))
    }

    /// How `job`'s workers split its graph (None when this worker trains alone): by the
    /// rows' partitions `placed` and the job's placement of partitions on ranks, each
    /// serving its part over Flight.
    fn split(
        &self,
        job: &Job,
        placed: &[Vec<u32>],
        stop: &Arc<AtomicBool>,
    ) -> Result<Option<FlightSplit>> {
        let Some(rank) = self.rank(job)? else {
            return Ok(None);
        };
        let addrs = job
            .workers
            .iter()
            .map(|&w| self.addr(w))
            .collect::<Result<Vec<_>>>()?;
        let ranks = placement_ranks(job)?;
        Ok(Some(FlightSplit {
            job: (job.id, u64::from(job.attempt)),
            rank,
            addrs,
            token: self.token.clone(),
            runtime: self.runtime.clone(),
            stop: stop.clone(),
            service: self.sampling.clone(),
            owners: Arc::new(flight::owners_of(placed, &ranks)),
            workers: job.workers.clone(),
            unreachable: self.unreachable.clone(),
        }))
    }

    /// This worker's ring for `job` (None when it trains alone).
    fn ring(&self, job: &Job, stop: Arc<AtomicBool>) -> Result<Option<Ring>> {
        let Some(rank) = self.rank(job)? else {
            return Ok(None);
        };
        let size = job.workers.len();
        let next = job.workers[(rank + 1) % size];
        Ok(Some(Ring::new(
            (job.id, job.attempt),
            (rank, size),
            (next, self.addr(next)?),
            self.token.clone(),
            (self.mailbox.clone(), self.unreachable.clone()),
            stop,
            self.runtime.clone(),
        )))
    }
}

/// The rank holding each of `job`'s partitions: its placement (kept by the coordinators
/// across attempts), or, from a coordinator that keeps none, 16 partitions per worker
/// dealt round-robin.
fn placement_ranks(job: &Job) -> Result<Vec<u16>> {
    if job.placement.is_empty() {
        let parts = (PARTITIONS_PER_WORKER * job.workers.len()) as u32;
        return Ok(flight::round_robin(job.workers.len(), parts));
    }
    job.placement
        .iter()
        .map(|w| {
            let rank = job.workers.iter().position(|x| x == w);
            rank.and_then(|r| u16::try_from(r).ok()).with_context(|| {
                format!(
                    "job {}'s placement names worker {w}, not in its group",
                    job.id
                )
            })
        })
        .collect()
}

/// The partitions of `job` rank `rank` trains on, and those its store keeps: these and
/// the ones it holds the replica of.
fn partitions_of(job: &Job, rank: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    let ranks = placement_ranks(job)?;
    let me = job.workers.get(rank).copied();
    let owned: Vec<u32> = (0..ranks.len() as u32)
        .filter(|&p| usize::from(ranks[p as usize]) == rank)
        .collect();
    let mut keep = owned.clone();
    keep.extend((0..job.replicas.len() as u32).filter(|&p| Some(job.replicas[p as usize]) == me));
    keep.sort_unstable();
    keep.dedup();
    Ok((owned, keep))
}

/// Where a job store keeps its checkpoints (files beside its RocksDB, which leaves
/// other names alone): a checkpoint is tens of megabytes that RocksDB would first hold
/// in its memtable.
const CHECKPOINTS: &str = "checkpoints";

/// Where job `id` keeps this worker's partitions under `root` (across its attempts).
fn job_store(root: &Path, id: u64) -> PathBuf {
    root.join(format!("job-{id}"))
}

/// Brings the job store at `dir` to partitions `keep` (of `parts`) of `db` (its rows
/// placed in partitions by `placed`), loaded from data stamped `stamp`: the partitions an
/// earlier attempt of the job left there and this one keeps stay, the others are
/// removed, and only the missing ones are written. A store of another schema, partition
/// count or data stamp (the data changed since) is replaced whole.
fn ingest(
    dir: &Path,
    (db, placed): (&Database, &[Vec<u32>]),
    stamp: u64,
    keep: &[u32],
    parts: u32,
) -> Result<PartitionStore> {
    let mut store = PartitionStore::open(dir)?;
    let mut held = store.held(parts)?;
    // A store left by an earlier attempt that holds nothing of this partition count, or
    // was written from another schema or other data: whatever is there goes.
    let stored = store.schema()?;
    let changed = store.data_stamp()? != Some(stamp);
    if stored.is_some() && (held.is_empty() || stored != Some(db.schema()) || changed) {
        if changed && !held.is_empty() {
            println!(
                "the data changed since {} was written: its partitions are stored again",
                dir.display()
            );
        }
        drop(store);
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot clear the job store {}", dir.display()))?;
        store = PartitionStore::open(dir)?;
        held.clear();
    }
    let gone: Vec<u32> = held.iter().copied().filter(|p| !keep.contains(p)).collect();
    let missing: Vec<u32> = keep.iter().copied().filter(|p| !held.contains(p)).collect();
    let names: Vec<&str> = db.tables.iter().map(|t| t.name()).collect();
    store.remove(&names, &gone, parts)?;
    store.set_data_stamp(stamp)?;
    let started = Instant::now();
    let ingested = store.ingest_placed(db, placed, &missing, parts)?;
    let rows: u64 = ingested.rows.iter().map(|(_, n)| n).sum();
    let kept = keep.len() - missing.len();
    metrics::gauge!("relgraph_rows_stored").set(rows as f64);
    metrics::gauge!("relgraph_partitions_reused").set(kept as f64);
    println!(
        "stored {rows} rows of {} partitions in {} ({} bytes, {:.1} s); {kept} kept from an earlier attempt, {} removed",
        missing.len(),
        dir.display(),
        ingested.bytes,
        started.elapsed().as_secs_f64(),
        gone.len()
    );
    Ok(store)
}

/// Starts the jobs the leader gave this worker and stops the ones it took away.
fn reconcile(
    running: &mut HashMap<u64, Running>,
    group: &Group,
    jobs: Vec<Job>,
    tx: &mpsc::UnboundedSender<JobProgress>,
) {
    let held: HashMap<u64, u32> = jobs.iter().map(|j| (j.id, j.attempt)).collect();
    // An attempt that ended early (an error, a lost peer) starts again if it is still
    // held; one that did its part is not run twice while the coordinator holds the job.
    running.retain(|&job, r| {
        let keep = !r.thread.is_finished()
            || (r.completed.load(Ordering::Relaxed) && held.get(&job) == Some(&r.attempt));
        // A job that left this worker leaves nothing behind in its store.
        if !keep && !held.contains_key(&job) {
            remove_job_store(group, job);
        }
        keep
    });
    let active = running.values().filter(|r| !r.thread.is_finished());
    metrics::gauge!("relgraph_jobs_running").set(active.count() as f64);
    // Partitions of attempts no longer held (finished, moved, cancelled) stop being served.
    group
        .sampling
        .retain(|(job, attempt)| held.get(&job).is_some_and(|&a| u64::from(a) == attempt));
    for (job, r) in running.iter() {
        if held.get(job) != Some(&r.attempt) {
            r.stop.store(true, Ordering::Relaxed);
        }
    }
    for job in jobs {
        if running
            .get(&job.id)
            .is_some_and(|r| r.attempt == job.attempt)
        {
            continue;
        }
        if let Some(old) = running.get(&job.id)
            && !old.thread.is_finished()
        {
            // The old attempt is still winding down; start the new one next beat.
            continue;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicBool::new(false));
        let (attempt, id) = (job.attempt, job.id);
        let (stop2, done, tx, group) = (stop.clone(), completed.clone(), tx.clone(), group.clone());
        let thread = std::thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(move || {
                if run_job(&job, &group, &stop2, &tx) {
                    done.store(true, Ordering::Relaxed);
                }
            });
        match thread {
            Ok(thread) => {
                running.insert(
                    id,
                    Running {
                        attempt,
                        stop,
                        completed,
                        thread,
                    },
                );
            }
            Err(e) => tracing::error!(job = id, "cannot start a job thread: {e}"),
        }
    }
}

/// Runs one attempt of a training job to its end. Rank 0 of a group (or a worker alone)
/// reports progress, writes checkpoints and the model; the others only train. Returns
/// whether this worker's part of the attempt is done (trained, or failed for good).
fn run_job(
    job: &Job,
    group: &Group,
    stop: &Arc<AtomicBool>,
    tx: &mpsc::UnboundedSender<JobProgress>,
) -> bool {
    let ring = match group.ring(job, stop.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(job = job.id, "{e:#}");
            return false;
        }
    };
    let lead = ring.as_ref().is_none_or(|r| r.rank == 0);
    let report = |p: JobProgress| {
        if lead {
            let _ = tx.send(JobProgress {
                job: job.id,
                worker: group.worker,
                attempt: job.attempt,
                ..p
            });
        }
    };
    let collective: Option<&dyn Collective> = ring.as_ref().map(|r| r as &dyn Collective);
    let outcome = train_job(job, stop, collective, group, &report);
    match outcome {
        Ok(Some((model_path, metrics_json))) => report(JobProgress {
            state: JobState::Ready.into(),
            model_path,
            metrics_json,
            ..JobProgress::default()
        }),
        Ok(None) => {}
        // A peer went away or the attempt was stopped: the coordinator reassigns the job,
        // and a new attempt here keeps the partitions this one stored.
        Err(e) if stop.load(Ordering::Relaxed) || is_collective(&e) => {
            tracing::warn!(job = job.id, "attempt {} ends: {e:#}", job.attempt);
            return false;
        }
        Err(e) => report(JobProgress {
            state: JobState::Failed.into(),
            error: format!("{e:#}"),
            ..JobProgress::default()
        }),
    }
    // This worker's part is done: its partitions are not needed any more.
    remove_job_store(group, job.id);
    true
}

/// Removes job `id`'s partitions from this worker's store, if it keeps any.
fn remove_job_store(group: &Group, id: u64) {
    let Some(root) = &group.store else { return };
    let dir = job_store(root, id);
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        tracing::warn!("cannot remove the job store {}: {e}", dir.display());
    }
}

/// Removes the `step-N` checkpoints beside `checkpoint` older than its `step`, once the
/// coordinator has recorded it (a report can be lost, so the newest written is not yet
/// the one a new attempt would resume from). Best effort: a checkpoint left behind costs
/// disk, not correctness.
fn prune_checkpoints(checkpoint: &Path, step: u64) {
    if let Some(dir) = checkpoint.parent() {
        remove_older(dir, step);
    }
}

/// The steps of the `step-N` checkpoints in `dir`, oldest first.
fn checkpoint_steps(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut steps: Vec<u64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            name.to_str()?.strip_prefix("step-")?.parse().ok()
        })
        .collect();
    steps.sort_unstable();
    steps
}

/// Removes the `step-N` checkpoints in `dir` older than `step` (best effort).
fn remove_older(dir: &Path, step: u64) {
    for old in checkpoint_steps(dir).into_iter().filter(|&n| n < step) {
        let path = dir.join(format!("step-{old}"));
        if let Err(err) = std::fs::remove_dir_all(&path) {
            tracing::warn!("cannot remove the old checkpoint {}: {err}", path.display());
        }
    }
}

fn is_collective(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ModelError>(),
        Some(ModelError::Collective(_))
    )
}

fn stage(state: JobState, epoch: u32, step: u64) -> JobProgress {
    JobProgress {
        state: state.into(),
        epoch,
        step,
        ..JobProgress::default()
    }
}

/// What an attempt trains with, however it was prepared.
struct Ready {
    plan: TaskPlan,
    labels: Arc<Labels>,
    setup: model::Setup,
    /// What the baselines read (where this worker assesses the model).
    past: Option<model::PastValues>,
    split: Option<FlightSplit>,
    /// Where the job's store on this worker keeps its checkpoints.
    checkpoints: Option<PathBuf>,
}

fn train_job(
    job: &Job,
    stop: &Arc<AtomicBool>,
    group: Option<&dyn Collective>,
    peers: &Group,
    report: &dyn Fn(JobProgress),
) -> Result<Option<(String, String)>> {
    let lead = group.is_none_or(|g| g.rank() == 0);
    report(stage(JobState::Ingest, 0, 0));
    let data = DataArgs {
        data: Some(PathBuf::from(&job.data_dir)),
        schema: (!job.schema.is_empty()).then(|| PathBuf::from(&job.schema)),
        step: (!job.anchor_step.is_empty()).then(|| job.anchor_step.clone()),
        anchor: Vec::new(),
    };
    let config = TrainConfig::from_toml(&job.config_toml).context("the job's training config")?;
    let attempt = (job, peers, stop, report);
    let ready = match (peers.rank(job)?, &peers.store) {
        (Some(rank), Some(root)) => from_store(attempt, (rank, root), &data, &config)?,
        _ => from_data(attempt, &data, &config, lead)?,
    };
    let Ready {
        plan,
        labels,
        setup:
            model::Setup {
                mut model,
                data,
                train,
                val,
            },
        past,
        split,
        checkpoints,
    } = ready;
    let out = PathBuf::from(&job.output_dir);
    let resume = (!job.checkpoint.is_empty())
        .then(|| resume_state(job, checkpoints.as_deref()))
        .transpose()?;
    let start = resume
        .as_ref()
        .map_or((0, 0), |r| (r.0.progress_epoch() as u32, r.0.steps));
    if let Some((_, from)) = &resume {
        println!(
            "job {} attempt {}: resuming from {from} (epoch {}, step {})",
            job.id, job.attempt, start.0, start.1
        );
    }
    let resume = resume.map(|r| r.0);
    report(stage(JobState::Train, start.0, start.1));
    let mut last = Instant::now();
    let mut progress = |p: &Progress| {
        metrics::gauge!("relgraph_training_seeds_per_second").set(p.seeds_per_second);
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            report(stage(JobState::Train, p.epoch as u32, p.total));
        }
    };
    let mut on_epoch = |s: &TrainState| {
        // Every rank keeps the checkpoint in its store (the ranks' states are the same):
        // whichever survives resumes from its own. The newest two are kept.
        if let Some(dir) = &checkpoints {
            model::save_train_state(s, &dir.join(format!("step-{}", s.steps)))?;
            if let [.., previous, _] = checkpoint_steps(dir)[..] {
                remove_older(dir, previous);
            }
        }
        if !lead {
            return Ok(());
        }
        let dir = out.join("checkpoints").join(format!("step-{}", s.steps));
        model::save_train_state(s, &dir)?;
        report(JobProgress {
            checkpoint: dir.display().to_string(),
            checkpoint_step: s.steps,
            ..stage(JobState::Train, s.progress_epoch() as u32, s.steps)
        });
        Ok(())
    };
    let split = split.as_ref().map(|s| s as &dyn GraphSplit);
    let session = Session {
        stop,
        progress: &mut progress,
        resume,
        on_epoch: &mut on_epoch,
        group,
        split,
        device: peers.device,
    };
    let trained = model::trainer::train(&mut model, &data, &train, &val, session)?;
    if stop.load(Ordering::Relaxed) {
        // Stopped: this attempt no longer owns the job.
        return Ok(None);
    }
    // Every rank scores its entities' validation and test examples; the lead assesses.
    let together = group.map(|group| model::Together { group, split });
    let metrics = model::split_metrics(&model, &data, &labels, together.as_ref())?;
    let (true, Some(past)) = (lead, past) else {
        return Ok(None);
    };
    let assessment = model::assess(&model, &data, &plan, &labels, &past, metrics)?;
    save_trained(&mut model, &assessment, &trained, &out)?;
    let metrics = report_json(&assessment, &trained);
    Ok(Some((out.display().to_string(), metrics.to_string())))
}

/// The state `job` resumes from, and where it was read: this worker's store's copy of
/// the checkpoint the coordinators recorded (under `checkpoints`; the same state the
/// lead wrote) where it has one, else the lead's checkpoint directory.
fn resume_state(job: &Job, checkpoints: Option<&Path>) -> Result<(TrainState, String)> {
    let step = job.checkpoint_step;
    if let Some(dir) = checkpoints.map(|d| d.join(format!("step-{step}")))
        && dir.exists()
    {
        match model::load_train_state(&dir) {
            Ok(state) if state.steps == step => {
                return Ok((state, format!("its store's checkpoint of step {step}")));
            }
            Ok(state) => tracing::warn!(
                job = job.id,
                "{} holds step {}, not {step}",
                dir.display(),
                state.steps
            ),
            Err(e) => tracing::warn!(job = job.id, "{e}"),
        }
    }
    let state = model::load_train_state(Path::new(&job.checkpoint))?;
    Ok((state, job.checkpoint.clone()))
}

/// An attempt: its job, this worker's group, its stop flag and where progress goes.
type Attempt<'a> = (
    &'a Job,
    &'a Group,
    &'a Arc<AtomicBool>,
    &'a dyn Fn(JobProgress),
);

/// An attempt prepared from the data directory: loaded, labelled (in a data-parallel
/// job, each worker its own entities), with the graph and encoded rows in memory.
fn from_data(
    (job, peers, stop, report): Attempt,
    data: &DataArgs,
    config: &TrainConfig,
    lead: bool,
) -> Result<Ready> {
    let started = Instant::now();
    let (db, plan) = prepare(&job.query, data)?;
    let loaded = started.elapsed();
    let split = match peers.rank(job)? {
        None => None,
        Some(_) => {
            let parts = placement_ranks(job)?.len() as u32;
            peers.split(job, &placement(&db, parts), stop)?
        }
    };
    report_tables(job, &db, report);
    let labels = match &split {
        None => label_all(&db, &plan, config.assuming)?,
        Some(split) => split_labels(&db, &plan, split, config.assuming)?,
    };
    let labelled = started.elapsed();
    let as_split = split.as_ref().map(|s| s as &dyn GraphSplit);
    let setup = model::setup(&db, &job.query, &plan, &labels, config, as_split)?;
    println!(
        "job {} attempt {}: loaded {} rows in {:.1} s; labelled in {:.1} s; graph and encoded rows ready in {:.1} s",
        job.id,
        job.attempt,
        rows_of(&db),
        loaded.as_secs_f64(),
        (labelled - loaded).as_secs_f64(),
        (started.elapsed() - labelled).as_secs_f64()
    );
    // Nothing reads the raw rows past this point but what assessing needs of them.
    let past = lead
        .then(|| model::PastValues::of(&db, &plan, &labels))
        .transpose()?;
    Ok(Ready {
        plan,
        labels: Arc::new(labels),
        setup,
        past,
        split,
        checkpoints: None,
    })
}

/// An attempt of a data-parallel job prepared from this worker's store (under `root`,
/// `rank` in the group): the partitions placed here, their neighbor lists and what the
/// job derived from all rows. A store that lacks any of them (a first attempt, a
/// partition moved here, other data) is first brought up to date from the data
/// directory.
fn from_store(
    attempt: Attempt,
    (rank, root): (usize, &Path),
    data: &DataArgs,
    config: &TrainConfig,
) -> Result<Ready> {
    let (job, peers, stop, _) = attempt;
    let started = Instant::now();
    let parts = placement_ranks(job)?.len() as u32;
    let (owned, keep) = partitions_of(job, rank)?;
    let dir = job_store(root, job.id);
    // Taken before loading: a file rewritten meanwhile shows at the next attempt.
    let schema: Vec<&Path> = data.schema.iter().map(PathBuf::as_path).collect();
    let stamp = relgraph_common::source::stamp(Path::new(&job.data_dir), &schema)?;
    let kept = match kept(&dir, job, stamp, parts, (&owned, &keep)) {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!(
                job = job.id,
                "the job store cannot serve this attempt: {e:#}"
            );
            None
        }
    };
    // A kept store whose part cannot be read back is written again from the data.
    let mut read_back = None;
    if let Some((store, derived)) = kept {
        let at = started.elapsed();
        match derived.part(&store, &owned) {
            Ok(part) => read_back = Some((derived, part, at)),
            Err(e) => {
                tracing::warn!(
                    job = job.id,
                    "the job store {} cannot be read back, so it is written again: {e:#}",
                    dir.display()
                );
                drop(store);
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot clear the job store {}", dir.display()))?;
            }
        }
    }
    let reused = read_back.is_some();
    // The split an ingest labelled through serves this attempt too.
    let (mut derived, part, ingested, split) = match read_back {
        Some((derived, part, at)) => (derived, part, at, None),
        None => {
            let (store, derived, split) = ingest_job(attempt, &keep, &dir, stamp, data, config)?;
            let at = started.elapsed();
            let part = derived.part(&store, &owned)?;
            (derived, part, at, Some(split))
        }
    };
    let read = started.elapsed();
    let plan = derived.plan(&part.schema, &data.options()?)?;
    let split = match split {
        Some(split) => split,
        None => data_split(peers, job, &derived.placed, stop)?,
    };
    let labels = Arc::new(std::mem::take(&mut derived.labels));
    if reused {
        // Workers of this attempt that load the data take these instead of labelling.
        split
            .service
            .publish_labels(split.job, labels.clone(), true);
    }
    let (graph, features) = (Arc::new(part.graph), Arc::new(part.features));
    let prepared = model::Prepared::from(split.serve(graph, features)?);
    let meta = derived.meta;
    let setup = model::setup_with(
        &job.query,
        &plan,
        &labels,
        config,
        (meta.codes, prepared),
        &meta.rows,
    )?;
    let source = if reused {
        "kept its partitions from an earlier attempt"
    } else {
        "brought its store up to date"
    };
    println!(
        "job {} attempt {}: {source} in {:.1} s; read its part back in {:.1} s",
        job.id,
        job.attempt,
        ingested.as_secs_f64(),
        (read - ingested).as_secs_f64()
    );
    Ok(Ready {
        plan,
        labels,
        setup,
        past: Some(meta.past),
        split: Some(split),
        checkpoints: Some(dir.join(CHECKPOINTS)),
    })
}

/// The job store at `dir` and what it derived, where it can serve this attempt alone:
/// written for `job` from data stamped `stamp`, holding the rows and neighbor lists of
/// every partition in `owned` (of `parts`). Partitions neither owned nor in `keep` (the
/// replicas this worker keeps) are removed.
fn kept(
    dir: &Path,
    job: &Job,
    stamp: u64,
    parts: u32,
    (owned, keep): (&[u32], &[u32]),
) -> Result<Option<(PartitionStore, Derived)>> {
    if !dir.exists() {
        return Ok(None);
    }
    let store = PartitionStore::open(dir)?;
    if store.data_stamp()? != Some(stamp) {
        return Ok(None);
    }
    let (held, linked) = (store.held(parts)?, store.linked(parts)?);
    if !owned.iter().all(|p| held.contains(p) && linked.contains(p)) {
        return Ok(None);
    }
    let Some(derived) = Derived::load(&store, job, parts)? else {
        return Ok(None);
    };
    let gone: Vec<u32> = held.into_iter().filter(|p| !keep.contains(p)).collect();
    metrics::gauge!("relgraph_partitions_reused").set(owned.len() as f64);
    let tables: Vec<&str> = derived.meta.tables.iter().map(String::as_str).collect();
    store.remove(&tables, &gone, parts)?;
    Ok(Some((store, derived)))
}

/// Brings the job store at `dir` up to date from the data directory: loads every row,
/// stores the partitions in `keep` that it lacks (this worker's and its replicas), labels
/// this worker's entities (merged with the others' over Flight), fits the encoders,
/// writes the neighbor lists it lacks and what the job derived from all rows. Returns the
/// store, what it derived, and the split it labelled through.
fn ingest_job(
    (job, peers, stop, report): Attempt,
    keep: &[u32],
    dir: &Path,
    stamp: u64,
    data: &DataArgs,
    config: &TrainConfig,
) -> Result<(PartitionStore, Derived, FlightSplit)> {
    let started = Instant::now();
    let (db, plan) = prepare(&job.query, data)?;
    let loaded = started.elapsed();
    let parts = placement_ranks(job)?.len() as u32;
    let placed = placement(&db, parts);
    let store = ingest(dir, (&db, &placed), stamp, keep, parts)?;
    report_tables(job, &db, report);
    let split = data_split(peers, job, &placed, stop)?;
    let labels = split_labels(&db, &plan, &split, config.assuming)?;
    let labelled = started.elapsed();
    let codes = model::fit_codes(&db, &plan, config)?;
    let fitted = started.elapsed();
    let linked = store.linked(parts)?;
    let missing: Vec<u32> = keep
        .iter()
        .copied()
        .filter(|p| !linked.contains(p))
        .collect();
    let graph = prepared::link(&store, &db, &placed, &missing, parts)?;
    let written = started.elapsed();
    let derived = Derived::of(job, (&db, &plan), (labels, codes), graph, (placed, parts))?;
    derived.save(&store)?;
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "job {} attempt {}: loaded {} rows in {:.1} s; stored and labelled in {:.1} s; \
         encoders fitted in {:.1} s; neighbor lists of {} partitions written in {:.1} s; \
         the rest derived and written in {:.1} s",
        job.id,
        job.attempt,
        rows_of(&db),
        secs(loaded),
        secs(labelled - loaded),
        secs(fitted - labelled),
        missing.len(),
        secs(written - fitted),
        secs(started.elapsed() - written)
    );
    Ok((store, derived, split))
}

/// The split of a job this worker trains data-parallel (it has a rank).
fn data_split(
    peers: &Group,
    job: &Job,
    placed: &[Vec<u32>],
    stop: &Arc<AtomicBool>,
) -> Result<FlightSplit> {
    peers
        .split(job, placed, stop)?
        .context("a data-parallel job without a split")
}

fn rows_of(db: &Database) -> usize {
    let rows: usize = db.tables.iter().map(|t| t.num_rows()).sum();
    metrics::gauge!("relgraph_rows_loaded").set(rows as f64);
    rows
}

/// Every entity's labels in a data-parallel job: this worker labels the entities it
/// owns; the others' come over Flight.
fn split_labels(
    db: &Database,
    plan: &TaskPlan,
    split: &FlightSplit,
    assuming: Assuming,
) -> Result<Labels> {
    let entities = entity_rows(db, plan)?;
    let table = plan.task.entity_table;
    let mine: Vec<usize> = entities
        .iter()
        .copied()
        .filter(|&r| split.owner(table, r as u32) == split.rank)
        .collect();
    let mine = label_entities(db, plan, &mine, assuming)?;
    match split.labels(mine, plan, &entities)? {
        (all, true) => Ok(all),
        (all, false) => read_assuming(plan, all, assuming),
    }
}

/// Reports `db`'s tables to the coordinator (the label stage begins).
fn report_tables(job: &Job, db: &Database, report: &dyn Fn(JobProgress)) {
    let tables = db
        .tables
        .iter()
        .map(|t| TableInfo {
            name: t.name().to_string(),
            rows: t.num_rows() as u64,
            columns: t.schema.columns.len() as u32,
            primary_key: t.schema.primary_key.clone().unwrap_or_default(),
            time_column: t.schema.time_column.clone().unwrap_or_default(),
            foreign_keys: t
                .schema
                .foreign_keys
                .iter()
                .map(|f| format!("{} -> {}", f.column, f.references))
                .collect(),
            job: job.id,
        })
        .collect();
    report(JobProgress {
        tables,
        ..stage(JobState::Label, 0, 0)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(dir: &Path, customers: usize) -> Database {
        crate::generate::retail_for_test(dir, 5, [customers, 20, 120]);
        Database::load(dir, None).expect("load")
    }

    /// The ids of `table`'s rows the store holds, sorted, and those rank 0 of `ranks`
    /// owns in `db`.
    fn held_and_owned(store: &PartitionStore, db: &Database, ranks: &[u16]) -> [Vec<u32>; 2] {
        let (mut ids, _) = store
            .rows_with_ids("customers")
            .expect("rows")
            .expect("held");
        ids.sort_unstable();
        let t = db.tables.iter().position(|t| t.name() == "customers");
        let t = t.expect("customers");
        let owners = flight::owners(db, ranks);
        let owned = (0..db.tables[t].num_rows() as u32)
            .filter(|&r| owners[t][r as usize] == 0)
            .collect();
        [ids, owned]
    }

    #[test]
    fn a_job_store_keeps_its_partitions_only_while_the_data_is_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, store) = (dir.path().join("data"), dir.path().join("store"));
        let ranks = flight::round_robin(2, 8);
        let stamp = || relgraph_common::source::stamp(&data, &[]).expect("stamp");
        let placed = |db: &Database| placement(db, ranks.len() as u32);
        let keep: Vec<u32> = (0..8).filter(|&p| ranks[p as usize] == 0).collect();
        let first = generate(&data, 60);
        let s = ingest(&store, (&first, &placed(&first)), stamp(), &keep, 8).expect("ingest");
        let [held, owned] = held_and_owned(&s, &first, &ranks);
        assert_eq!(held, owned);
        drop(s);
        // The same data again (a later attempt): kept as it is.
        let s = ingest(&store, (&first, &placed(&first)), stamp(), &keep, 8).expect("ingest");
        assert_eq!(held_and_owned(&s, &first, &ranks)[0], held);
        drop(s);
        // Other data under the same schema: stored again, none of the old rows kept.
        let second = generate(&data, 90);
        let s = ingest(&store, (&second, &placed(&second)), stamp(), &keep, 8).expect("ingest");
        let [held, owned] = held_and_owned(&s, &second, &ranks);
        assert_eq!(held, owned);
    }
}
