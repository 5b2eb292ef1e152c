//! Every op's hand-written backward against central finite differences, run in f64 on
//! random shapes (empty segments and repeated indices included); the fused
//! gather-reduce against gather-then-reduce; bit-identical repeats on one thread.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use relgraph_kernels::{
    Activation, AdamConfig, Backend, Cpu, Index, Loss, ParamId, Params, Reduce, Tape, Tensor, Var,
};

type B = Cpu<f64>;
const H: f64 = 1e-6;

fn random(rng: &mut Pcg64Mcg, rows: usize, cols: usize) -> Tensor<B> {
    let data: Vec<f64> = (0..rows * cols)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_host(&B::new(), rows, cols, &data)
}

fn host(t: &Tensor<B>) -> Vec<f64> {
    t.to_host(&B::new())
}

/// Random CSR segments over `positions` (some empty) and ids into `rows` (repeats likely).
fn segments(rng: &mut Pcg64Mcg, count: usize, rows: usize) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32];
    for _ in 0..count {
        let len = if rng.random_bool(0.25) {
            0
        } else {
            rng.random_range(1..5)
        };
        offsets.push(offsets.last().copied().unwrap_or(0) + len);
    }
    let ids = (0..*offsets.last().unwrap_or(&0))
        .map(|_| rng.random_range(0..rows as u32))
        .collect();
    (ids, offsets)
}

/// Checks d(sum(f(inputs) * r))/d(inputs) against central differences. `build` records
/// the op on a tape from watched inputs.
fn check(
    name: &str,
    inputs: Vec<Tensor<B>>,
    params: &Params<B>,
    build: &dyn Fn(&mut Tape<B>, &[Var]) -> Var,
    rng: &mut Pcg64Mcg,
) {
    let b = B::new();
    let record = |inputs: &[Tensor<B>], weights: Option<&Tensor<B>>| {
        let mut tape = Tape::new(&b, params);
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| tape.watched(t.duplicate(&b)))
            .collect();
        let y = build(&mut tape, &vars);
        let (rows, cols) = tape.value(y).shape();
        (tape, vars, y, rows, cols, weights.map(|w| w.duplicate(&b)))
    };
    let (_, _, _, rows, cols, _) = record(&inputs, None);
    let weights = random(rng, rows, cols);
    let eval = |inputs: &[Tensor<B>]| -> f64 {
        let (mut tape, _, y, ..) = record(inputs, None);
        let root = tape.weighted_sum(y, weights.duplicate(&b));
        host(tape.value(root))[0]
    };
    let (mut tape, vars, y, ..) = record(&inputs, Some(&weights));
    let root = tape.weighted_sum(y, weights.duplicate(&b));
    let back = tape.backward(root);
    for (i, input) in inputs.iter().enumerate() {
        let analytic = back
            .grad(vars[i])
            .map(host)
            .unwrap_or_else(|| vec![0.0; input.len()]);
        assert_eq!(
            analytic.len(),
            input.len(),
            "{name}: gradient shape of input {i}"
        );
        let values = host(input);
        for e in 0..values.len() {
            let at = |delta: f64| {
                let mut moved: Vec<Tensor<B>> = inputs.iter().map(|t| t.duplicate(&b)).collect();
                let mut v = values.clone();
                v[e] += delta;
                moved[i] = Tensor::from_host(&b, input.rows, input.cols, &v);
                eval(&moved)
            };
            let numeric = (at(H) - at(-H)) / (2.0 * H);
            let err = (numeric - analytic[e]).abs();
            assert!(
                err <= 1e-6 + 1e-5 * numeric.abs(),
                "{name}: d/d input {i}[{e}]: analytic {} vs numeric {numeric}",
                analytic[e]
            );
        }
    }
}

fn none() -> Params<B> {
    Params::default()
}

#[test]
fn dense_ops_match_finite_differences() {
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    for case in 0..6 {
        let (m, k, n) = (
            rng.random_range(1..6),
            rng.random_range(1..6),
            rng.random_range(1..6),
        );
        let p = &none();
        let x = random(&mut rng, m, k);
        let w = random(&mut rng, k, n);
        let bias = random(&mut rng, 1, n);
        check(
            "linear",
            vec![x.duplicate(&B::new()), w.duplicate(&B::new()), bias],
            p,
            &|t, v| t.linear(v[0], v[1], Some(v[2])),
            &mut rng,
        );
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = if ta {
                random(&mut rng, k, m)
            } else {
                random(&mut rng, m, k)
            };
            let bm = if tb {
                random(&mut rng, n, k)
            } else {
                random(&mut rng, k, n)
            };
            check(
                &format!("matmul {ta} {tb}"),
                vec![a, bm],
                p,
                &move |t, v| t.matmul(v[0], ta, v[1], tb),
                &mut rng,
            );
        }
        for act in [Activation::Relu, Activation::Gelu] {
            check(
                &format!("{act:?}"),
                vec![random(&mut rng, m, n)],
                p,
                &move |t, v| t.activation(act, v[0]),
                &mut rng,
            );
        }
        let cols = rng.random_range(2..7);
        check(
            "layer_norm",
            vec![
                random(&mut rng, m, cols),
                random(&mut rng, 1, cols),
                random(&mut rng, 1, cols),
            ],
            p,
            &|t, v| t.layer_norm(v[0], v[1], v[2], 1e-5),
            &mut rng,
        );
        check(
            "dropout",
            vec![random(&mut rng, m, n)],
            p,
            &move |t, v| t.dropout(v[0], 0.3, case),
            &mut rng,
        );
        check(
            "add and mul",
            vec![random(&mut rng, m, n), random(&mut rng, m, n)],
            p,
            &move |t, v| {
                let s = t.add(v[0], v[1]);
                let s = t.mul(s, v[1]);
                t.reshape(s, n, m)
            },
            &mut rng,
        );
        let times: Vec<f64> = (0..m).map(|_| rng.random_range(0.0..30.0)).collect();
        check(
            "time_encoding",
            vec![Tensor::from_host(&B::new(), m, 1, &times)],
            p,
            &|t, v| t.time_encoding(v[0], 8),
            &mut rng,
        );
    }
}

#[test]
fn sparse_ops_match_finite_differences() {
    let mut rng = Pcg64Mcg::seed_from_u64(2);
    let b = B::new();
    for _ in 0..8 {
        let (rows, cols) = (rng.random_range(1..7), rng.random_range(1..4));
        let p = &none();
        let count = rng.random_range(0..6);
        let (ids, offsets) = segments(&mut rng, count, rows);
        let idx = Arc::new(Index::from_host(&b, &ids));
        let off = Arc::new(Index::from_host(&b, &offsets));
        let i2 = idx.clone();
        check(
            "gather",
            vec![random(&mut rng, rows, cols)],
            p,
            &move |t, v| t.gather(v[0], i2.clone()),
            &mut rng,
        );
        for reduce in [Reduce::Sum, Reduce::Mean, Reduce::Max] {
            let (i2, o2) = (idx.clone(), off.clone());
            check(
                &format!("gather_reduce {reduce:?}"),
                vec![random(&mut rng, rows, cols)],
                p,
                &move |t, v| t.gather_reduce(v[0], Some(i2.clone()), o2.clone(), reduce),
                &mut rng,
            );
            // By CSR offsets alone: the positions are the rows.
            let positions = ids.len();
            let o2 = off.clone();
            check(
                &format!("segment reduce {reduce:?}"),
                vec![random(&mut rng, positions, cols)],
                p,
                &move |t, v| t.gather_reduce(v[0], None, o2.clone(), reduce),
                &mut rng,
            );
            // By index: rows of x scattered to targets.
            let targets = Index::from_host(&b, &ids);
            let n_out = rows;
            check(
                &format!("scatter reduce {reduce:?}"),
                vec![random(&mut rng, ids.len(), cols)],
                p,
                &move |t, v| t.scatter_reduce(v[0], &targets, n_out, reduce),
                &mut rng,
            );
        }
    }
}

/// Embedding lookups and bags: the sparse gradient, spread over the table, against
/// finite differences on the table's entries.
#[test]
fn embeddings_have_correct_sparse_gradients() {
    let mut rng = Pcg64Mcg::seed_from_u64(3);
    let b = B::new();
    for case in 0..6 {
        let (rows, cols) = (rng.random_range(1..6), rng.random_range(1..4));
        let table = random(&mut rng, rows, cols);
        let count = rng.random_range(0..5);
        let (ids, offsets) = segments(&mut rng, count, rows);
        let idx = Arc::new(Index::from_host(&b, &ids));
        let off = Arc::new(Index::from_host(&b, &offsets));
        let reduce = [Reduce::Sum, Reduce::Mean][case % 2];
        let bag = case % 3 != 0;
        let out_rows = if bag { offsets.len() - 1 } else { ids.len() };
        let weights = random(&mut rng, out_rows, cols);
        let value = |table: &Tensor<B>| -> (f64, Option<Vec<f64>>) {
            let mut params = Params::default();
            let id: ParamId = params.add(&b, "table", table.duplicate(&b));
            let mut tape = Tape::new(&b, &params);
            let y = if bag {
                tape.embedding_bag(id, idx.clone(), off.clone(), reduce)
            } else {
                tape.embedding(id, idx.clone())
            };
            let root = tape.weighted_sum(y, weights.duplicate(&b));
            let back = tape.backward(root);
            let dense = back.grads.sparse[0].as_ref().map(|(ids, g)| {
                let mut full = vec![0.0; rows * cols];
                let g = host(g);
                for (k, &r) in ids.to_host(&b).iter().enumerate() {
                    full[r as usize * cols..(r as usize + 1) * cols]
                        .copy_from_slice(&g[k * cols..(k + 1) * cols]);
                }
                full
            });
            (host(tape.value(root))[0], dense)
        };
        let (_, analytic) = value(&table);
        let analytic = analytic.unwrap_or_else(|| vec![0.0; rows * cols]);
        let values = host(&table);
        for e in 0..values.len() {
            let at = |d: f64| {
                let mut v = values.clone();
                v[e] += d;
                value(&Tensor::from_host(&b, rows, cols, &v)).0
            };
            let numeric = (at(H) - at(-H)) / (2.0 * H);
            assert!(
                (numeric - analytic[e]).abs() < 1e-6,
                "embedding (bag {bag}) [{e}]: {} vs {numeric}",
                analytic[e]
            );
        }
    }
}

#[test]
fn losses_match_finite_differences() {
    let mut rng = Pcg64Mcg::seed_from_u64(4);
    let b = B::new();
    for _ in 0..5 {
        let (n, c) = (rng.random_range(1..6), rng.random_range(2..5));
        let p = &none();
        let probs: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..1.0)).collect();
        let target = Tensor::from_host(&b, n, 1, &probs);
        let t2 = target.duplicate(&b);
        check(
            "bce",
            vec![random(&mut rng, n, 1)],
            p,
            &move |t, v| {
                let y = t.input(t2.duplicate(t.backend()));
                t.loss(Loss::BceWithLogits, v[0], y)
            },
            &mut rng,
        );
        for loss in [Loss::L1, Loss::Huber { delta: 0.5 }] {
            let t2 = random(&mut rng, n, 1);
            check(
                &format!("{loss:?}"),
                vec![random(&mut rng, n, 1)],
                p,
                &move |t, v| {
                    let y = t.input(t2.duplicate(t.backend()));
                    t.loss(loss, v[0], y)
                },
                &mut rng,
            );
        }
        let labels: Vec<f64> = (0..n).map(|_| rng.random_range(0..c) as f64).collect();
        let labels = Tensor::from_host(&b, n, 1, &labels);
        check(
            "softmax cross-entropy",
            vec![random(&mut rng, n, c)],
            p,
            &move |t, v| {
                let y = t.input(labels.duplicate(t.backend()));
                t.loss(Loss::SoftmaxCrossEntropy, v[0], y)
            },
            &mut rng,
        );
        check(
            "bpr",
            vec![random(&mut rng, n, 1), random(&mut rng, n, 1)],
            p,
            &|t, v| t.loss(Loss::Bpr, v[0], v[1]),
            &mut rng,
        );
    }
}

/// A two-layer model through the tape: parameters' gradients against finite differences.
#[test]
fn a_small_model_through_the_tape() {
    let mut rng = Pcg64Mcg::seed_from_u64(5);
    let b = B::new();
    let (ids, offsets) = segments(&mut rng, 4, 5);
    let idx = Arc::new(Index::from_host(&b, &ids));
    let off = Arc::new(Index::from_host(&b, &offsets));
    let labels = Tensor::from_host(&b, 4, 1, &[1.0, 0.0, 1.0, 0.0]);
    check(
        "sage-like layer",
        vec![
            random(&mut rng, 5, 3),
            random(&mut rng, 3, 3),
            random(&mut rng, 3, 3),
            random(&mut rng, 1, 3),
            random(&mut rng, 1, 3),
            random(&mut rng, 3, 1),
        ],
        &none(),
        &move |t, v| {
            let agg = t.gather_reduce(v[0], Some(idx.clone()), off.clone(), Reduce::Mean);
            let root = t.gather(v[0], Arc::new(Index::from_host(t.backend(), &[0, 1, 2, 3])));
            let a = t.linear(agg, v[1], None);
            let r = t.linear(root, v[2], Some(v[3]));
            let h = t.add(a, r);
            let h = t.layer_norm(h, v[4], v[3], 1e-5);
            let h = t.gelu(h);
            let logit = t.linear(h, v[5], None);
            let y = t.input(labels.duplicate(t.backend()));
            t.loss(Loss::BceWithLogits, logit, y)
        },
        &mut rng,
    );
}

#[test]
fn fused_gather_reduce_equals_gather_then_reduce() {
    let mut rng = Pcg64Mcg::seed_from_u64(6);
    let b = Cpu::<f32>::new();
    for _ in 0..20 {
        let (rows, cols) = (rng.random_range(1..50), rng.random_range(1..20));
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let x = Tensor::from_host(&b, rows, cols, &data);
        let count = rng.random_range(0..40);
        let (ids, offsets) = segments(&mut rng, count, rows);
        let (idx, off) = (Index::from_host(&b, &ids), Index::from_host(&b, &offsets));
        let gathered = b.gather_rows(&x, &idx);
        for reduce in [Reduce::Sum, Reduce::Mean, Reduce::Max] {
            let (fused, arg) = b.gather_reduce(&x, Some(&idx), &off, reduce);
            let (two_step, arg2) = b.gather_reduce(&gathered, None, &off, reduce);
            assert_eq!(
                fused.to_host(&b),
                two_step.to_host(&b),
                "{reduce:?} forward"
            );
            let dy_data: Vec<f32> = (0..fused.len())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let dy = Tensor::from_host(&b, fused.rows, cols, &dy_data);
            let dx = b.gather_reduce_backward(&dy, rows, Some(&idx), &off, reduce, arg.as_ref());
            let dx_two = if reduce == Reduce::Max {
                // The two-step argmax points at gathered positions: map them back to rows.
                let arg2 = arg2.expect("argmax").to_host(&b);
                let rows_of: Vec<u32> = arg2
                    .iter()
                    .map(|&p| if p == u32::MAX { p } else { ids[p as usize] })
                    .collect();
                b.gather_reduce_backward(
                    &dy,
                    rows,
                    None,
                    &off,
                    reduce,
                    Some(&Index::from_host(&b, &rows_of)),
                )
            } else {
                let per_position =
                    b.gather_reduce_backward(&dy, ids.len(), None, &off, reduce, None);
                b.scatter_add_rows(&per_position, &idx, rows)
            };
            assert_eq!(dx.to_host(&b), dx_two.to_host(&b), "{reduce:?} backward");
        }
    }
}

#[test]
fn one_thread_repeats_bit_for_bit_and_adam_moves_parameters() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let run = || {
        let b = Cpu::<f32>::new();
        let mut rng = Pcg64Mcg::seed_from_u64(7);
        let mut params = Params::default();
        let init = |rng: &mut Pcg64Mcg, r: usize, c: usize| {
            let d: Vec<f32> = (0..r * c).map(|_| rng.random_range(-0.5..0.5)).collect();
            Tensor::from_host(&b, r, c, &d)
        };
        let table = params.add(&b, "table", init(&mut rng, 100, 16));
        let w = params.add(&b, "w", init(&mut rng, 16, 16));
        let head = params.add(&b, "head", init(&mut rng, 16, 1));
        let ids: Vec<u32> = (0..300).map(|_| rng.random_range(0..100)).collect();
        let offsets: Vec<u32> = (0..=60).map(|i| i * 5).collect();
        let labels: Vec<f32> = (0..60).map(|i| (i % 2) as f32).collect();
        let (ids, offsets) = (
            Arc::new(Index::from_host(&b, &ids)),
            Arc::new(Index::from_host(&b, &offsets)),
        );
        let mut losses = Vec::new();
        for step in 0..5 {
            let back = {
                let mut tape = Tape::new(&b, &params);
                let e = tape.embedding_bag(table, ids.clone(), offsets.clone(), Reduce::Mean);
                let wv = tape.param(w);
                let h = tape.linear(e, wv, None);
                let h = tape.relu(h);
                let h = tape.dropout(h, 0.1, step);
                let hv = tape.param(head);
                let logit = tape.linear(h, hv, None);
                let y = tape.input(Tensor::from_host(&b, 60, 1, &labels));
                let loss = tape.loss(Loss::BceWithLogits, logit, y);
                losses.push(tape.value(loss).to_host(&b)[0]);
                tape.backward(loss)
            };
            params.step(
                &b,
                back.grads,
                &AdamConfig {
                    lr: 0.05,
                    weight_decay: 0.01,
                    ..AdamConfig::default()
                },
            );
        }
        let values: Vec<Vec<f32>> = params.values.iter().map(|t| t.to_host(&b)).collect();
        (losses, values)
    };
    let (first, again) = (pool.install(run), pool.install(run));
    assert_eq!(
        first.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        again.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(first.1, again.1);
    assert!(
        first.0[4] < first.0[0],
        "training lowers the loss: {:?}",
        first.0
    );
}

/// A recycled buffer comes back zeroed, whatever it held.
#[test]
fn pooled_buffers_come_back_zeroed() {
    let b = Cpu::<f32>::new();
    let len = 1 << 19;
    let used = Tensor::from_host(&b, len, 1, &vec![7.0; len]);
    let capacity = used.data.capacity();
    b.recycle(used.data);
    let again = Tensor::zeros(&b, len, 1);
    assert_eq!(
        again.data.capacity(),
        capacity,
        "the pooled buffer is reused"
    );
    assert!(again.to_host(&b).iter().all(|&v| v == 0.0));
}

/// Batches vary a little in size: a buffer freed by one serves the next one's slightly
/// larger request instead of the pool keeping it while fresh pages are taken.
#[test]
fn pooled_buffers_fit_slightly_larger_requests() {
    let b = Cpu::<f32>::new();
    let len = 300_000;
    let used = Tensor::zeros(&b, len, 1);
    let capacity = used.data.capacity();
    assert!((len..=len + len / 4).contains(&capacity));
    b.recycle(used.data);
    let again = Tensor::zeros(&b, len + len / 20, 1);
    assert_eq!(
        again.data.capacity(),
        capacity,
        "the pooled buffer is reused"
    );
}

#[test]
fn sparse_adam_touches_only_the_given_rows() {
    let b = Cpu::<f32>::new();
    let mut p = Tensor::from_host(&b, 3, 2, &[1.0; 6]);
    let (mut m, mut v) = (Tensor::zeros(&b, 3, 2), Tensor::zeros(&b, 3, 2));
    let g = Tensor::from_host(&b, 1, 2, &[0.5, -0.5]);
    b.adam(
        &AdamConfig {
            lr: 0.1,
            ..AdamConfig::default()
        },
        1,
        &mut p,
        &mut m,
        &mut v,
        &g,
        Some(&Index::from_host(&b, &[1])),
    );
    let after = p.to_host(&b);
    assert_eq!(&after[0..2], &[1.0, 1.0]);
    assert_eq!(&after[4..6], &[1.0, 1.0]);
    // The first Adam step moves by lr in the direction against the gradient.
    assert!(
        (after[2] - 0.9).abs() < 1e-5 && (after[3] - 1.1).abs() < 1e-5,
        "{after:?}"
    );
}

#[test]
fn devices_are_selected_by_name() {
    use relgraph_kernels::{Device, DeviceError};
    let select = |name: &str| Device::choose(name).map(|(d, _)| d);
    assert_eq!(select("cpu"), Ok(Device::Cpu));
    assert!(matches!(select("gpu"), Err(DeviceError::Unknown(_))));
    assert!(matches!(select("cuda:x"), Err(DeviceError::Unknown(_))));
    // Without a GPU (or without the feature) `auto` falls back to the CPU and an explicit
    // CUDA device is an error that says why; with one, both find it.
    match select("auto").expect("auto") {
        Device::Cpu => assert!(select("cuda:0").is_err()),
        Device::Cuda(n) => assert_eq!(n, 0),
    }
}
