//! `sae-model`: a sparse autoencoder on burn with the sparsifiers of "Adaptive Sparse Allocation
//! with Mutual Choice & Feature Choice Sparse Autoencoders" (arXiv 2411.02124).
//!
//! - [`Sae`]: the module (`w_enc`, `b_enc`, `w_dec` with unit-norm rows, `b_dec`).
//! - [`Sparsifier`]: the extension point choosing the (token, feature) pairs of a batch;
//!   [`TopK`], [`MutualChoice`] (= BatchTopK), [`FeatureChoice`]; [`Registry`] builds them by
//!   name from JSON specifications.
//! - [`TrainStep`]: one optimizer step (sparse forward, losses, backward, decoder constraint,
//!   Adam, statistics) and exact save / restore through [`TrainState`].
//! - [`fused`]: the O(N k d) host path with hand-written gradients (CPU backends);
//!   [`sparse`]: the O(N k d) differentiable gather path (device backends); [`dense`]: the
//!   masked dense oracle.
#![deny(missing_docs)]

mod adam;
pub mod collective;
pub mod dense;
mod device;
mod dispatch;
pub mod error;
pub mod fused;
pub mod loss;
pub mod registry;
mod rule;
pub mod sae;
pub mod sparse;
pub mod sparsifier;
pub mod stats;
pub mod step;

pub use collective::{
    BurnPeer, Collective, Disagreement, Machines, SinglePeer, disagreement, gather_counts,
    machine_peers,
};
pub use device::largest_buffer;
pub use dispatch::{BatchAffinities, BatchSelection, select_on_backend};
pub use error::{Result, SaeError};
pub use loss::{AuxLoss, aux_selection, aux_selection_in, fvu, mse};
pub use registry::{Registry, SparsifierFactory, parse_params};
pub use rule::{Activation, BuiltinRule, InferenceRule};
pub use sae::{Sae, SaeConfig, SaeParams, SaeTensors, sample_mean};
pub use sparsifier::{CapacityRule, FeatureChoice, MutualChoice, Sparsifier, TopK};
pub use stats::{FeatureStats, FiredCounts, StatsConfig};
pub use step::{
    LossAndGrads, LossSpec, ReconLoss, StepOutput, StepPath, TrainConfig, TrainState, TrainStep,
    loss_and_grads,
};

/// Re-exported so sparsifier crates need not depend on `sae-alloc` directly.
pub use sae_alloc;
