//! The coordinator (ARCHITECTURE.md §7): Raft metadata (raft-rs) persisted in RocksDB,
//! membership, worker leases, the job scheduler and the admin gRPC API.
//!
//! - [`store`]: the Raft log, hard state and snapshots in RocksDB.
//! - [`state`]: the replicated state machine (workers, tables, jobs, models).
//! - [`core`]: one replica driven synchronously (`tick`, `step`, `propose`, `ready`).
//! - [`node`]: a replica on its own thread; [`service`]: it on the network (Raft
//!   transport and admin API over tonic, leases, scheduler); [`client`]: the admin API
//!   with leader redirects; [`auth`]: bearer tokens; [`tls`]: TLS when configured.

pub mod auth;
pub mod client;
pub mod core;
pub mod metrics;
pub mod node;
pub mod service;
pub mod state;
pub mod store;
pub mod tls;

/// A slog logger that drops raft-rs's log lines (relgraph logs through `tracing`).
pub fn quiet_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}
