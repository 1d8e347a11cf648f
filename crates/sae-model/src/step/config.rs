//! The step's hyper-parameters and the choice of path.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::loss::AuxLoss;
use crate::stats::StatsConfig;

/// How codes and reconstructions are computed in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPath {
    /// The backend's training path: [`StepPath::Fused`] on the CPU backends (Flex, NdArray),
    /// [`StepPath::Device`] on burn's cubecl backends (wgpu, cuda), [`StepPath::Sparse`] on
    /// the others.
    #[default]
    Auto,
    /// Hand-written forward and backward over the selected pairs on the host, O(N k d) with no
    /// `[P, d]` intermediate ([`crate::fused`]; the CPU training path).
    Fused,
    /// The whole step in kernels on the device that holds the parameters: burn's encoder
    /// GEMM, then selection, loss, hand-written gradients and Adam as `sae-kernels` kernels,
    /// with one read-back per step (the device training path; sparsifiers without a built-in
    /// rule take [`StepPath::Sparse`]).
    Device,
    /// Differentiable gathers at the selected pairs on the backend, O(N k d) forward and
    /// backward by autodiff (the device path's oracle, and its fallback).
    Sparse,
    /// Dense masked codes `[N, F]` (the mask written on the device) and a dense decoder GEMM:
    /// the oracle, and a GPU path with no per-pair loops (see the crate README).
    Dense,
}

/// The reconstruction term of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconLoss {
    /// Fraction of variance unexplained (normalised MSE).
    #[default]
    Fvu,
    /// Mean squared error over all elements.
    Mse,
}

/// Hyper-parameters of the training step (paper defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Adam learning rate; `None`: 2e-4 / sqrt(F / 16384).
    pub lr: Option<f64>,
    /// Adam beta 1.
    pub beta1: f64,
    /// Adam beta 2.
    pub beta2: f64,
    /// Adam epsilon.
    pub eps: f64,
    /// Reconstruction term.
    pub recon_loss: ReconLoss,
    /// Auxiliary loss.
    pub aux: AuxLoss,
    /// Coefficient of the auxiliary loss.
    pub aux_coef: f32,
    /// Features per token of the auxiliary selection; `None`: d / 2.
    pub k_aux: Option<usize>,
    /// Windows of the feature statistics.
    pub stats: StatsConfig,
    /// Decay of the inference-threshold EMA.
    pub threshold_decay: f32,
    /// How the loss and gradients are computed.
    pub path: StepPath,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: None,
            beta1: 0.9,
            beta2: 0.999,
            eps: 6.25e-10,
            recon_loss: ReconLoss::Fvu,
            aux: AuxLoss::AuxK,
            aux_coef: 1.0 / 32.0,
            k_aux: None,
            stats: StatsConfig::default(),
            threshold_decay: 0.99,
            path: StepPath::Auto,
        }
    }
}

impl StepPath {
    /// The concrete path on backend `B` (or `Autodiff<B>`): resolves [`StepPath::Auto`].
    pub fn resolve<B: Backend>(self, device: &B::Device) -> StepPath {
        let name = B::name(device);
        let on_cpu = ["flex", "ndarray"].iter().any(|cpu| name.contains(cpu));
        // `B` may be the autodiff wrapper of a cubecl backend, whose tensors are not cubecl's.
        let on_cubecl =
            crate::device::is_cubecl::<B>() || ["wgpu", "cuda"].iter().any(|n| name.contains(n));
        match self {
            StepPath::Auto if on_cpu => StepPath::Fused,
            StepPath::Auto if on_cubecl => StepPath::Device,
            StepPath::Auto => StepPath::Sparse,
            path => path,
        }
    }
}
