//! The one error type of the crate.

use sae_alloc::AllocError;

/// Why a selection could not be computed on the device.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The arguments break a rule of the allocation itself (NaN scores, k, budget or
    /// capacities beyond the matrix, ...): the same error `sae-alloc` returns for them.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The device buffer holds fewer bytes than the declared matrix needs.
    #[error("{what} buffer holds {bytes} bytes, but {expected} are needed")]
    BufferTooSmall {
        /// Which buffer ("scores", "capacities", "thresholds").
        what: &'static str,
        /// Its size in bytes.
        bytes: u64,
        /// Bytes the declared shape needs.
        expected: u64,
    },
    /// The matrix has more entries than the kernels' `u32` row-major indices address.
    #[error("{rows} x {cols} scores exceed the u32 index range of the kernels")]
    TooManyScores {
        /// Rows (tokens).
        rows: usize,
        /// Columns (features).
        cols: usize,
    },
    /// Two inputs of one operation disagree on a shape.
    #[error("{what}: expected {expected:?}, got {actual:?}")]
    ShapeMismatch {
        /// Which input, and the dimensions compared.
        what: &'static str,
        /// The shape the other inputs imply.
        expected: Vec<usize>,
        /// The input's shape.
        actual: Vec<usize>,
    },
    /// The device failed to return a buffer.
    #[error("reading back from the device failed: {reason}")]
    Read {
        /// The device's message.
        reason: String,
    },
}
