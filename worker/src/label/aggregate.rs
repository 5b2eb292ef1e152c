//! Aggregations over the fact rows linked to an entity, within a window (PQL.md §2-3).
//!
//! Rows are grouped per entity and sorted by time once; a window is then two binary
//! searches, and each aggregate touches only the rows inside it.

use std::collections::HashSet;

use rayon::slice::ParallelSliceMut;

use relgraph_common::pql::ast::AggFunc;
use relgraph_common::pql::bound::{AggSpec, Value, Window};

/// Fact rows grouped by entity (CSR): entity `i` owns `rows[offsets[i]..offsets[i + 1]]`,
/// sorted by `times` (ties in row order).
#[derive(Debug, Default)]
pub struct Linked {
    pub offsets: Vec<usize>,
    pub rows: Vec<usize>,
    pub times: Vec<i64>,
}

impl Linked {
    /// Groups `(entity, time, row)` triples; `entities` is the number of entities.
    pub fn group(entities: usize, mut items: Vec<(usize, i64, usize)>) -> Linked {
        items.par_sort_unstable_by_key(|&(e, t, r)| (e, t, r));
        let mut offsets = vec![0usize; entities + 1];
        for &(e, _, _) in &items {
            offsets[e + 1] += 1;
        }
        for i in 0..entities {
            offsets[i + 1] += offsets[i];
        }
        Linked {
            offsets,
            rows: items.iter().map(|x| x.2).collect(),
            times: items.iter().map(|x| x.1).collect(),
        }
    }

    /// The positions (into `rows`) of entity `e`'s rows inside `window` around `anchor`.
    pub fn range(&self, e: usize, window: &Window, anchor: i64) -> std::ops::Range<usize> {
        let (lo, hi) = (self.offsets[e], self.offsets[e + 1]);
        let times = &self.times[lo..hi];
        let start = match window.start {
            Some(s) => times.partition_point(|&t| t <= anchor.saturating_add(s)),
            None => 0,
        };
        let end = times.partition_point(|&t| t <= anchor.saturating_add(window.end));
        lo + start..lo + end.max(start)
    }
}

/// Per linked row (same order as `Linked::rows`): whether it passes the aggregation's
/// WHERE, and its argument.
#[derive(Debug)]
pub struct RowValues {
    pub pass: Vec<bool>,
    pub arg: Arg,
}

#[derive(Debug)]
pub enum Arg {
    /// `t.*`: every row counts.
    Star,
    Num(Vec<Option<f64>>),
    Any(Vec<Value>),
}

/// The aggregate of the rows at `positions`. Empty windows give 0 / false for COUNT,
/// SUM, COUNT_DISTINCT and BOOL and NULL (undefined) for the others; a SUM over rows
/// whose values are all NULL is NULL, as in SQL.
pub fn aggregate(spec: &AggSpec, values: &RowValues, positions: std::ops::Range<usize>) -> Value {
    let mut passing = positions.filter(|&p| values.pass[p]).peekable();
    if passing.peek().is_none() {
        return match spec.func {
            AggFunc::Count | AggFunc::Sum | AggFunc::CountDistinct => Value::Int(0),
            AggFunc::Bool => Value::Bool(false),
            _ => Value::Null,
        };
    }
    match &values.arg {
        Arg::Star => Value::Int(passing.count() as i64),
        Arg::Num(v) => numeric(spec.func, passing.filter_map(|p| v[p])),
        Arg::Any(v) => general(
            spec.func,
            passing.map(|p| &v[p]).filter(|x| **x != Value::Null),
        ),
    }
}

fn numeric(func: AggFunc, values: impl Iterator<Item = f64>) -> Value {
    let (mut n, mut sum, mut min, mut max) = (0usize, 0.0f64, f64::INFINITY, f64::NEG_INFINITY);
    let (mut first, mut last) = (None, None);
    let mut distinct = HashSet::new();
    for x in values {
        n += 1;
        sum += x;
        min = min.min(x);
        max = max.max(x);
        first.get_or_insert(x);
        last = Some(x);
        if func == AggFunc::CountDistinct {
            distinct.insert(x.to_bits());
        }
    }
    match func {
        AggFunc::Count => Value::Int(n as i64),
        AggFunc::CountDistinct => Value::Int(distinct.len() as i64),
        AggFunc::Bool => Value::Bool(n > 0),
        _ if n == 0 => Value::Null,
        AggFunc::Sum => Value::Float(sum),
        AggFunc::Avg => Value::Float(sum / n as f64),
        AggFunc::Min => Value::Float(min),
        AggFunc::Max => Value::Float(max),
        AggFunc::First => first.map_or(Value::Null, Value::Float),
        AggFunc::Last => last.map_or(Value::Null, Value::Float),
        AggFunc::ListDistinct => Value::Null,
    }
}

fn general<'a>(func: AggFunc, values: impl Iterator<Item = &'a Value>) -> Value {
    let values: Vec<&Value> = values.collect();
    let ordered = |better: std::cmp::Ordering| {
        values
            .iter()
            .copied()
            .reduce(|a, b| {
                if super::eval::compare(b, a) == Some(better) {
                    b
                } else {
                    a
                }
            })
            .cloned()
            .unwrap_or(Value::Null)
    };
    match func {
        AggFunc::Count => Value::Int(values.len() as i64),
        AggFunc::Bool => Value::Bool(!values.is_empty()),
        AggFunc::CountDistinct => Value::Int(distinct(&values).len() as i64),
        AggFunc::First => values.first().map_or(Value::Null, |v| (*v).clone()),
        AggFunc::Last => values.last().map_or(Value::Null, |v| (*v).clone()),
        AggFunc::Min => ordered(std::cmp::Ordering::Less),
        AggFunc::Max => ordered(std::cmp::Ordering::Greater),
        AggFunc::Sum | AggFunc::Avg | AggFunc::ListDistinct => Value::Null,
    }
}

/// `LIST_DISTINCT`: the distinct non-null items of the passing rows, in time order.
pub fn items(values: &RowValues, positions: std::ops::Range<usize>) -> Vec<String> {
    let Arg::Any(v) = &values.arg else {
        return Vec::new();
    };
    let present: Vec<&Value> = positions
        .filter(|&p| values.pass[p] && v[p] != Value::Null)
        .map(|p| &v[p])
        .collect();
    distinct(&present).into_iter().map(key_text).collect()
}

/// Distinct values in order of first appearance.
fn distinct<'a>(values: &[&'a Value]) -> Vec<&'a Value> {
    let mut seen = HashSet::new();
    values
        .iter()
        .copied()
        .filter(|v| seen.insert(key_text(v)))
        .collect()
}

/// A value as an item key.
pub fn key_text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_left_open_right_closed() {
        let linked = Linked::group(
            2,
            vec![(0, 10, 0), (0, 20, 1), (0, 30, 2), (1, 5, 3), (0, 20, 4)],
        );
        assert_eq!(linked.offsets, vec![0, 4, 5]);
        assert_eq!(linked.times, vec![10, 20, 20, 30, 5]);
        let w = |start, end| Window { start, end };
        assert_eq!(
            linked.range(0, &w(Some(0), 10), 10),
            1..3,
            "(10, 20] holds both rows at 20"
        );
        assert_eq!(linked.range(0, &w(Some(-10), 0), 20), 1..3, "(10, 20]");
        assert_eq!(linked.range(0, &w(None, 0), 19), 0..1);
        assert_eq!(linked.range(0, &w(Some(0), 5), 30), 4..4);
        assert_eq!(linked.range(1, &w(None, 0), 100), 4..5);
    }
}
