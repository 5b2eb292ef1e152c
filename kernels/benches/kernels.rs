//! Kernel benches (ARCHITECTURE.md §6, issue 5):
//! - GEMM at the model's shape (65,536 x 128 · 128 x 128) with the chosen crate (`gemm`)
//!   beside the other candidate (`matrixmultiply`), in GFLOP/s;
//! - memory bandwidth (summing a 1 GiB buffer), the ceiling for the next one;
//! - fused neighbor aggregation (mean over 128 neighbors, 128 channels) in GB/s of rows
//!   gathered;
//! - one SAGE layer, forward and backward, on a [128, 64]-fanout batch of 512 seeds.
//!
//! `cargo bench -p relgraph-kernels` (one thread: `RAYON_NUM_THREADS=1`). With
//! `--features cuda` on a machine with a GPU the same kernels run again on it ("cuda ..."),
//! beside the device's copy bandwidth; without one that part says why it was skipped.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use rayon::prelude::*;
use relgraph_kernels::{Activation, Backend, Cpu, Index, Params, Reduce, Tape, Tensor};

const C: usize = 128;

fn random(rng: &mut Pcg64Mcg, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

#[allow(unsafe_code)]
fn matrixmultiply(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    // SAFETY: a is m x k, b is k x n and c is m x n, all row-major and of those lengths.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

fn benches(c: &mut Criterion) {
    let cpu = Cpu::<f32>::new();
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    let mut group = c.benchmark_group("kernels");
    group.sample_size(10);

    let (m, k, n) = (65_536, C, C);
    let a = random(&mut rng, m * k);
    let w = random(&mut rng, k * n);
    let mut out = vec![0f32; m * n];
    group.throughput(Throughput::Elements((2 * m * k * n) as u64));
    group.bench_function("matrixmultiply 65536x128x128 (flop)", |bench| {
        bench.iter(|| matrixmultiply(&a, &w, &mut out, m, k, n))
    });

    let big: Vec<f32> = random(&mut rng, 1 << 28);
    group.throughput(Throughput::Bytes((big.len() * 4) as u64));
    group.bench_function("memory bandwidth: sum 1 GiB (bytes)", |bench| {
        bench.iter(|| {
            big.par_chunks(1 << 16)
                .map(|c| c.iter().sum::<f32>())
                .sum::<f32>()
        })
    });
    drop(big);
    on_backend(&mut group, &cpu, "");

    #[cfg(feature = "cuda")]
    match relgraph_kernels::cuda::Cuda::open(0) {
        Ok(gpu) => {
            eprintln!("CUDA benches on {}", gpu.name());
            // The device's memory bandwidth: a 1 GiB device-to-device copy reads and
            // writes every byte.
            let big = Tensor::from_host(&gpu, 1 << 28, 1, &vec![1.0; 1 << 28]);
            group.throughput(Throughput::Bytes((2 * big.len() * 4) as u64));
            group.bench_function("cuda memory bandwidth: copy 1 GiB (bytes)", |bench| {
                bench.iter(|| {
                    gpu.recycle(gpu.copy(&big.data));
                    gpu.synchronize();
                })
            });
            drop(big);
            on_backend(&mut group, &gpu, "cuda ");
        }
        Err(e) => eprintln!("CUDA benches skipped: no GPU ({e})"),
    }
    group.finish();
}

/// The model's kernels on backend `b`, each waited for; `label` prefixes their names.
fn on_backend<B: Backend<E = f32>>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    b: &B,
    label: &str,
) {
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    let (m, k, n) = (65_536, C, C);
    let a = Tensor::from_host(b, m, k, &random(&mut rng, m * k));
    let w = Tensor::from_host(b, k, n, &random(&mut rng, k * n));
    let mut out = Tensor::zeros(b, m, n);
    group.throughput(Throughput::Elements((2 * m * k * n) as u64));
    group.bench_function(format!("{label}gemm 65536x128x128 (flop)"), |bench| {
        bench.iter(|| {
            b.gemm(&a, false, &w, false, &mut out, false);
            b.synchronize();
        })
    });

    // Row-wise kernels on an encoder-sized activation (65,536 x 128).
    let ones = Tensor::from_host(b, 1, C, &vec![1.0; C]);
    let zeros = Tensor::zeros(b, 1, C);
    group.throughput(Throughput::Bytes((a.len() * 4) as u64));
    group.bench_function(
        format!("{label}layer norm forward 65536x128 (bytes)"),
        |bench| {
            bench.iter(|| {
                let (y, stats) = b.layer_norm(&a, &ones, &zeros, 1e-5);
                b.recycle(y.data);
                b.recycle(stats.data);
                b.synchronize();
            })
        },
    );
    let (_, stats) = b.layer_norm(&a, &ones, &zeros, 1e-5);
    group.bench_function(
        format!("{label}layer norm backward 65536x128 (bytes)"),
        |bench| {
            bench.iter(|| {
                let (dx, dg, db) = b.layer_norm_backward(&a, &ones, &stats, &out);
                b.recycle(dx.data);
                b.recycle(dg.data);
                b.recycle(db.data);
                b.synchronize();
            })
        },
    );
    group.bench_function(format!("{label}relu 65536x128 (bytes)"), |bench| {
        bench.iter(|| {
            b.recycle(b.activation(Activation::Relu, &a).data);
            b.synchronize();
        })
    });

    // 512 seeds x 128 neighbors, then 64 each: the two hops of a [128, 64] batch.
    let seeds = 512;
    let hop1 = seeds * 128;
    let hop2 = hop1 * 64;
    let dst = seeds + hop1;
    let src = dst + hop2;
    let x = Tensor::from_host(b, src, C, &random(&mut rng, src * C));
    // Destination d's neighbors: seeds read hop-1 nodes, hop-1 nodes read hop-2 nodes.
    let mut offsets = vec![0u32];
    let mut ids = Vec::with_capacity(hop1 + hop2);
    for d in 0..dst {
        let (first, count) = if d < seeds {
            (seeds + d * 128, 128)
        } else {
            (dst + (d - seeds) * 64, 64)
        };
        ids.extend((first..first + count).map(|i| i as u32));
        offsets.push(ids.len() as u32);
    }
    // Shuffle within the source range so reads are as scattered as a sampled batch's.
    let mut order: Vec<u32> = (0..src as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let ids: Vec<u32> = ids.iter().map(|&i| order[i as usize]).collect();
    let (idx, off) = (
        Arc::new(Index::from_host(b, &ids)),
        Arc::new(Index::from_host(b, &offsets)),
    );
    group.throughput(Throughput::Bytes((ids.len() * C * 4) as u64));
    group.bench_function(
        format!("{label}fused gather-mean, 4.26 M edges x 128 (bytes gathered)"),
        |bench| {
            bench.iter(|| {
                let (out, _) = b.gather_reduce(&x, Some(&idx), &off, Reduce::Mean);
                b.recycle(out.data);
                b.synchronize();
            })
        },
    );

    let mut params = Params::default();
    // The features as a parameter: the tape borrows it (no copy) and computes its gradient.
    let features = params.add(b, "x", x);
    let w_self = params.add(
        b,
        "self",
        Tensor::from_host(b, C, C, &random(&mut rng, C * C)),
    );
    let w_neigh = params.add(
        b,
        "neigh",
        Tensor::from_host(b, C, C, &random(&mut rng, C * C)),
    );
    let bias = params.add(b, "bias", Tensor::from_host(b, 1, C, &random(&mut rng, C)));
    let weights = Tensor::from_host(b, dst, C, &random(&mut rng, dst * C));
    let roots = Arc::new(Index::from_host(b, &order[..dst]));
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function(
        format!("{label}SAGE layer forward+backward, [128, 64] x 512 seeds (edges)"),
        |bench| {
            bench.iter(|| {
                let mut tape = Tape::new(b, &params);
                let xs = tape.param(features);
                let agg = tape.gather_reduce(xs, Some(idx.clone()), off.clone(), Reduce::Mean);
                let root = tape.gather(xs, roots.clone());
                let (ws, wn, bi) = (tape.param(w_self), tape.param(w_neigh), tape.param(bias));
                let h_self = tape.linear(root, ws, Some(bi));
                let h_neigh = tape.linear(agg, wn, None);
                let h = tape.add(h_self, h_neigh);
                let h = tape.relu(h);
                let loss = tape.weighted_sum(h, weights.duplicate(b));
                // As a training step does (through `Params::step`), hand the gradients back.
                tape.backward(loss).grads.recycle(b);
                b.synchronize();
            })
        },
    );
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
