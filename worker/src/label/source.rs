//! Where the label engine gets fact rows: [`FactSource`]. [`LocalFacts`] reads a loaded
//! database; a worker whose multi-hop rows live on other workers implements the same
//! trait by fetching them (batched per aggregation, never per entity).

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, TimestampSecondArray};
use rayon::prelude::*;
use relgraph_common::pql::bound::{AggSpec, BoundExpr, ColumnId, Ty, Value};
use relgraph_common::schema::DType;
use relgraph_common::{Database, NO_ROW};

use super::aggregate::{Arg, Linked, RowValues};
use super::eval::{Env, eval, value_at};

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("table `{table}` has no column `{column}`")]
    MissingColumn { table: String, column: String },
    #[error("table `{table}`: the time column is not a timestamp column")]
    BadTime { table: String },
    #[error("no `{table}` with key {key}")]
    UnknownEntity { table: String, key: String },
}

/// The fact rows of an aggregation, linked to a partition's entities.
pub trait FactSource: Sync {
    /// The rows of `spec.table` reaching each of `entities` (rows of the entity table)
    /// through `spec.path`, grouped by the entity's position in `entities`.
    fn linked(&self, spec: &AggSpec, entities: &[usize]) -> Result<Linked, LabelError>;
    /// Per linked row: whether it passes the aggregation's WHERE, and its argument.
    fn row_values(&self, spec: &AggSpec, linked: &Linked) -> RowValues;
}

/// Fact rows read from a database in memory.
#[derive(Debug)]
pub struct LocalFacts<'a> {
    pub db: &'a Database,
}

/// A row of one table, for evaluating an aggregation's argument and WHERE.
#[derive(Debug)]
pub struct RowEnv<'a> {
    pub db: &'a Database,
    pub row: usize,
}

impl Env for RowEnv<'_> {
    fn column(&self, c: ColumnId, dtype: DType) -> Value {
        value_at(
            self.db.tables[c.table].batch.column(c.column),
            dtype,
            self.row,
        )
    }

    fn aggregate(&self, _: usize) -> Value {
        Value::Null
    }
}

fn times_of(db: &Database, table: usize) -> Result<&TimestampSecondArray, LabelError> {
    let t = &db.tables[table];
    let name = t.schema.time_column.clone().unwrap_or_default();
    let column = t.column(&name).ok_or_else(|| LabelError::MissingColumn {
        table: t.name().to_string(),
        column: name,
    })?;
    column
        .as_any()
        .downcast_ref::<TimestampSecondArray>()
        .ok_or_else(|| LabelError::BadTime {
            table: t.name().to_string(),
        })
}

/// A plain numeric column's values, read without going through `Value`.
fn numeric_column(array: &ArrayRef, rows: &[usize]) -> Option<Vec<Option<f64>>> {
    let any = array.as_any();
    if let Some(a) = any.downcast_ref::<Float64Array>() {
        return Some(
            rows.iter()
                .map(|&r| a.is_valid(r).then(|| a.value(r)))
                .collect(),
        );
    }
    any.downcast_ref::<Int64Array>().map(|a| {
        rows.iter()
            .map(|&r| a.is_valid(r).then(|| a.value(r) as f64))
            .collect()
    })
}

impl FactSource for LocalFacts<'_> {
    fn linked(&self, spec: &AggSpec, entities: &[usize]) -> Result<Linked, LabelError> {
        let db = self.db;
        let times = times_of(db, spec.table)?;
        let mut target: Vec<Option<usize>> =
            (0..db.tables[spec.table].num_rows()).map(Some).collect();
        for link in &spec.path {
            let up = db.parent_rows(link.child, link.column, link.parent);
            target = target
                .into_par_iter()
                .map(|r| r.and_then(|r| (up[r] != NO_ROW).then_some(up[r] as usize)))
                .collect();
        }
        let entity_rows = spec
            .path
            .last()
            .map_or(0, |l| db.tables[l.parent].num_rows());
        let mut position = vec![usize::MAX; entity_rows];
        for (p, &e) in entities.iter().enumerate() {
            position[e] = p;
        }
        let items: Vec<(usize, i64, usize)> = target
            .par_iter()
            .enumerate()
            .filter_map(|(row, e)| {
                let p = position[(*e)?];
                (p != usize::MAX && times.is_valid(row)).then(|| (p, times.value(row), row))
            })
            .collect();
        Ok(Linked::group(entities.len(), items))
    }

    fn row_values(&self, spec: &AggSpec, linked: &Linked) -> RowValues {
        let db = self.db;
        let value = |e: &BoundExpr| -> Vec<Value> {
            linked
                .rows
                .par_iter()
                .map(|&row| eval(e, &RowEnv { db, row }))
                .collect()
        };
        let pass = match &spec.filter {
            Some(f) => value(f)
                .into_iter()
                .map(|v| v == Value::Bool(true))
                .collect(),
            None => vec![true; linked.rows.len()],
        };
        let arg = match &spec.arg {
            None => Arg::Star,
            Some(BoundExpr::Column(c, _)) if spec.arg_ty == Ty::Num => {
                numeric_column(db.tables[c.table].batch.column(c.column), &linked.rows).map_or_else(
                    || Arg::Any(value(&BoundExpr::Column(*c, DType::Float64))),
                    Arg::Num,
                )
            }
            Some(e) if spec.arg_ty == Ty::Num => {
                Arg::Num(value(e).iter().map(Value::as_f64).collect())
            }
            Some(e) => Arg::Any(value(e)),
        };
        RowValues { pass, arg }
    }
}
