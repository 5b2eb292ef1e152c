//! Checkpoints within an epoch (`checkpoint_every`): training resumed from one, saved to
//! disk and read back, ends with exactly the parameters of a run that never stopped.

mod common;

use std::sync::atomic::AtomicBool;

use common::{database, labelled};
use relgraph_kernels::Device;
use relgraph_worker::model::trainer::TrainState;
use relgraph_worker::model::{Session, TrainConfig, fit, load_train_state, save_train_state};

#[test]
fn a_run_resumed_within_an_epoch_ends_where_an_uninterrupted_one_does() {
    let (dir, db) = database();
    let query = "PREDICT COUNT(orders.*, 0, 60, days) > 0 FOR EACH customers.customer_id";
    let (plan, labels) = labelled(&db, query);
    let config = TrainConfig {
        channels: 16,
        encoder_blocks: 1,
        fanouts: vec![8, 4],
        epochs: 3,
        max_steps_per_epoch: 6,
        batch_size: 24,
        patience: 100,
        checkpoint_every: 4,
        ..TrainConfig::default()
    };
    let stop = AtomicBool::new(false);
    let checkpoints = dir.path().join("checkpoints");
    let mut saved: Vec<(u64, usize, usize)> = Vec::new();
    let params = |resume: Option<TrainState>, saved: &mut Vec<(u64, usize, usize)>| {
        let mut on_epoch = |s: &TrainState| {
            save_train_state(s, &checkpoints.join(format!("step-{}", s.steps)))?;
            saved.push((s.steps, s.epoch, s.epoch_steps));
            Ok(())
        };
        let session = Session {
            stop: &stop,
            progress: &mut |_| {},
            resume,
            on_epoch: &mut on_epoch,
            group: None,
            split: None,
            device: Device::Cpu,
        };
        let (model, ..) = fit(&db, query, &plan, &labels, &config, session).expect("fit");
        let host: Vec<Vec<f32>> = model
            .params
            .values
            .iter()
            .map(|t| t.to_host(&model.backend))
            .collect();
        host
    };
    // One thread: the kernels then add in one order, so equal runs give equal bits.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let whole = one.install(|| params(None, &mut saved));
    // Every 4 steps (6 a epoch): within epochs at steps 4, 8 and 16; after each epoch.
    assert_eq!(
        saved,
        vec![
            (4, 0, 4),
            (6, 1, 0),
            (8, 1, 2),
            (12, 2, 0),
            (16, 2, 4),
            (18, 3, 0)
        ]
    );
    for step in [8, 16] {
        let state = load_train_state(&checkpoints.join(format!("step-{step}"))).expect("load");
        let resumed = one.install(|| params(Some(state), &mut Vec::new()));
        assert!(
            resumed == whole,
            "resumed from step {step}: other parameters"
        );
    }
}
