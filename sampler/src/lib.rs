//! Temporal heterogeneous neighbor sampling (ARCHITECTURE.md §4): time-sorted CSR per
//! edge type, `GraphView`, seeds with anchor times, fanouts, and subgraph batches.
//!
//! Not built yet: this crate is a member of the workspace so that the dependency
//! direction (`common` ← `sampler`, no tokio / tonic / RocksDB) is fixed from the start.
