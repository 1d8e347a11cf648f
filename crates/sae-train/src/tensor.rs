//! Moving host batches to a backend and affinities back.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use sae_model::TrainStep;

use crate::TrainError;

/// A row-major host batch as a `[rows, d]` tensor on `device`.
pub fn to_device<B: AutodiffBackend>(
    x: &[f32],
    rows: usize,
    d: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(x.to_vec(), [rows, d]), device)
}

/// The affinities `[rows, F]` of a host batch, on the host.
pub fn host_affinities<B: AutodiffBackend>(
    step: &TrainStep<B>,
    x: &[f32],
    rows: usize,
) -> Result<Vec<f32>, TrainError> {
    let d = x.len() / rows;
    let inner = to_device::<B>(x, rows, d, step.device()).inner();
    Ok(sae_model::sae::host_vec(step.params().affinities(inner)))
}
