//! The relational GNN (ARCHITECTURE.md §5) and its training, evaluation and prediction.
//!
//! - [`features`]: column encoders by semantic type, fitted on the data and saved.
//! - [`batch`]: a sampled subgraph laid out for one forward pass.
//! - [`net`]: per-table encoders, relative-time encoding, heterogeneous SAGE layers and
//!   the task heads, as calls on a kernels [`Tape`](relgraph_kernels::Tape).
//! - [`task`]: labels as targets, outputs as predictions, metrics and baselines.
//! - [`trainer`]: minibatch training with a loader thread, validation, early stopping.
//! - [`explain`]: attributions of an output to tables, columns and linked rows.
//! - [`checkpoint`]: the saved model's format.
//! - [`fit`]: one task end to end, and scoring a saved model again.

pub mod batch;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod explain;
pub mod features;
pub mod fit;
pub mod metrics;
pub mod net;
pub mod parallel;
pub mod task;
pub mod trainer;

pub use checkpoint::{Manifest, load, load_train_state, read_manifest, save, save_train_state};
pub use config::TrainConfig;
pub use fit::{
    Assessment, PastValues, Rows, Setup, assess, fit, fit_codes, predict, setup, setup_with,
    split_metrics,
};
pub use task::{Output, TargetCode};
pub use trainer::{
    GraphSplit, Inputs, Model, ModelError, Prepared, Progress, RankParts, Session, SplitData,
    Together, TrainReport, TrainState,
};
