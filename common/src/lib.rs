//! The data model every relgraph crate shares: schemas, time, and loaded databases.
//!
//! - [`schema`]: [`DatabaseSchema`], tables with typed ([`DType`]) and semantic ([`SType`])
//!   columns, primary keys, time columns and foreign keys.
//! - [`Database::load`] reads a directory of CSV / CSV.gz / Parquet tables into Arrow
//!   record batches, infers what the files do not say, and applies `schema.toml`.
//! - [`time`]: instants as seconds since the epoch; parsing and formatting.
//!
//! ```no_run
//! let db = relgraph_common::Database::load("data/retail".as_ref(), None)?;
//! for table in &db.tables {
//!     println!("{}: {} rows, key {:?}", table.name(), table.num_rows(), table.schema.primary_key);
//! }
//! # Ok::<(), relgraph_common::LoadError>(())
//! ```

pub mod database;
pub mod error;
pub mod hash;
pub mod infer;
pub mod pql;
pub mod schema;
pub mod schema_file;
pub mod source;
pub mod time;
mod wire;

pub use database::{Database, NO_ROW, Table, arrow_schema, arrow_type};
pub use error::{LoadError, Location};
pub use schema::{ColumnSchema, DType, DatabaseSchema, ForeignKey, SType, TableSchema};
