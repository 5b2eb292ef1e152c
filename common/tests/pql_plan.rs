//! Anchors (PQL.md §5): the test anchor is the latest whose window is fully observed,
//! validation is one step before it, training steps back from there, and no training
//! label window overlaps validation's, nor validation's the test's.

use proptest::prelude::*;
use relgraph_common::Database;
use relgraph_common::pql::{self, PlanError, PlanOptions, Splits};
use relgraph_common::time::{DAY, parse_timestamp};

fn database() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("customers.csv"),
        "customer_id,segment\nC1,a\nC2,b\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("orders.csv"),
        "order_id,customer_id,timestamp\nO1,C1,2024-01-01 08:00:00\nO2,C2,2024-02-11\nO3,C1,2024-04-10 12:00:00\n",
    )
    .expect("write");
    let db = Database::load(dir.path(), None).expect("load");
    (dir, db)
}

fn plan(db: &Database, query: &str, step_days: Option<i64>) -> Result<pql::TaskPlan, PlanError> {
    let task = pql::compile(query, &db.schema()).expect("valid query");
    pql::plan(
        task,
        db,
        &PlanOptions {
            step: step_days.map(|d| d * DAY),
            anchors: vec![],
        },
    )
}

fn at(text: &str) -> i64 {
    parse_timestamp(text).expect("time")
}

#[test]
fn weekly_anchors_step_back_from_the_last_day() {
    let (_d, db) = database();
    let p = plan(
        &db,
        "PREDICT COUNT(orders.*, 0, 7, days) > 0 FOR EACH customers.customer_id",
        None,
    )
    .expect("plan");
    let Splits::Temporal { train, val, test } = p.splits else {
        panic!("temporal")
    };
    assert_eq!(
        test,
        at("2024-04-03"),
        "the last whole day is 2024-04-10; minus the 7-day window"
    );
    assert_eq!(val, at("2024-03-27"));
    assert_eq!(train.last().copied(), Some(at("2024-03-20")));
    assert_eq!(train.first().copied(), Some(at("2024-01-03")));
    assert!(train.windows(2).all(|w| w[1] - w[0] == 7 * DAY));
}

#[test]
fn static_targets_split_entities() {
    let (_d, db) = database();
    let p = plan(
        &db,
        "PREDICT customers.segment FOR EACH customers.customer_id",
        None,
    )
    .expect("plan");
    assert_eq!(
        p.splits,
        Splits::Static {
            anchor: at("2024-04-10 12:00:00"),
            by_time: false
        }
    );
}

#[test]
fn too_little_history_is_an_error() {
    let (_d, db) = database();
    let err = plan(
        &db,
        "PREDICT COUNT(orders.*, 0, 90, days) FOR EACH customers.customer_id",
        None,
    )
    .expect_err("short");
    assert!(matches!(err, PlanError::TooShort { .. }), "{err}");
    assert!(err.to_string().contains("not enough history"));
}

proptest! {
    #[test]
    fn splits_never_overlap(start in 0i64..4, len in 1i64..15, step in prop::option::of(1i64..12), steps in 1u32..4) {
        let (_d, db) = database();
        let end = start + len;
        let query = if steps > 1 {
            format!("PREDICT COUNT(orders.*, {start}, {end}, days) FORECAST {steps} TIMEFRAMES FOR EACH customers.customer_id")
        } else {
            format!("PREDICT COUNT(orders.*, {start}, {end}, days) > 0 FOR EACH customers.customer_id")
        };
        let Ok(p) = plan(&db, &query, step) else { return Ok(()) };
        let Splits::Temporal { train, val, test } = p.splits else { panic!("temporal") };
        let horizon = end + (i64::from(steps) - 1) * len;
        let (first, last) = (at("2024-01-01 08:00:00"), at("2024-04-10 12:00:00"));
        prop_assert!(test + horizon <= last, "the test window is fully observed");
        prop_assert!(val + horizon <= test + start, "validation labels end before test labels begin");
        for t in &train {
            prop_assert!(*t >= first && t + horizon <= val + start, "train {t} overlaps validation");
        }
        prop_assert!(train.windows(2).all(|w| w[0] < w[1]));
    }
}
