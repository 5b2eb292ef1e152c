//! Online serving (ARCHITECTURE.md §8): ready models scored and asked for
//! recommendations on request, over one live copy of the data that rows appended with
//! Flight `DoPut` join at once, without retraining.
//!
//! - [`Serving`] holds the data ([`Dataset`]: the loaded tables, the graph with its
//!   appended rows, a key index per table) and the models, by name, each at its serving
//!   version. A new version is built beside the old one and swapped in with one pointer
//!   write; requests already running finish on the version they started with.
//! - An append is checked whole (table, columns, types, keys, links), written to the
//!   [`PartitionStore`]'s log and synced before it is applied and acknowledged, and
//!   replayed from the log when the server starts again.
//! - [`flight`] is the Arrow Flight face of all this ([`auth`] its tokens); [`topk`] the
//!   exact item search behind `recommend`.

pub mod auth;
mod dataset;
mod executor;
pub mod flight;
mod recommend;
pub mod router;
pub mod server;
#[cfg(test)]
mod tests;
pub mod topk;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use relgraph_common::pql::{PlanOptions, TaskPlan};
use relgraph_common::{Database, time};
use relgraph_sampler::HeteroGraph;
use relgraph_worker::label::{key_text, value_at};
use relgraph_worker::model::features::TableFeatures;
use relgraph_worker::model::{self, Inputs, Model, Prepared};
use relgraph_worker::store::PartitionStore;
use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::explain::Describer;
use crate::pql::plan_query;
use crate::predict::{add_explanations, output_schema, to_batch};
use recommend::{Ranking, ranking_of, recommend};
use relgraph_worker::model::explain::Method;

/// Neighbors per hop when a request names none: fewer than training's (ARCHITECTURE.md
/// §8), never more.
pub const SERVING_FANOUTS: [u32; 2] = [32, 16];

/// Memory for each served model version's cache of encoder outputs.
const ENCODER_CACHE_BYTES: usize = 256 << 20;

/// What one request may ask for (ARCHITECTURE.md §10: oversized requests get a clear
/// error, not a slow answer).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Entities per scoring request.
    pub keys: usize,
    /// Items per recommendation.
    pub k: usize,
    /// Neighbors per hop a request may ask for.
    pub fanout: u32,
    /// Bytes of one Flight message, either way.
    pub message: usize,
    /// Rows per appended batch.
    pub rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            keys: 10_000,
            k: 1_000,
            fanout: 128,
            message: 64 << 20,
            rows: 1_000_000,
        }
    }
}

/// Why a request failed, by the status a Flight client gets.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Internal(String),
}

impl From<model::ModelError> for ServeError {
    fn from(e: model::ModelError) -> Self {
        ServeError::Internal(e.to_string())
    }
}

fn invalid(m: impl Into<String>) -> ServeError {
    ServeError::Invalid(m.into())
}

/// A request for predictions: a Flight ticket (JSON, README "Flight API").
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
    /// Format version: 1.
    pub v: u32,
    /// `score` (any model) or `recommend` (ranking models only).
    #[serde(default)]
    pub op: Op,
    pub model: String,
    /// Entity keys (strings or integers).
    #[serde(default)]
    pub keys: Vec<serde_json::Value>,
    /// Instead of keys: a PQL query asking what the model was trained for, whose
    /// `FOR ... IN (...)` names the entities.
    #[serde(default)]
    pub query: Option<String>,
    /// Instead of keys: part `i` of `n` of every entity (batch scoring, partition by
    /// partition).
    #[serde(default)]
    pub part: Option<[u32; 2]>,
    /// Items per entity (ranking); the query's `RANK TOP k` when absent.
    #[serde(default)]
    pub k: Option<usize>,
    /// Ranking: leave out items the entity is already linked to (through the target's
    /// facts, up to the anchor).
    #[serde(default)]
    pub exclude_seen: bool,
    /// Where to look from: seconds since the epoch or `YYYY-MM-DD[ HH:MM:SS]`; the latest
    /// timestamp in the data (appended rows included) when absent.
    #[serde(default)]
    pub anchor: Option<serde_json::Value>,
    /// Neighbors per hop; [`SERVING_FANOUTS`] when absent.
    #[serde(default)]
    pub fanouts: Option<Vec<u32>>,
    /// Add each entity's explanation (gradient x input) as `top_columns` and
    /// `top_rows` (as `predict --explain` does).
    #[serde(default)]
    pub explain: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    #[default]
    Score,
    Recommend,
}

/// A table's primary keys: row by key text, and key text by row.
#[derive(Debug, Default)]
struct KeyIndex {
    rows: FxHashMap<String, u32>,
    texts: Vec<String>,
}

/// The live data: the loaded tables, and everything appended since.
#[derive(Debug)]
pub struct Dataset {
    db: Database,
    graph: Arc<HeteroGraph>,
    keys: Vec<Option<KeyIndex>>,
    /// Rows appended per table, in the table's schema.
    appended: Vec<Vec<RecordBatch>>,
    rows: Vec<usize>,
    last_time: Option<i64>,
    seq: u64,
    store: Option<PartitionStore>,
    /// Models whose features follow appends.
    served: Vec<Weak<Served>>,
    /// What each append that came with an id did, so a retry of it changes nothing.
    by_id: HashMap<String, Appended>,
}

/// A model at one version, ready to answer.
#[derive(Debug)]
pub struct Served {
    pub name: String,
    pub version: u64,
    pub dir: PathBuf,
    pub model: Model,
    pub entity_table: usize,
    pub key_name: String,
    pub schema: SchemaRef,
    pub query: String,
    /// What the model was trained to answer.
    pub plan: TaskPlan,
    endpoints: Vec<(usize, usize)>,
    /// Every table's encoded rows, appended ones included.
    features: RwLock<Vec<TableFeatures>>,
    ranking: Option<Ranking>,
}

impl Served {
    /// Items a ranking model recommends from.
    pub fn items(&self) -> Option<usize> {
        self.ranking.as_ref().map(|r| r.search.len())
    }
}

/// What an append did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Appended {
    pub table: String,
    pub rows: usize,
    /// Its place in the log.
    pub seq: u64,
    /// Rows per foreign key whose value names no row (kept, without that link).
    pub dangling: BTreeMap<String, usize>,
    /// The table's rows then.
    pub total: usize,
    /// The append's id was seen before: nothing was added, and this is what the first
    /// append with that id did.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// Serving state: the data and the models.
#[derive(Debug)]
pub struct Serving {
    data: RwLock<Dataset>,
    models: RwLock<BTreeMap<String, Arc<Served>>>,
    pub limits: Limits,
    /// Small requests waiting for a serving thread (see [`Serving::answer_waiting`]).
    waiting: Mutex<Vec<Waiting>>,
}

/// Where a waiting request's answer goes.
pub type Reply = tokio::sync::oneshot::Sender<Result<Vec<RecordBatch>, ServeError>>;

/// A small request waiting for a serving thread, since when, and where its answer goes.
type Waiting = (Ticket, Instant, Reply);

/// Entities at most in one forward pass shared by requests that waited together.
pub const TOGETHER: usize = 32;

fn poisoned<T>(_: T) -> ServeError {
    ServeError::Internal("a request panicked while holding the serving state".into())
}

impl Serving {
    /// Serves `db`; with `store`, appends are logged there (and those it holds already are
    /// replayed first), else refused.
    pub fn new(
        db: Database,
        store: Option<PartitionStore>,
        limits: Limits,
    ) -> anyhow::Result<Self> {
        let graph = Arc::new(HeteroGraph::from_database(&db)?);
        let keys = db
            .tables
            .iter()
            .map(|t| {
                let pk = t.schema.primary_key.as_ref()?;
                let c = t.schema.column_index(pk)?;
                let dtype = t.schema.columns[c].dtype;
                let texts: Vec<String> = (0..t.num_rows())
                    .map(|r| key_text(&value_at(t.batch.column(c), dtype, r)))
                    .collect();
                let rows = texts
                    .iter()
                    .enumerate()
                    .map(|(r, k)| (k.clone(), r as u32))
                    .collect();
                Some(KeyIndex { rows, texts })
            })
            .collect();
        let data = Dataset {
            rows: db.tables.iter().map(|t| t.num_rows()).collect(),
            appended: vec![Vec::new(); db.tables.len()],
            last_time: crate::predict::last_timestamp(&db),
            keys,
            graph,
            seq: 0,
            store: None,
            served: Vec::new(),
            by_id: HashMap::new(),
            db,
        };
        let serving = Serving {
            data: RwLock::new(data),
            models: RwLock::default(),
            limits,
            waiting: Mutex::default(),
        };
        if let Some(store) = store {
            let events = store.events()?;
            let mut ids: HashMap<u64, String> = store
                .append_ids()?
                .into_iter()
                .map(|(id, seq)| (seq, id))
                .collect();
            let mut data = serving
                .data
                .write()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            for (seq, table, rows) in events {
                let mut appended = data
                    .append(&table, &rows, false, None)
                    .map_err(|e| anyhow::anyhow!("replaying appended event {seq}: {e}"))?;
                data.seq = seq;
                if let Some(id) = ids.remove(&seq) {
                    appended.seq = seq;
                    data.by_id.insert(id, appended);
                }
            }
            data.store = Some(store);
        }
        Ok(serving)
    }

    /// Loads the model in `dir` as the serving version of `name` (a new version when one
    /// is serving already, swapped in atomically). Returns the version.
    pub fn load_model(&self, name: &str, dir: &Path) -> anyhow::Result<u64> {
        let manifest = model::read_manifest(dir)?;
        let (plan, base, model, ranking, endpoints) = {
            let data = self.data.read().map_err(poisoned)?;
            let mut plan = plan_query(&data.db, &manifest.query, &PlanOptions::default())?;
            plan.splits = manifest.splits.splits();
            let base: Vec<TableFeatures> = manifest
                .codes
                .iter()
                .map(|c| c.apply(&data.db))
                .collect::<Result<_, _>>()?;
            // What loading checks the model against; dropped before the lock, so an
            // append never has to copy the graph.
            let prepared = Prepared {
                view: data.graph.clone(),
                graph: data.graph.clone(),
                features: Arc::new(Vec::<TableFeatures>::new()),
                endpoints: data
                    .graph
                    .edge_types
                    .iter()
                    .map(|e| (e.src, e.dst))
                    .collect(),
            };
            let rows = model::fit::item_rows(&data.db, &manifest.target);
            let mut model = model::load(dir, &prepared, rows)?;
            model.encoded = Some(model.net.encoder_cache(ENCODER_CACHE_BYTES));
            let ranking = ranking_of(&model, &plan, &data.db, &data.graph);
            (plan, base, model, ranking, prepared.endpoints)
        };
        let (entity_table, entity_key) = (plan.task.entity_table, plan.task.entity_key);
        let version = self
            .models
            .read()
            .ok()
            .and_then(|m| m.get(name).map(|s| s.version + 1))
            .unwrap_or(1);
        let mut data = self.data.write().map_err(poisoned)?;
        // Rows appended since the features above were encoded.
        let mut features = base;
        for (t, batches) in data.appended.iter().enumerate() {
            for b in batches {
                features[t].extend(manifest.codes[t].encode(b)?);
            }
        }
        let table = &data.db.tables[entity_table];
        let key_name = table.schema.columns[entity_key].name.clone();
        let served = Arc::new(Served {
            name: name.to_string(),
            version,
            dir: dir.to_path_buf(),
            schema: output_schema(&key_name, &manifest.target, manifest.treatment),
            key_name,
            entity_table,
            query: manifest.query.clone(),
            plan,
            model,
            endpoints,
            features: RwLock::new(features),
            ranking,
        });
        data.served.retain(|w| w.strong_count() > 0);
        data.served.push(Arc::downgrade(&served));
        drop(data);
        self.models
            .write()
            .map_err(poisoned)?
            .insert(name.to_string(), served);
        Ok(version)
    }

    /// The serving version of model `name`.
    pub fn model(&self, name: &str) -> Result<Arc<Served>, ServeError> {
        let models = self.models.read().map_err(poisoned)?;
        models.get(name).cloned().ok_or_else(|| {
            ServeError::NotFound(format!(
                "no model `{name}` is serving; serving: [{}]",
                models.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub fn models(&self) -> Vec<Arc<Served>> {
        self.models
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Each table's name, schema (as appends must match it) and current row count.
    pub fn tables(&self) -> Vec<(String, SchemaRef, usize)> {
        let Ok(data) = self.data.read() else {
            return Vec::new();
        };
        data.db
            .tables
            .iter()
            .zip(&data.rows)
            .map(|(t, &n)| (t.name().to_string(), t.batch.schema(), n))
            .collect()
    }

    /// The keys of a model's entities, in row order.
    pub fn entity_keys(&self, served: &Served) -> Vec<String> {
        self.data
            .read()
            .ok()
            .and_then(|d| {
                d.keys[served.entity_table]
                    .as_ref()
                    .map(|k| k.texts.clone())
            })
            .unwrap_or_default()
    }

    /// Entities of a model's entity table now.
    pub fn entities(&self, served: &Served) -> usize {
        self.data
            .read()
            .map(|d| d.rows[served.entity_table])
            .unwrap_or(0)
    }

    /// Appends `rows` to `table`: checked, logged durably, then visible to the next
    /// request. With an `id` (the client's name for this append), a second append with
    /// that id adds nothing and answers what the first did, so a client may retry an
    /// append whose acknowledgement it did not get.
    pub fn append(
        &self,
        table: &str,
        rows: &RecordBatch,
        id: Option<&str>,
    ) -> Result<Appended, ServeError> {
        if rows.num_rows() > self.limits.rows {
            return Err(ServeError::TooLarge(format!(
                "{} rows in one appended batch; the limit is {}",
                rows.num_rows(),
                self.limits.rows
            )));
        }
        let mut data = self.data.write().map_err(poisoned)?;
        if data.store.is_none() {
            return Err(ServeError::Invalid(
                "this server has no store for appended rows (start it with --store DIR)".into(),
            ));
        }
        if let Some(id) = id
            && let Some(first) = data.by_id.get(id)
        {
            if first.table != table || first.rows != rows.num_rows() {
                return Err(invalid(format!(
                    "append id `{id}` was used for {} rows of `{}`, not {} rows of `{table}`",
                    first.rows,
                    first.table,
                    rows.num_rows()
                )));
            }
            return Ok(Appended {
                duplicate: true,
                ..first.clone()
            });
        }
        let appended = data.append(table, rows, true, id)?;
        if let Some(id) = id {
            data.by_id.insert(id.to_string(), appended.clone());
        }
        Ok(appended)
    }

    /// The entity rows a ticket asks for, with their keys, in the order asked.
    fn resolve(
        &self,
        served: &Served,
        data: &Dataset,
        ticket: &Ticket,
    ) -> Result<(Vec<u32>, Vec<String>), ServeError> {
        let index = data.keys[served.entity_table].as_ref().ok_or_else(|| {
            ServeError::Internal("the entity table has no primary key index".into())
        })?;
        let mut keys: Vec<String> = Vec::new();
        let given = [
            !ticket.keys.is_empty(),
            ticket.query.is_some() && ticket.part.is_none(),
            ticket.part.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err(invalid(
                "a ticket names its entities one way: `keys`, `query` or `part` (a `query` beside `part` is only checked against the model)",
            ));
        }
        for k in &ticket.keys {
            keys.push(match k {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                other => {
                    return Err(invalid(format!(
                        "key {other}: a key is a string or an integer"
                    )));
                }
            });
        }
        if let Some(q) = &ticket.query {
            let plan = plan_query(
                &data.db,
                q,
                &PlanOptions {
                    step: None,
                    anchors: vec![0],
                },
            )
            .map_err(|e| invalid(format!("query: {e:#}")))?;
            let (t, m) = (&plan.task, &served.plan.task);
            if t.task != m.task || t.target != m.target || t.entity_table != m.entity_table {
                return Err(invalid(format!(
                    "the query asks something else than model `{}` answers ({})",
                    served.name, served.query
                )));
            }
            match (&plan.task.ids, ticket.part) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "the query names its entities (FOR ... IN); `part` scores all of them: give one",
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        "the query names no entities: add FOR <table>.<key> IN (...), or ask for `part`",
                    ));
                }
                _ => {}
            }
            let ids = plan.task.ids.as_deref().unwrap_or_default();
            keys.extend(ids.iter().map(key_text));
        }
        if let Some([i, n]) = ticket.part {
            if n == 0 || i >= n {
                return Err(invalid(format!("part [{i}, {n}]: want [i, n] with i < n")));
            }
            let rows: Vec<u32> = (i..data.rows[served.entity_table] as u32)
                .step_by(n as usize)
                .collect();
            let keys = rows
                .iter()
                .map(|&r| index.texts[r as usize].clone())
                .collect();
            return Ok((rows, keys));
        }
        if keys.len() > self.limits.keys {
            return Err(ServeError::TooLarge(format!(
                "{} entities in one request; the limit is {} (use `part` to score everything)",
                keys.len(),
                self.limits.keys
            )));
        }
        let rows = keys
            .iter()
            .map(|k| {
                index.rows.get(k).copied().ok_or_else(|| {
                    ServeError::NotFound(format!(
                        "no `{}` with key {k}",
                        data.db.tables[served.entity_table].name()
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((rows, keys))
    }

    /// Checks `ticket` against its model and the limits, and finds its entities.
    fn check(&self, ticket: &Ticket) -> Result<Request, ServeError> {
        if ticket.v != 1 {
            return Err(invalid(format!(
                "ticket v{}: this server reads v1",
                ticket.v
            )));
        }
        let served = self.model(&ticket.model)?;
        let code = &served.model.manifest.target;
        if ticket.op == Op::Recommend && served.ranking.is_none() {
            return Err(invalid(format!(
                "model `{}` does not rank items ({}); use op `score`",
                served.name, served.query
            )));
        }
        let fanouts = match &ticket.fanouts {
            Some(f) => {
                if let Some(&big) = f.iter().find(|&&x| x > self.limits.fanout) {
                    return Err(ServeError::TooLarge(format!(
                        "fanout {big}; the limit is {} per hop",
                        self.limits.fanout
                    )));
                }
                if f.len() != served.model.manifest.config.layers {
                    return Err(invalid(format!(
                        "fanouts {f:?}: the model has {} layers, give one number per layer",
                        served.model.manifest.config.layers
                    )));
                }
                f.clone()
            }
            None => served.model.serving_fanouts(&SERVING_FANOUTS),
        };
        let k = ticket.k.unwrap_or(code.k());
        if k > self.limits.k {
            return Err(ServeError::TooLarge(format!(
                "k = {k}; the limit is {}",
                self.limits.k
            )));
        }
        let data = self.data.read().map_err(poisoned)?;
        let anchor = match &ticket.anchor {
            None => data.last_time.unwrap_or(0),
            Some(a) => parse_anchor(a)?,
        };
        let (rows, keys) = self.resolve(&served, &data, ticket)?;
        Ok(Request {
            served,
            fanouts,
            k,
            anchor,
            exclude_seen: ticket.exclude_seen,
            explain: ticket.explain,
            rows,
            keys,
        })
    }

    /// Predictions for the entities `ticket` names, in [`Served::schema`]; entities in
    /// batches of at most `chunk`, handed to `emit` in order.
    pub fn predict(
        &self,
        ticket: &Ticket,
        chunk: usize,
        emit: &mut dyn FnMut(RecordBatch) -> Result<(), ServeError>,
    ) -> Result<(), ServeError> {
        let r = self.check(ticket)?;
        // Each chunk takes the data's read lock for itself and lets it go before its batch
        // is sent, so an append waits for one chunk at most (not for a whole `part`, nor for
        // a slow client), and each chunk sees the rows appended before it started.
        for (rows, keys) in r.rows.chunks(chunk.max(1)).zip(r.keys.chunks(chunk.max(1))) {
            let batch = self.answer(&r, rows, &[(0, keys)])?.pop();
            emit(batch.ok_or_else(|| ServeError::Internal("no answer".into()))?)?;
        }
        Ok(())
    }

    /// Queues a small request (at most [`TOGETHER`] keys, no explanations, no `query`); a serving
    /// thread answers it in [`Serving::answer_waiting`].
    pub fn wait(&self, ticket: Ticket, reply: Reply) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.push((ticket, Instant::now(), reply));
    }

    /// Answers the requests waiting, oldest first, up to [`TOGETHER`] entities, in as few
    /// forward passes as they allow (nothing when another serving thread took them
    /// first). Under load, requests that came in while every serving thread was busy
    /// share one pass, which costs little more than one request's; when the threads are
    /// idle, each request runs at once, alone.
    pub fn answer_waiting(&self) {
        let taken: Vec<Waiting> = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let (mut take, mut entities) = (0, 0);
            while let Some((t, _, _)) = waiting.get(take) {
                let n = t.keys.len().max(1);
                if take > 0 && entities + n > TOGETHER {
                    break;
                }
                entities += n;
                take += 1;
            }
            waiting.drain(..take).collect()
        };
        if taken.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut tickets = Vec::with_capacity(taken.len());
        let mut replies = Vec::with_capacity(taken.len());
        for (ticket, since, reply) in taken {
            metrics::histogram!("relgraph_serve_queue_seconds")
                .record((started - since).as_secs_f64());
            tickets.push(ticket);
            replies.push(reply);
        }
        metrics::histogram!("relgraph_serve_requests_per_pass").record(tickets.len() as f64);
        let answers = self.predict_together(&tickets);
        metrics::histogram!("relgraph_serve_compute_seconds")
            .record(started.elapsed().as_secs_f64());
        for (reply, answer) in replies.into_iter().zip(answers) {
            if answer.is_err() {
                metrics::counter!("relgraph_serve_errors_total").increment(1);
            }
            let _ = reply.send(answer);
        }
    }

    /// Answers small requests that came in together: those that can share a forward
    /// pass (the same model version, options and anchor; no explanations) share one, the
    /// rest run alone. Each request gets its own answer, or its own error.
    pub fn predict_together(
        &self,
        tickets: &[Ticket],
    ) -> Vec<Result<Vec<RecordBatch>, ServeError>> {
        let mut answers: Vec<Option<Result<Vec<RecordBatch>, ServeError>>> =
            tickets.iter().map(|_| None).collect();
        let mut checked = Vec::new();
        for (i, t) in tickets.iter().enumerate() {
            match self.check(t) {
                Ok(r) => checked.push((i, r)),
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        while !checked.is_empty() {
            let first = checked.remove(0);
            let (joined, rest): (Vec<_>, Vec<_>) =
                checked.into_iter().partition(|(_, r)| first.1.joins(r));
            checked = rest;
            let group: Vec<(usize, Request)> = std::iter::once(first).chain(joined).collect();
            let rows: Vec<u32> = group
                .iter()
                .flat_map(|(_, r)| r.rows.iter().copied())
                .collect();
            let mut parts = Vec::with_capacity(group.len());
            let mut lo = 0;
            for (_, r) in &group {
                parts.push((lo, &r.keys[..]));
                lo += r.rows.len();
            }
            match self.answer(&group[0].1, &rows, &parts) {
                Ok(batches) => {
                    for ((i, _), b) in group.iter().zip(batches) {
                        answers[*i] = Some(Ok(vec![b]));
                    }
                }
                // Each on its own, so that each gets its own error (or its answer).
                Err(_) if group.len() > 1 => {
                    for (i, r) in &group {
                        let one = self.answer(r, &r.rows, &[(0, &r.keys[..])]);
                        answers[*i] = Some(one);
                    }
                }
                Err(e) => answers[group[0].0] = Some(Err(e)),
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(ServeError::Internal("no answer".into()))))
            .collect()
    }

    /// One forward pass over `rows` (the concatenated entities of requests that share
    /// `r`'s model, options and anchor), and one record batch for each request: `parts`
    /// gives where its entities start in `rows` and their keys.
    fn answer(
        &self,
        r: &Request,
        rows: &[u32],
        parts: &[(usize, &[String])],
    ) -> Result<Vec<RecordBatch>, ServeError> {
        let served = &r.served;
        let code = &served.model.manifest.target;
        let data = self.data.read().map_err(poisoned)?;
        let features = served.features.read().map_err(poisoned)?;
        let inputs = Inputs {
            view: data.graph.as_ref(),
            features: &*features,
            endpoints: &served.endpoints,
        };
        let anchors = vec![r.anchor; rows.len()];
        let output = match &served.ranking {
            None => served
                .model
                .infer_on(inputs, rows, &anchors, None, Some(&r.fanouts))?,
            Some(ranking) => recommend(
                &served.model,
                ranking,
                &data.graph,
                inputs,
                rows,
                r.anchor,
                &r.fanouts,
                r.k,
                r.exclude_seen,
            )?,
        };
        let outputs = match parts {
            [_] => vec![output],
            _ => parts
                .iter()
                .map(|&(lo, keys)| output.slice(lo, lo + keys.len()))
                .collect(),
        };
        let mut batches = Vec::with_capacity(parts.len());
        for (&(lo, keys), output) in parts.iter().zip(&outputs) {
            let hi = lo + keys.len();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut batch = to_batch(&served.key_name, &keys, r.anchor, output, code)
                .map_err(|e| ServeError::Internal(e.to_string()))?;
            if r.explain {
                let describer =
                    Describer::new(&data.db, &served.model).with_appended(&data.appended);
                let texts = rows[lo..hi]
                    .iter()
                    .map(|&row| {
                        let e = served.model.explain_with(
                            inputs,
                            row,
                            r.anchor,
                            Method::Gradient,
                            Some(&r.fanouts),
                        )?;
                        Ok((describer.top_columns(&e, 5), describer.top_rows(&e, 3)))
                    })
                    .collect::<Result<Vec<_>, ServeError>>()?;
                batch = add_explanations(batch, &keys, &texts)
                    .map_err(|e| ServeError::Internal(e.to_string()))?;
            }
            batches.push(batch);
        }
        Ok(batches)
    }
}

/// A checked request: the model version it runs on, its options, and its entities.
struct Request {
    served: Arc<Served>,
    fanouts: Vec<u32>,
    k: usize,
    anchor: i64,
    exclude_seen: bool,
    explain: bool,
    rows: Vec<u32>,
    keys: Vec<String>,
}

impl Request {
    /// Whether `other` can share this request's forward pass.
    fn joins(&self, other: &Request) -> bool {
        Arc::ptr_eq(&self.served, &other.served)
            && self.fanouts == other.fanouts
            && self.k == other.k
            && self.anchor == other.anchor
            && self.exclude_seen == other.exclude_seen
            && !self.explain
            && !other.explain
    }
}

fn parse_anchor(a: &serde_json::Value) -> Result<i64, ServeError> {
    match a {
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| invalid(format!("anchor {n}: want whole seconds"))),
        serde_json::Value::String(s) => time::parse_timestamp(s).ok_or_else(|| {
            invalid(format!(
                "anchor `{s}` is not a timestamp (YYYY-MM-DD[ HH:MM:SS])"
            ))
        }),
        other => Err(invalid(format!(
            "anchor {other}: want seconds or a timestamp"
        ))),
    }
}
