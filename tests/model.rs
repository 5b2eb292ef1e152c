//! End-to-end tests of training, evaluation and prediction through the binary: every
//! task type beats its simple baseline by a margin a broken model could not reach, a
//! saved model scores the same again, predictions have the documented shape, and rows
//! from after an anchor never help (the leakage canary).
//!
//! The models are small (64 channels, one encoder block, fanouts [32, 16], 4 short
//! epochs) so the suite stays fast; README "Model quality" has full-size figures.

mod common;

use common::{path, relgraph};

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const SMALL: &str =
    "channels = 64\nencoder_blocks = 1\nfanouts = [32, 16]\nepochs = 4\nmax_steps_per_epoch = 20\n";

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn retail() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        relgraph(&[
            "generate",
            "retail",
            "--out",
            path(&data),
            "--customers",
            "2000",
            "--products",
            "300",
            "--days",
            "540",
        ]);
        World { dir }
    }

    fn promotions() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        relgraph(&[
            "generate",
            "promotions",
            "--out",
            path(&data),
            "--users",
            "2000",
            "--days",
            "120",
        ]);
        World { dir }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn model(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `relgraph train --json` with the small configuration.
    fn train(&self, query: &str, data: &Path, model: &str) -> Value {
        self.train_with(query, data, model, "")
    }

    /// [`World::train`] with more configuration lines.
    fn train_with(&self, query: &str, data: &Path, model: &str, more: &str) -> Value {
        let config = self.dir.path().join(format!("{model}.toml"));
        std::fs::write(&config, format!("{SMALL}{more}")).expect("write config");
        let out = self.model(model);
        let text = relgraph(&[
            "train",
            query,
            "--data",
            path(data),
            "--out",
            path(&out),
            "--config",
            path(&config),
            "--json",
        ]);
        serde_json::from_str(&text).expect("one JSON object")
    }
}

fn metric(report: &Value, which: &str, split: &str, name: &str) -> f64 {
    let v = if which == "model" {
        &report["metrics"][split][name]
    } else {
        &report["baseline"][split][name]
    };
    v.as_f64()
        .unwrap_or_else(|| panic!("{which} {split} {name} in {report}"))
}

#[test]
fn regression_and_forecasts_beat_their_baselines() {
    let w = World::retail();
    let r = w.train(
        "PREDICT COUNT(ORDERS.*, 0, 30, days) FOR EACH CUSTOMERS.CUSTOMER_ID WHERE COUNT(ORDERS.*, -30, 0, days) > 0",
        &w.data(),
        "count",
    );
    assert_eq!(r["task_type"], "regression");
    for key in ["epochs", "train_seconds", "examples"] {
        assert!(!r[key].is_null(), "{key} missing in {r}");
    }
    let (model, baseline) = (
        metric(&r, "model", "test", "mae"),
        metric(&r, "baseline", "test", "mae"),
    );
    assert!(
        model <= 0.9 * baseline,
        "MAE {model} vs baseline {baseline}"
    );
    let f = w.train(
        "PREDICT COUNT(ORDERS.*, 0, 30, days) FORECAST 3 TIMEFRAMES FOR EACH CUSTOMERS.CUSTOMER_ID",
        &w.data(),
        "forecast",
    );
    assert_eq!(f["task_type"], "forecasting");
    let (model, baseline) = (
        metric(&f, "model", "test", "mae"),
        metric(&f, "baseline", "test", "mae"),
    );
    assert!(
        model <= 0.9 * baseline,
        "forecast MAE {model} vs baseline {baseline}"
    );
}

#[test]
fn ranking_beats_the_most_popular_items() {
    let w = World::retail();
    let r = w.train(
        "PREDICT LIST_DISTINCT(ORDERS.PRODUCT_ID, 0, 14, days) RANK TOP 5 FOR EACH CUSTOMERS.CUSTOMER_ID",
        &w.data(),
        "recs",
    );
    assert_eq!(r["baseline"]["name"], "most popular items");
    let (model, baseline) = (
        metric(&r, "model", "test", "map@5"),
        metric(&r, "baseline", "test", "map@5"),
    );
    assert!(
        model >= 1.5 * baseline && model > 0.0,
        "MAP@5 {model} vs baseline {baseline}"
    );
    // Predictions: k rows per customer, ranked 1..k, best first.
    let out = w.model("recs.csv");
    relgraph(&[
        "predict",
        "PREDICT BOOL(ORDERS.PRODUCT_ID, 0, 14, days) FOR EACH CUSTOMERS.CUSTOMER_ID, PRODUCTS.PRODUCT_ID RANK TOP 5",
        "--model",
        path(&w.model("recs")),
        "--data",
        path(&w.data()),
        "--out",
        path(&out),
        "--format",
        "csv",
    ]);
    let text = std::fs::read_to_string(&out).expect("csv");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("customer_id,anchor_time,item,rank,score")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 5 * 2000);
    for group in rows.chunks(5) {
        let ranks: Vec<&str> = group.iter().map(|r| r[3]).collect();
        assert_eq!(ranks, ["1", "2", "3", "4", "5"]);
        let scores: Vec<f64> = group.iter().map(|r| r[4].parse().expect("score")).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        assert!(group.iter().all(|r| r[0] == group[0][0]));
    }
}

#[test]
fn multiclass_beats_the_majority_and_a_saved_model_scores_the_same() {
    let w = World::retail();
    let r = w.train(
        "PREDICT CUSTOMERS.SEGMENT FOR EACH CUSTOMERS.CUSTOMER_ID",
        &w.data(),
        "segment",
    );
    assert_eq!(r["task_type"], "multiclass classification");
    let (acc, base) = (
        metric(&r, "model", "test", "accuracy"),
        metric(&r, "baseline", "test", "accuracy"),
    );
    assert!(acc > base, "accuracy {acc} vs baseline {base}");
    let (f1, base_f1) = (
        metric(&r, "model", "test", "macro_f1"),
        metric(&r, "baseline", "test", "macro_f1"),
    );
    assert!(f1 >= base_f1 + 0.1, "macro-F1 {f1} vs baseline {base_f1}");
    let again: Value = serde_json::from_str(&relgraph(&[
        "evaluate",
        path(&w.model("segment")),
        "--data",
        path(&w.data()),
        "--json",
    ]))
    .expect("json");
    assert_eq!(again["metrics"], r["metrics"]);
    assert_eq!(again["baseline"], r["baseline"]);
    // A damaged parameter file is refused, not scored.
    let params = w.model("segment").join("params.bin");
    let mut bytes = std::fs::read(&params).expect("params");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&params, bytes).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args([
            "evaluate",
            path(&w.model("segment")),
            "--data",
            path(&w.data()),
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
}

#[test]
fn conditional_binary_beats_its_baselines_and_predicts_probabilities() {
    let w = World::promotions();
    let query = "PREDICT COUNT(PURCHASES.*, 1, 4, days) > 0 FOR EACH USERS.USER_ID WHERE USERS.NOTIF_ELIGIBLE = 1 ASSUMING COUNT(NOTIFICATIONS.* WHERE NOTIFICATIONS.TYPE = 'PUSH', 0, 1, days) > 0";
    let r = w.train_with(query, &w.data(), "promo", "assuming = \"conditional\"\n");
    assert_eq!(r["task_type"], "binary classification");
    let (auc, base) = (
        metric(&r, "model", "test", "auroc"),
        metric(&r, "baseline", "test", "auroc"),
    );
    assert!(auc >= base + 0.05, "AUROC {auc} vs baseline {base}");
    let out = w.model("promo.parquet");
    relgraph(&[
        "predict",
        query,
        "--model",
        path(&w.model("promo")),
        "--data",
        path(&w.data()),
        "--out",
        path(&out),
        "--anchor",
        "2025-04-15",
    ]);
    let file = std::fs::File::open(&out).expect("parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("reader")
        .build()
        .expect("build");
    let mut rows = 0;
    for batch in reader {
        let batch = batch.expect("batch");
        let names: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["user_id", "anchor_time", "prob"]);
        let probs = batch
            .column(2)
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .expect("f64");
        assert!(probs.values().iter().all(|p| (0.0..=1.0).contains(p)));
        rows += batch.num_rows();
    }
    // Only users eligible for notifications are asked about (WHERE holds on the past).
    assert!(rows > 100 && rows < 2000, "{rows} rows");
}

#[test]
fn nycflights_plane_inactivity_beats_its_baselines() {
    let w = World {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/nycflights13");
    let r = w.train(
        "PREDICT COUNT(flights.*, 0, 7, days) = 0 FOR EACH planes.tailnum WHERE COUNT(flights.*, -30, 0, days) > 0",
        &data,
        "planes",
    );
    let (auc, base) = (
        metric(&r, "model", "test", "auroc"),
        metric(&r, "baseline", "test", "auroc"),
    );
    assert!(auc >= base + 0.05, "AUROC {auc} vs baseline {base}");
}

/// Copies each example's label into a row of a new table timestamped one day after its
/// anchor. Visible, it would give the answer away; the rule "nothing after the anchor"
/// must keep the metric where it is without it.
#[test]
fn a_label_copied_into_the_future_does_not_help() {
    let w = World::retail();
    let query = "PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID WHERE COUNT(ORDERS.*, -90, 0, days) > 0";
    let plain = w.train(query, &w.data(), "plain");
    let labels = w.model("labels.parquet");
    relgraph(&[
        "labels",
        query,
        "--data",
        path(&w.data()),
        "--out",
        path(&labels),
    ]);
    let file = std::fs::File::open(&labels).expect("labels");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("reader")
        .build()
        .expect("build");
    let mut csv = String::from("hint_id,customer_id,timestamp,answer\n");
    let mut n = 0;
    for batch in reader {
        let batch = batch.expect("batch");
        let keys =
            arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).expect("cast");
        let keys = keys
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("keys");
        let anchors = batch
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::TimestampSecondArray>()
            .expect("anchors");
        let answers = batch
            .column(2)
            .as_any()
            .downcast_ref::<arrow::array::BooleanArray>()
            .expect("labels");
        for i in 0..batch.num_rows() {
            let when = relgraph_common::time::format_timestamp(anchors.value(i) + 86_400);
            csv.push_str(&format!(
                "H{n},{},{when},{}\n",
                keys.value(i),
                u8::from(answers.value(i))
            ));
            n += 1;
        }
    }
    let leaky = w.dir.path().join("leaky");
    std::fs::create_dir_all(&leaky).expect("dir");
    for entry in std::fs::read_dir(w.data()).expect("data") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), leaky.join(entry.file_name())).expect("copy");
    }
    std::fs::write(leaky.join("hints.csv"), csv).expect("hints");
    let canary = w.train(query, &leaky, "canary");
    let (with, without) = (
        metric(&canary, "model", "test", "auroc"),
        metric(&plain, "model", "test", "auroc"),
    );
    assert!(with < 0.9, "the future label leaked: AUROC {with}");
    assert!(
        (with - without).abs() < 0.06,
        "AUROC {with} with the canary, {without} without"
    );
}

#[test]
fn one_thread_and_one_seed_train_the_same_model_twice() {
    let w = World::retail();
    let config = w.dir.path().join("tiny.toml");
    std::fs::write(&config, "channels = 32\nencoder_blocks = 1\nfanouts = [8, 4]\nepochs = 2\nmax_steps_per_epoch = 5\n")
        .expect("config");
    let run = |name: &str| {
        let out = w.model(name);
        relgraph(&[
            "train",
            "PREDICT CUSTOMERS.SEGMENT FOR EACH CUSTOMERS.CUSTOMER_ID",
            "--data",
            path(&w.data()),
            "--out",
            path(&out),
            "--config",
            path(&config),
            "--threads",
            "1",
        ]);
        std::fs::read(out.join("params.bin")).expect("params")
    };
    let (a, b) = (run("a"), run("b"));
    assert!(a == b, "two runs with one seed on one thread differ");
}

#[test]
fn ctrl_c_stops_training_and_saves_the_best_model() {
    let w = World::retail();
    let out = w.model("interrupted");
    let config = w.dir.path().join("long.toml");
    std::fs::write(
        &config,
        "channels = 32\nfanouts = [8, 4]\nepochs = 1000\npatience = 1000\n",
    )
    .expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_relgraph"))
        .args([
            "train",
            "PREDICT CUSTOMERS.SEGMENT FOR EACH CUSTOMERS.CUSTOMER_ID",
            "--data",
            path(&w.data()),
            "--out",
            path(&out),
            "--config",
            path(&config),
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let done = child.wait_with_output().expect("wait");
    assert!(done.status.success(), "{:?}", done.status);
    let report: Value = serde_json::from_slice(&done.stdout).expect("json");
    assert_eq!(report["interrupted"], true, "{report}");
    assert!(report["epochs"].as_u64().expect("epochs") < 1000);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("model.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["format"], "relgraph-model");
    assert_eq!(manifest["version"], 1);
}

#[test]
fn a_device_is_named_or_refused_with_the_reason_before_any_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (device, says) in [
        ("gpu", "expected cpu, cuda, cuda:N or auto"),
        // No such device here (or no CUDA in this build): the error names it.
        ("cuda:3", "device `cuda:3`: "),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_relgraph"))
            .args([
                "train",
                "PREDICT CUSTOMERS.SEGMENT FOR EACH CUSTOMERS.CUSTOMER_ID",
                "--data",
                path(&dir.path().join("missing")),
                "--out",
                path(&dir.path().join("model")),
                "--device",
                device,
            ])
            .output()
            .expect("run relgraph");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{device}: {stderr}"
        );
        assert!(
            !stderr.contains("missing"),
            "{device}: the device is checked first"
        );
    }
}
