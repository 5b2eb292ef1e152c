//! Negative items for ranking tasks: uniform or popularity-weighted, optionally never an
//! item the entity is known to link to.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use rustc_hash::FxHashSet;

/// Draws items `0..n` (rows of the item table).
#[derive(Clone, Debug)]
pub struct NegativeSampler {
    items: u32,
    /// Cumulative weights for popularity sampling; empty for uniform.
    cumulative: Vec<f64>,
}

impl NegativeSampler {
    /// Every item equally likely.
    pub fn uniform(items: u32) -> Self {
        NegativeSampler {
            items,
            cumulative: Vec::new(),
        }
    }

    /// Item `i` with probability proportional to `counts[i] + 1` (add-one keeps unseen
    /// items reachable), e.g. counts of positives in the training split.
    pub fn popularity(counts: &[u64]) -> Self {
        let mut total = 0.0;
        let cumulative = counts
            .iter()
            .map(|&c| {
                total += c as f64 + 1.0;
                total
            })
            .collect();
        NegativeSampler {
            items: counts.len() as u32,
            cumulative,
        }
    }

    fn draw(&self, rng: &mut Pcg64Mcg) -> u32 {
        match self.cumulative.last() {
            None => rng.random_range(0..self.items),
            Some(&total) => {
                let x = rng.random::<f64>() * total;
                (self.cumulative.partition_point(|&c| c <= x) as u32).min(self.items - 1)
            }
        }
    }

    /// `k` distinct items not in `exclude` (fewer if fewer exist), seeded by `seed`.
    pub fn sample(&self, k: usize, exclude: &FxHashSet<u32>, seed: u64) -> Vec<u32> {
        let available = (self.items as usize)
            .saturating_sub(exclude.iter().filter(|&&e| e < self.items).count());
        if available <= k {
            return (0..self.items).filter(|i| !exclude.contains(i)).collect();
        }
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let mut chosen = FxHashSet::default();
        let mut out = Vec::with_capacity(k);
        let mut tries = 0usize;
        while out.len() < k && tries < 64 * k {
            tries += 1;
            let item = self.draw(&mut rng);
            if !exclude.contains(&item) && chosen.insert(item) {
                out.push(item);
            }
        }
        // Heavily skewed weights can starve the rejection loop: fill up uniformly.
        let mut next = 0u32;
        while out.len() < k {
            if !exclude.contains(&next) && chosen.insert(next) {
                out.push(next);
            }
            next += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_returns_excluded_or_repeated_items() {
        let exclude: FxHashSet<u32> = [1, 3, 5, 7].into_iter().collect();
        for sampler in [
            NegativeSampler::uniform(10),
            NegativeSampler::popularity(&[9, 0, 5, 0, 1, 0, 0, 0, 3, 2]),
        ] {
            for seed in 0..50 {
                let got = sampler.sample(4, &exclude, seed);
                let set: FxHashSet<u32> = got.iter().copied().collect();
                assert_eq!((got.len(), set.len()), (4, 4));
                assert!(got.iter().all(|i| *i < 10 && !exclude.contains(i)));
            }
            let all = sampler.sample(100, &exclude, 1);
            assert_eq!(all, vec![0, 2, 4, 6, 8, 9]);
        }
    }

    #[test]
    fn draws_follow_their_distribution() {
        let none = FxHashSet::default();
        let uniform = NegativeSampler::uniform(10);
        let mut counts = [0f64; 10];
        for seed in 0..5000 {
            counts[uniform.sample(1, &none, seed)[0] as usize] += 1.0;
        }
        let chi2: f64 = counts.iter().map(|c| (c - 500.0).powi(2) / 500.0).sum();
        assert!(chi2 < 27.9, "chi-square {chi2} over 9 degrees of freedom");
        let popular = NegativeSampler::popularity(&[99, 0, 0, 0]);
        let hits = (0..2000)
            .filter(|&s| popular.sample(1, &none, s)[0] == 0)
            .count();
        let share = hits as f64 / 2000.0;
        assert!((share - 100.0 / 103.0).abs() < 0.02, "{share}");
    }
}
