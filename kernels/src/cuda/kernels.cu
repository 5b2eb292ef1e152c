// relgraph's CUDA kernels, compiled by NVRTC at start (PTX cached per device
// architecture). f32, row-major, `cols` contiguous values per row.
//
// Three launch schemes, whose index arithmetic is mirrored in `src/launch.rs` and
// checked there over simulated grids:
// - grid-stride: thread t of block b visits i = b * blockDim + t, then i += gridDim *
//   blockDim, for i < n (elementwise ops, row gathers and scatters, optimizers);
// - warp per segment: warp w = (b * blockDim + t) / 32 owns segment w; lane l handles
//   columns l, l + 32, ... (CSR reductions: no atomics in the forward pass);
// - block per row: block b owns row b; threads stride over its columns and reduce
//   through shared memory (layer norm, softmax cross-entropy).

#define WARP 32
// NVRTC compiles without the host math headers.
#define INFINITY __int_as_float(0x7f800000)

__device__ __forceinline__ long long stride_start() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long stride_step() {
    return (long long)gridDim.x * blockDim.x;
}

// ---- rows -------------------------------------------------------------------------

// out[r, c] = x[idx[r], c]
extern "C" __global__ void gather_rows(const float* x, const unsigned* idx, float* out,
                                       long long rows, long long cols) {
    long long n = rows * cols;
    for (long long i = stride_start(); i < n; i += stride_step()) {
        long long r = i / cols, c = i - r * cols;
        out[i] = x[(long long)idx[r] * cols + c];
    }
}

// out[idx[r], c] += g[r, c] (unsorted, repeated indices: atomics)
extern "C" __global__ void scatter_add_rows(const float* g, const unsigned* idx, float* out,
                                            long long rows, long long cols) {
    long long n = rows * cols;
    for (long long i = stride_start(); i < n; i += stride_step()) {
        long long r = i / cols, c = i - r * cols;
        atomicAdd(&out[(long long)idx[r] * cols + c], g[i]);
    }
}

// ---- segment reductions over CSR offsets (optionally gathering through idx) --------
// reduce: 0 sum, 1 mean, 2 max. Segment s covers entries offsets[s] .. offsets[s+1];
// entry e reads row (idx ? idx[e] : e) of x. An empty segment gives 0. For max, arg
// holds the row each output came from (-1 when empty), for the backward pass.

extern "C" __global__ void segment_reduce(const float* x, const unsigned* idx,
                                          const unsigned* offsets, float* out, int* arg,
                                          long long segments, long long cols, int reduce) {
    long long warp = stride_start() / WARP;
    int lane = threadIdx.x % WARP;
    if (warp >= segments) return;
    unsigned lo = offsets[warp], hi = offsets[warp + 1];
    for (long long c = lane; c < cols; c += WARP) {
        float acc = reduce == 2 ? -INFINITY : 0.0f;
        int best = -1;
        for (unsigned e = lo; e < hi; ++e) {
            long long row = idx ? (long long)idx[e] : (long long)e;
            float v = x[row * cols + c];
            if (reduce == 2) {
                if (v > acc) { acc = v; best = (int)row; }
            } else {
                acc += v;
            }
        }
        if (hi == lo) acc = 0.0f;
        if (reduce == 1 && hi > lo) acc /= (float)(hi - lo);
        out[warp * cols + c] = acc;
        if (reduce == 2 && arg) arg[warp * cols + c] = best;
    }
}

// The backward of segment_reduce: each entry's row of gx gets its segment's gradient
// (sum), divided by the segment's length (mean), or only the row max came from (max).
extern "C" __global__ void segment_reduce_backward(const float* g, const unsigned* idx,
                                                   const unsigned* offsets, const int* arg,
                                                   float* gx, long long segments,
                                                   long long cols, int reduce) {
    long long warp = stride_start() / WARP;
    int lane = threadIdx.x % WARP;
    if (warp >= segments) return;
    unsigned lo = offsets[warp], hi = offsets[warp + 1];
    for (long long c = lane; c < cols; c += WARP) {
        float d = g[warp * cols + c];
        if (reduce == 2) {
            int row = arg[warp * cols + c];
            if (row >= 0) atomicAdd(&gx[(long long)row * cols + c], d);
            continue;
        }
        if (reduce == 1 && hi > lo) d /= (float)(hi - lo);
        for (unsigned e = lo; e < hi; ++e) {
            long long row = idx ? (long long)idx[e] : (long long)e;
            atomicAdd(&gx[row * cols + c], d);
        }
    }
}

// The embedding bag is segment_reduce with idx = the bags' ids into the table; its
// backward is segment_reduce_backward without idx (one gradient row per position), which
// the backend then sums per distinct id with scatter_add_rows.

// ---- activations ------------------------------------------------------------------
// act: 0 relu, 1 gelu (tanh approximation).

__device__ __forceinline__ float gelu(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float gelu_grad(float x) {
    const float k = 0.7978845608028654f;
    float u = k * (x + 0.044715f * x * x * x);
    float t = tanhf(u);
    float du = k * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

extern "C" __global__ void activation(const float* x, float* out, long long n, int act) {
    for (long long i = stride_start(); i < n; i += stride_step()) {
        float v = x[i];
        out[i] = act == 0 ? fmaxf(v, 0.0f) : gelu(v);
    }
}

extern "C" __global__ void activation_backward(const float* x, const float* g, float* gx,
                                               long long n, int act) {
    for (long long i = stride_start(); i < n; i += stride_step()) {
        float v = x[i];
        gx[i] = g[i] * (act == 0 ? (v > 0.0f ? 1.0f : 0.0f) : gelu_grad(v));
    }
}

// out = a * b (same shapes); out[r, c] = a[r, c] + bias[c] (out may be a); y += alpha * x
extern "C" __global__ void mul(const float* a, const float* b, float* out, long long n) {
    for (long long i = stride_start(); i < n; i += stride_step()) out[i] = a[i] * b[i];
}

extern "C" __global__ void add_bias(const float* a, const float* bias, float* out,
                                    long long rows, long long cols) {
    long long n = rows * cols;
    for (long long i = stride_start(); i < n; i += stride_step()) out[i] = a[i] + bias[i % cols];
}

extern "C" __global__ void axpy(const float* x, float* y, long long n, float alpha) {
    for (long long i = stride_start(); i < n; i += stride_step()) y[i] += alpha * x[i];
}

// out[c] = sum over rows of x[r, c], in row order (one thread per column: deterministic).
extern "C" __global__ void sum_rows(const float* x, float* out, long long rows, long long cols) {
    for (long long c = stride_start(); c < cols; c += stride_step()) {
        float acc = 0.0f;
        for (long long r = 0; r < rows; ++r) acc += x[r * cols + c];
        out[c] = acc;
    }
}

// ---- dropout and time encoding ------------------------------------------------------

// SplitMix64's finaliser, as `mix` in src/cpu.rs: the same seed gives the CPU's mask.
__device__ __forceinline__ unsigned long long mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// out[i] = 0 with probability p, else keep (= 1 / (1 - p)); base = mix(seed).
extern "C" __global__ void dropout_mask(float* out, long long n, double p, float keep,
                                        unsigned long long base) {
    for (long long i = stride_start(); i < n; i += stride_step()) {
        double u = (double)(mix(base ^ (unsigned long long)i) >> 11) / 9007199254740992.0;
        out[i] = u < p ? 0.0f : keep;
    }
}

// out[r, 2k] = sin(t[r] w_k), out[r, 2k + 1] = cos(t[r] w_k), w_k = 10000^(-2k / dims);
// one thread per (row, k).
__device__ __forceinline__ float frequency(long long k, long long dims) {
    return (float)pow(10000.0, -2.0 * (double)k / (double)dims);
}

extern "C" __global__ void time_encoding(const float* t, float* out, long long rows,
                                         long long dims) {
    long long half = dims / 2, n = rows * half;
    for (long long i = stride_start(); i < n; i += stride_step()) {
        long long r = i / half, k = i - r * half;
        float a = t[r] * frequency(k, dims);
        out[r * dims + 2 * k] = sinf(a);
        out[r * dims + 2 * k + 1] = cosf(a);
    }
}

// gt[r] = sum_k (g[r, 2k] cos(t w_k) - g[r, 2k + 1] sin(t w_k)) w_k; one thread per row.
extern "C" __global__ void time_encoding_backward(const float* t, const float* g, float* gt,
                                                  long long rows, long long dims) {
    for (long long r = stride_start(); r < rows; r += stride_step()) {
        float acc = 0.0f;
        for (long long k = 0; k < dims / 2; ++k) {
            float w = frequency(k, dims), a = t[r] * w;
            acc += (g[r * dims + 2 * k] * cosf(a) - g[r * dims + 2 * k + 1] * sinf(a)) * w;
        }
        gt[r] = acc;
    }
}

// ---- layer norm (block per row, shared-memory reductions) ---------------------------

__device__ float block_sum(float v, float* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    float total = shared[0];
    __syncthreads();
    return total;
}

// y = (x - mean) / sqrt(var + eps) * gamma + beta; keeps (mean, 1/std) per row in stats.
// blockDim.x must be a power of two; shared memory: blockDim.x floats.
extern "C" __global__ void layer_norm(const float* x, const float* gamma, const float* beta,
                                      float* y, float* stats,
                                      long long rows, long long cols, float eps) {
    extern __shared__ float shared[];
    long long r = blockIdx.x;
    if (r >= rows) return;
    const float* row = x + r * cols;
    float s = 0.0f;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) s += row[c];
    float mean = block_sum(s, shared) / (float)cols;
    float v = 0.0f;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
        float d = row[c] - mean;
        v += d * d;
    }
    float rstd = rsqrtf(block_sum(v, shared) / (float)cols + eps);
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
        y[r * cols + c] = (row[c] - mean) * rstd * gamma[c] + beta[c];
    }
    if (threadIdx.x == 0) {
        stats[2 * r] = mean;
        stats[2 * r + 1] = rstd;
    }
}

// dx = rstd / C * (C * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)), dxhat = g * gamma;
// dgamma and dbeta accumulate with atomics across rows.
extern "C" __global__ void layer_norm_backward(const float* x, const float* gamma,
                                               const float* g, const float* stats, float* gx,
                                               float* ggamma,
                                               float* gbeta, long long rows, long long cols) {
    extern __shared__ float shared[];
    long long r = blockIdx.x;
    if (r >= rows) return;
    float mean = stats[2 * r], rstd = stats[2 * r + 1];
    const float* row = x + r * cols;
    const float* grow = g + r * cols;
    float a = 0.0f, b = 0.0f;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
        float xhat = (row[c] - mean) * rstd;
        float dxhat = grow[c] * gamma[c];
        a += dxhat;
        b += dxhat * xhat;
        atomicAdd(&ggamma[c], grow[c] * xhat);
        atomicAdd(&gbeta[c], grow[c]);
    }
    float sum_dxhat = block_sum(a, shared);
    float sum_dxhat_xhat = block_sum(b, shared);
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
        float xhat = (row[c] - mean) * rstd;
        float dxhat = grow[c] * gamma[c];
        gx[r * cols + c] =
            rstd / (float)cols * ((float)cols * dxhat - sum_dxhat - xhat * sum_dxhat_xhat);
    }
}

// ---- losses -----------------------------------------------------------------------
// Each writes the per-example gradient of the mean loss into grad and adds the mean
// loss into *loss (one float, zeroed by the caller).

extern "C" __global__ void bce_with_logits(const float* z, const float* t, float* grad,
                                           float* loss, long long n) {
    for (long long i = stride_start(); i < n; i += stride_step()) {
        float x = z[i], y = t[i];
        float l = fmaxf(x, 0.0f) - x * y + log1pf(expf(-fabsf(x)));
        float p = 1.0f / (1.0f + expf(-x));
        grad[i] = (p - y) / (float)n;
        atomicAdd(loss, l / (float)n);
    }
}

// kind: 0 L1, 1 Huber with delta, 2 BPR (pred the positive scores, t the negative ones:
// -ln sigmoid(pred - t)).
extern "C" __global__ void regression_loss(const float* pred, const float* t, float* grad,
                                           float* loss, long long n, int kind, float delta) {
    for (long long i = stride_start(); i < n; i += stride_step()) {
        float d = pred[i] - t[i];
        float l, dl;
        if (kind == 2) {
            l = fmaxf(-d, 0.0f) + log1pf(expf(-fabsf(d)));
            dl = -1.0f / (1.0f + expf(d));
        } else if (kind == 0) {
            l = fabsf(d);
            dl = d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : 0.0f);
        } else if (fabsf(d) <= delta) {
            l = 0.5f * d * d;
            dl = d;
        } else {
            l = delta * (fabsf(d) - 0.5f * delta);
            dl = d > 0.0f ? delta : -delta;
        }
        grad[i] = dl / (float)n;
        atomicAdd(loss, l / (float)n);
    }
}

// Softmax cross-entropy, block per row; target[r] is the class index (as a float).
extern "C" __global__ void softmax_cross_entropy(const float* z, const float* target,
                                                 float* grad, float* loss, long long rows,
                                                 long long cols) {
    extern __shared__ float shared[];
    long long r = blockIdx.x;
    if (r >= rows) return;
    const float* row = z + r * cols;
    float m = -INFINITY;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, row[c]);
    shared[threadIdx.x] = m;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + s]);
        __syncthreads();
    }
    m = shared[0];
    __syncthreads();
    float e = 0.0f;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) e += expf(row[c] - m);
    float total = block_sum(e, shared);
    long long k = (long long)target[r];
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
        float p = expf(row[c] - m) / total;
        grad[r * cols + c] = (p - (c == k ? 1.0f : 0.0f)) / (float)rows;
    }
    if (threadIdx.x == 0) atomicAdd(loss, (logf(total) + m - row[k]) / (float)rows);
}

// ---- optimizers -------------------------------------------------------------------
// Adam / AdamW (decoupled weight decay), fused: one pass over parameter, gradient and
// both moments. bc1 = 1 - beta1^t, bc2 = 1 - beta2^t.

extern "C" __global__ void adam(float* p, const float* g, float* m, float* v, long long n,
                                float lr, float beta1, float beta2, float eps,
                                float weight_decay, float bc1, float bc2) {
    for (long long i = stride_start(); i < n; i += stride_step()) {
        float gi = g[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float update = (mi / bc1) / (sqrtf(vi / bc2) + eps);
        p[i] -= lr * (update + weight_decay * p[i]);
    }
}

// The same for the rows `rows[k]` of an embedding table only, with their gradients in
// `compact` (row k); rows not touched by the batch keep their moments.
extern "C" __global__ void adam_sparse(float* p, const float* compact, const unsigned* rows,
                                       float* m, float* v, long long count, long long cols,
                                       float lr, float beta1, float beta2, float eps,
                                       float weight_decay, float bc1, float bc2) {
    long long n = count * cols;
    for (long long i = stride_start(); i < n; i += stride_step()) {
        long long k = i / cols, c = i - k * cols;
        long long j = (long long)rows[k] * cols + c;
        float gi = compact[i];
        float mi = beta1 * m[j] + (1.0f - beta1) * gi;
        float vi = beta2 * v[j] + (1.0f - beta2) * gi * gi;
        m[j] = mi;
        v[j] = vi;
        float update = (mi / bc1) / (sqrtf(vi / bc2) + eps);
        p[j] -= lr * (update + weight_decay * p[j]);
    }
}
