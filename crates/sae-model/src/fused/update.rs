//! The optimizer update of the host path in one pass over each parameter: for each decoder
//! row, the gradient's component along the row is removed, Adam moves the row and it is
//! rescaled to unit norm while it is in cache; the other parameters get Adam alone.
//!
//! The same operations as the tensor path's `remove_parallel_gradient`, `Adam::update` and
//! `normalize_rows`, row by row (the row sums may round differently from a backend's
//! reduction). Rows are independent, so the result does not depend on the number of threads.

use rayon::prelude::*;

use super::grads::{
    FEATURE_BLOCK, HostLossAndGrads, TokenPass, any_non_finite, dot, first_flagged,
};
use crate::adam::{Adam, update_element};
use crate::sae::SaeParams;

/// Parameter rows per parallel task (and per call of a `widest!` function).
const ROWS_PER_TASK: usize = 64;

/// Whether every gradient is finite; otherwise the name of the first parameter that is not,
/// in the order of [`PARAMETERS`](sae_kernels::step::PARAMETERS). A pass over the gradients, for
/// those summed over peers after the feature pass checked this peer's part.
pub(crate) fn first_non_finite(grads: &HostLossAndGrads) -> Option<&'static str> {
    let bad = |g: &[f32]| g.par_chunks(1 << 14).any(any_non_finite);
    first_flagged([
        bad(&grads.w_enc),
        bad(&grads.b_enc),
        bad(&grads.w_dec),
        bad(&grads.b_dec),
    ])
}

/// One update of `params` and the moments `m`, `v` with the gradients `grads`.
pub(crate) fn update(
    adam: &Adam,
    params: &mut SaeParams,
    grads: &HostLossAndGrads,
    m: &mut SaeParams,
    v: &mut SaeParams,
) {
    let d = params.d_model;
    let task = ROWS_PER_TASK * d;
    params
        .w_dec
        .par_chunks_mut(task)
        .zip(grads.w_dec.par_chunks(task))
        .zip(m.w_dec.par_chunks_mut(task))
        .zip(v.w_dec.par_chunks_mut(task))
        .for_each(|(((w, g), m), v)| decoder_rows_widest(adam, d, w, g, m, v));
    params
        .w_enc
        .par_chunks_mut(task)
        .zip(grads.w_enc.par_chunks(task))
        .zip(m.w_enc.par_chunks_mut(task))
        .zip(v.w_enc.par_chunks_mut(task))
        .for_each(|(((w, g), m), v)| adam_widest(adam, w, g, m, v));
    adam.update_slice(&mut params.b_enc, &grads.b_enc, &mut m.b_enc, &mut v.b_enc);
    adam.update_slice(&mut params.b_dec, &grads.b_dec, &mut m.b_dec, &mut v.b_dec);
}

/// [`update`] with the weight gradients of `pass`, each block of features' rows applied as
/// pass 2 sums them, while they are in cache: they are never written out, nor read back.
/// The same bits as [`TokenPass::gradients_into`] followed by [`update`]. `x` is the batch
/// of the token pass; `params` are the parameters it saw.
///
/// # Panics
///
/// If the gradients of `pass` are not [finite by bound](TokenPass::finite_by_bound).
pub(crate) fn update_in_pass(
    adam: &Adam,
    pass: &TokenPass<'_>,
    x: &[f32],
    params: &mut SaeParams,
    m: &mut SaeParams,
    v: &mut SaeParams,
) {
    let d = params.d_model;
    // Pass 2 reads the decoder bias of the token pass, which is updated last.
    let b_dec = params.b_dec.clone();
    let block = FEATURE_BLOCK * d;
    let blocks = params
        .w_dec
        .par_chunks_mut(block)
        .zip(m.w_dec.par_chunks_mut(block))
        .zip(v.w_dec.par_chunks_mut(block))
        .zip(params.w_enc.par_chunks_mut(block))
        .zip(m.w_enc.par_chunks_mut(block))
        .zip(v.w_enc.par_chunks_mut(block));
    pass.for_each_block(x, &b_dec, blocks, |item, g_enc, g_dec| {
        let (((((w_dec, m_dec), v_dec), w_enc), m_enc), v_enc) = item;
        decoder_rows_widest(adam, d, w_dec, g_dec, m_dec, v_dec);
        adam_widest(adam, w_enc, g_enc, m_enc, v_enc);
    });
    adam.update_slice(&mut params.b_enc, pass.b_enc(), &mut m.b_enc, &mut v.b_enc);
    adam.update_slice(&mut params.b_dec, pass.b_dec(), &mut m.b_dec, &mut v.b_dec);
}

/// The update of decoder rows of width `d`, each in turn: the gradient's component along the
/// row removed, Adam, and the row rescaled to unit norm. The projected gradient is formed
/// element by element as Adam takes it, and never stored.
#[inline(always)]
fn decoder_rows(adam: &Adam, d: usize, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let c = adam.constants();
    let rows = w.chunks_mut(d).zip(g.chunks(d));
    for ((w, g), (m, v)) in rows.zip(m.chunks_mut(d).zip(v.chunks_mut(d))) {
        let parallel = dot(g, w);
        for (((wi, &gi), mi), vi) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let projected = gi - *wi * parallel;
            update_element(&c, wi, projected, mi, vi);
        }
        let norm = dot(w, w).sqrt().max(f32::MIN_POSITIVE);
        for wi in w.iter_mut() {
            *wi /= norm;
        }
    }
}

sae_simd::widest! {
    fn decoder_rows_widest(
        adam: &Adam,
        d: usize,
        w: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) -> () = decoder_rows;
}

sae_simd::widest! {
    fn adam_widest(adam: &Adam, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) -> () =
        Adam::update_slice;
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::{Tensor, TensorData};

    use super::super::bits;
    use super::super::test_values as values;
    use super::*;
    use crate::sae::{host_vec, normalize_rows, remove_parallel_gradient};

    fn params(f: usize, d: usize, seed: u32) -> SaeParams {
        SaeParams {
            d_model: d,
            features: f,
            w_enc: values(f * d, seed),
            b_enc: values(f, seed + 1),
            w_dec: values(f * d, seed + 2),
            b_dec: values(d, seed + 3),
        }
    }

    fn tensor(v: &[f32], f: usize, d: usize) -> Tensor<NdArray, 2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [f, d]), &Default::default())
    }

    #[test]
    fn equals_the_tensor_path_and_keeps_decoder_rows_unit_norm() {
        let (f, d) = (130, 7);
        let mut p = params(f, d, 1);
        // Unit-norm decoder rows, as the step keeps them, and one zero row (no parallel part).
        p.w_dec = host_vec(normalize_rows(tensor(&p.w_dec, f, d)));
        p.w_dec[3 * d..4 * d].fill(0.0);
        let g = params(f, d, 10);
        let (mut m, mut v) = (params(f, d, 20), params(f, d, 30));
        for x in v.w_enc.iter_mut().chain(&mut v.w_dec) {
            *x = x.abs();
        }
        let adam = Adam::new(1e-2, 0.9, 0.999, 1e-8, 3);
        // The tensor path, as the device step runs it.
        let g_dec = remove_parallel_gradient(tensor(&p.w_dec, f, d), tensor(&g.w_dec, f, d));
        let (w_dec, m_dec, v_dec) = adam.update(
            tensor(&p.w_dec, f, d),
            g_dec,
            tensor(&m.w_dec, f, d),
            tensor(&v.w_dec, f, d),
        );
        let want_w_dec = host_vec(normalize_rows(w_dec));
        let (w_enc, ..) = adam.update(
            tensor(&p.w_enc, f, d),
            tensor(&g.w_enc, f, d),
            tensor(&m.w_enc, f, d),
            tensor(&v.w_enc, f, d),
        );
        let grads = HostLossAndGrads {
            w_enc: g.w_enc.clone(),
            b_enc: g.b_enc.clone(),
            w_dec: g.w_dec.clone(),
            b_dec: g.b_dec.clone(),
            ..HostLossAndGrads::default()
        };
        update(&adam, &mut p, &grads, &mut m, &mut v);
        // The backends' SIMD reciprocal (in Adam's denominator) is approximate, to about 1e-5
        // relative; the host update divides exactly. The zero row is all Adam step, so it
        // shows that error in full once normalised.
        let close = |name: &str, got: &[f32], want: &[f32]| {
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!(
                    (a - b).abs() <= 5e-5 * b.abs().max(1.0),
                    "{name}[{i}]: {a} vs {b}"
                );
            }
        };
        close("w_dec", &p.w_dec, &want_w_dec);
        close("m_dec", &m.w_dec, &host_vec(m_dec));
        close("v_dec", &v.w_dec, &host_vec(v_dec));
        close("w_enc", &p.w_enc, &host_vec(w_enc));
        for (r, row) in p.w_dec.chunks(d).enumerate() {
            let norm = dot(row, row).sqrt();
            assert!((norm - 1.0).abs() < 1e-6, "row {r}: norm {norm}");
        }
    }

    #[test]
    fn names_the_first_non_finite_gradient() {
        let g = |w_dec: f32| HostLossAndGrads {
            w_enc: vec![1.0; 4],
            b_enc: vec![0.0; 2],
            w_dec: vec![0.0, w_dec, 0.0, 0.0],
            b_dec: vec![0.0; 2],
            ..HostLossAndGrads::default()
        };
        assert_eq!(first_non_finite(&g(1.0)), None);
        assert_eq!(first_non_finite(&g(f32::NAN)), Some("w_dec"));
        assert_eq!(first_non_finite(&g(f32::NEG_INFINITY)), Some("w_dec"));
    }

    /// Every copy of the row updates that `sae_simd::widest!` runs on this CPU computes the
    /// baseline build's bits, on rows long enough for the widest vectors (with a tail).
    #[test]
    fn the_widest_row_updates_compute_the_baselines_bits() {
        let (d, rows) = (389, 3);
        let adam = Adam::new(1e-3, 0.9, 0.999, 1e-8, 3);
        let squares = |v: Vec<f32>| v.iter().map(|x| x * x).collect::<Vec<_>>();
        let len = rows * d;
        let start = [
            values(len, 1),
            values(len, 2),
            values(len, 3),
            squares(values(len, 4)),
        ];
        let g = values(len, 7);
        for level in sae_simd::Level::ALL {
            let [mut w, dw, mut m, mut v] = start.clone();
            let [mut wide_w, _, mut wide_m, mut wide_v] = start.clone();
            decoder_rows(&adam, d, &mut w, &dw, &mut m, &mut v);
            sae_simd::capped(level, || {
                let (m, v) = (&mut wide_m, &mut wide_v);
                decoder_rows_widest(&adam, d, &mut wide_w, &dw, m, v)
            });
            let rows = [(&wide_w, &w), (&wide_m, &m), (&wide_v, &v)];
            for ((got, want), what) in rows.into_iter().zip(["row", "m", "v"]) {
                assert_eq!(bits(got), bits(want), "decoder {what}, {level:?}");
            }
            adam.update_slice(&mut w, &g, &mut m, &mut v);
            sae_simd::capped(level, || {
                adam_widest(&adam, &mut wide_w, &g, &mut wide_m, &mut wide_v)
            });
            let rows = [(&wide_w, &w), (&wide_m, &m), (&wide_v, &v)];
            for ((got, want), what) in rows.into_iter().zip(["row", "m", "v"]) {
                assert_eq!(bits(got), bits(want), "encoder {what}, {level:?}");
            }
        }
    }

    /// The update applied block by block as pass 2 sums the gradients gives the bits of the
    /// gradients written out and then applied, for both activations, with and without
    /// auxiliary pairs, over a last block of fewer features, under every vector width.
    #[test]
    fn the_update_in_pass_equals_the_update_of_stored_gradients() {
        use sae_alloc::{ScoreMatrix, row_topk};

        use super::super::grads::{HostParams, PairAffinities, Residuals, WholeBatch, token_pass};
        use super::super::test_spec;
        use crate::rule::Activation;

        let (n, f, d) = (40, 130, 389);
        let mut start = params(f, d, 1);
        start.w_dec = host_vec(normalize_rows(tensor(&start.w_dec, f, d)));
        let moments = |seed| {
            let mut m = params(f, d, seed);
            for x in m.w_enc.iter_mut().chain(&mut m.w_dec) {
                *x = x.abs();
            }
            m
        };
        let x = values(n * d, 5);
        let scores = values(n * f, 9);
        let selection = row_topk(&ScoreMatrix::new(&scores, n, f).unwrap(), 5).unwrap();
        let aux = row_topk(&ScoreMatrix::new(&values(n * f, 11), n, f).unwrap(), 3).unwrap();
        let adam = Adam::new(1e-3, 0.9, 0.999, 1e-8, 3);
        for level in sae_simd::Level::ALL {
            for activation in [Activation::Relu, Activation::Identity] {
                for aux_selection in [None, Some(&aux)] {
                    let spec = test_spec(
                        &selection,
                        aux_selection,
                        activation,
                        PairAffinities::Recomputed,
                    );
                    let run = |in_pass: bool| {
                        let (mut p, mut m, mut v) = (start.clone(), moments(20), moments(30));
                        let mut residuals = Residuals::default();
                        let old = p.clone();
                        let pass = token_pass(
                            &HostParams::from(&old),
                            &x,
                            &spec,
                            &mut residuals,
                            &mut WholeBatch,
                        )
                        .unwrap();
                        assert!(pass.finite_by_bound());
                        sae_simd::capped(level, || {
                            if in_pass {
                                update_in_pass(&adam, &pass, &x, &mut p, &mut m, &mut v);
                            } else {
                                let mut grads = HostLossAndGrads::default();
                                pass.gradients_into(&x, &old.b_dec, &mut grads);
                                update(&adam, &mut p, &grads, &mut m, &mut v);
                            }
                        });
                        [p, m, v]
                    };
                    let (fused, stored) = (run(true), run(false));
                    let at = format!("{level:?}, {activation:?}, aux {}", aux_selection.is_some());
                    for ((got, want), what) in fused.iter().zip(&stored).zip(["p", "m", "v"]) {
                        assert_eq!(bits(&got.w_enc), bits(&want.w_enc), "{what} w_enc, {at}");
                        assert_eq!(bits(&got.b_enc), bits(&want.b_enc), "{what} b_enc, {at}");
                        assert_eq!(bits(&got.w_dec), bits(&want.w_dec), "{what} w_dec, {at}");
                        assert_eq!(bits(&got.b_dec), bits(&want.b_dec), "{what} b_dec, {at}");
                    }
                    assert_ne!(
                        bits(&fused[0].w_enc),
                        bits(&start.w_enc),
                        "{at}: nothing moved"
                    );
                }
            }
        }
    }
}
