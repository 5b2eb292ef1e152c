//! The coordinator (ARCHITECTURE.md §7): Raft metadata (raft-rs), membership, placement,
//! the job scheduler and the admin gRPC API.
//!
//! Not built yet: this crate is a member of the workspace so that the dependency
//! direction (`coordinator` never depends on `worker`) is fixed from the start.
