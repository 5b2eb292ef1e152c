//! Kernel benches (ARCHITECTURE.md §6, issue 5):
//! - GEMM at the model's shape (65,536 x 128 · 128 x 128) with the chosen crate (`gemm`)
//!   beside the other candidate (`matrixmultiply`), in GFLOP/s;
//! - memory bandwidth (summing a 1 GiB buffer), the ceiling for the next one;
//! - fused neighbor aggregation (mean over 128 neighbors, 128 channels) in GB/s of rows
//!   gathered;
//! - one SAGE layer, forward and backward, on a [128, 64]-fanout batch of 512 seeds.
//!
//! `cargo bench -p relgraph-kernels` (one thread: `RAYON_NUM_THREADS=1`).

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
    let a = Tensor::from_host(&cpu, m, k, &random(&mut rng, m * k));
    let w = Tensor::from_host(&cpu, k, n, &random(&mut rng, k * n));
    let mut out = Tensor::zeros(&cpu, m, n);
    group.throughput(Throughput::Elements((2 * m * k * n) as u64));
    group.bench_function("gemm 65536x128x128 (flop)", |bench| {
        bench.iter(|| cpu.gemm(&a, false, &w, false, &mut out, false))
    });
    group.bench_function("matrixmultiply 65536x128x128 (flop)", |bench| {
        bench.iter(|| matrixmultiply(&a.data, &w.data, &mut out.data, m, k, n))
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

    // Row-wise kernels on an encoder-sized activation (65,536 x 128).
    let ones = Tensor::from_host(&cpu, 1, C, &vec![1.0; C]);
    let zeros = Tensor::zeros(&cpu, 1, C);
    group.throughput(Throughput::Bytes((a.len() * 4) as u64));
    group.bench_function("layer norm forward 65536x128 (bytes)", |bench| {
        bench.iter(|| {
            let (y, stats) = cpu.layer_norm(&a, &ones, &zeros, 1e-5);
            cpu.recycle(y.data);
            stats
        })
    });
    let (_, stats) = cpu.layer_norm(&a, &ones, &zeros, 1e-5);
    group.bench_function("layer norm backward 65536x128 (bytes)", |bench| {
        bench.iter(|| {
            let (dx, dg, db) = cpu.layer_norm_backward(&a, &ones, &stats, &out);
            cpu.recycle(dx.data);
            (dg, db)
        })
    });
    group.bench_function("relu 65536x128 (bytes)", |bench| {
        bench.iter(|| cpu.recycle(cpu.activation(Activation::Relu, &a).data))
    });

    // 512 seeds x 128 neighbors, then 64 each: the two hops of a [128, 64] batch.
    let seeds = 512;
    let hop1 = seeds * 128;
    let hop2 = hop1 * 64;
    let dst = seeds + hop1;
    let src = dst + hop2;
    let x = Tensor::from_host(&cpu, src, C, &random(&mut rng, src * C));
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
        Arc::new(Index::from_host(&cpu, &ids)),
        Arc::new(Index::from_host(&cpu, &offsets)),
    );
    group.throughput(Throughput::Bytes((ids.len() * C * 4) as u64));
    group.bench_function(
        "fused gather-mean, 4.26 M edges x 128 (bytes gathered)",
        |bench| bench.iter(|| cpu.gather_reduce(&x, Some(&idx), &off, Reduce::Mean)),
    );

    let mut params = Params::default();
    // The features as a parameter: the tape borrows it (no copy) and computes its gradient.
    let features = params.add(&cpu, "x", x);
    let w_self = params.add(
        &cpu,
        "self",
        Tensor::from_host(&cpu, C, C, &random(&mut rng, C * C)),
    );
    let w_neigh = params.add(
        &cpu,
        "neigh",
        Tensor::from_host(&cpu, C, C, &random(&mut rng, C * C)),
    );
    let bias = params.add(
        &cpu,
        "bias",
        Tensor::from_host(&cpu, 1, C, &random(&mut rng, C)),
    );
    let weights = Tensor::from_host(&cpu, dst, C, &random(&mut rng, dst * C));
    let roots = Arc::new(Index::from_host(&cpu, &order[..dst]));
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function(
        "SAGE layer forward+backward, [128, 64] x 512 seeds (edges)",
        |bench| {
            bench.iter(|| {
                let mut tape = Tape::new(&cpu, &params);
                let xs = tape.param(features);
                let agg = tape.gather_reduce(xs, Some(idx.clone()), off.clone(), Reduce::Mean);
                let root = tape.gather(xs, roots.clone());
                let (ws, wn, b) = (tape.param(w_self), tape.param(w_neigh), tape.param(bias));
                let h_self = tape.linear(root, ws, Some(b));
                let h_neigh = tape.linear(agg, wn, None);
                let h = tape.add(h_self, h_neigh);
                let h = tape.relu(h);
                let loss = tape.weighted_sum(h, weights.duplicate(&cpu));
                // As a training step does (through `Params::step`), hand the gradients back.
                tape.backward(loss).grads.recycle(&cpu);
            })
        },
    );
    group.finish();
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
