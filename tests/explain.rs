//! End-to-end tests of explanations and counterfactual uplift (PQL.md §7):
//! - in a world whose label depends on one planted column, that column gets the largest
//!   attribution for most entities, and permuting it drops the metric;
//! - attributions' absolute shares add up to 100% and repeat exactly;
//! - `predict --explain` adds the explanation columns;
//! - on `promotions`, the counterfactual model ranks users by uplift at least as well as a
//!   two-model T-learner, and far better than random (Qini against the known effects).

mod common;

use std::path::Path;

use common::{path, relgraph};
use serde_json::Value;

const QUERY: &str = "PREDICT customers.segment FOR EACH customers.customer_id";

const SMALL: &str = "channels = 32\nencoder_blocks = 1\nfanouts = [8, 4]\nepochs = 8\nbatch_size = 128\nmax_steps_per_epoch = 20\n";

/// `relgraph generate planted` (segment decided by the `planted` column), permuted or
/// not.
fn planted_world(dir: &Path, permute: bool) {
    let mut args = vec!["generate", "planted", "--out", path(dir)];
    if permute {
        args.push("--permuted");
    }
    relgraph(&args);
}

fn explain(model: &Path, data: &Path, entities: &[String], method: &str) -> Vec<Value> {
    let mut args = vec![
        "explain",
        QUERY,
        "--model",
        path(model),
        "--data",
        path(data),
        "--method",
        method,
        "--json",
    ];
    for e in entities {
        args.push("--entity");
        args.push(e);
    }
    serde_json::from_str(&relgraph(&args)).expect("a JSON list")
}

/// `relgraph predict --format csv` (with `more` flags) into `out`; the file's text.
fn predict_csv(query: &str, model: &Path, data: &Path, out: &Path, more: &[&str]) -> String {
    let mut args = vec![
        "predict",
        query,
        "--model",
        path(model),
        "--data",
        path(data),
        "--out",
        path(out),
        "--format",
        "csv",
    ];
    args.extend_from_slice(more);
    relgraph(&args);
    std::fs::read_to_string(out).expect("csv")
}

#[test]
fn the_planted_column_explains_the_label() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, permuted, model) = (
        dir.path().join("data"),
        dir.path().join("permuted"),
        dir.path().join("model"),
    );
    planted_world(&data, false);
    planted_world(&permuted, true);
    let config = dir.path().join("small.toml");
    std::fs::write(&config, SMALL).expect("config");
    let report: Value = serde_json::from_str(&relgraph(&[
        "train",
        QUERY,
        "--data",
        path(&data),
        "--out",
        path(&model),
        "--config",
        path(&config),
        "--json",
    ]))
    .expect("json");
    let accuracy = report["metrics"]["test"]["accuracy"]
        .as_f64()
        .expect("accuracy");
    assert!(accuracy > 0.8, "accuracy {accuracy}: {report}");
    // Global importance is part of train's report, and the planted column leads it.
    assert_eq!(report["importance"][0]["column"], "planted", "{report}");

    let entities: Vec<String> = (0..1500).step_by(37).map(|i| format!("C-{i}")).collect();
    for method in ["integrated", "gradient"] {
        let explanations = explain(&model, &data, &entities, method);
        assert_eq!(explanations.len(), entities.len());
        let mut planted_first = 0;
        for e in &explanations {
            let columns = e["columns"].as_array().expect("columns");
            let total: f64 = columns
                .iter()
                .map(|c| c["share"].as_f64().expect("share").abs())
                .sum();
            assert!(
                (total - 100.0).abs() < 1e-6,
                "shares add up to {total}: {e}"
            );
            let tables: f64 = e["tables"]
                .as_array()
                .expect("tables")
                .iter()
                .map(|t| t["share"].as_f64().expect("share"))
                .sum();
            let signed: f64 = columns
                .iter()
                .map(|c| c["share"].as_f64().expect("share"))
                .sum();
            assert!(
                (tables - signed).abs() < 1e-6,
                "tables {tables} vs columns {signed}"
            );
            if columns[0]["column"] == "planted" {
                planted_first += 1;
            }
            assert!(!e["rows"].as_array().expect("rows").is_empty(), "{e}");
        }
        assert!(
            planted_first * 10 >= explanations.len() * 7,
            "{method}: planted first for {planted_first} of {}",
            explanations.len()
        );
        // The same model, data and seed explain the same way, to the last digit.
        assert_eq!(
            explain(&model, &data, &entities[..5], method),
            explanations[..5]
        );
    }

    // Permuting the planted column breaks what the model learned from it.
    let assessed: Value = serde_json::from_str(&relgraph(&[
        "evaluate",
        path(&model),
        "--data",
        path(&permuted),
        "--json",
    ]))
    .expect("json");
    let after = assessed["metrics"]["test"]["accuracy"]
        .as_f64()
        .expect("accuracy");
    assert!(
        after < accuracy - 0.2,
        "accuracy {accuracy} -> {after} with the column permuted"
    );

    // predict --explain adds each entity's top columns and rows.
    let out = dir.path().join("explained.csv");
    let text = predict_csv(QUERY, &model, &data, &out, &["--explain"]);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("customer_id,anchor_time,class,prob,top_columns,top_rows")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1500);
    let planted = rows
        .iter()
        .filter(|r| r.contains("customers.planted"))
        .count();
    assert!(planted > 1400, "{planted} rows name the planted column");
}

#[test]
fn counterfactual_uplift_beats_the_t_learner_and_random() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    relgraph(&[
        "generate",
        "promotions",
        "--out",
        path(&data),
        "--users",
        "3000",
        "--days",
        "150",
    ]);
    let query = "PREDICT COUNT(PURCHASES.*, 1, 4, days) > 0 FOR EACH USERS.USER_ID WHERE USERS.NOTIF_ELIGIBLE = 1 ASSUMING COUNT(NOTIFICATIONS.* WHERE NOTIFICATIONS.TYPE = 'PUSH', 0, 1, days) > 0";
    let config = dir.path().join("small.toml");
    std::fs::write(
        &config,
        "channels = 64\nencoder_blocks = 1\nfanouts = [32, 16]\nepochs = 4\nmax_steps_per_epoch = 60\n",
    )
    .expect("config");
    let model = dir.path().join("model");
    relgraph(&[
        "train",
        query,
        "--data",
        path(&data),
        "--out",
        path(&model),
        "--config",
        path(&config),
    ]);
    // Scored twice per user: with, without, and their difference.
    let out = dir.path().join("uplift.csv");
    let text = predict_csv(query, &model, &data, &out, &[]);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("user_id,anchor_time,prob_with,prob_without,uplift")
    );
    for line in lines {
        let f: Vec<f64> = line
            .split(',')
            .skip(2)
            .map(|v| v.parse().expect("number"))
            .collect();
        assert!((f[0] - f[1] - f[2]).abs() < 1e-9, "{line}");
    }
    let report: Value = serde_json::from_str(&relgraph(&[
        "evaluate",
        path(&model),
        "--data",
        path(&data),
        "--t-learner",
        "--json",
    ]))
    .expect("json");
    let rankings = report["uplift"]["rankings"].as_array().expect("rankings");
    let qini = |name: &str| {
        rankings
            .iter()
            .find(|r| r["name"].as_str().is_some_and(|n| n.starts_with(name)))
            .and_then(|r| r["metrics"]["qini"].as_f64())
            .unwrap_or_else(|| panic!("{name} in {report}"))
    };
    let (gnn, t, random) = (qini("GNN"), qini("T-learner"), qini("random"));
    eprintln!("qini: GNN {gnn:.3}, T-learner {t:.3}, random {random:.3}");
    assert!(gnn >= t, "GNN {gnn} vs T-learner {t}");
    assert!(gnn > random + 0.3, "GNN {gnn} vs random {random}");
    assert!((qini("known effects") - 1.0).abs() < 1e-9);
}
