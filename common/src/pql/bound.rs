//! Validated queries: names resolved to tables and columns, types checked, windows in
//! seconds. This is what the planner and the label engine work from.

use std::fmt;

use super::ast::{AggFunc, ArithOp, CmpOp, Mode, StrOp};
use crate::schema::DType;

/// A value of an expression; `Null` is SQL's unknown.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Seconds since the epoch.
    Time(i64),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            Value::Time(t) => Some(t as f64),
            Value::Bool(b) => Some(f64::from(u8::from(b))),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "'{s}'"),
            Value::Time(t) => write!(f, "{}", crate::time::format_timestamp(*t)),
        }
    }
}

/// The type of an expression, for checking operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Bool,
    Num,
    Str,
    Time,
    /// The literal NULL: fits anywhere.
    Null,
}

impl Ty {
    pub fn of(dtype: DType) -> Ty {
        match dtype {
            DType::Bool => Ty::Bool,
            DType::Int64 | DType::Float64 => Ty::Num,
            DType::String => Ty::Str,
            DType::Timestamp => Ty::Time,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Ty::Bool => "a condition",
            Ty::Num => "a number",
            Ty::Str => "text",
            Ty::Time => "a timestamp",
            Ty::Null => "NULL",
        }
    }

    /// Whether values of the two types can be compared with `=`, `<`, ...
    pub fn comparable(self, other: Ty) -> bool {
        self == other || self == Ty::Null || other == Ty::Null
    }
}

/// A column of a table, by index into the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnId {
    pub table: usize,
    pub column: usize,
}

/// An expression with names resolved. Over entities (columns of the entity table and
/// aggregates), or over the rows of one fact table (inside an aggregation).
#[derive(Clone, Debug, PartialEq)]
pub enum BoundExpr {
    Const(Value),
    Column(ColumnId, DType),
    /// The value of `TaskPlan::aggregates[i]` for the entity at the anchor.
    Agg(usize),
    Neg(Box<BoundExpr>),
    Not(Box<BoundExpr>),
    And(Box<BoundExpr>, Box<BoundExpr>),
    Or(Box<BoundExpr>, Box<BoundExpr>),
    Cmp(CmpOp, Box<BoundExpr>, Box<BoundExpr>),
    Arith(ArithOp, Box<BoundExpr>, Box<BoundExpr>),
    IsNull(Box<BoundExpr>, bool),
    InList(Box<BoundExpr>, Vec<Value>, bool),
    Str(StrOp, Box<BoundExpr>, String, bool),
}

impl BoundExpr {
    /// Calls `f` on every aggregate index the expression uses.
    pub fn aggregates(&self, f: &mut impl FnMut(usize)) {
        match self {
            BoundExpr::Agg(i) => f(*i),
            BoundExpr::Const(_) | BoundExpr::Column(..) => {}
            BoundExpr::Neg(e) | BoundExpr::Not(e) | BoundExpr::IsNull(e, _) => e.aggregates(f),
            BoundExpr::InList(e, ..) | BoundExpr::Str(_, e, ..) => e.aggregates(f),
            BoundExpr::And(a, b)
            | BoundExpr::Or(a, b)
            | BoundExpr::Cmp(_, a, b)
            | BoundExpr::Arith(_, a, b) => {
                a.aggregates(f);
                b.aggregates(f);
            }
        }
    }
}

/// One step of a path of foreign keys: rows of `child` point at rows of `parent` through
/// column `column` of `child`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub child: usize,
    pub column: usize,
    pub parent: usize,
}

/// A window relative to the anchor t: rows with t + start < time <= t + end (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// `None` is -INF.
    pub start: Option<i64>,
    pub end: i64,
}

impl Window {
    pub fn contains(&self, anchor: i64, time: i64) -> bool {
        self.start.is_none_or(|s| time > anchor + s) && time <= anchor + self.end
    }

    pub fn length(&self) -> Option<i64> {
        self.start.map(|s| self.end - s)
    }
}

/// An aggregation over the fact rows linked to an entity, within a window.
#[derive(Clone, Debug, PartialEq)]
pub struct AggSpec {
    pub func: AggFunc,
    /// The table aggregated over.
    pub table: usize,
    /// Foreign keys from `table` up to the entity table (at least one step).
    pub path: Vec<Link>,
    /// The value per row; `None` for `t.*`.
    pub arg: Option<BoundExpr>,
    pub arg_ty: Ty,
    /// `FIRST`/`LAST`/`LIST_DISTINCT`/`COUNT_DISTINCT` of a key column: its dtype.
    pub arg_dtype: Option<DType>,
    pub filter: Option<BoundExpr>,
    pub window: Window,
    /// The aggregation as the user wrote it, canonicalised.
    pub text: String,
}

impl AggSpec {
    /// The type of the aggregate's value.
    pub fn ty(&self) -> Ty {
        match self.func {
            AggFunc::Count | AggFunc::CountDistinct | AggFunc::Sum | AggFunc::Avg => Ty::Num,
            AggFunc::Bool => Ty::Bool,
            AggFunc::Min | AggFunc::Max | AggFunc::First | AggFunc::Last => self.arg_ty,
            AggFunc::ListDistinct => Ty::Str,
        }
    }
}

/// What is predicted, which decides the loss and the metrics (PQL.md §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskType {
    Binary,
    Regression,
    Multiclass,
    /// Top `k` items of table `items` (index into the schema).
    Ranking {
        k: u32,
        items: usize,
    },
    Forecast {
        steps: u32,
    },
}

impl TaskType {
    pub fn name(&self) -> &'static str {
        match self {
            TaskType::Binary => "binary classification",
            TaskType::Regression => "regression",
            TaskType::Multiclass => "multiclass classification",
            TaskType::Ranking { .. } => "link prediction (ranking)",
            TaskType::Forecast { .. } => "forecasting",
        }
    }

    pub fn loss(&self) -> &'static str {
        match self {
            TaskType::Binary => "BCE",
            TaskType::Regression | TaskType::Forecast { .. } => "L1",
            TaskType::Multiclass => "cross-entropy",
            TaskType::Ranking { .. } => "sampled softmax",
        }
    }

    pub fn metrics(&self) -> Vec<String> {
        let names: &[&str] = match self {
            TaskType::Binary => &["auroc", "ap", "accuracy", "f1", "log_loss"],
            TaskType::Regression => &["mae", "rmse", "r2", "smape"],
            TaskType::Multiclass => &["accuracy", "macro_f1", "mrr"],
            TaskType::Forecast { .. } => &["mae", "rmse", "smape"],
            TaskType::Ranking { k, .. } => {
                return ["map", "ndcg", "recall", "precision", "hit_rate"]
                    .iter()
                    .map(|m| format!("{m}@{k}"))
                    .chain(std::iter::once("mrr".to_string()))
                    .collect();
            }
        };
        names.iter().map(|m| m.to_string()).collect()
    }

    pub fn baseline(&self) -> &'static str {
        match self {
            TaskType::Binary | TaskType::Multiclass => "majority class",
            TaskType::Regression | TaskType::Forecast { .. } => {
                "global mean, and the entity's past value of the same aggregation"
            }
            TaskType::Ranking { .. } => "most popular items",
        }
    }
}

/// The target of a validated query.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A condition or a number computed per (entity, anchor).
    Expr(BoundExpr),
    /// A column of the entity table itself (static target).
    Column(ColumnId, DType),
    /// The distinct items `aggregates[i]` (a `LIST_DISTINCT`) links to.
    Items(usize),
    /// `aggregates[i]` over `steps` consecutive windows.
    Forecast(usize),
}

/// A query checked against a schema: everything but the anchor times, which need data.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub mode: Mode,
    pub task: TaskType,
    pub entity_table: usize,
    pub entity_key: usize,
    /// `FOR t.pk = x` / `IN (...)`: the entities to score.
    pub ids: Option<Vec<Value>>,
    pub target: Target,
    pub filter: Option<BoundExpr>,
    pub assuming: Option<BoundExpr>,
    pub aggregates: Vec<AggSpec>,
    /// Decisions the validator took that the user should see (e.g. which link it used).
    pub notes: Vec<String>,
}

impl Task {
    /// The target's window: the union of the forward windows of the target's aggregations.
    pub fn target_window(&self) -> Option<Window> {
        let mut used = Vec::new();
        match &self.target {
            Target::Expr(e) => e.aggregates(&mut |i| used.push(i)),
            Target::Items(i) | Target::Forecast(i) => used.push(*i),
            Target::Column(..) => {}
        }
        let windows: Vec<Window> = used
            .iter()
            .map(|&i| self.aggregates[i].window)
            .filter(|w| w.end > 0)
            .collect();
        let start = windows.iter().map(|w| w.start.unwrap_or(i64::MIN)).min()?;
        let end = windows.iter().map(|w| w.end).max()?;
        Some(Window {
            start: (start != i64::MIN).then_some(start),
            end,
        })
    }
}
