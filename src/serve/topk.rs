//! Exact top-k item search for recommendations (ARCHITECTURE.md §8): a query vector's
//! dot product with every item embedding of the serving model.
//!
//! Large catalogs are memory bound (a million items of 64 floats is 256 MB per
//! request), so they are scanned twice: first over an 8-bit copy of the embeddings (a
//! quarter of the bytes: each row scaled by its largest magnitude m to -127..127), where
//! each item's score is known within a bound (each value is off by at most m/254, so a
//! score by at most ‖q‖₁ · m/254, plus float rounding); only the items whose upper bound
//! reaches the k-th best lower bound can be in the top k, and those few are scored
//! again from the f32 embeddings. The result is
//! exactly the top k of the f32 scores. Dot products use AVX2 + FMA where the CPU has
//! them (checked once at run time) and 8 independent lanes otherwise; the first pass
//! runs on one thread per core.

/// Items scanned per parallel block.
const BLOCK: usize = 16_384;

/// The live items of a model version and their embeddings.
#[derive(Debug)]
pub struct ItemSearch {
    dim: usize,
    /// Embedding id of each matrix row.
    ids: Vec<u32>,
    matrix: Vec<f32>,
    /// The matrix in 8 bits: row `r` is `approx[r] * scale[r] / 127`.
    approx: Vec<i8>,
    /// Per row, its largest absolute value.
    scale: Vec<f32>,
}

/// `row` in 8 bits, scaled by its largest magnitude `m` to -127..127 (rounded to
/// nearest), so that each value is off by at most `m / 254`.
fn quantize(row: &[f32], m: f32) -> impl Iterator<Item = i8> + '_ {
    let to = if m > 0.0 { 127.0 / m } else { 0.0 };
    row.iter()
        .map(move |&x| (x * to).round().clamp(-127.0, 127.0) as i8)
}

/// A scored item: (score, embedding id), best first by score, then by lower id.
pub type Scored = (f32, u32);

/// What a first pass over some rows leaves: its best lower bounds, and its candidates
/// (row, upper bound).
type Pass = (Vec<Scored>, Vec<(usize, f32)>);

fn better(a: &Scored, b: &Scored) -> bool {
    // `+ 0.0` makes -0.0 equal to 0.0, which `total_cmp` alone would order.
    (a.0 + 0.0)
        .total_cmp(&(b.0 + 0.0))
        .then(b.1.cmp(&a.1))
        .is_gt()
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

    /// The k-th best score so far (−∞ until there are k).
    fn threshold(&self) -> f32 {
        if self.k > 0 && self.items.len() == self.k {
            self.items[self.k - 1].0
        } else {
            f32::NEG_INFINITY
        }
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
        let scale: Vec<f32> = matrix
            .chunks_exact(dim.max(1))
            .map(|row| row.iter().fold(0f32, |m, x| m.max(x.abs())))
            .collect();
        let approx = matrix
            .chunks_exact(dim.max(1))
            .zip(&scale)
            .flat_map(|(row, &m)| quantize(row, m))
            .collect();
        ItemSearch {
            dim,
            ids,
            matrix,
            approx,
            scale,
        }
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
        if n <= BLOCK || k == 0 {
            return scan(0, n);
        }
        // One share per core, the caller's thread taking the first: plain scoped threads,
        // since waiting on a rayon pool from a serving thread (itself a rayon worker)
        // spins on a core the scan needs.
        let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
        let share = n.div_ceil(threads).div_ceil(BLOCK) * BLOCK;
        let l1: f32 = query.iter().map(|x| x.abs()).sum::<f32>() * 1.001;
        let rel = 1.0 / 254.0 + 4.0 * self.dim as f32 * 2f32.powi(-24);
        let parts: Vec<Pass> = std::thread::scope(|scope| {
            let pass = |t: usize| {
                self.bounded_pass(
                    query,
                    l1 * rel,
                    k,
                    skip,
                    t * share,
                    ((t + 1) * share).min(n),
                )
            };
            let helpers: Vec<_> = (1..threads)
                .filter(|t| t * share < n)
                .map(|t| scope.spawn(move || pass(t)))
                .collect();
            let mut parts = vec![pass(0)];
            parts.extend(helpers.into_iter().filter_map(|h| h.join().ok()));
            parts
        });
        // The k-th best lower bound over all items, and the items that can beat it.
        let mut lower = Top::new(k);
        for s in parts.iter().flat_map(|p| p.0.iter()) {
            if lower.admits(s) {
                lower.push(*s);
            }
        }
        let tau = lower.threshold();
        let mut top = Top::new(k);
        let mut score = [0f32];
        for &(r, upper) in parts.iter().flat_map(|p| p.1.iter()) {
            if upper < tau {
                continue;
            }
            dots(
                query,
                &self.matrix[r * self.dim..(r + 1) * self.dim],
                &mut score,
            );
            let item = (score[0], self.ids[r]);
            if top.admits(&item) {
                top.push(item);
            }
        }
        top.items
    }

    /// The first pass over rows `lo..hi` in 8 bits: the best `k` lower bounds, and
    /// every row (with its upper bound) that reached the k-th lower bound seen so far.
    fn bounded_pass(
        &self,
        query: &[f32],
        slack: f32,
        k: usize,
        skip: &(dyn Fn(u32) -> bool + Sync),
        lo: usize,
        hi: usize,
    ) -> Pass {
        let mut lower = Top::new(k);
        let mut candidates = Vec::new();
        let mut scores = vec![0f32; BLOCK];
        for b in (lo..hi).step_by(BLOCK) {
            let e = (b + BLOCK).min(hi);
            int8_dots(
                query,
                &self.approx[b * self.dim..e * self.dim],
                &mut scores[..e - b],
            );
            for (j, &raw) in scores[..e - b].iter().enumerate() {
                let r = b + j;
                let a = raw * (self.scale[r] / 127.0);
                let bound = slack * self.scale[r] + f32::MIN_POSITIVE;
                if a + bound < lower.threshold() || skip(self.ids[r]) {
                    continue;
                }
                candidates.push((r, a + bound));
                let low = (a - bound, self.ids[r]);
                if lower.admits(&low) {
                    lower.push(low);
                }
            }
        }
        (lower.items, candidates)
    }
}

/// Whether the AVX2 + FMA kernels can run here (checked at run time).
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `out[r]` = `query` · row `r` of `rows` (row-major, `query.len()` wide).
pub fn dots(query: &[f32], rows: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    if avx2_fma() {
        // SAFETY: the CPU has both features, checked just above.
        unsafe { avx2::dots(query, rows, out) };
        return;
    }
    portable_dots(query, rows, out);
}

/// `out[r]` = `query` · row `r` of `rows`, an 8-bit matrix (unscaled).
fn int8_dots(query: &[f32], rows: &[i8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    if avx2_fma() {
        // SAFETY: the CPU has both features, checked just above.
        unsafe { avx2::int8_dots(query, rows, out) };
        return;
    }
    portable_int8_dots(query, rows, out);
}

fn portable_int8_dots(query: &[f32], rows: &[i8], out: &mut [f32]) {
    let dim = query.len();
    let mut row32 = vec![0f32; dim];
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(dim.max(1))) {
        for (x, &v) in row32.iter_mut().zip(row) {
            *x = f32::from(v);
        }
        let mut one = [0f32];
        portable_dots(query, &row32, &mut one);
        *o = one[0];
    }
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

    /// The sum of the 8 lanes of `v`.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
    }

    /// 8 values of an 8-bit row from column `c`, widened to f32.
    ///
    /// # Safety
    /// `row[c..c + 8]` must be in bounds.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn widen(row: &[i8], c: usize) -> __m256 {
        // SAFETY: the caller keeps `c + 8 <= row.len()`; the load reads 8 bytes.
        let h = unsafe { _mm_loadl_epi64(row.as_ptr().add(c).cast()) };
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h))
    }

    /// As [`dots`] over 8-bit rows, widened to f32 eight at a time, four rows at once
    /// (four independent FMA chains).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn int8_dots(query: &[f32], rows: &[i8], out: &mut [f32]) {
        let dim = query.len().max(1);
        let wide = query.len() - query.len() % 8;
        let tail = |row: &[i8]| -> f32 {
            (wide..query.len())
                .map(|c| query[c] * f32::from(row[c]))
                .sum()
        };
        let mut groups = rows.chunks_exact(4 * dim);
        let mut outs = out.chunks_exact_mut(4);
        for (group, o) in (&mut groups).zip(&mut outs) {
            let (r0, r1, r2, r3) = (
                &group[..dim],
                &group[dim..2 * dim],
                &group[2 * dim..3 * dim],
                &group[3 * dim..],
            );
            let mut acc = [_mm256_setzero_ps(); 4];
            for c in (0..wide).step_by(8) {
                // SAFETY: `c + 8 <= wide <= dim`, the length of the query and each row.
                unsafe {
                    let q = _mm256_loadu_ps(query.as_ptr().add(c));
                    acc[0] = _mm256_fmadd_ps(q, widen(r0, c), acc[0]);
                    acc[1] = _mm256_fmadd_ps(q, widen(r1, c), acc[1]);
                    acc[2] = _mm256_fmadd_ps(q, widen(r2, c), acc[2]);
                    acc[3] = _mm256_fmadd_ps(q, widen(r3, c), acc[3]);
                }
            }
            for (k, r) in [r0, r1, r2, r3].into_iter().enumerate() {
                o[k] = hsum(acc[k]) + tail(r);
            }
        }
        for (row, o) in groups
            .remainder()
            .chunks_exact(dim)
            .zip(outs.into_remainder())
        {
            let mut acc = _mm256_setzero_ps();
            for c in (0..wide).step_by(8) {
                // SAFETY: as above.
                unsafe {
                    let q = _mm256_loadu_ps(query.as_ptr().add(c));
                    acc = _mm256_fmadd_ps(q, widen(row, c), acc);
                }
            }
            *o = hsum(acc) + tail(row);
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
            let skip = |i: u32| i.is_multiple_of(5);
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
    fn the_bounded_two_pass_search_is_exact() {
        // Real-valued embeddings, many near-ties: the top k must equal the f32 sort.
        for (dim, items, seed) in [
            (64, 3 * BLOCK + 5, 1u64),
            (13, 2 * BLOCK + 77, 2),
            (128, BLOCK + 1, 3),
        ] {
            let mut x = seed;
            let mut next = || {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * if x & 1 == 0 { 1e-3 } else { 1.0 }
            };
            let emb: Vec<f32> = (0..items * dim).map(|_| next()).collect();
            let q: Vec<f32> = (0..dim).map(|_| next()).collect();
            let search = ItemSearch::new(dim, &emb, 0..items as u32);
            let skip = |i: u32| i % 3 == 1;
            for k in [1, 10, 100] {
                let got = search.top_k(&q, k, &skip);
                let mut all: Vec<Scored> = (0..items)
                    .filter(|&r| !skip(r as u32))
                    .map(|r| {
                        let mut s = [0f32];
                        dots(&q, &emb[r * dim..(r + 1) * dim], &mut s);
                        (s[0], r as u32)
                    })
                    .collect();
                all.sort_by(|a, b| {
                    if better(a, b) {
                        std::cmp::Ordering::Less
                    } else {
                        std::cmp::Ordering::Greater
                    }
                });
                all.truncate(k);
                assert_eq!(got, all, "dim {dim}, k {k}");
            }
        }
    }

    #[test]
    fn quantized_rows_are_within_their_bound_and_dots_agree() {
        let row = [0.5f32, -1.0, 0.25, 0.0, 0.9999];
        let q: Vec<i8> = quantize(&row, 1.0).collect();
        assert_eq!(q, [64, -127, 32, 0, 127]);
        for (x, k) in row.iter().zip(&q) {
            assert!((x - f32::from(*k) / 127.0).abs() <= 1.0 / 254.0 + 1e-7);
        }
        assert_eq!(quantize(&[0.0, 0.0], 0.0).collect::<Vec<_>>(), [0, 0]);
        for dim in [1, 7, 8, 9, 31, 64] {
            let q: Vec<f32> = (0..dim).map(|c| (c as f32).sin()).collect();
            let rows: Vec<i8> = (0..9 * dim).map(|c| ((c * 37) % 255 - 127) as i8).collect();
            let (mut a, mut b) = (vec![0f32; 9], vec![0f32; 9]);
            int8_dots(&q, &rows, &mut a);
            portable_int8_dots(&q, &rows, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-2, "dim {dim}: {x} vs {y}");
            }
        }
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
