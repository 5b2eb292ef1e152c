//! [`Backend`]: the kernels every number of the model goes through, and [`Tensor`], a dense
//! row-major matrix living in a backend's memory.
//!
//! The trait is shaped for a device: buffers are the backend's own (`Buf`, `Idx`), moved
//! across only by `upload` / `download`; every kernel is a launch queued on the backend's
//! stream in call order, so a device backend may return before the work is done, and
//! `synchronize` waits for it. The CPU backend runs each launch at once.

use std::fmt::Debug;

use crate::real::Real;

/// How a segment (a node's neighbors, a bag's items) is reduced to one row. An empty
/// segment gives a zero row for every reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// The tanh approximation.
    Gelu,
}

/// A loss over a batch, averaged over its rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// `pred` logits, `target` in [0, 1].
    BceWithLogits,
    /// `|pred - target|`.
    L1,
    /// Quadratic within `delta` of the target, linear beyond.
    Huber { delta: f64 },
    /// `pred` n x C logits, `target` n x 1 class indices.
    SoftmaxCrossEntropy,
    /// Bayesian personalised ranking: `pred` the positive scores, `target` the negative
    /// ones (same shape), loss `-ln sigmoid(pos - neg)`.
    Bpr,
}

/// Adam / AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (AdamW); 0 gives Adam.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// A dense `rows x cols` matrix, row-major, in backend `B`'s memory.
#[derive(Debug)]
pub struct Tensor<B: Backend> {
    pub rows: usize,
    pub cols: usize,
    pub data: B::Buf,
}

impl<B: Backend> Tensor<B> {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Uploads host values; panics unless `data.len() == rows * cols`.
    pub fn from_host(backend: &B, rows: usize, cols: usize, data: &[B::E]) -> Self {
        assert_eq!(data.len(), rows * cols, "tensor of {rows} x {cols}");
        Tensor {
            rows,
            cols,
            data: backend.upload(data),
        }
    }

    pub fn zeros(backend: &B, rows: usize, cols: usize) -> Self {
        Tensor {
            rows,
            cols,
            data: backend.zeros(rows * cols),
        }
    }

    pub fn to_host(&self, backend: &B) -> Vec<B::E> {
        backend.download(&self.data)
    }

    pub fn duplicate(&self, backend: &B) -> Self {
        Tensor {
            rows: self.rows,
            cols: self.cols,
            data: backend.copy(&self.data),
        }
    }
}

/// An index array in backend `B`'s memory (row ids, CSR offsets).
#[derive(Debug)]
pub struct Index<B: Backend> {
    pub len: usize,
    pub data: B::Idx,
}

impl<B: Backend> Index<B> {
    pub fn from_host(backend: &B, ids: &[u32]) -> Self {
        Index {
            len: ids.len(),
            data: backend.upload_index(ids),
        }
    }

    pub fn to_host(&self, backend: &B) -> Vec<u32> {
        backend.download_index(&self.data)
    }
}

/// `(m, n, k)` of `op(a) · op(b)`: op(a) is m x k, op(b) k x n. Panics when the inner
/// dimensions differ.
pub fn product_shape<B: Backend>(
    a: &Tensor<B>,
    transpose_a: bool,
    b: &Tensor<B>,
    transpose_b: bool,
) -> (usize, usize, usize) {
    let (m, k) = if transpose_a {
        (a.cols, a.rows)
    } else {
        (a.rows, a.cols)
    };
    let (k2, n) = if transpose_b {
        (b.cols, b.rows)
    } else {
        (b.rows, b.cols)
    };
    assert_eq!(k, k2, "gemm: inner dimensions {k} and {k2} differ");
    (m, n, k)
}

/// The kernels. Shapes are the callers' contract (the tape checks them); a kernel given
/// mismatched shapes or an index out of range panics with what was wrong.
pub trait Backend: Send + Sync + Sized + Debug {
    type E: Real;
    type Buf: Send + Sync + Debug;
    type Idx: Send + Sync + Debug;

    fn name(&self) -> String;
    fn upload(&self, host: &[Self::E]) -> Self::Buf;
    fn download(&self, buf: &Self::Buf) -> Vec<Self::E>;
    fn upload_index(&self, host: &[u32]) -> Self::Idx;
    fn download_index(&self, idx: &Self::Idx) -> Vec<u32>;
    fn zeros(&self, len: usize) -> Self::Buf;
    fn copy(&self, buf: &Self::Buf) -> Self::Buf;
    /// Takes back a buffer no longer needed, so a later allocation may reuse it.
    fn recycle(&self, buf: Self::Buf) {
        drop(buf);
    }
    /// Waits until every launch queued so far has finished.
    fn synchronize(&self);

    /// `out = op(a) · op(b)` (or `out += ...` when `accumulate`), `op` transposing when asked.
    fn gemm(
        &self,
        a: &Tensor<Self>,
        transpose_a: bool,
        b: &Tensor<Self>,
        transpose_b: bool,
        out: &mut Tensor<Self>,
        accumulate: bool,
    );
    /// `op(a) · op(b)` as a new tensor (a backend may skip zeroing it first).
    fn matmul(
        &self,
        a: &Tensor<Self>,
        transpose_a: bool,
        b: &Tensor<Self>,
        transpose_b: bool,
    ) -> Tensor<Self> {
        let (m, n, _) = product_shape(a, transpose_a, b, transpose_b);
        let mut out = Tensor::zeros(self, m, n);
        self.gemm(a, transpose_a, b, transpose_b, &mut out, false);
        out
    }
    /// `x[i, :] += row` for every row `i`.
    fn add_row(&self, x: &mut Tensor<Self>, row: &Tensor<Self>);
    /// The 1 x cols sum of `x`'s rows.
    fn sum_rows(&self, x: &Tensor<Self>) -> Tensor<Self>;
    /// `y += alpha * x`.
    fn axpy(&self, alpha: Self::E, x: &Tensor<Self>, y: &mut Tensor<Self>);
    /// Elementwise sum as a new tensor.
    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Tensor<Self> {
        let mut out = a.duplicate(self);
        self.axpy(Self::E::ONE, b, &mut out);
        out
    }
    /// Elementwise product.
    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Tensor<Self>;
    fn activation(&self, act: Activation, x: &Tensor<Self>) -> Tensor<Self>;
    /// `dx` from the input `x` and `dy`.
    fn activation_backward(
        &self,
        act: Activation,
        x: &Tensor<Self>,
        dy: &Tensor<Self>,
    ) -> Tensor<Self>;
    /// Per row: normalise, then `* gamma + beta` (both 1 x cols). Returns the output and
    /// the rows x 2 statistics (mean, 1 / std) the backward needs.
    fn layer_norm(
        &self,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        beta: &Tensor<Self>,
        eps: f64,
    ) -> (Tensor<Self>, Tensor<Self>);
    /// `(dx, dgamma, dbeta)`.
    fn layer_norm_backward(
        &self,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        stats: &Tensor<Self>,
        dy: &Tensor<Self>,
    ) -> (Tensor<Self>, Tensor<Self>, Tensor<Self>);
    /// A dropout mask: each entry 0 with probability `p`, else `1 / (1 - p)`; the same for
    /// the same `seed` whatever the thread count.
    fn dropout_mask(&self, rows: usize, cols: usize, p: f64, seed: u64) -> Tensor<Self>;
    /// Sinusoidal encoding of the n x 1 times `t` (in days) into n x `dims`: pairs
    /// `sin(t w_k), cos(t w_k)` with `w_k = 1 / 10000^(2k / dims)`.
    fn time_encoding(&self, t: &Tensor<Self>, dims: usize) -> Tensor<Self>;
    fn time_encoding_backward(&self, t: &Tensor<Self>, dy: &Tensor<Self>) -> Tensor<Self>;

    /// `out[i] = x[idx[i]]`.
    fn gather_rows(&self, x: &Tensor<Self>, idx: &Index<Self>) -> Tensor<Self>;
    /// `dx[r] = sum of dy[i] over i with idx[i] = r`, for `rows` rows (deterministic).
    fn scatter_add_rows(&self, dy: &Tensor<Self>, idx: &Index<Self>, rows: usize) -> Tensor<Self>;
    /// The fused gather-and-reduce of message passing: row `s` of the output reduces
    /// `x[idx[j]]` over `j` in `offsets[s]..offsets[s + 1]` (`x[j]` without `idx`), never
    /// materialising the gathered rows. For `Max` also returns, per output entry, the row
    /// of `x` it came from (`u32::MAX` for empty segments).
    fn gather_reduce(
        &self,
        x: &Tensor<Self>,
        idx: Option<&Index<Self>>,
        offsets: &Index<Self>,
        reduce: Reduce,
    ) -> (Tensor<Self>, Option<Index<Self>>);
    /// The gradient of `gather_reduce` with respect to `x` (`x_rows` rows).
    fn gather_reduce_backward(
        &self,
        dy: &Tensor<Self>,
        x_rows: usize,
        idx: Option<&Index<Self>>,
        offsets: &Index<Self>,
        reduce: Reduce,
        argmax: Option<&Index<Self>>,
    ) -> Tensor<Self>;
    /// Groups positions by target: `(perm, offsets)` with the positions `i` where
    /// `idx[i] = r` at `perm[offsets[r]..offsets[r + 1]]`, in increasing order.
    fn group_by(&self, idx: &Index<Self>, rows: usize) -> (Index<Self>, Index<Self>);
    /// Sums rows of `dy` with equal `idx`: the distinct ids (ascending) and their sums.
    fn coalesce(&self, idx: &Index<Self>, dy: &Tensor<Self>) -> (Index<Self>, Tensor<Self>);

    /// The mean loss over the batch and its gradient with respect to `pred`.
    fn loss(
        &self,
        loss: Loss,
        pred: &Tensor<Self>,
        target: &Tensor<Self>,
    ) -> (Self::E, Tensor<Self>);

    /// One Adam(W) step at `step` (from 1). With `rows`, `grad` holds the gradients of
    /// those rows of `param` only and just they (and their moments) are updated.
    #[allow(clippy::too_many_arguments)]
    fn adam(
        &self,
        config: &AdamConfig,
        step: u64,
        param: &mut Tensor<Self>,
        m: &mut Tensor<Self>,
        v: &mut Tensor<Self>,
        grad: &Tensor<Self>,
        rows: Option<&Index<Self>>,
    );
}

/// The allocation size for `len` values: at least 256, rounded up to one of the four
/// steps between consecutive powers of two (at most 25% unused). Both backends' pools
/// allocate by it, so that a buffer freed by one batch fits the next batch's slightly
/// larger request of the same tensor; the CPU's slack is address space until written.
pub(crate) fn size_class(len: usize) -> usize {
    let len = len.max(256);
    let top = usize::BITS - 1 - len.leading_zeros();
    let quarter = 1usize << (top - 2);
    len.div_ceil(quarter) * quarter
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_fit_and_waste_at_most_a_quarter() {
        for len in [0, 1, 255, 256, 257, 1000, 1 << 20, (1 << 20) + 1, 3 << 27] {
            let class = size_class(len);
            assert!(class >= len.max(256));
            assert!(class as f64 <= len.max(256) as f64 * 1.25, "{len}: {class}");
            assert_eq!(size_class(class), class, "classes are stable");
        }
    }
}
