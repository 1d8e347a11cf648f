//! The step of one peer of a batch whose rows are split over several peers: the token pass
//! and the gradients of this peer's rows run on its device, as in [`super::train_step`]; the
//! sums over the peers (the loss terms, then the gradients) are the caller's; the update then
//! runs from the batch's gradients ([`update_from_gradients`]).
//!
//! The kernels are the single-device step's own passes, split where a sum over the peers must
//! come in between: [`ShardPass::sums`] reads this peer's loss terms, the caller turns the
//! batch's into the gradient scales, [`ShardPass::gradients`] computes this peer's part of
//! every gradient, and the update applies Adam, the removal of the decoder gradient's
//! component along its row and the renormalisation to the sum.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::reduce::ROWS_PER_BLOCK;
use super::update::{adam_update, bias_gradient, decoder_apply, feature_gradients};
use super::{AdamConstants, PairInputs, PairPass, ParamBuffers, hyper};
use crate::KernelError;
use crate::key::CUBE;
use crate::launch::{array, grid, read_words, unit_dim};

/// One peer's loss terms, summed over its rows in row order.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ShardSums {
    /// `sum_t ||x_t - x_hat_t||^2`.
    pub sse: f64,
    /// `sum_t ||e_t - e_hat_t||^2` over the auxiliary pairs (0 without them).
    pub aux_sse: f64,
    /// Whether any of this peer's auxiliary pairs is more than padding.
    pub aux_active: bool,
}

/// The token pass of one peer's rows, enqueued, waiting for the batch's gradient scales.
pub struct ShardPass<R: Runtime> {
    client: ComputeClient<R>,
    pass: PairPass,
}

impl<R: Runtime> std::fmt::Debug for ShardPass<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardPass")
            .field("tokens", &self.pass.n)
            .field("features", &self.pass.f)
            .field("pairs", &self.pass.pairs)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> ShardPass<R> {
    /// Checks the inputs against `params` and enqueues the token pass of this peer's rows.
    pub fn launch(
        client: &ComputeClient<R>,
        inputs: &PairInputs<'_, R>,
        params: &ParamBuffers,
    ) -> Result<Self, KernelError> {
        Ok(Self {
            client: client.clone(),
            pass: PairPass::launch(client, inputs, &[params])?,
        })
    }

    /// Reads this peer's loss terms (one synchronisation).
    pub fn sums(&self) -> Result<ShardSums, KernelError> {
        let p = &self.pass;
        let words = read_words(
            &self.client,
            vec![
                p.token_sse.clone(),
                p.token_aux.clone(),
                p.aux_active.clone(),
            ],
        )?;
        let sum =
            |w: &[u32]| -> f64 { w[..p.n].iter().map(|&b| f64::from(f32::from_bits(b))).sum() };
        Ok(ShardSums {
            sse: sum(&words[0]),
            aux_sse: if p.with_aux { sum(&words[1]) } else { 0.0 },
            aux_active: p.with_aux && words[2][0] != 0,
        })
    }

    /// Enqueues this peer's part of every gradient, into fresh buffers: `scales` are the
    /// batch's `[dL/dx_hat, dL/de_hat]` per unit of error (the whole batch's, so that the
    /// peers' parts add up to the batch's gradient). `params` are those of [`Self::launch`].
    pub fn gradients(&self, params: &ParamBuffers, scales: [f32; 2]) -> ParamBuffers {
        let client = &self.client;
        let p = &self.pass;
        let (n, f, d) = (p.n, p.f, p.d);
        let scales = client.create_from_slice(f32::as_bytes(&scales));
        let grads = ParamBuffers::uninit(client, f, d);
        feature_gradients::launch::<R>(
            client,
            grid(f),
            unit_dim(),
            array(&p.x, n * d),
            array(&p.err, p.rows * d),
            array(&params.b_dec, d),
            array(&p.view.offsets, f + 1),
            array(&p.view.ids, p.pairs),
            array(&p.pair_row, p.pairs),
            array(&p.values, p.pairs),
            array(&p.slopes, p.pairs),
            array(&scales, 2),
            array(&grads.w_enc, f * d),
            array(&grads.b_enc, f),
            array(&grads.w_dec, f * d),
            n as u32,
            d as u32,
            f as u32,
            p.main_pairs as u32,
        );
        let [err_sums, encoder_sums] = p.bias_partials(client, &params.w_enc, &grads.b_enc);
        let blocks = |rows: usize| rows.div_ceil(ROWS_PER_BLOCK as usize);
        bias_gradient::launch::<R>(
            client,
            grid(d.div_ceil(CUBE as usize)),
            unit_dim(),
            array(&err_sums, blocks(n) * d),
            array(&encoder_sums, blocks(f) * d),
            array(&scales, 2),
            array(&grads.b_dec, d),
            n as u32,
            d as u32,
            f as u32,
        );
        grads
    }
}

impl ParamBuffers {
    /// Reads the four buffers (`features` rows of width `d`) back with one synchronisation,
    /// in the order of [`super::PARAMETERS`].
    pub fn read<R: Runtime>(
        &self,
        client: &ComputeClient<R>,
        features: usize,
        d: usize,
    ) -> Result<[Vec<f32>; 4], KernelError> {
        self.check("parameters", features, d)?;
        let words = read_words(
            client,
            vec![
                self.w_enc.clone(),
                self.b_enc.clone(),
                self.w_dec.clone(),
                self.b_dec.clone(),
            ],
        )?;
        let lens = [features * d, features, features * d, d];
        let mut out = lens.map(|_| Vec::new());
        for ((out, words), len) in out.iter_mut().zip(&words).zip(lens) {
            *out = words[..len].iter().map(|&b| f32::from_bits(b)).collect();
        }
        Ok(out)
    }

    /// Uploads host values, in the order of [`super::PARAMETERS`].
    pub fn upload<R: Runtime>(
        client: &ComputeClient<R>,
        [w_enc, b_enc, w_dec, b_dec]: [&[f32]; 4],
    ) -> Self {
        let up = |v: &[f32]| client.create_from_slice(f32::as_bytes(v));
        Self {
            w_enc: up(w_enc),
            b_enc: up(b_enc),
            w_dec: up(w_dec),
            b_dec: up(b_dec),
        }
    }
}

/// Enqueues the update of `params` with moments `m`, `v` from the batch's gradients `grads`
/// (`features` rows of width `d`), into fresh buffers `[params, m, v]`: Adam on every
/// element, the decoder gradient's component along its row removed first and the decoder
/// rows renormalised after, as [`super::train_step`] does. The gradients are expected
/// finite (the caller checks the sum it made).
pub fn update_from_gradients<R: Runtime>(
    client: &ComputeClient<R>,
    grads: &ParamBuffers,
    [params, m, v]: [&ParamBuffers; 3],
    adam: &AdamConstants,
    [features, d]: [usize; 2],
) -> Result<[ParamBuffers; 3], KernelError> {
    for (buffers, name) in [
        (grads, "gradients"),
        (params, "parameters"),
        (m, "first moments"),
        (v, "second moments"),
    ] {
        buffers.check(name, features, d)?;
    }
    // The auxiliary coefficient and the MSE scale are not read by the update.
    let hyper = hyper(client, adam, 0.0, 1);
    let out = [0, 1, 2].map(|_| ParamBuffers::uninit(client, features, d));
    let [p_out, m_out, v_out] = &out;
    let elementwise = |param: &Handle,
                       grad: &Handle,
                       [m_in, v_in]: [&Handle; 2],
                       [param_out, m_out, v_out]: [&Handle; 3],
                       [rows, width]: [usize; 2]| {
        let len = rows * width;
        adam_update::launch::<R>(
            client,
            grid(len.div_ceil(CUBE as usize)),
            unit_dim(),
            array(param, len),
            array(grad, len),
            array(&hyper, super::reduce::slot::LEN),
            array(m_in, len),
            array(v_in, len),
            array(param_out, len),
            array(m_out, len),
            array(v_out, len),
            rows as u32,
            width as u32,
        );
    };
    elementwise(
        &params.w_enc,
        &grads.w_enc,
        [&m.w_enc, &v.w_enc],
        [&p_out.w_enc, &m_out.w_enc, &v_out.w_enc],
        [features, d],
    );
    elementwise(
        &params.b_enc,
        &grads.b_enc,
        [&m.b_enc, &v.b_enc],
        [&p_out.b_enc, &m_out.b_enc, &v_out.b_enc],
        [features, 1],
    );
    elementwise(
        &params.b_dec,
        &grads.b_dec,
        [&m.b_dec, &v.b_dec],
        [&p_out.b_dec, &m_out.b_dec, &v_out.b_dec],
        [1, d],
    );
    decoder_apply::launch::<R>(
        client,
        grid(features),
        unit_dim(),
        array(&grads.w_dec, features * d),
        array(&hyper, super::reduce::slot::LEN),
        array(&params.w_dec, features * d),
        array(&m.w_dec, features * d),
        array(&v.w_dec, features * d),
        array(&p_out.w_dec, features * d),
        array(&m_out.w_dec, features * d),
        array(&v_out.w_dec, features * d),
        d as u32,
        features as u32,
    );
    Ok(out)
}
