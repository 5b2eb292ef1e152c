//! Hand-checked labels: every aggregation, operator and NULL case on a database small
//! enough to verify by reading it. The anchor is 2024-02-10 00:00:00.
//!
//! | order | customer | amount | status | time (relative to the anchor) |
//! |---|---|---|---|---|
//! | O1 | C1 | 10 | x | -9 d |
//! | O2 | C1 | NULL | y | 0 (exactly at the anchor) |
//! | O3 | C1 | 30 | x | +1 d |
//! | O4 | C1 | 20 | NULL | +2.5 d |
//! | O5 | C1 | 30 | z | +3 d (on a right-closed boundary) |
//! | O6 | C2 | 5 | x | +5 d |
//! | O7 | C9 (dangling) | 100 | x | +1 d |
//! | O8 | NULL | 7 | x | +1 d |
//!
//! Customers: C1 `premium` (joined before), C2 NULL segment (no join time), C3 `basic`
//! (joins after the anchor, so never an example).

use relgraph_common::Database;
use relgraph_common::pql::{self, PlanOptions, Split};
use relgraph_common::time::parse_timestamp;
use relgraph_worker::label::{Label, LocalFacts, build, build_treated, key_text, value_at};

fn database() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("customers.csv"),
        "customer_id,segment,joined\nC1,premium,2024-01-01\nC2,,\nC3,basic,2024-03-01\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("orders.csv"),
        "order_id,customer_id,amount,status,timestamp\n\
         O1,C1,10,x,2024-02-01 00:00:00\n\
         O2,C1,,y,2024-02-10 00:00:00\n\
         O3,C1,30,x,2024-02-11 00:00:00\n\
         O4,C1,20,,2024-02-12 12:00:00\n\
         O5,C1,30,z,2024-02-13 00:00:00\n\
         O6,C2,5,x,2024-02-15 00:00:00\n\
         O7,C9,100,x,2024-02-11 00:00:00\n\
         O8,,7,x,2024-02-11 00:00:00\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("schema.toml"),
        "[tables.customers]\ntime_column = \"joined\"\n[tables.orders]\nforeign_keys = { customer_id = \"customers\" }\n",
    )
    .expect("write");
    let db = Database::load(dir.path(), None).expect("load");
    (dir, db)
}

/// Labels per customer key at the anchor; `None` where the customer is no example.
fn labels(db: &Database, query: &str) -> Vec<(String, Option<Label>)> {
    let task = pql::compile(query, &db.schema());
    let task = task.unwrap_or_else(|e| panic!("{}", e.render(query)));
    let anchor = parse_timestamp("2024-02-10").expect("anchor");
    let plan = pql::plan(
        task,
        db,
        &PlanOptions {
            step: None,
            anchors: vec![anchor],
        },
    )
    .expect("plan");
    let table = &db.tables[plan.task.entity_table];
    let everyone: Vec<usize> = (0..table.num_rows()).collect();
    let out = build(&plan, db, &everyone, &LocalFacts { db }).expect("labels");
    assert!(out.splits.iter().all(|s| *s == Split::Predict));
    let key = |row: usize| {
        key_text(&value_at(
            table.batch.column(plan.task.entity_key),
            table.schema.columns[plan.task.entity_key].dtype,
            row,
        ))
    };
    (0..table.num_rows())
        .map(|row| {
            let found = out
                .entities
                .iter()
                .position(|&r| r == row)
                .and_then(|i| out.labels.get(i));
            (key(row), found)
        })
        .collect()
}

fn num(x: f64) -> Option<Label> {
    Some(Label::Number(x))
}

fn yes(b: bool) -> Option<Label> {
    Some(Label::Bool(b))
}

fn class(s: &str) -> Option<Label> {
    Some(Label::Class(s.to_string()))
}

fn check(db: &Database, target: &str, rest: &str, c1: Option<Label>, c2: Option<Label>) {
    let query = format!("PREDICT {target} FOR EACH customers.customer_id{rest}");
    let got = labels(db, &query);
    let want = vec![
        ("C1".to_string(), c1),
        ("C2".to_string(), c2),
        ("C3".to_string(), None),
    ];
    assert_eq!(got, want, "{query}");
}

#[test]
fn every_aggregation_by_hand() {
    let (_dir, db) = database();
    check(&db, "COUNT(orders.*, 0, 3, days)", "", num(3.0), num(0.0));
    check(
        &db,
        "COUNT(orders.status, 0, 3, days)",
        "",
        num(2.0),
        num(0.0),
    );
    check(
        &db,
        "SUM(orders.amount, 0, 3, days)",
        "",
        num(80.0),
        num(0.0),
    );
    check(
        &db,
        "AVG(orders.amount, 0, 3, days)",
        "",
        num(80.0 / 3.0),
        None,
    );
    check(&db, "MIN(orders.amount, 0, 3, days)", "", num(20.0), None);
    check(&db, "MAX(orders.amount, 0, 3, days)", "", num(30.0), None);
    check(
        &db,
        "COUNT_DISTINCT(orders.amount, 0, 3, days)",
        "",
        num(2.0),
        num(0.0),
    );
    check(
        &db,
        "FIRST(orders.status, 0, 3, days)",
        "",
        class("x"),
        None,
    );
    check(&db, "LAST(orders.status, 0, 3, days)", "", class("z"), None);
    check(&db, "LAST(orders.amount, 0, 3, days)", "", num(30.0), None);
    check(
        &db,
        "BOOL(orders.status, 0, 3, days)",
        "",
        yes(true),
        yes(false),
    );
    check(
        &db,
        "SUM(orders.amount, 0, 6, days)",
        "",
        num(80.0),
        num(5.0),
    );
    check(
        &db,
        "SUM(orders.amount * 2, 0, 3, days)",
        "",
        num(160.0),
        num(0.0),
    );
}

#[test]
fn windows_are_left_open_right_closed_and_the_anchor_is_the_past() {
    let (_dir, db) = database();
    check(&db, "COUNT(orders.*, 0, 2, days)", "", num(1.0), num(0.0));
    check(&db, "COUNT(orders.*, 0, 60, hours)", "", num(2.0), num(0.0));
    check(&db, "COUNT(orders.*, 1, 3, days)", "", num(2.0), num(0.0));
    check(
        &db,
        "COUNT(orders.*, 0, 3, days) > 0",
        " WHERE COUNT(orders.*, -10, 0, days) = 2",
        yes(true),
        None,
    );
    check(
        &db,
        "COUNT(orders.*, 0, 3, days) > 0",
        " WHERE COUNT(orders.*, -INF, 0, days) >= 1",
        yes(true),
        None,
    );
    check(
        &db,
        "COUNT(orders.*, 0, 3, days) > 0",
        " WHERE SUM(orders.amount, -10, 0, days) = 10",
        yes(true),
        None,
    );
}

#[test]
fn filters_inside_aggregations_treat_null_as_false() {
    let (_dir, db) = database();
    check(
        &db,
        "COUNT(orders.* WHERE orders.status = 'x', 0, 3, days)",
        "",
        num(1.0),
        num(0.0),
    );
    check(
        &db,
        "COUNT(orders.* WHERE orders.status != 'x', 0, 3, days)",
        "",
        num(1.0),
        num(0.0),
    );
    check(
        &db,
        "COUNT(orders.* WHERE orders.status IS NULL, 0, 3, days)",
        "",
        num(1.0),
        num(0.0),
    );
    check(
        &db,
        "COUNT(orders.* WHERE orders.status IN ('x', 'z'), 0, 3, days)",
        "",
        num(2.0),
        num(0.0),
    );
    check(
        &db,
        "COUNT(orders.* WHERE NOT orders.status = 'x', 0, 3, days)",
        "",
        num(1.0),
        num(0.0),
    );
}

#[test]
fn operators_and_three_valued_logic_on_the_entity() {
    let (_dir, db) = database();
    check(
        &db,
        "customers.segment LIKE 'pre%'",
        "",
        yes(true),
        yes(false),
    );
    check(
        &db,
        "customers.segment CONTAINS 'emi'",
        "",
        yes(true),
        yes(false),
    );
    check(
        &db,
        "customers.segment STARTS WITH 'p' AND customers.segment ENDS WITH 'm'",
        "",
        yes(true),
        yes(false),
    );
    check(
        &db,
        "customers.segment NOT LIKE '%x%'",
        "",
        yes(true),
        yes(false),
    );
    check(
        &db,
        "customers.segment IN ('premium', 'x')",
        "",
        yes(true),
        yes(false),
    );
    check(
        &db,
        "customers.segment NOT IN ('basic')",
        "",
        yes(true),
        yes(false),
    );
    check(&db, "customers.segment IS NULL", "", yes(false), yes(true));
    check(
        &db,
        "NOT customers.segment = 'premium'",
        "",
        yes(false),
        yes(false),
    );
    check(
        &db,
        "customers.segment = 'premium' OR COUNT(orders.*, 0, 6, days) > 0",
        "",
        yes(true),
        yes(true),
    );
    check(
        &db,
        "COUNT(orders.*, 0, 3, days) > 0",
        " WHERE customers.segment IS NULL",
        None,
        yes(false),
    );
    check(
        &db,
        "COUNT(orders.*, 0, 3, days) > 0",
        " WHERE customers.segment = 'premium'",
        yes(true),
        None,
    );
    check(
        &db,
        "SUM(orders.amount, 0, 3, days) > SUM(orders.amount, -10, 0, days)",
        "",
        yes(true),
        yes(false),
    );
    check(&db, "customers.segment", "", class("premium"), None);
}

#[test]
fn assuming_keeps_the_examples_where_it_holds() {
    let (_dir, db) = database();
    let assuming = " ASSUMING COUNT(orders.* WHERE orders.status = 'z', 0, 3, days) > 0";
    check(&db, "COUNT(orders.*, 0, 3, days)", assuming, num(3.0), None);
}

#[test]
fn assuming_as_a_treatment_keeps_every_example_and_flags_it() {
    let (_dir, db) = database();
    let query = "PREDICT COUNT(orders.*, 0, 3, days) > 0 FOR EACH customers.customer_id \
                 ASSUMING COUNT(orders.* WHERE orders.status = 'z', 0, 3, days) > 0";
    let task = pql::compile(query, &db.schema()).unwrap_or_else(|e| panic!("{}", e.render(query)));
    let anchor = parse_timestamp("2024-02-10").expect("anchor");
    let options = PlanOptions {
        step: None,
        anchors: vec![anchor],
    };
    let plan = pql::plan(task, &db, &options).expect("plan");
    let everyone: Vec<usize> = (0..3).collect();
    let facts = LocalFacts { db: &db };
    let treated = build_treated(&plan, &db, &everyone, &facts).expect("labels");
    // C1 (row 0) had a `z` order in the window, C2 (row 1) none; C3 is no example.
    assert_eq!(treated.entities, vec![0, 1]);
    assert_eq!(treated.treated, vec![true, false]);
    assert_eq!(treated.labels.get(1), yes(false));
    // Two examples cannot make a treatment: `auto` falls back to the conditional reading,
    // which keeps what `build` keeps and counts the rest.
    let conditional = build(&plan, &db, &everyone, &facts).expect("labels");
    let (read, reading) = treated.read_assuming(&plan.task.task, None).expect("auto");
    assert!(!reading.counterfactual, "{reading:?}");
    assert_eq!(read.entities, conditional.entities);
    assert_eq!(read.labels, conditional.labels);
    assert_eq!(read.dropped, conditional.dropped);
    let insisted = build_treated(&plan, &db, &everyone, &facts)
        .expect("labels")
        .read_assuming(&plan.task.task, Some(true));
    let why = insisted.expect_err("too few to be a treatment");
    assert!(why.contains("held for 1 of 2 examples"), "{why}");
}

#[test]
fn ranking_lists_distinct_items_in_time_order() {
    let (_dir, db) = database();
    std::fs::write(db.dir.join("schema.toml"), "[tables.customers]\ntime_column = \"joined\"\n[tables.orders]\nforeign_keys = { customer_id = \"customers\", status = \"statuses\" }\n").expect("write");
    std::fs::write(db.dir.join("statuses.csv"), "status\nx\ny\nz\n").expect("write");
    let db = Database::load(&db.dir, None).expect("reload");
    let items = |v: &[&str]| Some(Label::Items(v.iter().map(|s| s.to_string()).collect()));
    check(
        &db,
        "LIST_DISTINCT(orders.status, 0, 6, days) RANK TOP 2",
        "",
        items(&["x", "z"]),
        items(&["x"]),
    );
    let pair = "PREDICT BOOL(orders.status, 0, 3, days) FOR EACH customers.customer_id, statuses.status RANK TOP 2";
    let got = labels(&db, pair);
    assert_eq!(got[0], ("C1".to_string(), items(&["x", "z"])));
    assert_eq!(got[1], ("C2".to_string(), None));
}
