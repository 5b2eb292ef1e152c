//! Helpers shared by the end-to-end tests: run the binary, paths as text, appended
//! orders.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampSecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

/// Runs `relgraph args...`, fails the test with its stderr unless it succeeds, and
/// returns its stdout.
pub fn relgraph(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(args)
        .output()
        .expect("run relgraph");
    assert!(
        out.status.success(),
        "relgraph {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Orders `ids` of one `customer` for one `product` at `time`, to append to a retail
/// world's `orders`.
pub fn orders(ids: &[String], customer: &str, product: &str, time: i64) -> RecordBatch {
    let n = ids.len();
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
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(ids)),
            Arc::new(StringArray::from(vec![customer; n])),
            Arc::new(StringArray::from(vec![product; n])),
            Arc::new(Int64Array::from(vec![1; n])),
            Arc::new(Float64Array::from(vec![25.0; n])),
            Arc::new(TimestampSecondArray::from(vec![time; n])),
        ],
    )
    .expect("orders batch")
}
