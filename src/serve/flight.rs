//! The Arrow Flight service of a node (ARCHITECTURE.md §8-10): serving (`DoGet`,
//! `DoExchange`, `DoPut`, `ListFlights`, `GetFlightInfo`, `GetSchema`, `Handshake`) and,
//! on workers, the data plane's sampling exchange ([`SampleService`]). Any Flight
//! client works without relgraph code: tickets and commands are JSON (README, "Flight
//! API").
//!
//! Authentication is [`super::auth`]'s; requests are computed on [`super::executor`]'s
//! threads.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::ipc::MessageHeader;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::utils::flight_data_to_arrow_batch;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{self, Sessions};
use super::executor::{blocking, submit};
use super::{Limits, ServeError, Served, Serving, TOGETHER, Ticket as ScoreTicket};
use crate::cluster::flight::SampleService;
use crate::predict::explained_schema;

const BATCH_ROWS: usize = 4096;

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Self {
        match e {
            ServeError::Invalid(m) => Status::invalid_argument(m),
            ServeError::NotFound(m) => Status::not_found(m),
            ServeError::TooLarge(m) => Status::resource_exhausted(m),
            ServeError::Internal(m) => Status::internal(m),
        }
    }
}

/// Incoming messages decoded one at a time: a schema, then record batches; a message
/// without an IPC header carries only a descriptor or app metadata.
#[derive(Debug, Default)]
struct Incoming {
    schema: Option<SchemaRef>,
}

#[derive(Debug)]
enum Message {
    Nothing,
    Batch(RecordBatch),
    Metadata(Vec<u8>),
}

impl Incoming {
    fn feed(&mut self, m: &FlightData) -> Result<Message, Status> {
        let bad = |e: String| Status::invalid_argument(format!("message: {e}"));
        if m.data_header.is_empty() {
            return Ok(if m.app_metadata.is_empty() {
                Message::Nothing
            } else {
                Message::Metadata(m.app_metadata.to_vec())
            });
        }
        let header = arrow::ipc::root_as_message(&m.data_header).map_err(|e| bad(e.to_string()))?;
        match header.header_type() {
            MessageHeader::Schema => {
                let schema =
                    arrow::datatypes::Schema::try_from(m).map_err(|e| bad(e.to_string()))?;
                self.schema = Some(Arc::new(schema));
                Ok(Message::Nothing)
            }
            MessageHeader::RecordBatch => {
                let schema = self
                    .schema
                    .clone()
                    .ok_or_else(|| bad("a record batch before its schema".into()))?;
                flight_data_to_arrow_batch(m, schema, &HashMap::new())
                    .map(Message::Batch)
                    .map_err(|e| bad(e.to_string()))
            }
            other => Err(bad(format!(
                "{other:?} messages are not accepted (send dictionary-encoded columns plain)"
            ))),
        }
    }
}

/// A node's Flight service: serving when it has models, sampling when it is a worker.
#[derive(Debug, Clone)]
pub struct NodeService {
    pub sampling: SampleService,
    pub serving: Option<Arc<Serving>>,
    pub sessions: Arc<Sessions>,
}

type FlightStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Flight server of `service`, taking messages up to `limits.message` bytes.
pub fn server(service: NodeService, limits: &Limits) -> FlightServiceServer<NodeService> {
    FlightServiceServer::new(service)
        .max_decoding_message_size(limits.message)
        .max_encoding_message_size(limits.message)
}

fn encode(
    schema: SchemaRef,
    batches: impl futures::Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
) -> FlightStream<FlightData> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(|e| match e {
            FlightError::Tonic(s) => *s,
            other => Status::internal(other.to_string()),
        });
    Box::pin(stream)
}

/// The whole answer to a ticket naming its entities, computed on a serving thread;
/// small ones wait to share a forward pass with others that came in beside them.
async fn predict_all(
    serving: Arc<Serving>,
    ticket: ScoreTicket,
) -> Result<Vec<RecordBatch>, Status> {
    // A `query` names its entities inside: how many is known only once it is planned.
    if ticket.keys.len() <= TOGETHER && ticket.query.is_none() && !ticket.explain {
        let (tx, rx) = tokio::sync::oneshot::channel();
        serving.wait(ticket, tx);
        submit(move || serving.answer_waiting())?;
        return rx
            .await
            .map_err(|_| Status::internal("the request failed on its serving thread"))?
            .map_err(Status::from);
    }
    blocking(move || {
        let mut out = Vec::new();
        serving.predict(&ticket, usize::MAX, &mut |b| {
            out.push(b);
            Ok(())
        })?;
        Ok(out)
    })
    .await
}

/// Model `name`'s flight: its predictions for every entity.
fn model_info(serving: &Serving, served: &Served) -> Result<FlightInfo, Status> {
    let cmd = serde_json::json!({"v": 1, "op": "score", "model": served.name});
    let ticket = serde_json::json!({"v": 1, "model": served.name, "part": [0, 1]});
    let ranking = matches!(
        served.model.manifest.target,
        relgraph_worker::model::TargetCode::Ranking { .. }
    );
    let entities = serving.entities(served) as i64;
    let meta = serde_json::json!({
        "kind": "model",
        "version": served.version,
        "query": served.query,
        "entities": entities,
        "ranking": ranking,
        "items": served.items(),
        "dir": served.dir.display().to_string(),
    });
    FlightInfo::new()
        .try_with_schema(&served.schema)
        .map_err(|e| Status::internal(e.to_string()))
        .map(|info| {
            info.with_descriptor(FlightDescriptor::new_cmd(cmd.to_string()))
                .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket.to_string())))
                .with_total_records(if ranking { -1 } else { entities })
                .with_ordered(true)
                .with_app_metadata(meta.to_string())
        })
}

fn table_info(name: &str, schema: &SchemaRef, rows: usize) -> Result<FlightInfo, Status> {
    let meta = serde_json::json!({"kind": "table", "rows": rows});
    FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))
        .map(|info| {
            info.with_descriptor(FlightDescriptor::new_path(vec![
                "tables".to_string(),
                name.to_string(),
            ]))
            .with_total_records(rows as i64)
            .with_app_metadata(meta.to_string())
        })
}

#[derive(Debug, Deserialize)]
struct AppendCommand {
    v: u32,
    op: String,
    table: String,
    /// The client's name for this put: batch `i` of it is the append `ID/i`, and a put
    /// with an id seen before adds nothing (see [`crate::serve::Serving::append`]).
    #[serde(default)]
    id: Option<String>,
}

/// The longest append id (every id is kept, in memory and in the log).
const MAX_APPEND_ID: usize = 256;

/// What a `DoPut` appends to: the table, and the put's id if the client named it.
#[derive(Clone, Debug)]
pub(crate) struct PutTarget {
    pub table: String,
    pub id: Option<String>,
}

/// What a `DoPut` descriptor names: path `["tables", T]` or `[T]`, or the command
/// `{"v":1,"op":"append","table":T}` with an optional `"id"`.
pub(crate) fn put_target(descriptor: Option<&FlightDescriptor>) -> Result<PutTarget, Status> {
    let d = descriptor.ok_or_else(|| {
        Status::invalid_argument("DoPut needs a descriptor naming the table: path [\"tables\", T]")
    })?;
    let plain = |t: &String| {
        Ok(PutTarget {
            table: t.clone(),
            id: None,
        })
    };
    match d.path.as_slice() {
        [t] => return plain(t),
        [tables, t] if tables == "tables" => return plain(t),
        [] => {}
        other => {
            return Err(Status::invalid_argument(format!(
                "descriptor path {other:?}: want [\"tables\", T]"
            )));
        }
    }
    let cmd: AppendCommand = serde_json::from_slice(&d.cmd)
        .map_err(|e| Status::invalid_argument(format!("DoPut command: {e}")))?;
    if cmd.v != 1 || cmd.op != "append" {
        return Err(Status::invalid_argument(format!(
            "DoPut command v{} `{}`: want v1 `append`",
            cmd.v, cmd.op
        )));
    }
    if let Some(id) = &cmd.id
        && (id.is_empty() || id.len() > MAX_APPEND_ID)
    {
        return Err(Status::invalid_argument(format!(
            "DoPut command: an `id` of {} bytes; give 1 to {MAX_APPEND_ID}",
            id.len()
        )));
    }
    Ok(PutTarget {
        table: cmd.table,
        id: cmd.id,
    })
}

/// The entity keys of an exchanged request batch: its `key` column (or one named like
/// the model's entity key), text or integers.
fn batch_keys(batch: &RecordBatch, served: &Served) -> Result<Vec<serde_json::Value>, Status> {
    let column = batch
        .column_by_name("key")
        .or_else(|| batch.column_by_name(&served.key_name))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "a request batch needs a `key` (or `{}`) column",
                served.key_name
            ))
        })?;
    if column.null_count() > 0 {
        return Err(Status::invalid_argument("request keys hold nulls"));
    }
    if let Some(s) = column.as_any().downcast_ref::<StringArray>() {
        Ok(s.iter().flatten().map(|k| k.into()).collect())
    } else if let Some(i) = column.as_any().downcast_ref::<Int64Array>() {
        Ok(i.values().iter().map(|&k| k.into()).collect())
    } else {
        Err(Status::invalid_argument(format!(
            "request keys are {}; send utf8 or int64",
            column.data_type()
        )))
    }
}

impl NodeService {
    fn serving(&self) -> Result<&Arc<Serving>, Status> {
        self.serving
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this node serves no models"))
    }

    fn parse_ticket(bytes: &[u8]) -> Result<ScoreTicket, Status> {
        serde_json::from_slice(bytes).map_err(|e| {
            Status::invalid_argument(format!(
                "ticket: {e} (want JSON such as {{\"v\":1,\"model\":\"churn\",\"keys\":[\"42\"]}})"
            ))
        })
    }

    /// A serving exchange: requests (batches with keys, or metadata `{"keys": [...]}`)
    /// answered one by one, in order.
    async fn exchange(
        &self,
        first: FlightData,
        rest: Streaming<FlightData>,
    ) -> Result<Response<FlightStream<FlightData>>, Status> {
        let serving = self.serving()?.clone();
        let cmd = first
            .flight_descriptor
            .as_ref()
            .map(|d| d.cmd.clone())
            .unwrap_or_default();
        let base = Self::parse_ticket(&cmd)?;
        if !base.keys.is_empty() || base.part.is_some() {
            return Err(Status::invalid_argument(
                "an exchange's descriptor names the model and options; its messages carry the keys",
            ));
        }
        let served = serving.model(&base.model)?;
        let schema = explained_schema(&served.schema, base.explain);
        let (tx, rx) = mpsc::channel::<Result<RecordBatch, FlightError>>(4);
        let mut rest = rest;
        tokio::spawn(async move {
            let fail = |s: Status| Err(FlightError::Tonic(Box::new(s)));
            let mut incoming = Incoming::default();
            let mut pending = Some(Ok(first));
            loop {
                // The next request is read only once this one is answered: a client
                // may wait for each answer before it sends more.
                let message = match pending.take() {
                    Some(m) => m,
                    None => match rest.next().await {
                        Some(m) => m,
                        None => break,
                    },
                };
                let keys = message
                    .and_then(|m| incoming.feed(&m))
                    .and_then(|m| match m {
                        Message::Batch(b) => batch_keys(&b, &served).map(Some),
                        Message::Nothing => Ok(None),
                        Message::Metadata(meta) => {
                            #[derive(Deserialize)]
                            struct Keys {
                                keys: Vec<serde_json::Value>,
                            }
                            serde_json::from_slice::<Keys>(&meta)
                                .map(|k| Some(k.keys))
                                .map_err(|e| {
                                    Status::invalid_argument(format!("request metadata: {e}"))
                                })
                        }
                    });
                let keys = match keys {
                    Ok(Some(k)) => k,
                    Ok(None) => continue,
                    Err(s) => {
                        let _ = tx.send(fail(s)).await;
                        return;
                    }
                };
                let ticket = ScoreTicket {
                    keys,
                    ..base.clone()
                };
                let answer = predict_all(serving.clone(), ticket).await;
                match answer {
                    Ok(batches) => {
                        for b in batches {
                            if tx.send(Ok(b)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(s) => {
                        let _ = tx.send(fail(s)).await;
                        return;
                    }
                }
            }
        });
        metrics::counter!("relgraph_flight_exchanges_total").increment(1);
        Ok(Response::new(encode(schema, ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl FlightService for NodeService {
    type HandshakeStream = FlightStream<HandshakeResponse>;
    type ListFlightsStream = FlightStream<FlightInfo>;
    type DoGetStream = FlightStream<FlightData>;
    type DoPutStream = FlightStream<PutResult>;
    type DoExchangeStream = FlightStream<FlightData>;
    type DoActionStream = FlightStream<arrow_flight::Result>;
    type ListActionsStream = FlightStream<ActionType>;

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
        let serving = self.serving()?;
        let mut infos = Vec::new();
        for served in serving.models() {
            infos.push(model_info(serving, &served));
        }
        for (name, schema, rows) in serving.tables() {
            infos.push(table_info(&name, &schema, rows));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(infos))))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.sessions.check(request.metadata())?;
        let serving = self.serving()?;
        let d = request.into_inner();
        if let [tables, name] = d.path.as_slice()
            && tables == "tables"
        {
            let (name, schema, rows) = serving
                .tables()
                .into_iter()
                .find(|(t, _, _)| t == name)
                .ok_or_else(|| Status::not_found(format!("no table `{name}`")))?;
            return table_info(&name, &schema, rows).map(Response::new);
        }
        let ticket = Self::parse_ticket(&d.cmd)?;
        let served = serving.model(&ticket.model)?;
        model_info(serving, &served).map(Response::new)
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "PollFlightInfo: predictions are computed on DoGet; use GetFlightInfo",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let info = self.get_flight_info(request).await?.into_inner();
        let schema = info
            .try_decode_schema()
            .map_err(|e| Status::internal(e.to_string()))?;
        let options = arrow::ipc::writer::IpcWriteOptions::default();
        SchemaResult::try_from(SchemaAsIpc::new(&schema, &options))
            .map(Response::new)
            .map_err(|e| Status::internal(e.to_string()))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        self.sessions.check(request.metadata())?;
        let serving = self.serving()?.clone();
        let ticket = Self::parse_ticket(&request.into_inner().ticket)?;
        let schema = explained_schema(&serving.model(&ticket.model)?.schema, ticket.explain);
        metrics::counter!("relgraph_flight_gets_total").increment(1);
        if ticket.part.is_none() {
            // Small: answer or fail as a whole.
            let batches = predict_all(serving, ticket).await?;
            return Ok(Response::new(encode(
                schema,
                futures::stream::iter(batches.into_iter().map(Ok)),
            )));
        }
        // A whole partition: streamed as it is scored.
        let (tx, rx) = mpsc::channel::<Result<RecordBatch, FlightError>>(2);
        submit(move || {
            let result = serving.predict(&ticket, BATCH_ROWS, &mut |b| {
                tx.blocking_send(Ok(b))
                    .map_err(|_| ServeError::Internal("the client went away".into()))
            });
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(FlightError::Tonic(Box::new(e.into()))));
            }
        })?;
        Ok(Response::new(encode(schema, ReceiverStream::new(rx))))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        self.sessions.check(request.metadata())?;
        let serving = self.serving()?.clone();
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("DoPut sent nothing"))?;
        let target = put_target(first.flight_descriptor.as_ref())?;
        let (tx, rx) = mpsc::channel::<Result<PutResult, Status>>(4);
        tokio::spawn(async move {
            let mut incoming = Incoming::default();
            let mut next = Some(Ok(first));
            let mut batches = 0usize;
            while let Some(message) = next {
                next = stream.next().await;
                let batch = match message.and_then(|m| incoming.feed(&m)) {
                    Ok(Message::Batch(b)) => b,
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let (serving, table) = (serving.clone(), target.table.clone());
                let id = target.id.as_ref().map(|id| format!("{id}/{batches}"));
                batches += 1;
                let done = blocking(move || serving.append(&table, &batch, id.as_deref())).await;
                let reply = done.and_then(|a| {
                    serde_json::to_vec(&a)
                        .map(|m| PutResult {
                            app_metadata: m.into(),
                        })
                        .map_err(|e| Status::internal(e.to_string()))
                });
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.sessions.check(request.metadata())?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("DoExchange sent nothing"))?;
        if SampleService::is_sample(&first) {
            let mut messages = vec![first];
            while let Some(m) = stream.message().await? {
                messages.push(m);
            }
            let answer = self.sampling.answer(&messages)?;
            metrics::counter!("relgraph_flight_sample_calls_total").increment(1);
            return Ok(Response::new(Box::pin(futures::stream::iter(
                answer.into_iter().map(Ok),
            ))));
        }
        self.exchange(first, stream).await
    }

    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented(
            "DoAction: this server has no actions",
        ))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.sessions.check(request.metadata())?;
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }
}
