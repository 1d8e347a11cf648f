//! Plots and markdown summaries of sparse-autoencoder training runs.
//!
//! A run directory (written by `sae train`) holds `metrics.jsonl`: one JSON object per line,
//! `{"kind": "train" | "eval", "step", "tokens", ...}`. [`write_report`] turns it into PNG
//! plots (training curves, feature density, L0 per token) and a `report.md` linking them with
//! the final eval's numbers; [`comparison_table`] puts several runs side by side.
//!
//! ```no_run
//! # fn main() -> Result<(), sae_report::ReportError> {
//! use std::path::Path;
//! let report = sae_report::write_report(Path::new("runs/topk"), Path::new("runs/topk/report"))?;
//! println!("{}", report.markdown.display());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod error;
mod metrics;
mod plots;
mod summary;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use error::ReportError;
pub use metrics::{
    EvalRecord, EvalReport, Record, SelectionMetrics, TrainRecord, eval_records, read_metrics,
    train_records,
};
pub use plots::{PLOT_HEIGHT, PLOT_WIDTH};
pub use sae_metrics::{DENSITY_BINS, METRICS_FILE};
pub use summary::{FinalEval, comparison_table, finite, fmt_opt, fmt_percent};

/// Where `sae report RUN_DIR` writes, inside the run directory.
pub const REPORT_DIR: &str = "report";
/// Name of the markdown summary written by [`write_report`].
pub const REPORT_FILE: &str = "report.md";

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The markdown summary.
    pub markdown: PathBuf,
    /// Every PNG written, in the order the summary shows them.
    pub plots: Vec<PathBuf>,
    /// The last eval record's numbers, if the run has an eval record.
    pub final_eval: Option<FinalEval>,
    /// Training throughput of the last train record.
    pub tokens_per_second: Option<f64>,
    /// Number of train records read.
    pub train_records: usize,
    /// Number of eval records read.
    pub eval_records: usize,
}

/// The final numbers of the run in `run_dir`: its last eval record.
///
/// # Errors
/// Those of [`read_metrics`], and [`ReportError::NoEval`] when there is no eval line.
pub fn final_eval(run_dir: &Path) -> Result<FinalEval, ReportError> {
    let path = run_dir.join(METRICS_FILE);
    let records = read_metrics(&path)?;
    eval_records(&records)
        .last()
        .map(FinalEval::from)
        .ok_or(ReportError::NoEval { path })
}

/// Reads `run_dir/metrics.jsonl` and writes plots and `report.md` into `out_dir` (created if
/// missing). Plots with no data (no train lines, no eval line) are left out, not drawn empty.
///
/// # Errors
/// Those of [`read_metrics`]; [`ReportError::Io`] if `out_dir` or a file in it cannot be
/// written; [`ReportError::Plot`] / [`ReportError::Font`] if plotters fails.
pub fn write_report(run_dir: &Path, out_dir: &Path) -> Result<Report, ReportError> {
    let records = read_metrics(run_dir.join(METRICS_FILE))?;
    std::fs::create_dir_all(out_dir).map_err(|source| ReportError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let train: Vec<&TrainRecord> = train_records(&records).collect();
    let evals: Vec<&EvalRecord> = eval_records(&records).collect();
    let last = evals.last().copied();

    let mut plots: Vec<(PathBuf, &str)> = Vec::new();
    type TrainValue = fn(&TrainRecord) -> Option<f64>;
    type EvalValue = fn(&EvalRecord) -> Option<f64>;
    let curves: [(&str, &str, &str, TrainValue, EvalValue); 4] = [
        ("loss.png", "Training loss", "loss", |t| t.loss, |_| None),
        (
            "fvu.png",
            "Fraction of variance unexplained",
            "FVU",
            |t| t.fvu,
            |e| finite(e.report.batch.fvu),
        ),
        (
            "l0.png",
            "Mean active features per token",
            "L0",
            |t| t.l0,
            |e| finite(e.report.batch.l0_mean),
        ),
        (
            "dead.png",
            "Dead features",
            "dead features (%)",
            |t| t.dead_fraction.map(|f| 100.0 * f),
            |e| finite(100.0 * e.report.dead_in_training_fraction),
        ),
    ];
    for (file, title, y_desc, of_train, of_eval) in curves {
        let t: Vec<(f64, f64)> = train
            .iter()
            .filter_map(|r| of_train(r).map(|v| (r.tokens as f64, v)))
            .collect();
        let e: Vec<(f64, f64)> = evals
            .iter()
            .filter_map(|r| of_eval(r).map(|v| (r.tokens as f64, v)))
            .collect();
        if t.is_empty() && e.is_empty() {
            continue;
        }
        let path = out_dir.join(file);
        plots::curve(&path, title, y_desc, &t, &e)?;
        plots.push((path, title));
    }
    if let Some(last) = last.map(|e| &e.report) {
        if !last.density_histogram.is_empty() {
            let path = out_dir.join("density.png");
            plots::density(&path, &last.density_histogram)?;
            plots.push((path, "Feature firing density"));
        }
        if let Some(bands) = last
            .recovery_by_frequency
            .as_deref()
            .filter(|b| !b.is_empty())
        {
            let path = out_dir.join("recovery_by_frequency.png");
            plots::recovery_by_frequency(&path, bands)?;
            plots.push((path, "True features recovered by frequency"));
        }
        if !last.batch.l0_histogram.is_empty() {
            let path = out_dir.join("l0_histogram.png");
            let inference = last.inference.as_ref().map(|i| i.l0_histogram.as_slice());
            plots::l0_histogram(&path, &last.batch.l0_histogram, inference)?;
            plots.push((path, "Active features per token"));
        }
    }

    let final_eval = last.map(FinalEval::from);
    let markdown = out_dir.join(REPORT_FILE);
    let text = summary_markdown(run_dir, out_dir, &train, final_eval.as_ref(), &plots);
    std::fs::write(&markdown, text).map_err(|source| ReportError::Io {
        path: markdown.clone(),
        source,
    })?;
    Ok(Report {
        markdown,
        plots: plots.into_iter().map(|(p, _)| p).collect(),
        final_eval,
        tokens_per_second: train.last().and_then(|t| t.tokens_per_second),
        train_records: train.len(),
        eval_records: evals.len(),
    })
}

fn summary_markdown(
    run_dir: &Path,
    out_dir: &Path,
    train: &[&TrainRecord],
    final_eval: Option<&FinalEval>,
    plots: &[(PathBuf, &str)],
) -> String {
    let mut md = format!("# Run report: `{}`\n\n", run_dir.display());
    if let Some(last) = train.last() {
        let _ = writeln!(
            md,
            "Training: {} steps, {} tokens, last throughput {} tokens/s.\n",
            last.step,
            last.tokens,
            fmt_opt(last.tokens_per_second, 0)
        );
    }
    match final_eval {
        Some(e) => {
            let _ = writeln!(
                md,
                "## Final evaluation (step {}, {} tokens)\n",
                e.step, e.tokens
            );
            md.push_str("| metric | batch selection | threshold inference |\n|---|---:|---:|\n");
            let rows = [
                ("FVU", fmt_opt(e.fvu, 4), fmt_opt(e.inference_fvu, 4)),
                (
                    "L0 mean ± std",
                    format!("{} ± {}", fmt_opt(e.l0_mean, 2), fmt_opt(e.l0_std, 2)),
                    fmt_opt(e.inference_l0_mean, 2),
                ),
                (
                    "dead in training",
                    fmt_percent(e.dead_in_training_fraction),
                    String::new(),
                ),
                (
                    "dead on the evaluated tokens",
                    fmt_percent(e.dead_on_eval_fraction),
                    String::new(),
                ),
                (
                    "under-used features",
                    fmt_percent(e.underused_fraction),
                    String::new(),
                ),
                ("MMCS (synthetic)", fmt_opt(e.mmcs, 3), String::new()),
                (
                    "recovered (synthetic)",
                    fmt_percent(e.recovered),
                    String::new(),
                ),
            ];
            for (name, batch, inference) in rows {
                let _ = writeln!(md, "| {name} | {batch} | {inference} |");
            }
            md.push('\n');
        }
        None => md.push_str("No eval record: no final numbers.\n\n"),
    }
    if !plots.is_empty() {
        md.push_str("## Plots\n\n");
        for (path, title) in plots {
            let rel = path.strip_prefix(out_dir).unwrap_or(path);
            let _ = writeln!(md, "![{title}]({})\n", rel.display());
        }
    }
    md
}
