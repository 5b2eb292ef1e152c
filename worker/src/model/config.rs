//! [`TrainConfig`]: every hyper-parameter of the model and the trainer. The defaults are
//! those of RelBench's relational deep learning baseline, so that numbers compare.
//! Read from TOML (unknown keys are errors); the CLI's flags override single fields.

use relgraph_sampler::Strategy;
use serde::{Deserialize, Serialize};

/// How a node reduces its neighbors of one edge type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    Mean,
    Sum,
    Max,
}

/// The regression loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegressionLoss {
    L1,
    Huber,
}

/// How a query's ASSUMING is read (PQL.md §7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Assuming {
    /// Counterfactual when the assumption is a treatment the data varies (it holds for
    /// some examples and not for others) and the target is a yes/no or a number;
    /// conditional otherwise.
    #[default]
    Auto,
    /// Train only on the examples where the assumption held.
    Conditional,
    /// Train one model with the assumption's truth value as an input; score with it
    /// forced on and off.
    Counterfactual,
}

impl std::str::FromStr for Assuming {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Assuming::Auto),
            "conditional" => Ok(Assuming::Conditional),
            "counterfactual" => Ok(Assuming::Counterfactual),
            _ => Err(format!(
                "`{s}`: ASSUMING is read as auto, conditional or counterfactual"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Width of every embedding (C).
    pub channels: usize,
    /// Residual blocks of each table's encoder MLP.
    pub encoder_blocks: usize,
    /// Heterogeneous SAGE layers; also the sampler's hops.
    pub layers: usize,
    pub aggregation: Aggregation,
    /// Neighbors sampled per node and edge type, per hop (one per layer).
    pub fanouts: Vec<u32>,
    /// `uniform` or `recent` neighbor sampling.
    pub strategy: String,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    pub max_steps_per_epoch: usize,
    /// Epochs without a better validation metric before training stops.
    pub patience: usize,
    pub seed: u64,
    /// Values kept per categorical column (the rest share the unseen bucket).
    pub max_vocab: usize,
    /// Hash buckets per text column.
    pub text_buckets: u32,
    pub regression_loss: RegressionLoss,
    /// Ranking: items scored per step besides the batch's positives (all items when
    /// there are no more than this).
    pub negatives: usize,
    /// How ASSUMING is read.
    pub assuming: Assuming,
    /// Also checkpoint every this many steps within an epoch (0: after epochs only).
    pub checkpoint_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            channels: 128,
            encoder_blocks: 4,
            layers: 2,
            aggregation: Aggregation::Sum,
            fanouts: vec![128, 64],
            strategy: "uniform".to_string(),
            batch_size: 512,
            lr: 0.005,
            weight_decay: 0.0,
            epochs: 10,
            max_steps_per_epoch: 2000,
            patience: 3,
            seed: 42,
            max_vocab: 10_000,
            text_buckets: 4096,
            regression_loss: RegressionLoss::L1,
            negatives: 1024,
            assuming: Assuming::Auto,
            checkpoint_every: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not a `source`: the message already holds the parser's, which a chain of causes
    /// would print twice.
    #[error("config: {0}")]
    Toml(toml::de::Error),
    #[error("config: {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl TrainConfig {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: TrainConfig = toml::from_str(text).map_err(ConfigError::Toml)?;
        config.check()?;
        Ok(config)
    }

    pub fn strategy(&self) -> Result<Strategy, ConfigError> {
        match self.strategy.as_str() {
            "uniform" => Ok(Strategy::Uniform),
            "recent" => Ok(Strategy::Recent),
            other => Err(ConfigError::Invalid {
                field: "strategy",
                problem: format!("`{other}`: expected uniform or recent"),
            }),
        }
    }

    /// Checks the values a file or a flag can get wrong.
    pub fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("channels", self.channels),
            ("layers", self.layers),
            ("batch_size", self.batch_size),
            ("epochs", self.epochs),
            ("max_steps_per_epoch", self.max_steps_per_epoch),
            ("max_vocab", self.max_vocab),
            ("text_buckets", self.text_buckets as usize),
            ("negatives", self.negatives),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    problem: "must be at least 1".to_string(),
                });
            }
        }
        if self.fanouts.len() != self.layers {
            return Err(ConfigError::Invalid {
                field: "fanouts",
                problem: format!(
                    "{} fanouts for {} layers: give one per layer",
                    self.fanouts.len(),
                    self.layers
                ),
            });
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(ConfigError::Invalid {
                field: "lr",
                problem: format!("{} is not a positive learning rate", self.lr),
            });
        }
        self.strategy().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_override_defaults_and_unknown_keys_are_errors() {
        let c = TrainConfig::from_toml("epochs = 3\nfanouts = [16, 8]\n").expect("valid");
        assert_eq!(c.epochs, 3);
        assert_eq!(c.channels, 128);
        let e = TrainConfig::from_toml("epoch = 3").expect_err("unknown key");
        assert!(e.to_string().contains("unknown field `epoch`"), "{e}");
        // Said once: a chain of causes adds nothing the message lacks.
        let e = TrainConfig::from_toml("epochs = \"x\"").expect_err("a string");
        assert!(e.to_string().contains("line 1, column 10"), "{e}");
        assert!(std::error::Error::source(&e).is_none(), "{e}");
        let e = TrainConfig::from_toml("layers = 3").expect_err("fanouts per layer");
        assert!(e.to_string().contains("fanouts"), "{e}");
        assert!(TrainConfig::from_toml("strategy = 'newest'").is_err());
    }
}
