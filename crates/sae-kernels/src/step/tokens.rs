//! The token pass: one cube per token computes its codes at the selected pairs, its
//! reconstruction error, and each pair's gradient of the code (before the loss's scale).
//!
//! The main and the auxiliary pairs are written into one pair space: main pair `p` is pair
//! `p`, auxiliary pair `p` is pair `P + p`; error rows are `t` (main: `x - x_hat`) and
//! `N + t` (auxiliary: `e - e_hat`), so the feature pass treats both alike. A pair whose
//! selected score is `-inf` (the padding of the auxiliary row top-k) is inactive: code and
//! gradient 0.

use cubecl::prelude::*;

use super::reduce::cube_sum;
use crate::key::{CUBE, cube_index};

/// Bits of `-inf`, the score of a padding pair.
const NEG_INFINITY_BITS: u32 = 0xFF80_0000;

/// Codes and slopes of the pairs `start..end` of token `t` (units stride over them), into
/// pair slots `base + p`; the pairs' error row is `row`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn codes(
    affinities: &Array<f32>,
    features: &Array<u32>,
    scores: &Array<f32>,
    pair_row: &mut Array<u32>,
    pair_feature: &mut Array<u32>,
    values: &mut Array<f32>,
    slopes: &mut Array<f32>,
    t: usize,
    row: u32,
    start: usize,
    end: usize,
    base: usize,
    cols: usize,
    unit: usize,
    #[comptime] relu: bool,
) {
    let mut p = start + unit;
    while p < end {
        let f = features[p];
        let u = affinities[t * cols + f as usize];
        let mut v = u;
        let mut slope = 1.0f32;
        if relu {
            v = select(u > 0.0f32, u, 0.0f32);
            slope = select(u > 0.0f32, 1.0f32, 0.0f32);
        }
        if u32::reinterpret(scores[p]) == NEG_INFINITY_BITS {
            v = 0.0f32;
            slope = 0.0f32;
        }
        let q = base + p;
        pair_row[q] = row;
        pair_feature[q] = f;
        values[q] = v;
        slopes[q] = slope;
        p += CUBE as usize;
    }
}

/// Each pair's `slope * (err_row . w_dec[f])`, one unit per pair (`d` terms in order).
#[cube]
#[allow(clippy::too_many_arguments)]
fn pair_grads(
    w_dec: &Array<f32>,
    err: &Array<f32>,
    features: &Array<u32>,
    slopes: &mut Array<f32>,
    row: usize,
    start: usize,
    end: usize,
    base: usize,
    d: usize,
    unit: usize,
) {
    let mut p = start + unit;
    while p < end {
        let w = features[p] as usize * d;
        let mut dot = 0.0f32;
        for j in 0..d {
            dot += err[row * d + j] * w_dec[w + j];
        }
        let q = base + p;
        slopes[q] *= dot;
        p += CUBE as usize;
    }
}

/// The token pass (see the module docs). `token_sse[t]` gets `||x_t - x_hat_t||^2`,
/// `token_aux[t]` gets `||e_t - e_hat_t||^2`, `aux_active[0]` becomes 1 when any auxiliary
/// pair is not padding.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn token_pass(
    x: &Array<f32>,
    b_dec: &Array<f32>,
    affinities: &Array<f32>,
    w_dec: &Array<f32>,
    main_offsets: &Array<u32>,
    main_features: &Array<u32>,
    main_scores: &Array<f32>,
    aux_offsets: &Array<u32>,
    aux_features: &Array<u32>,
    aux_scores: &Array<f32>,
    pair_row: &mut Array<u32>,
    pair_feature: &mut Array<u32>,
    values: &mut Array<f32>,
    slopes: &mut Array<f32>,
    err: &mut Array<f32>,
    token_sse: &mut Array<f32>,
    token_aux: &mut Array<f32>,
    aux_active: &mut Array<Atomic<u32>>,
    tokens: u32,
    width: u32,
    cols: u32,
    main_pairs: u32,
    #[comptime] relu: bool,
    #[comptime] with_aux: bool,
) {
    let t = cube_index();
    let n = tokens as usize;
    if t < n {
        let unit = UNIT_POS as usize;
        let d = width as usize;
        let mut scratch = SharedMemory::<f32>::new(CUBE as usize);
        let main_start = main_offsets[t] as usize;
        let main_end = main_offsets[t + 1] as usize;
        codes(
            affinities,
            main_features,
            main_scores,
            pair_row,
            pair_feature,
            values,
            slopes,
            t,
            t as u32,
            main_start,
            main_end,
            0usize,
            cols as usize,
            unit,
            relu,
        );
        sync_storage();
        sync_cube();
        // err_t = (x_t - b_dec) - sum_p v_p w_dec[f], the sum in pair order.
        let mut sse = 0.0f32;
        let mut j = unit;
        while j < d {
            let mut sum = 0.0f32;
            for p in main_start..main_end {
                sum += values[p] * w_dec[main_features[p] as usize * d + j];
            }
            let e = (x[t * d + j] - b_dec[j]) - sum;
            err[t * d + j] = e;
            sse += e * e;
            j += CUBE as usize;
        }
        let sse = cube_sum(sse, &mut scratch, unit);
        sync_storage();
        sync_cube();
        pair_grads(
            w_dec,
            err,
            main_features,
            slopes,
            t,
            main_start,
            main_end,
            0usize,
            d,
            unit,
        );
        if unit == 0 {
            token_sse[t] = sse;
        }
        if with_aux {
            let aux_start = aux_offsets[t] as usize;
            let aux_end = aux_offsets[t + 1] as usize;
            let base = main_pairs as usize;
            codes(
                affinities,
                aux_features,
                aux_scores,
                pair_row,
                pair_feature,
                values,
                slopes,
                t,
                (n + t) as u32,
                aux_start,
                aux_end,
                base,
                cols as usize,
                unit,
                relu,
            );
            // Whether any auxiliary pair is more than padding (without one, the auxiliary
            // loss is off, as on the host).
            let mut p = aux_start + unit;
            let mut active = false;
            while p < aux_end {
                active = active || u32::reinterpret(aux_scores[p]) != NEG_INFINITY_BITS;
                p += CUBE as usize;
            }
            if active {
                aux_active[0].fetch_max(1u32);
            }
            sync_storage();
            sync_cube();
            // a_t = e_t - sum_p v_p w_dec[f] over the auxiliary pairs.
            let mut num = 0.0f32;
            let mut j = unit;
            while j < d {
                let mut sum = 0.0f32;
                for p in aux_start..aux_end {
                    sum += values[base + p] * w_dec[aux_features[p] as usize * d + j];
                }
                let a = err[t * d + j] - sum;
                err[(n + t) * d + j] = a;
                num += a * a;
                j += CUBE as usize;
            }
            let num = cube_sum(num, &mut scratch, unit);
            sync_storage();
            sync_cube();
            pair_grads(
                w_dec,
                err,
                aux_features,
                slopes,
                n + t,
                aux_start,
                aux_end,
                base,
                d,
                unit,
            );
            if unit == 0 {
                token_aux[t] = num;
            }
        }
    }
}
