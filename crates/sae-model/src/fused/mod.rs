//! The fused host path: the whole training step on the host for CPU backends, with
//! hand-written gradients and no autodiff graph.
//!
//! - [`encode`]: the encoder GEMM `z' = (x - b_dec) W_enc^T + b_enc` in one call of the `gemm`
//!   crate, the bias folded into the product, into a buffer reused from step to step;
//! - [`grads`]: loss and exact gradients over the selected pairs in two passes of plain loops,
//!   with no `[P, d]` intermediate: a token pass ([`token_pass`]), then a feature pass that
//!   sums the weight gradients;
//! - [`update`]: parallel-gradient removal, Adam and the decoder's renormalisation in one
//!   pass over each parameter; on one device, inside the feature pass, each block of weight
//!   rows updated as its gradients are summed, so that the weight gradients are never stored.
//!
//! Every sum has a fixed order, so results do not depend on the number of threads.

pub mod encode;
pub mod grads;
pub mod update;

pub use encode::{AffinityLayout, HostEncoder, gemm_abt};
pub use grads::{
    HostLossAndGrads, HostLossSpec, HostParams, PairAffinities, Residuals, TokenPass,
    host_loss_and_grads, host_loss_and_grads_into, token_pass, total_variance,
};

/// Deterministic test values in `[-0.5, 0.5)` (a multiplicative hash of the index).
#[cfg(test)]
fn test_values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761);
            (h >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// The bit patterns of `values`, for comparisons that must be exact.
#[cfg(test)]
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| x.to_bits()).collect()
}

/// Test values for `w_enc`, `b_enc`, `w_dec`, `b_dec` of `f` features of width `d`, from the
/// seeds `seed..seed + 4`.
#[cfg(test)]
fn test_params(f: usize, d: usize, seed: u32) -> [Vec<f32>; 4] {
    [
        test_values(f * d, seed),
        test_values(f, seed + 1),
        test_values(f * d, seed + 2),
        test_values(d, seed + 3),
    ]
}

/// Host parameters over `w_enc`, `b_enc`, `w_dec`, `b_dec`.
#[cfg(test)]
fn host_params<'a>([w_enc, b_enc, w_dec, b_dec]: [&'a [f32]; 4]) -> HostParams<'a> {
    HostParams {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
    }
}

/// The test loss of `selection` with the auxiliary pairs `aux`: reconstruction scale 0.5 and
/// auxiliary coefficient 1/32.
#[cfg(test)]
fn test_spec<'a>(
    selection: &'a sae_alloc::Selection,
    aux: Option<&'a sae_alloc::Selection>,
    activation: crate::rule::Activation,
    affinities: PairAffinities<'a>,
) -> HostLossSpec<'a> {
    HostLossSpec {
        selection,
        aux_selection: aux,
        activation,
        recon_scale: 0.5,
        aux_coef: 1.0 / 32.0,
        affinities,
    }
}
