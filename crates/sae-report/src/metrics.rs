use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ReportError;

/// One line of `metrics.jsonl`.
///
/// Values are `Option` because JSON has no NaN: a diverged run writes `null`, which must not
/// make the whole file unreadable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// Logged every `log_every_steps` optimizer steps.
    Train(TrainRecord),
    /// Logged every `eval_every_tokens` tokens, and once at the end of training.
    Eval(Box<EvalRecord>),
}

/// Training-step metrics, averaged since the previous train line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Optimizer steps taken.
    pub step: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Total loss (reconstruction + coefficient × auxiliary).
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
    /// Training throughput.
    #[serde(default)]
    pub tokens_per_second: Option<f64>,
}

/// Reconstruction and sparsity of one selection rule (batch or threshold inference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionEval {
    /// Fraction of variance unexplained.
    #[serde(default)]
    pub fvu: Option<f64>,
    /// Mean squared error.
    #[serde(default)]
    pub mse: Option<f64>,
    /// Mean active features per token.
    #[serde(default)]
    pub l0_mean: Option<f64>,
    /// Standard deviation of active features per token.
    #[serde(default)]
    pub l0_std: Option<f64>,
    /// Token counts by L0 (index = L0).
    #[serde(default)]
    pub l0_histogram: Vec<u64>,
}

/// A held-out evaluation of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps taken.
    pub step: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Held-out tokens evaluated (the report's own `tokens`, see [`read_metrics`]).
    #[serde(default)]
    pub eval_tokens: Option<u64>,
    /// With the training (batch-dependent) selection.
    pub batch: SelectionEval,
    /// With single-token threshold inference, when the sparsifier has one.
    #[serde(default)]
    pub inference: Option<SelectionEval>,
    /// Fraction of features dead in training (no firing within the dead window).
    #[serde(default, alias = "dead_fraction")]
    pub dead_in_training_fraction: Option<f64>,
    /// Fraction of features that fired on none of the evaluated tokens.
    #[serde(default)]
    pub dead_on_eval_fraction: Option<f64>,
    /// Fraction of under-used features (dead ones included).
    #[serde(default)]
    pub underused_fraction: Option<f64>,
    /// Feature counts in 20 bins of log10 firing density, from -10 to 0.
    #[serde(default)]
    pub density_histogram: Vec<u64>,
    /// Mean max cosine similarity to the true dictionary (synthetic data only).
    #[serde(default)]
    pub mmcs: Option<f64>,
    /// Fraction of true features recovered (synthetic data only).
    #[serde(default)]
    pub recovered: Option<f64>,
    /// Recovery by true-feature frequency band, most frequent first (synthetic data only).
    #[serde(default)]
    pub recovery_by_frequency: Option<Vec<sae_data::FrequencyBand>>,
}

/// Reads a `metrics.jsonl` file; blank lines are skipped.
///
/// An eval line is the record header (`kind`, `step`, `tokens` = training tokens) followed by
/// the flattened evaluation report (`eval_tokens` = held-out tokens evaluated, ...).
///
/// # Errors
/// [`ReportError::Io`] if the file cannot be read, [`ReportError::Parse`] naming the 1-based
/// line of the first record that is not a valid train or eval line.
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Vec<Record>, ReportError> {
    let path = path.as_ref();
    let io = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut records = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let record = parse_record(&line).map_err(|source| ReportError::Parse {
            path: path.to_path_buf(),
            line: index + 1,
            source,
        })?;
        records.push(record);
    }
    Ok(records)
}

fn parse_record(line: &str) -> Result<Record, serde_json::Error> {
    serde_json::from_str(line)
}

/// The train lines of `records`, in file order.
pub fn train_records(records: &[Record]) -> impl Iterator<Item = &TrainRecord> {
    records.iter().filter_map(|r| match r {
        Record::Train(t) => Some(t),
        Record::Eval(_) => None,
    })
}

/// The eval lines of `records`, in file order.
pub fn eval_records(records: &[Record]) -> impl Iterator<Item = &EvalRecord> {
    records.iter().filter_map(|r| match r {
        Record::Eval(e) => Some(e.as_ref()),
        Record::Train(_) => None,
    })
}
