//! What a task's labels become for the model ([`TargetCode`], fitted on the training
//! split and saved with the model), what the model's outputs become for the user
//! ([`Output`]), their metrics, and the simple baselines every metric is shown beside.

use std::collections::HashMap;

use relgraph_common::pql::bound::TaskType;
use serde::{Deserialize, Serialize};

use super::metrics::{self, Metrics, Ranked};
use crate::label::{LabelColumn, Labels};

/// The task's output and how labels map to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TargetCode {
    Binary,
    /// The model predicts `(y - center) / scale`; predictions are clamped to
    /// `[low, high]`, the 2nd and 98th percentiles of the training labels (as RelBench).
    Regression {
        center: f64,
        scale: f64,
        low: f64,
        high: f64,
    },
    Multiclass {
        classes: Vec<String>,
    },
    Forecast {
        steps: usize,
        center: f64,
        scale: f64,
        low: f64,
        high: f64,
    },
    /// `items`: the item table's keys at training time, one embedding row each.
    Ranking {
        k: usize,
        table: String,
        items: Vec<String>,
    },
}

/// Labels as the model reads them (per example).
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    Binary(Vec<bool>),
    Number(Vec<f64>),
    /// Class index, `None` for a class the training split never had.
    Class(Vec<Option<usize>>),
    Series(Vec<Vec<f64>>),
    /// Item indices (embedding rows); items unknown at training time are left out.
    Items(Vec<Vec<u32>>),
}

/// What the model says per example.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Probs(Vec<f64>),
    Values(Vec<f64>),
    Classes(Vec<Vec<f64>>),
    Series(Vec<Vec<f64>>),
    /// Top-k items with their scores.
    Ranked(Vec<Ranked>, Vec<Vec<f64>>),
    /// A treatment model's probabilities (binary) or values (regression) with the
    /// treatment forced on and off (counterfactual ASSUMING, PQL.md §7).
    Uplift {
        with: Vec<f64>,
        without: Vec<f64>,
    },
}

impl Output {
    /// The output of examples `lo..hi` alone.
    pub fn slice(&self, lo: usize, hi: usize) -> Output {
        match self {
            Output::Probs(p) => Output::Probs(p[lo..hi].to_vec()),
            Output::Values(v) => Output::Values(v[lo..hi].to_vec()),
            Output::Classes(c) => Output::Classes(c[lo..hi].to_vec()),
            Output::Series(s) => Output::Series(s[lo..hi].to_vec()),
            Output::Ranked(r, s) => Output::Ranked(r[lo..hi].to_vec(), s[lo..hi].to_vec()),
            Output::Uplift { with, without } => Output::Uplift {
                with: with[lo..hi].to_vec(),
                without: without[lo..hi].to_vec(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("the training split is empty: no example to learn from")]
    NoTraining,
    #[error("labels of kind {found} for a {task} task")]
    Kind {
        found: &'static str,
        task: &'static str,
    },
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

fn number_code(values: impl Iterator<Item = f64>) -> (f64, f64, f64, f64) {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    (
        mean,
        if std > 1e-9 { std } else { 1.0 },
        percentile(&v, 0.02),
        percentile(&v, 0.98),
    )
}

fn kind(labels: &LabelColumn) -> &'static str {
    match labels {
        LabelColumn::Empty => "none",
        LabelColumn::Bool(_) => "bool",
        LabelColumn::Number(_) => "number",
        LabelColumn::Class(_) => "class",
        LabelColumn::Items(_) => "items",
        LabelColumn::Series(_) => "series",
    }
}

impl TargetCode {
    /// Fits the code on the training examples (`train[i]`: is example `i` in training).
    pub fn fit(
        task: &TaskType,
        labels: &Labels,
        train: &[bool],
        item_table: Option<(&str, Vec<String>)>,
    ) -> Result<Self, TaskError> {
        if !train.iter().any(|&t| t) {
            return Err(TaskError::NoTraining);
        }
        let mismatch = || TaskError::Kind {
            found: kind(&labels.labels),
            task: task.name(),
        };
        let picked = |i: &usize| train[*i];
        Ok(match (task, &labels.labels) {
            (TaskType::Binary, LabelColumn::Bool(_)) => TargetCode::Binary,
            (TaskType::Regression, LabelColumn::Number(v)) => {
                let (center, scale, low, high) =
                    number_code((0..v.len()).filter(picked).map(|i| v[i]));
                TargetCode::Regression {
                    center,
                    scale,
                    low,
                    high,
                }
            }
            (TaskType::Forecast { steps }, LabelColumn::Series(v)) => {
                let values = (0..v.len())
                    .filter(picked)
                    .flat_map(|i| v[i].iter().copied());
                let (center, scale, low, high) = number_code(values);
                TargetCode::Forecast {
                    steps: *steps as usize,
                    center,
                    scale,
                    low,
                    high,
                }
            }
            (TaskType::Multiclass, LabelColumn::Class(v)) => {
                let mut counts: HashMap<&str, usize> = HashMap::new();
                for i in (0..v.len()).filter(picked) {
                    *counts.entry(v[i].as_str()).or_default() += 1;
                }
                let mut classes: Vec<(&str, usize)> = counts.into_iter().collect();
                classes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                TargetCode::Multiclass {
                    classes: classes.into_iter().map(|(c, _)| c.to_string()).collect(),
                }
            }
            (TaskType::Ranking { k, .. }, LabelColumn::Items(_)) => {
                let (table, items) = item_table.ok_or_else(mismatch)?;
                TargetCode::Ranking {
                    k: *k as usize,
                    table: table.to_string(),
                    items,
                }
            }
            _ => return Err(mismatch()),
        })
    }

    /// Numbers per seed of a linear head (0 for ranking).
    pub fn outputs(&self) -> usize {
        match self {
            TargetCode::Binary | TargetCode::Regression { .. } => 1,
            TargetCode::Multiclass { classes } => classes.len().max(1),
            TargetCode::Forecast { steps, .. } => *steps,
            TargetCode::Ranking { .. } => 0,
        }
    }

    /// The labels as targets.
    pub fn targets(&self, labels: &LabelColumn) -> Result<Targets, TaskError> {
        let mismatch = || TaskError::Kind {
            found: kind(labels),
            task: "this",
        };
        Ok(match (self, labels) {
            (TargetCode::Binary, LabelColumn::Bool(v)) => Targets::Binary(v.clone()),
            (TargetCode::Regression { .. }, LabelColumn::Number(v)) => Targets::Number(v.clone()),
            (TargetCode::Forecast { .. }, LabelColumn::Series(v)) => Targets::Series(v.clone()),
            (TargetCode::Multiclass { classes }, LabelColumn::Class(v)) => {
                let index: HashMap<&str, usize> = classes
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.as_str(), i))
                    .collect();
                Targets::Class(v.iter().map(|c| index.get(c.as_str()).copied()).collect())
            }
            (TargetCode::Ranking { items, .. }, LabelColumn::Items(v)) => {
                let index: HashMap<&str, u32> = items
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.as_str(), i as u32))
                    .collect();
                Targets::Items(
                    v.iter()
                        .map(|list| {
                            list.iter()
                                .filter_map(|k| index.get(k.as_str()).copied())
                                .collect()
                        })
                        .collect(),
                )
            }
            _ => return Err(mismatch()),
        })
    }

    /// A linear head's raw numbers (`n x outputs`, row-major) as what they predict.
    pub fn decode(&self, raw: &[f32], n: usize) -> Output {
        let width = self.outputs();
        let row = |i: usize| &raw[i * width..(i + 1) * width];
        match self {
            TargetCode::Binary => Output::Probs(
                raw.iter()
                    .map(|&z| 1.0 / (1.0 + (-f64::from(z)).exp()))
                    .collect(),
            ),
            TargetCode::Regression {
                center,
                scale,
                low,
                high,
            } => Output::Values(
                raw.iter()
                    .map(|&z| (center + scale * f64::from(z)).clamp(*low, *high))
                    .collect(),
            ),
            TargetCode::Forecast {
                center,
                scale,
                low,
                high,
                ..
            } => Output::Series(
                (0..n)
                    .map(|i| {
                        row(i)
                            .iter()
                            .map(|&z| (center + scale * f64::from(z)).clamp(*low, *high))
                            .collect()
                    })
                    .collect(),
            ),
            TargetCode::Multiclass { .. } => {
                Output::Classes((0..n).map(|i| softmax(row(i))).collect())
            }
            TargetCode::Ranking { .. } => Output::Ranked(Vec::new(), Vec::new()),
        }
    }

    /// The model's training target for example values, as the head's numbers.
    pub fn encode_numbers(&self, values: &[f64]) -> Vec<f32> {
        match self {
            TargetCode::Regression { center, scale, .. }
            | TargetCode::Forecast { center, scale, .. } => values
                .iter()
                .map(|v| ((v - center) / scale) as f32)
                .collect(),
            _ => values.iter().map(|&v| v as f32).collect(),
        }
    }

    pub fn k(&self) -> usize {
        match self {
            TargetCode::Ranking { k, .. } => *k,
            _ => 0,
        }
    }
}

fn softmax(z: &[f32]) -> Vec<f64> {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = z.iter().map(|&v| f64::from(v - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

impl Targets {
    pub fn len(&self) -> usize {
        match self {
            Targets::Binary(v) => v.len(),
            Targets::Number(v) => v.len(),
            Targets::Class(v) => v.len(),
            Targets::Series(v) => v.len(),
            Targets::Items(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The targets of examples `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Targets {
        match self {
            Targets::Binary(v) => Targets::Binary(idx.iter().map(|&i| v[i]).collect()),
            Targets::Number(v) => Targets::Number(idx.iter().map(|&i| v[i]).collect()),
            Targets::Class(v) => Targets::Class(idx.iter().map(|&i| v[i]).collect()),
            Targets::Series(v) => Targets::Series(idx.iter().map(|&i| v[i].clone()).collect()),
            Targets::Items(v) => Targets::Items(idx.iter().map(|&i| v[i].clone()).collect()),
        }
    }
}

/// The task's metrics of `output` against `targets`.
pub fn evaluate(code: &TargetCode, output: &Output, targets: &Targets) -> Metrics {
    match (output, targets) {
        (Output::Probs(p), Targets::Binary(t)) => metrics::binary(p, t),
        (Output::Values(p), Targets::Number(t)) => metrics::regression(p, t),
        (Output::Series(p), Targets::Series(t)) => {
            let flat = |v: &[Vec<f64>]| v.iter().flatten().copied().collect::<Vec<_>>();
            metrics::regression(&flat(p), &flat(t))
                .into_iter()
                .filter(|(k, _)| k != "r2")
                .collect()
        }
        (Output::Classes(p), Targets::Class(t)) => metrics::multiclass(p, t, code.outputs()),
        (Output::Ranked(r, _), Targets::Items(t)) => metrics::ranking(r, t, code.k()),
        _ => Metrics::new(),
    }
}

/// A baseline's name and its output on the examples of one split.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub name: &'static str,
    pub output: Output,
}

/// The simple baselines of PQL.md §4 for `n` examples: from the training targets, and
/// (where the target is an aggregation over time) from each example's past value.
pub fn baselines(
    code: &TargetCode,
    train: &Targets,
    past: Option<&[Option<f64>]>,
    n: usize,
) -> Vec<Baseline> {
    let mut out = Vec::new();
    match (code, train) {
        (TargetCode::Binary, Targets::Binary(t)) => {
            let rate = t.iter().filter(|&&b| b).count() as f64 / t.len().max(1) as f64;
            out.push(Baseline {
                name: "majority class",
                output: Output::Probs(vec![rate; n]),
            });
            if let Some(past) = past {
                let p = past
                    .iter()
                    .map(|v| v.map_or(rate, |x| if x > 0.0 { 1.0 } else { 0.0 }))
                    .collect();
                out.push(Baseline {
                    name: "past value",
                    output: Output::Probs(p),
                });
            }
        }
        (TargetCode::Regression { low, high, .. }, Targets::Number(t)) => {
            let mean = t.iter().sum::<f64>() / t.len().max(1) as f64;
            out.push(Baseline {
                name: "global mean",
                output: Output::Values(vec![mean; n]),
            });
            if let Some(past) = past {
                let p = past
                    .iter()
                    .map(|v| v.unwrap_or(mean).clamp(*low, *high))
                    .collect();
                out.push(Baseline {
                    name: "past value",
                    output: Output::Values(p),
                });
            }
        }
        (TargetCode::Forecast { steps, .. }, Targets::Series(t)) => {
            let mean: Vec<f64> = (0..*steps)
                .map(|s| t.iter().filter_map(|v| v.get(s)).sum::<f64>() / t.len().max(1) as f64)
                .collect();
            out.push(Baseline {
                name: "global mean",
                output: Output::Series(vec![mean; n]),
            });
        }
        (TargetCode::Multiclass { classes }, Targets::Class(_)) => {
            // Classes are sorted by training frequency: the first is the majority.
            let mut p = vec![0.0; classes.len().max(1)];
            p[0] = 1.0;
            out.push(Baseline {
                name: "majority class",
                output: Output::Classes(vec![p; n]),
            });
        }
        _ => {}
    }
    out
}

/// The most popular items of the training labels, most popular first.
pub fn popularity(items: usize, train: &Targets) -> Vec<u32> {
    let mut counts = vec![0u64; items];
    if let Targets::Items(t) = train {
        for list in t {
            for &i in list {
                counts[i as usize] += 1;
            }
        }
    }
    let mut order: Vec<u32> = (0..items as u32).collect();
    order.sort_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(a.cmp(&b)));
    order
}

/// The popularity ranking as every entity's output.
pub fn popular_output(order: &[u32], k: usize, relevant: &[Vec<u32>]) -> Output {
    let mut rank = vec![0usize; order.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i as usize] = r + 1;
    }
    let top: Vec<u32> = order.iter().take(k).copied().collect();
    let ranked = relevant
        .iter()
        .map(|rel| Ranked {
            top: top.clone(),
            first_relevant: rel.iter().map(|&i| rank[i as usize]).min(),
        })
        .collect::<Vec<_>>();
    let scores = vec![Vec::new(); ranked.len()];
    Output::Ranked(ranked, scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_code_standardises_and_clamps_to_percentiles() {
        let mut labels = Labels::default();
        for i in 0..101 {
            labels
                .labels
                .push(crate::label::Label::Number(f64::from(i)));
        }
        let train = vec![true; 101];
        let code = TargetCode::fit(&TaskType::Regression, &labels, &train, None).expect("fits");
        let TargetCode::Regression {
            center, low, high, ..
        } = code
        else {
            panic!("{code:?}")
        };
        assert_eq!(center, 50.0);
        assert_eq!((low, high), (2.0, 98.0));
        let encoded = code.encode_numbers(&[50.0]);
        assert_eq!(encoded, vec![0.0]);
        let Output::Values(v) = code.decode(&[100.0, 0.0], 2) else {
            panic!()
        };
        assert_eq!(v, vec![98.0, 50.0]);
    }

    #[test]
    fn classes_unseen_in_training_have_no_index() {
        let mut labels = Labels::default();
        for c in ["a", "b", "a", "c"] {
            labels
                .labels
                .push(crate::label::Label::Class(c.to_string()));
        }
        let code = TargetCode::fit(
            &TaskType::Multiclass,
            &labels,
            &[true, true, true, false],
            None,
        )
        .expect("fits");
        assert_eq!(code.outputs(), 2);
        let t = code.targets(&labels.labels).expect("targets");
        assert_eq!(t, Targets::Class(vec![Some(0), Some(1), Some(0), None]));
    }

    #[test]
    fn popularity_ranks_by_training_counts() {
        let train = Targets::Items(vec![vec![2, 1], vec![2], vec![0, 2, 1]]);
        let order = popularity(4, &train);
        assert_eq!(order, vec![2, 1, 0, 3]);
        let Output::Ranked(r, _) = popular_output(&order, 2, &[vec![0, 3]]) else {
            panic!()
        };
        assert_eq!(r[0].top, vec![2, 1]);
        assert_eq!(r[0].first_relevant, Some(3));
    }
}
