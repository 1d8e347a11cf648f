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
    /// The checkpoint a run would continue from failed verification.
    #[error("{source}{}", match older {
        Some(dir) => format!("; an older checkpoint exists ({}): `--fallback` resumes from the newest one that verifies", dir.display()),
        None => "; no older checkpoint verifies".to_string(),
    })]
    CorruptCheckpoint {
        /// The verification error, naming the file.
        source: Box<TrainError>,
        /// The next older checkpoint, when there is one.
        older: Option<PathBuf>,
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
    /// The run directory is locked by another process.
    #[error(
        "run directory {} is in use by {}: one directory holds one run at a time",
        dir.display(),
        holder.map_or("another process".to_string(), |pid| format!("process {pid}"))
    )]
    RunDirInUse {
        /// The run directory.
        dir: std::path::PathBuf,
        /// The PID recorded by the lock's holder, when readable.
        holder: Option<u32>,
    },
    /// A new run was started in a directory that already holds a run.
    #[error(
        "run directory {} already holds a run ({}); continue it with `--resume`, replace it with `--overwrite`, or choose another `out_dir`",
        dir.display(),
        found.join(", ")
    )]
    RunDirTaken {
        /// The run directory.
        dir: std::path::PathBuf,
        /// The run's files found there.
        found: Vec<&'static str>,
    },
    /// The activations changed since the run started.
    #[error(
        "the training data changed since run {} started: {reason}; resuming would not continue the same run (pass `--allow-data-change` to resume anyway)",
        dir.display()
    )]
    DataChanged {
        /// The run directory.
        dir: std::path::PathBuf,
        /// The first difference, naming the file.
        reason: String,
    },
    /// The machines of a run over several machines do not hold the same run.
    #[error(
        "the machines of the run differ in {what}: machines {nodes:?} hold another than machine 0's; every machine needs the same settings, the same data and the same starting point (the same checkpoint when resuming)"
    )]
    MachinesDiffer {
        /// What differs, e.g. "the settings [train]".
        what: String,
        /// The machines whose copy differs from machine 0's.
        nodes: Vec<usize>,
    },
    /// The held-out split of the data is empty although evaluation needs it.
    #[error(
        "data.heldout_fraction = {fraction} holds out no rows of {source_rows} rows: raise it, or set it to 0 to train without held-out evaluation"
    )]
    NoHeldOutRows {
        /// The configured fraction.
        fraction: f64,
        /// Rows of the source.
        source_rows: u64,
    },
    /// A model that the requested export format cannot express.
    #[error("cannot export sparsifier `{sparsifier}` to SAELens: {reason}")]
    Export {
        /// The sparsifier's registry name.
        sparsifier: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// Evaluation data the user named does not fit the model.
    #[error("evaluation data {}: {reason}", path.display())]
    EvalData {
        /// The file or directory given.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend named in the configuration cannot run on this machine.
    #[error("backend `{backend}` cannot run here: {reason}")]
    BackendFailed {
        /// The backend.
        backend: &'static str,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The backend named in the configuration is not compiled into this binary.
    #[error(
        "backend `{0}` is not available in this build (enable the cargo feature of the same name)"
    )]
    BackendUnavailable(&'static str),
}
