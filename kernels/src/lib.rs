//! Tensor ops with hand-written forward and backward passes (ARCHITECTURE.md §6): a CPU
//! backend always, CUDA behind the `cuda` feature.
//!
//! Not built yet: this crate is a member of the workspace so that the dependency
//! direction (`common` ← `kernels`, no tokio / tonic / RocksDB) is fixed from the start.
