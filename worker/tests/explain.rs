//! Explanations on a small model with every kind of column (numerical, timestamp,
//! categorical, multicategorical, text): the column parts add up to the encoder input
//! the model really sees (the explained number equals the model's own output),
//! integrated gradients add up to output minus baseline, and leaving every column out
//! gives the baseline.

mod common;

use std::sync::atomic::AtomicBool;

use common::{database, labelled};

use relgraph_kernels::Device;
use relgraph_worker::model::explain::Method;
use relgraph_worker::model::{Output, Session, TrainConfig, fit};

#[test]
fn attributions_decompose_the_models_own_output() {
    let (_dir, db) = database();
    let query = "PREDICT COUNT(orders.*, 0, 60, days) > 0 FOR EACH customers.customer_id";
    let (plan, labels) = labelled(&db, query);
    let config = TrainConfig {
        channels: 16,
        encoder_blocks: 1,
        fanouts: vec![8, 4],
        epochs: 2,
        max_steps_per_epoch: 5,
        batch_size: 64,
        max_vocab: 50,
        text_buckets: 64,
        ..TrainConfig::default()
    };
    let stop = AtomicBool::new(false);
    macro_rules! session {
        ($device:expr) => {
            Session {
                stop: &stop,
                progress: &mut |_| {},
                resume: None,
                on_epoch: &mut |_| Ok(()),
                group: None,
                split: None,
                device: $device,
            }
        };
    }
    // A CUDA device this machine or build lacks is an error that says what is missing.
    if let Err(e) = fit(
        &db,
        query,
        &plan,
        &labels,
        &config,
        session!(Device::Cuda(7)),
    ) {
        let e = e.to_string();
        assert!(
            e.starts_with("device: cuda:7: ")
                && (e.contains("no CUDA support") || e.contains("no CUDA")),
            "{e}"
        );
    }
    let (model, data, _, _) =
        fit(&db, query, &plan, &labels, &config, session!(Device::Cpu)).expect("fit");
    let kinds: Vec<String> = model.manifest.codes[0]
        .columns
        .iter()
        .map(|c| {
            format!("{c:?}")
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    for kind in [
        "Numerical",
        "Timestamp",
        "Categorical",
        "Multicategorical",
        "Text",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} column in {kinds:?}"
        );
    }
    let anchor = relgraph_common::time::parse_timestamp("2024-10-01").expect("anchor");
    // A copy on another backend scores the same: the way a model trained on a GPU comes
    // back to the CPU.
    let copy = model.to_backend(relgraph_kernels::Cpu::<f32>::new());
    let rows: Vec<u32> = (0..300).collect();
    let anchors = vec![anchor; rows.len()];
    let (Output::Probs(a), Output::Probs(b)) = (
        model.infer(&data, &rows, &anchors, None).expect("infer"),
        copy.infer(&data, &rows, &anchors, None).expect("infer"),
    ) else {
        panic!("a yes/no model gives probabilities");
    };
    assert_eq!(a, b);
    // Through a cache of encoder outputs (serving's small requests): filling it and then
    // reading from it give the model's own outputs.
    let mut cached = model.to_backend(relgraph_kernels::Cpu::<f32>::new());
    cached.encoded = Some(cached.net.encoder_cache(1 << 20));
    for round in ["filling", "reading"] {
        for (i, chunk) in rows.chunks(16).enumerate() {
            let Output::Probs(p) = cached
                .infer(&data, chunk, &anchors[..chunk.len()], None)
                .expect("infer")
            else {
                panic!("probabilities");
            };
            for (k, (&p, &q)) in p.iter().zip(&a[i * 16..]).enumerate() {
                assert!(
                    (p - q).abs() < 1e-5,
                    "{round} row {}: {p} vs {q}",
                    i * 16 + k
                );
            }
        }
    }
    for row in [3u32, 4, 10, 77] {
        let Output::Probs(p) = model.infer(&data, &[row], &[anchor], None).expect("infer") else {
            panic!("a yes/no model gives probabilities");
        };
        let logit = (p[0] / (1.0 - p[0])).ln();
        let gradient = model
            .explain(data.inputs(), row, anchor, Method::Gradient)
            .expect("explain");
        // The host-computed column parts add up to what the encoders compute.
        assert!(
            (gradient.output - logit).abs() < 1e-3,
            "{} vs {logit}",
            gradient.output
        );
        let integrated = model
            .explain(
                data.inputs(),
                row,
                anchor,
                Method::Integrated { steps: 256 },
            )
            .expect("explain");
        let sum: f64 = integrated.columns.iter().map(|c| c.value).sum();
        let change = integrated.output - integrated.baseline;
        assert!(
            (sum - change).abs() <= 0.05 * change.abs() + 1e-3,
            "row {row}: attributions add up to {sum}, the output moved {change}"
        );
        let shares: f64 = integrated
            .columns
            .iter()
            .map(|c| integrated.share(c.value).abs())
            .sum();
        assert!((shares - 100.0).abs() < 1e-9);
        // Every row of the subgraph is listed once, its columns adding up to its value.
        for r in &integrated.rows {
            let total: f64 = r.columns.iter().sum();
            assert!((total - r.value).abs() < 1e-9);
        }
        // Ablating a column moves the output by the difference to the output without it.
        let ablation = model
            .ablation(data.inputs(), row, anchor)
            .expect("ablation");
        assert_eq!(ablation.len(), integrated.columns.len());
    }
}
