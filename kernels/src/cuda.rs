//! CUDA devices through cudarc, loaded at run time (feature `cuda`): nothing CUDA is
//! needed to build or to run, and a machine without a driver gets an error, not a crash.
//! This is the device layer a CUDA [`crate::Backend`] will stand on (a context and its
//! stream per device, on which kernels launch asynchronously); the CUDA kernels are not
//! written yet.

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
