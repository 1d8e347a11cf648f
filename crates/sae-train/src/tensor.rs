//! Moving host batches to a backend.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};

/// A row-major host batch as a `[rows, d]` tensor on `device`.
pub fn to_device<B: AutodiffBackend>(
    x: &[f32],
    rows: usize,
    d: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(x.to_vec(), [rows, d]), device)
}
