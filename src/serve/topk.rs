//! Exact top-k item search for recommendations (ARCHITECTURE.md §8): a query vector's
//! dot product with every item embedding of the serving model, kept as one contiguous
//! row-major matrix per model version. Dot products use AVX2 + FMA where the CPU has
//! them (checked once at run time) and 8 independent lanes the compiler vectorises
//! otherwise; large catalogs are scanned by one thread per core, each keeping its own
//! top k, merged at the end. Nothing is approximated: the result is the same as
//! sorting every score.

/// Items scanned per parallel block.
const BLOCK: usize = 16_384;

/// The live items of a model version and their embeddings.
#[derive(Debug)]
pub struct ItemSearch {
    dim: usize,
    /// Embedding id of each matrix row.
    ids: Vec<u32>,
    matrix: Vec<f32>,
}

/// A scored item: (score, embedding id), best first by score, then by lower id.
pub type Scored = (f32, u32);

fn better(a: &Scored, b: &Scored) -> bool {
    a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)).is_gt()
}

/// The best `k` seen so far, best first.
struct Top {
    k: usize,
    items: Vec<Scored>,
}

impl Top {
    fn new(k: usize) -> Self {
        Top {
            k,
            items: Vec::with_capacity(k + 1),
        }
    }

    /// Whether `s` would enter (a cheap test before anything else is checked).
    fn admits(&self, s: &Scored) -> bool {
        self.k > 0 && (self.items.len() < self.k || better(s, &self.items[self.k - 1]))
    }

    fn push(&mut self, s: Scored) {
        let at = self.items.partition_point(|x| better(x, &s));
        self.items.insert(at, s);
        self.items.truncate(self.k);
    }
}

impl ItemSearch {
    /// `embeddings` holds `dim` floats per embedding id; `live` the ids to search.
    pub fn new(dim: usize, embeddings: &[f32], live: impl IntoIterator<Item = u32>) -> Self {
        let ids: Vec<u32> = live.into_iter().collect();
        let mut matrix = Vec::with_capacity(ids.len() * dim);
        for &i in &ids {
            matrix.extend_from_slice(&embeddings[i as usize * dim..(i as usize + 1) * dim]);
        }
        ItemSearch { dim, ids, matrix }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The `k` items with the highest dot product with `query`, best first, leaving out
    /// those `skip` refuses (asked only of items that would otherwise enter).
    pub fn top_k(
        &self,
        query: &[f32],
        k: usize,
        skip: &(dyn Fn(u32) -> bool + Sync),
    ) -> Vec<Scored> {
        assert_eq!(query.len(), self.dim, "query width");
        let scan = |lo: usize, hi: usize| {
            let mut top = Top::new(k);
            let mut scores = vec![0f32; hi - lo];
            dots(
                query,
                &self.matrix[lo * self.dim..hi * self.dim],
                &mut scores,
            );
            for (j, &s) in scores.iter().enumerate() {
                let item = (s, self.ids[lo + j]);
                if top.admits(&item) && !skip(item.1) {
                    top.push(item);
                }
            }
            top.items
        };
        let n = self.ids.len();
        if n <= BLOCK {
            return scan(0, n);
        }
        // One share per core, the caller's thread taking the first: plain scoped threads,
        // since waiting on a rayon pool from a serving thread (itself a rayon worker)
        // spins on a core the scan needs.
        let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
        let share = n.div_ceil(threads).div_ceil(BLOCK) * BLOCK;
        let range = |t: usize| {
            let run = |lo: usize| {
                let mut top = Vec::new();
                let hi = (lo + share).min(n);
                for b in (lo..hi).step_by(BLOCK) {
                    top.extend(scan(b, (b + BLOCK).min(hi)));
                }
                top
            };
            run(t * share)
        };
        let parts: Vec<Vec<Scored>> = std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads)
                .filter(|t| t * share < n)
                .map(|t| scope.spawn(move || range(t)))
                .collect();
            let mut parts = vec![range(0)];
            parts.extend(helpers.into_iter().filter_map(|h| h.join().ok()));
            parts
        });
        let mut top = Top::new(k);
        for s in parts.into_iter().flatten() {
            if top.admits(&s) {
                top.push(s);
            }
        }
        top.items
    }
}

/// `out[r]` = `query` · row `r` of `rows` (row-major, `query.len()` wide).
pub fn dots(query: &[f32], rows: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features, checked just above.
        unsafe { avx2::dots(query, rows, out) };
        return;
    }
    portable_dots(query, rows, out);
}

fn portable_dots(query: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = query.len();
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(dim.max(1))) {
        let mut lanes = [0f32; 8];
        let (q8, qt) = query.split_at(dim - dim % 8);
        let (r8, rt) = row.split_at(dim - dim % 8);
        for (q, r) in q8.chunks_exact(8).zip(r8.chunks_exact(8)) {
            for l in 0..8 {
                lanes[l] += q[l] * r[l];
            }
        }
        *o = lanes.iter().sum::<f32>() + qt.iter().zip(rt).map(|(a, b)| a * b).sum::<f32>();
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots(query: &[f32], rows: &[f32], out: &mut [f32]) {
        let dim = query.len();
        let wide = dim - dim % 8;
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(dim.max(1))) {
            // SAFETY: every load reads 8 floats at `c < wide <= dim` of slices `dim` long.
            unsafe {
                let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut c = 0;
                while c + 16 <= wide {
                    let q0 = _mm256_loadu_ps(query.as_ptr().add(c));
                    let r0 = _mm256_loadu_ps(row.as_ptr().add(c));
                    let q1 = _mm256_loadu_ps(query.as_ptr().add(c + 8));
                    let r1 = _mm256_loadu_ps(row.as_ptr().add(c + 8));
                    a = _mm256_fmadd_ps(q0, r0, a);
                    b = _mm256_fmadd_ps(q1, r1, b);
                    c += 16;
                }
                if c < wide {
                    let q0 = _mm256_loadu_ps(query.as_ptr().add(c));
                    let r0 = _mm256_loadu_ps(row.as_ptr().add(c));
                    a = _mm256_fmadd_ps(q0, r0, a);
                    c += 8;
                }
                let s = _mm256_add_ps(a, b);
                let half = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
                let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
                let one = _mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1));
                let mut total = _mm_cvtss_f32(one);
                while c < dim {
                    total += query[c] * row[c];
                    c += 1;
                }
                *o = total;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted_all(search: &ItemSearch, q: &[f32], skip: &dyn Fn(u32) -> bool) -> Vec<Scored> {
        let mut all: Vec<Scored> = (0..search.len())
            .map(|r| {
                let row = &search.matrix[r * search.dim..(r + 1) * search.dim];
                let s: f32 = q.iter().zip(row).map(|(a, b)| a * b).sum();
                (s, search.ids[r])
            })
            .filter(|s| !skip(s.1))
            .collect();
        all.sort_by(|a, b| {
            if better(a, b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        all
    }

    proptest! {
        #[test]
        fn top_k_is_the_head_of_the_full_sort(
            dim in 1usize..40,
            items in 0usize..300,
            k in 0usize..20,
            seed in any::<u64>(),
        ) {
            let mut x = seed | 1;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Coarse values: ties happen and must break by id.
                ((x % 9) as f32 - 4.0) / 4.0
            };
            let emb: Vec<f32> = (0..items * dim).map(|_| next()).collect();
            let q: Vec<f32> = (0..dim).map(|_| next()).collect();
            let live: Vec<u32> = (0..items as u32).filter(|i| i % 7 != 3).collect();
            let search = ItemSearch::new(dim, &emb, live);
            let skip = |i: u32| i % 5 == 0;
            let got = search.top_k(&q, k, &skip);
            let want: Vec<Scored> = sorted_all(&search, &q, &skip).into_iter().take(k).collect();
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert_eq!(g.1, w.1);
                prop_assert!((g.0 - w.0).abs() <= 1e-4 * (1.0 + w.0.abs()));
            }
        }
    }

    #[test]
    fn blocks_merge_to_the_exact_top_k() {
        let (dim, items) = (24, 3 * BLOCK + 17);
        let emb: Vec<f32> = (0..items * dim)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let q: Vec<f32> = (0..dim).map(|c| (c as f32 - 11.0) / 10.0).collect();
        let search = ItemSearch::new(dim, &emb, 0..items as u32);
        let got = search.top_k(&q, 10, &|_| false);
        let want: Vec<Scored> = sorted_all(&search, &q, &|_| false)
            .into_iter()
            .take(10)
            .collect();
        assert_eq!(
            got.iter().map(|s| s.1).collect::<Vec<_>>(),
            want.iter().map(|s| s.1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn simd_and_portable_dots_agree() {
        for dim in [1, 7, 8, 9, 16, 31, 64, 128] {
            let q: Vec<f32> = (0..dim).map(|c| (c as f32).sin()).collect();
            let rows: Vec<f32> = (0..5 * dim).map(|c| (c as f32 * 0.37).cos()).collect();
            let (mut a, mut b) = (vec![0f32; 5], vec![0f32; 5]);
            dots(&q, &rows, &mut a);
            portable_dots(&q, &rows, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-4, "dim {dim}: {x} vs {y}");
            }
        }
    }
}
