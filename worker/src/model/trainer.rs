//! Training and inference: [`Prepared`] data (the graph and encoded columns), the
//! [`Model`] (network, parameters, and the manifest that saves it), [`train`] with
//! minibatches sampled on a loader thread while the step runs, validation each epoch,
//! early stopping and the best parameters kept, and [`Model::infer`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use rayon::iter::{IntoParallelRefIterator, ParallelIterator};
use relgraph_common::Database;
use relgraph_common::hash::combine;
use relgraph_kernels::{AdamConfig, Cpu, Device, Grads, Loss, Params, Tape, Tensor};
use relgraph_sampler::{GraphError, GraphView, HeteroGraph, SampleConfig, SampleError, Seed};
use rustc_hash::FxHashMap;

use super::batch::ModelBatch;
use super::cache::EncoderCache;
use super::checkpoint::Manifest;
use super::config::{ConfigError, RegressionLoss, TrainConfig};
use super::features::{FeatureError, FeatureSource, TableCode};
use super::metrics::{Metrics, Ranked};
use super::net::{Head, Net};
use super::parallel::{self, Collective};
use super::task::{Output, TargetCode, Targets, TaskError, evaluate};

/// The backend models serve and explain on, and train on unless a session names a device.
pub type Backend = Cpu<f32>;

/// Any backend a model trains and infers on: the CPU, or a CUDA device.
pub trait Compute: relgraph_kernels::Backend<E = f32> {}

impl<B: relgraph_kernels::Backend<E = f32>> Compute for B {}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    Feature(#[from] FeatureError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("model {path}: {problem}")]
    Checkpoint { path: String, problem: String },
    #[error("the model does not fit this data: {0}")]
    Mismatch(String),
    #[error("data-parallel training: {0}")]
    Collective(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("device: {0}")]
    Device(String),
}

/// A database ready for the model: its graph and every table's encoded columns.
pub struct Prepared {
    /// The graph this worker holds: all of it, or its part ([`GraphSplit`]).
    pub graph: Arc<HeteroGraph>,
    /// What sampling reads through: the graph itself, or a view of the whole graph.
    pub view: Arc<dyn GraphView + Send + Sync>,
    /// What batches read encoded rows from: every table's, or this worker's and the
    /// others' through it.
    pub features: Arc<dyn FeatureSource>,
    pub endpoints: Vec<(usize, usize)>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("tables", &self.graph.tables)
            .field("edges", &self.graph.num_edges())
            .finish_non_exhaustive()
    }
}

/// A data-parallel worker's part of the data: the neighbor lists and encoded rows of
/// what it owns, and views of the whole that read the rest from the workers owning it.
pub struct SplitData {
    pub graph: Arc<HeteroGraph>,
    pub view: Arc<dyn GraphView + Send + Sync>,
    pub features: Arc<dyn FeatureSource>,
}

impl std::fmt::Debug for SplitData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitData")
            .field("edges", &self.graph.num_edges())
            .finish_non_exhaustive()
    }
}

/// How a data-parallel worker keeps only its part of the graph and of the encoded rows,
/// and reads the rest from the workers holding it.
pub trait GraphSplit: Sync {
    /// This worker's part of `db`'s graph (never building the whole) and of its rows
    /// encoded by `codes`.
    fn split(&self, db: &Database, codes: &[TableCode]) -> Result<SplitData, ModelError>;
    /// The rank holding row `row` of `table`, which trains on its examples, so that their
    /// first hops are sampled where they live.
    fn owner(&self, table: usize, row: u32) -> usize;
}

/// What a forward pass reads, borrowed: a view of the graph, every table's encoded
/// rows, and each edge type's (source, destination) tables.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub view: &'a (dyn GraphView + Send + Sync),
    pub features: &'a dyn FeatureSource,
    pub endpoints: &'a [(usize, usize)],
}

impl std::fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("edge_types", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

impl From<SplitData> for Prepared {
    fn from(split: SplitData) -> Prepared {
        let SplitData {
            graph,
            view,
            features,
        } = split;
        Prepared {
            endpoints: graph.edge_types.iter().map(|e| (e.src, e.dst)).collect(),
            graph,
            view,
            features,
        }
    }
}

impl Prepared {
    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            view: self.view.as_ref(),
            features: self.features.as_ref(),
            endpoints: &self.endpoints,
        }
    }

    /// The graph of `db` and its rows encoded by `codes`: all of them, or with `split`
    /// this worker's part.
    pub fn new(
        db: &Database,
        codes: &[TableCode],
        split: Option<&dyn GraphSplit>,
    ) -> Result<Self, ModelError> {
        if let Some(split) = split {
            return Ok(split.split(db, codes)?.into());
        }
        let graph = HeteroGraph::from_database(db)?;
        let endpoints = graph.edge_types.iter().map(|e| (e.src, e.dst)).collect();
        // Each table on its own thread.
        let features = codes
            .par_iter()
            .map(|c| c.apply(db))
            .collect::<Result<Vec<_>, _>>()?;
        let graph = Arc::new(graph);
        Ok(Prepared {
            view: graph.clone(),
            graph,
            features: Arc::new(features),
            endpoints,
        })
    }
}

/// Examples of one split: entity rows, anchors, and (for evaluation) their targets.
#[derive(Clone, Debug)]
pub struct Examples {
    pub rows: Vec<u32>,
    pub anchors: Vec<i64>,
    pub targets: Targets,
    /// Counterfactual ASSUMING: whether each example was treated (empty otherwise).
    pub treated: Vec<bool>,
}

/// Integers below this are exact in f32.
const EXACT_F32: usize = 1 << 24;

/// What scoring examples gives before decoding: the network's outputs (`width` per
/// example; a treatment model's with the treatment on in `treated_raw` when it scored
/// both), or a ranking model's top items and their scores.
struct Scores {
    raw: Vec<f32>,
    treated_raw: Vec<f32>,
    ranked: Vec<Ranked>,
    scores: Vec<Vec<f64>>,
}

/// A trained (or loaded) model, its parameters in backend `B`'s memory.
#[derive(Debug)]
pub struct Model<B: Compute = Backend> {
    pub manifest: Manifest,
    pub net: Net,
    pub params: Params<B>,
    pub backend: B,
    /// Ranking: the current item table row of each item embedding (`u32::MAX` if gone).
    pub item_rows: Vec<u32>,
    /// Encoder outputs kept across small inference requests (serving sets it; see
    /// [`EncoderCache`]).
    pub encoded: Option<EncoderCache>,
}

/// Requests of at most this many entities go through the model's [`EncoderCache`]; larger
/// ones (batch scoring) would only churn it.
pub const CACHED_REQUEST: usize = 64;

/// See [`Model::rank_parts`].
#[derive(Clone, Debug)]
pub struct RankParts {
    pub channels: usize,
    /// Seeds x channels.
    pub queries: Vec<f32>,
    /// Per seed: (embedding id, exact score) of the items inside its subgraph.
    pub inside: Vec<Vec<(u32, f32)>>,
}

/// Where training is, for a progress bar.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The epoch under way (from 1) of `epochs`, and its `step` (from 1) of `steps`.
    pub epoch: usize,
    pub epochs: usize,
    pub step: usize,
    pub steps: usize,
    /// Steps taken since training began, those of a resumed run's checkpoint included:
    /// the number a checkpoint taken now would hold.
    pub total: u64,
    pub loss: f64,
    pub seeds_per_second: f64,
}

/// One epoch's record.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub val: Metrics,
    pub seconds: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainReport {
    pub epochs: usize,
    pub best_epoch: usize,
    pub steps: u64,
    pub train_seconds: f64,
    pub seeds_per_second: f64,
    pub interrupted: bool,
    pub history: Vec<EpochLog>,
}

/// Where training stands after a finished epoch, or part way through the next one
/// (`epoch_steps` > 0). Training continued from it goes on exactly as if it had not
/// stopped: an epoch's batches depend only on the seed and the epoch number, and the
/// optimiser's moments come along.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Epochs finished.
    pub epoch: usize,
    /// Steps taken of the next epoch, and the sum of their losses.
    #[serde(default)]
    pub epoch_steps: usize,
    #[serde(default)]
    pub epoch_loss: f64,
    pub steps: u64,
    pub best_epoch: usize,
    pub best_value: Option<f64>,
    pub history: Vec<EpochLog>,
    pub adam_steps: u64,
    /// Current and best parameters and the Adam moments, in parameter order.
    #[serde(skip)]
    pub params: Vec<Vec<f32>>,
    #[serde(skip)]
    pub best: Vec<Vec<f32>>,
    #[serde(skip)]
    pub moments: Vec<(Vec<f32>, Vec<f32>)>,
}

impl TrainState {
    /// The epoch this state was taken in, numbered as [`Progress::epoch`]: the one under
    /// way for a checkpoint within an epoch, the one just finished at an epoch's end.
    pub fn progress_epoch(&self) -> usize {
        self.epoch + usize::from(self.epoch_steps > 0)
    }
}

/// Called after every epoch, and every `checkpoint_every` steps within one, with the
/// state to resume from (to checkpoint it); an error stops training.
pub type OnEpoch<'a> = &'a mut dyn FnMut(&TrainState) -> Result<(), ModelError>;

/// Runs `make(j)` for `j` in `0..jobs` on a loader thread, two jobs ahead, and hands
/// each result to `consume` in order; `consume` returning `false` stops both.
fn pipeline<T: Send>(
    jobs: usize,
    make: impl Fn(usize) -> Result<T, ModelError> + Sync,
    mut consume: impl FnMut(usize, T) -> Result<bool, ModelError>,
) -> Result<(), ModelError> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel(2);
        let make = &make;
        scope.spawn(move || {
            for j in 0..jobs {
                if tx.send(make(j)).is_err() {
                    break;
                }
            }
        });
        for (j, item) in rx.into_iter().enumerate() {
            if !consume(j, item?)? {
                break;
            }
        }
        Ok(())
    })
}

/// A training batch: the forward pass's layout and what the loss compares against.
struct Step {
    batch: ModelBatch,
    target: Vec<f32>,
    cols: usize,
    /// The treatment input of a model that has one (1 treated, 0 not).
    treated: Option<Vec<f32>>,
    /// Ranking: candidate item embeddings and their table rows.
    candidates: Option<(Vec<u32>, Vec<u32>)>,
}

/// What building a batch needs from a model (borrowed apart from its parameters, so
/// the loader thread can build the next batch while the step updates them).
pub(crate) struct Loader<'a> {
    config: &'a TrainConfig,
    target: &'a TargetCode,
    item_rows: &'a [u32],
    entity: usize,
    items: Option<usize>,
    /// Neighbors per hop: training's, or fewer when serving.
    fanouts: &'a [u32],
}

impl<'a> Loader<'a> {
    fn new(manifest: &'a Manifest, net: &Net, item_rows: &'a [u32]) -> Self {
        Loader {
            config: &manifest.config,
            target: &manifest.target,
            item_rows,
            fanouts: &manifest.config.fanouts,
            entity: net.entity_table,
            items: match net.head {
                Head::Ranking { table, .. } => Some(table),
                Head::Linear { .. } => None,
            },
        }
    }

    pub(crate) fn batch(
        &self,
        data: Inputs<'_>,
        rows: &[u32],
        anchors: &[i64],
        seed: u64,
        keys: Vec<u64>,
    ) -> Result<ModelBatch, ModelError> {
        let seeds: Vec<Seed> = rows
            .iter()
            .zip(anchors)
            .map(|(&node, &anchor)| Seed {
                table: self.entity,
                node,
                anchor,
            })
            .collect();
        let config = SampleConfig {
            fanouts: self.fanouts.to_vec(),
            strategy: self.config.strategy()?,
            seed,
            keys,
            ..SampleConfig::default()
        };
        let started = Instant::now();
        let batch = ModelBatch::build(
            data.view,
            data.features,
            &seeds,
            &config,
            self.config.layers,
            self.items,
        )
        .map_err(|e| match e {
            // Another worker did not answer: the job's group is broken, as when a
            // gradient exchange fails.
            SampleError::Shard(m) => ModelError::Collective(m),
            e => e.into(),
        })?;
        metrics::counter!("relgraph_sample_requests_total").increment(1);
        metrics::counter!("relgraph_sampled_seeds_total").increment(seeds.len() as u64);
        metrics::histogram!("relgraph_sample_seconds").record(started.elapsed().as_secs_f64());
        Ok(batch)
    }

    /// A batch to score: each seed's draws keyed by its (row, anchor), so an entity's
    /// prediction is the same whatever else its request (or a concurrent one batched
    /// with it) holds.
    pub(crate) fn scoring_batch(
        &self,
        data: Inputs<'_>,
        rows: &[u32],
        anchors: &[i64],
    ) -> Result<ModelBatch, ModelError> {
        let keys = rows
            .iter()
            .zip(anchors)
            .map(|(&r, &a)| combine(u64::from(r), a as u64))
            .collect();
        let seed = combine(self.config.seed, 0x5EED);
        self.batch(data, rows, anchors, seed, keys)
    }

    fn step_inputs(
        &self,
        data: &Prepared,
        train: &Examples,
        idx: &[usize],
        seed: u64,
    ) -> Result<Step, ModelError> {
        let rows: Vec<u32> = idx.iter().map(|&i| train.rows[i]).collect();
        let anchors: Vec<i64> = idx.iter().map(|&i| train.anchors[i]).collect();
        // Draws keyed by example, so a worker holding part of a batch samples it exactly
        // as the whole batch would.
        let keys = idx.iter().map(|&i| i as u64).collect();
        let batch = self.batch(data.inputs(), &rows, &anchors, seed, keys)?;
        let code = self.target;
        let (target, cols, candidates) = match &train.targets {
            Targets::Binary(t) => (
                idx.iter().map(|&i| f32::from(u8::from(t[i]))).collect(),
                1,
                None,
            ),
            Targets::Number(t) => {
                let v: Vec<f64> = idx.iter().map(|&i| t[i]).collect();
                (code.encode_numbers(&v), 1, None)
            }
            Targets::Series(t) => {
                let v: Vec<f64> = idx.iter().flat_map(|&i| t[i].iter().copied()).collect();
                (code.encode_numbers(&v), code.outputs(), None)
            }
            Targets::Class(t) => (
                idx.iter().map(|&i| t[i].unwrap_or(0) as f32).collect(),
                1,
                None,
            ),
            Targets::Items(t) => {
                let mut rng = Pcg64Mcg::seed_from_u64(seed);
                let positives: Vec<u32> = idx
                    .iter()
                    .map(|&i| t[i][rng.random_range(0..t[i].len())])
                    .collect();
                let items = self.item_rows.len() as u32;
                let mut candidates: Vec<u32> = if items as usize <= self.config.negatives {
                    (0..items).collect()
                } else {
                    let mut c: Vec<u32> = (0..self.config.negatives)
                        .map(|_| rng.random_range(0..items))
                        .chain(positives.iter().copied())
                        .collect();
                    c.sort_unstable();
                    c.dedup();
                    c
                };
                candidates.retain(|&i| self.item_rows[i as usize] != u32::MAX);
                let target = positives
                    .iter()
                    .map(|p| candidates.binary_search(p).unwrap_or(0) as f32)
                    .collect();
                let rows = candidates
                    .iter()
                    .map(|&i| self.item_rows[i as usize])
                    .collect();
                (target, 1, Some((candidates, rows)))
            }
        };
        let treated = (!train.treated.is_empty()).then(|| {
            idx.iter()
                .map(|&i| f32::from(u8::from(train.treated[i])))
                .collect()
        });
        Ok(Step {
            batch,
            target,
            cols,
            treated,
            candidates,
        })
    }
}

impl<B: Compute> Model<B> {
    /// The same model with its parameters copied to `backend` (optimizer state stays
    /// behind: a copy serves, or trains on from fresh moments).
    pub fn to_backend<C: Compute>(&self, backend: C) -> Model<C> {
        let mut params = Params::default();
        for (name, value) in self.params.names.iter().zip(&self.params.values) {
            let host = value.to_host(&self.backend);
            params.add(
                &backend,
                name,
                Tensor::from_host(&backend, value.rows, value.cols, &host),
            );
        }
        Model {
            manifest: self.manifest.clone(),
            net: self.net.clone(),
            params,
            backend,
            item_rows: self.item_rows.clone(),
            encoded: None,
        }
    }

    /// Batches for inference, sampling `fanouts` neighbors per hop when given (else
    /// training's).
    pub(crate) fn loader<'a>(&'a self, fanouts: Option<&'a [u32]>) -> Loader<'a> {
        let mut loader = Loader::new(&self.manifest, &self.net, &self.item_rows);
        if let Some(f) = fanouts {
            loader.fanouts = f;
        }
        loader
    }

    /// The model's output for the examples (`relevant`: each example's relevant items,
    /// for the rank of the first one in a ranking).
    pub fn infer(
        &self,
        data: &Prepared,
        rows: &[u32],
        anchors: &[i64],
        relevant: Option<&[Vec<u32>]>,
    ) -> Result<Output, ModelError> {
        self.infer_on(data.inputs(), rows, anchors, relevant, None)
    }

    /// Serving's fanouts: at most `limit` per hop, never more than training's.
    pub fn serving_fanouts(&self, limit: &[u32]) -> Vec<u32> {
        self.manifest
            .config
            .fanouts
            .iter()
            .enumerate()
            .map(|(h, &f)| f.min(limit.get(h).or(limit.last()).copied().unwrap_or(f)))
            .collect()
    }

    /// [`Model::infer`] over borrowed inputs, sampling `fanouts` neighbors per hop
    /// instead of training's when given.
    ///
    /// A model with a treatment input scores each entity twice, treated and not
    /// ([`Output::Uplift`]).
    pub fn infer_on(
        &self,
        data: Inputs<'_>,
        rows: &[u32],
        anchors: &[i64],
        relevant: Option<&[Vec<u32>]>,
        fanouts: Option<&[u32]>,
    ) -> Result<Output, ModelError> {
        let batch = self.manifest.config.batch_size;
        let scored = self.score(data, rows, anchors, relevant, fanouts, None, batch)?;
        Ok(self.decode(scored, rows.len(), self.net.has_treatment()))
    }

    /// The encoder cache for a request of `entities`, if the model has one and the
    /// request is small enough to use it (see [`CACHED_REQUEST`]).
    fn cache_for(&self, entities: usize) -> Option<&EncoderCache> {
        self.encoded.as_ref().filter(|_| entities <= CACHED_REQUEST)
    }

    /// The output of `n` scored examples (`both`: scored treated and not).
    fn decode(&self, scored: Scores, n: usize, both: bool) -> Output {
        let code = &self.manifest.target;
        match code {
            TargetCode::Ranking { .. } => Output::Ranked(scored.ranked, scored.scores),
            _ if both => {
                let numbers = |raw: &[f32]| match code.decode(raw, n) {
                    Output::Probs(v) | Output::Values(v) => v,
                    _ => Vec::new(),
                };
                Output::Uplift {
                    with: numbers(&scored.treated_raw),
                    without: numbers(&scored.raw),
                }
            }
            _ => code.decode(&scored.raw, n),
        }
    }

    /// The examples scored in batches of at most `batch`, before decoding; with
    /// `observed`, a treatment model scores each example with the treatment it had (for
    /// its metrics), else both with and without it.
    #[allow(clippy::too_many_arguments)]
    fn score(
        &self,
        data: Inputs<'_>,
        rows: &[u32],
        anchors: &[i64],
        relevant: Option<&[Vec<u32>]>,
        fanouts: Option<&[u32]>,
        observed: Option<&[bool]>,
        batch: usize,
    ) -> Result<Scores, ModelError> {
        let code = &self.manifest.target;
        let both = self.net.has_treatment() && observed.is_none();
        let mut treated_raw: Vec<f32> = Vec::new();
        let items = self.item_rows.len();
        let size = match code {
            // Keep a batch's score matrix near 16 M entries.
            TargetCode::Ranking { .. } => (1 << 24) / items.max(1),
            _ => batch,
        }
        .clamp(1, batch.max(1));
        let chunks: Vec<(usize, usize)> = (0..rows.len())
            .step_by(size)
            .map(|lo| (lo, (lo + size).min(rows.len())))
            .collect();
        let mut raw: Vec<f32> = Vec::new();
        let mut ranked = Vec::new();
        let mut scores = Vec::new();
        let all: Vec<u32> = (0..items as u32).collect();
        let (live, live_rows): (Vec<u32>, Vec<u32>) = all
            .iter()
            .zip(&self.item_rows)
            .filter(|(_, r)| **r != u32::MAX)
            .map(|(&i, &r)| (i, r))
            .unzip();
        let loader = self.loader(fanouts);
        let cache = self.cache_for(rows.len());
        pipeline(
            chunks.len(),
            |j| {
                let (lo, hi) = chunks[j];
                loader.scoring_batch(data, &rows[lo..hi], &anchors[lo..hi])
            },
            |j, batch| {
                let mut tape = Tape::new(&self.backend, &self.params);
                let (seeds, out) = self
                    .net
                    .seeds_cached(&mut tape, &batch, data.endpoints, cache);
                if items == 0 {
                    let (lo, hi) = chunks[j];
                    let t: Option<Vec<f32>> = observed
                        .map(|o| o[lo..hi].iter().map(|&b| f32::from(u8::from(b))).collect());
                    let y = self.net.predict_treated(&mut tape, seeds, t.as_deref());
                    raw.extend(tape.value(y).to_host(&self.backend));
                    // Treated: the untreated output plus the treatment's effect.
                    if both && let Some(u) = self.net.effect(&mut tape, seeds) {
                        let y = tape.add(y, u);
                        treated_raw.extend(tape.value(y).to_host(&self.backend));
                    }
                    return Ok(true);
                }
                let s = self
                    .net
                    .score_items(&mut tape, (seeds, &out), &batch, &live, &live_rows);
                let matrix = tape.value(s).to_host(&self.backend);
                let (lo, hi) = chunks[j];
                let k = code.k();
                for (r, row) in matrix.chunks(live.len().max(1)).enumerate().take(hi - lo) {
                    let rel = relevant.map(|rel| rel[lo + r].as_slice()).unwrap_or(&[]);
                    let (list, top) = top_k(row, &live, k, rel);
                    ranked.push(list);
                    scores.push(top);
                }
                Ok(true)
            },
        )?;
        Ok(Scores {
            raw,
            treated_raw,
            ranked,
            scores,
        })
    }

    /// Embedding id of each live item, by item table row (ranking models).
    pub fn item_index(&self) -> FxHashMap<u32, u32> {
        self.item_rows
            .iter()
            .enumerate()
            .filter(|(_, r)| **r != u32::MAX)
            .map(|(i, &r)| (r, i as u32))
            .collect()
    }

    /// A ranking model's scores of `rows` at `anchors` in parts, for a search over all
    /// items outside the model: each seed's query vector (`queries`, seeds x C; an item
    /// scores its dot product with the item's embedding), and the exact scores of the
    /// items inside the seed's subgraph, whose pairwise term adds to that dot product.
    /// `index` is [`Model::item_index`].
    pub fn rank_parts(
        &self,
        data: Inputs<'_>,
        rows: &[u32],
        anchors: &[i64],
        fanouts: Option<&[u32]>,
        index: &FxHashMap<u32, u32>,
    ) -> Result<RankParts, ModelError> {
        let batch = self.loader(fanouts).scoring_batch(data, rows, anchors)?;
        let mut tape = Tape::new(&self.backend, &self.params);
        let cache = self.cache_for(rows.len());
        let (seeds, out) = self
            .net
            .seeds_cached(&mut tape, &batch, data.endpoints, cache);
        let q = self.net.query(&mut tape, seeds);
        let queries = tape.value(q).to_host(&self.backend);
        let mut item_rows: Vec<u32> = batch
            .items
            .iter()
            .flat_map(|m| m.keys().copied())
            .filter(|r| index.contains_key(r))
            .collect();
        item_rows.sort_unstable();
        item_rows.dedup();
        let mut inside = vec![Vec::new(); rows.len()];
        if !item_rows.is_empty() {
            let ids: Vec<u32> = item_rows.iter().map(|r| index[r]).collect();
            let s = self
                .net
                .score_items(&mut tape, (seeds, &out), &batch, &ids, &item_rows);
            let matrix = tape.value(s).to_host(&self.backend);
            for (s, (found, inside)) in batch.items.iter().zip(&mut inside).enumerate() {
                for r in found.keys() {
                    if let Ok(c) = item_rows.binary_search(r) {
                        inside.push((ids[c], matrix[s * ids.len() + c]));
                    }
                }
                inside.sort_unstable_by_key(|&(i, _)| i);
            }
        }
        Ok(RankParts {
            channels: self.net.channels,
            queries,
            inside,
        })
    }

    /// The task's metrics on `examples`.
    pub fn evaluate(&self, data: &Prepared, examples: &Examples) -> Result<Metrics, ModelError> {
        let all: Vec<usize> = (0..examples.rows.len()).collect();
        let batch = self.manifest.config.batch_size;
        let scored = self.score_examples(data, examples, &all, batch)?;
        let output = self.decode(scored, all.len(), false);
        Ok(evaluate(&self.manifest.target, &output, &examples.targets))
    }

    /// Examples `picks` of `examples` scored for their metrics, in batches of at most
    /// `batch`: a ranking model's with their relevant items, a treatment model's with the
    /// treatment each had.
    fn score_examples(
        &self,
        data: &Prepared,
        examples: &Examples,
        picks: &[usize],
        batch: usize,
    ) -> Result<Scores, ModelError> {
        let rows: Vec<u32> = picks.iter().map(|&i| examples.rows[i]).collect();
        let anchors: Vec<i64> = picks.iter().map(|&i| examples.anchors[i]).collect();
        let relevant: Option<Vec<Vec<u32>>> = match &examples.targets {
            Targets::Items(t) => Some(picks.iter().map(|&i| t[i].clone()).collect()),
            _ => None,
        };
        let observed: Option<Vec<bool>> = self
            .net
            .has_treatment()
            .then(|| picks.iter().map(|&i| examples.treated[i]).collect());
        self.score(
            data.inputs(),
            &rows,
            &anchors,
            relevant.as_deref(),
            None,
            observed.as_deref(),
            batch,
        )
    }

    /// [`Model::evaluate`] by the workers of a group together, each calling it with the
    /// same examples: each scores the examples of the entities it holds, in batches
    /// of its share of a training batch (so scoring holds about what a training step
    /// holds), and the outputs are summed across the workers as numbers (each example's
    /// on one worker, zeros on the others), so every worker gets exactly the metrics of
    /// one worker scoring them all. A ranking model's lists travel as their item ids and
    /// the rank of the first relevant item, exact in f32 below 2^24 items; with more
    /// items, rank 0 scores them alone and the other workers get no metrics.
    pub fn evaluate_together(
        &self,
        data: &Prepared,
        examples: &Examples,
        together: &Together<'_>,
    ) -> Result<Metrics, ModelError> {
        let group = together.group;
        let (rank, size) = (group.rank(), group.size());
        let code = &self.manifest.target;
        let ranking = matches!(code, TargetCode::Ranking { .. });
        // Per example: the raw outputs, or a list's length, first relevant rank (0:
        // none) and items.
        let width = if ranking {
            code.k() + 2
        } else {
            code.outputs()
        };
        if size <= 1 || (ranking && self.item_rows.len() >= EXACT_F32) {
            return if rank == 0 {
                self.evaluate(data, examples)
            } else {
                Ok(Metrics::new())
            };
        }
        let owner = |row: u32| example_owner(together.split, self.net.entity_table, row, size);
        let mine: Vec<usize> = (0..examples.rows.len())
            .filter(|&i| owner(examples.rows[i]) == rank)
            .collect();
        let batch = self.manifest.config.batch_size.div_ceil(size);
        let scored = self.score_examples(data, examples, &mine, batch)?;
        let mut sums = vec![0f32; examples.rows.len() * width];
        for (k, &i) in mine.iter().enumerate() {
            let out = &mut sums[i * width..(i + 1) * width];
            if ranking {
                let list = &scored.ranked[k];
                out[0] = list.top.len() as f32;
                out[1] = list.first_relevant.map_or(0.0, |r| r as f32);
                for (o, &item) in out[2..].iter_mut().zip(&list.top) {
                    *o = item as f32;
                }
            } else {
                out.copy_from_slice(&scored.raw[k * width..(k + 1) * width]);
            }
        }
        group.all_reduce(&mut sums)?;
        let n = examples.rows.len();
        let output = if ranking {
            let lists = sums
                .chunks(width)
                .map(|e| Ranked {
                    top: e[2..2 + e[0] as usize].iter().map(|&v| v as u32).collect(),
                    first_relevant: (e[1] > 0.0).then_some(e[1] as usize),
                })
                .collect();
            Output::Ranked(lists, vec![Vec::new(); n])
        } else {
            code.decode(&sums, n)
        };
        Ok(evaluate(code, &output, &examples.targets))
    }

    fn snapshot(&self) -> Vec<Vec<f32>> {
        self.params
            .values
            .iter()
            .map(|t| t.to_host(&self.backend))
            .collect()
    }

    fn restore(&mut self, snapshot: &[Vec<f32>]) {
        for (t, v) in self.params.values.iter_mut().zip(snapshot) {
            *t = Tensor::from_host(&self.backend, t.rows, t.cols, v);
        }
    }
}

/// The state training resumes from: `epoch` epochs done, and `(steps, summed loss)` of
/// the next one.
fn resume_point<B: Compute>(
    (params, backend): (&Params<B>, &B),
    report: &TrainReport,
    best: &Option<(f64, Vec<Vec<f32>>)>,
    epoch: usize,
    (epoch_steps, epoch_loss): (usize, f64),
) -> TrainState {
    let (adam_steps, moments) = params.optimizer_state(backend);
    TrainState {
        epoch,
        epoch_steps,
        epoch_loss,
        steps: report.steps,
        best_epoch: report.best_epoch,
        best_value: best.as_ref().map(|b| b.0),
        history: report.history.clone(),
        adam_steps,
        params: params.values.iter().map(|t| t.to_host(backend)).collect(),
        best: best.as_ref().map(|b| b.1.clone()).unwrap_or_default(),
        moments,
    }
}

/// The gradients of a batch's mean loss, and the loss.
fn gradients<B: Compute>(
    (net, params, b): (&Net, &Params<B>, &B),
    code: &TargetCode,
    config: &TrainConfig,
    data: &Prepared,
    step: &Step,
) -> (Grads<B>, f64) {
    {
        let mut tape = Tape::new(b, params);
        let (seeds, out) = net.seeds(&mut tape, &step.batch, &data.endpoints);
        let pred = match &step.candidates {
            Some((c, rows)) => net.score_items(&mut tape, (seeds, &out), &step.batch, c, rows),
            None => net.predict_treated(&mut tape, seeds, step.treated.as_deref()),
        };
        let n = step.target.len() / step.cols;
        let target = tape.input(Tensor::from_host(b, n, step.cols, &step.target));
        let loss = match code {
            TargetCode::Binary => Loss::BceWithLogits,
            TargetCode::Regression { .. } => match config.regression_loss {
                RegressionLoss::L1 => Loss::L1,
                RegressionLoss::Huber => Loss::Huber { delta: 1.0 },
            },
            TargetCode::Forecast { .. } => Loss::L1,
            TargetCode::Multiclass { .. } | TargetCode::Ranking { .. } => Loss::SoftmaxCrossEntropy,
        };
        let l = tape.loss(loss, pred, target);
        let value = f64::from(tape.value(l).to_host(b)[0]);
        (tape.backward(l).grads, value)
    }
}

/// The top `k` of `scores` (over items `ids`) with their scores, and the rank of the best
/// relevant item.
fn top_k(scores: &[f32], ids: &[u32], k: usize, relevant: &[u32]) -> (Ranked, Vec<f64>) {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(order.len());
    let by_score = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k, by_score);
        order.truncate(k);
    }
    order.sort_by(by_score);
    let best = ids
        .iter()
        .zip(scores)
        .filter(|(i, _)| relevant.contains(i))
        .map(|(_, &s)| s)
        .fold(None, |m: Option<f32>, s| Some(m.map_or(s, |m| m.max(s))));
    let first_relevant = best.map(|b| 1 + scores.iter().filter(|&&s| s > b).count());
    (
        Ranked {
            top: order.iter().map(|&i| ids[i]).collect(),
            first_relevant,
        },
        order.iter().map(|&i| f64::from(scores[i])).collect(),
    )
}

/// A fresh model for `manifest` (its parameters initialised from the config's seed).
pub fn init(manifest: Manifest, data: &Prepared, item_rows: Vec<u32>) -> Model {
    let backend = Backend::new();
    let mut params = Params::default();
    let net = manifest.net(&backend, &mut params, data);
    Model {
        manifest,
        net,
        params,
        backend,
        item_rows,
        encoded: None,
    }
}

/// How a training run starts and what it reports.
pub struct Session<'a> {
    /// Ends training after the current step, with the best parameters so far (Ctrl-C,
    /// a cancelled job).
    pub stop: &'a AtomicBool,
    pub progress: &'a mut dyn FnMut(&Progress),
    /// Continue from this state instead of from scratch.
    pub resume: Option<TrainState>,
    pub on_epoch: OnEpoch<'a>,
    /// The other workers of a data-parallel job (None: train alone).
    pub group: Option<&'a dyn Collective>,
    /// Keep only this worker's part of the graph (None: all of it).
    pub split: Option<&'a dyn GraphSplit>,
    /// Where the training steps run (validation too); the trained model comes back to
    /// the CPU.
    pub device: Device,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("resume", &self.resume.as_ref().map(|r| r.epoch))
            .finish()
    }
}

/// How the workers of a data-parallel job score examples together: their group, and
/// their split of the graph (whose owners score their entities' examples).
#[derive(Clone, Copy)]
pub struct Together<'a> {
    pub group: &'a dyn Collective,
    pub split: Option<&'a dyn GraphSplit>,
}

impl std::fmt::Debug for Together<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Together")
            .field("rank", &self.group.rank())
            .field("size", &self.group.size())
            .finish_non_exhaustive()
    }
}

/// The rank of a group of `size` that trains on, and scores, the examples of entity row
/// `row` (of table `entity_table`): the worker holding the row in a split graph, so
/// that its first hops are sampled where they live.
pub fn example_owner(
    split: Option<&dyn GraphSplit>,
    entity_table: usize,
    row: u32,
    size: usize,
) -> usize {
    split.map_or_else(
        || parallel::owner(row, size),
        |s| s.owner(entity_table, row),
    )
}

/// Trains `model` on `train`, validating on `val` after each epoch; keeps the parameters
/// of the best validation epoch. The steps run on the session's device: on a GPU the
/// parameters go there for training and come back after.
pub fn train(
    model: &mut Model,
    data: &Prepared,
    train: &Examples,
    val: &Examples,
    session: Session<'_>,
) -> Result<TrainReport, ModelError> {
    match session.device {
        Device::Cpu => train_on(model, data, train, val, session),
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => {
            let gpu = relgraph_kernels::cuda::Cuda::open(ordinal)
                .map_err(|e| ModelError::Device(format!("cuda:{ordinal}: {e}")))?;
            let mut on_gpu = model.to_backend(gpu);
            let report = train_on(&mut on_gpu, data, train, val, session)?;
            *model = on_gpu.to_backend(Backend::new());
            Ok(report)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(ordinal) => Err(ModelError::Device(format!(
            "cuda:{ordinal}: this build has no CUDA support (build with --features cuda)"
        ))),
    }
}

fn train_on<B: Compute>(
    model: &mut Model<B>,
    data: &Prepared,
    train: &Examples,
    val: &Examples,
    session: Session<'_>,
) -> Result<TrainReport, ModelError> {
    let Session {
        stop,
        progress,
        resume,
        on_epoch,
        group,
        split,
        device: _,
    } = session;
    let (rank, size) = group.map_or((0, 1), |g| (g.rank(), g.size()));
    let config = model.manifest.config.clone();
    let adam = AdamConfig {
        lr: config.lr,
        weight_decay: config.weight_decay,
        ..AdamConfig::default()
    };
    // Ranking examples without a known item teach nothing.
    let mut usable: Vec<usize> = (0..train.rows.len())
        .filter(|&i| !matches!(&train.targets, Targets::Items(t) if t[i].is_empty()))
        .collect();
    // A treatment model learns the effect from the treated, who are often few: repeat
    // them until both arms are about equally frequent (at most 8 times). Resampling by
    // the treatment alone leaves what the model estimates, y given (x, t), as it is.
    if !train.treated.is_empty() {
        let (treated, control): (Vec<usize>, Vec<usize>) =
            usable.iter().partition(|&&i| train.treated[i]);
        if !treated.is_empty() && treated.len() < control.len() {
            let times = (control.len() / treated.len()).clamp(1, 8);
            usable = control;
            for _ in 0..times {
                usable.extend(&treated);
            }
        }
    }
    if usable.is_empty() {
        return Err(TaskError::NoTraining.into());
    }
    let started = Instant::now();
    let mut report = TrainReport {
        epochs: 0,
        best_epoch: 0,
        steps: 0,
        train_seconds: 0.0,
        seeds_per_second: 0.0,
        interrupted: false,
        history: Vec::new(),
    };
    let mut best: Option<(f64, Vec<Vec<f32>>)> = None;
    let mut first_epoch = 1;
    // Steps already taken of the first epoch, and their summed loss.
    let mut resumed_within = (0usize, 0.0f64);
    if let Some(r) = resume {
        if r.params.len() != model.params.values.len() || r.moments.len() != r.params.len() {
            return Err(ModelError::Mismatch(format!(
                "the training state holds {} parameters; the model has {}",
                r.params.len(),
                model.params.values.len()
            )));
        }
        model.restore(&r.params);
        model
            .params
            .set_optimizer_state(&model.backend, r.adam_steps, &r.moments);
        best = r.best_value.map(|v| (v, r.best));
        report.best_epoch = r.best_epoch;
        report.epochs = r.epoch;
        report.steps = r.steps;
        report.history = r.history;
        first_epoch = r.epoch + 1;
        resumed_within = (r.epoch_steps, r.epoch_loss);
        if report.epochs > 0 && report.epochs - report.best_epoch >= config.patience {
            first_epoch = usize::MAX;
        }
    }
    let mut seeds_seen = 0usize;
    let mut stepping = 0.0;
    let entity_table = model.net.entity_table;
    let owner = |row: u32| example_owner(split, entity_table, row, size);
    let together = group.map(|group| Together { group, split });
    for epoch in first_epoch..=config.epochs {
        let epoch_started = Instant::now();
        let mut order = usable.clone();
        order.shuffle(&mut Pcg64Mcg::seed_from_u64(combine(
            config.seed,
            epoch as u64,
        )));
        let steps = order
            .len()
            .div_ceil(config.batch_size)
            .min(config.max_steps_per_epoch);
        let batches: Vec<&[usize]> = order.chunks(config.batch_size).take(steps).collect();
        // This worker's part of each global batch.
        let mine: Vec<Vec<usize>> = batches
            .iter()
            .map(|b| {
                b.iter()
                    .copied()
                    .filter(|&i| size == 1 || owner(train.rows[i]) == rank)
                    .collect()
            })
            .collect();
        // A resumed epoch starts after the steps it had taken.
        let (skip, skipped_loss) = std::mem::take(&mut resumed_within);
        let (mut loss_sum, mut done) = (skipped_loss, skip);
        let seed = combine(config.seed, epoch as u64);
        {
            let Model {
                manifest,
                net,
                params,
                backend,
                item_rows,
                ..
            } = &mut *model;
            let loader = Loader::new(manifest, net, item_rows);
            // Wall time, waits for the loader included.
            let clock = Instant::now();
            pipeline(
                batches.len().saturating_sub(skip),
                |j| match mine[skip + j].is_empty() {
                    true => Ok(None),
                    false => loader
                        .step_inputs(
                            data,
                            train,
                            &mine[skip + j],
                            combine(seed, (skip + j) as u64),
                        )
                        .map(Some),
                },
                |j, inputs| {
                    let j = skip + j;
                    let computed = inputs.map(|inputs| {
                        gradients(
                            (net, params, backend),
                            &manifest.target,
                            &config,
                            data,
                            &inputs,
                        )
                    });
                    let (grads, loss) = match group {
                        Some(g) => {
                            let (grads, loss) = computed.unzip();
                            let counts = (mine[j].len(), batches[j].len());
                            let local = loss.unwrap_or(0.0);
                            parallel::reduce(g, grads, local, counts, params, backend)?
                        }
                        None => computed.ok_or_else(|| {
                            ModelError::Collective("an empty batch without a group".into())
                        })?,
                    };
                    params.step(backend, grads, &adam);
                    metrics::counter!("relgraph_training_steps_total").increment(1);
                    loss_sum += loss;
                    done += 1;
                    seeds_seen += batches[j].len();
                    report.steps += 1;
                    let every = config.checkpoint_every;
                    if every > 0 && report.steps.is_multiple_of(every as u64) && done < steps {
                        let within = (done, loss_sum);
                        on_epoch(&resume_point(
                            (params, backend),
                            &report,
                            &best,
                            epoch - 1,
                            within,
                        ))?;
                    }
                    progress(&Progress {
                        epoch,
                        epochs: config.epochs,
                        step: done,
                        steps,
                        total: report.steps,
                        loss: loss_sum / done as f64,
                        seeds_per_second: seeds_seen as f64
                            / (stepping + clock.elapsed().as_secs_f64()).max(1e-9),
                    });
                    Ok(!stop.load(Ordering::Relaxed))
                },
            )?;
            stepping += clock.elapsed().as_secs_f64();
        }
        report.epochs = epoch;
        if stop.load(Ordering::Relaxed) {
            report.interrupted = true;
            break;
        }
        // In a group, the workers validate together and every worker decides on rank
        // 0's figure (the same as its own, unless only rank 0 could score them).
        let metrics = match &together {
            Some(t) => model.evaluate_together(data, val, t)?,
            None => model.evaluate(data, val)?,
        };
        let (name, larger) = match &model.manifest.target {
            TargetCode::Binary => ("auroc".to_string(), true),
            TargetCode::Regression { .. } | TargetCode::Forecast { .. } => ("mae".into(), false),
            TargetCode::Multiclass { .. } => ("accuracy".into(), true),
            TargetCode::Ranking { k, .. } => (format!("map@{k}"), true),
        };
        let mut value = metrics.get(&name).copied().unwrap_or(f64::NAN);
        if let Some(g) = group {
            value = parallel::broadcast(g, value)?;
        }
        report.history.push(EpochLog {
            epoch,
            loss: loss_sum / done.max(1) as f64,
            val: metrics,
            seconds: epoch_started.elapsed().as_secs_f64(),
        });
        let better = match &best {
            None => true,
            Some((b, _)) => value.is_finite() && if larger { value > *b } else { value < *b },
        };
        if better {
            best = Some((value, model.snapshot()));
            report.best_epoch = epoch;
        }
        let state = resume_point(
            (&model.params, &model.backend),
            &report,
            &best,
            epoch,
            (0, 0.0),
        );
        on_epoch(&state)?;
        if epoch - report.best_epoch >= config.patience {
            break;
        }
    }
    if let Some((_, snapshot)) = &best {
        model.restore(snapshot);
    }
    report.train_seconds = started.elapsed().as_secs_f64();
    report.seeds_per_second = seeds_seen as f64 / stepping.max(1e-9);
    Ok(report)
}
