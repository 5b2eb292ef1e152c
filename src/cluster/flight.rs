//! The Flight data plane for sampling (ARCHITECTURE.md §4): a worker holding a partition
//! of the graph ([`HeteroGraph::partition`]) answers other workers' neighbor requests for
//! the nodes it owns, and [`RemoteShard`] is the client side, a [`Shard`] that a
//! [`relgraph_sampler::Routed`] view sends each hop's requests for those nodes to.
//!
//! Wire format, one `DoExchange` per call: the client sends the request batch (`node`
//! u32, `anchor` i64 seconds, `k` u32, `rng` u64) whose first message carries a
//! descriptor with the command
//! `{"v":1,"op":"sample","job":J,"attempt":A,"edge_type":E,"strategy":"uniform"}`;
//! the server answers one batch of neighbors (`request` u32, `node` u32, `time` i64,
//! grouped by request in request order). The same service answers a job's encoded rows
//! (`"op":"features"`, [`super::features`]) and labels (`"op":"labels"`,
//! [`super::labels`]). Every call needs the cluster's bearer token when one is
//! configured.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array, RecordBatch, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::utils::{batches_to_flight_data, flight_data_to_batches};
use arrow_flight::{FlightData, FlightDescriptor};
use relgraph_common::Database;
use relgraph_common::pql::TaskPlan;
use relgraph_coordinator::auth::Auth;
use relgraph_coordinator::service::connect;
use relgraph_sampler::{
    GraphView, HeteroGraph, Neighbor, Owners, Request, Routed, Shard, Strategy, owner,
};
use relgraph_worker::label::Labels;
use relgraph_worker::model::features::{OwnedFeatures, TableCode};
use relgraph_worker::model::{GraphSplit, ModelError, SplitData};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::features::{self, SplitFeatures};
use super::labels;
use super::ring::Unreachable;
use crate::serve::Limits;
use crate::serve::auth::Sessions;
use crate::serve::flight::NodeService;

/// Largest message either side accepts: a hop's answer for a chunk of seeds at [128, 64]
/// can pass tonic's 4 MiB default.
const MAX_MESSAGE: usize = 256 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct SampleCommand {
    v: u32,
    op: String,
    /// Which partition: a training job's, of one attempt.
    #[serde(default)]
    job: u64,
    #[serde(default)]
    attempt: u64,
    /// `sample`: the edge type and strategy.
    #[serde(default)]
    edge_type: usize,
    #[serde(default)]
    strategy: String,
    /// `features`: the table.
    #[serde(default)]
    table: usize,
}

fn request_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("node", DataType::UInt32, false),
        Field::new("anchor", DataType::Int64, false),
        Field::new("k", DataType::UInt32, false),
        Field::new("rng", DataType::UInt64, false),
    ]))
}

fn neighbor_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("request", DataType::UInt32, false),
        Field::new("node", DataType::UInt32, false),
        Field::new("time", DataType::Int64, false),
    ]))
}

pub(super) fn column<'a, T: Array + 'static>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a T, String> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .filter(|c| c.null_count() == 0)
        .ok_or_else(|| format!("column `{name}` is missing, of the wrong type or has nulls"))
}

fn encode_requests(requests: &[Request]) -> Result<Vec<FlightData>, String> {
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(UInt32Array::from_iter_values(
            requests.iter().map(|r| r.node),
        )),
        Arc::new(Int64Array::from_iter_values(
            requests.iter().map(|r| r.anchor),
        )),
        Arc::new(UInt32Array::from_iter_values(requests.iter().map(|r| r.k))),
        Arc::new(UInt64Array::from_iter_values(
            requests.iter().map(|r| r.rng),
        )),
    ];
    let schema = request_schema();
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
    batches_to_flight_data(&schema, [&batch]).map_err(|e| e.to_string())
}

fn decode_requests(batches: &[RecordBatch]) -> Result<Vec<Request>, String> {
    let mut out = Vec::new();
    for b in batches {
        let (node, anchor) = (
            column::<UInt32Array>(b, "node")?,
            column::<Int64Array>(b, "anchor")?,
        );
        let (k, rng) = (
            column::<UInt32Array>(b, "k")?,
            column::<UInt64Array>(b, "rng")?,
        );
        out.extend((0..b.num_rows()).map(|i| Request {
            node: node.value(i),
            anchor: anchor.value(i),
            k: k.value(i),
            rng: rng.value(i),
        }));
    }
    Ok(out)
}

fn encode_neighbors(found: &[Neighbor]) -> Result<Vec<FlightData>, String> {
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(UInt32Array::from_iter_values(
            found.iter().map(|n| n.request),
        )),
        Arc::new(UInt32Array::from_iter_values(found.iter().map(|n| n.node))),
        Arc::new(Int64Array::from_iter_values(found.iter().map(|n| n.time))),
    ];
    let schema = neighbor_schema();
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
    batches_to_flight_data(&schema, [&batch]).map_err(|e| e.to_string())
}

fn decode_neighbors(
    batches: &[RecordBatch],
    requests: usize,
    out: &mut Vec<Neighbor>,
) -> Result<(), String> {
    for b in batches {
        let request = column::<UInt32Array>(b, "request")?;
        let (node, time) = (
            column::<UInt32Array>(b, "node")?,
            column::<Int64Array>(b, "time")?,
        );
        for i in 0..b.num_rows() {
            if request.value(i) as usize >= requests {
                return Err(format!(
                    "answer row {i} names request {} of {requests}",
                    request.value(i)
                ));
            }
            out.push(Neighbor {
                request: request.value(i),
                node: node.value(i),
                time: time.value(i),
            });
        }
    }
    Ok(())
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Uniform => "uniform",
        Strategy::Recent => "recent",
    }
}

/// A partition a worker serves: its part of the graph, its rows encoded, who owns what,
/// and its own index.
#[derive(Debug, Clone)]
pub struct Served {
    pub part: Arc<HeteroGraph>,
    pub features: Arc<OwnedFeatures>,
    pub owners: Arc<Owners>,
    pub rank: u16,
}

/// Serves a worker's partitions (one per running job attempt): neighbor requests for
/// the nodes it owns.
#[derive(Debug, Clone, Default)]
pub struct SampleService {
    parts: Arc<RwLock<HashMap<JobAttempt, Served>>>,
    /// The labels of each job attempt's entities held here, and whether they are every
    /// entity's (complete) or only this worker's.
    labels: Arc<RwLock<HashMap<JobAttempt, PublishedLabels>>>,
}

/// A training job's (id, attempt).
type JobAttempt = (u64, u64);

/// Labels a worker serves, and whether they are every entity's.
type PublishedLabels = (Arc<Labels>, bool);

impl SampleService {
    /// Serves `served` for `job` = (id, attempt) until [`SampleService::withdraw`].
    pub fn publish(&self, job: (u64, u64), served: Served) {
        if let Ok(mut parts) = self.parts.write() {
            parts.insert(job, served);
        }
    }

    /// Serves `labels` (`complete`: every entity's, merged and ASSUMING read) for `job` =
    /// (id, attempt) until [`SampleService::retain`] drops it.
    pub fn publish_labels(&self, job: (u64, u64), labels: Arc<Labels>, complete: bool) {
        if let Ok(mut held) = self.labels.write() {
            held.insert(job, (labels, complete));
        }
    }

    /// Stops serving the partitions and labels of the job attempts `keep` refuses.
    pub fn retain(&self, keep: impl Fn((u64, u64)) -> bool) {
        if let Ok(mut parts) = self.parts.write() {
            parts.retain(|&job, _| keep(job));
        }
        if let Ok(mut labels) = self.labels.write() {
            labels.retain(|&job, _| keep(job));
        }
    }

    /// Whether the first message of an exchange asks for neighbors or encoded rows (else
    /// it is serving's).
    pub fn is_sample(first: &FlightData) -> bool {
        first
            .flight_descriptor
            .as_ref()
            .and_then(|d| serde_json::from_slice::<SampleCommand>(&d.cmd).ok())
            .is_some_and(|c| matches!(c.op.as_str(), "sample" | "features" | "labels"))
    }

    /// The answer to a sampling, encoded rows or labels exchange's messages.
    pub fn answer(&self, messages: &[FlightData]) -> Result<Vec<FlightData>, Status> {
        let bad = |m: String| Status::invalid_argument(m);
        let cmd = messages
            .first()
            .and_then(|m| m.flight_descriptor.as_ref())
            .ok_or_else(|| {
                bad("the first message must carry a descriptor whose cmd is the command".into())
            })?;
        let cmd: SampleCommand =
            serde_json::from_slice(&cmd.cmd).map_err(|e| bad(format!("command: {e}")))?;
        if cmd.v != 1 || !matches!(cmd.op.as_str(), "sample" | "features" | "labels") {
            return Err(bad(format!(
                "command v{} `{}`: this worker serves v1 `sample`, `features` and `labels`",
                cmd.v, cmd.op
            )));
        }
        // What this worker holds of the job attempt; a worker still loading is asked again.
        let held = |what: &str| {
            Status::unavailable(format!(
                "job {} attempt {}: this worker does not hold its {what} (yet)",
                cmd.job, cmd.attempt
            ))
        };
        let job = (cmd.job, cmd.attempt);
        if cmd.op == "labels" {
            let (labels, complete) = self
                .labels
                .read()
                .ok()
                .and_then(|l| l.get(&job).cloned())
                .ok_or_else(|| held("labels"))?;
            let batch = labels::encode(&labels, complete).map_err(Status::internal)?;
            return batches_to_flight_data(&batch.schema(), [&batch])
                .map_err(|e| Status::internal(e.to_string()));
        }
        let served = self
            .parts
            .read()
            .ok()
            .and_then(|p| p.get(&job).cloned())
            .ok_or_else(|| held("partition"))?;
        let batches =
            flight_data_to_batches(messages).map_err(|e| bad(format!("requests: {e}")))?;
        if cmd.op == "features" {
            let mut rows = Vec::new();
            for b in &batches {
                rows.extend_from_slice(column::<UInt32Array>(b, "row").map_err(bad)?.values());
            }
            let owners = served
                .owners
                .get(cmd.table)
                .ok_or_else(|| bad(format!("table {} of {}", cmd.table, served.owners.len())))?;
            if let Some(r) = rows
                .iter()
                .find(|&&r| owners.get(r as usize) != Some(&served.rank))
            {
                return Err(bad(format!(
                    "row {r} of `{}` is not on worker {}",
                    served.part.tables[cmd.table], served.rank
                )));
            }
            return features::answer(&served.features, cmd.table, &rows).map_err(Status::internal);
        }
        let strategy = match cmd.strategy.as_str() {
            "uniform" => Strategy::Uniform,
            "recent" => Strategy::Recent,
            other => {
                return Err(bad(format!(
                    "strategy `{other}` is neither uniform nor recent"
                )));
            }
        };
        let Some(et) = served.part.edge_types.get(cmd.edge_type) else {
            return Err(bad(format!(
                "edge type {} of {}",
                cmd.edge_type,
                served.part.edge_types.len()
            )));
        };
        let requests = decode_requests(&batches).map_err(bad)?;
        let owners = &served.owners[et.src];
        if let Some(r) = requests
            .iter()
            .find(|r| owners.get(r.node as usize) != Some(&served.rank))
        {
            return Err(bad(format!(
                "node {} of `{}` is not on worker {}",
                r.node, served.part.tables[et.src], served.rank
            )));
        }
        let mut found = Vec::new();
        served
            .part
            .sample(cmd.edge_type, &requests, strategy, &mut found);
        encode_neighbors(&found).map_err(Status::internal)
    }
}

/// The Flight server of a worker's `service` (and nothing else); every call needs
/// `token` when one is given.
/// A worker's Flight server: the sampling data plane, and with `serving` its models.
pub fn server(
    service: SampleService,
    token: Option<String>,
    serving: Option<Arc<crate::serve::Serving>>,
) -> FlightServiceServer<NodeService> {
    let limits = Limits {
        message: MAX_MESSAGE,
        ..Limits::default()
    };
    let node = NodeService {
        sampling: service,
        serving,
        sessions: Arc::new(Sessions::new(token)),
    };
    crate::serve::flight::server(node, &limits)
}

/// Serves `served` as `job`'s partition on a port of 127.0.0.1 of its own until the
/// runtime stops, and connects to it (a worker's data plane within one process: the
/// benches and tests).
pub async fn serve_loopback(
    served: Served,
    job: (u64, u64),
    token: Option<String>,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<RemoteShard> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let service = SampleService::default();
    service.publish(job, served);
    serve(listener, service, token.clone())?;
    RemoteShard::connect(&addr, token.as_deref(), runtime, job, None).await
}

/// Serves `service` alone on `listener` until the runtime stops.
pub fn serve(
    listener: TcpListener,
    service: SampleService,
    token: Option<String>,
) -> anyhow::Result<()> {
    let incoming = relgraph_coordinator::service::incoming(listener);
    let server = server(service, token, None);
    let mut builder = relgraph_coordinator::tls::server()?;
    tokio::spawn(async move {
        let result = builder
            .add_service(server)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            tracing::error!("Flight server stopped: {e}");
        }
    });
    Ok(())
}

/// Another worker's partition, reached over Flight. Calls block on `runtime`, so they
/// must come from threads outside it (rayon's, which sampling runs on). A worker that
/// does not hold the partition yet (still loading) is asked again for up to `PATIENCE`,
/// or until `stop` is set.
#[derive(Debug, Clone)]
pub struct RemoteShard {
    addr: String,
    client: FlightServiceClient<InterceptedService<Channel, Auth>>,
    runtime: tokio::runtime::Handle,
    job: (u64, u64),
    stop: Option<Arc<AtomicBool>>,
    /// The worker's id, and where a failure to reach it is noted for the next heartbeat.
    noted: Option<(u64, Arc<Unreachable>)>,
}

/// How long a sampling call waits for an owner that does not answer.
const PATIENCE: Duration = Duration::from_secs(120);
/// How long a job's workers wait for each other to load their data and publish their
/// parts before training starts.
const LOADING: Duration = Duration::from_secs(3600);

impl RemoteShard {
    /// The partition of `job` = (id, attempt) on the worker at `addr`.
    pub async fn connect(
        addr: &str,
        token: Option<&str>,
        runtime: tokio::runtime::Handle,
        job: (u64, u64),
        stop: Option<Arc<AtomicBool>>,
    ) -> anyhow::Result<Self> {
        let channel = connect(addr)
            .await
            .ok_or_else(|| anyhow::anyhow!("cannot reach the worker at {addr}"))?;
        let client = FlightServiceClient::with_interceptor(channel, Auth::new(token))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(RemoteShard {
            addr: addr.to_string(),
            client,
            runtime,
            job,
            stop,
            noted: None,
        })
    }

    /// Notes in `unreachable` that worker `id` (this shard's) could not be reached.
    pub fn noting(self, id: u64, unreachable: Arc<Unreachable>) -> Self {
        RemoteShard {
            noted: Some((id, unreachable)),
            ..self
        }
    }
}

impl RemoteShard {
    /// The command `op` for this partition's job attempt.
    fn command(&self, op: &str) -> SampleCommand {
        SampleCommand {
            v: 1,
            op: op.into(),
            job: self.job.0,
            attempt: self.job.1,
            edge_type: 0,
            strategy: String::new(),
            table: 0,
        }
    }

    /// One sampling exchange.
    fn exchange(
        &self,
        edge_type: usize,
        requests: &[Request],
        strategy: Strategy,
        patience: Duration,
    ) -> Result<Vec<RecordBatch>, String> {
        let command = SampleCommand {
            edge_type,
            strategy: strategy_name(strategy).into(),
            ..self.command("sample")
        };
        self.call(&command, encode_requests(requests)?, patience)
    }

    /// The encoded rows `rows` of `table` (every one held by this worker).
    pub fn features(&self, table: usize, rows: &[u32]) -> Result<Vec<RecordBatch>, String> {
        let command = SampleCommand {
            table,
            ..self.command("features")
        };
        let schema = Arc::new(Schema::new(vec![Field::new(
            "row",
            DataType::UInt32,
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(UInt32Array::from(rows.to_vec()))],
        )
        .map_err(|e| e.to_string())?;
        let data = batches_to_flight_data(&schema, [&batch]).map_err(|e| e.to_string())?;
        metrics::counter!("relgraph_feature_rows_fetched_total").increment(rows.len() as u64);
        self.call(&command, data, PATIENCE)
    }

    /// The labels this worker computed for `job` (or, marked complete, every entity's),
    /// waiting up to `patience` for them.
    pub fn labels(&self, patience: Duration) -> Result<(Labels, bool), String> {
        let batches = self.call(&self.command("labels"), encode_requests(&[])?, patience)?;
        labels::decode(&batches).map_err(|e| format!("worker {}: labels: {e}", self.addr))
    }

    /// One exchange of `data` under `command`; a worker that does not hold the partition
    /// (yet) or cannot be reached is asked again for up to `patience`, unless `stop` is
    /// set.
    fn call(
        &self,
        command: &SampleCommand,
        mut data: Vec<FlightData>,
        patience: Duration,
    ) -> Result<Vec<RecordBatch>, String> {
        let cmd = serde_json::to_vec(command).map_err(|e| e.to_string())?;
        if let Some(first) = data.first_mut() {
            first.flight_descriptor = Some(FlightDescriptor::new_cmd(cmd));
        }
        let stopped = || {
            self.stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
        };
        let (started, mut pause) = (Instant::now(), Duration::from_millis(20));
        let messages = loop {
            let (mut client, data) = (self.client.clone(), data.clone());
            let result = self.runtime.block_on(async move {
                let mut answer = client
                    .do_exchange(tokio_stream::iter(data))
                    .await?
                    .into_inner();
                let mut messages = Vec::new();
                while let Some(m) = answer.message().await? {
                    messages.push(m);
                }
                Ok::<_, Status>(messages)
            });
            // A status the transport made (no answer from the worker), not one it sent.
            if let (Err(s), Some((id, unreachable))) = (&result, &self.noted)
                && std::error::Error::source(s).is_some()
            {
                unreachable.add(*id);
            }
            match result {
                Ok(m) => break m,
                Err(s)
                    if s.code() == Code::Unavailable
                        && started.elapsed() < patience
                        && !stopped() =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(s) => return Err(format!("worker {}: {}", self.addr, s.message())),
            }
        };
        flight_data_to_batches(&messages).map_err(|e| format!("worker {}: answer: {e}", self.addr))
    }

    /// Waits until the worker serves the partition (it may still be loading its data).
    pub fn wait_ready(&self, patience: Duration) -> Result<(), String> {
        self.exchange(0, &[], Strategy::Uniform, patience)
            .map(|_| ())
    }
}

impl Shard for RemoteShard {
    fn sample_shard(
        &self,
        edge_type: usize,
        requests: &[Request],
        strategy: Strategy,
        out: &mut Vec<Neighbor>,
    ) -> Result<(), String> {
        let batches = self.exchange(edge_type, requests, strategy, PATIENCE)?;
        decode_neighbors(&batches, requests.len(), out)
            .map_err(|e| format!("worker {}: {e}", self.addr))
    }
}

/// A data-parallel job's split of the graph over its workers: this worker keeps and
/// serves its part, and samples the rest from the other workers over Flight.
#[derive(Debug)]
pub struct FlightSplit {
    /// (id, attempt).
    pub job: (u64, u64),
    pub rank: usize,
    /// Every worker of the job by rank, this one included.
    pub addrs: Vec<String>,
    pub token: Option<String>,
    pub runtime: tokio::runtime::Handle,
    pub stop: Arc<AtomicBool>,
    pub service: SampleService,
    pub owners: Arc<Owners>,
    /// Every worker of the job by rank, and where one that cannot be reached is noted.
    pub workers: Vec<u64>,
    pub unreachable: Arc<Unreachable>,
}

impl FlightSplit {
    /// Every entity's labels: this worker's `mine` (of its own entities among
    /// `entities`), served to the others, merged with theirs as one process would
    /// compute them all. Where a worker serves every entity's labels (kept in its store
    /// from an earlier attempt), those are taken as they are, ASSUMING already read: the
    /// answer's flag says so.
    pub fn labels(
        &self,
        mine: Labels,
        plan: &TaskPlan,
        entities: &[usize],
    ) -> Result<(Labels, bool), ModelError> {
        metrics::gauge!("relgraph_labels_computed").set(mine.len() as f64);
        let mine = Arc::new(mine);
        self.service.publish_labels(self.job, mine.clone(), false);
        let fetch = |rank: usize| self.connect(rank)?.labels(LOADING);
        let theirs: Vec<Result<(Labels, bool), String>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..self.addrs.len())
                .filter(|&s| s != self.rank)
                .map(|s| scope.spawn(move || fetch(s)))
                .collect();
            threads
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut theirs = theirs
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(ModelError::Collective)?;
        if let Some(i) = theirs.iter().position(|(_, complete)| *complete) {
            return Ok((theirs.swap_remove(i).0, true));
        }
        let parts: Vec<&Labels> = std::iter::once(mine.as_ref())
            .chain(theirs.iter().map(|(l, _)| l))
            .collect();
        Ok((Labels::merge(&parts, plan, entities), false))
    }

    /// The job attempt's partition on the worker of rank `rank`.
    fn connect(&self, rank: usize) -> Result<RemoteShard, String> {
        let (token, runtime) = (self.token.as_deref(), self.runtime.clone());
        let stop = Some(self.stop.clone());
        let shard = self
            .runtime
            .block_on(RemoteShard::connect(
                &self.addrs[rank],
                token,
                runtime,
                self.job,
                stop,
            ))
            .map_err(|e| format!("{e:#}"))?;
        Ok(match self.workers.get(rank) {
            Some(&id) => shard.noting(id, self.unreachable.clone()),
            None => shard,
        })
    }
}

impl FlightSplit {
    /// Serves this worker's part of the graph and its encoded rows to the job's other
    /// workers, and reaches theirs once they serve them too.
    pub fn serve(
        &self,
        part: Arc<HeteroGraph>,
        features: Arc<OwnedFeatures>,
    ) -> Result<SplitData, ModelError> {
        let (rank, owners) = (self.rank as u16, &self.owners);
        metrics::gauge!("relgraph_feature_rows_held").set(features.rows() as f64);
        metrics::gauge!("relgraph_feature_bytes_held").set(features.bytes() as f64);
        let served = Served {
            part: part.clone(),
            features: features.clone(),
            owners: owners.clone(),
            rank,
        };
        self.service.publish(self.job, served);
        let mut remotes = Vec::with_capacity(self.addrs.len());
        for s in 0..self.addrs.len() {
            if s == self.rank {
                remotes.push(None);
                continue;
            }
            let shard = self.connect(s).map_err(ModelError::Collective)?;
            // Training starts once every part is served: a sampling call made earlier
            // would hold a sampling thread while the owner still needs threads to load.
            if !part.edge_types.is_empty() {
                shard.wait_ready(LOADING).map_err(ModelError::Collective)?;
            }
            remotes.push(Some(Arc::new(shard)));
        }
        let shards: Vec<Option<Arc<dyn Shard>>> = remotes
            .iter()
            .map(|r| r.clone().map(|s| s as Arc<dyn Shard>))
            .collect();
        let view = Routed::new(part.clone(), owners.clone(), shards, self.rank)
            .map_err(ModelError::Collective)?;
        Ok(SplitData {
            graph: part,
            view: Arc::new(view),
            features: Arc::new(SplitFeatures {
                local: features,
                owners: owners.clone(),
                rank: self.rank,
                remotes,
            }),
        })
    }
}

impl GraphSplit for FlightSplit {
    fn split(&self, db: &Database, codes: &[TableCode]) -> Result<SplitData, ModelError> {
        let owners = &self.owners;
        let mine = |t: usize, n: u32| owner(owners, t, n) == self.rank;
        let part = Arc::new(HeteroGraph::from_database_where(db, mine)?);
        let features = Arc::new(OwnedFeatures::encode(db, codes, mine)?);
        self.serve(part, features)
    }

    fn owner(&self, table: usize, row: u32) -> usize {
        owner(&self.owners, table, row)
    }
}

/// Per table, the rank owning each row's neighbor lists: `ranks[p]` for the row's
/// partition `p` of `ranks.len()` ([`relgraph_worker::store::placement`]), as ingest
/// places rows in stores.
pub fn owners(db: &Database, ranks: &[u16]) -> Owners {
    owners_of(
        &relgraph_worker::store::placement(db, ranks.len() as u32),
        ranks,
    )
}

/// [`owners`] from the rows' partitions.
pub fn owners_of(placement: &[Vec<u32>], ranks: &[u16]) -> Owners {
    placement
        .iter()
        .map(|parts| parts.iter().map(|&p| ranks[p as usize]).collect())
        .collect()
}

/// `partitions` dealt round-robin over `workers` ranks.
pub fn round_robin(workers: usize, partitions: u32) -> Vec<u16> {
    let workers = workers.clamp(1, usize::from(u16::MAX)) as u32;
    (0..partitions).map(|p| (p % workers) as u16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use relgraph_sampler::{SampleConfig, Seed, sample};
    use relgraph_worker::model::features::{EncoderOptions, FeatureSource, TableFeatures};

    #[test]
    fn three_workers_sample_over_flight_as_one_graph() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("retail");
        crate::generate::retail_for_test(&data, 3, [300, 40, 200]);
        let db = Database::load(&data, None).expect("load");
        let whole = HeteroGraph::from_database(&db).expect("graph");
        let owners = Arc::new(owners(&db, &round_robin(3, 12)));
        let options = EncoderOptions {
            max_vocab: 50,
            text_buckets: 64,
        };
        let codes: Vec<TableCode> = (0..db.tables.len())
            .map(|t| TableCode::fit(&db, t, &[], options).expect("fit"))
            .collect();
        let encoded: Vec<TableFeatures> = codes
            .iter()
            .map(|c| c.apply(&db).expect("encode"))
            .collect();
        let (parts, owned): (Vec<Arc<HeteroGraph>>, Vec<Arc<OwnedFeatures>>) = (0..3u16)
            .map(|w| {
                let keep = |t: usize, n: u32| owners[t][n as usize] == w;
                let features = OwnedFeatures::encode(&db, &codes, keep).expect("owned");
                (
                    Arc::new(whole.partition(keep).expect("partition")),
                    Arc::new(features),
                )
            })
            .unzip();
        // Categorical ids and bags (multicategorical, text) travel too.
        assert!(encoded.iter().any(|f| f.categorical > 0));
        assert!(encoded.iter().any(|f| !f.bags.is_empty()));
        let held: usize = owned.iter().map(|o| o.rows()).sum();
        assert_eq!(held, db.tables.iter().map(|t| t.num_rows()).sum::<usize>());
        assert!(parts.iter().all(|p| p.num_edges() < whole.num_edges()));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let token = Some("secret".to_string());
        let remote: Vec<Arc<RemoteShard>> = (0..3u16)
            .map(|w| {
                let served = Served {
                    part: parts[w as usize].clone(),
                    features: owned[w as usize].clone(),
                    owners: owners.clone(),
                    rank: w,
                };
                let handle = runtime.handle().clone();
                let shard = serve_loopback(served, (5, 1), token.clone(), handle);
                Arc::new(runtime.block_on(shard).expect("serve"))
            })
            .collect();

        let customers = db
            .tables
            .iter()
            .position(|t| t.name() == "customers")
            .expect("customers");
        let seeds: Vec<Seed> = (0..200u32)
            .map(|i| Seed {
                table: customers,
                node: (i * 7) % 300,
                anchor: 1_704_067_200 + i64::from(i) * 50_000,
            })
            .collect();
        let config = SampleConfig {
            fanouts: vec![8, 4],
            seed: 11,
            ..SampleConfig::default()
        };
        let want = sample(&whole, &seeds, &config).expect("sample");
        assert!(want.num_edges() > 1000);
        for (home, part) in parts.iter().enumerate() {
            let shards: Vec<Option<Arc<dyn Shard>>> = (0..3)
                .map(|s| (s != home).then(|| remote[s].clone() as Arc<dyn Shard>))
                .collect();
            let view = Routed::new(part.clone(), owners.clone(), shards, home).expect("view");
            let got = sample(&view, &seeds, &config).expect("sample");
            assert_eq!(got, want, "sampled from worker {home}");
            let (routed, total) = view.traffic();
            assert!(
                routed > 0 && routed < total,
                "{routed} of {total} requests routed"
            );
            // The encoded rows of every table, read through this worker, are those of
            // the whole data, in order, whoever holds them.
            let split = SplitFeatures {
                local: owned[home].clone(),
                owners: owners.clone(),
                rank: home,
                remotes: (0..3)
                    .map(|s| (s != home).then(|| remote[s].clone()))
                    .collect(),
            };
            let wanted: Vec<Vec<u32>> = encoded
                .iter()
                .enumerate()
                .map(|(t, f)| {
                    (0..f.rows as u32)
                        .filter(|r| !(r * 7 + t as u32).is_multiple_of(3))
                        .collect()
                })
                .collect();
            let got = split.gather_tables(&wanted).expect("gather");
            for (t, (got, want)) in got
                .iter()
                .zip(encoded.gather_tables(&wanted).expect("whole"))
                .enumerate()
            {
                assert_eq!(got.rows, want.rows, "table {t}");
                assert_eq!(got.dense, want.dense, "table {t}");
                assert_eq!(got.ids, want.ids, "table {t}");
                assert_eq!(got.bags, want.bags, "table {t}");
            }
        }
        let customers_encoded = &owned[0].tables[customers];
        assert!(customers_encoded.0.len() < encoded[customers].rows);
        // A worker refuses encoded rows it does not hold.
        let foreign = (0..300u32)
            .find(|&n| owners[customers][n as usize] != 2)
            .expect("a customer not on worker 2");
        let err = remote[2]
            .features(customers, &[foreign])
            .expect_err("not owned");
        assert!(err.contains("is not on worker 2"), "{err}");

        // A worker refuses nodes it does not own, and calls without the token.
        let request = Request {
            node: (0..300u32)
                .find(|&n| owners[customers][n as usize] != 1)
                .expect("a customer not on worker 1"),
            anchor: 1_800_000_000,
            k: 4,
            rng: 1,
        };
        let edge = whole
            .edge_types
            .iter()
            .position(|e| e.src == customers)
            .expect("an edge type from customers");
        let err = remote[1]
            .sample_shard(edge, &[request], Strategy::Uniform, &mut Vec::new())
            .expect_err("not owned");
        assert!(err.contains("is not on worker 1"), "{err}");
        let addr = remote[1].addr.clone();
        let connect = |token: Option<&str>, job| {
            let handle = runtime.handle().clone();
            runtime
                .block_on(RemoteShard::connect(&addr, token, handle, job, None))
                .expect("connect")
        };
        let err = connect(None, (5, 1))
            .sample_shard(edge, &[request], Strategy::Uniform, &mut Vec::new())
            .expect_err("no token");
        assert!(err.contains("token"), "{err}");
        // A job attempt a worker does not hold: it is asked again until `stop`.
        let stop = Arc::new(AtomicBool::new(false));
        let mut waiting = connect(token.as_deref(), (5, 2));
        waiting.stop = Some(stop.clone());
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
        });
        let started = Instant::now();
        let err = waiting
            .sample_shard(edge, &[request], Strategy::Uniform, &mut Vec::new())
            .expect_err("not held");
        assert!(err.contains("does not hold its partition"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(250));
        stopper.join().expect("stopper");
    }

    /// The labels exchange: three workers' labels merge into what one process labels;
    /// where a worker serves every entity's (kept from an earlier attempt, marked
    /// complete), a worker that labels takes those as they are.
    #[test]
    fn labels_merge_and_complete_labels_are_taken_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("retail");
        crate::generate::retail_for_test(&data, 4, [90, 12, 200]);
        let db = Database::load(&data, None).expect("load");
        let query = "PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID";
        let options = relgraph_common::pql::PlanOptions::default();
        let plan = crate::pql::plan_query(&db, query, &options).expect("plan");
        let assuming = relgraph_worker::model::config::Assuming::Auto;
        let whole = crate::pql::label_all(&db, &plan, assuming).expect("labels");
        let entities = crate::pql::entity_rows(&db, &plan).expect("entities");
        assert!(whole.len() > 100 && entities.len() == 90, "{}", whole.len());
        let third = |k: usize| -> Labels {
            let rows: Vec<usize> = entities.iter().copied().filter(|r| r % 3 == k).collect();
            crate::pql::label_entities(&db, &plan, &rows, assuming).expect("labels")
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let services: Vec<SampleService> = (0..3).map(|_| SampleService::default()).collect();
        let addrs: Vec<String> = services
            .iter()
            .map(|service| {
                runtime.block_on(async {
                    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                    let addr = listener.local_addr().expect("addr").to_string();
                    serve(listener, service.clone(), None).expect("serve");
                    addr
                })
            })
            .collect();
        let split = |attempt: u64| FlightSplit {
            job: (1, attempt),
            rank: 0,
            addrs: addrs.clone(),
            token: None,
            runtime: runtime.handle().clone(),
            stop: Arc::new(AtomicBool::new(false)),
            service: services[0].clone(),
            owners: Arc::new(Vec::new()),
            workers: Vec::new(),
            unreachable: Arc::new(Unreachable::default()),
        };
        let same = |got: &Labels| {
            assert_eq!(
                (&got.entities, &got.anchors),
                (&whole.entities, &whole.anchors)
            );
            assert_eq!((&got.splits, &got.labels), (&whole.splits, &whole.labels));
            assert_eq!(got.dropped, whole.dropped);
        };
        // Attempt 1: every worker labels its third.
        services[1].publish_labels((1, 1), Arc::new(third(1)), false);
        services[2].publish_labels((1, 1), Arc::new(third(2)), false);
        let (merged, complete) = split(1).labels(third(0), &plan, &entities).expect("merge");
        assert!(!complete);
        same(&merged);
        // Attempt 2: worker 2 kept every entity's labels; worker 1 labels its own.
        services[1].publish_labels((1, 2), Arc::new(third(1)), false);
        let kept = crate::pql::label_all(&db, &plan, assuming).expect("labels");
        services[2].publish_labels((1, 2), Arc::new(kept), true);
        let (taken, complete) = split(2).labels(third(0), &plan, &entities).expect("take");
        assert!(complete);
        same(&taken);
    }
}
