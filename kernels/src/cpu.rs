//! The CPU backend: `gemm` for matrix products, rayon over rows for everything else.
//! Every reduction runs in a fixed order (per output row, or over fixed blocks of rows
//! summed in sequence), so results are bit-identical whatever the thread count; only
//! `gemm`'s internal blocking may depend on it.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::backend::{
    Activation, AdamConfig, Backend, Index, Loss, Reduce, Tensor, product_shape, size_class,
};
use crate::real::Real;

/// The CPU backend over element type `E` (`f32` to train, `f64` as the reference).
///
/// It keeps a few large freed buffers (see [`Backend::recycle`]) and hands them out again:
/// a training step allocates the same big gradients every time, and taking fresh pages
/// from the kernel for each (zeroing them, unmapping them after) costs more than the
/// arithmetic. Clones share the pool.
#[derive(Debug, Default, Clone)]
pub struct Cpu<E> {
    pool: Arc<Mutex<Vec<Vec<E>>>>,
}

/// Buffers this large (in elements) or larger are pooled.
const POOLED: usize = 1 << 16;
/// The pool holds at most this many elements in all (4 GiB of f32): about the peak
/// working set of a step, which it then stops asking the kernel for again.
const POOL_BUDGET: usize = 1 << 30;

impl<E: Real> Cpu<E> {
    pub fn new() -> Self {
        Cpu {
            pool: Arc::default(),
        }
    }

    /// An empty buffer with room for `len`: the smallest pooled one that fits (and is
    /// not more than twice as large), else a new one with room for [`size_class`]`(len)`.
    fn reserve(&self, len: usize) -> Vec<E> {
        if len < POOLED {
            return Vec::with_capacity(len);
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let best = (0..pool.len())
            .filter(|&i| pool[i].capacity() >= len && pool[i].capacity() <= 2 * len)
            .min_by_key(|&i| pool[i].capacity());
        if let Some(i) = best {
            let mut b = pool.swap_remove(i);
            b.clear();
            return b;
        }
        drop(pool);
        Vec::with_capacity(size_class(len))
    }

    /// `items` collected into a pooled buffer.
    fn collect(&self, items: impl IndexedParallelIterator<Item = E>) -> Vec<E> {
        let mut b = self.reserve(items.len());
        b.par_extend(items);
        b
    }

    /// A zeroed buffer of `len`, from the pool when one of about that size waits there.
    fn buffer(&self, len: usize) -> Vec<E> {
        if len < POOLED {
            return vec![E::ZERO; len];
        }
        let mut b = self.reserve(len);
        // A plain fill compiles to `memset`; rayon's `repeat_n` wrote one value at a time.
        b.resize(len, E::ZERO);
        b
    }
}

/// Rows summed per block in column reductions: fixed, so the order of additions is too.
const BLOCK: usize = 256;
/// Rows handled by one parallel task in row-wise kernels.
const ROWS_PER_TASK: usize = 64;

/// `sum(a[i] * b[i])` in a fixed order that vectorises: eight interleaved partial sums,
/// then those.
fn lane_dot<E: Real>(a: &[E], b: &[E]) -> E {
    let mut lanes = [E::ZERO; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    for (k, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        lanes[k] += x * y;
    }
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
}

/// SplitMix64's finaliser: dropout masks hash (seed, position) through it.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn sigmoid<E: Real>(x: E) -> E {
    if x >= E::ZERO {
        E::ONE / (E::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (E::ONE + e)
    }
}

/// `ln(1 + e^x)` without overflow.
fn softplus<E: Real>(x: E) -> E {
    x.max(E::ZERO) + (E::ONE + (-x.abs()).exp()).ln()
}

fn tensor<E: Real>(rows: usize, cols: usize, data: Vec<E>) -> Tensor<Cpu<E>> {
    debug_assert_eq!(data.len(), rows * cols);
    Tensor { rows, cols, data }
}

fn index<E: Real>(data: Vec<u32>) -> Index<Cpu<E>> {
    Index {
        len: data.len(),
        data,
    }
}

/// Sums `f(block of rows)` (each a `cols` vector) over fixed blocks, then the blocks in order.
fn column_sums<E: Real>(
    rows: usize,
    cols: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [E]) + Sync,
) -> Vec<E> {
    let partial: Vec<Vec<E>> = (0..rows.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let mut acc = vec![E::ZERO; cols];
            f(b * BLOCK..((b + 1) * BLOCK).min(rows), &mut acc);
            acc
        })
        .collect();
    let mut total = vec![E::ZERO; cols];
    for p in partial {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// Mutable rows of a row-major buffer, in parallel (none when there are no columns).
fn par_rows<E: Send>(data: &mut [E], cols: usize) -> rayon::slice::ChunksMut<'_, E> {
    data.par_chunks_mut(cols.max(1))
}

/// [`product_shape`], checking that the buffers hold their tensors.
fn gemm_shape<E: Real>(
    a: &Tensor<Cpu<E>>,
    transpose_a: bool,
    b: &Tensor<Cpu<E>>,
    transpose_b: bool,
) -> (usize, usize, usize) {
    let shape = product_shape(a, transpose_a, b, transpose_b);
    assert!(
        a.data.len() == a.len() && b.data.len() == b.len(),
        "gemm input buffers"
    );
    shape
}

/// `dst = op(a) · op(b)` (`+=` when `accumulate`), `dst` row-major m x n, through the
/// `gemm` crate.
///
/// # Safety
/// `dst` points to m * n writable values that alias neither input, initialised when
/// `accumulate`; m, n and k are all above 0. Without `accumulate` every value is written
/// and none is read.
#[allow(unsafe_code)]
unsafe fn gemm_raw<E: Real>(
    a: &Tensor<Cpu<E>>,
    transpose_a: bool,
    b: &Tensor<Cpu<E>>,
    transpose_b: bool,
    dst: *mut E,
    accumulate: bool,
) {
    let (m, n, k) = gemm_shape(a, transpose_a, b, transpose_b);
    // Row-major strides of op(a) and op(b): (row stride, column stride).
    let (a_rs, a_cs) = if transpose_a {
        (1, a.cols)
    } else {
        (a.cols, 1)
    };
    let (b_rs, b_cs) = if transpose_b {
        (1, b.cols)
    } else {
        (b.cols, 1)
    };
    let parallelism = if m * n * k >= 1 << 18 && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the input pointers cover `a` and `b` (lengths checked in `gemm_shape`) and
    // the strides keep every access inside them: op(a) is m x k and op(b) k x n, each
    // row-major with the strides computed from its own stored shape; `dst` is the
    // caller's m x n. `E` is f32 or f64, which gemm supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.data.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            E::ONE,
            E::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

pub(crate) fn check_same(op: &str, a: (usize, usize), b: (usize, usize)) {
    assert_eq!(a, b, "{op}: shapes {a:?} and {b:?} differ");
}

fn segment(offsets: &[u32], s: usize) -> std::ops::Range<usize> {
    offsets[s] as usize..offsets[s + 1] as usize
}

impl<E: Real> Backend for Cpu<E> {
    type E = E;
    type Buf = Vec<E>;
    type Idx = Vec<u32>;

    fn name(&self) -> String {
        format!(
            "cpu ({} threads, {})",
            rayon::current_num_threads(),
            std::any::type_name::<E>()
        )
    }

    fn upload(&self, host: &[E]) -> Vec<E> {
        let mut b = self.reserve(host.len());
        b.extend_from_slice(host);
        b
    }

    fn download(&self, buf: &Vec<E>) -> Vec<E> {
        buf.clone()
    }

    fn upload_index(&self, host: &[u32]) -> Vec<u32> {
        host.to_vec()
    }

    fn download_index(&self, idx: &Vec<u32>) -> Vec<u32> {
        idx.clone()
    }

    fn zeros(&self, len: usize) -> Vec<E> {
        self.buffer(len)
    }

    fn recycle(&self, buf: Vec<E>) {
        if buf.capacity() < POOLED {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let mut held: usize = pool.iter().map(Vec::capacity).sum();
        // Over budget: drop the smallest buffers, whose fresh pages cost the least.
        while held + buf.capacity() > POOL_BUDGET {
            let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].capacity()) else {
                return;
            };
            if pool[i].capacity() >= buf.capacity() {
                return;
            }
            held -= pool.swap_remove(i).capacity();
        }
        pool.push(buf);
    }

    fn copy(&self, buf: &Vec<E>) -> Vec<E> {
        let mut b = self.reserve(buf.len());
        b.extend_from_slice(buf);
        b
    }

    fn synchronize(&self) {}

    fn gemm(
        &self,
        a: &Tensor<Self>,
        transpose_a: bool,
        b: &Tensor<Self>,
        transpose_b: bool,
        out: &mut Tensor<Self>,
        accumulate: bool,
    ) {
        let (m, n, k) = gemm_shape(a, transpose_a, b, transpose_b);
        check_same("gemm output", out.shape(), (m, n));
        assert_eq!(out.data.len(), m * n, "gemm output buffer");
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                out.data.fill(E::ZERO);
            }
            return;
        }
        // SAFETY: `out.data` holds m * n initialised values (checked above) and is
        // borrowed mutably, so it aliases neither input.
        #[allow(unsafe_code)]
        unsafe {
            gemm_raw(
                a,
                transpose_a,
                b,
                transpose_b,
                out.data.as_mut_ptr(),
                accumulate,
            )
        };
    }

    /// Writes the product straight into a fresh buffer: no zeroing pass first (it cost
    /// about a tenth of a forward pass).
    fn matmul(
        &self,
        a: &Tensor<Self>,
        transpose_a: bool,
        b: &Tensor<Self>,
        transpose_b: bool,
    ) -> Tensor<Self> {
        let (m, n, k) = gemm_shape(a, transpose_a, b, transpose_b);
        if m == 0 || n == 0 || k == 0 {
            return tensor(m, n, self.buffer(m * n));
        }
        let mut out = self.reserve(m * n);
        #[allow(unsafe_code)]
        // SAFETY: `out` has room for m * n values and is this function's own, so it
        // aliases neither input; `gemm_raw` without `accumulate` writes every one of the
        // m * n values without reading any (m, n, k > 0), so all are initialised before
        // the length is set.
        unsafe {
            gemm_raw(a, transpose_a, b, transpose_b, out.as_mut_ptr(), false);
            out.set_len(m * n);
        }
        tensor(m, n, out)
    }

    fn add_row(&self, x: &mut Tensor<Self>, row: &Tensor<Self>) {
        check_same("add_row", row.shape(), (1, x.cols));
        par_rows(&mut x.data, x.cols).for_each(|r| {
            for (v, &b) in r.iter_mut().zip(&row.data) {
                *v += b;
            }
        });
    }

    fn sum_rows(&self, x: &Tensor<Self>) -> Tensor<Self> {
        let sums = column_sums(x.rows, x.cols, |rows, acc| {
            for r in rows {
                for (a, &v) in acc.iter_mut().zip(&x.data[r * x.cols..(r + 1) * x.cols]) {
                    *a += v;
                }
            }
        });
        tensor(1, x.cols, sums)
    }

    fn axpy(&self, alpha: E, x: &Tensor<Self>, y: &mut Tensor<Self>) {
        check_same("axpy", x.shape(), y.shape());
        y.data
            .par_iter_mut()
            .zip(&x.data)
            .for_each(|(y, &x)| *y += alpha * x);
    }

    /// One pass (not a copy, then a second pass adding).
    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Tensor<Self> {
        check_same("add", a.shape(), b.shape());
        let data = self.collect(a.data.par_iter().zip(&b.data).map(|(&a, &b)| a + b));
        tensor(a.rows, a.cols, data)
    }

    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Tensor<Self> {
        check_same("mul", a.shape(), b.shape());
        let data = self.collect(a.data.par_iter().zip(&b.data).map(|(&a, &b)| a * b));
        tensor(a.rows, a.cols, data)
    }

    fn activation(&self, act: Activation, x: &Tensor<Self>) -> Tensor<Self> {
        let f = |v: E| match act {
            Activation::Relu => v.max(E::ZERO),
            Activation::Gelu => {
                let u = E::of(GELU_C) * (v + E::of(GELU_A) * v * v * v);
                E::of(0.5) * v * (E::ONE + u.tanh())
            }
        };
        tensor(
            x.rows,
            x.cols,
            self.collect(x.data.par_iter().map(|&v| f(v))),
        )
    }

    fn activation_backward(
        &self,
        act: Activation,
        x: &Tensor<Self>,
        dy: &Tensor<Self>,
    ) -> Tensor<Self> {
        check_same("activation backward", x.shape(), dy.shape());
        let f = |v: E, g: E| match act {
            Activation::Relu => {
                if v > E::ZERO {
                    g
                } else {
                    E::ZERO
                }
            }
            Activation::Gelu => {
                let c = E::of(GELU_C);
                let a = E::of(GELU_A);
                let t = (c * (v + a * v * v * v)).tanh();
                let du = c * (E::ONE + E::of(3.0) * a * v * v);
                g * (E::of(0.5) * (E::ONE + t) + E::of(0.5) * v * (E::ONE - t * t) * du)
            }
        };
        let data = self.collect(x.data.par_iter().zip(&dy.data).map(|(&v, &g)| f(v, g)));
        tensor(x.rows, x.cols, data)
    }

    fn layer_norm(
        &self,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        beta: &Tensor<Self>,
        eps: f64,
    ) -> (Tensor<Self>, Tensor<Self>) {
        check_same("layer_norm gamma", gamma.shape(), (1, x.cols));
        check_same("layer_norm beta", beta.shape(), (1, x.cols));
        let cols = x.cols.max(1);
        let mut y = self.buffer(x.len());
        let mut stats = vec![E::ZERO; x.rows * 2];
        let n = E::of(x.cols as f64);
        y.par_chunks_mut(cols * ROWS_PER_TASK)
            .zip(stats.par_chunks_mut(2 * ROWS_PER_TASK))
            .enumerate()
            .for_each(|(block, (out, st))| {
                let first = block * ROWS_PER_TASK;
                let ones = vec![E::ONE; cols];
                for (i, (o, st)) in out.chunks_mut(cols).zip(st.chunks_mut(2)).enumerate() {
                    let row = &x.data[(first + i) * cols..(first + i + 1) * cols];
                    let mean = lane_dot(row, &ones) / n;
                    for (o, &v) in o.iter_mut().zip(row) {
                        *o = v - mean;
                    }
                    let rstd = E::ONE / (lane_dot(o, o) / n + E::of(eps)).sqrt();
                    for ((o, &g), &b) in o.iter_mut().zip(&gamma.data).zip(&beta.data) {
                        *o = *o * rstd * g + b;
                    }
                    st[0] = mean;
                    st[1] = rstd;
                }
            });
        (tensor(x.rows, x.cols, y), tensor(x.rows, 2, stats))
    }

    fn layer_norm_backward(
        &self,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        stats: &Tensor<Self>,
        dy: &Tensor<Self>,
    ) -> (Tensor<Self>, Tensor<Self>, Tensor<Self>) {
        check_same("layer_norm backward", x.shape(), dy.shape());
        let cols = x.cols.max(1);
        let n = E::of(x.cols as f64);
        let mut dx = self.buffer(x.len());
        dx.par_chunks_mut(cols * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(block, out)| {
                let first = block * ROWS_PER_TASK;
                let (mut xhat, mut d) = (vec![E::ZERO; cols], vec![E::ZERO; cols]);
                let ones = vec![E::ONE; cols];
                for (i, o) in out.chunks_mut(cols).enumerate() {
                    let r = first + i;
                    let (mean, rstd) = (stats.data[2 * r], stats.data[2 * r + 1]);
                    let row = &x.data[r * cols..(r + 1) * cols];
                    let g = &dy.data[r * cols..(r + 1) * cols];
                    for (((h, d), &v), (&g, &w)) in xhat
                        .iter_mut()
                        .zip(&mut d)
                        .zip(row)
                        .zip(g.iter().zip(&gamma.data))
                    {
                        *h = (v - mean) * rstd;
                        *d = g * w;
                    }
                    let mean_d = lane_dot(&d, &ones) / n;
                    let mean_dx = lane_dot(&d, &xhat) / n;
                    for ((o, &d), &h) in o.iter_mut().zip(&d).zip(&xhat) {
                        *o = rstd * (d - mean_d - h * mean_dx);
                    }
                }
            });
        let dgamma = column_sums(x.rows, cols, |rows, acc| {
            for r in rows {
                let (mean, rstd) = (stats.data[2 * r], stats.data[2 * r + 1]);
                let row = &x.data[r * cols..(r + 1) * cols];
                let g = &dy.data[r * cols..(r + 1) * cols];
                for ((a, &g), &v) in acc.iter_mut().zip(g).zip(row) {
                    *a += g * ((v - mean) * rstd);
                }
            }
        });
        let dbeta = self.sum_rows(dy);
        (tensor(x.rows, x.cols, dx), tensor(1, x.cols, dgamma), dbeta)
    }

    fn dropout_mask(&self, rows: usize, cols: usize, p: f64, seed: u64) -> Tensor<Self> {
        assert!(
            (0.0..1.0).contains(&p),
            "dropout probability {p} is not in [0, 1)"
        );
        let keep = E::of(1.0 / (1.0 - p));
        let base = mix(seed);
        let data = self.collect((0..rows * cols).into_par_iter().map(|i| {
            let u = (mix(base ^ i as u64) >> 11) as f64 / (1u64 << 53) as f64;
            if u < p { E::ZERO } else { keep }
        }));
        tensor(rows, cols, data)
    }

    fn time_encoding(&self, t: &Tensor<Self>, dims: usize) -> Tensor<Self> {
        assert_eq!(t.cols, 1, "time_encoding: times must be n x 1");
        assert!(
            dims.is_multiple_of(2),
            "time_encoding: {dims} dims is not even"
        );
        let freqs = frequencies::<E>(dims);
        let mut out = self.buffer(t.rows * dims);
        let encode = row_encoder::<E>();
        par_rows(&mut out, dims)
            .enumerate()
            .for_each(|(r, row)| encode(t.data[r], &freqs, row));
        tensor(t.rows, dims, out)
    }

    fn time_encoding_backward(&self, t: &Tensor<Self>, dy: &Tensor<Self>) -> Tensor<Self> {
        assert_eq!(dy.rows, t.rows, "time_encoding backward: rows differ");
        let freqs = frequencies::<E>(dy.cols);
        let encode = row_encoder::<E>();
        let data = (0..t.rows)
            .into_par_iter()
            .map_init(
                || vec![E::ZERO; dy.cols],
                |enc, r| {
                    encode(t.data[r], &freqs, enc);
                    let g = &dy.data[r * dy.cols..(r + 1) * dy.cols];
                    // d sin(tw)/dt = w cos(tw), d cos(tw)/dt = -w sin(tw).
                    (g.chunks_exact(2).zip(enc.chunks_exact(2)).zip(&freqs))
                        .map(|((g, e), &w)| (g[0] * e[1] - g[1] * e[0]) * w)
                        .sum()
                },
            )
            .collect();
        tensor(t.rows, 1, data)
    }

    fn gather_rows(&self, x: &Tensor<Self>, idx: &Index<Self>) -> Tensor<Self> {
        let cols = x.cols;
        let mut out = self.buffer(idx.len * cols);
        par_rows(&mut out, cols)
            .zip(&idx.data)
            .for_each(|(row, &i)| {
                let i = i as usize;
                assert!(i < x.rows, "gather_rows: row {i} of {}", x.rows);
                row.copy_from_slice(&x.data[i * cols..(i + 1) * cols]);
            });
        tensor(idx.len, cols, out)
    }

    fn scatter_add_rows(&self, dy: &Tensor<Self>, idx: &Index<Self>, rows: usize) -> Tensor<Self> {
        assert_eq!(
            dy.rows, idx.len,
            "scatter_add_rows: {} rows, {} ids",
            dy.rows, idx.len
        );
        let (perm, offsets) = self.group_by(idx, rows);
        let (out, _) = self.gather_reduce(dy, Some(&perm), &offsets, Reduce::Sum);
        out
    }

    fn gather_reduce(
        &self,
        x: &Tensor<Self>,
        idx: Option<&Index<Self>>,
        offsets: &Index<Self>,
        reduce: Reduce,
    ) -> (Tensor<Self>, Option<Index<Self>>) {
        let (cols, segments) = (x.cols, offsets.len.saturating_sub(1));
        let offsets = &offsets.data;
        let source = |j: usize| -> usize {
            let r = idx.map_or(j, |idx| idx.data[j] as usize);
            assert!(r < x.rows, "gather_reduce: row {r} of {}", x.rows);
            r
        };
        let mut out = self.buffer(segments * cols);
        if reduce == Reduce::Max {
            let mut arg = vec![u32::MAX; segments * cols];
            par_rows(&mut out, cols)
                .zip(par_rows(&mut arg, cols))
                .enumerate()
                .for_each(|(s, (row, arg))| {
                    for j in segment(offsets, s) {
                        let r = source(j);
                        let src = &x.data[r * cols..(r + 1) * cols];
                        for c in 0..cols {
                            if arg[c] == u32::MAX || src[c] > row[c] {
                                row[c] = src[c];
                                arg[c] = r as u32;
                            }
                        }
                    }
                });
            return (tensor(segments, cols, out), Some(index(arg)));
        }
        let row_of = |j: usize| {
            let r = source(j);
            &x.data[r * cols..(r + 1) * cols]
        };
        par_rows(&mut out, cols).enumerate().for_each(|(s, row)| {
            let range = segment(offsets, s);
            let count = range.len();
            // Four rows at a time: their cache misses are independent, so they overlap.
            let mut j = range.start;
            while j + 4 <= range.end {
                let (a, b, c, d) = (row_of(j), row_of(j + 1), row_of(j + 2), row_of(j + 3));
                for ((((o, &a), &b), &c), &d) in row.iter_mut().zip(a).zip(b).zip(c).zip(d) {
                    *o += (a + b) + (c + d);
                }
                j += 4;
            }
            for j in j..range.end {
                for (o, &v) in row.iter_mut().zip(row_of(j)) {
                    *o += v;
                }
            }
            if reduce == Reduce::Mean && count > 0 {
                let inv = E::ONE / E::of(count as f64);
                row.iter_mut().for_each(|o| *o *= inv);
            }
        });
        (tensor(segments, cols, out), None)
    }

    fn gather_reduce_backward(
        &self,
        dy: &Tensor<Self>,
        x_rows: usize,
        idx: Option<&Index<Self>>,
        offsets: &Index<Self>,
        reduce: Reduce,
        argmax: Option<&Index<Self>>,
    ) -> Tensor<Self> {
        let cols = dy.cols;
        let mut dx = self.buffer(x_rows * cols);
        if reduce == Reduce::Max {
            let arg = &argmax
                .expect("gather_reduce backward: max needs its argmax")
                .data;
            for (i, (&r, &g)) in arg.iter().zip(&dy.data).enumerate() {
                if r != u32::MAX {
                    dx[r as usize * cols + i % cols] += g;
                }
            }
            return tensor(x_rows, cols, dx);
        }
        let positions = offsets.data.last().copied().unwrap_or(0) as usize;
        let segments = offsets.len.saturating_sub(1);
        // The segment of each position.
        let mut owner = vec![0u32; positions];
        for s in 0..segments {
            owner[segment(&offsets.data, s)].fill(s as u32);
        }
        // Each segment's gradient as every one of its positions receives it.
        let mut dyw = self.buffer(dy.len());
        dyw.copy_from_slice(&dy.data);
        if reduce == Reduce::Mean {
            par_rows(&mut dyw, cols).enumerate().for_each(|(s, row)| {
                let count = segment(&offsets.data, s).len();
                if count > 0 {
                    let inv = E::ONE / E::of(count as f64);
                    row.iter_mut().for_each(|v| *v *= inv);
                }
            });
        }
        let dyw = tensor(segments, cols, dyw);
        match idx {
            None => {
                assert!(
                    positions <= x_rows,
                    "gather_reduce backward: {positions} positions, {x_rows} rows"
                );
                par_rows(&mut dx, cols)
                    .take(positions)
                    .enumerate()
                    .for_each(|(j, row)| {
                        let s = owner[j] as usize;
                        row.copy_from_slice(&dyw.data[s * cols..(s + 1) * cols]);
                    });
            }
            Some(idx) => {
                // Row r sums the gradients of the positions reading it: a gather-reduce
                // over dyw, grouped by source row, in the same order as gather-then-scatter.
                let (perm, groups) = self.group_by(idx, x_rows);
                let sources = index(perm.data.iter().map(|&p| owner[p as usize]).collect());
                return self
                    .gather_reduce(&dyw, Some(&sources), &groups, Reduce::Sum)
                    .0;
            }
        }
        tensor(x_rows, cols, dx)
    }

    fn group_by(&self, idx: &Index<Self>, rows: usize) -> (Index<Self>, Index<Self>) {
        let (perm, offsets) = group_ids(&idx.data, rows);
        (index(perm), index(offsets))
    }

    fn coalesce(&self, idx: &Index<Self>, dy: &Tensor<Self>) -> (Index<Self>, Tensor<Self>) {
        assert_eq!(
            dy.rows, idx.len,
            "coalesce: {} rows, {} ids",
            dy.rows, idx.len
        );
        let (ids, local) = distinct_ids(&idx.data);
        let sums = self.scatter_add_rows(dy, &index(local), ids.len());
        (index(ids), sums)
    }

    fn loss(&self, loss: Loss, pred: &Tensor<Self>, target: &Tensor<Self>) -> (E, Tensor<Self>) {
        let (rows, cols) = pred.shape();
        if loss == Loss::SoftmaxCrossEntropy {
            check_same("softmax cross-entropy labels", target.shape(), (rows, 1));
            let inv = E::ONE / E::of(rows.max(1) as f64);
            let mut grad = self.buffer(pred.len());
            let losses: Vec<E> = par_rows(&mut grad, cols)
                .enumerate()
                .map(|(r, g)| {
                    let row = &pred.data[r * cols..(r + 1) * cols];
                    let label = target.data[r].f64() as usize;
                    assert!(
                        label < cols,
                        "softmax cross-entropy: class {label} of {cols}"
                    );
                    let max = row.iter().copied().fold(row[0], E::max);
                    let sum: E = row.iter().map(|&v| (v - max).exp()).sum();
                    for (c, o) in g.iter_mut().enumerate() {
                        let p = (row[c] - max).exp() / sum;
                        *o = (p - if c == label { E::ONE } else { E::ZERO }) * inv;
                    }
                    max + sum.ln() - row[label]
                })
                .collect();
            return (mean(&losses), tensor(rows, cols, grad));
        }
        check_same("loss", pred.shape(), target.shape());
        let inv = E::ONE / E::of(pred.len().max(1) as f64);
        let (losses, grad): (Vec<E>, Vec<E>) = pred
            .data
            .par_iter()
            .zip(&target.data)
            .map(|(&p, &t)| match loss {
                Loss::BceWithLogits => (softplus(p) - p * t, (sigmoid(p) - t) * inv),
                Loss::L1 => {
                    let d = p - t;
                    let sign = if d > E::ZERO {
                        E::ONE
                    } else if d < E::ZERO {
                        -E::ONE
                    } else {
                        E::ZERO
                    };
                    (d.abs(), sign * inv)
                }
                Loss::Huber { delta } => {
                    let (d, delta) = (p - t, E::of(delta));
                    if d.abs() <= delta {
                        (E::of(0.5) * d * d, d * inv)
                    } else {
                        let sign = if d > E::ZERO { E::ONE } else { -E::ONE };
                        (delta * (d.abs() - E::of(0.5) * delta), delta * sign * inv)
                    }
                }
                Loss::Bpr => {
                    let d = p - t;
                    (softplus(-d), -sigmoid(-d) * inv)
                }
                Loss::SoftmaxCrossEntropy => unreachable!("handled above"),
            })
            .unzip();
        (mean(&losses), tensor(rows, cols, grad))
    }

    fn adam(
        &self,
        config: &AdamConfig,
        step: u64,
        param: &mut Tensor<Self>,
        m: &mut Tensor<Self>,
        v: &mut Tensor<Self>,
        grad: &Tensor<Self>,
        rows: Option<&Index<Self>>,
    ) {
        check_same("adam moments", m.shape(), param.shape());
        check_same("adam moments", v.shape(), param.shape());
        let step = step.max(1) as i32;
        let (b1, b2) = (config.beta1, config.beta2);
        let c1 = E::of(1.0 / (1.0 - b1.powi(step)));
        let c2 = E::of(1.0 / (1.0 - b2.powi(step)));
        let (b1, b2, lr, eps, wd) = (
            E::of(b1),
            E::of(b2),
            E::of(config.lr),
            E::of(config.eps),
            E::of(config.weight_decay),
        );
        let update = |p: &mut E, m: &mut E, v: &mut E, g: E| {
            *m = b1 * *m + (E::ONE - b1) * g;
            *v = b2 * *v + (E::ONE - b2) * g * g;
            let step = (*m * c1) / ((*v * c2).sqrt() + eps);
            *p -= lr * (step + wd * *p);
        };
        match rows {
            None => {
                check_same("adam gradient", grad.shape(), param.shape());
                param
                    .data
                    .par_iter_mut()
                    .zip(m.data.par_iter_mut())
                    .zip(v.data.par_iter_mut())
                    .zip(&grad.data)
                    .for_each(|(((p, m), v), &g)| update(p, m, v, g));
            }
            Some(rows) => {
                let cols = param.cols;
                check_same("adam sparse gradient", grad.shape(), (rows.len, cols));
                for (k, &r) in rows.data.iter().enumerate() {
                    let r = r as usize;
                    assert!(r < param.rows, "adam: row {r} of {}", param.rows);
                    let span = r * cols..(r + 1) * cols;
                    for (((p, m), v), &g) in param.data[span.clone()]
                        .iter_mut()
                        .zip(&mut m.data[span.clone()])
                        .zip(&mut v.data[span])
                        .zip(&grad.data[k * cols..(k + 1) * cols])
                    {
                        update(p, m, v, g);
                    }
                }
            }
        }
    }
}

/// [`Backend::group_by`] over host ids: `(perm, offsets)`, a counting sort.
pub(crate) fn group_ids(ids: &[u32], rows: usize) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32; rows + 1];
    for &i in ids {
        assert!((i as usize) < rows, "group_by: id {i} of {rows} rows");
        offsets[i as usize + 1] += 1;
    }
    for r in 0..rows {
        offsets[r + 1] += offsets[r];
    }
    let mut cursor = offsets[..rows].to_vec();
    let mut perm = vec![0u32; ids.len()];
    for (position, &i) in ids.iter().enumerate() {
        perm[cursor[i as usize] as usize] = position as u32;
        cursor[i as usize] += 1;
    }
    (perm, offsets)
}

/// The distinct ids of `ids`, ascending, and each id's position among them.
pub(crate) fn distinct_ids(ids: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut distinct = ids.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let local = ids
        .iter()
        .map(|i| distinct.binary_search(i).unwrap_or_default() as u32)
        .collect();
    (distinct, local)
}

const GELU_C: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
const GELU_A: f64 = 0.044_715;

/// `(sin x, cos x)` to within about 1e-16 for |x| < 1e8, without branches so that loops
/// over it vectorize (the time encoding evaluates one pair per node and channel, and
/// libm's calls cost more than the rest of the encoder). `x` is reduced by the nearest
/// multiple `n` of pi/2 (pi/2 split in two parts, so `n * PIO2_HI` is exact), and the
/// remainder, within pi/4 of 0, goes through the Taylor series of sin and cos to degree
/// 15 and 16, whose next terms are below 5e-17 there; `n mod 4` picks the quadrant.
#[inline(always)]
pub(crate) fn sin_cos(x: f64) -> (f64, f64) {
    const PIO2_HI: f64 = 1.570_796_326_734_125_6;
    const PIO2_LO: f64 = 6.077_100_506_506_192e-11;
    let n = (x * std::f64::consts::FRAC_2_PI).round_ties_even();
    let r = (x - n * PIO2_HI) - n * PIO2_LO;
    let r2 = r * r;
    // 1/k! for the odd (sin) and even (cos) terms, highest degree first.
    const SIN: [f64; 8] = [
        -1.0 / 1_307_674_368_000.0,
        1.0 / 6_227_020_800.0,
        -1.0 / 39_916_800.0,
        1.0 / 362_880.0,
        -1.0 / 5_040.0,
        1.0 / 120.0,
        -1.0 / 6.0,
        1.0,
    ];
    const COS: [f64; 9] = [
        1.0 / 20_922_789_888_000.0,
        -1.0 / 87_178_291_200.0,
        1.0 / 479_001_600.0,
        -1.0 / 3_628_800.0,
        1.0 / 40_320.0,
        -1.0 / 720.0,
        1.0 / 24.0,
        -1.0 / 2.0,
        1.0,
    ];
    let s = r * SIN.iter().fold(0.0, |acc, &c| acc * r2 + c);
    let c = COS.iter().fold(0.0, |acc, &k| acc * r2 + k);
    let q = (n as i64) & 3;
    let (a, b) = if q & 1 == 1 { (c, s) } else { (s, c) };
    let sin = if q & 2 == 2 { -a } else { a };
    let cos = if (q + 1) & 2 == 2 { -b } else { b };
    (sin, cos)
}

/// One row of the time encoding: `(sin(t w_k), cos(t w_k))` pairs into `row`.
#[inline(always)]
fn encode_row<E: Real>(t: E, freqs: &[E], row: &mut [E]) {
    for (pair, &w) in row.chunks_exact_mut(2).zip(freqs) {
        let (sin, cos) = sin_cos((t * w).f64());
        pair[0] = E::of(sin);
        pair[1] = E::of(cos);
    }
}

/// [`encode_row`] compiled for AVX2 and FMA, where [`sin_cos`] vectorizes (about 3x the
/// portable build's speed).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn encode_row_avx2<E: Real>(t: E, freqs: &[E], row: &mut [E]) {
    encode_row(t, freqs, row);
}

/// The fastest [`encode_row`] this CPU runs.
fn row_encoder<E: Real>() -> fn(E, &[E], &mut [E]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        #[allow(unsafe_code)]
        return |t, freqs, row| {
            // SAFETY: this CPU has AVX2 and FMA (checked above, before this closure is
            // handed out), the only requirement of `encode_row_avx2`.
            unsafe { encode_row_avx2(t, freqs, row) }
        };
    }
    encode_row
}

fn frequencies<E: Real>(dims: usize) -> Vec<E> {
    (0..dims / 2)
        .map(|k| E::of(10_000f64.powf(-2.0 * k as f64 / dims as f64)))
        .collect()
}

/// The mean, summed in order in f64.
fn mean<E: Real>(values: &[E]) -> E {
    E::of(values.iter().map(|v| v.f64()).sum::<f64>() / values.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::sin_cos;

    #[test]
    fn sin_cos_matches_libm() {
        let mut x = -2.0e4;
        while x < 2.0e4 {
            let (s, c) = sin_cos(x);
            assert!((s - x.sin()).abs() < 1e-13, "sin {x}: {s} vs {}", x.sin());
            assert!((c - x.cos()).abs() < 1e-13, "cos {x}: {c} vs {}", x.cos());
            x += 0.137_3;
        }
        for x in [
            0.0,
            1e-300,
            std::f64::consts::FRAC_PI_4,
            std::f64::consts::PI,
            1e7,
        ] {
            let (s, c) = sin_cos(x);
            assert!(
                (s - x.sin()).abs() < 1e-9 && (c - x.cos()).abs() < 1e-9,
                "{x}"
            );
        }
    }
}
