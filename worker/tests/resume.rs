//! Checkpoints within an epoch (`checkpoint_every`): training resumed from one, saved to
//! disk and read back, ends with exactly the parameters of a run that never stopped, and
//! reports its progress (epoch, steps taken) as that run did from the same point.

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
    // (epoch, steps taken) after every step.
    let mut reported: Vec<(usize, u64)> = Vec::new();
    let params = |resume: Option<TrainState>,
                  saved: &mut Vec<(u64, usize, usize)>,
                  reported: &mut Vec<(usize, u64)>| {
        let mut on_epoch = |s: &TrainState| {
            save_train_state(s, &checkpoints.join(format!("step-{}", s.steps)))?;
            saved.push((s.steps, s.epoch, s.epoch_steps));
            Ok(())
        };
        let session = Session {
            stop: &stop,
            progress: &mut |p| reported.push((p.epoch, p.total)),
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
    let whole = one.install(|| params(None, &mut saved, &mut reported));
    let steps: Vec<u64> = (1..=18).collect();
    assert_eq!(reported.iter().map(|r| r.1).collect::<Vec<_>>(), steps);
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
        let at = reported[step as usize - 1];
        assert_eq!((state.progress_epoch(), state.steps), at);
        let mut again = Vec::new();
        let resumed = one.install(|| params(Some(state), &mut Vec::new(), &mut again));
        assert!(
            resumed == whole,
            "resumed from step {step}: other parameters"
        );
        assert_eq!(again, reported[step as usize..]);
    }
    // A damaged checkpoint is refused, not resumed from.
    let dir = checkpoints.join("step-8");
    let bin = dir.join("train_state.bin");
    let mut bytes = std::fs::read(&bin).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&bin, &bytes).expect("write");
    assert!(load_train_state(&dir).is_err());
}
