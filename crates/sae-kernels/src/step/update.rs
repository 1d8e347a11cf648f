//! The feature pass and the update: one cube per feature sums its pairs' contributions to
//! the encoder and decoder rows (in the row order of the feature-major view), and applies
//! Adam, the removal of the decoder gradient's component along its row, and the decoder
//! row's renormalisation, writing new parameters and moments into fresh buffers (the old ones
//! stay as they were, so a step with a non-finite value can be dropped whole).
//!
//! With `sc_q` the scale of pair `q` (main or auxiliary, from [`super::reduce::loss_sums`]),
//! `v_q` its code, `s_q` its unscaled code gradient from the token pass and `r_q` its error row:
//! `dL/dw_dec[f] = sum_q sc_q v_q err[r_q]`, `dL/du_q = sc_q s_q`,
//! `dL/dw_enc[f] = sum_q dL/du_q (x_t - b_dec)`, `dL/db_enc[f] = sum_q dL/du_q`.

use cubecl::prelude::*;

use super::reduce::{ROWS_PER_BLOCK, cube_sum, slot};
use crate::key::{CUBE, cube_index};

/// The parameters in the order of their flag slots below, which is also the order in which
/// every finiteness check of the project (host and tensor paths) names the first bad one.
pub const PARAMETERS: [&str; FLAGS] = ["w_enc", "b_enc", "w_dec", "b_dec"];

/// Flag slots of the non-finite gradients, in the order the host reports them.
pub(crate) const FLAG_W_ENC: usize = 0;
pub(crate) const FLAG_B_ENC: usize = 1;
pub(crate) const FLAG_W_DEC: usize = 2;
pub(crate) const FLAG_B_DEC: usize = 3;
/// Number of flags.
pub(crate) const FLAGS: usize = 4;

/// Whether the bits of a float are those of an infinity or a NaN.
#[cube]
fn non_finite(x: f32) -> bool {
    (u32::reinterpret(x) & 0x7FFF_FFFFu32) >= 0x7F80_0000u32
}

/// One Adam update of element `i`: new moments into `m_out`, `v_out`; returns the new
/// parameter. The same `f32` operations in the same order as the host's `update_slice`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn adam(
    param: f32,
    grad: f32,
    m_in: &Array<f32>,
    v_in: &Array<f32>,
    m_out: &mut Array<f32>,
    v_out: &mut Array<f32>,
    i: usize,
    hyper: &Array<f32>,
) -> f32 {
    let v = v_in[i] * hyper[slot::BETA2] + grad * grad * hyper[slot::ONE_MINUS_BETA2];
    let m = m_in[i] * hyper[slot::BETA1] + grad * hyper[slot::ONE_MINUS_BETA1];
    v_out[i] = v;
    m_out[i] = m;
    let step = 1.0f32 / (f32::sqrt(v * hyper[slot::INV_CORRECTION2]) + hyper[slot::EPS])
        * m
        * hyper[slot::STEP_SCALE];
    param - step
}

/// The scale of pair `q`: main pairs come first.
#[cube]
fn pair_scale(q: u32, main_pairs: u32, scales: &Array<f32>) -> f32 {
    select(q < main_pairs, scales[0], scales[1])
}

/// Element `j` of feature `f`'s encoder gradient row, its pairs being `ids[start..end]`:
/// `sum_q dL/du_q (x_t - b_dec)_j`, in the view's row order.
#[cube]
#[allow(clippy::too_many_arguments)]
fn encoder_gradient_at(
    x: &Array<f32>,
    b_dec: &Array<f32>,
    ids: &Array<u32>,
    pair_row: &Array<u32>,
    slopes: &Array<f32>,
    scales: &Array<f32>,
    start: usize,
    end: usize,
    tokens: u32,
    d: usize,
    j: usize,
    main_pairs: u32,
) -> f32 {
    let b = b_dec[j];
    let mut g = 0.0f32;
    for i in start..end {
        let q = ids[i];
        let row = pair_row[q as usize];
        let t = select(row >= tokens, row - tokens, row) as usize;
        let gu = pair_scale(q, main_pairs, scales) * slopes[q as usize];
        g += gu * (x[t * d + j] - b);
    }
    g
}

/// A feature's encoder bias gradient, `sum_q dL/du_q` over its pairs `ids[start..end]`.
#[cube]
fn encoder_bias_gradient(
    ids: &Array<u32>,
    slopes: &Array<f32>,
    scales: &Array<f32>,
    start: usize,
    end: usize,
    main_pairs: u32,
) -> f32 {
    let mut g = 0.0f32;
    for i in start..end {
        let q = ids[i];
        g += pair_scale(q, main_pairs, scales) * slopes[q as usize];
    }
    g
}

/// Element `j` of a feature's decoder gradient row, `sum_q sc_q v_q err[r_q]_j` over its
/// pairs `ids[start..end]` (before the removal of its component along the row).
#[cube]
#[allow(clippy::too_many_arguments)]
fn decoder_gradient_at(
    err: &Array<f32>,
    ids: &Array<u32>,
    pair_row: &Array<u32>,
    values: &Array<f32>,
    scales: &Array<f32>,
    start: usize,
    end: usize,
    d: usize,
    j: usize,
    main_pairs: u32,
) -> f32 {
    let mut g = 0.0f32;
    for i in start..end {
        let q = ids[i];
        let alpha = pair_scale(q, main_pairs, scales) * values[q as usize];
        g += alpha * err[pair_row[q as usize] as usize * d + j];
    }
    g
}

/// Encoder rows and biases: gradients from each feature's pairs, then Adam. `g_b_enc[f]`
/// keeps the bias gradient for the `b_dec` gradient.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn encoder_update(
    x: &Array<f32>,
    b_dec: &Array<f32>,
    feature_offsets: &Array<u32>,
    ids: &Array<u32>,
    pair_row: &Array<u32>,
    slopes: &Array<f32>,
    scales: &Array<f32>,
    hyper: &Array<f32>,
    w_enc: &Array<f32>,
    b_enc: &Array<f32>,
    m_w: &Array<f32>,
    v_w: &Array<f32>,
    m_b: &Array<f32>,
    v_b: &Array<f32>,
    w_enc_out: &mut Array<f32>,
    b_enc_out: &mut Array<f32>,
    m_w_out: &mut Array<f32>,
    v_w_out: &mut Array<f32>,
    m_b_out: &mut Array<f32>,
    v_b_out: &mut Array<f32>,
    g_b_enc: &mut Array<f32>,
    flags: &mut Array<Atomic<u32>>,
    tokens: u32,
    width: u32,
    cols: u32,
    main_pairs: u32,
) {
    let f = cube_index();
    if f < cols as usize {
        let unit = UNIT_POS as usize;
        let d = width as usize;
        let n = tokens;
        let start = feature_offsets[f] as usize;
        let end = feature_offsets[f + 1] as usize;
        let mut j = unit;
        while j < d {
            let g = encoder_gradient_at(
                x, b_dec, ids, pair_row, slopes, scales, start, end, n, d, j, main_pairs,
            );
            if non_finite(g) {
                flags[FLAG_W_ENC].fetch_max(1u32);
            }
            let at = f * d + j;
            w_enc_out[at] = adam(w_enc[at], g, m_w, v_w, m_w_out, v_w_out, at, hyper);
            j += CUBE as usize;
        }
        if unit == 0 {
            let g = encoder_bias_gradient(ids, slopes, scales, start, end, main_pairs);
            if non_finite(g) {
                flags[FLAG_B_ENC].fetch_max(1u32);
            }
            g_b_enc[f] = g;
            b_enc_out[f] = adam(b_enc[f], g, m_b, v_b, m_b_out, v_b_out, f, hyper);
        }
    }
}

/// Decoder rows: gradients from each feature's pairs, minus their component along the row,
/// Adam, and the row rescaled to unit norm. The gradient row waits in `w_dec_out`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn decoder_update(
    err: &Array<f32>,
    feature_offsets: &Array<u32>,
    ids: &Array<u32>,
    pair_row: &Array<u32>,
    values: &Array<f32>,
    scales: &Array<f32>,
    hyper: &Array<f32>,
    w_dec: &Array<f32>,
    m_in: &Array<f32>,
    v_in: &Array<f32>,
    w_dec_out: &mut Array<f32>,
    m_out: &mut Array<f32>,
    v_out: &mut Array<f32>,
    flags: &mut Array<Atomic<u32>>,
    width: u32,
    cols: u32,
    main_pairs: u32,
) {
    let f = cube_index();
    // The whole cube takes the same branch: the sums below stay uniform.
    if f < cols as usize {
        let unit = UNIT_POS as usize;
        let d = width as usize;
        let mut scratch = SharedMemory::<f32>::new(CUBE as usize);
        let start = feature_offsets[f] as usize;
        let end = feature_offsets[f + 1] as usize;
        let mut parallel = 0.0f32;
        let mut j = unit;
        while j < d {
            let g = decoder_gradient_at(
                err, ids, pair_row, values, scales, start, end, d, j, main_pairs,
            );
            if non_finite(g) {
                flags[FLAG_W_DEC].fetch_max(1u32);
            }
            let at = f * d + j;
            w_dec_out[at] = g;
            parallel += g * w_dec[at];
            j += CUBE as usize;
        }
        let parallel = cube_sum(parallel, &mut scratch, unit);
        decoder_row_update(
            w_dec,
            m_in,
            v_in,
            w_dec_out,
            m_out,
            v_out,
            hyper,
            parallel,
            f,
            d,
            unit,
            &mut scratch,
        );
    }
}

/// The rest of feature `f`'s decoder update once its gradient row waits in `w_dec_out` and
/// `parallel` is the row's dot product with it: the component along the row removed, Adam,
/// and the row rescaled to unit norm. Every unit of the cube must call it.
#[cube]
#[allow(clippy::too_many_arguments)]
fn decoder_row_update(
    w_dec: &Array<f32>,
    m_in: &Array<f32>,
    v_in: &Array<f32>,
    w_dec_out: &mut Array<f32>,
    m_out: &mut Array<f32>,
    v_out: &mut Array<f32>,
    hyper: &Array<f32>,
    parallel: f32,
    f: usize,
    d: usize,
    unit: usize,
    scratch: &mut SharedMemory<f32>,
) {
    let mut norm = 0.0f32;
    let mut j = unit;
    while j < d {
        let at = f * d + j;
        let w = w_dec[at];
        let g = w_dec_out[at] - w * parallel;
        let w = adam(w, g, m_in, v_in, m_out, v_out, at, hyper);
        w_dec_out[at] = w;
        norm += w * w;
        j += CUBE as usize;
    }
    let norm = f32::sqrt(cube_sum(norm, scratch, unit));
    let min_positive = 1.175_494_4e-38f32;
    let norm = select(norm > min_positive, norm, min_positive);
    let mut j = unit;
    while j < d {
        let at = f * d + j;
        w_dec_out[at] = w_dec_out[at] / norm;
        j += CUBE as usize;
    }
}

/// The decoder bias: `dL/db_dec = main_scale * sum_t err_t - sum_f dL/db_enc[f] w_enc[f]`
/// from the partial column sums of both terms (summed in block order), then Adam. One unit
/// per column.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn bias_update(
    err_partials: &Array<f32>,
    encoder_partials: &Array<f32>,
    scales: &Array<f32>,
    hyper: &Array<f32>,
    b_dec: &Array<f32>,
    m_in: &Array<f32>,
    v_in: &Array<f32>,
    b_dec_out: &mut Array<f32>,
    m_out: &mut Array<f32>,
    v_out: &mut Array<f32>,
    flags: &mut Array<Atomic<u32>>,
    tokens: u32,
    width: u32,
    cols: u32,
) {
    let j = cube_index() * CUBE as usize + UNIT_POS as usize;
    let d = width as usize;
    if j < d {
        let g = bias_gradient_at(err_partials, encoder_partials, scales, tokens, d, cols, j);
        if non_finite(g) {
            flags[FLAG_B_DEC].fetch_max(1u32);
        }
        b_dec_out[j] = adam(b_dec[j], g, m_in, v_in, m_out, v_out, j, hyper);
    }
}

/// Element `j` of the decoder bias gradient from the partial column sums (summed in block
/// order): `main_scale * sum_t err_t - sum_f dL/db_enc[f] w_enc[f]`.
#[cube]
fn bias_gradient_at(
    err_partials: &Array<f32>,
    encoder_partials: &Array<f32>,
    scales: &Array<f32>,
    tokens: u32,
    d: usize,
    cols: u32,
    j: usize,
) -> f32 {
    let mut err = 0.0f32;
    for b in 0..(tokens as usize).div_ceil(ROWS_PER_BLOCK as usize) {
        err += err_partials[b * d + j];
    }
    let mut encoder = 0.0f32;
    for b in 0..(cols as usize).div_ceil(ROWS_PER_BLOCK as usize) {
        encoder += encoder_partials[b * d + j];
    }
    scales[0] * err - encoder
}

/// The gradients of one shard's pairs, for peers that sum them before the update: each
/// feature's encoder and decoder gradient rows and its encoder bias gradient, as the fused
/// passes above compute them (the decoder row before the removal of its component along the
/// row, which is linear and comes after the sum).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn feature_gradients(
    x: &Array<f32>,
    err: &Array<f32>,
    b_dec: &Array<f32>,
    feature_offsets: &Array<u32>,
    ids: &Array<u32>,
    pair_row: &Array<u32>,
    values: &Array<f32>,
    slopes: &Array<f32>,
    scales: &Array<f32>,
    g_w_enc: &mut Array<f32>,
    g_b_enc: &mut Array<f32>,
    g_w_dec: &mut Array<f32>,
    tokens: u32,
    width: u32,
    cols: u32,
    main_pairs: u32,
) {
    let f = cube_index();
    if f < cols as usize {
        let unit = UNIT_POS as usize;
        let d = width as usize;
        let start = feature_offsets[f] as usize;
        let end = feature_offsets[f + 1] as usize;
        let mut j = unit;
        while j < d {
            g_w_enc[f * d + j] = encoder_gradient_at(
                x, b_dec, ids, pair_row, slopes, scales, start, end, tokens, d, j, main_pairs,
            );
            g_w_dec[f * d + j] = decoder_gradient_at(
                err, ids, pair_row, values, scales, start, end, d, j, main_pairs,
            );
            j += CUBE as usize;
        }
        if unit == 0 {
            g_b_enc[f] = encoder_bias_gradient(ids, slopes, scales, start, end, main_pairs);
        }
    }
}

/// One shard's decoder bias gradient from the partial column sums, one unit per column.
#[cube(launch)]
pub(crate) fn bias_gradient(
    err_partials: &Array<f32>,
    encoder_partials: &Array<f32>,
    scales: &Array<f32>,
    g_b_dec: &mut Array<f32>,
    tokens: u32,
    width: u32,
    cols: u32,
) {
    let j = cube_index() * CUBE as usize + UNIT_POS as usize;
    let d = width as usize;
    if j < d {
        g_b_dec[j] = bias_gradient_at(err_partials, encoder_partials, scales, tokens, d, cols, j);
    }
}

/// Adam on every element of a `rows x width` parameter with a given gradient (the encoder
/// rows and both biases of a step whose gradients were summed over peers), one unit per
/// element.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn adam_update(
    param: &Array<f32>,
    grad: &Array<f32>,
    hyper: &Array<f32>,
    m_in: &Array<f32>,
    v_in: &Array<f32>,
    param_out: &mut Array<f32>,
    m_out: &mut Array<f32>,
    v_out: &mut Array<f32>,
    rows: u32,
    width: u32,
) {
    let i = cube_index() * CUBE as usize + UNIT_POS as usize;
    // `rows x width` elements: their count may pass `u32`.
    if i < rows as usize * width as usize {
        param_out[i] = adam(param[i], grad[i], m_in, v_in, m_out, v_out, i, hyper);
    }
}

/// The decoder rows' update from given gradients (summed over peers), one cube per feature:
/// the decoder pass above from the point where its gradient row is known.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn decoder_apply(
    grad: &Array<f32>,
    hyper: &Array<f32>,
    w_dec: &Array<f32>,
    m_in: &Array<f32>,
    v_in: &Array<f32>,
    w_dec_out: &mut Array<f32>,
    m_out: &mut Array<f32>,
    v_out: &mut Array<f32>,
    width: u32,
    cols: u32,
) {
    let f = cube_index();
    if f < cols as usize {
        let unit = UNIT_POS as usize;
        let d = width as usize;
        let mut scratch = SharedMemory::<f32>::new(CUBE as usize);
        let mut parallel = 0.0f32;
        let mut j = unit;
        while j < d {
            let at = f * d + j;
            let g = grad[at];
            w_dec_out[at] = g;
            parallel += g * w_dec[at];
            j += CUBE as usize;
        }
        let parallel = cube_sum(parallel, &mut scratch, unit);
        decoder_row_update(
            w_dec,
            m_in,
            v_in,
            w_dec_out,
            m_out,
            v_out,
            hyper,
            parallel,
            f,
            d,
            unit,
            &mut scratch,
        );
    }
}
