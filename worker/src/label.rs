//! The label engine: the training table (entity, anchor time, label, split) of a planned
//! PQL task (PQL.md §3, §5).
//!
//! At each anchor t, an entity is an example if it exists at t (its own time ≤ t), its
//! WHERE holds on the past, and its ASSUMING holds on the future (the conditional reading
//! of PQL.md §7). The target is computed on the future, with windows left-open and
//! right-closed and SQL's three-valued logic; unknown counts as false in WHERE, ASSUMING
//! and conditions. A target that is undefined (AVG, MIN, MAX, FIRST, LAST over an empty
//! window; an empty LIST_DISTINCT; a NULL static column) drops the example, and the drop is
//! counted. The engine works on one partition of entities at a time; fact rows come
//! through [`FactSource`], so rows owned by other workers can be fetched.

mod aggregate;
mod eval;
mod source;

use std::collections::BTreeMap;

use arrow::array::{Array, TimestampSecondArray};
use rayon::prelude::*;
use relgraph_common::Database;
use relgraph_common::pql::bound::{AggSpec, BoundExpr, ColumnId, Target, TaskType, Value};
use relgraph_common::pql::{Split, Splits, TaskPlan};
use relgraph_common::schema::DType;

pub use aggregate::{Arg, Linked, RowValues, key_text};
pub use eval::{Env, compare, eval, like, value_at};
pub use source::{FactSource, LabelError, LocalFacts, RowEnv};

/// Why a candidate example has no label ([`Labels::dropped`]).
pub mod drop {
    pub const WHERE: &str = "WHERE is false or unknown";
    pub const ASSUMING: &str = "ASSUMING is false or unknown";
    pub const NO_ITEMS: &str = "no items in the target window";
    pub const UNDEFINED: &str = "the target is undefined (empty window or NULL)";
    pub const NOT_NUMBER: &str = "the target is not a number";
    pub const NOT_FORECAST: &str = "the target is not a forecast";
    pub const STEP_UNDEFINED: &str = "a forecast step is undefined (empty window)";

    /// Every reason, so that counts read back from another worker keep their names.
    pub const ALL: [&str; 7] = [
        WHERE,
        ASSUMING,
        NO_ITEMS,
        UNDEFINED,
        NOT_NUMBER,
        NOT_FORECAST,
        STEP_UNDEFINED,
    ];
}

/// One label.
#[derive(Clone, Debug, PartialEq)]
pub enum Label {
    Bool(bool),
    Number(f64),
    Class(String),
    Items(Vec<String>),
    Series(Vec<f64>),
}

/// Labels stored by type, so that tens of millions of examples stay compact.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LabelColumn {
    #[default]
    Empty,
    Bool(Vec<bool>),
    Number(Vec<f64>),
    Class(Vec<String>),
    Items(Vec<Vec<String>>),
    Series(Vec<Vec<f64>>),
}

impl LabelColumn {
    pub fn len(&self) -> usize {
        match self {
            LabelColumn::Empty => 0,
            LabelColumn::Bool(v) => v.len(),
            LabelColumn::Number(v) => v.len(),
            LabelColumn::Class(v) => v.len(),
            LabelColumn::Items(v) => v.len(),
            LabelColumn::Series(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a label (all labels of one task have the same kind).
    pub fn push(&mut self, label: Label) {
        match (&mut *self, label) {
            (LabelColumn::Bool(v), Label::Bool(b)) => v.push(b),
            (LabelColumn::Number(v), Label::Number(x)) => v.push(x),
            (LabelColumn::Class(v), Label::Class(c)) => v.push(c),
            (LabelColumn::Items(v), Label::Items(i)) => v.push(i),
            (LabelColumn::Series(v), Label::Series(s)) => v.push(s),
            (column, label) if column.is_empty() => {
                *column = match label {
                    Label::Bool(b) => LabelColumn::Bool(vec![b]),
                    Label::Number(x) => LabelColumn::Number(vec![x]),
                    Label::Class(c) => LabelColumn::Class(vec![c]),
                    Label::Items(i) => LabelColumn::Items(vec![i]),
                    Label::Series(s) => LabelColumn::Series(vec![s]),
                }
            }
            (column, label) => unreachable!("a {label:?} label in a {column:?} column"),
        }
    }

    pub fn extend(&mut self, other: LabelColumn) {
        match (&mut *self, other) {
            (_, LabelColumn::Empty) => {}
            (LabelColumn::Empty, o) => *self = o,
            (LabelColumn::Bool(a), LabelColumn::Bool(b)) => a.extend(b),
            (LabelColumn::Number(a), LabelColumn::Number(b)) => a.extend(b),
            (LabelColumn::Class(a), LabelColumn::Class(b)) => a.extend(b),
            (LabelColumn::Items(a), LabelColumn::Items(b)) => a.extend(b),
            (LabelColumn::Series(a), LabelColumn::Series(b)) => a.extend(b),
            (a, b) => unreachable!("labels of two kinds: {a:?} and {b:?}"),
        }
    }

    /// The `i`-th label.
    pub fn get(&self, i: usize) -> Option<Label> {
        Some(match self {
            LabelColumn::Empty => return None,
            LabelColumn::Bool(v) => Label::Bool(*v.get(i)?),
            LabelColumn::Number(v) => Label::Number(*v.get(i)?),
            LabelColumn::Class(v) => Label::Class(v.get(i)?.clone()),
            LabelColumn::Items(v) => Label::Items(v.get(i)?.clone()),
            LabelColumn::Series(v) => Label::Series(v.get(i)?.clone()),
        })
    }
}

/// The training table of one partition.
#[derive(Debug, Default)]
pub struct Labels {
    /// Row of the entity table.
    pub entities: Vec<usize>,
    pub anchors: Vec<i64>,
    pub splits: Vec<Split>,
    pub labels: LabelColumn,
    /// Counterfactual ASSUMING ([`build_treated`]): whether the assumption held for each
    /// example (empty otherwise).
    pub treated: Vec<bool>,
    /// Candidate examples that were not kept, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
}

/// How a task's ASSUMING ended up being read, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub counterfactual: bool,
    /// Examples where the assumption held, and all examples (before any were dropped).
    pub held: usize,
    pub examples: usize,
    pub why: String,
}

impl Labels {
    /// The labels of disjoint sets of `entities`, each built for `plan` by [`build`] or
    /// [`build_treated`], in the order one build over all of `entities` gives them (by
    /// anchor, then by position in `entities`).
    pub fn merge(parts: &[&Labels], plan: &TaskPlan, entities: &[usize]) -> Labels {
        let anchors: Vec<i64> = plan.anchors().iter().map(|a| a.0).collect();
        let mut position = vec![usize::MAX; entities.iter().max().map_or(0, |&m| m + 1)];
        for (i, &r) in entities.iter().enumerate() {
            position[r] = i;
        }
        let key = |anchor: i64, row: usize| {
            let a = anchors
                .iter()
                .position(|&x| x == anchor)
                .unwrap_or(usize::MAX);
            (a, position.get(row).copied().unwrap_or(usize::MAX))
        };
        let mut order: Vec<((usize, usize), usize, usize)> = parts
            .iter()
            .enumerate()
            .flat_map(|(p, &l)| (0..l.len()).map(move |i| (key(l.anchors[i], l.entities[i]), p, i)))
            .collect();
        order.sort_unstable();
        let mut out = Labels::default();
        for &(_, p, i) in &order {
            let part = parts[p];
            out.entities.push(part.entities[i]);
            out.anchors.push(part.anchors[i]);
            out.splits.push(part.splits[i]);
            if let Some(label) = part.labels.get(i) {
                out.labels.push(label);
            }
            if !part.treated.is_empty() {
                out.treated.push(part.treated[i]);
            }
        }
        for part in parts {
            for (&k, &v) in &part.dropped {
                *out.dropped.entry(k).or_default() += v;
            }
        }
        out
    }
    /// Resolves how ASSUMING is read from labels built by [`build_treated`]: keeps them
    /// (counterfactual) or only the examples where the assumption held (conditional).
    /// `counterfactual`: `None` decides (counterfactual when the target is a yes/no or a
    /// number and the assumption varies: it holds for at least 30 examples and 1%, and
    /// fails for as many); `Some` insists, and fails with the reason if it cannot be.
    pub fn read_assuming(
        mut self,
        task: &TaskType,
        counterfactual: Option<bool>,
    ) -> Result<(Labels, Reading), String> {
        let n = self.treated.len();
        let held = self.treated.iter().filter(|&&t| t).count();
        let floor = 30.max(n / 100);
        let varies = held >= floor && n - held >= floor;
        let numeric = matches!(task, TaskType::Binary | TaskType::Regression);
        let why = if !numeric {
            format!("a {} target has no uplift", task.name())
        } else if !varies {
            format!(
                "the assumption held for {held} of {n} examples; a treatment needs at least {floor} each way"
            )
        } else {
            format!("the assumption held for {held} of {n} examples")
        };
        let counterfactual = match counterfactual {
            Some(true) if !(numeric && varies) => {
                return Err(format!(
                    "counterfactual ASSUMING is not possible here: {why}"
                ));
            }
            Some(c) => c,
            None => numeric && varies,
        };
        if !counterfactual {
            let keep: Vec<usize> = (0..n).filter(|&i| self.treated[i]).collect();
            let mut kept = self.subset(&keep);
            kept.dropped = self.dropped;
            *kept.dropped.entry(drop::ASSUMING).or_default() += (n - held) as u64;
            self = kept;
        }
        Ok((
            self,
            Reading {
                counterfactual,
                held,
                examples: n,
                why,
            },
        ))
    }

    /// The examples at positions `keep`, without treatment flags or drop counts.
    pub fn subset(&self, keep: &[usize]) -> Labels {
        fn pick<T: Copy>(v: &[T], keep: &[usize]) -> Vec<T> {
            keep.iter().map(|&i| v[i]).collect()
        }
        let mut labels = LabelColumn::Empty;
        for l in keep.iter().filter_map(|&i| self.labels.get(i)) {
            labels.push(l);
        }
        Labels {
            entities: pick(&self.entities, keep),
            anchors: pick(&self.anchors, keep),
            splits: pick(&self.splits, keep),
            labels,
            treated: Vec::new(),
            dropped: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }
}

/// Entities and aggregates as seen from one entity at one anchor.
struct EntityEnv<'a> {
    db: &'a Database,
    row: usize,
    position: usize,
    anchor: i64,
    plan: &'a TaskPlan,
    aggs: &'a [(Linked, RowValues)],
}

impl Env for EntityEnv<'_> {
    fn column(&self, c: ColumnId, dtype: DType) -> Value {
        value_at(
            self.db.tables[c.table].batch.column(c.column),
            dtype,
            self.row,
        )
    }

    fn aggregate(&self, i: usize) -> Value {
        let spec = &self.plan.task.aggregates[i];
        let (linked, values) = &self.aggs[i];
        aggregate::aggregate(
            spec,
            values,
            linked.range(self.position, &spec.window, self.anchor),
        )
    }
}

/// Stable split of an entity for static targets: by key hash, 80/10/10.
fn hash_split(key: &Value) -> Split {
    let h = relgraph_common::hash::fnv1a(key_text(key).bytes(), relgraph_common::hash::FNV_BASIS);
    match h % 10 {
        0 => Split::Test,
        1 => Split::Val,
        _ => Split::Train,
    }
}

/// Split of each entity for a static target split by entity time: the latest 10% test,
/// the 10% before them validation.
fn time_splits(times: &TimestampSecondArray, entities: &[usize]) -> Vec<Split> {
    let mut order: Vec<usize> = (0..entities.len()).collect();
    order.sort_by_key(|&p| {
        (
            times
                .is_valid(entities[p])
                .then(|| times.value(entities[p])),
            p,
        )
    });
    let n = order.len();
    let mut splits = vec![Split::Train; n];
    for (rank, &p) in order.iter().enumerate() {
        splits[p] = if rank * 10 >= n * 9 {
            Split::Test
        } else if rank * 10 >= n * 8 {
            Split::Val
        } else {
            Split::Train
        };
    }
    splits
}

/// Builds the labels of `entities` (rows of the entity table) for `plan`, keeping the
/// examples where its ASSUMING holds (the conditional reading).
pub fn build(
    plan: &TaskPlan,
    db: &Database,
    entities: &[usize],
    facts: &dyn FactSource,
) -> Result<Labels, LabelError> {
    build_with(plan, db, entities, facts, false)
}

/// Builds the labels of `entities` for `plan` with its ASSUMING as a treatment (the
/// counterfactual reading): every example is kept, and [`Labels::treated`] says whether
/// the assumption held on its future.
pub fn build_treated(
    plan: &TaskPlan,
    db: &Database,
    entities: &[usize],
    facts: &dyn FactSource,
) -> Result<Labels, LabelError> {
    build_with(plan, db, entities, facts, true)
}

fn build_with(
    plan: &TaskPlan,
    db: &Database,
    entities: &[usize],
    facts: &dyn FactSource,
    treated: bool,
) -> Result<Labels, LabelError> {
    let task = &plan.task;
    let aggs = link_all(&task.aggregates, entities, facts)?;
    let entity = &db.tables[task.entity_table];
    let times = time_of(db, task.entity_table);
    let key = entity.batch.column(task.entity_key);
    let key_dtype = entity.schema.columns[task.entity_key].dtype;
    let static_splits: Option<Vec<Split>> = match (&plan.splits, times) {
        (Splits::Static { by_time: true, .. }, Some(t)) => Some(time_splits(t, entities)),
        (Splits::Static { .. }, _) => Some(
            entities
                .iter()
                .map(|&r| hash_split(&value_at(key, key_dtype, r)))
                .collect(),
        ),
        _ => None,
    };
    let mut out = Labels::default();
    let positions: Vec<usize> = (0..entities.len()).collect();
    for (anchor, split) in plan.anchors() {
        let parts: Vec<Labels> = positions
            .par_chunks(4096)
            .map(|chunk| {
                let mut acc = Labels::default();
                for &position in chunk {
                    let row = entities[position];
                    if times.is_some_and(|t| t.is_valid(row) && t.value(row) > anchor) {
                        continue;
                    }
                    let env = EntityEnv {
                        db,
                        row,
                        position,
                        anchor,
                        plan,
                        aggs: &aggs,
                    };
                    let Some(split) = split.or_else(|| static_splits.as_ref().map(|s| s[position]))
                    else {
                        continue;
                    };
                    match example(plan, &env, treated) {
                        Ok(label) => {
                            acc.entities.push(row);
                            acc.anchors.push(anchor);
                            acc.splits.push(split);
                            acc.labels.push(label);
                            if treated {
                                let held =
                                    plan.task.assuming.as_ref().is_some_and(|a| holds(a, &env));
                                acc.treated.push(held);
                            }
                        }
                        Err(reason) => *acc.dropped.entry(reason).or_default() += 1,
                    }
                }
                acc
            })
            .collect();
        for part in parts {
            out.entities.extend(part.entities);
            out.anchors.extend(part.anchors);
            out.splits.extend(part.splits);
            out.labels.extend(part.labels);
            out.treated.extend(part.treated);
            for (k, v) in part.dropped {
                *out.dropped.entry(k).or_default() += v;
            }
        }
    }
    Ok(out)
}

fn link_all(
    specs: &[AggSpec],
    entities: &[usize],
    facts: &dyn FactSource,
) -> Result<Vec<(Linked, RowValues)>, LabelError> {
    specs
        .iter()
        .map(|spec| {
            let linked = facts.linked(spec, entities)?;
            let values = facts.row_values(spec, &linked);
            Ok((linked, values))
        })
        .collect()
}

/// The rows of `entities` to score at `anchor`: those that exist then and whose WHERE
/// holds on the past. Their targets are not looked at (PQL.md §3: at prediction time
/// every entity is scored).
pub fn select(
    plan: &TaskPlan,
    db: &Database,
    entities: &[usize],
    facts: &dyn FactSource,
    anchor: i64,
) -> Result<Vec<usize>, LabelError> {
    let aggs = link_all(&plan.task.aggregates, entities, facts)?;
    let times = time_of(db, plan.task.entity_table);
    Ok((0..entities.len())
        .into_par_iter()
        .filter(|&position| {
            let row = entities[position];
            if times.is_some_and(|t| t.is_valid(row) && t.value(row) > anchor) {
                return false;
            }
            let env = EntityEnv {
                db,
                row,
                position,
                anchor,
                plan,
                aggs: &aggs,
            };
            plan.task.filter.as_ref().is_none_or(|f| holds(f, &env))
        })
        .map(|position| entities[position])
        .collect())
}

/// For each example (`rows[i]` of the entity table at `anchors[i]`), its target computed
/// on the past (windows shifted back so that the target window ends at the anchor): the
/// baseline "the entity's past value of the same aggregation" (PQL.md §4), as a number
/// (a condition gives 0 or 1). `None` where it is undefined, or where the target is not
/// an aggregation over time.
pub fn past_values(
    plan: &TaskPlan,
    db: &Database,
    (rows, anchors): (&[usize], &[i64]),
    facts: &dyn FactSource,
) -> Result<Vec<Option<f64>>, LabelError> {
    let (Target::Expr(target), Some(window)) = (&plan.task.target, plan.window) else {
        return Ok(vec![None; rows.len()]);
    };
    let mut shifted = plan.clone();
    let mut used = Vec::new();
    target.aggregates(&mut |i| used.push(i));
    for &i in &used {
        let w = &mut shifted.task.aggregates[i].window;
        w.start = w.start.map(|s| s - window.end);
        w.end -= window.end;
    }
    let mut entities = rows.to_vec();
    entities.sort_unstable();
    entities.dedup();
    let aggs = link_all(&shifted.task.aggregates, &entities, facts)?;
    Ok((0..rows.len())
        .into_par_iter()
        .map(|i| {
            let row = rows[i];
            let env = EntityEnv {
                db,
                row,
                position: entities.binary_search(&row).ok()?,
                anchor: anchors[i],
                plan: &shifted,
                aggs: &aggs,
            };
            match eval(target, &env) {
                Value::Bool(b) => Some(f64::from(u8::from(b))),
                v => v.as_f64(),
            }
        })
        .collect())
}

fn time_of(db: &Database, table: usize) -> Option<&TimestampSecondArray> {
    let table = &db.tables[table];
    table
        .schema
        .time_column
        .as_ref()
        .and_then(|c| table.column(c))
        .and_then(|a| a.as_any().downcast_ref::<TimestampSecondArray>())
}

fn holds(e: &BoundExpr, env: &EntityEnv<'_>) -> bool {
    eval(e, env) == Value::Bool(true)
}

/// The label of one (entity, anchor), or why there is none; with `treated`, ASSUMING
/// is a treatment and does not drop the example.
fn example(plan: &TaskPlan, env: &EntityEnv<'_>, treated: bool) -> Result<Label, &'static str> {
    let task = &plan.task;
    if task.filter.as_ref().is_some_and(|f| !holds(f, env)) {
        return Err(drop::WHERE);
    }
    if !treated && task.assuming.as_ref().is_some_and(|a| !holds(a, env)) {
        return Err(drop::ASSUMING);
    }
    let value = match &task.target {
        Target::Expr(e) => eval(e, env),
        Target::Column(c, dtype) => env.column(*c, *dtype),
        Target::Items(i) => {
            let spec = &task.aggregates[*i];
            let (linked, values) = &env.aggs[*i];
            let items =
                aggregate::items(values, linked.range(env.position, &spec.window, env.anchor));
            return if items.is_empty() {
                Err(drop::NO_ITEMS)
            } else {
                Ok(Label::Items(items))
            };
        }
        Target::Forecast(i) => return forecast(plan, env, *i),
    };
    match (&task.task, value) {
        (TaskType::Binary, Value::Bool(b)) => Ok(Label::Bool(b)),
        (TaskType::Binary, _) => Ok(Label::Bool(false)),
        (_, Value::Null) => Err(drop::UNDEFINED),
        (TaskType::Regression, v) => v.as_f64().map(Label::Number).ok_or(drop::NOT_NUMBER),
        (_, v) => Ok(Label::Class(key_text(&v))),
    }
}

/// `FORECAST n TIMEFRAMES`: the aggregate over n consecutive windows.
fn forecast(plan: &TaskPlan, env: &EntityEnv<'_>, i: usize) -> Result<Label, &'static str> {
    let TaskType::Forecast { steps } = plan.task.task else {
        return Err(drop::NOT_FORECAST);
    };
    let spec = &plan.task.aggregates[i];
    let (linked, values) = &env.aggs[i];
    let length = spec.window.length().unwrap_or(spec.window.end);
    let mut series = Vec::with_capacity(steps as usize);
    for k in 0..i64::from(steps) {
        let range = linked.range(env.position, &spec.window, env.anchor + k * length);
        let v = aggregate::aggregate(spec, values, range)
            .as_f64()
            .ok_or(drop::STEP_UNDEFINED)?;
        series.push(v);
    }
    Ok(Label::Series(series))
}
