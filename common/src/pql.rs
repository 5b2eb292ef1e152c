//! PQL, the Predictive Query Language (see `shared/PQL.md`): lexer, parser, validator and
//! planner. A query becomes a [`TaskPlan`] that the label engine, trainer and server use.
//!
//! ```
//! let query = relgraph_common::pql::parse("PREDICT COUNT(orders.*, 0, 30, days) > 0 FOR EACH customers.customer_id")?;
//! assert!(query.entity.each);
//! # Ok::<(), relgraph_common::pql::PqlError>(())
//! ```

pub mod ast;
pub mod bound;
mod describe;
pub mod error;
pub mod lexer;
pub mod parser;
pub mod plan;
pub mod validate;

pub use bound::{Task, TaskType};
pub use error::{PqlError, Span};
pub use parser::parse;
pub use plan::{PlanError, PlanOptions, Split, Splits, TaskPlan, plan};
pub use validate::validate;

/// Parses `text` and validates it against `schema`.
pub fn compile(text: &str, schema: &crate::DatabaseSchema) -> Result<Task, PqlError> {
    parse(text).and_then(|query| validate(&query, schema))
}
