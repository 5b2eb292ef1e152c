//! Workers of a data-parallel job score validation and test examples together: each
//! scores the examples of its own entities, and every worker ends with exactly the
//! metrics one worker scoring them all gets.

mod common;

use std::fmt::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Barrier, Mutex};

use common::{database, labelled};
use relgraph_common::Database;
use relgraph_common::pql::Split;
use relgraph_kernels::Device;
use relgraph_worker::model::fit::split_examples;
use relgraph_worker::model::metrics::Metrics;
use relgraph_worker::model::parallel::{Collective, owner};
use relgraph_worker::model::{ModelError, Session, Together, TrainConfig, fit};

/// An all-reduce among threads: each adds its vector into a shared sum, all wait, each
/// reads the sum back, and the last one out clears it for the next call.
struct Threads<'a> {
    rank: usize,
    size: usize,
    sum: &'a Mutex<(Vec<f32>, usize)>,
    barrier: &'a Barrier,
}

impl Collective for Threads<'_> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce(&self, values: &mut [f32]) -> Result<(), ModelError> {
        {
            let mut sum = self.sum.lock().expect("lock");
            if sum.0.is_empty() {
                sum.0 = vec![0.0; values.len()];
            }
            for (s, v) in sum.0.iter_mut().zip(values.iter()) {
                *s += v;
            }
        }
        self.barrier.wait();
        {
            let mut sum = self.sum.lock().expect("lock");
            values.copy_from_slice(&sum.0);
            sum.1 += 1;
            if sum.1 == self.size {
                *sum = (Vec::new(), 0);
            }
        }
        self.barrier.wait();
        Ok(())
    }
}

fn same_metrics_together(db: &Database, query: &str) {
    let (plan, labels) = labelled(db, query);
    let config = TrainConfig {
        channels: 16,
        encoder_blocks: 1,
        fanouts: vec![8, 4],
        epochs: 1,
        batch_size: 24,
        ..TrainConfig::default()
    };
    let stop = AtomicBool::new(false);
    let session = Session {
        stop: &stop,
        progress: &mut |_| {},
        resume: None,
        on_epoch: &mut |_| Ok(()),
        group: None,
        split: None,
        device: Device::Cpu,
    };
    let (model, data, ..) = fit(db, query, &plan, &labels, &config, session).expect("fit");
    let targets = model
        .manifest
        .target
        .targets(&labels.labels)
        .expect("targets");
    for split in [Split::Val, Split::Test] {
        let (examples, _) = split_examples(&labels, &targets, split);
        let size = 3;
        let mine: Vec<usize> = (0..size)
            .map(|r| {
                let rows = examples.rows.iter();
                rows.filter(|&&row| owner(row, size) == r).count()
            })
            .collect();
        assert!(
            mine.iter().all(|&n| n > 0 && n < examples.rows.len()),
            "every worker scores some of the {split:?} examples, none all: {mine:?}"
        );
        let alone = model.evaluate(&data, &examples).expect("evaluate");
        let sum = Mutex::new((Vec::new(), 0));
        let barrier = Barrier::new(size);
        let together: Vec<Metrics> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..size)
                .map(|rank| {
                    let (model, data, examples) = (&model, &data, &examples);
                    let (sum, barrier) = (&sum, &barrier);
                    scope.spawn(move || {
                        let group = Threads {
                            rank,
                            size,
                            sum,
                            barrier,
                        };
                        let together = Together {
                            group: &group,
                            split: None,
                        };
                        model
                            .evaluate_together(data, examples, &together)
                            .expect("evaluate together")
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("join"))
                .collect()
        });
        assert!(!alone.is_empty());
        for (rank, m) in together.iter().enumerate() {
            assert_eq!(m, &alone, "{split:?} metrics of rank {rank}");
        }
    }
}

#[test]
fn a_yes_no_task_scored_together_gets_the_metrics_of_one_worker() {
    let (_dir, db) = database();
    let query = "PREDICT COUNT(orders.*, 0, 60, days) > 0 FOR EACH customers.customer_id";
    same_metrics_together(&db, query);
}

#[test]
fn a_numeric_task_scored_together_gets_the_metrics_of_one_worker() {
    let (_dir, db) = database();
    let query = "PREDICT SUM(orders.amount, 0, 90, days) FOR EACH customers.customer_id";
    same_metrics_together(&db, query);
}

/// Ranked lists travel between the workers as numbers too.
#[test]
fn a_ranking_task_scored_together_gets_the_metrics_of_one_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut customers = String::from("customer_id,score\n");
    let mut products = String::from("product_id,category\n");
    let mut orders = String::from("order_id,customer_id,product_id,timestamp\n");
    for p in 0..40u32 {
        let _ = writeln!(products, "P{p},{}", ["a", "b", "c"][p as usize % 3]);
    }
    let mut order = 0;
    for c in 0..300u32 {
        let _ = writeln!(customers, "C{c},{}", c % 7);
        for k in 0..(2 + c % 4) {
            order += 1;
            // Each customer buys the same two products again and again.
            let product = (c % 20) * 2 + k % 2;
            let (month, day) = (1 + (c + k * 5) % 12, 1 + (c * 3 + k) % 27);
            let _ = writeln!(
                orders,
                "O{order},C{c},P{product},2024-{month:02}-{day:02} 12:00:00"
            );
        }
    }
    for (name, text) in [
        ("customers", customers),
        ("products", products),
        ("orders", orders),
    ] {
        std::fs::write(dir.path().join(format!("{name}.csv")), text).expect("write");
    }
    let db = Database::load(dir.path(), None).expect("load");
    let query = "PREDICT LIST_DISTINCT(orders.product_id, 0, 60, days) RANK TOP 5 \
                 FOR EACH customers.customer_id";
    same_metrics_together(&db, query);
}
