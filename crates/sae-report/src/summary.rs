use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::metrics::EvalRecord;

/// The headline numbers of a run: its last eval record, flattened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalEval {
    /// Optimizer steps at the evaluation.
    pub step: u64,
    /// Training tokens at the evaluation.
    pub tokens: u64,
    /// FVU with batch selection.
    pub fvu: Option<f64>,
    /// Mean L0 with batch selection.
    pub l0_mean: Option<f64>,
    /// Standard deviation of L0 with batch selection.
    pub l0_std: Option<f64>,
    /// FVU with threshold inference, when the sparsifier has it.
    pub inference_fvu: Option<f64>,
    /// Mean L0 with threshold inference.
    pub inference_l0_mean: Option<f64>,
    /// Fraction of features dead in training (no firing within the dead window).
    pub dead_in_training_fraction: Option<f64>,
    /// Fraction of features that fired on none of the evaluated tokens.
    pub dead_on_eval_fraction: Option<f64>,
    /// Fraction of under-used features.
    pub underused_fraction: Option<f64>,
    /// Mean max cosine similarity to the true dictionary (synthetic data).
    pub mmcs: Option<f64>,
    /// Fraction of true features recovered (synthetic data).
    pub recovered: Option<f64>,
}

impl From<&EvalRecord> for FinalEval {
    fn from(e: &EvalRecord) -> Self {
        let r = &e.report;
        Self {
            step: e.step,
            tokens: e.tokens,
            fvu: finite(r.batch.fvu),
            l0_mean: finite(r.batch.l0_mean),
            l0_std: finite(r.batch.l0_std),
            inference_fvu: r.inference.as_ref().and_then(|i| finite(i.fvu)),
            inference_l0_mean: r.inference.as_ref().and_then(|i| finite(i.l0_mean)),
            dead_in_training_fraction: finite(r.dead_in_training_fraction),
            dead_on_eval_fraction: finite(r.dead_on_eval_fraction),
            underused_fraction: finite(r.underused_fraction),
            mmcs: r.mmcs.and_then(finite),
            recovered: r.recovered.and_then(finite),
        }
    }
}

/// `Some(value)` when it is finite: NaN marks a value a diverged run could not compute, or
/// one an older metrics file did not record.
pub fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// Formats a number with `digits` decimals, `—` when absent or not finite.
pub fn fmt_opt(value: Option<f64>, digits: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "—".to_string(),
    }
}

/// Formats a fraction as a percentage with one decimal, `—` when absent.
pub fn fmt_percent(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{:.1}%", 100.0 * v),
        _ => "—".to_string(),
    }
}

/// Markdown table comparing the final evals of several runs, one row per run.
///
/// Columns: FVU, L0 mean ± std, dead in training %, under-used %, MMCS, recovery; a pipe in a run name
/// is escaped so the table stays well formed.
pub fn comparison_table(runs: &[(String, FinalEval)]) -> String {
    let mut out = String::from(
        "| run | FVU | L0 (mean ± std) | dead (training) | under-used | MMCS | recovered |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, e) in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} ± {} | {} | {} | {} | {} |",
            name.replace('|', "\\|"),
            fmt_opt(e.fvu, 4),
            fmt_opt(e.l0_mean, 2),
            fmt_opt(e.l0_std, 2),
            fmt_percent(e.dead_in_training_fraction),
            fmt_percent(e.underused_fraction),
            fmt_opt(e.mmcs, 3),
            fmt_percent(e.recovered),
        );
    }
    out
}
