//! Loading: every input format, schema.toml overrides, and a clear error for each kind of
//! bad input (what, where, what was expected).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Array, Int32Array, RecordBatch, StringArray, TimestampMillisecondArray,
    TimestampSecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use relgraph_common::schema_file::to_toml;
use relgraph_common::time::parse_timestamp;
use relgraph_common::{DType, Database, LoadError, SType};
use tempfile::TempDir;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&path, text).expect("write");
    path
}

fn shop() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "customers.csv",
        "customer_id,segment,joined\nC1,gold,2024-01-01\nC2,NA,2024-01-02\nC3,,2024-01-03\n",
    );
    write(
        dir.path(),
        "orders.csv",
        "order_id,customer_id,amount,timestamp\nO1,C1,10.5,2024-02-01 10:00:00\nO2,C2,3,2024-02-02 11:00:00\nO3,C9,7.25,2024-02-03T12:00:00Z\n",
    );
    dir
}

fn load_err(dir: &Path) -> String {
    Database::load(dir, None)
        .expect_err("bad input must fail")
        .to_string()
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "`{message}` should mention `{p}`");
    }
}

#[test]
fn csv_tables_are_typed_keyed_and_linked() {
    let dir = shop();
    let db = Database::load(dir.path(), None).expect("load");
    let customers = db.table("customers").expect("customers");
    assert_eq!(customers.schema.primary_key.as_deref(), Some("customer_id"));
    assert_eq!(customers.schema.time_column.as_deref(), Some("joined"));
    let segment = customers.column("segment").expect("segment");
    assert_eq!(segment.null_count(), 2, "empty and NA are null");
    let orders = db.table("orders").expect("orders");
    assert_eq!(
        orders.schema.column("amount").map(|c| c.dtype),
        Some(DType::Float64)
    );
    assert_eq!(
        orders.schema.column("customer_id").map(|c| c.stype),
        Some(SType::Id)
    );
    assert_eq!(orders.schema.foreign_keys.len(), 1);
    assert_eq!(orders.schema.foreign_keys[0].references, "customers");
    assert_eq!(orders.dangling, vec![1], "C9 has no customer");
    let ts = orders.column("timestamp").expect("timestamp");
    let ts = ts
        .as_any()
        .downcast_ref::<TimestampSecondArray>()
        .expect("seconds");
    assert_eq!(Some(ts.value(2)), parse_timestamp("2024-02-03 12:00:00"));
}

#[test]
fn gzip_parquet_and_part_folders_load_like_csv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gz = std::fs::File::create(dir.path().join("customers.csv.gz")).expect("create");
    let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::fast());
    enc.write_all(b"customer_id,age\nC1,30\nC2,41\n")
        .expect("gz");
    enc.finish().expect("gz finish");
    write(
        dir.path(),
        "orders/part-0.csv",
        "order_id,customer_id,timestamp\nO1,C1,2024-01-01\n",
    );
    write(
        dir.path(),
        "orders/part-1.csv",
        "order_id,customer_id,timestamp\nO2,C2,2024-01-02\nO3,C1,2024-01-03\n",
    );
    write(dir.path(), "orders/_SUCCESS", "");
    let schema = Arc::new(Schema::new(vec![
        Field::new("visit_id", DataType::Int32, false),
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("score", DataType::Float32, true),
        Field::new("at", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![1, 2, 3])),
        Arc::new(StringArray::from(vec![Some("C1"), None, Some("C2")])),
        Arc::new(Float32Array::from(vec![0.5, 1.5, 2.5])),
        Arc::new(TimestampMillisecondArray::from(vec![
            1_704_067_200_999,
            1_704_067_260_000,
            -1,
        ])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
    let file = std::fs::File::create(dir.path().join("visits.parquet")).expect("create");
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");

    let db = Database::load(dir.path(), None).expect("load");
    assert_eq!(db.table("customers").expect("customers").num_rows(), 2);
    let orders = db.table("orders").expect("orders");
    assert_eq!(orders.num_rows(), 3);
    assert_eq!(orders.dangling, vec![0]);
    let visits = db.table("visits").expect("visits");
    assert_eq!(visits.schema.primary_key.as_deref(), Some("visit_id"));
    assert_eq!(visits.schema.time_column.as_deref(), Some("at"));
    assert_eq!(
        visits.schema.column("score").map(|c| c.dtype),
        Some(DType::Float64)
    );
    let at = visits.column("at").expect("at");
    let at = at
        .as_any()
        .downcast_ref::<TimestampSecondArray>()
        .expect("seconds");
    assert_eq!(
        (at.value(0), at.value(2)),
        (1_704_067_200, -1),
        "floored to seconds"
    );
    assert_eq!(visits.schema.foreign_keys[0].references, "customers");
    assert!(db.skipped.is_empty(), "{:?}", db.skipped);
}

#[test]
fn schema_toml_overrides_every_guess_and_round_trips() {
    let dir = shop();
    let db = Database::load(dir.path(), None).expect("load");
    let emitted = to_toml(&db.schema());
    let path = write(dir.path(), "edited.toml", &emitted);
    let again = Database::load(dir.path(), Some(&path)).expect("reload with emitted schema");
    assert_eq!(again.schema(), db.schema());

    write(
        dir.path(),
        "schema.toml",
        "[tables.orders]\nprimary_key = \"\"\ntime_column = \"\"\nforeign_keys = {}\n\
         [tables.orders.columns]\namount = { dtype = \"string\", stype = \"text\" }\n\
         [tables.customers.columns]\nsegment = { stype = \"text\" }\n",
    );
    let db = Database::load(dir.path(), None).expect("schema.toml in the directory applies");
    let orders = db.table("orders").expect("orders");
    assert_eq!(orders.schema.primary_key, None);
    assert_eq!(orders.schema.time_column, None);
    assert!(orders.schema.foreign_keys.is_empty());
    let amount = orders.schema.column("amount").expect("amount");
    assert_eq!((amount.dtype, amount.stype), (DType::String, SType::Text));
    let segment = db
        .table("customers")
        .and_then(|t| t.schema.column("segment"))
        .expect("segment");
    assert_eq!(segment.stype, SType::Text);
    assert!(!db.skipped.iter().any(|p| p.ends_with("schema.toml")));
}

#[test]
fn duplicate_primary_keys_name_both_lines() {
    let dir = shop();
    write(
        dir.path(),
        "customers.csv",
        "customer_id,segment\nC1,a\nC2,b\nC1,c\n",
    );
    let err = load_err(dir.path());
    assert_mentions(
        &err,
        &[
            "customers.csv:4",
            "customers.csv:2",
            "duplicate primary key `C1`",
            "customer_id",
        ],
    );
    write(
        dir.path(),
        "customers.csv",
        "code,segment\nC1,a\nC2,b\nC1,c\n",
    );
    write(
        dir.path(),
        "schema.toml",
        "[tables.customers]\nprimary_key = \"code\"\n",
    );
    assert_mentions(&load_err(dir.path()), &["customers.csv:4", "`C1`", "code"]);
}

#[test]
fn null_primary_keys_are_errors() {
    let dir = shop();
    write(
        dir.path(),
        "customers.csv",
        "customer_id,segment\nC1,a\n,b\n",
    );
    assert_mentions(
        &load_err(dir.path()),
        &["customers.csv:3", "customer_id", "is null"],
    );
}

#[test]
fn ragged_rows_name_line_and_counts() {
    let dir = shop();
    write(
        dir.path(),
        "orders.csv",
        "order_id,customer_id,amount\nO1,C1,1\n\"O2\nstill O2\",C2,2\nO3,C3\n",
    );
    let err = load_err(dir.path());
    assert_mentions(&err, &["orders.csv:5", "expected 3 fields", "found 2"]);
}

#[test]
fn unparseable_timestamps_in_a_time_column_name_line_column_and_form() {
    let dir = shop();
    let mut text = String::from("order_id,customer_id,timestamp\n");
    for i in 0..30 {
        let day = if i == 17 {
            "2024-02-30".to_string()
        } else {
            format!("2024-01-{:02}", i % 28 + 1)
        };
        text.push_str(&format!("O{i},C1,{day}\n"));
    }
    write(dir.path(), "orders.csv", &text);
    let err = load_err(dir.path());
    assert_mentions(
        &err,
        &["orders.csv:19", "`timestamp`", "`2024-02-30`", "YYYY-MM-DD"],
    );

    write(
        dir.path(),
        "orders.csv",
        "order_id,customer_id,when\nO1,C1,yesterday\n",
    );
    write(
        dir.path(),
        "schema.toml",
        "[tables.orders.columns]\nwhen = { dtype = \"timestamp\" }\n",
    );
    assert_mentions(
        &load_err(dir.path()),
        &["orders.csv:2", "`when`", "`yesterday`", "timestamp"],
    );
}

#[test]
fn unreadable_files_are_named() {
    let dir = shop();
    write(dir.path(), "events.csv.gz", "this is not gzip");
    assert_mentions(&load_err(dir.path()), &["events.csv.gz"]);
    std::fs::remove_file(dir.path().join("events.csv.gz")).expect("rm");
    write(dir.path(), "visits.parquet", "PAR1 nonsense");
    assert_mentions(&load_err(dir.path()), &["visits.parquet", "Parquet"]);
    std::fs::remove_file(dir.path().join("visits.parquet")).expect("rm");
    write(dir.path(), "bad.csv", "id,name\n1,\u{FFFD}ok\n");
    std::fs::write(dir.path().join("bad.csv"), b"id,name\n1,ok\n2,\xff\xfe\n").expect("write");
    assert_mentions(&load_err(dir.path()), &["bad.csv:3", "UTF-8"]);
    let missing = dir.path().join("nope");
    assert_mentions(
        &Database::load(&missing, None)
            .expect_err("missing")
            .to_string(),
        &["nope"],
    );
}

#[test]
fn header_problems_are_errors() {
    let dir = shop();
    write(dir.path(), "orders.csv", "order_id,amount,amount\nO1,1,2\n");
    assert_mentions(
        &load_err(dir.path()),
        &["orders.csv:1", "`amount` repeats column 2"],
    );
    write(dir.path(), "orders.csv", "");
    assert_mentions(&load_err(dir.path()), &["orders.csv", "no header"]);
}

#[test]
fn schema_toml_mistakes_name_file_table_and_column() {
    let dir = shop();
    write(
        dir.path(),
        "schema.toml",
        "[tables.orders.columns]\namout = { stype = \"numerical\" }\n",
    );
    assert_mentions(
        &load_err(dir.path()),
        &[
            "schema.toml",
            "table `orders` has no column `amout`",
            "did you mean `amount`",
        ],
    );
    write(
        dir.path(),
        "schema.toml",
        "[tables.order]\ntime_column = \"timestamp\"\n",
    );
    assert_mentions(
        &load_err(dir.path()),
        &["schema.toml", "no table `order`", "`orders`"],
    );
    write(
        dir.path(),
        "schema.toml",
        "[tables.orders]\nforeign_keys = { customer_id = \"clients\" }\n",
    );
    assert_mentions(
        &load_err(dir.path()),
        &["schema.toml", "`clients`, which is not a table"],
    );
    write(
        dir.path(),
        "schema.toml",
        "[tables.orders]\ntime_column = \"amount\"\n",
    );
    assert_mentions(
        &load_err(dir.path()),
        &["schema.toml", "time column `amount` has type float64"],
    );
    write(
        dir.path(),
        "schema.toml",
        "[tables.orders.columns]\namount = { dtype = \"decimal\" }\n",
    );
    assert_mentions(&load_err(dir.path()), &["schema.toml", "decimal"]);
}

#[test]
fn directory_problems_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "README.md", "no tables here");
    assert!(matches!(
        Database::load(dir.path(), None),
        Err(LoadError::NoTables { .. })
    ));
    write(dir.path(), "a.csv", "id\n1\n");
    write(dir.path(), "a.parquet", "");
    assert_mentions(&load_err(dir.path()), &["table `a` is given twice"]);
}
