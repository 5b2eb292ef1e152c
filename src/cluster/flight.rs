//! The Flight data plane for sampling (ARCHITECTURE.md §4): a worker holding a partition
//! of the graph ([`HeteroGraph::partition`]) answers other workers' neighbor requests for
//! the nodes it owns, and [`RemoteShard`] is the client side, a [`Shard`] that a
//! [`relgraph_sampler::Routed`] view sends each hop's requests for those nodes to.
//!
//! Wire format, one `DoExchange` per call: the client sends the request batch (`node`
//! u32, `anchor` i64 seconds, `k` u32, `rng` u64) whose first message carries a
//! descriptor with the command `{"v":1,"op":"sample","edge_type":E,"strategy":"uniform"}`;
//! the server answers one batch of neighbors (`request` u32, `node` u32, `time` i64,
//! grouped by request in request order). Every call needs the cluster's bearer token
//! when one is configured.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::utils::{batches_to_flight_data, flight_data_to_batches};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use relgraph_coordinator::auth::{Auth, check_token};
use relgraph_coordinator::service::connect;
use relgraph_sampler::{GraphView, HeteroGraph, Neighbor, Owners, Request, Shard, Strategy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Response, Status, Streaming};

/// Largest message either side accepts: a hop's answer for a chunk of seeds at [128, 64]
/// can pass tonic's 4 MiB default.
const MAX_MESSAGE: usize = 256 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct SampleCommand {
    v: u32,
    op: String,
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

/// Serves one worker's partition: neighbor requests for the nodes it owns.
#[derive(Debug, Clone)]
pub struct SampleService {
    part: Arc<HeteroGraph>,
    owners: Arc<Owners>,
    rank: u16,
}

impl SampleService {
    pub fn new(part: Arc<HeteroGraph>, owners: Arc<Owners>, rank: u16) -> Self {
        SampleService { part, owners, rank }
    }

    fn answer(&self, messages: &[FlightData]) -> Result<Vec<FlightData>, String> {
        let cmd = messages
            .first()
            .and_then(|m| m.flight_descriptor.as_ref())
            .ok_or("the first message must carry a descriptor whose cmd is the command")?;
        let cmd: SampleCommand =
            serde_json::from_slice(&cmd.cmd).map_err(|e| format!("command: {e}"))?;
        if cmd.v != 1 || cmd.op != "sample" {
            return Err(format!(
                "command v{} `{}`: this worker serves v1 `sample`",
                cmd.v, cmd.op
            ));
        }
        let strategy = match cmd.strategy.as_str() {
            "uniform" => Strategy::Uniform,
            "recent" => Strategy::Recent,
            other => return Err(format!("strategy `{other}` is neither uniform nor recent")),
        };
        let Some(et) = self.part.edge_types.get(cmd.edge_type) else {
            return Err(format!(
                "edge type {} of {}",
                cmd.edge_type,
                self.part.edge_types.len()
            ));
        };
        let batches = flight_data_to_batches(messages).map_err(|e| format!("requests: {e}"))?;
        let requests = decode_requests(&batches)?;
        let owners = &self.owners[et.src];
        if let Some(r) = requests
            .iter()
            .find(|r| owners.get(r.node as usize) != Some(&self.rank))
        {
            return Err(format!(
                "node {} of `{}` is not on worker {}",
                r.node, self.part.tables[et.src], self.rank
            ));
        }
        let mut found = Vec::new();
        self.part
            .sample(cmd.edge_type, &requests, strategy, &mut found);
        encode_neighbors(&found)
    }
}

type FlightStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn unsupported<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what}: this worker's Flight service samples (DoExchange) and nothing else yet"
    )))
}

#[tonic::async_trait]
impl FlightService for SampleService {
    type HandshakeStream = FlightStream<HandshakeResponse>;
    type ListFlightsStream = FlightStream<FlightInfo>;
    type DoGetStream = FlightStream<FlightData>;
    type DoPutStream = FlightStream<PutResult>;
    type DoExchangeStream = FlightStream<FlightData>;
    type DoActionStream = FlightStream<arrow_flight::Result>;
    type ListActionsStream = FlightStream<ActionType>;

    async fn do_exchange(
        &self,
        request: tonic::Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let mut stream = request.into_inner();
        let mut messages = Vec::new();
        while let Some(m) = stream.message().await? {
            messages.push(m);
        }
        let answer = self.answer(&messages).map_err(Status::invalid_argument)?;
        metrics::counter!("relgraph_flight_sample_calls_total").increment(1);
        Ok(Response::new(Box::pin(tokio_stream::iter(
            answer.into_iter().map(Ok),
        ))))
    }

    async fn handshake(
        &self,
        _: tonic::Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unsupported("Handshake")
    }
    async fn list_flights(
        &self,
        _: tonic::Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        unsupported("ListFlights")
    }
    async fn get_flight_info(
        &self,
        _: tonic::Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        unsupported("GetFlightInfo")
    }
    async fn poll_flight_info(
        &self,
        _: tonic::Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unsupported("PollFlightInfo")
    }
    async fn get_schema(
        &self,
        _: tonic::Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        unsupported("GetSchema")
    }
    async fn do_get(
        &self,
        _: tonic::Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        unsupported("DoGet")
    }
    async fn do_put(
        &self,
        _: tonic::Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        unsupported("DoPut")
    }
    async fn do_action(
        &self,
        _: tonic::Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        unsupported("DoAction")
    }
    async fn list_actions(
        &self,
        _: tonic::Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        unsupported("ListActions")
    }
}

/// Serves `service` on `listener` until the runtime stops; every call needs `token` when
/// one is given.
pub fn serve(listener: TcpListener, service: SampleService, token: Option<String>) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = FlightServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let checker = move |req| check_token(req, token.as_deref());
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(InterceptedService::new(server, checker))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = result {
            tracing::error!("Flight server stopped: {e}");
        }
    });
}

/// Another worker's partition, reached over Flight. Calls block on `runtime`, so they
/// must come from threads outside it (rayon's, which sampling runs on).
#[derive(Debug, Clone)]
pub struct RemoteShard {
    addr: String,
    client: FlightServiceClient<InterceptedService<Channel, Auth>>,
    runtime: tokio::runtime::Handle,
}

impl RemoteShard {
    pub async fn connect(
        addr: &str,
        token: Option<&str>,
        runtime: tokio::runtime::Handle,
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
        })
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
        let mut data = encode_requests(requests)?;
        let command = SampleCommand {
            v: 1,
            op: "sample".into(),
            edge_type,
            strategy: strategy_name(strategy).into(),
        };
        let cmd = serde_json::to_vec(&command).map_err(|e| e.to_string())?;
        if let Some(first) = data.first_mut() {
            first.flight_descriptor = Some(FlightDescriptor::new_cmd(cmd));
        }
        let mut client = self.client.clone();
        let messages = self
            .runtime
            .block_on(async move {
                let mut answer = client
                    .do_exchange(tokio_stream::iter(data))
                    .await?
                    .into_inner();
                let mut messages = Vec::new();
                while let Some(m) = answer.message().await? {
                    messages.push(m);
                }
                Ok::<_, Status>(messages)
            })
            .map_err(|s| format!("worker {}: {}", self.addr, s.message()))?;
        let batches = flight_data_to_batches(&messages)
            .map_err(|e| format!("worker {}: answer: {e}", self.addr))?;
        decode_neighbors(&batches, requests.len(), out)
            .map_err(|e| format!("worker {}: {e}", self.addr))
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
    use relgraph_sampler::{Routed, SampleConfig, Seed, sample};

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
        let remote: Vec<RemoteShard> = (0..3u16)
            .map(|w| {
                let service = SampleService::new(parts[w as usize].clone(), owners.clone(), w);
                runtime.block_on(async {
                    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                    let addr = listener.local_addr().expect("addr").to_string();
                    serve(listener, service, token.clone());
                    RemoteShard::connect(&addr, token.as_deref(), runtime.handle().clone())
                        .await
                        .expect("connect")
                })
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
        for home in 0..3 {
            let shards: Vec<&dyn Shard> = (0..3)
                .map(|s| {
                    if s == home {
                        parts[s].as_ref() as &dyn Shard
                    } else {
                        &remote[s] as &dyn Shard
                    }
                })
                .collect();
            let view = Routed::new(&parts[home], &owners, shards, home).expect("view");
            let got = sample(&view, &seeds, &config).expect("sample");
            assert_eq!(view.take_error(), None);
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
        let anonymous = runtime
            .block_on(RemoteShard::connect(&addr, None, runtime.handle().clone()))
            .expect("connect");
        let err = anonymous
            .sample_shard(edge, &[request], Strategy::Uniform, &mut Vec::new())
            .expect_err("no token");
        assert!(err.contains("token"), "{err}");
    }
}
