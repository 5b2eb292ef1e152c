//! Uplift evaluation of a counterfactual ASSUMING model (PQL.md §7): how well its
//! per-entity uplift ranks who the treatment moves, on the test split, beside a two-model
//! T-learner and a random ranking scored in the same run.
//!
//! Two kinds of figures: from the observed outcomes of the test examples (the treatment
//! must have been assigned at random for them to mean uplift: `qini_observed`,
//! `auuc_observed`), and, where the data comes with each entity's true effect (a
//! generated world's `_truth/uplift.csv`), against that (`qini`, `auuc`, `spearman`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_pcg::Pcg64Mcg;
use relgraph_common::Database;
use relgraph_common::pql::{Split, TaskPlan};
use relgraph_kernels::Device;
use relgraph_worker::label::Labels;
use relgraph_worker::model::config::Assuming;
use relgraph_worker::model::fit::{keys, split_examples};
use relgraph_worker::model::metrics::{self, Metrics};
use relgraph_worker::model::task::Targets;
use relgraph_worker::model::{self, Model, Output, Prepared, Session};

use crate::train::STOP;

/// One ranking's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ranking {
    pub name: String,
    pub metrics: Metrics,
}

/// Each entity's true effect from a CSV whose first column is the entity key and which
/// has a `true_uplift` column.
pub fn read_truth(path: &Path) -> Result<HashMap<String, f64>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = reader.headers()?.clone();
    let column = header
        .iter()
        .position(|h| h == "true_uplift")
        .ok_or_else(|| anyhow!("{}: no `true_uplift` column", path.display()))?;
    let mut out = HashMap::new();
    for (line, record) in reader.records().enumerate() {
        let record = record?;
        let value: f64 = record[column].parse().map_err(|_| {
            anyhow!(
                "{} line {}: `{}` is not a number",
                path.display(),
                line + 2,
                &record[column]
            )
        })?;
        out.insert(record[0].to_string(), value);
    }
    Ok(out)
}

/// A model's numbers per example: probabilities or values.
fn numbers(output: Output) -> Result<Vec<f64>> {
    match output {
        Output::Probs(v) | Output::Values(v) => Ok(v),
        _ => bail!("an uplift needs a yes/no or numeric model"),
    }
}

/// What the uplift evaluation compares, for the test split of `labels` (built with the
/// treatment, [`Labels::treated`]).
pub struct Evaluation<'a> {
    pub db: &'a Database,
    pub query: &'a str,
    pub plan: &'a TaskPlan,
    pub labels: &'a Labels,
}

impl Evaluation<'_> {
    /// The counterfactual model's, the T-learner's (with `t_learner`: two models of the
    /// same configuration trained on the treated and the untreated examples), a random
    /// ranking's and (with `truth`) the known effects' figures.
    pub fn run(
        &self,
        model: &Model,
        data: &Prepared,
        truth: Option<&HashMap<String, f64>>,
        t_learner: bool,
    ) -> Result<(usize, f64, Vec<Ranking>)> {
        let targets = model.manifest.target.targets(&self.labels.labels)?;
        let (test, _) = split_examples(self.labels, &targets, Split::Test);
        if test.treated.is_empty() {
            bail!("the model was not trained with ASSUMING as a treatment");
        }
        let outcome: Vec<f64> = match &test.targets {
            Targets::Binary(t) => t.iter().map(|&b| f64::from(u8::from(b))).collect(),
            Targets::Number(t) => t.clone(),
            _ => bail!("an uplift needs a yes/no or numeric target"),
        };
        let keys = keys(self.db, self.plan.task.entity_table);
        let effects: Option<Vec<f64>> = truth
            .map(|t| {
                test.rows
                    .iter()
                    .map(|&r| {
                        let key = &keys[r as usize];
                        t.get(key)
                            .copied()
                            .ok_or_else(|| anyhow!("the truth file has no entity `{key}`"))
                    })
                    .collect::<Result<Vec<f64>>>()
            })
            .transpose()?;
        let figures = |name: &str, predicted: &[f64]| {
            let mut m = metrics::uplift_observed(predicted, &test.treated, &outcome);
            if let Some(e) = &effects {
                m.extend(metrics::uplift_truth(predicted, e));
            }
            Ranking {
                name: name.to_string(),
                metrics: m,
            }
        };
        let Output::Uplift { with, without } =
            model.infer(data, &test.rows, &test.anchors, None)?
        else {
            bail!("the model does not score uplift");
        };
        let uplift: Vec<f64> = with.iter().zip(&without).map(|(a, b)| a - b).collect();
        let mut out = vec![figures("GNN, one model (counterfactual)", &uplift)];
        if t_learner {
            let arm = |treated: bool| -> Result<Vec<f64>> {
                let keep: Vec<usize> = (0..self.labels.len())
                    .filter(|&i| self.labels.treated[i] == treated)
                    .collect();
                let labels = self.labels.subset(&keep);
                let config = model::TrainConfig {
                    assuming: Assuming::Conditional,
                    ..model.manifest.config.clone()
                };
                let session = Session {
                    stop: &STOP,
                    progress: &mut |_| {},
                    resume: None,
                    on_epoch: &mut |_| Ok(()),
                    group: None,
                    split: None,
                    device: Device::Cpu,
                };
                let (m, d, _, _) =
                    model::fit(self.db, self.query, self.plan, &labels, &config, session)?;
                numbers(m.infer(&d, &test.rows, &test.anchors, None)?)
            };
            let (treated, control) = (arm(true)?, arm(false)?);
            let uplift: Vec<f64> = treated.iter().zip(&control).map(|(a, b)| a - b).collect();
            out.push(figures("T-learner, two GNNs", &uplift));
        }
        let mut random: Vec<f64> = (0..test.rows.len()).map(|i| i as f64).collect();
        random.shuffle(&mut Pcg64Mcg::seed_from_u64(model.manifest.config.seed));
        out.push(figures("random ranking", &random));
        if let Some(e) = &effects {
            out.push(figures("known effects (best possible)", e));
        }
        let treated = test.treated.iter().filter(|&&t| t).count() as f64;
        Ok((test.rows.len(), treated / test.rows.len() as f64, out))
    }
}

/// The figures as an aligned table.
pub fn table(rankings: &[Ranking]) -> String {
    let names = ["qini", "auuc", "spearman", "qini_observed", "auuc_observed"];
    let shown: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| rankings.iter().any(|r| r.metrics.contains_key(*n)))
        .collect();
    let mut out = format!("    {:<34}", "ranking by uplift");
    for n in &shown {
        out.push_str(&format!(" {n:>14}"));
    }
    out.push('\n');
    for r in rankings {
        out.push_str(&format!("    {:<34}", r.name));
        for n in &shown {
            match r.metrics.get(*n) {
                Some(v) => out.push_str(&format!(" {v:>14.4}")),
                None => out.push_str(&format!(" {:>14}", "")),
            }
        }
        out.push('\n');
    }
    out
}
