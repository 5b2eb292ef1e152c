//! The metrics of PQL.md §4, one function per task type, each returning its metrics by
//! their lower-case names (`auroc`, `mae`, `map@5`, ...).

use std::collections::BTreeMap;

pub type Metrics = BTreeMap<String, f64>;

fn set(m: &mut Metrics, name: &str, value: f64) {
    m.insert(name.to_string(), value);
}

/// Area under the ROC curve, with tied scores counted half (NaN without both classes).
pub fn auroc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    // Sum of the positives' ranks (average rank within ties).
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += rank * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Average precision (area under the precision-recall curve, step-wise; ties broken
/// pessimistically, so a constant score gets the positive rate).
pub fn average_precision(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .total_cmp(&scores[a])
            .then(labels[a].cmp(&labels[b]))
    });
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return f64::NAN;
    }
    let (mut hits, mut sum) = (0usize, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let group_hits = order[i..=j].iter().filter(|&&k| labels[k]).count();
        hits += group_hits;
        sum += group_hits as f64 * hits as f64 / (j + 1) as f64;
        i = j + 1;
    }
    sum / positives as f64
}

/// Binary classification from probabilities.
pub fn binary(probs: &[f64], labels: &[bool]) -> Metrics {
    let mut m = Metrics::new();
    let n = labels.len().max(1) as f64;
    set(&mut m, "auroc", auroc(probs, labels));
    set(&mut m, "ap", average_precision(probs, labels));
    let predicted: Vec<bool> = probs.iter().map(|&p| p >= 0.5).collect();
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    set(&mut m, "accuracy", correct as f64 / n);
    let tp = predicted
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p && **l)
        .count() as f64;
    let fp = predicted
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p && !**l)
        .count() as f64;
    let fneg = predicted
        .iter()
        .zip(labels)
        .filter(|(p, l)| !**p && **l)
        .count() as f64;
    let f1 = if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fneg)
    };
    set(&mut m, "f1", f1);
    let eps = 1e-7;
    let log_loss = probs
        .iter()
        .zip(labels)
        .map(|(&p, &l)| {
            let p = p.clamp(eps, 1.0 - eps);
            -if l { p.ln() } else { (1.0 - p).ln() }
        })
        .sum::<f64>()
        / n;
    set(&mut m, "log_loss", log_loss);
    m
}

/// Regression (and forecasts, flattened over steps).
pub fn regression(pred: &[f64], truth: &[f64]) -> Metrics {
    let mut m = Metrics::new();
    let n = truth.len().max(1) as f64;
    let mae = pred
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t).abs())
        .sum::<f64>()
        / n;
    let sse: f64 = pred.iter().zip(truth).map(|(p, t)| (p - t).powi(2)).sum();
    let mean = truth.iter().sum::<f64>() / n;
    let sst: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    let smape = pred
        .iter()
        .zip(truth)
        .map(|(p, t)| {
            let d = p.abs() + t.abs();
            if d == 0.0 {
                0.0
            } else {
                2.0 * (p - t).abs() / d
            }
        })
        .sum::<f64>()
        / n;
    set(&mut m, "mae", mae);
    set(&mut m, "rmse", (sse / n).sqrt());
    set(
        &mut m,
        "r2",
        if sst > 0.0 { 1.0 - sse / sst } else { f64::NAN },
    );
    set(&mut m, "smape", smape);
    m
}

/// The predicted class of per-class probabilities: the most probable, the first on ties.
pub fn argmax(probs: &[f64]) -> usize {
    (0..probs.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]).then(b.cmp(&a)))
        .unwrap_or(0)
}

/// Multiclass from per-class probabilities (`probs[i]` over `classes` classes); a
/// true class of `None` is one never seen in training (never predicted right).
pub fn multiclass(probs: &[Vec<f64>], truth: &[Option<usize>], classes: usize) -> Metrics {
    let mut m = Metrics::new();
    let n = truth.len().max(1) as f64;
    let predicted: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
    let correct = predicted
        .iter()
        .zip(truth)
        .filter(|(p, t)| Some(**p) == **t)
        .count();
    set(&mut m, "accuracy", correct as f64 / n);
    let mut f1 = Vec::new();
    for c in 0..classes {
        let tp = predicted
            .iter()
            .zip(truth)
            .filter(|(p, t)| **p == c && **t == Some(c))
            .count();
        let fp = predicted
            .iter()
            .zip(truth)
            .filter(|(p, t)| **p == c && **t != Some(c))
            .count();
        let fneg = predicted
            .iter()
            .zip(truth)
            .filter(|(p, t)| **p != c && **t == Some(c))
            .count();
        if tp + fp + fneg > 0 {
            f1.push(2.0 * tp as f64 / (2 * tp + fp + fneg) as f64);
        }
    }
    set(
        &mut m,
        "macro_f1",
        f1.iter().sum::<f64>() / f1.len().max(1) as f64,
    );
    let mrr = probs
        .iter()
        .zip(truth)
        .map(|(p, t)| match t {
            Some(t) => 1.0 / (1 + p.iter().filter(|&&q| q > p[*t]).count()) as f64,
            None => 0.0,
        })
        .sum::<f64>()
        / n;
    set(&mut m, "mrr", mrr);
    m
}

/// One ranked list: the top `k` items and the rank (from 1) of the best relevant item in
/// the full ranking (`None`: no relevant item is known to the model).
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    pub top: Vec<u32>,
    pub first_relevant: Option<usize>,
}

/// Ranking metrics at `k` over entities with their relevant items.
pub fn ranking(ranked: &[Ranked], relevant: &[Vec<u32>], k: usize) -> Metrics {
    let mut m = Metrics::new();
    let n = ranked.len().max(1) as f64;
    let (mut map, mut ndcg, mut recall, mut precision, mut hit, mut mrr) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (r, rel) in ranked.iter().zip(relevant) {
        let is_rel = |item: &u32| rel.contains(item);
        let (mut hits, mut ap, mut dcg) = (0usize, 0.0, 0.0);
        for (i, item) in r.top.iter().take(k).enumerate() {
            if is_rel(item) {
                hits += 1;
                ap += hits as f64 / (i + 1) as f64;
                dcg += 1.0 / ((i + 2) as f64).log2();
            }
        }
        let ideal: f64 = (0..rel.len().min(k))
            .map(|i| 1.0 / ((i + 2) as f64).log2())
            .sum();
        map += ap / rel.len().min(k).max(1) as f64;
        ndcg += if ideal > 0.0 { dcg / ideal } else { 0.0 };
        recall += hits as f64 / rel.len().max(1) as f64;
        precision += hits as f64 / k as f64;
        hit += f64::from(u8::from(hits > 0));
        mrr += r.first_relevant.map_or(0.0, |rank| 1.0 / rank as f64);
    }
    for (name, total) in [
        ("map", map),
        ("ndcg", ndcg),
        ("recall", recall),
        ("precision", precision),
        ("hit_rate", hit),
    ] {
        set(&mut m, &format!("{name}@{k}"), total / n);
    }
    set(&mut m, "mrr", mrr / n);
    m
}

/// The metric early stopping watches, and whether larger is better.
/// Entities in order of decreasing `score` (ties by position, so results are stable).
fn by_score(score: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    order
}

/// Area under the uplift curve of true effects taken in `order`: the mean over
/// k = 1..n of (sum of the first k true effects) / n.
fn true_area(order: &[usize], truth: &[f64]) -> f64 {
    let n = order.len() as f64;
    let mut sum = 0.0;
    let mut area = 0.0;
    for &i in order {
        sum += truth[i];
        area += sum / n;
    }
    area / n
}

/// Uplift metrics against known per-entity effects (`truth`): `auuc`, the area under
/// the curve of the true effect gained by treating the top fraction by `predicted`
/// uplift (in effect per entity), and `qini`, that area above random targeting as a
/// share of the perfect ranking's (1: as good as knowing the effects, 0: random,
/// negative: worse), and `spearman`, the rank correlation of predicted and true effects.
pub fn uplift_truth(predicted: &[f64], truth: &[f64]) -> Metrics {
    let mut m = Metrics::new();
    let n = predicted.len();
    if n == 0 {
        return m;
    }
    let model = true_area(&by_score(predicted), truth);
    let perfect = true_area(&by_score(truth), truth);
    // Random targeting gains the mean effect per entity treated: half the total, on
    // average, over the curve (plus the 1/(2n) of the discrete sum).
    let total: f64 = truth.iter().sum::<f64>() / n as f64;
    let random = total * (n as f64 + 1.0) / (2.0 * n as f64);
    set(&mut m, "auuc", model);
    set(&mut m, "qini", (model - random) / (perfect - random));
    set(&mut m, "spearman", spearman(predicted, truth));
    m
}

/// Ranks (0-based, ties averaged).
fn ranks(v: &[f64]) -> Vec<f64> {
    let order = by_score(v);
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        for &k in &order[i..=j] {
            r[k] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (NaN when either side is constant).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let mean = (n - 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - mean) * (y - mean);
        va += (x - mean) * (x - mean);
        vb += (y - mean) * (y - mean);
    }
    cov / (va * vb).sqrt()
}

/// Uplift metrics from observed outcomes of a randomised treatment: with entities in
/// order of decreasing `predicted` uplift, the Qini curve after k entities is
/// `Y_t(k) - Y_c(k) N_t(k) / N_c(k)` (responders among the treated, less the control
/// responders scaled to as many treated), per entity. `qini_observed` is its area above
/// the straight line of random targeting; `auuc_observed` the area under the uplift
/// curve `(Y_t/N_t - Y_c/N_c)(k) k / n`.
pub fn uplift_observed(predicted: &[f64], treated: &[bool], outcome: &[f64]) -> Metrics {
    let mut m = Metrics::new();
    let n = predicted.len();
    if n == 0 {
        return m;
    }
    let (mut nt, mut nc, mut yt, mut yc) = (0.0, 0.0, 0.0, 0.0);
    let (mut qini, mut auuc) = (0.0, 0.0);
    let nf = n as f64;
    for (k, &i) in by_score(predicted).iter().enumerate() {
        if treated[i] {
            nt += 1.0;
            yt += outcome[i];
        } else {
            nc += 1.0;
            yc += outcome[i];
        }
        let q = if nc > 0.0 { yt - yc * nt / nc } else { yt };
        qini += q / nf;
        if nt > 0.0 && nc > 0.0 {
            auuc += (yt / nt - yc / nc) * (k + 1) as f64 / nf;
        }
    }
    let last = if nc > 0.0 { yt - yc * nt / nc } else { yt };
    // The random line from 0 to the whole population's Qini, over the same k = 1..n.
    let random = last / nf * (nf + 1.0) / 2.0;
    set(&mut m, "qini_observed", (qini - random) / nf);
    set(&mut m, "auuc_observed", auuc / nf);
    m
}

pub fn primary(names: &Metrics) -> (&str, bool) {
    for (name, larger) in [("auroc", true), ("mae", false), ("accuracy", true)] {
        if names.contains_key(name) {
            return (name, larger);
        }
    }
    let map = names
        .keys()
        .find(|k| k.starts_with("map@"))
        .map_or("mrr", |k| k.as_str());
    (map, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplift_against_known_effects() {
        let truth = [0.3, 0.0, 0.1, 0.2];
        let perfect = uplift_truth(&truth, &truth);
        assert!((perfect["qini"] - 1.0).abs() < 1e-12);
        assert!((perfect["spearman"] - 1.0).abs() < 1e-12);
        let reversed: Vec<f64> = truth.iter().map(|t| -t).collect();
        assert!(uplift_truth(&reversed, &truth)["qini"] < -0.9);
        // Every order of 4 entities: the mean Qini of all orders is 0 (random).
        let mut total = 0.0;
        let mut count = 0.0;
        for a in 0..4 {
            for b in 0..4 {
                for c in 0..4 {
                    for d in 0..4 {
                        let mut seen = [a, b, c, d];
                        seen.sort_unstable();
                        if seen != [0, 1, 2, 3] {
                            continue;
                        }
                        let mut score = [0.0; 4];
                        for (rank, &i) in [a, b, c, d].iter().enumerate() {
                            score[i] = -(rank as f64);
                        }
                        total += uplift_truth(&score, &truth)["qini"];
                        count += 1.0;
                    }
                }
            }
        }
        assert!((total / count).abs() < 1e-12, "mean {}", total / count);
        // AUUC by hand: order 0, 3, 2, 1 -> partial sums .3 .5 .6 .6 over n=4, mean.
        let auuc = (0.3 + 0.5 + 0.6 + 0.6) / 4.0 / 4.0;
        assert!((perfect["auuc"] - auuc).abs() < 1e-12);
    }

    #[test]
    fn observed_qini_by_hand() {
        // Predicted order: 0, 1, 2, 3. Treated responders first: a good ranking.
        let treated = [true, false, true, false];
        let outcome = [1.0, 0.0, 0.0, 1.0];
        let m = uplift_observed(&[4.0, 3.0, 2.0, 1.0], &treated, &outcome);
        // Q after k: 1, 1 - 0*1/1 = 1, 1 - 0*2/1 = 1, 1 - 1*2/2 = 0.
        let area = (1.0 + 1.0 + 1.0 + 0.0) / 4.0;
        let random = 0.0;
        assert!((m["qini_observed"] - (area - random) / 4.0).abs() < 1e-12);
        let worse = uplift_observed(&[1.0, 2.0, 3.0, 4.0], &treated, &outcome);
        assert!(worse["qini_observed"] < m["qini_observed"]);
    }

    #[test]
    fn auroc_counts_pairs_and_ties() {
        let labels = [false, false, true, true];
        assert_eq!(auroc(&[0.1, 0.2, 0.3, 0.4], &labels), 1.0);
        assert_eq!(auroc(&[0.4, 0.3, 0.2, 0.1], &labels), 0.0);
        assert_eq!(auroc(&[0.5; 4], &labels), 0.5);
        // One of four pairs misordered.
        assert_eq!(auroc(&[0.1, 0.35, 0.3, 0.4], &labels), 0.75);
        assert!(auroc(&[0.1], &[true]).is_nan());
    }

    #[test]
    fn average_precision_of_perfect_constant_and_mixed_rankings() {
        let labels = [true, false, true, false];
        assert_eq!(average_precision(&[0.9, 0.1, 0.8, 0.2], &labels), 1.0);
        assert_eq!(average_precision(&[0.5; 4], &labels), 0.5);
        // Ranked: T F T F -> (1/1 + 2/3) / 2.
        let ap = average_precision(&[0.9, 0.8, 0.7, 0.1], &labels);
        assert!((ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn regression_metrics_by_hand() {
        let m = regression(&[1.0, 2.0, 4.0], &[1.0, 3.0, 2.0]);
        assert!((m["mae"] - 1.0).abs() < 1e-12);
        assert!((m["rmse"] - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((m["r2"] - (1.0 - 5.0 / 2.0)).abs() < 1e-12);
    }

    #[test]
    fn multiclass_metrics_by_hand() {
        let probs = vec![
            vec![0.7, 0.2, 0.1],
            vec![0.2, 0.5, 0.3],
            vec![0.6, 0.3, 0.1],
        ];
        let m = multiclass(&probs, &[Some(0), Some(2), None], 3);
        assert!((m["accuracy"] - 1.0 / 3.0).abs() < 1e-12);
        assert!((m["mrr"] - (1.0 + 0.5 + 0.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn ranking_metrics_by_hand() {
        let ranked = [Ranked {
            top: vec![5, 3, 9],
            first_relevant: Some(2),
        }];
        let m = ranking(&ranked, &[vec![3, 7]], 3);
        assert!((m["precision@3"] - 1.0 / 3.0).abs() < 1e-12);
        assert!((m["recall@3"] - 0.5).abs() < 1e-12);
        assert!((m["map@3"] - 0.5 / 2.0).abs() < 1e-12);
        assert_eq!(m["hit_rate@3"], 1.0);
        assert_eq!(m["mrr"], 0.5);
        let ndcg = (1.0 / 3f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((m["ndcg@3"] - ndcg).abs() < 1e-12);
    }
}
