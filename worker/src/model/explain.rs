//! Why a model says what it says about one entity (PQL.md §7, issue 9).
//!
//! Every node of the entity's sampled subgraph enters the network as the sum of its
//! encoded columns (one vector per column, [`Net::column_parts`]) plus a constant part
//! (the bias). An attribution splits the explained number among those column vectors:
//!
//! - [`Method::Gradient`] (gradient × input): each column vector dotted with the
//!   gradient of the output with respect to the node's column sum;
//! - [`Method::Integrated`] (integrated gradients): the same with the gradient averaged
//!   along the straight path from the baseline (every column vector zero, only the
//!   constant part) to the input, so that the attributions add up to the output minus
//!   the baseline's output (up to the quadrature: steps crowd near the baseline, where
//!   the normalising layers make the output move fastest).
//!
//! Summing a column's attributions over the subgraph's rows gives the per-table and
//! per-column shares; summing a row's over its columns gives the most influential
//! linked rows. [`Model::ablation`] removes one column from the whole subgraph and
//! reports the change in the output, which is how the two methods' faithfulness is
//! measured (`relgraph bench explain`).
//!
//! What is explained: the logit of a yes/no target, the (standardised) value of a
//! regression, the mean of a forecast's steps, the logit of the predicted class, the
//! score of the top-ranked item, and for a treatment model its effect on the logit or
//! value (what the uplift comes from).

use rayon::prelude::*;
use relgraph_kernels::{Tape, Tensor};

use super::batch::ModelBatch;
use super::net::ColumnParts;
use super::task::{Output, TargetCode};
use super::trainer::{Inputs, Model, ModelError};

/// How attributions are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Method {
    /// Gradient × input: one forward and one backward pass.
    Gradient,
    /// Integrated gradients with this many steps (midpoint rule).
    Integrated { steps: usize },
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gradient" | "grad" => Ok(Method::Gradient),
            "integrated" | "ig" => Ok(Method::Integrated { steps: 16 }),
            _ => match s.strip_prefix("integrated:") {
                Some(n) => n
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .map(|steps| Method::Integrated { steps })
                    .ok_or_else(|| format!("`{s}`: integrated:N needs a positive step count")),
                None => Err(format!(
                    "`{s}`: the attribution method is `gradient` or `integrated[:STEPS]`"
                )),
            },
        }
    }
}

/// One column's attribution, summed over the subgraph's rows of its table.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ColumnAttribution {
    /// Table index (the model's table order) and the column's index among that table's
    /// encoded columns ([`TableCode::columns`](super::features::TableCode)).
    pub table: usize,
    pub column: usize,
    pub value: f64,
}

/// One linked row's attribution, summed over its columns.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RowAttribution {
    pub table: usize,
    /// The row of the table.
    pub row: u32,
    pub value: f64,
    /// Its columns' attributions, in column order.
    pub columns: Vec<f64>,
}

/// What was explained and how it splits.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Explanation {
    /// What the number is ("logit", "value", "effect on the logit", ...).
    pub explained: String,
    /// The explained number at the input.
    pub output: f64,
    /// ... and at the baseline (integrated gradients only; else NaN).
    pub baseline: f64,
    pub method: Method,
    /// Every encoded column present in the subgraph.
    pub columns: Vec<ColumnAttribution>,
    /// Every row of the subgraph, largest absolute attribution first.
    pub rows: Vec<RowAttribution>,
}

impl Explanation {
    /// The sum of the absolute column attributions (what shares are relative to).
    pub fn total(&self) -> f64 {
        self.columns.iter().map(|c| c.value.abs()).sum()
    }

    /// A column's signed share of the total, in percent (the absolute shares add up to
    /// 100).
    pub fn share(&self, value: f64) -> f64 {
        let total = self.total();
        if total > 0.0 {
            100.0 * value / total
        } else {
            0.0
        }
    }

    /// Per table: its signed share (the sum of its columns' attributions) in percent.
    pub fn tables(&self) -> Vec<(usize, f64)> {
        let mut out: Vec<(usize, f64)> = Vec::new();
        for c in &self.columns {
            match out.iter_mut().find(|(t, _)| *t == c.table) {
                Some((_, v)) => *v += c.value,
                None => out.push((c.table, c.value)),
            }
        }
        for (_, v) in &mut out {
            *v = self.share(*v);
        }
        out.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        out
    }
}

/// The number an explanation is about, as head weights.
#[derive(Clone, Debug)]
enum Explained {
    /// Weights over the linear head's outputs (or the treatment effect's).
    Head { weights: Vec<f32>, effect: bool },
    /// The score of one item (embedding id, item table row).
    Item { id: u32, row: u32 },
}

/// One entity's batch and its column parts, ready for probing.
struct Probe {
    batch: ModelBatch,
    /// Per table with nodes: the constant part and each column's part.
    parts: Vec<Option<ColumnParts>>,
}

/// `f` over `items` on as many plain threads as rayon has, results in order.
/// Explanations run one seed each and may run [`Model::infer_on`], whose loader thread
/// samples on rayon's pool: run from rayon's own workers, they could all end up waiting
/// for a loader that waits for a free worker.
pub fn on_threads<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = rayon::current_num_threads().clamp(1, items.len().max(1));
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

impl Model {
    fn explained(
        &self,
        data: Inputs<'_>,
        row: u32,
        anchor: i64,
        fanouts: Option<&[u32]>,
    ) -> Result<(Explained, String), ModelError> {
        let code = &self.manifest.target;
        if self.net.has_treatment() {
            let what = match code {
                TargetCode::Binary => "the treatment's effect on the logit",
                _ => "the treatment's effect on the value",
            };
            let weights = vec![1.0; code.outputs()];
            return Ok((
                Explained::Head {
                    weights,
                    effect: true,
                },
                what.into(),
            ));
        }
        let head = |weights: Vec<f32>, what: &str| {
            Ok((
                Explained::Head {
                    weights,
                    effect: false,
                },
                what.to_string(),
            ))
        };
        match code {
            TargetCode::Binary => head(vec![1.0], "the logit"),
            TargetCode::Regression { .. } => head(vec![1.0], "the standardised value"),
            TargetCode::Forecast { steps, .. } => {
                let n = *steps;
                head(vec![1.0 / n as f32; n], "the mean standardised step value")
            }
            TargetCode::Multiclass { classes } => {
                let Output::Classes(p) = self.infer_on(data, &[row], &[anchor], None, fanouts)?
                else {
                    unreachable!("a multiclass model gives classes");
                };
                let best = p[0]
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i);
                let mut w = vec![0.0; classes.len()];
                w[best] = 1.0;
                head(w, &format!("the logit of class `{}`", classes[best]))
            }
            TargetCode::Ranking { items, .. } => {
                let Output::Ranked(ranked, _) =
                    self.infer_on(data, &[row], &[anchor], None, fanouts)?
                else {
                    unreachable!("a ranking model ranks");
                };
                let id = *ranked[0]
                    .top
                    .first()
                    .ok_or_else(|| ModelError::Mismatch("no item to explain".into()))?;
                Ok((
                    Explained::Item {
                        id,
                        row: self.item_rows[id as usize],
                    },
                    format!("the score of the top item `{}`", items[id as usize]),
                ))
            }
        }
    }

    fn probe(
        &self,
        data: Inputs<'_>,
        row: u32,
        anchor: i64,
        fanouts: Option<&[u32]>,
    ) -> Result<Probe, ModelError> {
        let batch = self
            .loader(fanouts)
            .scoring_batch(data, &[row], &[anchor])?;
        let parts = batch
            .tables
            .iter()
            .enumerate()
            .map(|(t, tb)| {
                (!tb.encoded.is_empty()).then(|| {
                    self.net.column_parts(
                        &self.backend,
                        &self.params,
                        t,
                        &self.manifest.codes[t],
                        &tb.input,
                    )
                })
            })
            .collect();
        Ok(Probe { batch, parts })
    }

    /// The explained number with every column part scaled by `alpha` (and column `drop`,
    /// (table, column), left out), and with `grad`, its gradient with respect to each
    /// table's column sum.
    fn evaluate_probe(
        &self,
        data: Inputs<'_>,
        probe: &Probe,
        explained: &Explained,
        alpha: f32,
        drop: Option<(usize, usize)>,
        grad: bool,
    ) -> (f64, Vec<Option<Vec<f32>>>) {
        let sums: Vec<Option<Vec<f32>>> = probe
            .parts
            .iter()
            .enumerate()
            .map(|(t, p)| {
                p.as_ref().map(|p| {
                    let mut h = p.base.clone();
                    for (k, part) in p.columns.iter().enumerate() {
                        if drop == Some((t, k)) {
                            continue;
                        }
                        for (x, &v) in h.iter_mut().zip(part) {
                            *x += alpha * v;
                        }
                    }
                    h
                })
            })
            .collect();
        let mut tape = Tape::new(&self.backend, &self.params);
        let (out, watched) =
            self.net
                .embed_probed(&mut tape, &probe.batch, data.endpoints, Some(&sums), None);
        let (seeds, out) = self.net.pick_seeds(&mut tape, &probe.batch, out);
        let (y, weights) = match explained {
            Explained::Head { weights, effect } => {
                let y = match effect {
                    true => self.net.effect(&mut tape, seeds).expect("a treatment head"),
                    false => self.net.predict(&mut tape, seeds),
                };
                (y, weights.clone())
            }
            Explained::Item { id, row } => {
                let y =
                    self.net
                        .score_items(&mut tape, (seeds, &out), &probe.batch, &[*id], &[*row]);
                (y, vec![1.0])
            }
        };
        let value: f64 = tape
            .value(y)
            .to_host(&self.backend)
            .iter()
            .zip(&weights)
            .map(|(&v, &w)| f64::from(v) * f64::from(w))
            .sum();
        if !grad {
            return (value, Vec::new());
        }
        let w = Tensor::from_host(&self.backend, 1, weights.len(), &weights);
        let root = tape.weighted_sum(y, w);
        let back = tape.backward(root);
        let grads = watched
            .iter()
            .map(|v| {
                v.and_then(|v| back.grad(v))
                    .map(|g| g.to_host(&self.backend))
            })
            .collect();
        (value, grads)
    }

    /// The attribution of the model's output for entity row `row` at `anchor`.
    pub fn explain(
        &self,
        data: Inputs<'_>,
        row: u32,
        anchor: i64,
        method: Method,
    ) -> Result<Explanation, ModelError> {
        self.explain_with(data, row, anchor, method, None)
    }

    /// [`Model::explain`] sampling `fanouts` neighbors per hop instead of training's.
    pub fn explain_with(
        &self,
        data: Inputs<'_>,
        row: u32,
        anchor: i64,
        method: Method,
        fanouts: Option<&[u32]>,
    ) -> Result<Explanation, ModelError> {
        let (explained, what) = self.explained(data, row, anchor, fanouts)?;
        let probe = self.probe(data, row, anchor, fanouts)?;
        let (output, grads, baseline) = match method {
            Method::Gradient => {
                let (v, g) = self.evaluate_probe(data, &probe, &explained, 1.0, None, true);
                (v, g, f64::NAN)
            }
            Method::Integrated { steps } => {
                // alpha = u^2 with u at the midpoints of `steps` equal parts (weight
                // 2u/steps): the network normalises its inputs, so the output moves
                // fastest where the columns are still small next to the bias, near 0.
                let mut mean: Vec<Option<Vec<f32>>> = Vec::new();
                for s in 0..steps {
                    let u = (s as f32 + 0.5) / steps as f32;
                    let weight = 2.0 * u / steps as f32;
                    let (_, g) = self.evaluate_probe(data, &probe, &explained, u * u, None, true);
                    if mean.is_empty() {
                        mean = vec![None; g.len()];
                    }
                    for (m, g) in mean.iter_mut().zip(g) {
                        let Some(g) = g else { continue };
                        match m {
                            Some(m) => m.iter_mut().zip(&g).for_each(|(a, b)| *a += weight * b),
                            None => *m = Some(g.iter().map(|b| weight * b).collect()),
                        }
                    }
                }
                let (v, _) = self.evaluate_probe(data, &probe, &explained, 1.0, None, false);
                let (b, _) = self.evaluate_probe(data, &probe, &explained, 0.0, None, false);
                (v, mean, b)
            }
        };
        let c = self.net.channels;
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        for (t, part) in probe.parts.iter().enumerate() {
            let (Some(ColumnParts { columns: parts, .. }), Some(Some(g))) = (part, grads.get(t))
            else {
                continue;
            };
            let input = &probe.batch.tables[t];
            let n = input.input.rows;
            let mut per_row = vec![vec![0f64; parts.len()]; n];
            for (k, part) in parts.iter().enumerate() {
                let mut total = 0.0;
                for (r, cells) in per_row.iter_mut().enumerate() {
                    let a: f64 = part[r * c..(r + 1) * c]
                        .iter()
                        .zip(&g[r * c..(r + 1) * c])
                        .map(|(&x, &d)| f64::from(x) * f64::from(d))
                        .sum();
                    cells[k] = a;
                    total += a;
                }
                columns.push(ColumnAttribution {
                    table: t,
                    column: k,
                    value: total,
                });
            }
            for (r, cells) in per_row.into_iter().enumerate() {
                rows.push(RowAttribution {
                    table: t,
                    row: input.rows[r],
                    value: cells.iter().sum(),
                    columns: cells,
                });
            }
        }
        rows.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
        Ok(Explanation {
            explained: what,
            output,
            baseline,
            method,
            columns,
            rows,
        })
    }

    /// For each encoded column in the entity's subgraph (table, column): how much the
    /// explained number changes when that column is left out of every row (output minus
    /// output without it).
    pub fn ablation(
        &self,
        data: Inputs<'_>,
        row: u32,
        anchor: i64,
    ) -> Result<Vec<ColumnAttribution>, ModelError> {
        let (explained, _) = self.explained(data, row, anchor, None)?;
        let probe = self.probe(data, row, anchor, None)?;
        let (full, _) = self.evaluate_probe(data, &probe, &explained, 1.0, None, false);
        let columns: Vec<(usize, usize)> = probe
            .parts
            .iter()
            .enumerate()
            .filter_map(|(t, p)| p.as_ref().map(|p| (t, p.columns.len())))
            .flat_map(|(t, n)| (0..n).map(move |k| (t, k)))
            .collect();
        Ok(columns
            .into_par_iter()
            .map(|(t, k)| {
                let (v, _) =
                    self.evaluate_probe(data, &probe, &explained, 1.0, Some((t, k)), false);
                ColumnAttribution {
                    table: t,
                    column: k,
                    value: full - v,
                }
            })
            .collect())
    }

    /// Global column importance: the mean absolute share (percent) of each encoded
    /// column over the explanations of `rows` at `anchors`, largest first.
    pub fn importance(
        &self,
        data: Inputs<'_>,
        rows: &[u32],
        anchors: &[i64],
        method: Method,
    ) -> Result<Vec<ColumnAttribution>, ModelError> {
        let seeds: Vec<(u32, i64)> = rows.iter().copied().zip(anchors.iter().copied()).collect();
        let explanations: Vec<Explanation> =
            on_threads(&seeds, |&(r, a)| self.explain(data, r, a, method))
                .into_iter()
                .collect::<Result<_, _>>()?;
        let mut out: Vec<ColumnAttribution> = Vec::new();
        for e in &explanations {
            for c in &e.columns {
                let share = e.share(c.value).abs() / explanations.len() as f64;
                match out
                    .iter_mut()
                    .find(|o| (o.table, o.column) == (c.table, c.column))
                {
                    Some(o) => o.value += share,
                    None => out.push(ColumnAttribution {
                        table: c.table,
                        column: c.column,
                        value: share,
                    }),
                }
            }
        }
        out.sort_by(|a, b| b.value.total_cmp(&a.value));
        Ok(out)
    }
}
