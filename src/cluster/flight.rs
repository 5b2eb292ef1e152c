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
//! grouped by request in request order). Every call needs the cluster's bearer token
//! when one is configured.

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
use relgraph_coordinator::auth::Auth;
use relgraph_coordinator::service::connect;
use relgraph_sampler::{
    GraphView, HeteroGraph, Neighbor, Owners, Request, Routed, Shard, Strategy, owner,
};
use relgraph_worker::model::{GraphSplit, ModelError};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

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
    edge_type: usize,
    strategy: String,
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

fn column<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
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

/// A partition a worker serves: its part of the graph, who owns what, and its own index.
#[derive(Debug, Clone)]
pub struct Served {
    pub part: Arc<HeteroGraph>,
    pub owners: Arc<Owners>,
    pub rank: u16,
}

/// Serves a worker's partitions (one per running job attempt): neighbor requests for
/// the nodes it owns.
#[derive(Debug, Clone, Default)]
pub struct SampleService {
    parts: Arc<RwLock<HashMap<(u64, u64), Served>>>,
}

impl SampleService {
    /// Serves `served` for `job` = (id, attempt) until [`SampleService::withdraw`].
    pub fn publish(&self, job: (u64, u64), served: Served) {
        if let Ok(mut parts) = self.parts.write() {
            parts.insert(job, served);
        }
    }

    /// Stops serving the partitions of the job attempts `keep` refuses.
    pub fn retain(&self, keep: impl Fn((u64, u64)) -> bool) {
        if let Ok(mut parts) = self.parts.write() {
            parts.retain(|&job, _| keep(job));
        }
    }

    /// Whether the first message of an exchange asks for neighbors (else it is serving's).
    pub fn is_sample(first: &FlightData) -> bool {
        first
            .flight_descriptor
            .as_ref()
            .and_then(|d| serde_json::from_slice::<SampleCommand>(&d.cmd).ok())
            .is_some_and(|c| c.op == "sample")
    }

    /// The answer to a sampling exchange's messages.
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
        if cmd.v != 1 || cmd.op != "sample" {
            return Err(bad(format!(
                "command v{} `{}`: this worker serves v1 `sample`",
                cmd.v, cmd.op
            )));
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
        let served = self
            .parts
            .read()
            .ok()
            .and_then(|p| p.get(&(cmd.job, cmd.attempt)).cloned())
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "job {} attempt {}: this worker does not hold its partition (yet)",
                    cmd.job, cmd.attempt
                ))
            })?;
        let Some(et) = served.part.edge_types.get(cmd.edge_type) else {
            return Err(bad(format!(
                "edge type {} of {}",
                cmd.edge_type,
                served.part.edge_types.len()
            )));
        };
        let batches =
            flight_data_to_batches(messages).map_err(|e| bad(format!("requests: {e}")))?;
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
        })
    }
}

impl RemoteShard {
    /// One sampling exchange; a worker that does not hold the partition (yet) or cannot
    /// be reached is asked again for up to `patience`, unless `stop` is set.
    fn exchange(
        &self,
        edge_type: usize,
        requests: &[Request],
        strategy: Strategy,
        patience: Duration,
    ) -> Result<Vec<RecordBatch>, String> {
        let mut data = encode_requests(requests)?;
        let command = SampleCommand {
            v: 1,
            op: "sample".into(),
            job: self.job.0,
            attempt: self.job.1,
            edge_type,
            strategy: strategy_name(strategy).into(),
        };
        let cmd = serde_json::to_vec(&command).map_err(|e| e.to_string())?;
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
}

impl GraphSplit for FlightSplit {
    fn split(
        &self,
        graph: &HeteroGraph,
    ) -> Result<(Arc<HeteroGraph>, Arc<dyn GraphView + Send + Sync>), ModelError> {
        let rank = self.rank as u16;
        let owners = &self.owners;
        let part = Arc::new(graph.partition(|t, n| owner(owners, t, n) == self.rank)?);
        let served = Served {
            part: part.clone(),
            owners: owners.clone(),
            rank,
        };
        self.service.publish(self.job, served);
        let mut shards: Vec<Option<Arc<dyn Shard>>> = Vec::with_capacity(self.addrs.len());
        for (s, addr) in self.addrs.iter().enumerate() {
            if s == self.rank {
                shards.push(None);
                continue;
            }
            let (token, runtime) = (self.token.as_deref(), self.runtime.clone());
            let stop = Some(self.stop.clone());
            let shard = self
                .runtime
                .block_on(RemoteShard::connect(addr, token, runtime, self.job, stop))
                .map_err(|e| ModelError::Collective(format!("{e:#}")))?;
            // Training starts once every part is served: a sampling call made earlier
            // would hold a sampling thread while the owner still needs threads to load.
            if !graph.edge_types.is_empty() {
                shard.wait_ready(LOADING).map_err(ModelError::Collective)?;
            }
            shards.push(Some(Arc::new(shard)));
        }
        let view = Routed::new(part.clone(), owners.clone(), shards, self.rank)
            .map_err(ModelError::Collective)?;
        Ok((part, Arc::new(view)))
    }

    fn owner(&self, table: usize, row: u32) -> usize {
        owner(&self.owners, table, row)
    }
}

/// Per table, the worker owning each row's neighbor lists: the row's partition
/// ([`relgraph_worker::store::placement`]) dealt round-robin over `workers`, as ingest
/// deals partitions to stores.
pub fn owners(db: &relgraph_common::Database, workers: usize, partitions: u32) -> Owners {
    let workers = workers.clamp(1, usize::from(u16::MAX)) as u32;
    relgraph_worker::store::placement(db, partitions)
        .into_iter()
        .map(|parts| parts.into_iter().map(|p| (p % workers) as u16).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{Kind, Output};
    use relgraph_sampler::{SampleConfig, Seed, sample};

    #[test]
    fn three_workers_sample_over_flight_as_one_graph() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("retail");
        crate::generate::run(&Kind::Retail {
            output: Output {
                out: data.clone(),
                seed: 3,
                json: true,
                only: Vec::new(),
            },
            customers: 300,
            products: 40,
            days: 200,
        })
        .expect("generate");
        let db = relgraph_common::Database::load(&data, None).expect("load");
        let whole = HeteroGraph::from_database(&db).expect("graph");
        let owners = Arc::new(owners(&db, 3, 12));
        let parts: Vec<Arc<HeteroGraph>> = (0..3u16)
            .map(|w| {
                let keep = |t: usize, n: u32| owners[t][n as usize] == w;
                Arc::new(whole.partition(keep).expect("partition"))
            })
            .collect();
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
        }

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
}
