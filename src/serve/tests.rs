//! `Serving` in process: requests answered together get what each gets alone; a batch
//! being scored lets appends through between its chunks; an append with an id happens
//! once, however often it is retried, restarts included.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampSecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use relgraph_common::Database;
use relgraph_kernels::Device;
use relgraph_worker::model::TrainConfig;
use relgraph_worker::store::PartitionStore;

use super::{Limits, Serving, Ticket};
use crate::generate::{self, Retail, RetailSize};
use crate::pql::plan_query;
use crate::train::train_on;

const CHURN: &str = "PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID";

fn orders(round: usize, n: usize, time: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("product_id", DataType::Utf8, false),
        Field::new("quantity", DataType::Int64, false),
        Field::new("price", DataType::Float64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Second, None),
            false,
        ),
    ]));
    let ids: Vec<String> = (0..n).map(|i| format!("O-during-{round}-{i}")).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(vec!["CU-1003"; n])),
            Arc::new(StringArray::from(vec!["P-5001"; n])),
            Arc::new(Int64Array::from(vec![1; n])),
            Arc::new(Float64Array::from(vec![9.5; n])),
            Arc::new(TimestampSecondArray::from(vec![time; n])),
        ],
    )
    .expect("orders")
}

/// A churn model of a 300-customer world, served from `dir` with a store.
fn churn_serving(dir: &std::path::Path) -> Serving {
    let data = dir.join("data");
    let size = RetailSize {
        customers: 300,
        products: 40,
        days: 200,
    };
    generate::write(&Retail::new(size, 3), &data, 3, &[]).expect("generate");
    let db = Database::load(&data, None).expect("load");
    let plan = plan_query(&db, CHURN, &Default::default()).expect("plan");
    let config = TrainConfig {
        channels: 16,
        encoder_blocks: 1,
        fanouts: vec![8, 4],
        epochs: 1,
        max_steps_per_epoch: 2,
        ..TrainConfig::default()
    };
    let model = dir.join("model");
    train_on(&db, CHURN, &plan, &config, &model, false, Device::Cpu).expect("train");
    let store = PartitionStore::open(&dir.join("store")).expect("store");
    let serving = Serving::new(db, Some(store), Limits::default()).expect("serving");
    serving.load_model("churn", &model).expect("model");
    serving
}

fn ticket(json: serde_json::Value) -> Ticket {
    serde_json::from_value(json).expect("ticket")
}

/// Requests answered together (in shared forward passes where they can share one) get
/// what each gets alone, errors included: a prediction does not depend on what else
/// its pass held.
#[test]
fn requests_answered_together_get_what_each_gets_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serving = churn_serving(dir.path());
    let tickets = [
        ticket(serde_json::json!({"v": 1, "model": "churn", "keys": ["CU-1000"]})),
        ticket(serde_json::json!({"v": 1, "model": "churn", "keys": ["CU-1001", "CU-1002"]})),
        ticket(serde_json::json!({"v": 1, "model": "churn", "keys": ["CU-1003", "nobody"]})),
        ticket(
            serde_json::json!({"v": 1, "model": "churn", "keys": ["CU-1004"], "fanouts": [3, 2]}),
        ),
        ticket(serde_json::json!({"v": 1, "model": "churn", "keys": ["CU-1005"], "explain": true})),
        ticket(serde_json::json!({"v": 1, "model": "churn", "keys": ["CU-1002", "CU-1000"]})),
        ticket(serde_json::json!({"v": 2, "model": "churn", "keys": ["CU-1000"]})),
    ];
    let together = serving.predict_together(&tickets);
    assert_eq!(together.len(), tickets.len());
    for (t, got) in tickets.iter().zip(&together) {
        let mut alone = Vec::new();
        let want = serving.predict(t, usize::MAX, &mut |b| {
            alone.push(b);
            Ok(())
        });
        match (got, want) {
            (Ok(got), Ok(())) => {
                assert_eq!(got.len(), alone.len());
                for (g, w) in got.iter().zip(&alone) {
                    assert_eq!(g.schema(), w.schema());
                    assert_eq!(g.num_rows(), t.keys.len());
                    for (c, f) in g.schema().fields().iter().enumerate() {
                        let (a, b) = (g.column(c), w.column(c));
                        match (
                            a.as_any().downcast_ref::<Float64Array>(),
                            b.as_any().downcast_ref::<Float64Array>(),
                        ) {
                            (Some(a), Some(b)) => {
                                for (x, y) in a.values().iter().zip(b.values()) {
                                    assert!((x - y).abs() < 1e-6, "{}: {x} != {y}", f.name());
                                }
                            }
                            _ => assert_eq!(a, b, "{}", f.name()),
                        }
                    }
                }
            }
            (Err(got), Err(want)) => assert_eq!(got.to_string(), want.to_string()),
            (got, want) => panic!("together {got:?}, alone {want:?}"),
        }
    }
    assert!(together[2].is_err() && together[6].is_err());
}

#[test]
fn appends_go_through_while_a_part_is_scored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serving = churn_serving(dir.path());
    let ticket: Ticket =
        serde_json::from_value(serde_json::json!({"v": 1, "model": "churn", "part": [0, 1]}))
            .expect("ticket");
    // Append from inside the scoring's own callback: were the data still locked while a
    // batch goes out, this would wait for itself.
    let (mut scored, mut batches, mut totals) = (0, 0, Vec::new());
    serving
        .predict(&ticket, 64, &mut |batch| {
            scored += batch.num_rows();
            batches += 1;
            let appended = serving.append("orders", &orders(batches, 3, 1_700_000_000), None)?;
            totals.push(appended.total);
            Ok(())
        })
        .expect("predict");
    assert_eq!(scored, 300, "every customer once");
    assert!(batches > 1, "{batches} batches");
    assert!(totals.windows(2).all(|w| w[1] == w[0] + 3), "{totals:?}");
}

#[test]
fn an_append_with_an_id_happens_once_across_retries_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let size = RetailSize {
        customers: 50,
        products: 10,
        days: 60,
    };
    generate::write(&Retail::new(size, 5), &data, 5, &[]).expect("generate");
    let open = || {
        let db = Database::load(&data, None).expect("load");
        let store = PartitionStore::open(&dir.path().join("store")).expect("store");
        Serving::new(db, Some(store), Limits::default()).expect("serving")
    };
    let (first, second) = (orders(1, 3, 1_700_000_000), orders(2, 2, 1_700_000_000));
    let base = {
        let serving = open();
        let a = serving
            .append("orders", &first, Some("put-1/0"))
            .expect("append");
        assert!(!a.duplicate);
        let again = serving
            .append("orders", &first, Some("put-1/0"))
            .expect("retry");
        assert!(again.duplicate, "{again:?}");
        assert_eq!((again.seq, again.total, again.rows), (a.seq, a.total, 3));
        // Without the id, the retry is a new append (refused here: the keys exist).
        let err = serving
            .append("orders", &first, None)
            .expect_err("keys exist");
        assert!(err.to_string().contains("exists already"), "{err}");
        // The id names that append: other rows under it are refused, not dropped.
        let err = serving
            .append("orders", &second, Some("put-1/0"))
            .expect_err("reused id");
        assert!(err.to_string().contains("append id `put-1/0`"), "{err}");
        let b = serving
            .append("orders", &second, Some("put-2/0"))
            .expect("append");
        assert_eq!(b.total, a.total + 2, "the retry added nothing");
        a
    };
    // After a restart the log replays, ids included.
    let serving = open();
    let again = serving
        .append("orders", &first, Some("put-1/0"))
        .expect("retry");
    assert!(again.duplicate);
    assert_eq!((again.seq, again.total), (base.seq, base.total));
    let c = serving
        .append("orders", &orders(3, 1, 1_700_000_000), Some("put-3/0"))
        .expect("append");
    assert_eq!(
        c.total,
        base.total + 3,
        "5 appended rows replayed, and this one"
    );
}
