//! Tensor ops with hand-written forward and backward passes (ARCHITECTURE.md §6).
//!
//! - [`Backend`]: the kernels, over the backend's own buffers, launched in stream order;
//!   [`Tensor`] is a dense row-major matrix in a backend's memory.
//! - [`Cpu`]: the CPU backend (`gemm` for matrix products, rayon for the rest), generic
//!   over `f32` (training) and `f64` (the finite-difference reference in the tests).
//! - [`Tape`]: a forward pass written as plain calls, whose backward runs each op's
//!   hand-written backward in reverse order; [`Params`] holds parameters and Adam(W)
//!   state, with sparse row updates for embedding tables.
//! - `cuda` (feature): `cuda::Cuda`, the backend on a CUDA device through cudarc (loaded
//!   at run time: builds and runs without CUDA), launching the hand-written kernels
//!   compiled by NVRTC, cuBLAS for GEMM; [`launch`]: the kernels' signatures and index
//!   arithmetic, checked over simulated grids.

pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod launch;
pub mod real;
pub mod tape;

pub use backend::{Activation, AdamConfig, Backend, Index, Loss, Reduce, Tensor};
pub use cpu::Cpu;
pub use real::Real;
pub use tape::{Backward, Grads, ParamId, Params, Tape, Var};

/// Where the model runs, as an operator names it: `cpu`, `cuda` (device 0), `cuda:N`, or
/// `auto` (the first CUDA device when the `cuda` feature finds one, else the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("device `{0}`: expected cpu, cuda, cuda:N or auto")]
    Unknown(String),
    #[error("device `{0}`: this build has no CUDA support (build with --features cuda)")]
    NoCudaSupport(String),
    #[error("device `{name}`: {problem}")]
    Unavailable { name: String, problem: String },
}

impl Device {
    /// Resolves an operator's choice against what this build and machine have, with a
    /// line saying what was chosen and, for `auto` on the CPU, why no GPU was.
    pub fn choose(name: &str) -> Result<(Device, String), DeviceError> {
        let cpu = || format!("cpu ({} threads)", rayon::current_num_threads());
        let wanted = match name {
            "cpu" => return Ok((Device::Cpu, cpu())),
            "auto" => None,
            "cuda" => Some(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Some(n),
                _ => return Err(DeviceError::Unknown(name.to_string())),
            },
        };
        #[cfg(feature = "cuda")]
        {
            match cuda::usable(wanted.unwrap_or(0)) {
                Ok(d) => Ok((
                    Device::Cuda(d.ordinal),
                    format!(
                        "cuda:{} ({}, sm_{}{})",
                        d.ordinal, d.name, d.compute_capability.0, d.compute_capability.1
                    ),
                )),
                Err(e) if wanted.is_none() => Ok((Device::Cpu, format!("{} (auto: {e})", cpu()))),
                Err(e) => Err(DeviceError::Unavailable {
                    name: name.to_string(),
                    problem: e.to_string(),
                }),
            }
        }
        #[cfg(not(feature = "cuda"))]
        match wanted {
            None => Ok((
                Device::Cpu,
                format!("{} (auto: built without CUDA support)", cpu()),
            )),
            Some(_) => Err(DeviceError::NoCudaSupport(name.to_string())),
        }
    }
}
