//! Temporal heterogeneous neighbor sampling (ARCHITECTURE.md §4), the hot path of
//! training and serving. Pure Rust: no tokio, no RocksDB.
//!
//! - [`HeteroGraph`]: every row a node, every foreign key two edge types, each a
//!   time-sorted CSR (12 bytes per directed edge plus 4 per source node).
//! - [`Delta`]: rows appended after the build, visible to sampling at once and folded into
//!   the CSRs by [`HeteroGraph::compact`] (or by `append` itself once a delta grows).
//! - [`GraphView`]: what sampling reads through, batched per edge type; the in-memory
//!   graph implements it, and so does [`Routed`], over a graph split between workers
//!   ([`HeteroGraph::partition`]), each part sampled where it lives.
//! - [`sample`]: seeds (node, anchor) and fanouts per hop (globally or per edge type) give
//!   one disjoint subgraph per seed as a [`SubgraphBatch`], convertible to and from Arrow
//!   record batches.
//! - [`NegativeSampler`]: uniform or popularity-weighted negative items for ranking.
//!
//! ```no_run
//! use relgraph_sampler::{HeteroGraph, SampleConfig, Seed, sample};
//! let db = relgraph_common::Database::load("data/retail".as_ref(), None)?;
//! let graph = HeteroGraph::from_database(&db)?;
//! let seeds = vec![Seed { table: 0, node: 0, anchor: 1_735_689_600 }];
//! let batch = sample(&graph, &seeds, &SampleConfig::default())?;
//! println!("{} nodes, {} edges", batch.num_nodes(), batch.num_edges());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod batch;
pub mod delta;
pub mod graph;
pub mod negative;
pub mod routed;
pub mod temporal;
pub mod view;

pub use batch::{EdgeBlock, NodeBlock, SubgraphBatch};
pub use delta::Delta;
pub use graph::{Csr, EdgeType, GraphError, HeteroGraph, STATIC, Segment};
pub use negative::NegativeSampler;
pub use routed::{Owners, Routed, Shard, owner};
pub use temporal::{SampleConfig, SampleError, Seed, auto_chunk, sample};
pub use view::{GraphView, Neighbor, Request, Strategy};
