//! Protobuf messages of relgraph, generated at build time by a vendored `protoc`.
//!
//! `relgraph.v1` holds the messages the control plane stores and exchanges; the
//! conversions to and from the Rust data model live beside that model (`relgraph-common`).
//! `relgraph.cluster.v1` (feature `grpc`) holds the coordinators' replicated metadata,
//! their Raft transport and the admin API, with tonic clients and servers.

/// Package `relgraph.v1`.
#[allow(missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/relgraph.v1.rs"));
}

/// Package `relgraph.cluster.v1`.
#[cfg(feature = "grpc")]
#[allow(missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod cluster {
    include!(concat!(env!("OUT_DIR"), "/relgraph.cluster.v1.rs"));
}
