//! End-to-end tests of the `relgraph` binary: what a user types, what they see.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn relgraph(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args(args)
        .output()
        .expect("run relgraph")
}

fn stdout_of(args: &[&str]) -> String {
    let out = relgraph(args);
    assert!(
        out.status.success(),
        "relgraph {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

fn nycflights() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/nycflights13")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn inspect_json_has_the_documented_shape() {
    let text = stdout_of(&["inspect", path(&nycflights()), "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let tables = doc["tables"].as_array().expect("tables");
    let flights = tables
        .iter()
        .find(|t| t["name"] == "flights")
        .expect("flights");
    assert_eq!(flights["rows"], 336_776);
    assert!(flights["primary_key"].is_null());
    assert_eq!(flights["time_column"], "time_hour");
    let dest = flights["foreign_keys"]
        .as_array()
        .expect("fks")
        .iter()
        .find(|f| f["column"] == "dest")
        .expect("dest");
    assert_eq!(dest["references"], "airports");
    assert!(dest["dangling"].as_u64().expect("count") > 0);
    let column = &flights["columns"][0];
    assert_eq!(
        (
            column["name"].as_str(),
            column["dtype"].as_str(),
            column["stype"].as_str()
        ),
        (Some("year"), Some("int64"), Some("numerical"))
    );
    let airports = tables
        .iter()
        .find(|t| t["name"] == "airports")
        .expect("airports");
    assert_eq!(airports["primary_key"], "faa");
    assert!(airports["time_column"].is_null());
}

#[test]
fn generate_then_emit_edit_and_reload_the_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("promo");
    let summary = stdout_of(&[
        "generate",
        "promotions",
        "--out",
        path(&data),
        "--users",
        "300",
        "--days",
        "40",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("json");
    assert!(summary["rows"].as_u64().expect("rows") > 300);
    assert!(data.join("_truth/uplift.csv").is_file());

    let emitted = stdout_of(&["inspect", path(&data), "--emit-schema"]);
    let edited = emitted.replace(
        "notif_eligible = { dtype = \"int64\", stype = \"categorical\" }",
        "notif_eligible = { dtype = \"int64\", stype = \"numerical\" }",
    );
    assert_ne!(edited, emitted, "the emitted schema lists notif_eligible");
    let schema = dir.path().join("schema.toml");
    std::fs::write(&schema, edited).expect("write schema");
    let text = stdout_of(&["inspect", path(&data), "--schema", path(&schema), "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let users = doc["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["name"] == "users")
        .expect("users");
    let eligible = users["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .find(|c| c["name"] == "notif_eligible")
        .expect("column");
    assert_eq!(eligible["stype"], "numerical");
    assert!(
        doc["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .all(|t| t["name"] != "_truth")
    );
}

#[test]
fn bad_input_fails_with_a_located_message_and_no_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("orders.csv"),
        "order_id,amount\nO1,1\nO2,2,3\n",
    )
    .expect("write");
    let out = relgraph(&["inspect", path(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("orders.csv:3: expected 2 fields as in the header, found 3"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_example_schema_in_deploy_loads_nycflights() {
    let example =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/nycflights13.schema.toml");
    let text = stdout_of(&[
        "inspect",
        path(&nycflights()),
        "--schema",
        path(&example),
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let flights = doc["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["name"] == "flights")
        .expect("flights");
    let flight = flights["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .find(|c| c["name"] == "flight")
        .expect("flight");
    assert_eq!(
        (flight["dtype"].as_str(), flight["stype"].as_str()),
        (Some("string"), Some("categorical"))
    );
}

const PUSH_QUERY: &str = "PREDICT COUNT(PURCHASES.*, 1, 4, days) > 0 FOR EACH USERS.USER_ID WHERE USERS.NOTIF_ELIGIBLE = 1 \
    ASSUMING COUNT(NOTIFICATIONS.* WHERE NOTIFICATIONS.TYPE = 'PUSH', 0, 1, days) > 0";

fn promotions(dir: &Path) -> PathBuf {
    let data = dir.join("promo");
    stdout_of(&[
        "generate",
        "promotions",
        "--out",
        path(&data),
        "--users",
        "400",
        "--days",
        "60",
    ]);
    data
}

fn read_parquet(file: &Path) -> arrow::array::RecordBatch {
    let f = std::fs::File::open(file).expect("open parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .build()
        .expect("reader");
    let batches: Vec<_> = reader.map(|b| b.expect("batch")).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("concat")
}

#[test]
fn pql_check_reports_plan_anchors_and_label_statistics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = promotions(dir.path());
    // The push varies in the data, so ASSUMING is a treatment by default: every example
    // is kept and flagged.
    let text = stdout_of(&["pql", "check", PUSH_QUERY, "--data", path(&data), "--json"]);
    let treated: serde_json::Value = serde_json::from_str(&text).expect("json");
    let rate = treated["labels"]["train"]["treated_rate"]
        .as_f64()
        .expect("treated rate");
    assert!(rate > 0.05 && rate < 0.3, "{rate}");
    assert!(
        treated["dropped"]
            .get("ASSUMING is false or unknown")
            .is_none()
    );
    let text = stdout_of(&[
        "pql",
        "check",
        PUSH_QUERY,
        "--data",
        path(&data),
        "--assuming",
        "conditional",
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let (all, held) = (
        treated["labels"]["train"]["examples"]
            .as_u64()
            .expect("examples"),
        doc["labels"]["train"]["examples"]
            .as_u64()
            .expect("examples"),
    );
    assert_eq!(held, (all as f64 * rate).round() as u64);
    assert_eq!(doc["task"], "binary classification");
    assert_eq!(doc["metrics"][0], "auroc");
    assert_eq!(doc["step_days"], 3.0);
    let anchors = doc["anchors"].as_array().expect("anchors");
    assert_eq!(anchors.last().expect("test anchor")["split"], "test");
    let train = &doc["labels"]["train"];
    assert!(train["examples"].as_u64().expect("examples") > 0);
    let rate = train["positive_rate"].as_f64().expect("rate");
    assert!(rate > 0.0 && rate < 1.0, "{rate}");
    assert!(
        doc["dropped"]["ASSUMING is false or unknown"]
            .as_u64()
            .expect("dropped")
            > 0
    );

    let out = dir.path().join("labels.parquet");
    stdout_of(&[
        "labels",
        PUSH_QUERY,
        "--data",
        path(&data),
        "--out",
        path(&out),
        "--assuming",
        "conditional",
    ]);
    let batch = read_parquet(&out);
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["user_id", "anchor_time", "label", "split"]);
    let total: u64 = ["train", "val", "test"]
        .iter()
        .map(|s| doc["labels"][s]["examples"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(batch.num_rows() as u64, total);
    assert_eq!(
        batch.column(2).data_type(),
        &arrow::datatypes::DataType::Boolean
    );
}

#[test]
fn labels_at_explicit_anchors_are_for_prediction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = promotions(dir.path());
    let out = dir.path().join("predict.parquet");
    let query = "PREDICT SUM(purchases.amount, 0, 7, days) FOR EACH users.user_id";
    stdout_of(&[
        "labels",
        query,
        "--data",
        path(&data),
        "--out",
        path(&out),
        "--anchor",
        "2025-02-01",
        "--anchor",
        "2025-02-08",
    ]);
    let batch = read_parquet(&out);
    let splits = batch
        .column(3)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .expect("split");
    assert!(splits.iter().all(|s| s == Some("predict")));
    assert!(batch.num_rows() > 0);
    assert_eq!(
        batch.column(2).data_type(),
        &arrow::datatypes::DataType::Float64
    );
}

#[test]
fn a_wrong_query_shows_where_and_what() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = promotions(dir.path());
    let out = relgraph(&[
        "pql",
        "check",
        "PREDICT SUM(purchases.amout, 0, 7) FOR EACH users.user_id",
        "--data",
        path(&data),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1:23: no column `amout` in `purchases`; did you mean `amount`?"),
        "{err}"
    );
    assert!(err.contains("                      ^^^^^"), "{err}");
}

#[test]
fn bench_sample_reports_throughput_and_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("retail");
    stdout_of(&[
        "generate",
        "retail",
        "--out",
        path(&data),
        "--customers",
        "300",
        "--products",
        "40",
        "--days",
        "120",
    ]);
    let text = stdout_of(&[
        "bench",
        "sample",
        "--data",
        path(&data),
        "--table",
        "customers",
        "--fanout",
        "8,4",
        "--batch",
        "32",
        "--batches",
        "3",
        "--rounds",
        "3",
        "--threads",
        "1",
        "--anchor",
        "last",
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(doc["threads"], 1);
    assert_eq!(doc["seed_table"], "customers");
    let bytes = doc["graph"]["bytes_per_edge"].as_f64().expect("bytes");
    assert!(bytes > 12.0 && bytes <= 16.0, "{bytes}");
    assert!(doc["graph"]["edges"].as_u64().expect("edges") > 0);
    assert!(doc["sampled_edges_per_seed"].as_f64().expect("per seed") > 0.0);
    assert_eq!(doc["rounds"], 3);
    let rate = |key: &str| doc[key].as_f64().expect("rate");
    assert!(rate("sampled_edges_per_second_min") <= rate("sampled_edges_per_second"));
    assert!(rate("sampled_edges_per_second") <= rate("sampled_edges_per_second_max"));
}
