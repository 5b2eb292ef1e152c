//! The worker (ARCHITECTURE.md §3, §5, §8). Built so far: the label engine ([`label`]),
//! which turns a planned PQL task into its training table, one partition of entities at
//! a time; and the model ([`model`]): column encoders, the relational GNN, its trainer,
//! evaluation against baselines, checkpoints and prediction, on one machine. The
//! partition store and the Flight data plane come with later issues.
//!
//! ```no_run
//! use relgraph_common::{Database, pql};
//! use relgraph_worker::label::{LocalFacts, build};
//!
//! let db = Database::load("data/retail".as_ref(), None)?;
//! let query = pql::parse("PREDICT COUNT(orders.*, 0, 30, days) > 0 FOR EACH customers.customer_id")?;
//! let task = pql::validate(&query, &db.schema())?;
//! let plan = pql::plan(task, &db, &pql::PlanOptions::default())?;
//! let everyone: Vec<usize> = (0..db.tables[plan.task.entity_table].num_rows()).collect();
//! let labels = build(&plan, &db, &everyone, &LocalFacts { db: &db })?;
//! println!("{} examples", labels.labels.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod label;
pub mod model;
pub mod store;
