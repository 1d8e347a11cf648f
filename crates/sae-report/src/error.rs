use std::path::PathBuf;

/// Everything that can go wrong while reading a run directory or writing its report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read, created or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of `metrics.jsonl` is not a valid train or eval record.
    #[error("{path}:{line}: invalid metrics record: {source}")]
    Parse {
        /// The metrics file.
        path: PathBuf,
        /// 1-based line number of the bad record.
        line: usize,
        /// What serde_json objected to.
        source: serde_json::Error,
    },
    /// The run has no eval record, so it has no final numbers.
    #[error("{path}: no eval record")]
    NoEval {
        /// The metrics file.
        path: PathBuf,
    },
    /// plotters failed to draw or encode a plot.
    #[error("{path}: cannot draw plot: {message}")]
    Plot {
        /// The PNG being written.
        path: PathBuf,
        /// plotters' description of the failure.
        message: String,
    },
    /// The embedded font could not be registered with plotters.
    #[error("cannot register the embedded DejaVu Sans font")]
    Font,
}
