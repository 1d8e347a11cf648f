//! Loss and exact gradients of the sparse step in two passes of plain loops over the
//! selected pairs.
//!
//! It computes the same function as [`crate::sparse`] (and the dense oracle), with the
//! gradients written out by hand instead of taken by autodiff, so no `[P, d]` intermediate is
//! ever allocated: the gather path materialises about ten of them per step, which makes it
//! memory-bound on a CPU. With `c_t = x_t - b_dec`, `u_p = c_t . w_enc[f] + b_enc[f]`,
//! `v_p = act(u_p)`, reconstruction `x_hat_t = b_dec + sum_p v_p w_dec[f]` and
//! `G_t = dL/dx_hat_t`:
//!
//! - `dL/dw_dec[f] = sum_p v_p G_t`, `dL/du_p = (G_t . w_dec[f]) act'(u_p)`,
//! - `dL/dw_enc[f] = sum_p dL/du_p c_t`, `dL/db_enc[f] = sum_p dL/du_p`,
//! - `dL/db_dec = sum_t G_t - sum_p dL/du_p w_enc[f]`,
//!
//! and the same for the auxiliary pairs, whose target is the detached residual.
//!
//! Pass 1 takes each pair's code by blocks of tokens, then the reconstruction feature by
//! feature (`w_dec` read in order, each token's sum still in ascending feature order), the
//! errors and loss terms by blocks of tokens, and each pair's `dL/du` feature by feature
//! again; pass 2 runs over feature blocks (the weight gradients, each feature's pairs in
//! token order). Every sum has a fixed order, so results do not depend on the number of
//! threads.

use rayon::prelude::*;
use sae_alloc::Selection;
use sae_kernels::step::PARAMETERS;

use crate::rule::Activation;
use crate::sae::SaeParams;

/// Tokens per block of the first pass.
const TOKEN_BLOCK: usize = 32;
/// Least tokens per range of the reconstruction by feature: at k = 32 and F = 16384, 512
/// tokens use each decoder row once on average.
const RANGE_TOKENS: usize = 512;
/// Features per block of the second pass.
pub(crate) const FEATURE_BLOCK: usize = 64;
/// Encoder rows per partial sum of the `b_dec` gradient's encoder part.
const ENCODER_BLOCK: usize = 1024;

/// Parameters as host slices (`w_enc`, `w_dec`: `[F, d]` row-major).
#[derive(Debug, Clone, Copy)]
pub struct HostParams<'a> {
    /// Encoder weights `[F, d]`.
    pub w_enc: &'a [f32],
    /// Encoder bias `[F]`.
    pub b_enc: &'a [f32],
    /// Decoder weights `[F, d]`.
    pub w_dec: &'a [f32],
    /// Decoder bias `[d]`.
    pub b_dec: &'a [f32],
}

impl<'a> From<&'a SaeParams> for HostParams<'a> {
    fn from(p: &'a SaeParams) -> Self {
        Self {
            w_enc: &p.w_enc,
            b_enc: &p.b_enc,
            w_dec: &p.w_dec,
            b_dec: &p.b_dec,
        }
    }
}

impl HostParams<'_> {
    fn d(&self) -> usize {
        self.b_dec.len()
    }
    fn enc_row(&self, f: u32) -> &[f32] {
        let d = self.d();
        &self.w_enc[f as usize * d..(f as usize + 1) * d]
    }
}

/// What the fused loss needs besides parameters and batch.
#[derive(Debug, Clone, Copy)]
pub struct HostLossSpec<'a> {
    /// The batch's selection.
    pub selection: &'a Selection,
    /// The auxiliary selection, if the auxiliary loss is on. It is on when the batch has
    /// auxiliary pairs: pass `None` for a selection without pairs, unless other peers of a
    /// sharded batch have some (every token's residual then counts in the loss).
    pub aux_selection: Option<&'a Selection>,
    /// Activation of the selected affinities.
    pub activation: Activation,
    /// Scale of the reconstruction term: `1 / sum ||x - mean(x)||^2` (FVU) or `1 / (N d)`
    /// (MSE).
    pub recon_scale: f64,
    /// Coefficient of the auxiliary loss.
    pub aux_coef: f32,
    /// Where each pair's affinity comes from.
    pub affinities: PairAffinities<'a>,
}

/// Where the fused loss takes the affinity `u_p` of each selected pair from.
#[derive(Debug, Clone, Copy)]
pub enum PairAffinities<'a> {
    /// Recomputed from the parameters: a dot product of `d` per pair.
    Recomputed,
    /// Read from the `[N, F]` affinities the selections were made on: one value per pair,
    /// each at its own place in a matrix far larger than the caches.
    Matrix(&'a [f32]),
    /// The selections' own scores, which must be the affinities at their pairs, bit for bit:
    /// so are those of every rule of `sae-alloc` (and of its sharded rules) applied to the
    /// affinities, and of the auxiliary selection. Read in the order of the pairs.
    SelectionScores,
}

/// Loss values and gradients as host vectors, shaped like the parameters.
#[derive(Debug, Clone, Default)]
pub struct HostLossAndGrads {
    /// Sum of squared reconstruction errors.
    pub sse: f64,
    /// Auxiliary loss before its coefficient (0 without auxiliary pairs).
    pub aux: f64,
    /// Gradient of `w_enc`, `[F, d]`.
    pub w_enc: Vec<f32>,
    /// Gradient of `b_enc`, `[F]`.
    pub b_enc: Vec<f32>,
    /// Gradient of `w_dec`, `[F, d]`.
    pub w_dec: Vec<f32>,
    /// Gradient of `b_dec`, `[d]`.
    pub b_dec: Vec<f32>,
    /// The first gradient, in the order of [`PARAMETERS`], that holds a value that is not
    /// finite; `None` when all are finite. Checked block by block as the gradients are
    /// summed, while the block is in cache, so no second pass reads them. On a batch split
    /// over peers it describes this peer's part only.
    pub non_finite: Option<&'static str>,
}

/// The first of [`PARAMETERS`] whose flag is set.
pub(crate) fn first_flagged(flags: [bool; PARAMETERS.len()]) -> Option<&'static str> {
    PARAMETERS
        .into_iter()
        .zip(flags)
        .find_map(|(name, flagged)| flagged.then_some(name))
}

/// Whether `values` holds a NaN or an infinity (without short-circuit, so it vectorises).
#[inline(always)]
pub(crate) fn any_non_finite(values: &[f32]) -> bool {
    values.iter().fold(false, |bad, v| bad | !v.is_finite())
}

/// The largest of the magnitudes of `max` and of `values`; NaN if one of them is NaN.
///
/// Taken on bit patterns: with the sign bit cleared, they order as the magnitudes do, and a
/// NaN's lie above infinity's. An integer maximum vectorises without a NaN test.
#[inline(always)]
fn max_abs(max: f32, values: &[f32]) -> f32 {
    const MAGNITUDE: u32 = !(1 << 31);
    let bits = values.iter().fold(max.to_bits() & MAGNITUDE, |m, v| {
        m.max(v.to_bits() & MAGNITUDE)
    });
    f32::from_bits(bits)
}

/// Per-token rows of the batch's error `x - x_hat` and of the auxiliary residual's error,
/// `[N, d]` each (the second empty without auxiliary pairs): the token pass's output, kept
/// from step to step, since a fresh `[N, d]` buffer costs its page faults on every step.
#[derive(Debug, Clone, Default)]
pub struct Residuals {
    main: Vec<f32>,
    aux: Vec<f32>,
}

#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

#[inline(always)]
fn activate(activation: Activation, u: f32) -> (f32, f32) {
    match activation {
        Activation::Relu if u > 0.0 => (u, 1.0),
        Activation::Relu => (0.0, 0.0),
        Activation::Identity => (u, 1.0),
    }
}

/// Per pair of one selection, in the selection's (token-major) order: the code `v_p` and
/// the activation's slope `act'(u_p)`.
#[derive(Debug, Default)]
struct PairCodes {
    values: Vec<f32>,
    slopes: Vec<f32>,
}

/// The codes and slopes of the pairs of the tokens `rows` of `selection`.
#[inline(always)]
fn codes_block(
    params: &HostParams<'_>,
    x: &[f32],
    rows: std::ops::Range<usize>,
    selection: &Selection,
    affinities: PairAffinities<'_>,
    activation: Activation,
) -> PairCodes {
    let d = params.d();
    let features = params.b_enc.len();
    let mut out = PairCodes::default();
    let mut centred = vec![0.0f32; d];
    for t in rows {
        let (pairs, scores) = selection.row(t);
        if let PairAffinities::Recomputed = affinities {
            for ((c, xi), b) in centred
                .iter_mut()
                .zip(&x[t * d..(t + 1) * d])
                .zip(params.b_dec)
            {
                *c = xi - b;
            }
        }
        for (&f, &score) in pairs.iter().zip(scores) {
            let u = match affinities {
                PairAffinities::SelectionScores => score,
                PairAffinities::Matrix(z) => z[t * features + f as usize],
                PairAffinities::Recomputed => {
                    dot(&centred, params.enc_row(f)) + params.b_enc[f as usize]
                }
            };
            let (v, slope) = activate(activation, u);
            out.values.push(v);
            out.slopes.push(slope);
        }
    }
    out
}

sae_simd::widest! {
    fn codes_block_widest(
        params: &HostParams<'_>,
        x: &[f32],
        rows: std::ops::Range<usize>,
        selection: &Selection,
        affinities: PairAffinities<'_>,
        activation: Activation,
    ) -> PairCodes = codes_block;
}

/// The codes and slopes of every pair of `selection`, by blocks of tokens.
fn pair_codes(
    params: &HostParams<'_>,
    x: &[f32],
    selection: &Selection,
    affinities: PairAffinities<'_>,
    activation: Activation,
) -> PairCodes {
    let n = selection.rows();
    let blocks: Vec<PairCodes> = (0..n.div_ceil(TOKEN_BLOCK))
        .into_par_iter()
        .map(|b| {
            let rows = b * TOKEN_BLOCK..((b + 1) * TOKEN_BLOCK).min(n);
            codes_block_widest(params, x, rows, selection, affinities, activation)
        })
        .collect();
    let mut codes = PairCodes::default();
    for block in blocks {
        codes.values.extend(block.values);
        codes.slopes.extend(block.slopes);
    }
    codes
}

/// What the passes read of one pair.
#[derive(Debug, Clone, Copy)]
struct PairRecord {
    token: u32,
    /// The code `v_p`.
    value: f32,
    /// `dL/du_p / grad_scale` once pass 1 is done; the slope `act'(u_p)` until then.
    grad: f32,
}

/// One selection's pairs by feature, each feature's in token order, as records read in
/// sequence: by the reconstruction, by the `dL/du` of pass 1 and by pass 2.
struct ByFeature {
    offsets: Vec<usize>,
    pairs: Vec<PairRecord>,
}

impl ByFeature {
    fn new(selection: &Selection, codes: &PairCodes) -> Self {
        let (offsets, ids) = selection.feature_major();
        let tokens = selection.token_ids();
        let pairs = ids
            .par_iter()
            .with_min_len(1 << 12)
            .map(|&p| PairRecord {
                token: tokens[p as usize],
                value: codes.values[p as usize],
                grad: codes.slopes[p as usize],
            })
            .collect();
        Self { offsets, pairs }
    }

    fn features(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The pairs of feature `f`, in token order.
    fn of_feature(&self, f: usize) -> &[PairRecord] {
        &self.pairs[self.offsets[f]..self.offsets[f + 1]]
    }

    /// Turns each pair's slope into `act'(u_p) (dot_scale (r_t . w_dec[f]))`, `r_t` its
    /// token's row of `rows`, by blocks of features ([`grads_block`]).
    fn take_grads(&mut self, rows: &[f32], w_dec: &[f32], dot_scale: f32) {
        let features = self.features();
        let mut blocks = Vec::with_capacity(features.div_ceil(FEATURE_BLOCK));
        let mut rest = &mut self.pairs[..];
        for first in (0..features).step_by(FEATURE_BLOCK) {
            let end = (first + FEATURE_BLOCK).min(features);
            let (block, tail) = rest.split_at_mut(self.offsets[end] - self.offsets[first]);
            blocks.push((first..end, block));
            rest = tail;
        }
        let offsets = &self.offsets;
        blocks.into_par_iter().for_each(|(features, pairs)| {
            grads_block_widest(features, offsets, pairs, rows, w_dec, dot_scale);
        });
    }
}

/// [`ByFeature::take_grads`] for the features `features`, whose pairs are `pairs`: feature
/// by feature, so that `w_dec` is read in order.
#[inline(always)]
fn grads_block(
    features: std::ops::Range<usize>,
    offsets: &[usize],
    pairs: &mut [PairRecord],
    rows: &[f32],
    w_dec: &[f32],
    dot_scale: f32,
) {
    let d = w_dec.len() / (offsets.len() - 1);
    let first = offsets[features.start];
    for f in features {
        let w = &w_dec[f * d..(f + 1) * d];
        for pair in &mut pairs[offsets[f] - first..offsets[f + 1] - first] {
            let t = pair.token as usize;
            pair.grad *= dot_scale * dot(&rows[t * d..(t + 1) * d], w);
        }
    }
}

sae_simd::widest! {
    fn grads_block_widest(
        features: std::ops::Range<usize>,
        offsets: &[usize],
        pairs: &mut [PairRecord],
        rows: &[f32],
        w_dec: &[f32],
        dot_scale: f32,
    ) -> () = grads_block;
}

/// The reconstruction sums `sum_p v_p w_dec[f]` of the tokens `tokens` into `rows` (a
/// `d`-wide row per token), feature by feature: `w_dec` is read once and in order, where a
/// loop over tokens would gather a random row per pair, and each token's sum still adds its
/// features in ascending order (a selection's rows are sorted), so the bits are a per-token
/// loop's.
#[inline(always)]
fn reconstruct_range(
    w_dec: &[f32],
    by_feature: &ByFeature,
    tokens: std::ops::Range<usize>,
    rows: &mut [f32],
) {
    let d = rows.len() / tokens.len().max(1);
    rows.fill(0.0);
    for f in 0..by_feature.features() {
        let pairs = by_feature.of_feature(f);
        let first = pairs.partition_point(|pair| (pair.token as usize) < tokens.start);
        let w = &w_dec[f * d..(f + 1) * d];
        for pair in &pairs[first..] {
            let t = pair.token as usize;
            if t >= tokens.end {
                break;
            }
            let i = t - tokens.start;
            axpy(pair.value, w, &mut rows[i * d..(i + 1) * d]);
        }
    }
}

sae_simd::widest! {
    fn reconstruct_range_widest(
        w_dec: &[f32],
        by_feature: &ByFeature,
        tokens: std::ops::Range<usize>,
        rows: &mut [f32],
    ) -> () = reconstruct_range;
}

/// [`reconstruct_range`] over all the tokens of `rows` (`[N, d]`), one range of tokens per
/// thread, each range at least [`RANGE_TOKENS`] long: each range reads all of `w_dec`, which
/// pays while its tokens use each row a few times. The split changes no bit.
fn reconstruct(w_dec: &[f32], d: usize, by_feature: &ByFeature, rows: &mut [f32]) {
    let n = rows.len() / d.max(1);
    if n == 0 {
        return;
    }
    let per_range = n
        .div_ceil(rayon::current_num_threads().max(1))
        .max(RANGE_TOKENS);
    rows.par_chunks_mut(per_range * d)
        .enumerate()
        .for_each(|(r, chunk)| {
            let start = r * per_range;
            let tokens = start..start + chunk.len() / d;
            reconstruct_range_widest(w_dec, by_feature, tokens, chunk);
        });
}

/// What pass 1 sums over one block of tokens.
#[derive(Debug, Default)]
struct TokenBlock {
    sse: f64,
    aux_num: f64,
    aux_den: f64,
    /// `sum_t G_t` over the block's tokens: the decoder's part of the `b_dec` gradient (the
    /// encoder's part, `-sum_p dL/du_p w_enc[f]`, is `-W_enc^T` times the `b_enc` gradient,
    /// formed once that is summed from the pairs, before pass 2).
    b_dec_main: Vec<f32>,
    /// The largest magnitude in the block's error rows, auxiliary error rows and centred
    /// tokens `x_t - b_dec` (NaN if one holds a NaN): what bounds the weight gradients.
    max_abs: [f32; 3],
}

/// Pass 1 for the tokens `rows`, whose reconstruction sums are in `err` and, with auxiliary
/// pairs (`aux_err` not empty), the auxiliary ones in `aux_err`: turns them into each
/// token's error `x - x_hat` and the auxiliary residual's error `e - e_hat`, and sums the
/// loss terms.
#[inline(always)]
fn token_block(
    x: &[f32],
    b_dec: &[f32],
    rows: std::ops::Range<usize>,
    main_scale: f32,
    err: &mut [f32],
    aux_err: &mut [f32],
) -> TokenBlock {
    let d = b_dec.len();
    let mut block = TokenBlock {
        b_dec_main: vec![0.0; d],
        ..TokenBlock::default()
    };
    let mut centred = vec![0.0f32; d];
    for (i, t) in rows.enumerate() {
        for ((c, xi), b) in centred.iter_mut().zip(&x[t * d..(t + 1) * d]).zip(b_dec) {
            *c = xi - b;
        }
        block.max_abs[2] = max_abs(block.max_abs[2], &centred);
        // err_t = x_t - b_dec - sum_p v_p w_dec[f] = c_t - sum.
        let e = &mut err[i * d..(i + 1) * d];
        for (ei, c) in e.iter_mut().zip(&centred) {
            *ei = c - *ei;
        }
        block.sse += e.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
        block.max_abs[0] = max_abs(block.max_abs[0], e);
        // G_t = -2 s err_t.
        axpy(main_scale, e, &mut block.b_dec_main);
        if !aux_err.is_empty() {
            let a = &mut aux_err[i * d..(i + 1) * d];
            for (ai, ei) in a.iter_mut().zip(e.iter()) {
                *ai = ei - *ai;
            }
            block.aux_num += a.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
            block.aux_den += e.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
            block.max_abs[1] = max_abs(block.max_abs[1], a);
        }
    }
    block
}

sae_simd::widest! {
    fn token_block_widest(
        x: &[f32],
        b_dec: &[f32],
        rows: std::ops::Range<usize>,
        main_scale: f32,
        err: &mut [f32],
        aux_err: &mut [f32],
    ) -> TokenBlock = token_block;
}

/// One selection's pairs as pass 2 reads them, with the rows their weight gradients sum.
struct FeaturePairs<'a> {
    by_feature: ByFeature,
    /// Per-token rows `dL/dx_hat_t / row_scale` (`[N, d]`).
    rows: &'a [f32],
    /// Scale turning `rows` into `dL/dx_hat`.
    row_scale: f32,
    /// Scale turning each record's `grad` into `dL/du`.
    grad_scale: f32,
}

impl FeaturePairs<'_> {
    /// The pairs of feature `f`, in token order.
    fn of_feature(&self, f: usize) -> &[PairRecord] {
        self.by_feature.of_feature(f)
    }
}

/// Pass 2 for feature `f`: adds its pairs' contributions to its weight gradient rows.
#[inline(always)]
fn feature_grads(
    pairs: &FeaturePairs<'_>,
    f: usize,
    x: &[f32],
    b_dec: &[f32],
    g_enc: &mut [f32],
    g_dec: &mut [f32],
) {
    let d = b_dec.len();
    for pair in pairs.of_feature(f) {
        let t = pair.token as usize;
        axpy(
            pairs.row_scale * pair.value,
            &pairs.rows[t * d..(t + 1) * d],
            g_dec,
        );
        let gu = pairs.grad_scale * pair.grad;
        if gu != 0.0 {
            for ((g, xi), b) in g_enc.iter_mut().zip(&x[t * d..(t + 1) * d]).zip(b_dec) {
                *g += gu * (xi - b);
            }
        }
    }
}

/// Pass 2 for the block `b` of [`FEATURE_BLOCK`] features: clears and sums its weight
/// gradient rows (`enc`, `dec`: `[FEATURE_BLOCK, d]`, fewer in the last block) over every
/// set of pairs, and says whether each holds a non-finite value, checked while in cache.
#[inline(always)]
fn feature_block(
    b: usize,
    enc: &mut [f32],
    dec: &mut [f32],
    sets: &[FeaturePairs<'_>],
    x: &[f32],
    b_dec: &[f32],
) -> [bool; 2] {
    let d = b_dec.len();
    for (i, (enc, dec)) in enc.chunks_mut(d).zip(dec.chunks_mut(d)).enumerate() {
        let f = b * FEATURE_BLOCK + i;
        enc.fill(0.0);
        dec.fill(0.0);
        for set in sets {
            feature_grads(set, f, x, b_dec, enc, dec);
        }
    }
    [any_non_finite(enc), any_non_finite(dec)]
}

/// The `b_enc` gradient of the features of `bias`, the block `b` of [`FEATURE_BLOCK`]:
/// `dL/du` summed over each feature's pairs in the order of pass 2. Returns a bound on the
/// magnitude of every value pass 2 forms for these features' weight rows (NaN if a term is
/// NaN), given `row_bounds[s]`, the largest magnitude in the rows of `sets[s]`, and
/// `centred_bound`, that of the centred tokens: a row's gradient is a sum of products of
/// one of those rows with a pair's factor, so it is at most the sum of the factors'
/// magnitudes times the largest row magnitude (at least 1, which also bounds the factors).
fn bias_block(
    b: usize,
    bias: &mut [f32],
    sets: &[FeaturePairs<'_>],
    row_bounds: &[f32],
    centred_bound: f32,
) -> f64 {
    let mut bound = 0.0f64;
    for (i, g_bias) in bias.iter_mut().enumerate() {
        let f = b * FEATURE_BLOCK + i;
        *g_bias = 0.0;
        let (mut enc, mut dec) = (0.0f64, 0.0f64);
        for (set, &row_bound) in sets.iter().zip(row_bounds) {
            let mut factors = 0.0f64;
            for pair in set.of_feature(f) {
                factors += f64::from((set.row_scale * pair.value).abs());
                let gu = set.grad_scale * pair.grad;
                if gu != 0.0 {
                    *g_bias += gu;
                    enc += f64::from(gu.abs());
                }
            }
            dec += factors * f64::from(row_bound.max(1.0));
        }
        enc *= f64::from(centred_bound.max(1.0));
        bound = max_or_nan(max_or_nan(bound, enc), dec);
    }
    bound
}

/// The larger of `a` and `b`, NaN if either is.
fn max_or_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

sae_simd::widest! {
    fn feature_block_widest(
        b: usize,
        enc: &mut [f32],
        dec: &mut [f32],
        sets: &[FeaturePairs<'_>],
        x: &[f32],
        b_dec: &[f32],
    ) -> [bool; 2] = feature_block;
}

/// `sum_i weights[i] rows[i]` over the `d`-wide rows of `rows`, in row order.
#[inline(always)]
fn weighted_row_sum(rows: &[f32], weights: &[f32], d: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; d];
    for (row, &w) in rows.chunks_exact(d).zip(weights) {
        axpy(w, row, &mut sum);
    }
    sum
}

sae_simd::widest! {
    fn weighted_row_sum_widest(rows: &[f32], weights: &[f32], d: usize) -> Vec<f32> = weighted_row_sum;
}

/// Sums over the whole batch of a step whose rows are split over several peers: each peer
/// passes its partial sums and gets the batch's. On one device the partial sums are the
/// batch's ([`WholeBatch`]).
pub trait BatchSums {
    /// Replaces each of `values` by its sum over the peers; every peer gets the same bits.
    fn sum(&mut self, values: &mut [f64]) -> crate::Result<()>;
}

/// The batch is all on this device: nothing to add.
#[derive(Debug, Clone, Copy, Default)]
pub struct WholeBatch;

impl BatchSums for WholeBatch {
    fn sum(&mut self, _values: &mut [f64]) -> crate::Result<()> {
        Ok(())
    }
}

/// `sum_t ||x_t - mean(x)||^2` over the rows of `x` (`[N, d]`), the FVU denominator.
pub fn total_variance(x: &[f32], d: usize) -> f64 {
    match batch_variance(x, d, &mut WholeBatch) {
        Ok((total, _)) => total,
        Err(_) => unreachable!("a whole batch needs no exchange"),
    }
}

/// The FVU denominator and the rows of the batch whose rows on this peer are `x`: the mean
/// is the batch's, from summed column sums, then the squared deviations are summed.
pub fn batch_variance(
    x: &[f32],
    d: usize,
    sums: &mut dyn BatchSums,
) -> crate::Result<(f64, usize)> {
    // [rows, column sums...]
    let mut totals = vec![0.0f64; d + 1];
    totals[0] = (x.len() / d.max(1)) as f64;
    for row in x.chunks_exact(d) {
        for (m, &v) in totals[1..].iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    sums.sum(&mut totals)?;
    let n = totals[0];
    let mean: Vec<f64> = totals[1..].iter().map(|s| s / n).collect();
    let mut total = [x
        .chunks_exact(d)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&v, m)| (f64::from(v) - m).powi(2))
                .sum::<f64>()
        })
        .sum()];
    sums.sum(&mut total)?;
    Ok((total[0], n as usize))
}

/// Loss terms and all parameter gradients of a batch `x` (`[N, d]`) for given selections.
pub fn host_loss_and_grads(
    params: &HostParams<'_>,
    x: &[f32],
    spec: &HostLossSpec<'_>,
) -> HostLossAndGrads {
    let mut out = HostLossAndGrads::default();
    // The whole batch is here: the auxiliary loss is on when its selection has pairs.
    let spec = HostLossSpec {
        aux_selection: spec.aux_selection.filter(|a| a.nnz() > 0),
        ..*spec
    };
    let mut residuals = Residuals::default();
    match host_loss_and_grads_into(params, x, &spec, &mut out, &mut residuals, &mut WholeBatch) {
        Ok(()) => out,
        Err(_) => unreachable!("a whole batch needs no exchange"),
    }
}

/// [`host_loss_and_grads`] into `out` and `residuals`, whose buffers are reused when they
/// have the right sizes (every value is overwritten): a training step allocates no
/// gradient.
///
/// When the batch's rows are split over peers, `x` and the selections are this peer's rows,
/// `sums` adds the loss terms over the peers (the auxiliary loss is normalised by the whole
/// batch's residual), and the gradients are this peer's part of the batch's: their sum over
/// the peers is the gradient of the whole batch.
pub fn host_loss_and_grads_into(
    params: &HostParams<'_>,
    x: &[f32],
    spec: &HostLossSpec<'_>,
    out: &mut HostLossAndGrads,
    residuals: &mut Residuals,
    sums: &mut dyn BatchSums,
) -> crate::Result<()> {
    token_pass(params, x, spec, residuals, sums)?.gradients_into(x, params.b_dec, out);
    Ok(())
}

/// Weight gradient bound below which no sum of pass 2 can overflow `f32` (whose largest
/// value is about `3.4e38`), even with the rounding of a million terms.
const FINITE_BOUND: f64 = 1e37;

/// A batch after the token pass: its loss terms, the bias gradients, and the pairs from
/// which pass 2 sums the weight gradients, either into buffers
/// ([`gradients_into`](Self::gradients_into)) or block by block into an update that never
/// stores them.
pub struct TokenPass<'a> {
    sets: Vec<FeaturePairs<'a>>,
    /// The batch's (this peer's) sum of squared reconstruction errors.
    sse: f64,
    /// The auxiliary loss before its coefficient (0 without auxiliary pairs).
    aux: f64,
    b_enc: Vec<f32>,
    b_dec: Vec<f32>,
    /// A bound on every value pass 2 forms (NaN if a term was NaN).
    weight_bound: f64,
}

impl std::fmt::Debug for TokenPass<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPass")
            .field("sse", &self.sse)
            .field("aux", &self.aux)
            .field("weight_bound", &self.weight_bound)
            .finish_non_exhaustive()
    }
}

/// Pass 1 over the tokens of `x` (`[N, d]`): the loss terms, each pair's code and `dL/du`,
/// the error rows (into `residuals`), the bias gradients and, for pass 2, each feature's
/// pairs. See [`host_loss_and_grads_into`] for `sums`.
pub fn token_pass<'r>(
    params: &HostParams<'_>,
    x: &[f32],
    spec: &HostLossSpec<'_>,
    residuals: &'r mut Residuals,
    sums: &mut dyn BatchSums,
) -> crate::Result<TokenPass<'r>> {
    let d = params.d();
    let n = spec.selection.rows();
    let features = params.b_enc.len();
    let aux = spec.aux_selection;
    // Every row is overwritten by the token pass.
    let Residuals {
        main: err,
        aux: aux_err,
    } = residuals;
    err.resize(n * d, 0.0);
    aux_err.resize(if aux.is_some() { n * d } else { 0 }, 0.0);
    // The codes of every pair, then the reconstruction sums, feature by feature.
    let by_feature = |selection| {
        let codes = pair_codes(params, x, selection, spec.affinities, spec.activation);
        ByFeature::new(selection, &codes)
    };
    let mut main = by_feature(spec.selection);
    reconstruct(params.w_dec, d, &main, err);
    let aux_pairs = aux.map(by_feature);
    if let Some(pairs) = &aux_pairs {
        reconstruct(params.w_dec, d, pairs, aux_err);
    }
    let main_scale = (-2.0 * spec.recon_scale) as f32;
    let block_len = TOKEN_BLOCK * d;
    let mut aux_chunks: Vec<&mut [f32]> = if aux.is_some() {
        aux_err.chunks_mut(block_len).collect()
    } else {
        (0..n.div_ceil(TOKEN_BLOCK)).map(|_| &mut [][..]).collect()
    };
    let blocks: Vec<TokenBlock> = err
        .par_chunks_mut(block_len)
        .zip(aux_chunks.par_iter_mut())
        .enumerate()
        .map(|(b, (e, a))| {
            let rows = b * TOKEN_BLOCK..((b + 1) * TOKEN_BLOCK).min(n);
            token_block_widest(x, params.b_dec, rows, main_scale, e, a)
        })
        .collect();
    drop(aux_chunks);

    // [sse, aux numerator, aux denominator]
    let mut terms = [0.0f64; 3];
    let mut g_b_dec = vec![0.0f32; d];
    let mut maxima = [0.0f32; 3];
    for block in blocks {
        terms[0] += block.sse;
        terms[1] += block.aux_num;
        terms[2] += block.aux_den;
        axpy(1.0, &block.b_dec_main, &mut g_b_dec);
        for (max, block_max) in maxima.iter_mut().zip(block.max_abs) {
            *max = max_abs(*max, &[block_max]);
        }
    }
    sums.sum(&mut terms)?;
    let [sse, aux_num, aux_den] = terms;
    // dL/de_hat_t = -2 coef (e - e_hat)_t / sum ||e||^2.
    let aux_scale = (-2.0 * f64::from(spec.aux_coef) / aux_den) as f32;

    // Each pair's dL/du, feature by feature: the main pairs' scaled, the auxiliary ones'
    // before `aux_scale`.
    main.take_grads(err, params.w_dec, main_scale);
    let mut sets = vec![FeaturePairs {
        by_feature: main,
        rows: &err[..],
        row_scale: main_scale,
        grad_scale: 1.0,
    }];
    if let Some(mut pairs) = aux_pairs {
        pairs.take_grads(aux_err, params.w_dec, 1.0);
        sets.push(FeaturePairs {
            by_feature: pairs,
            rows: &aux_err[..],
            row_scale: aux_scale,
            grad_scale: aux_scale,
        });
    }
    let [err_max, aux_err_max, centred_max] = maxima;
    let row_bounds = [err_max, aux_err_max];
    let mut b_enc = vec![0.0f32; features];
    let weight_bound = b_enc
        .par_chunks_mut(FEATURE_BLOCK)
        .enumerate()
        .map(|(b, bias)| bias_block(b, bias, &sets, &row_bounds, centred_max))
        .reduce(|| 0.0, max_or_nan);
    // The encoder's part of the `b_dec` gradient: `u = (x - b_dec) . w_enc[f] + b_enc[f]`, so
    // it is `-sum_f (dL/db_enc)[f] w_enc[f]`, one pass over `w_enc` instead of a row per pair.
    // Fixed blocks summed in order: the same bits for any number of threads.
    let partials: Vec<Vec<f32>> = params
        .w_enc
        .par_chunks(ENCODER_BLOCK * d)
        .zip(b_enc.par_chunks(ENCODER_BLOCK))
        .map(|(rows, g_bias)| weighted_row_sum_widest(rows, g_bias, d))
        .collect();
    for partial in &partials {
        axpy(-1.0, partial, &mut g_b_dec);
    }
    Ok(TokenPass {
        sets,
        sse,
        aux: if aux.is_some() {
            aux_num / aux_den
        } else {
            0.0
        },
        b_enc,
        b_dec: g_b_dec,
        weight_bound,
    })
}

impl TokenPass<'_> {
    /// The batch's (this peer's) sum of squared reconstruction errors.
    pub fn sse(&self) -> f64 {
        self.sse
    }

    /// The auxiliary loss before its coefficient (0 without auxiliary pairs).
    pub fn aux(&self) -> f64 {
        self.aux
    }

    /// The gradient of `b_enc`.
    pub fn b_enc(&self) -> &[f32] {
        &self.b_enc
    }

    /// The gradient of `b_dec`.
    pub fn b_dec(&self) -> &[f32] {
        &self.b_dec
    }

    /// Whether every gradient is known to be finite before pass 2 runs: the bias gradients
    /// are, and the bound on the weight gradients' sums is below `1e37`. When it
    /// is not known, [`gradients_into`](Self::gradients_into) finds out.
    pub fn finite_by_bound(&self) -> bool {
        self.weight_bound < FINITE_BOUND
            && !any_non_finite(&self.b_enc)
            && !any_non_finite(&self.b_dec)
    }

    /// Pass 2 into `out` (its buffers reused when they have the parameters' sizes), with the
    /// loss terms, the bias gradients and the first non-finite gradient. `x` and `b_dec`
    /// are the batch and the decoder bias the token pass saw.
    pub fn gradients_into(self, x: &[f32], b_dec: &[f32], out: &mut HostLossAndGrads) {
        let d = b_dec.len();
        let features = self.b_enc.len();
        // Sized once; each row is cleared right before its pairs are summed into it.
        out.w_enc.resize(features * d, 0.0);
        out.w_dec.resize(features * d, 0.0);
        // Each block's rows are checked for non-finite values while they are in cache.
        let [bad_w_enc, bad_w_dec] = out
            .w_enc
            .par_chunks_mut(FEATURE_BLOCK * d)
            .zip(out.w_dec.par_chunks_mut(FEATURE_BLOCK * d))
            .enumerate()
            .map(|(b, (enc, dec))| feature_block_widest(b, enc, dec, &self.sets, x, b_dec))
            .reduce(|| [false; 2], |a, b| [a[0] | b[0], a[1] | b[1]]);
        out.sse = self.sse;
        out.aux = self.aux;
        out.non_finite = first_flagged([
            bad_w_enc,
            any_non_finite(&self.b_enc),
            bad_w_dec,
            any_non_finite(&self.b_dec),
        ]);
        out.b_enc = self.b_enc;
        out.b_dec = self.b_dec;
    }

    /// Pass 2 block by block, each block of `FEATURE_BLOCK` features summed into a buffer
    /// of its own and handed, while in cache, to `apply` with the next item of `blocks` (one
    /// per block, in order) as `apply(item, enc_rows, dec_rows)`: the weight gradients
    /// without ever being stored whole. Only for a batch whose gradients are
    /// [finite by bound](Self::finite_by_bound), so that nothing applied needs to be undone.
    ///
    /// # Panics
    ///
    /// If the gradients are not finite by bound.
    pub(crate) fn for_each_block<T: Send>(
        &self,
        x: &[f32],
        b_dec: &[f32],
        blocks: impl IndexedParallelIterator<Item = T>,
        apply: impl Fn(T, &[f32], &[f32]) + Sync,
    ) {
        assert!(self.finite_by_bound(), "the gradients may not be finite");
        let d = b_dec.len();
        let features = self.b_enc.len();
        assert_eq!(
            blocks.len(),
            features.div_ceil(FEATURE_BLOCK),
            "one item per block"
        );
        let block_len = FEATURE_BLOCK * d;
        blocks.enumerate().for_each_init(
            || (vec![0.0f32; block_len], vec![0.0f32; block_len]),
            |(enc, dec), (b, item)| {
                let rows = FEATURE_BLOCK.min(features - b * FEATURE_BLOCK);
                let (enc, dec) = (&mut enc[..rows * d], &mut dec[..rows * d]);
                feature_block_widest(b, enc, dec, &self.sets, x, b_dec);
                apply(item, enc, dec);
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use sae_alloc::{Capacities, ScoreMatrix, column_topm, global_topk, row_topk};
    use sae_simd::{Level, capped};

    use super::super::test_values as values;
    use super::super::update::first_non_finite;
    use super::super::{bits, host_params, test_params, test_spec};
    use super::*;
    use crate::rule::Activation;

    const N: usize = 3;
    const F: usize = 16;
    const D: usize = 5;

    /// Test parameters of `f` features of width `d`, a batch of `n` tokens, scores for them,
    /// each token's top 5 of those and a top 3 of other scores as auxiliary pairs.
    fn batch(
        n: usize,
        f: usize,
        d: usize,
    ) -> ([Vec<f32>; 4], Vec<f32>, Vec<f32>, Selection, Selection) {
        let scores = values(n * f, 9);
        let selection = row_topk(&ScoreMatrix::new(&scores, n, f).unwrap(), 5).unwrap();
        let aux = row_topk(&ScoreMatrix::new(&values(n * f, 11), n, f).unwrap(), 3).unwrap();
        (
            test_params(f, d, 1),
            values(n * d, 5),
            scores,
            selection,
            aux,
        )
    }

    /// The bits of every loss and gradient of `got` are those of `want`.
    fn assert_same_bits(got: &HostLossAndGrads, want: &HostLossAndGrads, at: &str) {
        assert_eq!(got.sse.to_bits(), want.sse.to_bits(), "sse, {at}");
        assert_eq!(got.aux.to_bits(), want.aux.to_bits(), "aux, {at}");
        for (g, w, what) in [
            (&got.w_enc, &want.w_enc, "w_enc"),
            (&got.b_enc, &want.b_enc, "b_enc"),
            (&got.w_dec, &want.w_dec, "w_dec"),
            (&got.b_dec, &want.b_dec, "b_dec"),
        ] {
            assert_eq!(bits(g), bits(w), "{what}, {at}");
        }
    }

    /// Loss and gradients of a 3-token batch `x` whose tokens keep 2 of 16 features each (by
    /// fixed scores), with encoder weights `w_enc` and the other parameters fixed.
    fn loss_and_grads(w_enc: &[f32], x: &[f32], selection: &Selection) -> HostLossAndGrads {
        let [_, b_enc, w_dec, b_dec] = test_params(F, D, 1);
        let params = host_params([w_enc, &b_enc, &w_dec, &b_dec]);
        let spec = HostLossSpec {
            selection,
            aux_selection: None,
            activation: Activation::Identity,
            recon_scale: 1.0,
            aux_coef: 0.0,
            affinities: PairAffinities::Recomputed,
        };
        host_loss_and_grads(&params, x, &spec)
    }

    /// The feature pass's own finiteness check names the gradient that a full pass over the
    /// gradients names: none, `b_dec` alone (an unselected feature's infinite encoder row
    /// reaches only the `b_dec` gradient, through `-sum_f dL/db_enc[f] w_enc[f]`, and leaves
    /// the loss finite), or `w_enc` first when a token's value is NaN.
    #[test]
    fn the_feature_pass_names_the_first_non_finite_gradient() {
        let scores = values(N * F, 9);
        let selection = row_topk(&ScoreMatrix::new(&scores, N, F).unwrap(), 2).unwrap();
        let unselected = (0..F as u32)
            .find(|f| !selection.features().contains(f))
            .expect("at most 6 of 16 features are selected") as usize;
        let (w_enc, x) = (values(F * D, 1), values(N * D, 5));

        let clean = loss_and_grads(&w_enc, &x, &selection);
        assert!(clean.sse.is_finite());
        assert_eq!(clean.non_finite, None);
        assert_eq!(first_non_finite(&clean), None);

        let mut infinite_row = w_enc.clone();
        infinite_row[unselected * D] = f32::INFINITY;
        let only_b_dec = loss_and_grads(&infinite_row, &x, &selection);
        assert_eq!(only_b_dec.sse, clean.sse, "the loss does not see the row");
        assert_eq!(only_b_dec.non_finite, Some("b_dec"));
        assert_eq!(first_non_finite(&only_b_dec), Some("b_dec"));

        let mut nan_token = x.clone();
        nan_token[D + 1] = f32::NAN;
        let all = loss_and_grads(&w_enc, &nan_token, &selection);
        assert_eq!(all.non_finite, Some("w_enc"));
        assert_eq!(first_non_finite(&all), Some("w_enc"));
    }

    /// The error rows kept from step to step do not carry over: a second batch through the
    /// same buffers gives the bits a fresh computation gives, with and without auxiliary
    /// pairs in between.
    #[test]
    fn reused_buffers_give_the_bits_of_fresh_ones() {
        let scores = values(N * F, 9);
        let selection = row_topk(&ScoreMatrix::new(&scores, N, F).unwrap(), 2).unwrap();
        let aux = row_topk(&ScoreMatrix::new(&values(N * F, 11), N, F).unwrap(), 3).unwrap();
        let [w_enc, b_enc, w_dec, b_dec] = test_params(F, D, 1);
        let params = host_params([&w_enc, &b_enc, &w_dec, &b_dec]);
        let spec = |aux_selection| {
            test_spec(
                &selection,
                aux_selection,
                Activation::Relu,
                PairAffinities::Recomputed,
            )
        };
        let mut reused = HostLossAndGrads::default();
        let mut residuals = Residuals::default();
        for (x_seed, aux_selection) in [(5, Some(&aux)), (6, None), (7, Some(&aux))] {
            let x = values(N * D, x_seed);
            let fresh = host_loss_and_grads(&params, &x, &spec(aux_selection));
            host_loss_and_grads_into(
                &params,
                &x,
                &spec(aux_selection),
                &mut reused,
                &mut residuals,
                &mut WholeBatch,
            )
            .unwrap();
            assert_same_bits(&reused, &fresh, &format!("x seed {x_seed}"));
        }
    }

    /// Codes taken from the selections' scores are the codes read from the matrix, bit for bit,
    /// for every built-in rule's selection and the auxiliary selection, under both activations,
    /// on affinities with signed zeros and ties (whose scores could lose their sign).
    #[test]
    fn selection_scores_give_the_matrixs_codes() {
        let (n, f, d) = (24, 96, 37);
        let [w_enc, b_enc, w_dec, b_dec] = test_params(f, d, 1);
        let params = host_params([&w_enc, &b_enc, &w_dec, &b_dec]);
        let x = values(n * d, 5);
        let mut z = values(n * f, 9);
        for (i, v) in z.iter_mut().enumerate() {
            match i % 7 {
                0 => *v = -0.0,
                1 => *v = 0.0,
                2 => *v = 0.25,
                _ => {}
            }
        }
        let matrix = ScoreMatrix::new(&z, n, f).unwrap();
        let k = 6;
        let capacities = Capacities::uniform(k * n, f, n as u32).unwrap();
        let weights: Vec<f32> = (0..f).map(|j| (j % 3) as f32).collect();
        for activation in [Activation::Relu, Activation::Identity] {
            let aux = crate::loss::aux_selection(&z, n, f, &weights, 4, activation).unwrap();
            assert!(aux.nnz() > 0);
            for selection in [
                row_topk(&matrix, k).unwrap(),
                global_topk(&matrix, k * n).unwrap(),
                column_topm(&matrix, &capacities).unwrap(),
            ] {
                let run = |affinities| {
                    let spec = test_spec(&selection, Some(&aux), activation, affinities);
                    host_loss_and_grads(&params, &x, &spec)
                };
                let (read, taken) = (
                    run(PairAffinities::Matrix(&z)),
                    run(PairAffinities::SelectionScores),
                );
                assert_same_bits(&taken, &read, &format!("{activation:?}"));
            }
        }
    }

    /// Every copy of the passes that `sae_simd::widest!` runs on this CPU computes the baseline
    /// build's bits: rows long enough for the widest vectors (with a tail), two token blocks,
    /// three feature blocks (one partial), main and auxiliary pairs, codes computed, read from
    /// the matrix and taken from the selections.
    #[test]
    fn the_widest_passes_compute_the_baselines_bits() {
        let (n, f, d) = (40, 130, 389);
        let ([w_enc, b_enc, w_dec, b_dec], x, scores, selection, aux) = batch(n, f, d);
        let params = host_params([&w_enc, &b_enc, &w_dec, &b_dec]);
        let sources = [
            PairAffinities::Recomputed,
            PairAffinities::Matrix(&scores),
            PairAffinities::SelectionScores,
        ];
        for (level, affinities) in Level::ALL
            .into_iter()
            .flat_map(|level| sources.map(|source| (level, source)))
        {
            let source = match affinities {
                PairAffinities::Recomputed => "recomputed",
                PairAffinities::Matrix(_) => "read",
                PairAffinities::SelectionScores => "scores",
            };
            let at = format!("{level:?}, codes {source}");
            let spec = test_spec(&selection, Some(&aux), Activation::Relu, affinities);
            let (activation, affinities) = (spec.activation, spec.affinities);
            let codes = [&selection, &aux].map(|s| {
                let base = codes_block(&params, &x, 0..n, s, affinities, activation);
                let wide = capped(level, || {
                    codes_block_widest(&params, &x, 0..n, s, affinities, activation)
                });
                assert_eq!(bits(&wide.values), bits(&base.values), "codes, {at}");
                assert_eq!(bits(&wide.slopes), bits(&base.slopes), "slopes, {at}");
                base
            });
            let [mut main_pairs, mut aux_pairs] =
                [(&selection, &codes[0]), (&aux, &codes[1])].map(|(s, c)| ByFeature::new(s, c));
            // Sums over a range of tokens that starts and ends inside the batch, and over all.
            let [mut err, mut wide_err, mut aux_err, mut wide_aux_err] =
                std::array::from_fn(|_| vec![1.0; n * d]);
            for (rows, wide_rows, pairs) in [
                (&mut err, &mut wide_err, &main_pairs),
                (&mut aux_err, &mut wide_aux_err, &aux_pairs),
            ] {
                for tokens in [3..n - 5, 0..n] {
                    let part = tokens.start * d..tokens.end * d;
                    reconstruct_range(&w_dec, pairs, tokens.clone(), &mut rows[part.clone()]);
                    capped(level, || {
                        let rows = &mut wide_rows[part.clone()];
                        reconstruct_range_widest(&w_dec, pairs, tokens.clone(), rows)
                    });
                    assert_eq!(bits(wide_rows), bits(rows), "sums of {tokens:?}, {at}");
                }
            }
            let base = token_block(&x, &b_dec, 0..n, 0.3, &mut err, &mut aux_err);
            let wide = capped(level, || {
                token_block_widest(&x, &b_dec, 0..n, 0.3, &mut wide_err, &mut wide_aux_err)
            });
            for (got, want, what) in [
                (&wide.b_dec_main, &base.b_dec_main, "b_dec part"),
                (&wide_err, &err, "errors"),
                (&wide_aux_err, &aux_err, "aux errors"),
                (&wide.max_abs.to_vec(), &base.max_abs.to_vec(), "maxima"),
            ] {
                assert_eq!(bits(got), bits(want), "{what}, {at}");
            }
            assert_eq!(
                [wide.sse, wide.aux_num, wide.aux_den].map(f64::to_bits),
                [base.sse, base.aux_num, base.aux_den].map(f64::to_bits),
                "{at}"
            );
            for (pairs, rows) in [(&mut main_pairs, &err), (&mut aux_pairs, &aux_err)] {
                let fields = |r: &[PairRecord]| {
                    r.iter()
                        .map(|p| [p.token, p.value.to_bits(), p.grad.to_bits()])
                        .collect::<Vec<_>>()
                };
                let mut wide = pairs.pairs.clone();
                for b in 0..f.div_ceil(FEATURE_BLOCK) {
                    let features = b * FEATURE_BLOCK..((b + 1) * FEATURE_BLOCK).min(f);
                    let block = pairs.offsets[features.start]..pairs.offsets[features.end];
                    let (offsets, block_pairs) = (&pairs.offsets, &mut pairs.pairs[block.clone()]);
                    grads_block(features.clone(), offsets, block_pairs, rows, &w_dec, 0.3);
                    capped(level, || {
                        let block_pairs = &mut wide[block.clone()];
                        grads_block_widest(
                            features.clone(),
                            offsets,
                            block_pairs,
                            rows,
                            &w_dec,
                            0.3,
                        )
                    });
                }
                assert_eq!(fields(&wide), fields(&pairs.pairs), "dL/du, {at}");
            }

            let sets = [
                FeaturePairs {
                    by_feature: main_pairs,
                    rows: &err,
                    row_scale: 0.3,
                    grad_scale: 1.0,
                },
                FeaturePairs {
                    by_feature: aux_pairs,
                    rows: &aux_err,
                    row_scale: 0.7,
                    grad_scale: 0.7,
                },
            ];
            for b in 0..f.div_ceil(FEATURE_BLOCK) {
                let rows = FEATURE_BLOCK.min(f - b * FEATURE_BLOCK);
                let [mut enc, mut dec, mut wide_enc, mut wide_dec] =
                    std::array::from_fn(|_| vec![1.0; rows * d]);
                let flags = feature_block(b, &mut enc, &mut dec, &sets, &x, &b_dec);
                let wide_flags = capped(level, || {
                    let (enc, dec) = (&mut wide_enc, &mut wide_dec);
                    feature_block_widest(b, enc, dec, &sets, &x, &b_dec)
                });
                assert_eq!(wide_flags, flags, "block {b}, {at}");
                assert_eq!(bits(&wide_enc), bits(&enc), "w_enc, block {b}, {at}");
                assert_eq!(bits(&wide_dec), bits(&dec), "w_dec, block {b}, {at}");
            }
            let weights = values(f, 12);
            assert_eq!(
                bits(&capped(level, || weighted_row_sum_widest(
                    &w_enc, &weights, d
                ))),
                bits(&weighted_row_sum(&w_enc, &weights, d)),
                "{at}"
            );
        }
    }

    /// The bias gradients of pass 1 are the sums of `dL/du` over each feature's pairs, by
    /// brute force over the pairs in token order; the bound covers every weight gradient
    /// element; and the weight gradients summed by blocks are those written to buffers.
    #[test]
    fn bias_gradients_bound_and_blocks_agree_with_the_buffers() {
        let (n, f, d) = (40, 130, 19);
        let ([w_enc, b_enc, w_dec, b_dec], x, _, selection, aux) = batch(n, f, d);
        let params = host_params([&w_enc, &b_enc, &w_dec, &b_dec]);
        let spec = test_spec(
            &selection,
            Some(&aux),
            Activation::Identity,
            PairAffinities::Recomputed,
        );
        let mut residuals = Residuals::default();
        let pass = token_pass(&params, &x, &spec, &mut residuals, &mut WholeBatch).unwrap();
        assert!(pass.finite_by_bound());
        // dL/du of each pair, from the buffers' own definition: dL/db_enc sums them.
        let mut want = vec![0.0f32; f];
        for set in &pass.sets {
            for (feature, sum) in want.iter_mut().enumerate() {
                for pair in set.of_feature(feature) {
                    let gu = set.grad_scale * pair.grad;
                    if gu != 0.0 {
                        *sum += gu;
                    }
                }
            }
        }
        assert_eq!(bits(pass.b_enc()), bits(&want));
        let bound = pass.weight_bound;
        let mut blocks = vec![(Vec::new(), Vec::new()); f.div_ceil(FEATURE_BLOCK)];
        let slots = std::sync::Mutex::new(&mut blocks);
        pass.for_each_block(
            &x,
            &b_dec,
            (0..f.div_ceil(FEATURE_BLOCK)).into_par_iter(),
            |b, enc, dec| slots.lock().unwrap()[b] = (enc.to_vec(), dec.to_vec()),
        );
        let mut out = HostLossAndGrads::default();
        pass.gradients_into(&x, &b_dec, &mut out);
        let (enc, dec): (Vec<f32>, Vec<f32>) =
            blocks
                .into_iter()
                .fold((Vec::new(), Vec::new()), |(mut e, mut d), (be, bd)| {
                    e.extend(be);
                    d.extend(bd);
                    (e, d)
                });
        assert_eq!(bits(&enc), bits(&out.w_enc));
        assert_eq!(bits(&dec), bits(&out.w_dec));
        let largest = out
            .w_enc
            .iter()
            .chain(&out.w_dec)
            .fold(0.0f32, |m, g| m.max(g.abs()));
        assert!(
            largest > 0.0 && f64::from(largest) <= bound,
            "{largest} vs {bound}"
        );
    }

    /// Gradients are finite by bound only when they are finite: batches scaled up to where
    /// the sums overflow, an infinite or NaN token, and an infinite encoder row of an
    /// unselected feature (which reaches `b_dec` alone). A batch whose gradients the bound
    /// cannot vouch for is left to the buffers' exact check.
    #[test]
    fn finite_by_bound_only_when_every_gradient_is_finite() {
        let scores = values(N * F, 9);
        let selection = row_topk(&ScoreMatrix::new(&scores, N, F).unwrap(), 2).unwrap();
        let [w_enc, b_enc, w_dec, b_dec] = test_params(F, D, 1);
        let check = |w_enc: &[f32], x: &[f32], recon_scale: f64| {
            let params = host_params([w_enc, &b_enc, &w_dec, &b_dec]);
            let spec = HostLossSpec {
                selection: &selection,
                aux_selection: None,
                activation: Activation::Identity,
                recon_scale,
                aux_coef: 0.0,
                affinities: PairAffinities::Recomputed,
            };
            let mut residuals = Residuals::default();
            let pass = token_pass(&params, x, &spec, &mut residuals, &mut WholeBatch).unwrap();
            let by_bound = pass.finite_by_bound();
            let mut out = HostLossAndGrads::default();
            pass.gradients_into(x, &b_dec, &mut out);
            (by_bound, out.non_finite)
        };
        let x = values(N * D, 5);
        assert_eq!(check(&w_enc, &x, 1.0), (true, None));
        let mut vouched = 0;
        for exponent in 0..40 {
            let scale = 10f32.powi(exponent);
            let big: Vec<f32> = x.iter().map(|v| v * scale).collect();
            let (by_bound, non_finite) = check(&w_enc, &big, 1.0);
            if by_bound {
                vouched += 1;
                assert_eq!(non_finite, None, "x scaled by {scale}");
            }
        }
        assert!(vouched >= 5, "the bound vouched for {vouched} of 40 scales");
        // Gradients that overflow are never vouched for.
        let huge: Vec<f32> = x.iter().map(|v| v * 1e30).collect();
        let (by_bound, non_finite) = check(&w_enc, &huge, 1e10);
        assert!(non_finite.is_some() && !by_bound);
        for bad in [f32::INFINITY, f32::NAN] {
            let mut token = x.clone();
            token[D + 1] = bad;
            assert!(!check(&w_enc, &token, 1.0).0, "{bad} in a token");
        }
        let unselected = (0..F as u32)
            .find(|f| !selection.features().contains(f))
            .expect("at most 6 of 16 features are selected") as usize;
        let mut infinite_row = w_enc.clone();
        infinite_row[unselected * D] = f32::INFINITY;
        assert_eq!(check(&infinite_row, &x, 1.0), (false, Some("b_dec")));
    }

    /// `max_abs` is the largest magnitude, NaN when a NaN is among the values or is the
    /// running maximum, by brute force over signed zeros, subnormals, infinities and NaNs.
    #[test]
    fn max_abs_is_the_largest_magnitude_or_nan() {
        let specials = [
            0.0,
            -0.0,
            1e-40,
            -3.0,
            2.5,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        for (i, &start) in specials.iter().enumerate() {
            for len in [0, 1, 17, 40] {
                let mut v = values(len, i as u32);
                for (j, x) in v.iter_mut().enumerate() {
                    if j % 7 == 3 {
                        *x = specials[(i + j) % specials.len()];
                    }
                }
                let got = max_abs(start, &v);
                let all = v.iter().chain([&start]);
                if all.clone().any(|x| x.is_nan()) {
                    assert!(got.is_nan(), "{start}, {v:?}: {got}");
                } else {
                    let want = all.map(|x| x.abs()).fold(0.0f32, f32::max);
                    assert_eq!(got.to_bits(), want.to_bits(), "{start}, {v:?}");
                }
            }
        }
    }

    /// Pass 1 by feature computes the bits of a loop over tokens: each token's error is its
    /// centred row minus its pairs' decoder rows added in ascending feature order, the
    /// auxiliary error the same from the error, and each pair's `dL/du` (before the
    /// auxiliary scale) is `act'(u) (scale (e_t . w_dec[f]))`; for one thread and three
    /// (one range of tokens and three).
    #[test]
    fn pass_one_by_feature_gives_the_bits_of_a_loop_over_tokens() {
        // Long enough for three ranges of the reconstruction on three threads.
        let (n, f, d) = (2 * RANGE_TOKENS + 76, 130, 19);
        let ([w_enc, b_enc, w_dec, b_dec], x, _, selection, aux) = batch(n, f, d);
        let params = host_params([&w_enc, &b_enc, &w_dec, &b_dec]);
        let spec = test_spec(
            &selection,
            Some(&aux),
            Activation::Relu,
            PairAffinities::SelectionScores,
        );
        // The loop over tokens: error rows, and dL/du per pair in the selection's order.
        let per_token = |sel: &Selection, from: &[f32], scale: f32| {
            let (mut rows, mut grads) = (vec![0.0f32; n * d], Vec::new());
            for t in 0..n {
                let mut sum = vec![0.0f32; d];
                let (features, scores) = sel.row(t);
                let mut slopes = Vec::new();
                for (&j, &u) in features.iter().zip(scores) {
                    let (v, slope) = activate(Activation::Relu, u);
                    axpy(v, &w_dec[j as usize * d..(j as usize + 1) * d], &mut sum);
                    slopes.push(slope);
                }
                let row = &mut rows[t * d..(t + 1) * d];
                for ((r, base), s) in row.iter_mut().zip(&from[t * d..(t + 1) * d]).zip(&sum) {
                    *r = base - s;
                }
                for (&j, slope) in features.iter().zip(slopes) {
                    let w = &w_dec[j as usize * d..(j as usize + 1) * d];
                    grads.push(slope * (scale * dot(row, w)));
                }
            }
            (rows, grads)
        };
        let centred: Vec<f32> = x
            .chunks(d)
            .flat_map(|row| row.iter().zip(&b_dec).map(|(xi, b)| xi - b))
            .collect();
        let (err, grads) = per_token(&selection, &centred, -1.0);
        let (aux_err, aux_grads) = per_token(&aux, &err, 1.0);
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut residuals = Residuals::default();
            pool.install(|| {
                let pass = token_pass(&params, &x, &spec, &mut residuals, &mut WholeBatch).unwrap();
                for (set, sel, want) in [
                    (&pass.sets[0], &selection, &grads),
                    (&pass.sets[1], &aux, &aux_grads),
                ] {
                    let (offsets, ids) = sel.feature_major();
                    for j in 0..f {
                        let got: Vec<u32> =
                            set.of_feature(j).iter().map(|r| r.grad.to_bits()).collect();
                        let want: Vec<u32> = ids[offsets[j]..offsets[j + 1]]
                            .iter()
                            .map(|&p| want[p as usize].to_bits())
                            .collect();
                        assert_eq!(got, want, "feature {j}, {threads} threads");
                    }
                }
            });
            assert_eq!(bits(&residuals.main), bits(&err), "{threads} threads");
            assert_eq!(bits(&residuals.aux), bits(&aux_err), "{threads} threads");
        }
    }
}
