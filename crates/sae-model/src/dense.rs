//! The dense masked formulation, kept as the test oracle of the sparse path.
//!
//! `codes = act(z') * mask` over the full `[N, F]` affinity matrix, `x_hat = codes w_dec + b_dec`.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use sae_alloc::Selection;

use crate::sae::SaeTensors;
use crate::sparsifier::Activation;

/// The selection as a dense 0/1 float mask `[N, F]`.
pub fn mask_tensor<B: Backend>(selection: &Selection, device: &B::Device) -> Tensor<B, 2> {
    let mask: Vec<f32> = selection
        .dense_mask()
        .into_iter()
        .map(|m| if m { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_data(
        TensorData::new(mask, [selection.rows(), selection.cols()]),
        device,
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
    activation.apply(params.affinities(x)) * mask_tensor::<B>(selection, &device)
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
