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
