//! What a sparsifier says about itself: the activation of its codes, the built-in selection
//! rule a device may run natively, and how a trained model encodes single tokens.

use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use sae_alloc::Capacities;
use serde::{Deserialize, Serialize};

/// The function applied to the selected affinities to give the codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(z, 0)`: the paper's sparsifiers.
    Relu,
    /// `z`: signed codes (e.g. AbsTopK).
    Identity,
}

impl Activation {
    /// Applies the activation to a tensor.
    pub fn apply<B: Backend, const D: usize>(self, t: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Relu => relu(t),
            Self::Identity => t,
        }
    }

    /// Applies the activation to one value.
    pub fn apply_scalar(self, z: f32) -> f32 {
        match self {
            Self::Relu => z.max(0.0),
            Self::Identity => z,
        }
    }

    /// Whether a selected affinity gives a non-zero code (counts as a fire).
    pub fn fires(self, z: f32) -> bool {
        self.apply_scalar(z) != 0.0
    }

    /// [`Activation::fires`] elementwise.
    pub fn fires_mask<B: Backend, const D: usize>(self, t: Tensor<B, D>) -> Tensor<B, D, Bool> {
        match self {
            Self::Relu => t.greater_elem(0.0),
            Self::Identity => t.not_equal_elem(0.0),
        }
    }
}

/// A selection rule a device backend may run natively instead of calling
/// [`Sparsifier::select`](crate::Sparsifier::select) on the host (GPU kernels slot in here).
#[derive(Debug, Clone, PartialEq)]
pub enum BuiltinRule {
    /// Each row keeps its `k` largest affinities.
    RowTopK {
        /// Features per token.
        k: usize,
    },
    /// The `budget` largest affinities of the whole matrix.
    GlobalTopK {
        /// Total pairs kept.
        budget: usize,
    },
    /// Each column keeps its `capacities[j]` largest affinities.
    ColumnTopM {
        /// Tokens per feature.
        capacities: Capacities,
    },
}

/// How a trained model selects features for single tokens, without a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferenceRule {
    /// The training rule works per token already (TopK, AbsTopK).
    PerToken,
    /// One threshold for all features, estimated during training (MC / BatchTopK).
    GlobalThreshold,
    /// One threshold per feature, estimated during training (FC).
    PerFeatureThreshold,
}
