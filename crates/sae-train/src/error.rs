//! The error type of the trainer library.

use std::path::PathBuf;

/// Why a run could not start, continue or finish. Each variant names the file, field or step
/// at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A configuration that does not parse or type-check.
    #[error("invalid configuration ({origin}): {reason}")]
    Config {
        /// The file (or "defaults") the configuration came from.
        origin: String,
        /// The field at fault and what is wrong with it.
        reason: String,
    },
    /// A malformed `--set` override.
    #[error("invalid override `{assignment}`: {reason}")]
    Override {
        /// The assignment as given.
        assignment: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint or exported model that is missing pieces or inconsistent.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A metrics file line that does not parse.
    #[error("{}:{line}: {reason}", path.display())]
    Metrics {
        /// The metrics file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The activation source failed.
    #[error(transparent)]
    Data(#[from] sae_data::DataError),
    /// The model failed (including non-finite losses and gradients).
    #[error(transparent)]
    Model(#[from] sae_model::SaeError),
    /// Training stopped at a non-finite loss or gradient; the last good checkpoint is kept.
    #[error("training diverged at step {step}: {source}; the last good checkpoint is {}", last_good.as_ref().map_or("none".to_string(), |p| p.display().to_string()))]
    Diverged {
        /// The step that failed.
        step: u64,
        /// The model's error.
        source: sae_model::SaeError,
        /// The newest checkpoint on disk, which is left untouched.
        last_good: Option<PathBuf>,
    },
    /// The backend named in the configuration is not compiled into this binary.
    #[error(
        "backend `{0}` is not available in this build (enable the cargo feature of the same name)"
    )]
    BackendUnavailable(&'static str),
}
