//! [`Tape`]: a model's forward written as plain calls (`tape.linear(x, w, b)`,
//! `tape.relu(h)`, ...) that records each op with what its backward needs; `backward`
//! then walks the record in reverse, calling each op's hand-written backward kernel.
//! Deliberately small: a fixed set of ops, one enum arm per op, no general autograd.
//!
//! Parameters live in [`Params`] (with their Adam moments), borrowed by the tape, so a
//! large embedding table is never copied; an embedding op's gradient is sparse (the rows
//! it touched) and [`Params::step`] updates only those rows.

use std::sync::Arc;

use crate::backend::{Activation, AdamConfig, Backend, Index, Loss, Reduce, Tensor};
use crate::real::Real;

/// A value recorded on a tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

/// A parameter of a [`Params`] store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamId(pub usize);

/// Parameters, their names and their Adam state.
#[derive(Debug)]
pub struct Params<B: Backend> {
    pub names: Vec<String>,
    pub values: Vec<Tensor<B>>,
    moments: Vec<(Tensor<B>, Tensor<B>)>,
    step: u64,
}

impl<B: Backend> Default for Params<B> {
    fn default() -> Self {
        Params {
            names: Vec::new(),
            values: Vec::new(),
            moments: Vec::new(),
            step: 0,
        }
    }
}

/// Gradients of one backward pass: dense per parameter, or (for embedding tables) the
/// distinct rows touched and their summed gradients.
#[derive(Debug)]
pub struct Grads<B: Backend> {
    pub dense: Vec<Option<Tensor<B>>>,
    pub sparse: Vec<Option<(Index<B>, Tensor<B>)>>,
}

/// One parameter's Adam moments (first, second) on the host.
pub type Moments<E> = (Vec<E>, Vec<E>);

impl<B: Backend> Params<B> {
    pub fn add(&mut self, backend: &B, name: &str, value: Tensor<B>) -> ParamId {
        let zeros = || Tensor::zeros(backend, value.rows, value.cols);
        self.moments.push((zeros(), zeros()));
        self.names.push(name.to_string());
        self.values.push(value);
        ParamId(self.values.len() - 1)
    }

    pub fn get(&self, id: ParamId) -> &Tensor<B> {
        &self.values[id.0]
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The optimiser's state: steps taken and each parameter's Adam moments (host copies).
    pub fn optimizer_state(&self, backend: &B) -> (u64, Vec<Moments<B::E>>) {
        let moments = self
            .moments
            .iter()
            .map(|(m, v)| (m.to_host(backend), v.to_host(backend)))
            .collect();
        (self.step, moments)
    }

    /// Restores what [`Params::optimizer_state`] returned (same parameters, same shapes).
    pub fn set_optimizer_state(&mut self, backend: &B, step: u64, moments: &[Moments<B::E>]) {
        self.step = step;
        for ((m, v), (hm, hv)) in self.moments.iter_mut().zip(moments) {
            *m = Tensor::from_host(backend, m.rows, m.cols, hm);
            *v = Tensor::from_host(backend, v.rows, v.cols, hv);
        }
    }

    /// One Adam(W) step over every parameter with a gradient; sparse gradients update
    /// their rows only. The gradients' buffers go back to the backend.
    pub fn step(&mut self, backend: &B, grads: Grads<B>, config: &AdamConfig) {
        self.step += 1;
        for (i, value) in self.values.iter_mut().enumerate() {
            let (m, v) = &mut self.moments[i];
            if let Some(g) = &grads.dense[i] {
                backend.adam(config, self.step, value, m, v, g, None);
            }
            if let Some((rows, g)) = &grads.sparse[i] {
                backend.adam(config, self.step, value, m, v, g, Some(rows));
            }
        }
        grads.recycle(backend);
    }
}

#[derive(Debug)]
enum Op<B: Backend> {
    Input,
    Param(ParamId),
    Gemm {
        a: Var,
        transpose_a: bool,
        b: Var,
        transpose_b: bool,
    },
    Linear {
        x: Var,
        w: Var,
        bias: Option<Var>,
    },
    Add(Var, Var),
    Mul(Var, Var),
    Reshape(Var),
    Activation(Activation, Var),
    LayerNorm {
        x: Var,
        gamma: Var,
        beta: Var,
        stats: Tensor<B>,
    },
    Dropout {
        x: Var,
        mask: Tensor<B>,
    },
    TimeEncoding(Var),
    Gather {
        x: Var,
        idx: Arc<Index<B>>,
    },
    GatherReduce {
        x: Var,
        idx: Option<Arc<Index<B>>>,
        offsets: Arc<Index<B>>,
        reduce: Reduce,
        argmax: Option<Index<B>>,
    },
    Embedding {
        table: ParamId,
        ids: Arc<Index<B>>,
        /// Bags: row `s` reduces `ids[offsets[s]..offsets[s + 1]]`.
        bags: Option<(Arc<Index<B>>, Reduce)>,
    },
    Loss {
        pred: Var,
        target: Var,
        grad: Tensor<B>,
        bpr: bool,
    },
    WeightedSum {
        x: Var,
        weights: Tensor<B>,
    },
}

#[derive(Debug)]
struct Node<B: Backend> {
    value: Option<Tensor<B>>,
    op: Op<B>,
    needs_grad: bool,
}

/// The record of one forward pass.
#[derive(Debug)]
pub struct Tape<'a, B: Backend> {
    backend: &'a B,
    params: &'a Params<B>,
    nodes: Vec<Node<B>>,
}

fn same(op: &str, a: (usize, usize), b: (usize, usize)) {
    assert_eq!(a, b, "{op}: shapes {a:?} and {b:?} differ");
}

impl<'a, B: Backend> Tape<'a, B> {
    pub fn new(backend: &'a B, params: &'a Params<B>) -> Self {
        Tape {
            backend,
            params,
            nodes: Vec::new(),
        }
    }

    pub fn backend(&self) -> &'a B {
        self.backend
    }

    fn push(&mut self, value: Option<Tensor<B>>, op: Op<B>, inputs: &[Var]) -> Var {
        let needs_grad = match op {
            Op::Input => false,
            Op::Param(_) | Op::Embedding { .. } => true,
            _ => inputs.iter().any(|v| self.nodes[v.0].needs_grad),
        };
        self.nodes.push(Node {
            value,
            op,
            needs_grad,
        });
        Var(self.nodes.len() - 1)
    }

    /// The value of `v`.
    pub fn value(&self, v: Var) -> &Tensor<B> {
        match (&self.nodes[v.0].value, &self.nodes[v.0].op) {
            (Some(t), _) => t,
            (None, Op::Param(id)) => self.params.get(*id),
            _ => unreachable!("every node but a parameter holds its value"),
        }
    }

    /// A constant input (features, targets).
    pub fn input(&mut self, value: Tensor<B>) -> Var {
        self.push(Some(value), Op::Input, &[])
    }

    /// An input whose gradient [`Tape::backward`] returns (for tests and probes).
    pub fn watched(&mut self, value: Tensor<B>) -> Var {
        let v = self.push(Some(value), Op::Input, &[]);
        self.nodes[v.0].needs_grad = true;
        v
    }

    pub fn param(&mut self, id: ParamId) -> Var {
        self.push(None, Op::Param(id), &[])
    }

    /// `op(a) · op(b)`.
    pub fn matmul(&mut self, a: Var, transpose_a: bool, b: Var, transpose_b: bool) -> Var {
        let (ta, tb) = (self.value(a), self.value(b));
        let out = self.backend.matmul(ta, transpose_a, tb, transpose_b);
        let op = Op::Gemm {
            a,
            transpose_a,
            b,
            transpose_b,
        };
        self.push(Some(out), op, &[a, b])
    }

    /// `x · w + bias`.
    pub fn linear(&mut self, x: Var, w: Var, bias: Option<Var>) -> Var {
        let (tx, tw) = (self.value(x), self.value(w));
        let mut out = self.backend.matmul(tx, false, tw, false);
        if let Some(b) = bias {
            self.backend.add_row(&mut out, self.value(b));
        }
        let inputs: Vec<Var> = [x, w].into_iter().chain(bias).collect();
        self.push(Some(out), Op::Linear { x, w, bias }, &inputs)
    }

    pub fn add(&mut self, a: Var, b: Var) -> Var {
        let (ta, tb) = (self.value(a), self.value(b));
        same("add", ta.shape(), tb.shape());
        let out = self.backend.add(ta, tb);
        self.push(Some(out), Op::Add(a, b), &[a, b])
    }

    /// The same values, row-major, as a `rows x cols` matrix.
    pub fn reshape(&mut self, x: Var, rows: usize, cols: usize) -> Var {
        let t = self.value(x);
        assert_eq!(
            t.len(),
            rows * cols,
            "reshape of {:?} to {rows} x {cols}",
            t.shape()
        );
        let mut out = t.duplicate(self.backend);
        (out.rows, out.cols) = (rows, cols);
        self.push(Some(out), Op::Reshape(x), &[x])
    }

    pub fn mul(&mut self, a: Var, b: Var) -> Var {
        let out = self.backend.mul(self.value(a), self.value(b));
        self.push(Some(out), Op::Mul(a, b), &[a, b])
    }

    pub fn activation(&mut self, act: Activation, x: Var) -> Var {
        let out = self.backend.activation(act, self.value(x));
        self.push(Some(out), Op::Activation(act, x), &[x])
    }

    pub fn relu(&mut self, x: Var) -> Var {
        self.activation(Activation::Relu, x)
    }

    pub fn gelu(&mut self, x: Var) -> Var {
        self.activation(Activation::Gelu, x)
    }

    pub fn layer_norm(&mut self, x: Var, gamma: Var, beta: Var, eps: f64) -> Var {
        let (out, stats) =
            self.backend
                .layer_norm(self.value(x), self.value(gamma), self.value(beta), eps);
        let op = Op::LayerNorm {
            x,
            gamma,
            beta,
            stats,
        };
        self.push(Some(out), op, &[x, gamma, beta])
    }

    /// Drops each entry with probability `p` (scaling the rest by `1 / (1 - p)`).
    pub fn dropout(&mut self, x: Var, p: f64, seed: u64) -> Var {
        let t = self.value(x);
        let mask = self.backend.dropout_mask(t.rows, t.cols, p, seed);
        let out = self.backend.mul(t, &mask);
        self.push(Some(out), Op::Dropout { x, mask }, &[x])
    }

    /// Sinusoidal encoding of n x 1 times into n x `dims`.
    pub fn time_encoding(&mut self, t: Var, dims: usize) -> Var {
        let out = self.backend.time_encoding(self.value(t), dims);
        self.push(Some(out), Op::TimeEncoding(t), &[t])
    }

    pub fn gather(&mut self, x: Var, idx: Arc<Index<B>>) -> Var {
        let out = self.backend.gather_rows(self.value(x), &idx);
        self.push(Some(out), Op::Gather { x, idx }, &[x])
    }

    /// Row `s` reduces `x[idx[j]]` (or `x[j]`) over `j` in `offsets[s]..offsets[s + 1]`:
    /// neighbor aggregation (with `idx`) or segment reduce by CSR offsets (without).
    pub fn gather_reduce(
        &mut self,
        x: Var,
        idx: Option<Arc<Index<B>>>,
        offsets: Arc<Index<B>>,
        reduce: Reduce,
    ) -> Var {
        let (out, argmax) =
            self.backend
                .gather_reduce(self.value(x), idx.as_deref(), &offsets, reduce);
        let op = Op::GatherReduce {
            x,
            idx,
            offsets,
            reduce,
            argmax,
        };
        self.push(Some(out), op, &[x])
    }

    /// Reduces the rows of `x` by target: row `r` of the `rows`-row output reduces the
    /// rows `i` of `x` with `idx[i] = r`.
    pub fn scatter_reduce(&mut self, x: Var, idx: &Index<B>, rows: usize, reduce: Reduce) -> Var {
        let (perm, offsets) = self.backend.group_by(idx, rows);
        self.gather_reduce(x, Some(Arc::new(perm)), Arc::new(offsets), reduce)
    }

    /// Rows `ids` of embedding table `table`, with a sparse gradient.
    pub fn embedding(&mut self, table: ParamId, ids: Arc<Index<B>>) -> Var {
        let out = self.backend.gather_rows(self.params.get(table), &ids);
        let op = Op::Embedding {
            table,
            ids,
            bags: None,
        };
        self.push(Some(out), op, &[])
    }

    /// Embedding bags: row `s` is the sum or mean of the table rows
    /// `ids[offsets[s]..offsets[s + 1]]`, with a sparse gradient.
    pub fn embedding_bag(
        &mut self,
        table: ParamId,
        ids: Arc<Index<B>>,
        offsets: Arc<Index<B>>,
        reduce: Reduce,
    ) -> Var {
        assert!(reduce != Reduce::Max, "embedding bags are sums or means");
        let (out, _) =
            self.backend
                .gather_reduce(self.params.get(table), Some(&ids), &offsets, reduce);
        let op = Op::Embedding {
            table,
            ids,
            bags: Some((offsets, reduce)),
        };
        self.push(Some(out), op, &[])
    }

    /// The mean loss (a 1 x 1 value). Targets are constants, except BPR's negative
    /// scores, which get the opposite gradient of the positives.
    pub fn loss(&mut self, loss: Loss, pred: Var, target: Var) -> Var {
        let (value, grad) = self
            .backend
            .loss(loss, self.value(pred), self.value(target));
        let out = Tensor::from_host(self.backend, 1, 1, &[value]);
        let op = Op::Loss {
            pred,
            target,
            grad,
            bpr: loss == Loss::Bpr,
        };
        self.push(Some(out), op, &[pred, target])
    }

    /// `sum(x * weights)` as a 1 x 1 value (computed on the host).
    pub fn weighted_sum(&mut self, x: Var, weights: Tensor<B>) -> Var {
        let t = self.value(x);
        same("weighted_sum", t.shape(), weights.shape());
        let (xs, ws) = (t.to_host(self.backend), weights.to_host(self.backend));
        let total: f64 = xs.iter().zip(&ws).map(|(a, b)| a.f64() * b.f64()).sum();
        let out = Tensor::from_host(self.backend, 1, 1, &[B::E::of(total)]);
        self.push(Some(out), Op::WeightedSum { x, weights }, &[x])
    }

    /// Gradients of the 1 x 1 value `root` with respect to every parameter, and
    /// (through [`Tape::grad`]) every watched input.
    pub fn backward(&self, root: Var) -> Backward<B> {
        let b = self.backend;
        let mut grads: Vec<Option<Tensor<B>>> = (0..self.nodes.len()).map(|_| None).collect();
        let mut sparse: Vec<Vec<SparsePart<B>>> =
            (0..self.params.values.len()).map(|_| Vec::new()).collect();
        let mut dense: Vec<Option<Tensor<B>>> =
            (0..self.params.values.len()).map(|_| None).collect();
        same("backward root", self.value(root).shape(), (1, 1));
        grads[root.0] = Some(Tensor::from_host(b, 1, 1, &[B::E::ONE]));
        for i in (0..=root.0).rev() {
            let node = &self.nodes[i];
            if !node.needs_grad {
                continue;
            }
            let Some(dy) = grads[i].take() else { continue };
            // Gradients are computed only for inputs that need them.
            let wants = |v: Var| self.nodes[v.0].needs_grad;
            let mut give = |v: Var, g: Tensor<B>| {
                if wants(v) {
                    accumulate(b, &mut grads[v.0], g);
                }
            };
            // What is left of `dy` once the op's backward has read it, for reuse.
            let spent: Option<Tensor<B>> = match &node.op {
                Op::Input => {
                    grads[i] = Some(dy);
                    None
                }
                Op::Param(id) => {
                    accumulate(b, &mut dense[id.0], dy);
                    None
                }
                Op::Gemm {
                    a,
                    transpose_a,
                    b: bv,
                    transpose_b,
                } => {
                    let (ta, tb) = (self.value(*a), self.value(*bv));
                    if wants(*a) {
                        let da = if *transpose_a {
                            b.matmul(tb, *transpose_b, &dy, true)
                        } else {
                            b.matmul(&dy, false, tb, !*transpose_b)
                        };
                        give(*a, da);
                    }
                    if wants(*bv) {
                        let db = if *transpose_b {
                            b.matmul(&dy, true, ta, *transpose_a)
                        } else {
                            b.matmul(ta, !*transpose_a, &dy, false)
                        };
                        give(*bv, db);
                    }
                    Some(dy)
                }
                Op::Linear { x, w, bias } => {
                    let (tx, tw) = (self.value(*x), self.value(*w));
                    if wants(*x) {
                        give(*x, b.matmul(&dy, false, tw, true));
                    }
                    if wants(*w) {
                        give(*w, b.matmul(tx, true, &dy, false));
                    }
                    if let Some(bias) = bias.filter(|&v| wants(v)) {
                        give(bias, b.sum_rows(&dy));
                    }
                    Some(dy)
                }
                Op::Add(x, y) => {
                    give(*x, dy.duplicate(b));
                    give(*y, dy);
                    None
                }
                Op::Reshape(x) => {
                    let mut dx = dy;
                    (dx.rows, dx.cols) = self.value(*x).shape();
                    give(*x, dx);
                    None
                }
                Op::Mul(x, y) => {
                    if wants(*x) {
                        give(*x, b.mul(&dy, self.value(*y)));
                    }
                    if wants(*y) {
                        give(*y, b.mul(&dy, self.value(*x)));
                    }
                    Some(dy)
                }
                Op::Activation(act, x) => {
                    give(*x, b.activation_backward(*act, self.value(*x), &dy));
                    Some(dy)
                }
                Op::LayerNorm {
                    x,
                    gamma,
                    beta,
                    stats,
                } => {
                    let (dx, dgamma, dbeta) =
                        b.layer_norm_backward(self.value(*x), self.value(*gamma), stats, &dy);
                    give(*x, dx);
                    give(*gamma, dgamma);
                    give(*beta, dbeta);
                    Some(dy)
                }
                Op::Dropout { x, mask } => {
                    give(*x, b.mul(&dy, mask));
                    Some(dy)
                }
                Op::TimeEncoding(t) => {
                    give(*t, b.time_encoding_backward(self.value(*t), &dy));
                    Some(dy)
                }
                Op::Gather { x, idx } => {
                    give(*x, b.scatter_add_rows(&dy, idx, self.value(*x).rows));
                    Some(dy)
                }
                Op::GatherReduce {
                    x,
                    idx,
                    offsets,
                    reduce,
                    argmax,
                } => {
                    let rows = self.value(*x).rows;
                    let dx = b.gather_reduce_backward(
                        &dy,
                        rows,
                        idx.as_deref(),
                        offsets,
                        *reduce,
                        argmax.as_ref(),
                    );
                    give(*x, dx);
                    Some(dy)
                }
                Op::Embedding { table, ids, bags } => {
                    let rows = match bags {
                        None => dy,
                        Some((offsets, reduce)) => {
                            let rows = b
                                .gather_reduce_backward(&dy, ids.len, None, offsets, *reduce, None);
                            b.recycle(dy.data);
                            rows
                        }
                    };
                    sparse[table.0].push((ids.clone(), rows));
                    None
                }
                Op::Loss {
                    pred,
                    target,
                    grad,
                    bpr,
                } => {
                    let scale = dy.to_host(b)[0];
                    let mut dp = Tensor::zeros(b, grad.rows, grad.cols);
                    b.axpy(scale, grad, &mut dp);
                    if *bpr {
                        let mut dn = Tensor::zeros(b, grad.rows, grad.cols);
                        b.axpy(-scale, grad, &mut dn);
                        give(*target, dn);
                    }
                    give(*pred, dp);
                    Some(dy)
                }
                Op::WeightedSum { x, weights } => {
                    let mut dx = Tensor::zeros(b, weights.rows, weights.cols);
                    b.axpy(dy.to_host(b)[0], weights, &mut dx);
                    give(*x, dx);
                    Some(dy)
                }
            };
            if let Some(dy) = spent {
                b.recycle(dy.data);
            }
        }
        let sparse = sparse.into_iter().map(|parts| coalesce(b, parts)).collect();
        Backward {
            grads: Grads { dense, sparse },
            inputs: grads,
        }
    }
}

impl<B: Backend> Grads<B> {
    /// Hands the gradients' buffers back to the backend for reuse.
    pub fn recycle(self, backend: &B) {
        let sparse = self.sparse.into_iter().flatten().map(|(_, t)| t);
        for t in self.dense.into_iter().flatten().chain(sparse) {
            backend.recycle(t.data);
        }
    }
}

/// What [`Tape::backward`] found: parameter gradients, and those of watched inputs.
#[derive(Debug)]
pub struct Backward<B: Backend> {
    pub grads: Grads<B>,
    inputs: Vec<Option<Tensor<B>>>,
}

impl<B: Backend> Backward<B> {
    /// The gradient of a watched input (`None` if nothing reached it).
    pub fn grad(&self, v: Var) -> Option<&Tensor<B>> {
        self.inputs[v.0].as_ref()
    }
}

/// One use of an embedding table: the ids it read and the gradient of each.
type SparsePart<B> = (Arc<Index<B>>, Tensor<B>);

fn accumulate<B: Backend>(b: &B, slot: &mut Option<Tensor<B>>, g: Tensor<B>) {
    match slot {
        Some(sum) => {
            b.axpy(B::E::ONE, &g, sum);
            b.recycle(g.data);
        }
        None => *slot = Some(g),
    }
}

/// The values a tape recorded go back to the backend when it is dropped.
impl<B: Backend> Drop for Tape<'_, B> {
    fn drop(&mut self) {
        for node in self.nodes.drain(..) {
            if let Some(value) = node.value {
                self.backend.recycle(value.data);
            }
        }
    }
}

/// One sparse gradient from every use of a table: ids concatenated, rows summed per id.
fn coalesce<B: Backend>(b: &B, parts: Vec<SparsePart<B>>) -> Option<(Index<B>, Tensor<B>)> {
    match parts.len() {
        0 => None,
        1 => Some(b.coalesce(&parts[0].0, &parts[0].1)),
        _ => {
            let cols = parts[0].1.cols;
            let (mut ids, mut rows) = (Vec::new(), Vec::new());
            for (i, t) in &parts {
                ids.extend(i.to_host(b));
                rows.extend(t.to_host(b));
            }
            let n = ids.len();
            let ids = Index::from_host(b, &ids);
            Some(b.coalesce(&ids, &Tensor::from_host(b, n, cols, &rows)))
        }
    }
}
