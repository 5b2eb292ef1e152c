//! The planner: a validated [`Task`] plus the data's time range gives anchor times per
//! split (PQL.md §5). Temporal targets replay history: anchors step back from the last
//! timestamp of the target's tables by the target window's length; the most recent fully
//! observed anchor is the test split, the one before it validation, the rest training,
//! and no training window overlaps the validation window. Static targets split entities.

use std::fmt::Write as _;

use super::bound::{Target, Task, TaskType, Window};
use crate::database::Database;
use crate::time::format_timestamp;

/// Which split an example belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Val,
    Test,
    /// Labels at anchors the user gave.
    Predict,
}

impl Split {
    pub const ALL: [Split; 4] = [Split::Train, Split::Val, Split::Test, Split::Predict];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
            Split::Predict => "predict",
        }
    }
}

/// How examples are split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Splits {
    /// Temporal target: anchors per split, oldest first within training.
    Temporal {
        train: Vec<i64>,
        val: i64,
        test: i64,
    },
    /// Static target: one anchor; entities split by time (if the entity table has one)
    /// or by a hash of the key, 80/10/10.
    Static { anchor: i64, by_time: bool },
    /// Anchors given by the user: every example is for prediction.
    Given(Vec<i64>),
}

/// A task ready for the label engine.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskPlan {
    pub task: Task,
    pub splits: Splits,
    /// Seconds between consecutive anchors (temporal targets).
    pub step: i64,
    /// The window of one label; for forecasts, of one step.
    pub window: Option<Window>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("the target's tables hold no timestamps, so there is no history to learn from")]
    NoTimes,
    #[error(
        "not enough history: the data spans {span_days:.1} days, but one label needs {need_days:.1} days after the first timestamp plus one step for validation"
    )]
    TooShort { span_days: f64, need_days: f64 },
    #[error("the step must be positive, got {0} s")]
    BadStep(i64),
}

/// Options of the planner.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Seconds between anchors; default: the target window's length.
    pub step: Option<i64>,
    /// Explicit anchor times (prediction): no splits are made.
    pub anchors: Vec<i64>,
}

/// The smallest and largest time over the time columns of `tables`.
pub fn time_range(db: &Database, tables: impl IntoIterator<Item = usize>) -> Option<(i64, i64)> {
    let ranges: Vec<Option<(i64, i64)>> = tables.into_iter().map(|t| table_range(db, t)).collect();
    span(&ranges, 0..ranges.len())
}

/// Each table's smallest and largest time (None for a table without times): what
/// planning reads of the rows, for [`plan_over`].
pub fn time_ranges(db: &Database) -> Vec<Option<(i64, i64)>> {
    (0..db.tables.len()).map(|t| table_range(db, t)).collect()
}

fn table_range(db: &Database, t: usize) -> Option<(i64, i64)> {
    use arrow::array::{Array, TimestampSecondArray};
    let table = &db.tables[t];
    let column = table
        .schema
        .time_column
        .as_ref()
        .and_then(|c| table.column(c))?;
    let times = column.as_any().downcast_ref::<TimestampSecondArray>()?;
    Some((arrow::compute::min(times)?, arrow::compute::max(times)?))
}

/// The span of `ranges` (per table) over `tables`.
fn span(
    ranges: &[Option<(i64, i64)>],
    tables: impl IntoIterator<Item = usize>,
) -> Option<(i64, i64)> {
    tables
        .into_iter()
        .filter_map(|t| ranges.get(t).copied().flatten())
        .reduce(|(a, b), (lo, hi)| (a.min(lo), b.max(hi)))
}

/// Plans `task` over `db` (whose schema the task was validated against).
pub fn plan(task: Task, db: &Database, options: &PlanOptions) -> Result<TaskPlan, PlanError> {
    let timed = db.tables[task.entity_table].schema.time_column.is_some();
    plan_over(task, &time_ranges(db), timed, options)
}

/// [`plan`] from what it reads of the rows: each table's [`time_ranges`], and whether the
/// entity table has a time column.
pub fn plan_over(
    task: Task,
    ranges: &[Option<(i64, i64)>],
    entity_timed: bool,
    options: &PlanOptions,
) -> Result<TaskPlan, PlanError> {
    if let Some(step) = options.step.filter(|s| *s <= 0) {
        return Err(PlanError::BadStep(step));
    }
    let window = task.target_window();
    let steps = match task.task {
        TaskType::Forecast { steps } => i64::from(steps),
        _ => 1,
    };
    let Some(w) = window else {
        let anchor = span(ranges, 0..ranges.len()).map_or(0, |r| r.1);
        let by_time = entity_timed;
        let splits = if options.anchors.is_empty() {
            Splits::Static { anchor, by_time }
        } else {
            Splits::Given(options.anchors.clone())
        };
        return Ok(TaskPlan {
            task,
            splits,
            step: 0,
            window: None,
        });
    };
    let length = w.length().unwrap_or(w.end).max(1);
    let step = options.step.unwrap_or(length);
    if !options.anchors.is_empty() {
        return Ok(TaskPlan {
            task,
            splits: Splits::Given(options.anchors.clone()),
            step,
            window,
        });
    }
    let mut tables = Vec::new();
    if let Target::Expr(e) = &task.target {
        e.aggregates(&mut |i| tables.push(task.aggregates[i].table));
    }
    if let Target::Items(i) | Target::Forecast(i) = task.target {
        tables.push(task.aggregates[i].table);
    }
    let (first, last) = span(ranges, tables).ok_or(PlanError::NoTimes)?;
    // Whole-day windows and steps anchor at midnight (UTC), as a person would.
    let day = crate::time::DAY;
    let last = if length % day == 0 && step % day == 0 {
        last.div_euclid(day) * day
    } else {
        last
    };
    let horizon = w.end + (steps - 1) * length;
    let test = last - horizon;
    // Validation labels end where test labels begin (a forecast's label spans several steps).
    let val = test - step.max(horizon - w.start.unwrap_or(0));
    if val < first {
        let day = 86_400.0;
        return Err(PlanError::TooShort {
            span_days: (last - first) as f64 / day,
            need_days: (horizon + step) as f64 / day,
        });
    }
    let val_start = val + w.start.unwrap_or(0);
    let mut train: Vec<i64> = std::iter::successors(Some(val - step), |t| Some(t - step))
        .take_while(|&t| t >= first)
        .filter(|&t| t + horizon <= val_start)
        .collect();
    train.reverse();
    Ok(TaskPlan {
        task,
        splits: Splits::Temporal { train, val, test },
        step,
        window,
    })
}

impl TaskPlan {
    /// Anchors with their splits, in time order; `None` where each entity has its own
    /// split (static targets).
    pub fn anchors(&self) -> Vec<(i64, Option<Split>)> {
        match &self.splits {
            Splits::Temporal { train, val, test } => train
                .iter()
                .map(|&t| (t, Some(Split::Train)))
                .chain([(*val, Some(Split::Val)), (*test, Some(Split::Test))])
                .collect(),
            Splits::Static { anchor, .. } => vec![(*anchor, None)],
            Splits::Given(anchors) => anchors.iter().map(|&t| (t, Some(Split::Predict))).collect(),
        }
    }

    /// The absolute span of the labels at `anchor`, e.g. ` (labels from (a, b])`.
    fn label_span(&self, anchor: i64) -> String {
        let Some(w) = self.window else {
            return String::new();
        };
        let steps = match self.task.task {
            TaskType::Forecast { steps } => i64::from(steps),
            _ => 1,
        };
        let end = anchor + w.end + (steps - 1) * w.length().unwrap_or(w.end);
        let start = w
            .start
            .map_or("-INF".to_string(), |s| format_timestamp(anchor + s));
        format!("  (labels from ({start}, {}])", format_timestamp(end))
    }

    /// The anchors in words.
    pub fn describe_anchors(&self) -> String {
        let mut out = String::new();
        match &self.splits {
            Splits::Temporal { train, val, test } => {
                let _ = writeln!(
                    out,
                    "anchors: every {} s ({:.1} days)",
                    self.step,
                    self.step as f64 / 86_400.0
                );
                if let (Some(a), Some(b)) = (train.first(), train.last()) {
                    let _ = writeln!(
                        out,
                        "  train: {} anchors, {} .. {}",
                        train.len(),
                        format_timestamp(*a),
                        format_timestamp(*b)
                    );
                } else {
                    let _ = writeln!(out, "  train: no anchors (the history is one step long)");
                }
                let _ = writeln!(
                    out,
                    "  val:   {}{}",
                    format_timestamp(*val),
                    self.label_span(*val)
                );
                let _ = writeln!(
                    out,
                    "  test:  {}{}",
                    format_timestamp(*test),
                    self.label_span(*test)
                );
            }
            Splits::Static { anchor, by_time } => {
                let how = if *by_time {
                    "by the entity's time (latest 10% test, the 10% before val)"
                } else {
                    "by key hash, 80/10/10"
                };
                let _ = writeln!(
                    out,
                    "anchor: {} (static target); entities split {how}",
                    format_timestamp(*anchor)
                );
            }
            Splits::Given(anchors) => {
                let shown: Vec<String> = anchors.iter().map(|t| format_timestamp(*t)).collect();
                let _ = writeln!(out, "anchors (predict): {}", shown.join(", "));
            }
        }
        out
    }
}
