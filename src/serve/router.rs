//! The coordinator's Flight router: one address for clients, which finds the workers
//! serving the model a ticket names (`relgraph worker --serve-data`) and forwards the
//! call to one of them, streaming its answer back untouched.
//!
//! Workers come from the coordinator's status (live ones only); which models each one
//! serves, from its `ListFlights`, asked again at most every [`REFRESH`] and whenever a
//! ticket names a model no known worker serves. Requests for a model go round-robin over
//! the workers serving it. `DoGet`, `DoExchange` (the whole stream to one worker),
//! `GetFlightInfo`, `GetSchema` and `ListFlights` are forwarded. `DoPut` goes to every
//! worker serving the table, since each holds its own copy of the data: the router reads
//! the whole put, sends it to all of them at once, and acknowledges only when every one
//! has (each acknowledges once the rows are in its RocksDB log); if any fails, the
//! error names the workers that did append.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{StreamExt, TryStreamExt};
use relgraph_coordinator::client::AdminClient;
use relgraph_proto::cluster::StatusRequest;
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{self, Sessions};

/// How long a worker's list of models is trusted.
pub const REFRESH: Duration = Duration::from_secs(2);
/// The most bytes of Arrow data one `DoPut` through the router may carry (it is read
/// whole before being sent on to every worker serving the table).
const MAX_PUT_BYTES: usize = 256 << 20;

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A worker's Flight client with its session.
#[derive(Clone)]
struct Upstream {
    client: FlightServiceClient<Channel>,
    session: Option<String>,
}

impl Upstream {
    fn request<T>(&self, message: T) -> Result<Request<T>, Status> {
        let mut r = Request::new(message);
        if let Some(s) = &self.session {
            let value = format!("Bearer {s}")
                .parse()
                .map_err(|_| Status::internal("session token"))?;
            r.metadata_mut().insert("authorization", value);
        }
        Ok(r)
    }
}

#[derive(Default)]
struct Routes {
    /// Worker address -> its client (kept across refreshes).
    upstreams: BTreeMap<String, Upstream>,
    /// Model name -> addresses of the workers serving it.
    models: BTreeMap<String, Vec<String>>,
    /// Table name -> addresses of the workers serving data with that table.
    tables: BTreeMap<String, Vec<String>>,
    /// What the first worker serving each model, then each table, lists for it.
    listed: BTreeMap<(bool, String), FlightInfo>,
    refreshed: Option<Instant>,
}

pub struct Router {
    coordinators: Vec<String>,
    token: Option<String>,
    sessions: Arc<Sessions>,
    routes: Mutex<Routes>,
    next: AtomicUsize,
}

impl Router {
    pub fn new(coordinators: Vec<String>, token: Option<String>) -> Self {
        Router {
            sessions: Arc::new(Sessions::new(token.clone())),
            coordinators,
            token,
            routes: Mutex::new(Routes::default()),
            next: AtomicUsize::new(0),
        }
    }

    async fn connect(&self, addr: &str) -> Result<Upstream, Status> {
        let channel = relgraph_coordinator::tls::endpoint(addr)
            .map_err(|e| Status::internal(e.to_string()))?
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("worker {addr}: {e}")))?;
        let mut client = FlightServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let session = match &self.token {
            None => None,
            Some(t) => {
                let hello = HandshakeRequest {
                    protocol_version: 0,
                    payload: t.clone().into_bytes().into(),
                };
                let mut answers = client
                    .handshake(futures::stream::iter([hello]))
                    .await?
                    .into_inner();
                let answer = answers
                    .message()
                    .await?
                    .ok_or_else(|| Status::unavailable(format!("worker {addr}: no session")))?;
                Some(String::from_utf8_lossy(&answer.payload).into_owned())
            }
        };
        Ok(Upstream { client, session })
    }

    /// Asks the coordinators for the live workers and each of them for its models.
    async fn refresh(&self, routes: &mut Routes) -> Result<(), Status> {
        let mut admin = AdminClient::new(self.coordinators.clone(), self.token.clone());
        let status = admin
            .call(|mut c| async move { c.status(StatusRequest {}).await })
            .await?;
        let mut models: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut infos_by_name = BTreeMap::new();
        for w in status.workers.iter().filter(|w| w.alive) {
            let upstream = match routes.upstreams.get(&w.addr) {
                Some(u) => u.clone(),
                None => match self.connect(&w.addr).await {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!("router: {}", e.message());
                        continue;
                    }
                },
            };
            let mut client = upstream.client.clone();
            let listed = async {
                let infos: Vec<FlightInfo> = client
                    .list_flights(upstream.request(Criteria::default())?)
                    .await?
                    .into_inner()
                    .try_collect()
                    .await?;
                Ok::<_, Status>(infos)
            };
            match listed.await {
                Ok(infos) => {
                    for info in infos {
                        let table = match info.flight_descriptor.as_ref().map(|d| d.path.as_slice())
                        {
                            Some([kind, table]) if kind == "tables" => Some(table.clone()),
                            _ => None,
                        };
                        let model = info
                            .flight_descriptor
                            .as_ref()
                            .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d.cmd).ok())
                            .and_then(|v| v["model"].as_str().map(str::to_string));
                        let (key, serving) = match (table, model) {
                            (Some(t), _) => ((true, t.clone()), tables.entry(t).or_default()),
                            (None, Some(m)) => ((false, m.clone()), models.entry(m).or_default()),
                            (None, None) => continue,
                        };
                        serving.push(w.addr.clone());
                        infos_by_name.entry(key).or_insert(info);
                    }
                    routes.upstreams.insert(w.addr.clone(), upstream);
                }
                // A worker without models answers UNIMPLEMENTED: not a serving worker.
                Err(s) if s.code() == tonic::Code::Unimplemented => {}
                Err(s) => {
                    tracing::warn!("router: worker {}: {}", w.addr, s.message());
                    routes.upstreams.remove(&w.addr);
                }
            }
        }
        routes.models = models;
        routes.tables = tables;
        routes.listed = infos_by_name;
        routes.refreshed = Some(Instant::now());
        Ok(())
    }

    /// The workers serving the model, or with `table` the table, named `name`,
    /// refreshing the routes when they are old or know no worker for it.
    async fn serving(&self, name: &str, table: bool) -> Result<Vec<(String, Upstream)>, Status> {
        let kind = if table { "table" } else { "model" };
        let mut routes = self.routes.lock().await;
        let stale = routes.refreshed.is_none_or(|t| t.elapsed() > REFRESH);
        let known = |r: &Routes| match table {
            true => r.tables.contains_key(name),
            false => r.models.contains_key(name),
        };
        if stale || !known(&routes) {
            self.refresh(&mut routes).await?;
        }
        let addrs = match table {
            true => routes.tables.get(name),
            false => routes.models.get(name),
        }
        .ok_or_else(|| Status::not_found(format!("no worker serves a {kind} `{name}`")))?;
        let found: Vec<(String, Upstream)> = addrs
            .iter()
            .filter_map(|a| routes.upstreams.get(a).map(|u| (a.clone(), u.clone())))
            .collect();
        if found.is_empty() {
            return Err(Status::unavailable(format!(
                "the workers serving {kind} `{name}` went away"
            )));
        }
        Ok(found)
    }

    /// One worker serving `name` (see [`Router::serving`]), round-robin.
    async fn upstream(&self, name: &str, table: bool) -> Result<Upstream, Status> {
        let mut found = self.serving(name, table).await?;
        let at = self.next.fetch_add(1, Ordering::Relaxed) % found.len();
        Ok(found.swap_remove(at).1)
    }

    /// Checks the caller's session and finds a worker for the model `bytes` (a ticket or
    /// a descriptor's command) names.
    async fn route(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        bytes: &[u8],
    ) -> Result<Upstream, Status> {
        self.sessions.check(metadata)?;
        self.upstream(&Self::model_of(bytes)?, false).await
    }

    /// [`Router::route`] for a descriptor, which names a model or a table
    /// (`["tables", T]`: a worker serving it).
    async fn describe(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        descriptor: &FlightDescriptor,
    ) -> Result<Upstream, Status> {
        if let [kind, table] = descriptor.path.as_slice()
            && kind == "tables"
        {
            self.sessions.check(metadata)?;
            return self.upstream(table, true).await;
        }
        self.route(metadata, &descriptor.cmd).await
    }

    fn model_of(bytes: &[u8]) -> Result<String, Status> {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v["model"].as_str().map(str::to_string))
            .ok_or_else(|| {
                Status::invalid_argument(
                    "the router needs a ticket or command naming a model ({\"v\":1,\"model\":...})",
                )
            })
    }
}

/// The router's Flight server.
pub fn server(router: Router) -> FlightServiceServer<Router> {
    FlightServiceServer::new(router)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

#[tonic::async_trait]
impl FlightService for Router {
    type HandshakeStream = auth::HandshakeStream;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        auth::handshake(&self.sessions, request).await
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.sessions.check(request.metadata())?;
        let mut routes = self.routes.lock().await;
        self.refresh(&mut routes).await?;
        // The workers' own listings, as the refresh just read them.
        let infos: Vec<Result<FlightInfo, Status>> =
            routes.listed.values().cloned().map(Ok).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(infos))))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let upstream = self.describe(request.metadata(), request.get_ref()).await?;
        let descriptor = request.into_inner();
        upstream
            .client
            .clone()
            .get_flight_info(upstream.request(descriptor)?)
            .await
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("PollFlightInfo: use GetFlightInfo"))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let upstream = self.describe(request.metadata(), request.get_ref()).await?;
        let descriptor = request.into_inner();
        upstream
            .client
            .clone()
            .get_schema(upstream.request(descriptor)?)
            .await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let upstream = self
            .route(request.metadata(), &request.get_ref().ticket)
            .await?;
        let ticket = request.into_inner();
        metrics::counter!("relgraph_router_gets_total").increment(1);
        let answer = upstream
            .client
            .clone()
            .do_get(upstream.request(ticket)?)
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(answer)))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        self.sessions.check(request.metadata())?;
        let mut incoming = request.into_inner();
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        while let Some(m) = incoming.message().await? {
            bytes += m.data_body.len() + m.data_header.len();
            if bytes > MAX_PUT_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "an append through the router carries at most {} MiB; send more puts",
                    MAX_PUT_BYTES >> 20
                )));
            }
            messages.push(m);
        }
        let target =
            super::flight::put_target(messages.first().and_then(|m| m.flight_descriptor.as_ref()))?;
        let table = target.table;
        let targets = self.serving(&table, true).await?;
        let puts = targets.iter().map(|(addr, upstream)| {
            let messages = messages.clone();
            async move {
                let put = async {
                    let request = upstream.request(futures::stream::iter(messages))?;
                    let acks: Vec<PutResult> = upstream
                        .client
                        .clone()
                        .do_put(request)
                        .await?
                        .into_inner()
                        .try_collect()
                        .await?;
                    Ok::<_, Status>(acks)
                };
                (addr.clone(), put.await)
            }
        });
        let answers = futures::future::join_all(puts).await;
        let (done, failed): (Vec<_>, Vec<_>) = answers.into_iter().partition(|(_, r)| r.is_ok());
        if let Some((addr, Err(e))) = failed.first() {
            let appended: Vec<&str> = done.iter().map(|(a, _)| a.as_str()).collect();
            let retry = match &target.id {
                Some(id) => format!(
                    "; putting it again with id `{id}` appends it where it is missing and nowhere twice"
                ),
                None => "; a put with an `id` in its command can be retried safely".into(),
            };
            return Err(Status::new(
                e.code(),
                format!(
                    "append to `{table}` failed on worker {addr}: {}; appended on [{}] (their acknowledged rows are durable there){retry}",
                    e.message(),
                    appended.join(", ")
                ),
            ));
        }
        // Every worker acknowledged every batch; the first one's acknowledgements answer.
        let acks = done
            .into_iter()
            .next()
            .and_then(|(_, r)| r.ok())
            .unwrap_or_default();
        Ok(Response::new(Box::pin(futures::stream::iter(
            acks.into_iter().map(Ok),
        ))))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.sessions.check(request.metadata())?;
        let mut incoming = request.into_inner();
        let first = incoming.message().await?.ok_or_else(|| {
            Status::invalid_argument(
                "an exchange starts with a message whose descriptor names the model",
            )
        })?;
        let cmd = first
            .flight_descriptor
            .as_ref()
            .map(|d| d.cmd.clone())
            .unwrap_or_default();
        let upstream = self.upstream(&Self::model_of(&cmd)?, false).await?;
        metrics::counter!("relgraph_router_exchanges_total").increment(1);
        // The client's messages go on as they come; a broken client stream ends ours.
        let (tx, rx) = tokio::sync::mpsc::channel::<FlightData>(4);
        tokio::spawn(async move {
            while let Ok(Some(m)) = incoming.message().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
        let outgoing = futures::stream::once(async { first }).chain(rest);
        let answer = upstream
            .client
            .clone()
            .do_exchange(upstream.request(outgoing)?)
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(answer)))
    }

    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("the router has no actions"))
    }

    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }
}
