//! Loss and gradients of one batch for a given selection, on each path: fused (host,
//! hand-written gradients), sparse and dense (autodiff on the backend).

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use sae_alloc::Selection;

use super::{ReconLoss, StepPath};
use crate::dense::dense_decode;
use crate::error::Result;
use crate::fused::grads::{BatchSums, WholeBatch, batch_variance};
use crate::fused::{
    HostLossAndGrads, HostLossSpec, HostParams, PairAffinities, Residuals, TokenPass, token_pass,
};
use crate::loss::{aux_normalised, fvu, mse};
use crate::rule::Activation;
use crate::sae::{SaeParams, SaeTensors, host_vec};
use crate::sparse::{Pairs, sparse_decode};

/// Loss values and parameter gradients of one batch, without any update.
#[derive(Debug, Clone)]
pub struct LossAndGrads<B: Backend> {
    /// Total loss.
    pub loss: f32,
    /// Mean squared error.
    pub mse: f32,
    /// Fraction of variance unexplained.
    pub fvu: f32,
    /// Auxiliary loss before its coefficient.
    pub aux: f32,
    /// Gradients of the total loss, one per parameter.
    pub grads: SaeTensors<B>,
}

/// What a loss needs besides the parameters and the batch.
#[derive(Debug, Clone, Copy)]
pub struct LossSpec<'a> {
    /// The batch's selection.
    pub selection: &'a Selection,
    /// The auxiliary selection, if any.
    pub aux_selection: Option<&'a Selection>,
    /// Activation of the selected affinities.
    pub activation: Activation,
    /// Reconstruction term.
    pub recon_loss: ReconLoss,
    /// Coefficient of the auxiliary loss.
    pub aux_coef: f32,
    /// How the loss and gradients are computed.
    pub path: StepPath,
}

/// The reconstruction without `b_dec` from the pairs of `selection`, by `path`'s code (the
/// dense oracle, or the sparse gathers every other path's autodiff uses).
pub(super) fn decode<B: Backend>(
    path: StepPath,
    params: &SaeTensors<B>,
    x: Tensor<B, 2>,
    selection: &Selection,
    activation: Activation,
) -> Tensor<B, 2> {
    match path {
        StepPath::Dense => dense_decode(params, x, selection, activation),
        _ => {
            let pairs = Pairs::from_selection(selection, &x.device());
            sparse_decode(params, x, &pairs, activation)
        }
    }
}

/// Loss values of one batch on the fused host path.
pub(super) struct HostLoss {
    pub(super) loss: f32,
    pub(super) mse: f32,
    pub(super) fvu: f32,
    pub(super) aux: f32,
}

/// The loss of `spec` by the fused host code's token pass, for the batch `x` (`[N, d]`
/// row-major) and parameters on the host, and the pass from which its gradients follow.
///
/// The error rows go into `residuals` (its buffers reused); `affinities` says where each
/// selected pair's affinity comes from. The auxiliary loss is on when `spec` has an
/// auxiliary selection (see [`HostLossSpec::aux_selection`]). On a batch split over peers,
/// `sums` makes the losses the whole batch's and the gradients this peer's part.
pub(super) fn host_loss<'r>(
    params: &HostParams<'_>,
    x: &[f32],
    spec: &LossSpec<'_>,
    affinities: PairAffinities<'_>,
    residuals: &'r mut Residuals,
    sums: &mut dyn BatchSums,
) -> Result<(HostLoss, TokenPass<'r>)> {
    let d = params.b_dec.len();
    let (total, n) = batch_variance(x, d, sums)?;
    let recon_scale = match spec.recon_loss {
        ReconLoss::Fvu => 1.0 / total,
        ReconLoss::Mse => 1.0 / (n * d) as f64,
    };
    let pass = token_pass(
        params,
        x,
        &HostLossSpec {
            selection: spec.selection,
            aux_selection: spec.aux_selection,
            activation: spec.activation,
            recon_scale,
            aux_coef: spec.aux_coef,
            affinities,
        },
        residuals,
        sums,
    )?;
    let (sse, aux) = (pass.sse(), pass.aux());
    let loss = HostLoss {
        loss: (sse * recon_scale + f64::from(spec.aux_coef) * aux) as f32,
        mse: (sse / (n * d) as f64) as f32,
        fvu: (sse / total) as f32,
        aux: aux as f32,
    };
    Ok((loss, pass))
}

/// [`loss_and_grads`] on the fused host path.
fn fused_loss_and_grads<B: Backend>(
    params: &SaeTensors<B>,
    x: Tensor<B, 2>,
    spec: &LossSpec<'_>,
) -> Result<LossAndGrads<B>> {
    let device = x.device();
    let x = host_vec(x);
    let p = params.to_params();
    let mut g = HostLossAndGrads::default();
    let spec = LossSpec {
        aux_selection: spec.aux_selection.filter(|a| a.nnz() > 0),
        ..*spec
    };
    let mut residuals = Residuals::default();
    let host = HostParams::from(&p);
    let (out, pass) = host_loss(
        &host,
        &x,
        &spec,
        PairAffinities::Recomputed,
        &mut residuals,
        &mut WholeBatch,
    )?;
    pass.gradients_into(&x, host.b_dec, &mut g);
    let grads = SaeParams {
        d_model: p.d_model,
        features: p.features,
        w_enc: g.w_enc,
        b_enc: g.b_enc,
        w_dec: g.w_dec,
        b_dec: g.b_dec,
    };
    Ok(LossAndGrads {
        loss: out.loss,
        mse: out.mse,
        fvu: out.fvu,
        aux: out.aux,
        grads: SaeTensors::from_host(grads, &device),
    })
}

pub(super) fn scalar<B: Backend>(t: Tensor<B, 1>) -> f32 {
    t.into_scalar().elem::<f32>()
}

pub(super) fn is_finite<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    scalar(t.clone().sum()).is_finite()
}

/// Loss and gradients of all parameters for a batch and a given selection.
///
/// Both paths compute the same function; the dense one is the oracle of the sparse one.
pub fn loss_and_grads<B: AutodiffBackend>(
    params: &SaeTensors<B::InnerBackend>,
    x: Tensor<B::InnerBackend, 2>,
    spec: &LossSpec<'_>,
) -> Result<LossAndGrads<B::InnerBackend>> {
    match spec.path.resolve::<B::InnerBackend>(&x.device()) {
        StepPath::Fused => fused_loss_and_grads(params, x, spec),
        path => autodiff_loss_and_grads::<B>(params, x, spec, path),
    }
}

/// [`loss_and_grads`] by autodiff through the sparse or the dense decoder.
fn autodiff_loss_and_grads<B: AutodiffBackend>(
    params: &SaeTensors<B::InnerBackend>,
    x: Tensor<B::InnerBackend, 2>,
    spec: &LossSpec<'_>,
    path: StepPath,
) -> Result<LossAndGrads<B::InnerBackend>> {
    let leaves = SaeTensors::<B> {
        w_enc: Tensor::from_inner(params.w_enc.clone()).require_grad(),
        b_enc: Tensor::from_inner(params.b_enc.clone()).require_grad(),
        w_dec: Tensor::from_inner(params.w_dec.clone()).require_grad(),
        b_dec: Tensor::from_inner(params.b_dec.clone()).require_grad(),
    };
    let x = Tensor::<B, 2>::from_inner(x);
    let decoded = decode(path, &leaves, x.clone(), spec.selection, spec.activation);
    let recon = decoded + leaves.b_dec.clone().unsqueeze_dim(0);
    let mse_t = mse(x.clone(), recon.clone());
    let fvu_t = fvu(x.clone(), recon.clone());
    let mut loss = match spec.recon_loss {
        ReconLoss::Fvu => fvu_t.clone(),
        ReconLoss::Mse => mse_t.clone(),
    };
    let mut aux = 0.0;
    if let Some(aux_sel) = spec.aux_selection.filter(|s| s.nnz() > 0) {
        let residual = x.clone() - recon.detach();
        let e_hat = decode(path, &leaves, x, aux_sel, spec.activation);
        let aux_t = aux_normalised(residual, e_hat);
        aux = scalar(aux_t.clone().detach());
        loss = loss + aux_t.mul_scalar(spec.aux_coef);
    }
    let loss_value = scalar(loss.clone().detach());
    let grads = loss.backward();
    let grad_of = |leaf: &Tensor<B, 2>| {
        leaf.grad(&grads)
            .unwrap_or_else(|| Tensor::zeros(leaf.dims(), &leaf.device()))
    };
    let grad_of_1 = |leaf: &Tensor<B, 1>| {
        leaf.grad(&grads)
            .unwrap_or_else(|| Tensor::zeros(leaf.dims(), &leaf.device()))
    };
    Ok(LossAndGrads {
        loss: loss_value,
        mse: scalar(mse_t.detach()),
        fvu: scalar(fvu_t.detach()),
        aux,
        grads: SaeTensors {
            w_enc: grad_of(&leaves.w_enc),
            b_enc: grad_of_1(&leaves.b_enc),
            w_dec: grad_of(&leaves.w_dec),
            b_dec: grad_of_1(&leaves.b_dec),
        },
    })
}
