//! The crate's error type.

use sae_alloc::AllocError;

/// Everything that can go wrong building, running or training an SAE.
#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    /// The allocation (selection) layer rejected its input.
    #[error("selection failed: {0}")]
    Alloc(#[from] AllocError),
    /// A tensor or slice had the wrong shape.
    #[error("shape mismatch for {what}: expected {expected:?}, got {actual:?}")]
    Shape {
        /// What was being checked.
        what: &'static str,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape that was given.
        actual: Vec<usize>,
    },
    /// The loss of a step was NaN or infinite; the model was left unchanged.
    #[error("non-finite loss {loss} at step {step}")]
    NonFiniteLoss {
        /// Number of optimizer steps taken before the failing one.
        step: u64,
        /// The offending loss value.
        loss: f32,
    },
    /// A parameter gradient contained NaN or infinite values; the model was left unchanged.
    #[error("non-finite gradient for parameter {param} at step {step}")]
    NonFiniteGradient {
        /// Number of optimizer steps taken before the failing one.
        step: u64,
        /// Name of the parameter (`w_enc`, `b_enc`, `w_dec`, `b_dec`).
        param: &'static str,
    },
    /// The input activations contained NaN or infinite values.
    #[error("non-finite input activations")]
    NonFiniteInput,
    /// No sparsifier is registered under this name.
    #[error("unknown sparsifier {name:?}{}; registered: {known:?}", suggestion.as_ref().map_or(String::new(), |s| format!(" (did you mean {s:?}?)")))]
    UnknownSparsifier {
        /// The name that was asked for.
        name: String,
        /// The registered name closest to it, when one is close.
        suggestion: Option<String>,
        /// The names that are registered.
        known: Vec<String>,
    },
    /// A sparsifier specification or configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A sparsifier specification could not be parsed.
    #[error("invalid sparsifier parameters: {0}")]
    Params(#[from] serde_json::Error),
    /// The device failed to run a selection kernel or to return its result.
    #[error("device selection failed: {0}")]
    Device(String),
    /// The peers of a sharded batch could not exchange their sums, or disagree.
    #[error("peer {peer}: {reason}")]
    Collective {
        /// The peer that reports it.
        peer: usize,
        /// What went wrong.
        reason: String,
    },
    /// A saved state does not fit the model it is loaded into.
    #[error("invalid saved state: {0}")]
    State(String),
}

/// Result alias with [`SaeError`].
pub type Result<T, E = SaeError> = std::result::Result<T, E>;

/// `e`, except that a NaN affinity becomes [`SaeError::NonFiniteInput`]: the parameters are
/// checked at every update, so a NaN affinity can only come from the batch.
pub(crate) fn nan_is_bad_input(e: SaeError) -> SaeError {
    match e {
        SaeError::Alloc(sae_alloc::AllocError::NanScore { .. }) => SaeError::NonFiniteInput,
        e => e,
    }
}
