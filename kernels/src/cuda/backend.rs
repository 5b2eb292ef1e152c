//! [`Cuda`]: the [`Backend`] on one CUDA device. Every op is a launch of a hand-written
//! kernel of [`super::SOURCE`] (or cuBLAS for `gemm`) queued on the device's stream, so
//! ops return before the work is done; downloads wait for it. Index bookkeeping that
//! only reorders ids (`group_by`, the distinct ids of `coalesce`) runs on the host over
//! downloaded ids; every value stays on the device.
//!
//! Buffers come from a caching pool keyed by size class: a training step allocates the
//! same tensors every time, and `cuMemAlloc` per tensor would cost more than the kernels.
//! Large uploads (a batch's features) go through pinned host buffers, one per size class,
//! so the copy to the device is a true asynchronous DMA that overlaps the kernels queued
//! before it; a staging buffer is rewritten only after its previous copy is done.
//!
//! Unlike the CPU backend, kernels that read through an index do not check its range on
//! the device; the tape's callers guarantee it, and the op suite runs the CPU backend's
//! checks over the same calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PinnedHostSlice,
};
use cudarc::driver::{PushKernelArg, ValidAsZeroBits};

use super::{CudaDevice, CudaError, compile_cached};
use crate::backend::{
    Activation, AdamConfig, Backend, Index, Loss, Reduce, Tensor, product_shape, size_class,
};
use crate::cpu::{self, check_same};
use crate::launch::{self, Grid, KERNELS, Param};

/// A buffer on the device: `len` values at the start of a pooled allocation that may be
/// larger.
#[derive(Debug)]
pub struct DeviceBuf<T> {
    mem: CudaSlice<T>,
    len: usize,
}

/// Freed f32 allocations by size class, up to a budget.
#[derive(Debug, Default)]
struct Pool {
    free: HashMap<usize, Vec<CudaSlice<f32>>>,
    held: usize,
}

/// Uploads of at least this many values are staged through pinned memory.
const STAGED: usize = 1 << 16;
/// The most pinned host memory staging holds (bytes).
const STAGING_BUDGET: usize = 512 << 20;

/// The CUDA backend: one device, its stream, the compiled kernels and cuBLAS.
pub struct Cuda {
    device: CudaDevice,
    functions: Vec<CudaFunction>,
    blas: CudaBlas,
    pool: Arc<Mutex<Pool>>,
    /// The most bytes the pool keeps.
    budget: usize,
    /// Pinned host buffers for uploads, by size class, each with the event recorded
    /// after its last copy (cudarc records none on a single stream).
    staging: Mutex<HashMap<usize, Staging>>,
}

struct Staging {
    host: PinnedHostSlice<f32>,
    copied: Option<CudaEvent>,
}

impl Drop for Cuda {
    fn drop(&mut self) {
        // Pinned buffers may still be read by queued copies; freeing them must wait.
        let _ = self.stream().synchronize();
    }
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("ordinal", &self.device.ordinal)
            .field("name", &self.device.name)
            .finish()
    }
}

/// Where compiled PTX is kept: `RELGRAPH_PTX_CACHE`, else `~/.cache/relgraph/ptx`.
fn ptx_cache() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("RELGRAPH_PTX_CACHE") {
        return dir.into();
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    home.join("relgraph").join("ptx")
}

/// One kernel argument, with the parameter kind it fills.
#[derive(Clone, Copy, Debug)]
enum Arg {
    Ptr(Param, u64),
    I64(i64),
    I32(i32),
    F32(f32),
    F64(f64),
    U64(u64),
}

impl Arg {
    fn param(&self) -> Param {
        match *self {
            Arg::Ptr(p, _) => p,
            Arg::I64(_) => Param::I64,
            Arg::I32(_) => Param::I32,
            Arg::F32(_) => Param::F32,
            Arg::F64(_) => Param::F64,
            Arg::U64(_) => Param::U64,
        }
    }
}

fn n64(n: usize) -> Arg {
    Arg::I64(n as i64)
}

fn reduce_code(reduce: Reduce) -> i32 {
    match reduce {
        Reduce::Sum => 0,
        Reduce::Mean => 1,
        Reduce::Max => 2,
    }
}

fn act_code(act: Activation) -> i32 {
    match act {
        Activation::Relu => 0,
        Activation::Gelu => 1,
    }
}

impl Cuda {
    /// Opens device `ordinal`: its context and stream, cuBLAS, and the kernels compiled
    /// for its architecture (from the PTX cache when there). Every missing piece (driver,
    /// device, libnvrtc, libcublas) is an error that names it.
    #[allow(unsafe_code)]
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        let device = super::usable(ordinal)?;
        // SAFETY: one stream does all the work, so ordering on it is the only
        // synchronisation needed; buffers are freed (or pooled) only by this backend.
        unsafe { device.context.disable_event_tracking() };
        let (major, minor) = device.compute_capability;
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let ptx = compile_cached(arch, &ptx_cache())?;
        let module = device
            .context
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| CudaError::Driver(format!("loading the kernels for {arch}: {e}")))?;
        let functions = KERNELS
            .iter()
            .map(|k| {
                module
                    .load_function(k.name)
                    .map_err(|e| CudaError::Driver(format!("kernel {}: {e}", k.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let blas = CudaBlas::new(device.stream.clone())
            .map_err(|e| CudaError::Driver(format!("cuBLAS: {e}")))?;
        let budget = device.memory_bytes / 4;
        Ok(Cuda {
            device,
            functions,
            blas,
            pool: Arc::default(),
            budget,
            staging: Mutex::default(),
        })
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.device.stream
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> ! {
        panic!(
            "CUDA device {} ({}): {what}: {e}",
            self.device.ordinal, self.device.name
        )
    }

    fn ptr<T>(&self, buf: &DeviceBuf<T>) -> u64 {
        buf.mem.device_ptr(self.stream()).0
    }

    fn floats(&self, t: &Tensor<Self>) -> Arg {
        Arg::Ptr(Param::F32s, self.ptr(&t.data))
    }

    fn floats_mut(&self, buf: &DeviceBuf<f32>) -> Arg {
        Arg::Ptr(Param::F32sMut, self.ptr(buf))
    }

    fn ids(&self, idx: Option<&Index<Self>>) -> Arg {
        Arg::Ptr(Param::U32s, idx.map_or(0, |i| self.ptr(&i.data)))
    }

    /// Queues kernel `name` over `grid` with `shared` bytes of shared memory, after
    /// checking `args` against the parameters the source declares.
    #[allow(unsafe_code)]
    fn launch(&self, name: &str, grid: Grid, shared: usize, args: &[Arg]) {
        let at = launch::kernel(name).unwrap_or_else(|| panic!("no kernel {name}"));
        let given: Vec<Param> = args.iter().map(Arg::param).collect();
        assert_eq!(given, KERNELS[at].params, "launch of {name}: arguments");
        let mut builder = self.stream().launch_builder(&self.functions[at]);
        for arg in args {
            match arg {
                Arg::Ptr(_, p) | Arg::U64(p) => builder.arg(p),
                Arg::I64(v) => builder.arg(v),
                Arg::I32(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
                Arg::F64(v) => builder.arg(v),
            };
        }
        let config = LaunchConfig {
            grid_dim: (grid.blocks, 1, 1),
            block_dim: (grid.threads, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        // SAFETY: the arguments match the kernel's declared parameters (checked above);
        // every pointer is a live device buffer of this backend holding at least the
        // elements the kernel's bounds (also arguments) let it touch, and the stream
        // orders this launch after the writes of every input and before any later use.
        if let Err(e) = unsafe { builder.launch(config) } {
            self.fail(&format!("launching {name}"), e);
        }
    }

    /// Uninitialised room for `len` values of `T` (unpooled: indices and other types).
    #[allow(unsafe_code)]
    fn raw<T: DeviceRepr>(&self, len: usize) -> CudaSlice<T> {
        // SAFETY: every caller writes the values before any kernel reads them.
        unsafe { self.stream().alloc::<T>(len.max(1)) }
            .unwrap_or_else(|e| self.fail(&format!("allocating {len} values"), e))
    }

    /// `len` f32 values, contents undefined: a pooled allocation of `len`'s size class.
    #[allow(unsafe_code)]
    fn alloc(&self, len: usize) -> DeviceBuf<f32> {
        let class = size_class(len);
        {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mem) = pool.free.get_mut(&class).and_then(Vec::pop) {
                pool.held -= class * 4;
                return DeviceBuf { mem, len };
            }
        }
        // SAFETY: as in `raw`.
        let mem = match unsafe { self.stream().alloc::<f32>(class) } {
            Ok(mem) => mem,
            Err(_) => {
                // Out of memory, perhaps only because the pool holds it: free and retry.
                let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                pool.free.clear();
                pool.held = 0;
                drop(pool);
                // SAFETY: as above.
                unsafe { self.stream().alloc::<f32>(class) }.unwrap_or_else(|e| {
                    self.fail(&format!("allocating {} MiB", (class * 4) >> 20), e)
                })
            }
        };
        DeviceBuf { mem, len }
    }

    /// Copies `host` into `buf` through the pinned buffer of `buf`'s size class; false
    /// when staging cannot take it (over budget, pinned memory refused), so the caller
    /// copies from pageable memory instead.
    #[allow(unsafe_code)]
    fn stage(&self, host: &[f32], buf: &mut DeviceBuf<f32>) -> bool {
        let class = buf.mem.len();
        let mut staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if !staging.contains_key(&class) {
            let held: usize = staging.keys().map(|c| c * 4).sum();
            if held + class * 4 > STAGING_BUDGET {
                return false;
            }
            // SAFETY: page-locked host memory for `class` f32 values; every value a copy
            // reads was written first (below) or lies past `host.len()` in a device
            // buffer's unused tail.
            match unsafe { self.device.context.alloc_pinned::<f32>(class) } {
                Ok(host) => staging.insert(class, Staging { host, copied: None }),
                Err(_) => return false,
            };
        }
        let Some(slot) = staging.get_mut(&class) else {
            return false;
        };
        // The previous copy out of this buffer must be done before it is rewritten.
        if let Some(copied) = slot.copied.take()
            && let Err(e) = copied.synchronize()
        {
            self.fail("waiting for an upload", e);
        }
        match slot.host.as_mut_slice() {
            Ok(values) => values[..host.len()].copy_from_slice(host),
            Err(e) => self.fail("staging an upload", e),
        }
        if let Err(e) = self.stream().memcpy_htod(&slot.host, &mut buf.mem) {
            self.fail("uploading", e);
        }
        match self.stream().record_event(None) {
            Ok(event) => slot.copied = Some(event),
            Err(e) => self.fail("recording an upload", e),
        }
        true
    }

    fn zeroed<T: DeviceRepr + ValidAsZeroBits>(&self, mem: &mut CudaSlice<T>) {
        if let Err(e) = self.stream().memset_zeros(mem) {
            self.fail("zeroing a buffer", e);
        }
    }

    fn tensor(rows: usize, cols: usize, data: DeviceBuf<f32>) -> Tensor<Self> {
        Tensor { rows, cols, data }
    }

    fn index(&self, host: &[u32]) -> Index<Self> {
        Index {
            len: host.len(),
            data: self.upload_index(host),
        }
    }
}

impl Backend for Cuda {
    type E = f32;
    type Buf = DeviceBuf<f32>;
    type Idx = DeviceBuf<u32>;

    fn name(&self) -> String {
        let (major, minor) = self.device.compute_capability;
        format!(
            "cuda:{} ({}, sm_{major}{minor}, {:.0} GiB)",
            self.device.ordinal,
            self.device.name,
            self.device.memory_bytes as f64 / f64::from(1u32 << 30)
        )
    }

    fn upload(&self, host: &[f32]) -> DeviceBuf<f32> {
        let mut buf = self.alloc(host.len());
        if host.len() >= STAGED && self.stage(host, &mut buf) {
            return buf;
        }
        if !host.is_empty()
            && let Err(e) = self
                .stream()
                .memcpy_htod(host, &mut buf.mem.slice_mut(0..host.len()))
        {
            self.fail("uploading", e);
        }
        buf
    }

    fn download(&self, buf: &DeviceBuf<f32>) -> Vec<f32> {
        if buf.len == 0 {
            return Vec::new();
        }
        self.stream()
            .clone_dtoh(&buf.mem.slice(0..buf.len))
            .unwrap_or_else(|e| self.fail("downloading", e))
    }

    fn upload_index(&self, host: &[u32]) -> DeviceBuf<u32> {
        let mut mem = self.raw::<u32>(host.len());
        if !host.is_empty()
            && let Err(e) = self
                .stream()
                .memcpy_htod(host, &mut mem.slice_mut(0..host.len()))
        {
            self.fail("uploading ids", e);
        }
        DeviceBuf {
            mem,
            len: host.len(),
        }
    }

    fn download_index(&self, idx: &DeviceBuf<u32>) -> Vec<u32> {
        if idx.len == 0 {
            return Vec::new();
        }
        self.stream()
            .clone_dtoh(&idx.mem.slice(0..idx.len))
            .unwrap_or_else(|e| self.fail("downloading ids", e))
    }

    fn zeros(&self, len: usize) -> DeviceBuf<f32> {
        let mut buf = self.alloc(len);
        self.zeroed(&mut buf.mem);
        buf
    }

    fn copy(&self, buf: &DeviceBuf<f32>) -> DeviceBuf<f32> {
        let mut out = self.alloc(buf.len);
        if buf.len > 0
            && let Err(e) = self.stream().memcpy_dtod(
                &buf.mem.slice(0..buf.len),
                &mut out.mem.slice_mut(0..buf.len),
            )
        {
            self.fail("copying", e);
        }
        out
    }

    fn recycle(&self, buf: DeviceBuf<f32>) {
        let class = buf.mem.len();
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.held + class * 4 <= self.budget {
            pool.held += class * 4;
            pool.free.entry(class).or_default().push(buf.mem);
        }
    }

    fn synchronize(&self) {
        if let Err(e) = self.stream().synchronize() {
            self.fail("synchronising", e);
        }
    }

    #[allow(unsafe_code)]
    fn gemm(
        &self,
        a: &Tensor<Self>,
        transpose_a: bool,
        b: &Tensor<Self>,
        transpose_b: bool,
        out: &mut Tensor<Self>,
        accumulate: bool,
    ) {
        let (m, n, k) = product_shape(a, transpose_a, b, transpose_b);
        check_same("gemm output", out.shape(), (m, n));
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                self.zeroed(&mut out.data.mem);
            }
            return;
        }
        let int = |v: usize| i32::try_from(v).expect("gemm: dimension over 2^31");
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // cuBLAS is column-major, and a row-major matrix read column-major is its
        // transpose: out^T (n x m) = op(b)^T · op(a)^T, with b's buffer first.
        let config = GemmConfig {
            transa: op(transpose_b),
            transb: op(transpose_a),
            m: int(n),
            n: int(m),
            k: int(k),
            alpha: 1.0f32,
            lda: int(b.cols),
            ldb: int(a.cols),
            beta: if accumulate { 1.0 } else { 0.0 },
            ldc: int(n),
        };
        // cuBLAS runs in the thread's current context, which a rayon thread may not have.
        if let Err(e) = self.device.context.bind_to_thread() {
            self.fail("binding the context", e);
        }
        // SAFETY: the shapes were checked above, so with these leading dimensions cuBLAS
        // reads b.len() and a.len() values and writes m * n: within each buffer.
        let done = unsafe {
            self.blas
                .gemm(config, &b.data.mem, &a.data.mem, &mut out.data.mem)
        };
        if let Err(e) = done {
            self.fail("cuBLAS sgemm", e);
        }
    }

    /// cuBLAS with beta = 0 reads nothing of its output: no memset first.
    fn matmul(
        &self,
        a: &Tensor<Self>,
        transpose_a: bool,
        b: &Tensor<Self>,
        transpose_b: bool,
    ) -> Tensor<Self> {
        let (m, n, _) = product_shape(a, transpose_a, b, transpose_b);
        let mut out = Self::tensor(m, n, self.alloc(m * n));
        self.gemm(a, transpose_a, b, transpose_b, &mut out, false);
        out
    }

    fn add_row(&self, x: &mut Tensor<Self>, row: &Tensor<Self>) {
        check_same("add_row", row.shape(), (1, x.cols));
        let p = self.floats(x);
        let out = self.floats_mut(&x.data);
        let grid = launch::grid_stride(x.len() as u64);
        self.launch(
            "add_bias",
            grid,
            0,
            &[p, self.floats(row), out, n64(x.rows), n64(x.cols)],
        );
    }

    fn sum_rows(&self, x: &Tensor<Self>) -> Tensor<Self> {
        let out = self.alloc(x.cols);
        let grid = launch::grid_stride(x.cols as u64);
        let args = [
            self.floats(x),
            self.floats_mut(&out),
            n64(x.rows),
            n64(x.cols),
        ];
        self.launch("sum_rows", grid, 0, &args);
        Self::tensor(1, x.cols, out)
    }

    fn axpy(&self, alpha: f32, x: &Tensor<Self>, y: &mut Tensor<Self>) {
        check_same("axpy", x.shape(), y.shape());
        let grid = launch::grid_stride(x.len() as u64);
        let args = [
            self.floats(x),
            self.floats_mut(&y.data),
            n64(x.len()),
            Arg::F32(alpha),
        ];
        self.launch("axpy", grid, 0, &args);
    }

    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> Tensor<Self> {
        check_same("mul", a.shape(), b.shape());
        let out = self.alloc(a.len());
        let grid = launch::grid_stride(a.len() as u64);
        let args = [
            self.floats(a),
            self.floats(b),
            self.floats_mut(&out),
            n64(a.len()),
        ];
        self.launch("mul", grid, 0, &args);
        Self::tensor(a.rows, a.cols, out)
    }

    fn activation(&self, act: Activation, x: &Tensor<Self>) -> Tensor<Self> {
        let out = self.alloc(x.len());
        let grid = launch::grid_stride(x.len() as u64);
        let args = [
            self.floats(x),
            self.floats_mut(&out),
            n64(x.len()),
            Arg::I32(act_code(act)),
        ];
        self.launch("activation", grid, 0, &args);
        Self::tensor(x.rows, x.cols, out)
    }

    fn activation_backward(
        &self,
        act: Activation,
        x: &Tensor<Self>,
        dy: &Tensor<Self>,
    ) -> Tensor<Self> {
        check_same("activation backward", x.shape(), dy.shape());
        let out = self.alloc(x.len());
        let grid = launch::grid_stride(x.len() as u64);
        let args = [
            self.floats(x),
            self.floats(dy),
            self.floats_mut(&out),
            n64(x.len()),
            Arg::I32(act_code(act)),
        ];
        self.launch("activation_backward", grid, 0, &args);
        Self::tensor(x.rows, x.cols, out)
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
        let (y, stats) = (self.alloc(x.len()), self.alloc(2 * x.rows));
        if x.rows > 0 {
            let (grid, shared) = launch::row_grid(x.rows as u64, x.cols as u64);
            let args = [
                self.floats(x),
                self.floats(gamma),
                self.floats(beta),
                self.floats_mut(&y),
                self.floats_mut(&stats),
                n64(x.rows),
                n64(x.cols),
                Arg::F32(eps as f32),
            ];
            self.launch("layer_norm", grid, shared, &args);
        }
        (
            Self::tensor(x.rows, x.cols, y),
            Self::tensor(x.rows, 2, stats),
        )
    }

    fn layer_norm_backward(
        &self,
        x: &Tensor<Self>,
        gamma: &Tensor<Self>,
        stats: &Tensor<Self>,
        dy: &Tensor<Self>,
    ) -> (Tensor<Self>, Tensor<Self>, Tensor<Self>) {
        check_same("layer_norm backward", x.shape(), dy.shape());
        let dx = self.alloc(x.len());
        let (dgamma, dbeta) = (self.zeros(x.cols), self.zeros(x.cols));
        if x.rows > 0 {
            let (grid, shared) = launch::row_grid(x.rows as u64, x.cols as u64);
            let args = [
                self.floats(x),
                self.floats(gamma),
                self.floats(dy),
                self.floats(stats),
                self.floats_mut(&dx),
                self.floats_mut(&dgamma),
                self.floats_mut(&dbeta),
                n64(x.rows),
                n64(x.cols),
            ];
            self.launch("layer_norm_backward", grid, shared, &args);
        }
        (
            Self::tensor(x.rows, x.cols, dx),
            Self::tensor(1, x.cols, dgamma),
            Self::tensor(1, x.cols, dbeta),
        )
    }

    fn dropout_mask(&self, rows: usize, cols: usize, p: f64, seed: u64) -> Tensor<Self> {
        assert!(
            (0.0..1.0).contains(&p),
            "dropout probability {p} is not in [0, 1)"
        );
        let out = self.alloc(rows * cols);
        let grid = launch::grid_stride((rows * cols) as u64);
        let args = [
            self.floats_mut(&out),
            n64(rows * cols),
            Arg::F64(p),
            Arg::F32((1.0 / (1.0 - p)) as f32),
            Arg::U64(cpu::mix(seed)),
        ];
        self.launch("dropout_mask", grid, 0, &args);
        Self::tensor(rows, cols, out)
    }

    fn time_encoding(&self, t: &Tensor<Self>, dims: usize) -> Tensor<Self> {
        assert_eq!(t.cols, 1, "time_encoding: times must be n x 1");
        assert!(
            dims.is_multiple_of(2),
            "time_encoding: {dims} dims is not even"
        );
        let out = self.alloc(t.rows * dims);
        let grid = launch::grid_stride((t.rows * dims / 2) as u64);
        let args = [
            self.floats(t),
            self.floats_mut(&out),
            n64(t.rows),
            n64(dims),
        ];
        self.launch("time_encoding", grid, 0, &args);
        Self::tensor(t.rows, dims, out)
    }

    fn time_encoding_backward(&self, t: &Tensor<Self>, dy: &Tensor<Self>) -> Tensor<Self> {
        assert_eq!(dy.rows, t.rows, "time_encoding backward: rows differ");
        let out = self.alloc(t.rows);
        let grid = launch::grid_stride(t.rows as u64);
        let args = [
            self.floats(t),
            self.floats(dy),
            self.floats_mut(&out),
            n64(t.rows),
            n64(dy.cols),
        ];
        self.launch("time_encoding_backward", grid, 0, &args);
        Self::tensor(t.rows, 1, out)
    }

    fn gather_rows(&self, x: &Tensor<Self>, idx: &Index<Self>) -> Tensor<Self> {
        let out = self.alloc(idx.len * x.cols);
        let grid = launch::grid_stride((idx.len * x.cols) as u64);
        let args = [
            self.floats(x),
            self.ids(Some(idx)),
            self.floats_mut(&out),
            n64(idx.len),
            n64(x.cols),
        ];
        self.launch("gather_rows", grid, 0, &args);
        Self::tensor(idx.len, x.cols, out)
    }

    fn scatter_add_rows(&self, dy: &Tensor<Self>, idx: &Index<Self>, rows: usize) -> Tensor<Self> {
        assert_eq!(
            dy.rows, idx.len,
            "scatter_add_rows: {} rows, {} ids",
            dy.rows, idx.len
        );
        let out = self.zeros(rows * dy.cols);
        let grid = launch::grid_stride(dy.len() as u64);
        let args = [
            self.floats(dy),
            self.ids(Some(idx)),
            self.floats_mut(&out),
            n64(dy.rows),
            n64(dy.cols),
        ];
        self.launch("scatter_add_rows", grid, 0, &args);
        Self::tensor(rows, dy.cols, out)
    }

    fn gather_reduce(
        &self,
        x: &Tensor<Self>,
        idx: Option<&Index<Self>>,
        offsets: &Index<Self>,
        reduce: Reduce,
    ) -> (Tensor<Self>, Option<Index<Self>>) {
        let (cols, segments) = (x.cols, offsets.len.saturating_sub(1));
        let out = self.alloc(segments * cols);
        let arg = (reduce == Reduce::Max).then(|| DeviceBuf {
            mem: self.raw::<u32>(segments * cols),
            len: segments * cols,
        });
        let arg_ptr = arg.as_ref().map_or(0, |a| self.ptr(a));
        let args = [
            self.floats(x),
            self.ids(idx),
            self.ids(Some(offsets)),
            self.floats_mut(&out),
            Arg::Ptr(Param::I32sMut, arg_ptr),
            n64(segments),
            n64(cols),
            Arg::I32(reduce_code(reduce)),
        ];
        if segments > 0 {
            self.launch(
                "segment_reduce",
                launch::warp_grid(segments as u64),
                0,
                &args,
            );
        }
        let arg = arg.map(|data| Index {
            len: data.len,
            data,
        });
        (Self::tensor(segments, cols, out), arg)
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
        let segments = offsets.len.saturating_sub(1);
        check_same("gather_reduce backward", (dy.rows, 1), (segments, 1));
        let argmax = match reduce {
            Reduce::Max => Some(argmax.expect("gather_reduce backward: max needs its argmax")),
            _ => None,
        };
        let dx = self.zeros(x_rows * cols);
        let args = [
            self.floats(dy),
            self.ids(idx),
            self.ids(Some(offsets)),
            Arg::Ptr(Param::I32s, argmax.map_or(0, |a| self.ptr(&a.data))),
            self.floats_mut(&dx),
            n64(segments),
            n64(cols),
            Arg::I32(reduce_code(reduce)),
        ];
        if segments > 0 {
            let grid = launch::warp_grid(segments as u64);
            self.launch("segment_reduce_backward", grid, 0, &args);
        }
        Self::tensor(x_rows, cols, dx)
    }

    fn group_by(&self, idx: &Index<Self>, rows: usize) -> (Index<Self>, Index<Self>) {
        let (perm, offsets) = cpu::group_ids(&self.download_index(&idx.data), rows);
        (self.index(&perm), self.index(&offsets))
    }

    fn coalesce(&self, idx: &Index<Self>, dy: &Tensor<Self>) -> (Index<Self>, Tensor<Self>) {
        assert_eq!(
            dy.rows, idx.len,
            "coalesce: {} rows, {} ids",
            dy.rows, idx.len
        );
        let (ids, local) = cpu::distinct_ids(&self.download_index(&idx.data));
        let sums = self.scatter_add_rows(dy, &self.index(&local), ids.len());
        (self.index(&ids), sums)
    }

    fn loss(&self, loss: Loss, pred: &Tensor<Self>, target: &Tensor<Self>) -> (f32, Tensor<Self>) {
        let (rows, cols) = pred.shape();
        let grad = self.alloc(pred.len());
        let total = self.zeros(1);
        let base = [
            self.floats(pred),
            self.floats(target),
            self.floats_mut(&grad),
            self.floats_mut(&total),
        ];
        match loss {
            Loss::SoftmaxCrossEntropy => {
                check_same("softmax cross-entropy labels", target.shape(), (rows, 1));
                if rows > 0 {
                    let (grid, shared) = launch::row_grid(rows as u64, cols as u64);
                    let args = [base[0], base[1], base[2], base[3], n64(rows), n64(cols)];
                    self.launch("softmax_cross_entropy", grid, shared, &args);
                }
            }
            Loss::BceWithLogits => {
                check_same("loss", pred.shape(), target.shape());
                let grid = launch::grid_stride(pred.len() as u64);
                let args = [base[0], base[1], base[2], base[3], n64(pred.len())];
                self.launch("bce_with_logits", grid, 0, &args);
            }
            Loss::L1 | Loss::Huber { .. } | Loss::Bpr => {
                check_same("loss", pred.shape(), target.shape());
                let (kind, delta) = match loss {
                    Loss::L1 => (0, 0.0),
                    Loss::Huber { delta } => (1, delta as f32),
                    _ => (2, 0.0),
                };
                let grid = launch::grid_stride(pred.len() as u64);
                let args = [
                    base[0],
                    base[1],
                    base[2],
                    base[3],
                    n64(pred.len()),
                    Arg::I32(kind),
                    Arg::F32(delta),
                ];
                self.launch("regression_loss", grid, 0, &args);
            }
        }
        let value = self.download(&total)[0];
        self.recycle(total);
        (value, Self::tensor(rows, cols, grad))
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
        let hyper = [
            Arg::F32(config.lr as f32),
            Arg::F32(config.beta1 as f32),
            Arg::F32(config.beta2 as f32),
            Arg::F32(config.eps as f32),
            Arg::F32(config.weight_decay as f32),
            Arg::F32((1.0 - config.beta1.powi(step)) as f32),
            Arg::F32((1.0 - config.beta2.powi(step)) as f32),
        ];
        let (p, g) = (self.floats_mut(&param.data), self.floats(grad));
        let (m, v) = (self.floats_mut(&m.data), self.floats_mut(&v.data));
        match rows {
            None => {
                check_same("adam gradient", grad.shape(), param.shape());
                let mut args = vec![p, g, m, v, n64(param.len())];
                args.extend(hyper);
                self.launch("adam", launch::grid_stride(param.len() as u64), 0, &args);
            }
            Some(rows) => {
                check_same("adam sparse gradient", grad.shape(), (rows.len, param.cols));
                let mut args = vec![p, g, self.ids(Some(rows)), m, v];
                args.extend([n64(rows.len), n64(param.cols)]);
                args.extend(hyper);
                let grid = launch::grid_stride((rows.len * param.cols) as u64);
                self.launch("adam_sparse", grid, 0, &args);
            }
        }
    }
}
