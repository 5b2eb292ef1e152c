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

use super::batch::ModelBatch;
use super::config::{Aggregation, TrainConfig};
use super::features::{EncoderInput, TableCode};

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
    Linear { outputs: usize },
    /// Two-tower scores against a shallow embedding per item, plus a pairwise score for
    /// the items inside the seed's subgraph.
    Ranking { items: usize, table: usize },
}

#[derive(Clone, Copy, Debug)]
enum HeadParams {
    Linear(Linear),
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
            Head::Linear { outputs } => HeadParams::Linear(init.linear("head", c, outputs, true)),
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

    fn encode<B: Backend>(&self, tape: &mut Tape<B>, e: &Encoder, input: &EncoderInput) -> Var {
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
        for block in &e.blocks {
            let z = Self::norm(tape, h, block.norm);
            let z = Self::linear(tape, z, block.first);
            let z = tape.relu(z);
            let z = Self::linear(tape, z, block.second);
            h = tape.add(h, z);
        }
        Self::norm(tape, h, e.norm)
    }

    /// The input embedding of every node the first layer reads, per table.
    fn inputs<B: Backend>(&self, tape: &mut Tape<B>, batch: &ModelBatch) -> Vec<Option<Var>> {
        let backend = tape.backend();
        batch
            .tables
            .iter()
            .zip(&self.encoders)
            .map(|(t, e)| {
                if t.nodes.is_empty() {
                    return None;
                }
                let rows = self.encode(tape, e, &t.input);
                let x = tape.gather(rows, Arc::new(Index::from_host(backend, &t.nodes)));
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
            .collect()
    }

    /// The last layer's output per table (`None` where it computes no rows).
    pub fn embed<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        batch: &ModelBatch,
        endpoints: &Endpoints,
    ) -> Vec<Option<Var>> {
        let backend = tape.backend();
        let mut x = self.inputs(tape, batch);
        for (layer, plan) in self.layers.iter().zip(&batch.layers) {
            let mut out = Vec::with_capacity(x.len());
            for (t, rows) in plan.rows.iter().enumerate() {
                let Some(input) = x[t].filter(|_| !rows.is_empty()) else {
                    out.push(None);
                    continue;
                };
                let same = rows.len() == tape.value(input).rows;
                let root = if same {
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
        x
    }

    /// The seeds' embeddings (batch seeds x C).
    pub fn seeds<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        batch: &ModelBatch,
        endpoints: &Endpoints,
    ) -> (Var, Vec<Option<Var>>) {
        let out = self.embed(tape, batch, endpoints);
        let top = out[self.entity_table].expect("the last layer computes the seeds");
        let idx = Arc::new(Index::from_host(tape.backend(), &batch.seeds));
        (tape.gather(top, idx), out)
    }

    /// The linear head's outputs (seeds x outputs).
    pub fn predict<B: Backend>(&self, tape: &mut Tape<B>, seeds: Var) -> Var {
        match self.head_params {
            HeadParams::Linear(l) => Self::linear(tape, seeds, l),
            HeadParams::Ranking { .. } => panic!("a ranking head scores items, see `score_items`"),
        }
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
            HeadParams::Linear(_) => None,
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
