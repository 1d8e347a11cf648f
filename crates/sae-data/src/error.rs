//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading, validating, streaming or writing activations.
///
/// Every variant that concerns a file names the file (and the tensor and row where known), so a
/// bad shard among thousands can be found from the message alone.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system refused to open, map, read or write a file.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A file's header cannot be parsed (bad magic, malformed JSON or npy dictionary, offsets
    /// out of range, byte spans that do not fit a tensor's dtype and shape or that overlap
    /// another tensor's).
    #[error("{path}: corrupt file: {reason}")]
    Corrupt {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A file holds fewer bytes than its header promises.
    #[error(
        "{path}: tensor `{tensor}` is truncated: header promises {expected} bytes, file holds {actual}"
    )]
    Truncated {
        /// The file at fault.
        path: PathBuf,
        /// The tensor whose data is cut short.
        tensor: String,
        /// Bytes the header promises (header included).
        expected: u64,
        /// Bytes the file holds.
        actual: u64,
    },

    /// A safetensors file has no tensor of the requested name.
    #[error("{path}: no tensor `{tensor}` (the file holds: {available:?})")]
    MissingTensor {
        /// The file at fault.
        path: PathBuf,
        /// The requested name.
        tensor: String,
        /// The names the file does hold.
        available: Vec<String>,
    },

    /// A tensor's element type is not one this crate decodes (f32, f16, bf16; npy: little-endian
    /// f32 or f16).
    #[error("{path}: tensor `{tensor}` has unsupported dtype {dtype} (supported: f32, f16, bf16)")]
    UnsupportedDtype {
        /// The file at fault.
        path: PathBuf,
        /// The tensor at fault.
        tensor: String,
        /// The dtype as the file spells it.
        dtype: String,
    },

    /// A tensor is not of rank 2 `[n, d]` with `d > 0`, or is stored in Fortran order.
    #[error("{path}: tensor `{tensor}` has shape {shape:?}; expected [n, d] with d > 0{detail}")]
    WrongShape {
        /// The file at fault.
        path: PathBuf,
        /// The tensor at fault.
        tensor: String,
        /// The shape found.
        shape: Vec<u64>,
        /// Extra detail (for example Fortran order), empty when none.
        detail: String,
    },

    /// Shards disagree on the activation width `d`.
    #[error("{path}: tensor `{tensor}` has d = {found}, but the first shard has d = {expected}")]
    DimMismatch {
        /// The shard at fault.
        path: PathBuf,
        /// The tensor at fault.
        tensor: String,
        /// The width of the first shard.
        expected: usize,
        /// The width of this shard.
        found: usize,
    },

    /// A value is NaN or infinite.
    #[error("{path}: tensor `{tensor}` row {row} column {column} is {value} (not finite)")]
    NonFinite {
        /// The file at fault.
        path: PathBuf,
        /// The tensor at fault.
        tensor: String,
        /// The row within this file (0-based).
        row: u64,
        /// The column within the row (0-based).
        column: usize,
        /// The offending value.
        value: f32,
    },

    /// A file became shorter than the rows about to be read while it was open (shards must not
    /// change while they are read; reading the vanished bytes through the memory map would
    /// kill the process).
    #[error(
        "{path}: tensor `{tensor}`: the file shrank to {actual} bytes while open, but row {row} ends at byte {needed} (a shard must not change while it is read)"
    )]
    Shrunk {
        /// The file at fault.
        path: PathBuf,
        /// The tensor read.
        tensor: String,
        /// The first requested row that is no longer (wholly) in the file.
        row: u64,
        /// Bytes the file must hold for the requested rows.
        needed: u64,
        /// Bytes the file holds now.
        actual: u64,
    },

    /// The rows sampled for a normalisation estimate have zero spread (all zero, or with
    /// centring all equal), so no scale exists. Names the first file sampled; the rows sampled
    /// from every other file are alike.
    #[error(
        "{path}: tensor `{tensor}`: the {rows} rows sampled from this file (from row {first_row} on) are {detail}; no normalisation scale exists"
    )]
    ZeroNorm {
        /// The (first) file at fault.
        path: PathBuf,
        /// The tensor read.
        tensor: String,
        /// Rows sampled from this file.
        rows: u64,
        /// The first row sampled from this file.
        first_row: u64,
        /// What the rows are (`all zero` or `all equal`), and how many other files are alike.
        detail: String,
    },

    /// A source yields no training rows (no matching files, every shard empty, or everything
    /// held out).
    #[error("empty source: {what}")]
    Empty {
        /// What was empty.
        what: String,
    },

    /// Data handed to a writer does not match the shape it is written under.
    #[error("{path}: tensor `{tensor}` has shape {shape:?} but {len} values were given")]
    ShapeMismatch {
        /// The file being written.
        path: PathBuf,
        /// The tensor being written.
        tensor: String,
        /// The declared shape.
        shape: Vec<usize>,
        /// The number of values given.
        len: usize,
    },

    /// A cursor does not belong to this source (other kind of source, other shards, other
    /// seed, position out of range).
    #[error("cursor does not fit this source: {reason}")]
    CursorMismatch {
        /// Why it does not fit.
        reason: String,
    },

    /// A configuration value is out of range.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is out of range.
        reason: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            reason: reason.into(),
        }
    }
}
