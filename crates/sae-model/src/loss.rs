//! Losses: reconstruction MSE, fraction of variance unexplained, and the auxiliary losses
//! `aux_k` (Gao et al. 2024) and `aux_zipf` (the paper).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use sae_alloc::Selection;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SaeError};
use crate::fused::AffinityLayout;
use crate::rule::Activation;

/// Mean squared error over all elements, `[1]`.
pub fn mse<B: Backend>(x: Tensor<B, 2>, x_hat: Tensor<B, 2>) -> Tensor<B, 1> {
    (x - x_hat).square().mean()
}

/// Fraction of variance unexplained (normalised MSE):
/// `sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`, the mean taken over the batch, `[1]`.
pub fn fvu<B: Backend>(x: Tensor<B, 2>, x_hat: Tensor<B, 2>) -> Tensor<B, 1> {
    let mean = x.clone().mean_dim(0);
    let total = (x.clone() - mean).square().sum();
    (x - x_hat).square().sum() / total
}

/// The normalised auxiliary loss `sum ||e - e_hat||^2 / sum ||e||^2`, `[1]`, with the residual
/// `e = x - x_hat` already detached by the caller.
pub fn aux_normalised<B: Backend>(residual: Tensor<B, 2>, e_hat: Tensor<B, 2>) -> Tensor<B, 1> {
    let total = residual.clone().square().sum();
    (residual - e_hat).square().sum() / total
}

/// Which auxiliary loss a step uses.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum AuxLoss {
    /// No auxiliary loss.
    None,
    /// `aux_k`: dead features, unit weights.
    #[default]
    AuxK,
    /// `aux_zipf`: dead and under-used features, weights `1 - rho / tau`, the target
    /// densities `tau` following [`StatsConfig::zipf_exponent`](crate::StatsConfig::zipf_exponent).
    AuxZipf,
}

/// Per token, the `k_aux` candidates with the largest `weights[j] * z'_j` (candidates: weight
/// > 0; ties: lower feature id), keeping only pairs whose code `act(z'_j)` is non-zero.
///
/// With `weights` = 1 on the dead set and 0 elsewhere this is aux_k's selection; with the
/// under-used weights it is aux_zipf's.
pub fn aux_selection(
    affinities: &[f32],
    rows: usize,
    cols: usize,
    weights: &[f32],
    k_aux: usize,
    activation: Activation,
) -> Result<Selection> {
    let layout = AffinityLayout::TokenMajor;
    aux_selection_in(layout, affinities, rows, cols, weights, k_aux, activation)
}

/// [`aux_selection`] on the `rows` x `cols` affinities held in `layout`: the same selection.
pub fn aux_selection_in(
    layout: AffinityLayout,
    affinities: &[f32],
    rows: usize,
    cols: usize,
    weights: &[f32],
    k_aux: usize,
    activation: Activation,
) -> Result<Selection> {
    if affinities.len() != rows * cols || weights.len() != cols {
        return Err(SaeError::Shape {
            what: "aux affinities / weights",
            expected: vec![rows, cols],
            actual: vec![affinities.len(), weights.len()],
        });
    }
    let at = |t: usize, j: u32| match layout {
        AffinityLayout::TokenMajor => affinities[t * cols + j as usize],
        AffinityLayout::FeatureMajor => affinities[j as usize * rows + t],
    };
    let candidates: Vec<u32> = (0..cols as u32)
        .filter(|&j| weights[j as usize] > 0.0)
        .collect();
    let mut offsets = Vec::with_capacity(rows + 1);
    offsets.push(0usize);
    let mut features = Vec::new();
    let mut scores = Vec::new();
    let mut row_buf: Vec<(f32, u32)> = Vec::with_capacity(candidates.len());
    for t in 0..rows {
        row_buf.clear();
        row_buf.extend(candidates.iter().filter_map(|&j| {
            let z = at(t, j);
            activation.fires(z).then(|| (weights[j as usize] * z, j))
        }));
        let keep = k_aux.min(row_buf.len());
        let by_rank = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if keep < row_buf.len() && keep > 0 {
            row_buf.select_nth_unstable_by(keep - 1, by_rank);
        }
        row_buf.truncate(keep);
        row_buf.sort_unstable_by_key(|&(_, j)| j);
        for &(_, j) in &row_buf {
            features.push(j);
            scores.push(at(t, j));
        }
        offsets.push(features.len());
    }
    Ok(Selection::from_parts(
        rows, cols, offsets, features, scores,
    )?)
}
