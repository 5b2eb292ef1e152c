//! The worker (ARCHITECTURE.md §3, §5, §8): partition store on RocksDB, the Flight data
//! plane, label engine, model, trainer and scorer.
//!
//! Not built yet: this crate is a member of the workspace so that the dependency
//! direction (`sampler`, `kernels` ← `worker`) is fixed from the start.
