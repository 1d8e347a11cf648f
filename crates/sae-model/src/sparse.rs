//! The sparse (gather) path: codes and reconstruction computed only at the selected pairs.
//!
//! Forward and backward cost O(P * d) for P selected pairs; no `[N, F]` tensor is built with
//! autodiff. Per pair: gather the token's centred input row and the feature's encoder row, dot,
//! add the feature's bias, activate; then scale the feature's decoder row and add it into the
//! token's reconstruction (`select_assign` with `Add`, whose backward is again a gather).

use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use sae_alloc::Selection;

use crate::rule::Activation;
use crate::sae::SaeTensors;

/// The selected pairs of a batch as index tensors on a device.
#[derive(Debug, Clone)]
pub struct Pairs<B: Backend> {
    /// Token (row) of each pair, `[P]`.
    pub tokens: Tensor<B, 1, Int>,
    /// Feature of each pair, `[P]`.
    pub features: Tensor<B, 1, Int>,
    /// Number of tokens N of the batch.
    pub rows: usize,
    /// Number of pairs P.
    pub len: usize,
}

impl<B: Backend> Pairs<B> {
    /// The pairs of a selection, in its CSR order.
    pub fn from_selection(selection: &Selection, device: &B::Device) -> Self {
        let tokens: Vec<i32> = selection
            .token_ids()
            .into_iter()
            .map(|t| t as i32)
            .collect();
        let features: Vec<i32> = selection.features().iter().map(|&f| f as i32).collect();
        let len = features.len();
        Self {
            tokens: Tensor::from_data(TensorData::new(tokens, [len]), device),
            features: Tensor::from_data(TensorData::new(features, [len]), device),
            rows: selection.rows(),
            len,
        }
    }
}

/// Codes of the selected pairs, `[P, 1]`: `act((x_t - b_dec) . w_enc[f] + b_enc[f])`.
pub fn pair_values<B: Backend>(
    params: &SaeTensors<B>,
    x: Tensor<B, 2>,
    pairs: &Pairs<B>,
    activation: Activation,
) -> Tensor<B, 2> {
    let centred = x - params.b_dec.clone().unsqueeze_dim(0);
    let xs = centred.select(0, pairs.tokens.clone());
    let ws = params.w_enc.clone().select(0, pairs.features.clone());
    let bias = params
        .b_enc
        .clone()
        .select(0, pairs.features.clone())
        .unsqueeze_dim(1);
    activation.apply((xs * ws).sum_dim(1) + bias)
}

/// `sum over a token's pairs of value * w_dec[f]`, `[N, d]` (no bias).
pub fn decode_pairs<B: Backend>(
    w_dec: Tensor<B, 2>,
    values: Tensor<B, 2>,
    pairs: &Pairs<B>,
) -> Tensor<B, 2> {
    let d = w_dec.dims()[1];
    let device = w_dec.device();
    let zeros = Tensor::<B, 2>::zeros([pairs.rows, d], &device);
    if pairs.len == 0 {
        return zeros;
    }
    let rows = w_dec.select(0, pairs.features.clone()) * values;
    zeros.select_assign(0, pairs.tokens.clone(), rows, IndexingUpdateOp::Add)
}

/// Reconstruction without `b_dec` from the selected pairs: `[N, d]`.
pub fn sparse_decode<B: Backend>(
    params: &SaeTensors<B>,
    x: Tensor<B, 2>,
    pairs: &Pairs<B>,
    activation: Activation,
) -> Tensor<B, 2> {
    if pairs.len == 0 {
        let d = params.b_dec.dims()[0];
        return Tensor::zeros([pairs.rows, d], &x.device());
    }
    let values = pair_values(params, x, pairs, activation);
    decode_pairs(params.w_dec.clone(), values, pairs)
}
