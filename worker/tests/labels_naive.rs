//! The label engine against a deliberately naive evaluator: random small databases,
//! random queries, and for every (anchor, entity) a scan of every fact row. Expression
//! semantics (three-valued logic, LIKE, ...) are shared and have their own fixtures; what
//! this checks is linking through foreign keys (one and two hops), windows, time
//! visibility, grouping, every aggregation, empty-window rules and example selection.

use std::collections::HashSet;
use std::fmt::Write as _;

use proptest::prelude::*;
use relgraph_common::Database;
use relgraph_common::pql::bound::{AggSpec, BoundExpr, ColumnId, Target, TaskType, Value};
use relgraph_common::pql::{self, PlanOptions, TaskPlan};
use relgraph_common::schema::DType;
use relgraph_common::time::{DAY, format_timestamp};
use relgraph_worker::label::{
    Env, Label, Labels, LocalFacts, RowEnv, build, eval, key_text, value_at,
};

const T0: i64 = 1_700_000_000 / DAY * DAY;

/// An order: customer index (may dangle), amount, status, hour after T0.
type Order = (Option<usize>, Option<i64>, Option<u8>, i64);

#[derive(Debug, Clone)]
struct World {
    customers: Vec<(Option<u8>, Option<i64>)>,
    orders: Vec<Order>,
    items: Vec<(usize, i64, i64)>,
}

fn world() -> impl Strategy<Value = World> {
    let customers = prop::collection::vec(
        (
            prop::option::of(0u8..3),
            prop::option::weighted(0.5, 0i64..40),
        ),
        1..10,
    );
    let orders = prop::collection::vec(
        (
            prop::option::weighted(0.9, 0usize..12),
            prop::option::weighted(0.8, -5i64..50),
            prop::option::weighted(0.8, 0u8..3),
            0i64..60 * 24,
        ),
        0..50,
    );
    let items = prop::collection::vec((0usize..50, 0i64..4, 0i64..60 * 24), 0..50);
    (customers, orders, items).prop_map(|(customers, orders, items)| World {
        customers,
        orders,
        items,
    })
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or(String::new(), ToString::to_string)
}

/// Writes the world as CSV with a schema.toml, so nothing depends on inference.
fn write(world: &World, dir: &std::path::Path) {
    let mut c = String::from("customer_id,segment,joined\n");
    for (i, (seg, joined)) in world.customers.iter().enumerate() {
        let joined = joined.map_or(String::new(), |d| format_timestamp(T0 + d * DAY));
        let _ = writeln!(
            c,
            "C{i},{},{joined}",
            seg.map_or(String::new(), |s| ["a", "b", "c"][s as usize].to_string())
        );
    }
    let mut o = String::from("order_id,customer_id,amount,status,timestamp\n");
    for (i, (cust, amount, status, hour)) in world.orders.iter().enumerate() {
        let status = status.map_or(String::new(), |s| ["x", "y", "z"][s as usize].to_string());
        let _ = writeln!(
            o,
            "O{i},{},{},{status},{}",
            cust.map_or(String::new(), |c| format!("C{c}")),
            opt(amount),
            format_timestamp(T0 + hour * 3600)
        );
    }
    let mut it = String::from("item_id,order_id,qty,timestamp\n");
    for (i, (order, qty, hour)) in world.items.iter().enumerate() {
        let _ = writeln!(
            it,
            "I{i},O{order},{qty},{}",
            format_timestamp(T0 + hour * 3600)
        );
    }
    std::fs::write(dir.join("customers.csv"), c).expect("write");
    std::fs::write(dir.join("orders.csv"), o).expect("write");
    std::fs::write(dir.join("items.csv"), it).expect("write");
    std::fs::write(
        dir.join("schema.toml"),
        r#"
[tables.customers]
primary_key = "customer_id"
time_column = "joined"
columns = { customer_id = { dtype = "string" }, segment = { dtype = "string", stype = "categorical" }, joined = { dtype = "timestamp" } }
[tables.orders]
primary_key = "order_id"
time_column = "timestamp"
foreign_keys = { customer_id = "customers" }
columns = { order_id = { dtype = "string" }, customer_id = { dtype = "string" }, amount = { dtype = "int64" }, status = { dtype = "string" }, timestamp = { dtype = "timestamp" } }
[tables.items]
primary_key = "item_id"
time_column = "timestamp"
foreign_keys = { order_id = "orders" }
columns = { item_id = { dtype = "string" }, order_id = { dtype = "string" }, qty = { dtype = "int64" }, timestamp = { dtype = "timestamp" } }
"#,
    )
    .expect("write schema");
}

/// A random query over the world's tables.
fn query() -> impl Strategy<Value = String> {
    let func = prop::sample::select(vec![
        "COUNT",
        "SUM",
        "AVG",
        "MIN",
        "MAX",
        "COUNT_DISTINCT",
        "FIRST",
        "LAST",
        "BOOL",
    ]);
    let filter = prop::sample::select(vec![
        "",
        " WHERE orders.status = 'x'",
        " WHERE orders.amount > 10 OR orders.status IS NULL",
    ]);
    let window = (0i64..3, 1i64..10);
    let target_kind = 0usize..7;
    let where_kind = 0usize..5;
    let assume = prop::bool::weighted(0.3);
    (func, filter, window, target_kind, where_kind, assume).prop_map(|(f, filt, (s, len), kind, wk, assume)| {
        let (s, e) = (s, s + len);
        let agg = format!("{f}(orders.amount{filt}, {s}, {e}, days)");
        let numeric = if f == "BOOL" { "COUNT" } else { f };
        let target = match kind {
            0 => format!("{numeric}(orders.amount{filt}, {s}, {e}, days) > 5"),
            1 => agg,
            2 => format!("COUNT(orders.*{filt}, {s}, {e}, days) = 0"),
            3 => format!("SUM(items.qty, {s}, {e}, days)"),
            4 => format!("FIRST(orders.status, {s}, {e}, days)"),
            5 => format!("LIST_DISTINCT(items.order_id, {s}, {e}, days) RANK TOP 3"),
            _ => format!("COUNT(orders->items.* WHERE items.qty >= 2, {s}, {e}, days) + {numeric}(orders.amount, {s}, {e}, days) >= 3"),
        };
        let filter = match wk {
            0 => String::new(),
            1 => " WHERE COUNT(orders.*, -7, 0, days) > 0".to_string(),
            2 => " WHERE customers.segment = 'a' OR customers.segment IS NULL".to_string(),
            3 => " WHERE NOT (SUM(items.qty, -INF, 0, days) > 2)".to_string(),
            _ => " WHERE MAX(orders.amount, -10, 0, days) >= 20 AND customers.segment != 'c'".to_string(),
        };
        let assuming = if assume { " ASSUMING COUNT(orders.* WHERE orders.status = 'y', 0, 3, days) > 0" } else { "" };
        format!("PREDICT {target} FOR EACH customers.customer_id{filter}{assuming}")
    })
}

/// Fact rows of `spec` reaching customer row `entity`, found by scanning every row.
fn naive_rows(db: &Database, spec: &AggSpec, entity: usize) -> Vec<usize> {
    let key_of = |table: usize, column: usize, row: usize| {
        let t = &db.tables[table];
        value_at(t.batch.column(column), t.schema.columns[column].dtype, row)
    };
    let reaches = |mut table: usize, mut row: usize| -> bool {
        for link in &spec.path {
            let value = key_of(table, link.column, row);
            let parent = &db.tables[link.parent];
            let pk = parent
                .schema
                .column_index(parent.schema.primary_key.as_deref().unwrap_or(""))
                .unwrap_or(0);
            let Some(found) = (0..parent.num_rows())
                .find(|&r| value != Value::Null && key_of(link.parent, pk, r) == value)
            else {
                return false;
            };
            table = link.parent;
            row = found;
        }
        row == entity
    };
    (0..db.tables[spec.table].num_rows())
        .filter(|&r| reaches(spec.table, r))
        .collect()
}

fn time_of(db: &Database, table: usize, row: usize) -> Option<i64> {
    let t = &db.tables[table];
    let c = t.schema.column_index(t.schema.time_column.as_deref()?)?;
    match value_at(t.batch.column(c), DType::Timestamp, row) {
        Value::Time(x) => Some(x),
        _ => None,
    }
}

/// The aggregate, by plain loops over the rows in time order (ties by row).
fn naive_aggregate(
    db: &Database,
    spec: &AggSpec,
    entity: usize,
    anchor: i64,
    shift: i64,
) -> (Value, Vec<Value>) {
    let mut rows: Vec<(i64, usize)> = naive_rows(db, spec, entity)
        .into_iter()
        .filter_map(|r| time_of(db, spec.table, r).map(|t| (t, r)))
        .filter(|&(t, _)| {
            spec.window.start.is_none_or(|s| t > anchor + shift + s)
                && t <= anchor + shift + spec.window.end
        })
        .filter(|&(_, r)| {
            spec.filter
                .as_ref()
                .is_none_or(|f| eval(f, &RowEnv { db, row: r }) == Value::Bool(true))
        })
        .collect();
    rows.sort();
    let any_rows = !rows.is_empty();
    let values: Vec<Value> = rows
        .iter()
        .map(|&(_, r)| {
            spec.arg
                .as_ref()
                .map_or(Value::Int(1), |a| eval(a, &RowEnv { db, row: r }))
        })
        .filter(|v| *v != Value::Null)
        .collect();
    let nums: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
    use relgraph_common::pql::ast::AggFunc::*;
    let v = match spec.func {
        Count if spec.arg.is_none() => Value::Int(rows.len() as i64),
        Count => Value::Int(values.len() as i64),
        Sum if !any_rows => Value::Int(0),
        Sum if nums.is_empty() => Value::Null,
        Sum => Value::Float(nums.iter().sum()),
        Avg if nums.is_empty() => Value::Null,
        Avg => Value::Float(nums.iter().sum::<f64>() / nums.len() as f64),
        Min | Max if values.is_empty() => Value::Null,
        Min => Value::Float(nums.iter().copied().fold(f64::INFINITY, f64::min)),
        Max => Value::Float(nums.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
        CountDistinct => {
            Value::Int(values.iter().map(key_text).collect::<HashSet<_>>().len() as i64)
        }
        First => values.first().cloned().map_or(Value::Null, float_if_number),
        Last => values.last().cloned().map_or(Value::Null, float_if_number),
        Bool => Value::Bool(!values.is_empty()),
        ListDistinct => Value::Null,
    };
    (v, values)
}

fn float_if_number(v: Value) -> Value {
    match v {
        Value::Int(i) => Value::Float(i as f64),
        other => other,
    }
}

struct Naive<'a> {
    db: &'a Database,
    plan: &'a TaskPlan,
    entity: usize,
    anchor: i64,
}

impl Env for Naive<'_> {
    fn column(&self, c: ColumnId, dtype: DType) -> Value {
        value_at(
            self.db.tables[c.table].batch.column(c.column),
            dtype,
            self.entity,
        )
    }
    fn aggregate(&self, i: usize) -> Value {
        naive_aggregate(
            self.db,
            &self.plan.task.aggregates[i],
            self.entity,
            self.anchor,
            0,
        )
        .0
    }
}

fn naive_label(plan: &TaskPlan, env: &Naive<'_>) -> Option<Label> {
    let holds =
        |e: &Option<BoundExpr>| e.as_ref().is_none_or(|e| eval(e, env) == Value::Bool(true));
    if !holds(&plan.task.filter) || !holds(&plan.task.assuming) {
        return None;
    }
    match (&plan.task.target, &plan.task.task) {
        (Target::Items(i), _) => {
            let (_, values) =
                naive_aggregate(env.db, &plan.task.aggregates[*i], env.entity, env.anchor, 0);
            let mut seen = HashSet::new();
            let items: Vec<String> = values
                .iter()
                .map(key_text)
                .filter(|k| seen.insert(k.clone()))
                .collect();
            (!items.is_empty()).then_some(Label::Items(items))
        }
        (Target::Expr(e), TaskType::Binary) => Some(Label::Bool(eval(e, env) == Value::Bool(true))),
        (Target::Expr(e), TaskType::Regression) => eval(e, env).as_f64().map(Label::Number),
        (Target::Expr(e), _) => match eval(e, env) {
            Value::Null => None,
            v => Some(Label::Class(key_text(&v))),
        },
        _ => None,
    }
}

fn same(a: &Label, b: &Label) -> bool {
    match (a, b) {
        (Label::Number(x), Label::Number(y)) => (x - y).abs() <= 1e-9 * (1.0 + x.abs()),
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn engine_matches_naive_evaluation(world in world(), query in query(), step in 1i64..4) {
        let dir = tempfile::tempdir().expect("tempdir");
        write(&world, dir.path());
        let db = Database::load(dir.path(), None).expect("load");
        let task = pql::compile(&query, &db.schema());
        let task = task.unwrap_or_else(|e| panic!("{}", e.render(&query)));
        let Ok(plan) = pql::plan(task, &db, &PlanOptions { step: Some(step * DAY), anchors: vec![] }) else {
            return Ok(());
        };
        let n = db.tables[plan.task.entity_table].num_rows();
        let everyone: Vec<usize> = (0..n).collect();
        let labels = build(&plan, &db, &everyone, &LocalFacts { db: &db }).expect("labels");
        let mut expected = Vec::new();
        let joined = |e: usize| time_of(&db, plan.task.entity_table, e);
        for (anchor, split) in plan.anchors() {
            for e in 0..n {
                if joined(e).is_some_and(|t| t > anchor) {
                    continue;
                }
                if let Some(l) = naive_label(&plan, &Naive { db: &db, plan: &plan, entity: e, anchor }) {
                    expected.push((e, anchor, split, l));
                }
            }
        }
        prop_assert_eq!(labels.len(), expected.len(), "{}", query);
        for (i, (e, anchor, split, l)) in expected.iter().enumerate() {
            prop_assert_eq!((labels.entities[i], labels.anchors[i], Some(labels.splits[i])), (*e, *anchor, *split), "{}", query);
            let got = labels.labels.get(i).expect("label");
            prop_assert!(same(&got, l), "{}: {:?} vs {:?} at {} {}", query, got, l, e, anchor);
        }
        // Built per worker (entities dealt out by a hash of their row) and merged, the
        // labels are the same, in the same order.
        let parts: Vec<Labels> = (0..3usize)
            .map(|w| {
                let mine: Vec<usize> = everyone.iter().copied().filter(|&e| (e * 7 + 1) % 3 == w).collect();
                build(&plan, &db, &mine, &LocalFacts { db: &db }).expect("labels")
            })
            .collect();
        let merged = Labels::merge(&parts.iter().collect::<Vec<_>>(), &plan, &everyone);
        prop_assert_eq!(&merged.entities, &labels.entities, "{}", query);
        prop_assert_eq!(&merged.anchors, &labels.anchors, "{}", query);
        prop_assert_eq!(&merged.splits, &labels.splits, "{}", query);
        prop_assert_eq!(&merged.labels, &labels.labels, "{}", query);
        prop_assert_eq!(&merged.dropped, &labels.dropped, "{}", query);
    }
}
