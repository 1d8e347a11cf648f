//! The dense masked formulation, kept as the test oracle of the sparse paths.
//!
//! `codes = act(z') * mask` over the full `[N, F]` affinity matrix, `x_hat = codes w_dec + b_dec`.

use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use sae_alloc::Selection;

use crate::rule::Activation;
use crate::sae::SaeTensors;

/// The selection as a dense 0/1 float mask `[N, F]`, written on `device` by one `scatter_nd`
/// of the selected positions: only the `nnz` (row, feature) pairs cross to the device, not the
/// `N F` mask.
pub fn mask_tensor<B: Backend>(selection: &Selection, device: &B::Device) -> Tensor<B, 2> {
    let zeros = Tensor::<B, 2>::zeros([selection.rows(), selection.cols()], device);
    let nnz = selection.nnz();
    if nnz == 0 {
        return zeros;
    }
    let positions: Vec<i64> = selection
        .iter()
        .flat_map(|(row, feature, _)| [row as i64, i64::from(feature)])
        .collect();
    let indices = Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [nnz, 2]), device);
    // The positions are distinct, so `Assign` has no write conflicts on any backend.
    zeros.scatter_nd(
        indices,
        Tensor::<B, 1>::ones([nnz], device),
        IndexingUpdateOp::Assign,
    )
}

/// Dense codes `act(z') * mask`, `[N, F]`, differentiable through the whole affinity matrix.
pub fn dense_codes<B: Backend>(
    params: &SaeTensors<B>,
    x: Tensor<B, 2>,
    selection: &Selection,
    activation: Activation,
) -> Tensor<B, 2> {
    let device = x.device();
    // `x W^T - b_dec W^T + b_enc`: the same affinities as `SaeTensors::affinities`.
    let w_t = params.w_enc.clone().transpose();
    let shift = params
        .b_dec
        .clone()
        .unsqueeze_dim::<2>(0)
        .matmul(w_t.clone());
    let z = x.matmul(w_t) - shift + params.b_enc.clone().unsqueeze_dim(0);
    activation.apply(z) * mask_tensor::<B>(selection, &device)
}

/// Reconstruction without `b_dec` from the dense masked codes: `[N, d]`.
pub fn dense_decode<B: Backend>(
    params: &SaeTensors<B>,
    x: Tensor<B, 2>,
    selection: &Selection,
    activation: Activation,
) -> Tensor<B, 2> {
    dense_codes(params, x, selection, activation).matmul(params.w_dec.clone())
}
