//! The records of a training run's `metrics.jsonl`, one definition for the writer (`sae-train`)
//! and every reader (`sae-report`, `xtask repro`): a field cannot drift between them.
//!
//! A line is one JSON object, a [`Record`]: `"kind": "train"` ([`TrainRecord`], a logging
//! interval) or `"kind": "eval"` ([`EvalRecord`]: the training step and tokens, then the
//! flattened [`EvalReport`]). JSON has no NaN, so a diverged run's non-finite values are written
//! as `null`; they read back as NaN (or `None` where a value is optional), so the file stays
//! readable. Lines written by earlier versions read too: renamed fields keep their old names
//! as aliases, fields they lacked read as NaN, 0 or empty.
//!
//! ```
//! use sae_metrics::{Record, TrainRecord};
//!
//! let line = Record::Train(TrainRecord {
//!     step: 10,
//!     tokens: 40_960,
//!     loss: Some(0.31),
//!     fvu: Some(f64::NAN),
//!     ..TrainRecord::default()
//! })
//! .to_line();
//! assert!(line.contains(r#""kind":"train""#) && line.contains(r#""fvu":null"#));
//! let Record::Train(back) = Record::parse(&line).unwrap() else { unreachable!() };
//! assert_eq!((back.step, back.loss, back.fvu), (10, Some(0.31), None));
//! ```
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};

/// The file name of a run's metrics, in its run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// Logged every `log_every_steps` optimizer steps.
    Train(TrainRecord),
    /// Logged every `eval_every_tokens` tokens, and once at the end of training.
    Eval(Box<EvalRecord>),
}

impl Record {
    /// Optimizer steps taken when the record was written.
    pub fn step(&self) -> u64 {
        match self {
            Self::Train(t) => t.step,
            Self::Eval(e) => e.step,
        }
    }

    /// Training tokens consumed when the record was written.
    pub fn tokens(&self) -> u64 {
        match self {
            Self::Train(t) => t.tokens,
            Self::Eval(e) => e.tokens,
        }
    }

    /// The record as one line of the file, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a record always serialises");
        line.push('\n');
        line
    }

    /// Reads one line of the file.
    ///
    /// # Errors
    /// The line is not a train or eval record.
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// Training-step metrics, averaged over the steps since the previous train line. `None`: not
/// finite (written as `null`) or not recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Optimizer steps taken.
    pub step: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Total loss (reconstruction + coefficient x auxiliary).
    #[serde(default)]
    pub loss: Option<f64>,
    /// Fraction of variance unexplained.
    #[serde(default)]
    pub fvu: Option<f64>,
    /// Auxiliary loss (0 when there is none).
    #[serde(default)]
    pub aux: Option<f64>,
    /// Mean number of active features per token.
    #[serde(default)]
    pub l0: Option<f64>,
    /// Fraction of features dead (inactive for `dead_window` tokens).
    #[serde(default)]
    pub dead_fraction: Option<f64>,
    /// Learning rate.
    #[serde(default)]
    pub lr: Option<f64>,
    /// Training throughput since the run (or its resumption) started.
    #[serde(default)]
    pub tokens_per_second: Option<f64>,
}

/// An evaluation during or after training: where training was, and what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps taken.
    pub step: u64,
    /// Training tokens consumed (the evaluated tokens are [`EvalReport::eval_tokens`]).
    pub tokens: u64,
    /// What the evaluation measured.
    #[serde(flatten)]
    pub report: EvalReport,
}

/// Reconstruction and sparsity of one way of selecting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionMetrics {
    /// Fraction of variance unexplained (normalised MSE) over the evaluated tokens.
    #[serde(deserialize_with = "nullable::f64")]
    pub fvu: f64,
    /// Mean squared error per element.
    #[serde(deserialize_with = "nullable::f64")]
    pub mse: f64,
    /// Mean number of non-zero codes per token.
    #[serde(deserialize_with = "nullable::f64")]
    pub l0_mean: f64,
    /// Standard deviation of the per-token L0.
    #[serde(deserialize_with = "nullable::f64")]
    pub l0_std: f64,
    /// Tokens with L0 = i, for i = 0..len (the last bucket collects everything above).
    #[serde(default)]
    pub l0_histogram: Vec<u64>,
}

/// Everything an evaluation reports (`sae eval`, and the eval lines of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Tokens evaluated, each a distinct row: the tokens asked for, or every row of the
    /// evaluation data when it holds fewer (rows are never repeated). 0 in lines of versions
    /// that did not record it.
    #[serde(default)]
    pub eval_tokens: u64,
    /// Tokens asked for (`train.eval_tokens` or `sae eval --tokens`).
    #[serde(default)]
    pub requested_tokens: u64,
    /// With the training rule on each evaluation batch (batch-dependent for MC and FC).
    pub batch: SelectionMetrics,
    /// With batch-free inference (thresholds, or the per-token rule); `None` before thresholds
    /// are estimated.
    #[serde(default)]
    pub inference: Option<SelectionMetrics>,
    /// Features that fired on no training token within the dead window (`step.stats`) before
    /// the evaluated checkpoint: a property of training, not of the evaluated data.
    #[serde(alias = "dead_fraction", deserialize_with = "nullable::f64")]
    pub dead_in_training_fraction: f64,
    /// Features that fired on none of the evaluated tokens under the training rule (NaN in
    /// lines of versions that did not record it).
    #[serde(default = "nullable::nan", deserialize_with = "nullable::f64")]
    pub dead_on_eval_fraction: f64,
    /// Features below their Zipf target density in training (dead ones included).
    #[serde(default = "nullable::nan", deserialize_with = "nullable::f64")]
    pub underused_fraction: f64,
    /// Counts of features per log10-density bin of training, [`DENSITY_BINS`] bins from -10
    /// to 0.
    #[serde(default)]
    pub density_histogram: Vec<u64>,
    /// Mean max cosine similarity of the learned decoder to the true dictionary (synthetic data).
    #[serde(default)]
    pub mmcs: Option<f64>,
    /// Share of true features with a learned feature above [`RECOVERY_COSINE`] (synthetic data).
    #[serde(default)]
    pub recovered: Option<f64>,
    /// Recovery of the true features in bands of equal size by how often they fire, most
    /// frequent first (synthetic data): does the rule find the rare features as well as the
    /// common?
    #[serde(default)]
    pub recovery_by_frequency: Option<Vec<FrequencyBand>>,
}

/// Bins of [`EvalReport::density_histogram`], over log10 density from -10 to 0.
pub const DENSITY_BINS: usize = 20;

/// Cosine above which a learned feature counts as recovering a true one.
pub const RECOVERY_COSINE: f32 = 0.9;

/// Recovery of the true features of one frequency band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrequencyBand {
    /// Highest firing probability in the band.
    pub max_probability: f64,
    /// Lowest firing probability in the band.
    pub min_probability: f64,
    /// True features in the band.
    pub features: usize,
    /// Fraction of them matched by a learned feature with cosine at least the threshold.
    #[serde(deserialize_with = "nullable::f64")]
    pub recovered: f64,
    /// Mean over them of the best cosine with a learned feature.
    #[serde(deserialize_with = "nullable::f64")]
    pub mmcs: f64,
}

/// `null` (how JSON writers store NaN and infinities) read back as NaN.
mod nullable {
    use serde::{Deserialize, Deserializer};

    pub(crate) fn f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
    }

    pub(crate) fn nan() -> f64 {
        f64::NAN
    }
}
