//! Synchronous data-parallel training (ARCHITECTURE.md §7): every worker of a job holds
//! the same parameters, takes its own examples of each global batch (by entity), and the
//! gradients are summed across workers before every optimiser step, so N workers take
//! the steps one worker would take on the whole batch, up to the order of float sums.
//!
//! The sum runs in two rounds through a [`Collective`]: first which parameters have a
//! dense or a sparse (embedding rows) gradient anywhere, and the batch loss; then the
//! gradients themselves, laid out the same on every worker. Sparse gradients travel as
//! a dense block plus a per-row "touched" count, so the update touches exactly the union
//! of the workers' rows, as one worker's sparse update would.

use relgraph_common::hash::mix;
use relgraph_kernels::{Grads, Index, Params, Tensor};

use super::trainer::{Compute, ModelError};

/// Sums vectors across the workers of a job. Every worker calls it with vectors of the
/// same length in the same order; afterwards each holds the same (bit-identical) sums.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    fn all_reduce(&self, values: &mut [f32]) -> Result<(), ModelError>;
}

/// The worker (rank) that trains on an example of entity row `row`.
pub fn owner(row: u32, size: usize) -> usize {
    (mix(u64::from(row) ^ 0x9e37_79b9_7f4a_7c15) % size as u64) as usize
}

/// Sums this worker's gradients (of its mean loss over `local` examples of a global batch
/// of `global`) into the gradients of the global batch's mean loss; also returns that
/// loss. `grads` is `None` when this worker had no example in the batch.
pub fn reduce<B: Compute>(
    group: &dyn Collective,
    grads: Option<Grads<B>>,
    loss: f64,
    (local, global): (usize, usize),
    params: &Params<B>,
    b: &B,
) -> Result<(Grads<B>, f64), ModelError> {
    let p = params.values.len();
    let scale = local as f32 / global.max(1) as f32;
    // Round 1: which gradients exist anywhere, and the loss.
    let mut kinds = vec![0f32; 2 * p + 1];
    if let Some(g) = &grads {
        for i in 0..p {
            kinds[i] = f32::from(u8::from(g.dense[i].is_some()));
            kinds[p + i] = f32::from(u8::from(g.sparse[i].is_some()));
        }
    }
    kinds[2 * p] = (loss * local as f64) as f32;
    group.all_reduce(&mut kinds)?;
    let dense_any: Vec<bool> = kinds[..p].iter().map(|&k| k > 0.0).collect();
    let sparse_any: Vec<bool> = kinds[p..2 * p].iter().map(|&k| k > 0.0).collect();
    // Round 2: the gradients, laid out by round 1.
    let size = |i: usize| params.values[i].rows * params.values[i].cols;
    let mut len = 0;
    for i in 0..p {
        if dense_any[i] {
            len += size(i);
        }
        if sparse_any[i] {
            len += params.values[i].rows + size(i);
        }
    }
    let mut flat = vec![0f32; len];
    let mut at = 0;
    for i in 0..p {
        let (rows, cols) = (params.values[i].rows, params.values[i].cols);
        if dense_any[i] {
            if let Some(t) = grads.as_ref().and_then(|g| g.dense[i].as_ref()) {
                for (o, v) in flat[at..at + size(i)].iter_mut().zip(t.to_host(b)) {
                    *o = v * scale;
                }
            }
            at += size(i);
        }
        if sparse_any[i] {
            if let Some((idx, t)) = grads.as_ref().and_then(|g| g.sparse[i].as_ref()) {
                let values = t.to_host(b);
                let (mask, block) = flat[at..at + rows + rows * cols].split_at_mut(rows);
                for (k, &r) in idx.to_host(b).iter().enumerate() {
                    let r = r as usize;
                    mask[r] += 1.0;
                    for (o, v) in block[r * cols..(r + 1) * cols]
                        .iter_mut()
                        .zip(&values[k * cols..(k + 1) * cols])
                    {
                        *o += v * scale;
                    }
                }
            }
            at += rows + rows * cols;
        }
    }
    if let Some(g) = grads {
        g.recycle(b);
    }
    group.all_reduce(&mut flat)?;
    let mut out = Grads {
        dense: (0..p).map(|_| None).collect(),
        sparse: (0..p).map(|_| None).collect(),
    };
    let mut at = 0;
    for i in 0..p {
        let (rows, cols) = (params.values[i].rows, params.values[i].cols);
        if dense_any[i] {
            out.dense[i] = Some(Tensor::from_host(b, rows, cols, &flat[at..at + size(i)]));
            at += size(i);
        }
        if sparse_any[i] {
            let (mask, block) = flat[at..at + rows + rows * cols].split_at(rows);
            let touched: Vec<u32> = (0..rows as u32)
                .filter(|&r| mask[r as usize] > 0.0)
                .collect();
            let mut values = Vec::with_capacity(touched.len() * cols);
            for &r in &touched {
                values.extend_from_slice(&block[r as usize * cols..(r as usize + 1) * cols]);
            }
            out.sparse[i] = Some((
                Index::from_host(b, &touched),
                Tensor::from_host(b, touched.len(), cols, &values),
            ));
            at += rows + rows * cols;
        }
    }
    Ok((out, f64::from(kinds[2 * p]) / global.max(1) as f64))
}

/// Rank 0's value on every worker (the others pass anything; it is ignored).
pub fn broadcast(group: &dyn Collective, value: f64) -> Result<f64, ModelError> {
    let mut v = [if group.rank() == 0 { value as f32 } else { 0.0 }];
    group.all_reduce(&mut v)?;
    Ok(f64::from(v[0]))
}
