//! CUDA devices through cudarc, loaded at run time (feature `cuda`): nothing CUDA is
//! needed to build or to run, and a machine without a driver gets an error, not a crash.
//! Here: devices (a context and the stream kernels launch on), the hand-written kernels
//! ([`SOURCE`], their launch arithmetic in [`crate::launch`]) with their NVRTC
//! compilation to PTX, cached on disk per device architecture, and [`Cuda`], the
//! [`crate::Backend`] that launches them.

mod backend;

pub use backend::{Cuda, DeviceBuf};

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver library (libcuda.so) could be loaded on this machine")]
    NoDriver,
    #[error("no CUDA device {ordinal}: {count} present")]
    NoDevice { ordinal: usize, count: usize },
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error(
        "no NVRTC library (libnvrtc.so.12) could be loaded: install NVIDIA's `nvidia-cuda-nvrtc-cu12` wheel (or the CUDA toolkit) and put its lib folder on LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    #[error(
        "no cuBLAS library (libcublas.so.12) could be loaded: install the CUDA toolkit or NVIDIA's `nvidia-cublas-cu12` wheel and put its lib folder on LD_LIBRARY_PATH"
    )]
    NoCublas,
    #[error("NVRTC could not compile the kernels for {arch}: {log}")]
    Compile { arch: String, log: String },
}

/// The CUDA C source of every kernel.
pub const SOURCE: &str = include_str!("cuda/kernels.cu");

/// Whether libnvrtc loads (cudarc panics on first use without it).
#[allow(unsafe_code)]
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to load the shared library and reports whether it could.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The PTX of [`SOURCE`] for `arch` (`sm_80`, `sm_90`, ...).
pub fn compile(arch: &'static str) -> Result<String, CudaError> {
    compile_source(SOURCE, arch)
}

/// The PTX of CUDA C `source` for `arch`, or NVRTC's log.
pub fn compile_source(source: &str, arch: &'static str) -> Result<String, CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let options = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        name: Some("relgraph_kernels.cu".to_string()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, options)
        .map(|ptx| ptx.to_src())
        .map_err(|e| CudaError::Compile {
            arch: arch.to_string(),
            log: e.to_string(),
        })
}

/// [`compile`], through a cache in `dir`: one file per source hash and architecture,
/// written beside its name and renamed into place.
pub fn compile_cached(arch: &'static str, dir: &std::path::Path) -> Result<String, CudaError> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in SOURCE.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let path = dir.join(format!("kernels-{h:016x}-{arch}.ptx"));
    if let Ok(ptx) = std::fs::read_to_string(&path) {
        return Ok(ptx);
    }
    let ptx = compile(arch)?;
    // A cache that cannot be written costs a compile next time, nothing more.
    if std::fs::create_dir_all(dir).is_ok() {
        let tmp = path.with_extension("ptx.tmp");
        if std::fs::write(&tmp, &ptx).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(ptx)
}

fn driver<T>(r: Result<T, cudarc::driver::DriverError>) -> Result<T, CudaError> {
    r.map_err(|e| CudaError::Driver(e.to_string()))
}

/// Whether the driver library loads. cudarc panics on first use without it, so every
/// entry point here asks first.
#[allow(unsafe_code)]
pub fn driver_present() -> bool {
    // SAFETY: only tries to load the shared library and reports whether it could.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether cuBLAS loads.
#[allow(unsafe_code)]
pub fn cublas_present() -> bool {
    // SAFETY: only tries to load the shared library and reports whether it could.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// Device `ordinal`, once every library [`Cuda`] needs (driver, NVRTC, cuBLAS) loads.
pub fn usable(ordinal: usize) -> Result<CudaDevice, CudaError> {
    let device = CudaDevice::open(ordinal)?;
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    if !cublas_present() {
        return Err(CudaError::NoCublas);
    }
    Ok(device)
}

/// Devices visible to this process.
pub fn device_count() -> Result<usize, CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    Ok(driver(CudaContext::device_count())?.max(0) as usize)
}

/// One device: its context and the stream kernels are queued on.
#[derive(Debug)]
pub struct CudaDevice {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
    pub context: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
}

impl CudaDevice {
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let context = driver(CudaContext::new(ordinal))?;
        Ok(CudaDevice {
            ordinal,
            name: driver(context.name())?,
            compute_capability: driver(context.compute_capability())?,
            memory_bytes: driver(context.total_mem())?,
            stream: context.default_stream(),
            context,
        })
    }
}
