//! [`Net`]: the relational GNN of ARCHITECTURE.md §5 as calls on a [`Tape`].
//!
//! Per table: the encoded columns (a linear map of the dense block plus the sums and
//! means of embedding rows) go through residual MLP blocks (`h + W2 relu(W1 LN(h))`)
//! and a LayerNorm; each node then adds its age at the anchor (sinusoidal in days
//! through a linear map, plus a linear term in years). Each heterogeneous SAGE layer
//! sums, per table, the root transform and one transform per incoming edge type of
//! the aggregated neighbors, then LayerNorm and ReLU. Heads read the seeds.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use relgraph_kernels::{Backend, Index, ParamId, Params, Real, Reduce, Tape, Tensor, Var};
use rustc_hash::FxHashMap;

use super::batch::{ModelBatch, TableBatch};
use super::cache::EncoderCache;
use super::config::{Aggregation, TrainConfig};
use super::features::{ColumnCode, EncoderInput, TIMESTAMP_WIDTH, TableCode};

#[derive(Clone, Copy, Debug)]
struct Linear {
    w: ParamId,
    b: Option<ParamId>,
}

#[derive(Clone, Copy, Debug)]
struct Norm {
    gamma: ParamId,
    beta: ParamId,
}

#[derive(Clone, Copy, Debug)]
struct Block {
    norm: Norm,
    first: Linear,
    second: Linear,
}

#[derive(Clone, Debug)]
struct Encoder {
    embedding: Option<ParamId>,
    dense: Linear,
    blocks: Vec<Block>,
    norm: Norm,
    time: Linear,
    age: Linear,
}

#[derive(Clone, Debug)]
struct Layer {
    root: Vec<Linear>,
    edges: Vec<Linear>,
    norm: Vec<Norm>,
}

/// The task's output layer.
#[derive(Clone, Copy, Debug)]
pub enum Head {
    /// `outputs` numbers per seed: a logit, a value, class logits or forecast steps.
    /// With `treatment`, a second head adds the effect of a binary treatment input
    /// (counterfactual ASSUMING, PQL.md §7): `y = head(h) + t · effect(h)`.
    Linear { outputs: usize, treatment: bool },
    /// Two-tower scores against a shallow embedding per item, plus a pairwise score for
    /// the items inside the seed's subgraph.
    Ranking { items: usize, table: usize },
}

/// The treatment effect head: `second(relu(first(h)))`.
#[derive(Clone, Copy, Debug)]
struct Effect {
    first: Linear,
    second: Linear,
}

#[derive(Clone, Copy, Debug)]
enum HeadParams {
    Linear(Linear, Option<Effect>),
    Ranking {
        query: Linear,
        items: ParamId,
        pair: Linear,
    },
}

/// The network: parameter ids into a [`Params`] store, and the shapes they imply.
#[derive(Clone, Debug)]
pub struct Net {
    pub channels: usize,
    aggregation: Reduce,
    encoders: Vec<Encoder>,
    layers: Vec<Layer>,
    pub head: Head,
    head_params: HeadParams,
    pub entity_table: usize,
}

/// Creates parameters with PyTorch's default initialisation, from one seeded stream.
struct Init<'a, B: Backend> {
    backend: &'a B,
    params: &'a mut Params<B>,
    rng: Pcg64Mcg,
}

impl<B: Backend> Init<'_, B> {
    fn tensor(&mut self, name: String, rows: usize, cols: usize, bound: f64) -> ParamId {
        let data: Vec<B::E> = (0..rows * cols)
            .map(|_| B::E::of(self.rng.random_range(-bound..=bound)))
            .collect();
        let t = Tensor::from_host(self.backend, rows, cols, &data);
        self.params.add(self.backend, &name, t)
    }

    fn constant(&mut self, name: String, cols: usize, value: f64) -> ParamId {
        let t = Tensor::from_host(self.backend, 1, cols, &vec![B::E::of(value); cols]);
        self.params.add(self.backend, &name, t)
    }

    fn linear(&mut self, name: &str, inputs: usize, outputs: usize, bias: bool) -> Linear {
        let bound = 1.0 / (inputs.max(1) as f64).sqrt();
        Linear {
            w: self.tensor(format!("{name}.weight"), inputs, outputs, bound),
            b: bias.then(|| self.tensor(format!("{name}.bias"), 1, outputs, bound)),
        }
    }

    fn norm(&mut self, name: &str, cols: usize) -> Norm {
        Norm {
            gamma: self.constant(format!("{name}.gamma"), cols, 1.0),
            beta: self.constant(format!("{name}.beta"), cols, 0.0),
        }
    }
}

/// A table's column sum split into its terms ([`Net::column_parts`]), each `rows x C`.
#[derive(Clone, Debug)]
pub struct ColumnParts {
    /// The bias and the constant column.
    pub base: Vec<f32>,
    /// One per encoded column, in the order of the table code's columns.
    pub columns: Vec<Vec<f32>>,
}

/// Each table's edge types, as the graph names them: (source table, destination table).
pub type Endpoints = [(usize, usize)];

impl Net {
    /// A freshly initialised network; `names` are the tables' and edge types' names
    /// (for parameter names).
    #[allow(clippy::too_many_arguments)]
    pub fn new<B: Backend>(
        backend: &B,
        params: &mut Params<B>,
        codes: &[TableCode],
        edge_names: &[String],
        endpoints: &Endpoints,
        entity_table: usize,
        head: Head,
        config: &TrainConfig,
    ) -> Net {
        let c = config.channels;
        let mut init = Init {
            backend,
            params,
            rng: Pcg64Mcg::seed_from_u64(config.seed),
        };
        let encoders = codes
            .iter()
            .map(|code| {
                let name = &code.table;
                Encoder {
                    embedding: (code.vocab > 0)
                        .then(|| init.tensor(format!("{name}.embedding"), code.vocab, c, 0.1)),
                    dense: init.linear(&format!("{name}.dense"), code.dense, c, true),
                    blocks: (0..config.encoder_blocks)
                        .map(|k| Block {
                            norm: init.norm(&format!("{name}.block{k}.norm"), c),
                            first: init.linear(&format!("{name}.block{k}.first"), c, c, true),
                            second: init.linear(&format!("{name}.block{k}.second"), c, c, true),
                        })
                        .collect(),
                    norm: init.norm(&format!("{name}.norm"), c),
                    time: init.linear(&format!("{name}.time"), c, c, true),
                    age: init.linear(&format!("{name}.age"), 1, c, false),
                }
            })
            .collect();
        let layers = (0..config.layers)
            .map(|l| Layer {
                root: codes
                    .iter()
                    .map(|code| init.linear(&format!("layer{l}.{}.root", code.table), c, c, true))
                    .collect(),
                edges: edge_names
                    .iter()
                    .map(|e| init.linear(&format!("layer{l}.{e}"), c, c, false))
                    .collect(),
                norm: codes
                    .iter()
                    .map(|code| init.norm(&format!("layer{l}.{}.norm", code.table), c))
                    .collect(),
            })
            .collect();
        let head_params = match head {
            Head::Linear { outputs, treatment } => HeadParams::Linear(
                init.linear("head", c, outputs, true),
                treatment.then(|| Effect {
                    first: init.linear("head.effect.first", c, c, true),
                    second: init.linear("head.effect.second", c, outputs, true),
                }),
            ),
            Head::Ranking { items, .. } => HeadParams::Ranking {
                query: init.linear("head.query", c, c, true),
                items: init.tensor("head.items".to_string(), items, c, 0.1),
                pair: init.linear("head.pair", c, c, false),
            },
        };
        debug_assert_eq!(endpoints.len(), edge_names.len());
        Net {
            channels: c,
            aggregation: match config.aggregation {
                Aggregation::Mean => Reduce::Mean,
                Aggregation::Sum => Reduce::Sum,
                Aggregation::Max => Reduce::Max,
            },
            encoders,
            layers,
            head,
            head_params,
            entity_table,
        }
    }

    fn linear<B: Backend>(tape: &mut Tape<B>, x: Var, l: Linear) -> Var {
        let w = tape.param(l.w);
        let b = l.b.map(|b| tape.param(b));
        tape.linear(x, w, b)
    }

    fn norm<B: Backend>(tape: &mut Tape<B>, x: Var, n: Norm) -> Var {
        let (g, b) = (tape.param(n.gamma), tape.param(n.beta));
        tape.layer_norm(x, g, b, 1e-5)
    }

    /// The sum of a table's encoded columns before the MLP blocks (rows x C): the dense
    /// block's linear map and the categorical and bag embeddings.
    fn encode_columns<B: Backend>(tape: &mut Tape<B>, e: &Encoder, input: &EncoderInput) -> Var {
        let backend = tape.backend();
        let index = |v: &[u32]| Arc::new(Index::from_host(backend, v));
        let dense: Vec<B::E> = input
            .dense
            .iter()
            .map(|&x| B::E::of(f64::from(x)))
            .collect();
        let width = dense.len() / input.rows.max(1);
        let x = tape.input(Tensor::from_host(backend, input.rows, width, &dense));
        let mut h = Self::linear(tape, x, e.dense);
        if let Some(table) = e.embedding {
            let per_row = input.ids.len() / input.rows.max(1);
            if per_row > 0 {
                let offsets: Vec<u32> = (0..=input.rows as u32)
                    .map(|r| r * per_row as u32)
                    .collect();
                let bag =
                    tape.embedding_bag(table, index(&input.ids), index(&offsets), Reduce::Sum);
                h = tape.add(h, bag);
            }
            for bag in &input.bags {
                let v =
                    tape.embedding_bag(table, index(&bag.ids), index(&bag.offsets), Reduce::Mean);
                h = tape.add(h, v);
            }
        }
        h
    }

    /// The encoder's MLP blocks and final norm over the column sum `h`.
    fn encode_rest<B: Backend>(tape: &mut Tape<B>, e: &Encoder, mut h: Var) -> Var {
        for block in &e.blocks {
            let z = Self::norm(tape, h, block.norm);
            let z = Self::linear(tape, z, block.first);
            let z = tape.relu(z);
            let z = Self::linear(tape, z, block.second);
            h = tape.add(h, z);
        }
        Self::norm(tape, h, e.norm)
    }

    /// The input embedding of every node the first layer reads, per table. With
    /// `probe`, a table's column sum is that host matrix instead of the computed one, as
    /// a watched input (returned second) whose gradient the backward pass keeps.
    ///
    /// With `cache` (and no probe), rows encoded before are taken from it, and the rest
    /// are encoded and kept there: inference only, as no gradient reaches the encoders.
    fn inputs<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        batch: &ModelBatch,
        probe: Option<&[Option<Vec<f32>>]>,
        cache: Option<&EncoderCache>,
    ) -> (Vec<Option<Var>>, Vec<Option<Var>>) {
        let backend = tape.backend();
        let mut watched = vec![None; batch.tables.len()];
        let out = batch
            .tables
            .iter()
            .zip(&self.encoders)
            .enumerate()
            .map(|(i, (t, e))| {
                if t.encoded.is_empty() {
                    return None;
                }
                let rows = match (probe.and_then(|p| p[i].as_ref()), cache) {
                    (Some(h), _) => {
                        let h: Vec<B::E> = h.iter().map(|&v| B::E::of(f64::from(v))).collect();
                        let v = tape.watched(Tensor::from_host(
                            backend,
                            t.input.rows,
                            self.channels,
                            &h,
                        ));
                        watched[i] = Some(v);
                        Self::encode_rest(tape, e, v)
                    }
                    (None, Some(cache)) => self.encode_cached(tape, (i, e), t, cache),
                    (None, None) => {
                        let sum = Self::encode_columns(tape, e, &t.input);
                        Self::encode_rest(tape, e, sum)
                    }
                };
                let x = if is_identity(&t.encoded, t.rows.len()) {
                    rows
                } else {
                    tape.gather(rows, Arc::new(Index::from_host(backend, &t.encoded)))
                };
                let days: Vec<B::E> = t.days.iter().map(|&d| B::E::of(f64::from(d))).collect();
                let years: Vec<B::E> = t
                    .days
                    .iter()
                    .map(|&d| B::E::of(f64::from(d) / 365.0))
                    .collect();
                let n = days.len();
                let days = tape.input(Tensor::from_host(backend, n, 1, &days));
                let sinusoid = tape.time_encoding(days, self.channels);
                let time = Self::linear(tape, sinusoid, e.time);
                let years = tape.input(Tensor::from_host(backend, n, 1, &years));
                let age = Self::linear(tape, years, e.age);
                let x = tape.add(x, time);
                Some(tape.add(x, age))
            })
            .collect();
        (out, watched)
    }

    /// Table `i`'s encoder output for the rows of `t`: those in `cache` from it, the
    /// others computed and added to it.
    fn encode_cached<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        (i, e): (usize, &Encoder),
        t: &TableBatch,
        cache: &EncoderCache,
    ) -> Var {
        let (backend, c) = (tape.backend(), self.channels);
        let mut host = vec![0f32; t.rows.len() * c];
        let missing = cache.fill(i, &t.rows, &mut host);
        if !missing.is_empty() {
            let part = t.input.select(&missing);
            let sum = Self::encode_columns(tape, e, &part);
            let v = Self::encode_rest(tape, e, sum);
            let values: Vec<f32> = tape
                .value(v)
                .to_host(backend)
                .iter()
                .map(|x| x.f64() as f32)
                .collect();
            let rows: Vec<u32> = missing.iter().map(|&p| t.rows[p]).collect();
            cache.insert(i, &rows, &values);
            for (k, &p) in missing.iter().enumerate() {
                host[p * c..(p + 1) * c].copy_from_slice(&values[k * c..(k + 1) * c]);
            }
        }
        let h: Vec<B::E> = host.iter().map(|&v| B::E::of(f64::from(v))).collect();
        tape.input(Tensor::from_host(backend, t.rows.len(), c, &h))
    }

    /// Each encoded column's part of table `t`'s column sum, computed on the host from
    /// the parameters for the rows of `input` (each `rows x C`, in the order of
    /// `code.columns`), and the rest of the sum (the bias and the constant column): the
    /// terms an attribution splits the encoder's input into. They add up to what
    /// [`Net::embed`] computes.
    pub fn column_parts<B: Backend>(
        &self,
        backend: &B,
        params: &Params<B>,
        t: usize,
        code: &TableCode,
        input: &EncoderInput,
    ) -> ColumnParts {
        let e = &self.encoders[t];
        let c = self.channels;
        let rows = input.rows;
        let host = |id: ParamId| -> Vec<f32> {
            params
                .get(id)
                .to_host(backend)
                .iter()
                .map(|v| v.f64() as f32)
                .collect()
        };
        let w = host(e.dense.w);
        let width = code.dense;
        let mut base = vec![0f32; rows * c];
        let bias = e.dense.b.map(host).unwrap_or_else(|| vec![0.0; c]);
        for r in 0..rows {
            let one = input.dense[r * width];
            for (j, b) in base[r * c..(r + 1) * c].iter_mut().enumerate() {
                *b = bias[j] + one * w[j];
            }
        }
        let embedding = e.embedding.map(host).unwrap_or_default();
        let row_of = |id: u32| &embedding[id as usize * c..(id as usize + 1) * c];
        let categorical = input.ids.len() / rows.max(1);
        let (mut slot, mut cat, mut bag) = (1, 0, 0);
        let mut parts = Vec::with_capacity(code.columns.len());
        for column in &code.columns {
            let mut part = vec![0f32; rows * c];
            match column {
                ColumnCode::Numerical { .. } | ColumnCode::Timestamp { .. } => {
                    let span = if matches!(column, ColumnCode::Numerical { .. }) {
                        2
                    } else {
                        TIMESTAMP_WIDTH
                    };
                    for r in 0..rows {
                        let out = &mut part[r * c..(r + 1) * c];
                        for k in slot..slot + span {
                            let x = input.dense[r * width + k];
                            if x != 0.0 {
                                for (o, &wv) in out.iter_mut().zip(&w[k * c..(k + 1) * c]) {
                                    *o += x * wv;
                                }
                            }
                        }
                    }
                    slot += span;
                }
                ColumnCode::Categorical { .. } => {
                    for r in 0..rows {
                        let id = input.ids[r * categorical + cat];
                        part[r * c..(r + 1) * c].copy_from_slice(row_of(id));
                    }
                    cat += 1;
                }
                ColumnCode::Multicategorical { .. } | ColumnCode::Text { .. } => {
                    let b = &input.bags[bag];
                    for r in 0..rows {
                        let ids = &b.ids[b.offsets[r] as usize..b.offsets[r + 1] as usize];
                        let out = &mut part[r * c..(r + 1) * c];
                        for &id in ids {
                            for (o, &v) in out.iter_mut().zip(row_of(id)) {
                                *o += v / ids.len() as f32;
                            }
                        }
                    }
                    bag += 1;
                }
            }
            parts.push(part);
        }
        ColumnParts {
            base,
            columns: parts,
        }
    }

    /// A cache for this network's encoder outputs of at most about `bytes`.
    pub fn encoder_cache(&self, bytes: usize) -> EncoderCache {
        EncoderCache::new(self.encoders.len(), self.channels, bytes)
    }

    /// The last layer's output per table (`None` where it computes no rows).
    pub fn embed<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        batch: &ModelBatch,
        endpoints: &Endpoints,
    ) -> Vec<Option<Var>> {
        self.embed_probed(tape, batch, endpoints, None, None).0
    }

    /// [`Net::embed`] with the column sums of `probe`, or the encodings of `cache` (see
    /// [`Net::inputs`]); also returns the watched column sums.
    pub fn embed_probed<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        batch: &ModelBatch,
        endpoints: &Endpoints,
        probe: Option<&[Option<Vec<f32>>]>,
        cache: Option<&EncoderCache>,
    ) -> (Vec<Option<Var>>, Vec<Option<Var>>) {
        let backend = tape.backend();
        let (mut x, watched) = self.inputs(tape, batch, probe, cache);
        for (layer, plan) in self.layers.iter().zip(&batch.layers) {
            let mut out = Vec::with_capacity(x.len());
            for (t, rows) in plan.rows.iter().enumerate() {
                let Some(input) = x[t].filter(|_| !rows.is_empty()) else {
                    out.push(None);
                    continue;
                };
                let root = if is_identity(rows, tape.value(input).rows) {
                    input
                } else {
                    tape.gather(input, Arc::new(Index::from_host(backend, rows)))
                };
                let mut h = Self::linear(tape, root, layer.root[t]);
                for (e, &(src, dst)) in endpoints.iter().enumerate() {
                    let (offsets, idx) = &plan.edges[e];
                    if src != t || idx.is_empty() {
                        continue;
                    }
                    let Some(neighbors) = x[dst] else { continue };
                    let agg = tape.gather_reduce(
                        neighbors,
                        Some(Arc::new(Index::from_host(backend, idx))),
                        Arc::new(Index::from_host(backend, offsets)),
                        self.aggregation,
                    );
                    let m = Self::linear(tape, agg, layer.edges[e]);
                    h = tape.add(h, m);
                }
                let h = Self::norm(tape, h, layer.norm[t]);
                out.push(Some(tape.relu(h)));
            }
            x = out;
        }
        (x, watched)
    }

    /// The seeds' embeddings (batch seeds x C).
    pub fn seeds<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        batch: &ModelBatch,
        endpoints: &Endpoints,
    ) -> (Var, Vec<Option<Var>>) {
        self.seeds_cached(tape, batch, endpoints, None)
    }

    /// [`Net::seeds`], the encoder outputs through `cache` when given (inference).
    pub fn seeds_cached<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        batch: &ModelBatch,
        endpoints: &Endpoints,
        cache: Option<&EncoderCache>,
    ) -> (Var, Vec<Option<Var>>) {
        let out = self.embed_probed(tape, batch, endpoints, None, cache).0;
        self.pick_seeds(tape, batch, out)
    }

    /// The seeds' rows of the last layer's output.
    pub fn pick_seeds<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        batch: &ModelBatch,
        out: Vec<Option<Var>>,
    ) -> (Var, Vec<Option<Var>>) {
        let top = out[self.entity_table].expect("the last layer computes the seeds");
        let idx = Arc::new(Index::from_host(tape.backend(), &batch.seeds));
        (tape.gather(top, idx), out)
    }

    /// The linear head's outputs (seeds x outputs); with a treatment head, those of the
    /// untreated.
    pub fn predict<B: Backend>(&self, tape: &mut Tape<B>, seeds: Var) -> Var {
        match self.head_params {
            HeadParams::Linear(l, _) => Self::linear(tape, seeds, l),
            HeadParams::Ranking { .. } => panic!("a ranking head scores items, see `score_items`"),
        }
    }

    /// Whether the head takes a treatment input.
    pub fn has_treatment(&self) -> bool {
        matches!(self.head_params, HeadParams::Linear(_, Some(_)))
    }

    /// The treatment's effect on the head's outputs (seeds x outputs), if the head has a
    /// treatment input.
    pub fn effect<B: Backend>(&self, tape: &mut Tape<B>, seeds: Var) -> Option<Var> {
        let HeadParams::Linear(_, Some(e)) = self.head_params else {
            return None;
        };
        let z = Self::linear(tape, seeds, e.first);
        let z = tape.relu(z);
        Some(Self::linear(tape, z, e.second))
    }

    /// The head's outputs for seeds with treatment `treated` (seeds x 1 of 0 and 1; the
    /// plain head when the model has no treatment input).
    pub fn predict_treated<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        seeds: Var,
        treated: Option<&[f32]>,
    ) -> Var {
        let y = self.predict(tape, seeds);
        let (Some(t), Some(u)) = (treated, self.effect(tape, seeds)) else {
            return y;
        };
        let backend = tape.backend();
        let t: Vec<B::E> = t.iter().map(|&v| B::E::of(f64::from(v))).collect();
        let t = tape.input(Tensor::from_host(backend, t.len(), 1, &t));
        let tu = tape.mul(t, u);
        tape.add(y, tu)
    }

    /// A ranking head's query vectors (seeds x C): an item's score is the dot product
    /// with its embedding (row of [`Net::item_embeddings`]), plus a pairwise term for the
    /// items inside the seed's subgraph.
    pub fn query<B: Backend>(&self, tape: &mut Tape<B>, seeds: Var) -> Var {
        let HeadParams::Ranking { query, .. } = self.head_params else {
            panic!("only a ranking head has queries");
        };
        Self::linear(tape, seeds, query)
    }

    /// A ranking head's item embeddings (items x C).
    pub fn item_embeddings<'a, B: Backend>(&self, params: &'a Params<B>) -> Option<&'a Tensor<B>> {
        match self.head_params {
            HeadParams::Ranking { items, .. } => Some(&params.values[items.0]),
            HeadParams::Linear(..) => None,
        }
    }

    /// Ranking scores of each seed against `candidates` (item embedding rows, which are
    /// the item table's rows `rows`): seeds x candidates. The items of a seed's subgraph
    /// add a pairwise score from their own embedding there, so an item the entity has
    /// already met is scored with what it did.
    pub fn score_items<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        (seeds, out): (Var, &[Option<Var>]),
        batch: &ModelBatch,
        candidates: &[u32],
        rows: &[u32],
    ) -> Var {
        let (HeadParams::Ranking { query, items, pair }, Head::Ranking { table, .. }) =
            (self.head_params, self.head)
        else {
            panic!("score_items needs a ranking head");
        };
        let backend = tape.backend();
        let q = Self::linear(tape, seeds, query);
        let e = tape.embedding(items, Arc::new(Index::from_host(backend, candidates)));
        let scores = tape.matmul(q, false, e, true);
        let n = tape.value(q).rows;
        let k = candidates.len();
        // (seed, candidate) pairs whose item lies in the seed's subgraph.
        let position: FxHashMap<u32, u32> = rows
            .iter()
            .enumerate()
            .map(|(c, &item)| (item, c as u32))
            .collect();
        let (mut seed_of, mut node_of, mut slot) = (Vec::new(), Vec::new(), Vec::new());
        for (s, inside) in batch.items.iter().enumerate().take(n) {
            for (item, &node) in inside {
                if let Some(&c) = position.get(item) {
                    seed_of.push(s as u32);
                    node_of.push(node);
                    slot.push((s * k) as u32 + c);
                }
            }
        }
        let Some(nodes) = out[table].filter(|_| !slot.is_empty()) else {
            return scores;
        };
        let p = Self::linear(tape, seeds, pair);
        let p = tape.gather(p, Arc::new(Index::from_host(backend, &seed_of)));
        let v = tape.gather(nodes, Arc::new(Index::from_host(backend, &node_of)));
        let pv = tape.mul(p, v);
        let ones = tape.input(Tensor::from_host(
            backend,
            self.channels,
            1,
            &vec![B::E::ONE; self.channels],
        ));
        let dots = tape.matmul(pv, false, ones, false);
        let slot = Index::from_host(backend, &slot);
        let spread = tape.scatter_reduce(dots, &slot, n * k, Reduce::Sum);
        let spread = tape.reshape(spread, n, k);
        tape.add(scores, spread)
    }
}

/// Whether `rows` picks every one of `n` rows in order (a gather of them would copy).
fn is_identity(rows: &[u32], n: usize) -> bool {
    rows.len() == n && rows.iter().enumerate().all(|(i, &r)| r as usize == i)
}
