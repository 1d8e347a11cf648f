//! The sparse training step of an SAE on the device, after its encoder GEMM and selection:
//! loss, hand-written gradients and the Adam update, all in kernels of this crate.
//!
//! The device twin of `sae-model`'s host step (`fused`): a token pass (codes at the selected
//! pairs, reconstruction error, each pair's code gradient, loss partial sums), the
//! feature-major view of the pairs (a deterministic counting sort, [`by_feature`]), a feature
//! pass per parameter (the weight gradients summed in row order, parallel-gradient removal,
//! Adam, decoder renormalisation) and the small `b_dec` and loss reductions. Every sum has a
//! fixed order and no float atomics are used, so a step gives the same bits on every run.
//!
//! Nothing is read back in between: [`DeviceStep::finish`] reads the loss sums, the
//! non-finite flags and the selection with one synchronisation. New parameters and moments
//! go into fresh buffers; the caller adopts them only when the step is clean, so a
//! non-finite step leaves the state as it was.
//!
//! With `c_t = x_t - b_dec`, `u_p = c_t . w_enc[f] + b_enc[f]` (read from the affinities the
//! selection was made on), `v_p = act(u_p)`, `x_hat_t = b_dec + sum_p v_p w_dec[f]`:
//! `dL/dx_hat_t = -2 s (x_t - x_hat_t)` with `s = 1 / total variance` (FVU) or `1 / (N d)`
//! (MSE), and for the auxiliary pairs `dL/de_hat_t = -2 coef (e_t - e_hat_t) / sum ||e||^2`.

mod by_feature;
mod reduce;
mod shard;
mod tokens;
mod update;

use cubecl::prelude::*;
use cubecl::server::Handle;
use sae_alloc::Selection;

use crate::KernelError;
use crate::key::CUBE;
use crate::launch::{array, check_words, grid, uninit, unit_dim, zeros};
use crate::output::DeviceSelection;
use by_feature::{ByFeature, by_feature, join_offsets};
use reduce::{
    PLAIN, ROWS_PER_BLOCK, SQUARED, WEIGHTED, column_means, column_sums, loss_sums, slot,
};
pub use shard::{ShardPass, ShardSums, update_from_gradients};
use tokens::token_pass;
pub use update::PARAMETERS;
use update::{FLAGS, bias_update, decoder_update, encoder_update};

/// The four parameters of an SAE (or one of its Adam moments) in device buffers of `f32`:
/// `w_enc` and `w_dec` `[F, d]` row-major, `b_enc` `[F]`, `b_dec` `[d]`.
#[derive(Debug, Clone)]
pub struct ParamBuffers {
    /// Encoder weights `[F, d]`.
    pub w_enc: Handle,
    /// Encoder bias `[F]`.
    pub b_enc: Handle,
    /// Decoder weights `[F, d]`, rows of unit norm.
    pub w_dec: Handle,
    /// Decoder bias `[d]`.
    pub b_dec: Handle,
}

/// Adam's constants for one step, as the `f32` values the host update uses:
/// `v <- beta2 v + (1 - beta2) g^2`, `m <- beta1 m + (1 - beta1) g`,
/// `p <- p - 1 / (sqrt(v inv_correction2) + eps) m step_scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConstants {
    /// `beta1`.
    pub beta1: f32,
    /// `beta2`.
    pub beta2: f32,
    /// `1 - beta1`, rounded from the exact value.
    pub one_minus_beta1: f32,
    /// `1 - beta2`, rounded from the exact value.
    pub one_minus_beta2: f32,
    /// `1 / (1 - beta2^step)`.
    pub inv_correction2: f32,
    /// `lr / (1 - beta1^step)`.
    pub step_scale: f32,
    /// `eps`.
    pub eps: f32,
}

/// The reconstruction term of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconstruction {
    /// Squared error over the batch's total variance (FVU).
    Fvu,
    /// Mean squared error over all `N d` elements.
    Mse,
}

/// The activation of the selected affinities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `max(u, 0)`.
    Relu,
    /// `u`.
    Identity,
}

/// The pairs of a step and what its token and feature passes read besides the parameters.
#[derive(Debug)]
pub struct PairInputs<'a, R: Runtime> {
    /// The batch `[N, d]`, row-major f32.
    pub x: &'a Handle,
    /// The affinities `[N, F]` the selections were made on (the codes are read from them).
    pub affinities: &'a Handle,
    /// The model's width `d`.
    pub width: usize,
    /// The batch's selection (its rows are the `N` tokens, its columns the `F` features).
    pub selection: &'a DeviceSelection<R>,
    /// The auxiliary loss's selection, if any; pairs whose score is `-inf` are padding.
    pub aux: Option<&'a DeviceSelection<R>>,
    /// Activation of the codes.
    pub activation: Activation,
}

/// Everything a step needs besides the parameters and moments.
#[derive(Debug)]
pub struct StepInputs<'a, R: Runtime> {
    /// The batch, its selections and the activation.
    pub pairs: PairInputs<'a, R>,
    /// Coefficient of the auxiliary loss.
    pub aux_coef: f32,
    /// Reconstruction term.
    pub reconstruction: Reconstruction,
    /// Adam's constants of this step.
    pub adam: AdamConstants,
}

/// The state a step produced, on the device, and the handles of its report.
#[derive(Debug)]
pub struct DeviceStep<R: Runtime> {
    /// New parameters.
    pub params: ParamBuffers,
    /// New first moments.
    pub m: ParamBuffers,
    /// New second moments.
    pub v: ParamBuffers,
    status: Handle,
    flags: Handle,
    aux_active: Handle,
    _runtime: std::marker::PhantomData<R>,
}

/// What [`DeviceStep::finish`] reads back.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Sum of squared reconstruction errors.
    pub sse: f64,
    /// Sum of squared auxiliary errors `||e - e_hat||^2` (0 without auxiliary pairs).
    pub aux_sse: f64,
    /// Whether any auxiliary pair was more than padding: without one the auxiliary loss is
    /// off (its pairs changed no gradient).
    pub aux_active: bool,
    /// `sum_t ||x_t - mean(x)||^2` of the batch.
    pub total_variance: f64,
    /// The first parameter (`w_enc`, `b_enc`, `w_dec`, `b_dec`) with a non-finite gradient.
    pub non_finite: Option<&'static str>,
    /// The batch's selection.
    pub selection: Selection,
}

impl<R: Runtime> DeviceStep<R> {
    /// Reads the step's loss sums, its non-finite flags and `selection` (the step's own) with
    /// one synchronisation. A NaN affinity is reported as the selection's error.
    pub fn finish(&self, selection: &DeviceSelection<R>) -> Result<StepReport, KernelError> {
        let (selection, words) = selection.read_with(vec![
            self.status.clone(),
            self.flags.clone(),
            self.aux_active.clone(),
        ])?;
        let status: Vec<f64> = words[0][..3]
            .iter()
            .map(|&b| f64::from(f32::from_bits(b)))
            .collect();
        let non_finite = words[1][..FLAGS]
            .iter()
            .zip(PARAMETERS)
            .find(|&(&flag, _)| flag != 0)
            .map(|(_, name)| name);
        Ok(StepReport {
            sse: status[0],
            aux_sse: status[1],
            aux_active: words[2][0] != 0,
            total_variance: status[2],
            non_finite,
            selection,
        })
    }
}

/// Enqueues one training step: loss, gradients and the update of `params` with moments `m`,
/// `v`, into fresh buffers. Nothing is read back (see [`DeviceStep::finish`]).
pub fn train_step<R: Runtime>(
    client: &ComputeClient<R>,
    inputs: &StepInputs<'_, R>,
    [params, m, v]: [&ParamBuffers; 3],
) -> Result<DeviceStep<R>, KernelError> {
    let pairs = PairPass::launch(client, &inputs.pairs, &[params, m, v])?;
    let PairPass { n, f, d, .. } = pairs;
    let with_aux = pairs.with_aux;
    let hyper = hyper(client, &inputs.adam, inputs.aux_coef, n * d);
    let unused = uninit(client, 1);
    let col_groups = d.div_ceil(CUBE as usize);
    let blocks = |rows: usize| rows.div_ceil(ROWS_PER_BLOCK as usize);

    // The batch's total variance (the FVU denominator): column means, then squares.
    let x_sums = column_partials(client, &pairs.x, [n, d], [&unused, &unused], PLAIN);
    let means = uninit(client, d);
    column_means::launch::<R>(
        client,
        grid(col_groups),
        unit_dim(),
        array(&x_sums, blocks(n) * d),
        array(&means, d),
        n as u32,
        d as u32,
    );
    let x_squares = column_partials(client, &pairs.x, [n, d], [&unused, &means], SQUARED);
    let status = uninit(client, 3);
    let scales = uninit(client, 2);
    loss_sums::launch::<R>(
        client,
        CubeCount::Static(1, 1, 1),
        unit_dim(),
        array(&pairs.token_sse, n),
        array(&pairs.token_aux, n),
        array(&x_squares, blocks(n) * d),
        array(&hyper, slot::LEN),
        array(&status, 3),
        array(&scales, 2),
        n as u32,
        (blocks(n) * d) as u32,
        inputs.reconstruction == Reconstruction::Fvu,
        with_aux,
    );

    // The feature passes and the update.
    let total = pairs.pairs;
    let main_pairs = pairs.main_pairs;
    let view = &pairs.view;
    let flags = zeros(client, FLAGS);
    let [p_out, m_out, v_out] = [0, 1, 2].map(|_| ParamBuffers::uninit(client, f, d));
    let g_b_enc = uninit(client, f);
    encoder_update::launch::<R>(
        client,
        grid(f),
        unit_dim(),
        array(&pairs.x, n * d),
        array(&params.b_dec, d),
        array(&view.offsets, f + 1),
        array(&view.ids, total),
        array(&pairs.pair_row, total),
        array(&pairs.slopes, total),
        array(&scales, 2),
        array(&hyper, slot::LEN),
        array(&params.w_enc, f * d),
        array(&params.b_enc, f),
        array(&m.w_enc, f * d),
        array(&v.w_enc, f * d),
        array(&m.b_enc, f),
        array(&v.b_enc, f),
        array(&p_out.w_enc, f * d),
        array(&p_out.b_enc, f),
        array(&m_out.w_enc, f * d),
        array(&v_out.w_enc, f * d),
        array(&m_out.b_enc, f),
        array(&v_out.b_enc, f),
        array(&g_b_enc, f),
        array(&flags, FLAGS),
        n as u32,
        d as u32,
        f as u32,
        main_pairs as u32,
    );
    decoder_update::launch::<R>(
        client,
        grid(f),
        unit_dim(),
        array(&pairs.err, pairs.rows * d),
        array(&view.offsets, f + 1),
        array(&view.ids, total),
        array(&pairs.pair_row, total),
        array(&pairs.values, total),
        array(&scales, 2),
        array(&hyper, slot::LEN),
        array(&params.w_dec, f * d),
        array(&m.w_dec, f * d),
        array(&v.w_dec, f * d),
        array(&p_out.w_dec, f * d),
        array(&m_out.w_dec, f * d),
        array(&v_out.w_dec, f * d),
        array(&flags, FLAGS),
        d as u32,
        f as u32,
        main_pairs as u32,
    );
    // The decoder bias: its error part (main rows only) and its encoder part.
    let [err_sums, encoder_sums] = pairs.bias_partials(client, &params.w_enc, &g_b_enc);
    bias_update::launch::<R>(
        client,
        grid(col_groups),
        unit_dim(),
        array(&err_sums, blocks(n) * d),
        array(&encoder_sums, blocks(f) * d),
        array(&scales, 2),
        array(&hyper, slot::LEN),
        array(&params.b_dec, d),
        array(&m.b_dec, d),
        array(&v.b_dec, d),
        array(&p_out.b_dec, d),
        array(&m_out.b_dec, d),
        array(&v_out.b_dec, d),
        array(&flags, FLAGS),
        n as u32,
        d as u32,
        f as u32,
    );
    Ok(DeviceStep {
        params: p_out,
        m: m_out,
        v: v_out,
        status,
        flags,
        aux_active: pairs.aux_active,
        _runtime: std::marker::PhantomData,
    })
}

impl ParamBuffers {
    /// Fresh, uninitialised buffers for `features` rows of width `d`.
    fn uninit<R: Runtime>(client: &ComputeClient<R>, features: usize, d: usize) -> Self {
        Self {
            w_enc: uninit(client, features * d),
            b_enc: uninit(client, features),
            w_dec: uninit(client, features * d),
            b_dec: uninit(client, d),
        }
    }

    /// Checks that the buffers hold `features` rows of width `d`; `name` says whose they are.
    fn check(&self, name: &'static str, features: usize, d: usize) -> Result<(), KernelError> {
        check_words(name, &self.w_enc, features * d)?;
        check_words(name, &self.b_enc, features)?;
        check_words(name, &self.w_dec, features * d)?;
        check_words(name, &self.b_dec, d)
    }
}

/// The step's hyper-parameter array ([`slot`]); `elements` is the `N d` of the MSE's mean.
fn hyper<R: Runtime>(
    client: &ComputeClient<R>,
    a: &AdamConstants,
    aux_coef: f32,
    elements: usize,
) -> Handle {
    let mut hyper = [0.0f32; slot::LEN];
    hyper[slot::BETA1] = a.beta1;
    hyper[slot::BETA2] = a.beta2;
    hyper[slot::ONE_MINUS_BETA1] = a.one_minus_beta1;
    hyper[slot::ONE_MINUS_BETA2] = a.one_minus_beta2;
    hyper[slot::INV_CORRECTION2] = a.inv_correction2;
    hyper[slot::STEP_SCALE] = a.step_scale;
    hyper[slot::EPS] = a.eps;
    hyper[slot::AUX_COEF] = aux_coef;
    hyper[slot::MSE_SCALE] = (1.0 / elements as f64) as f32;
    client.create_from_slice(f32::as_bytes(&hyper))
}

/// Partial column sums of the `[rows, d]` `matrix` over fixed blocks of rows
/// ([`column_sums`] in `mode`, with its `[weights, center]`).
fn column_partials<R: Runtime>(
    client: &ComputeClient<R>,
    matrix: &Handle,
    [rows, d]: [usize; 2],
    [weights, center]: [&Handle; 2],
    mode: u32,
) -> Handle {
    let blocks = rows.div_ceil(ROWS_PER_BLOCK as usize);
    let col_groups = d.div_ceil(CUBE as usize);
    let partials = uninit(client, blocks * d);
    column_sums::launch::<R>(
        client,
        grid(col_groups * blocks),
        unit_dim(),
        array(matrix, rows * d),
        array(weights, rows),
        array(center, d),
        array(&partials, blocks * d),
        rows as u32,
        d as u32,
        col_groups as u32,
        mode,
    );
    partials
}

/// The token pass of a step over the joined pair space, and the feature-major view of its
/// pairs: what the feature passes read.
struct PairPass {
    n: usize,
    f: usize,
    d: usize,
    /// Main pairs, then auxiliary ones.
    main_pairs: usize,
    pairs: usize,
    /// Error rows: `n`, or `2 n` with auxiliary pairs.
    rows: usize,
    with_aux: bool,
    x: Handle,
    pair_row: Handle,
    values: Handle,
    slopes: Handle,
    err: Handle,
    token_sse: Handle,
    token_aux: Handle,
    aux_active: Handle,
    view: ByFeature,
}

impl PairPass {
    /// Checks the inputs and the state (parameters, then their moments if given) against each
    /// other, then enqueues the token pass and the feature-major view.
    fn launch<R: Runtime>(
        client: &ComputeClient<R>,
        inputs: &PairInputs<'_, R>,
        state: &[&ParamBuffers],
    ) -> Result<Self, KernelError> {
        let selection = inputs.selection;
        let (n, f, d) = (selection.rows(), selection.cols(), inputs.width);
        let aux = inputs.aux.filter(|a| a.nnz() > 0);
        if let Some(a) = aux
            && (a.rows(), a.cols()) != (n, f)
        {
            return Err(KernelError::ShapeMismatch {
                what: "auxiliary selection [tokens, features]",
                expected: vec![n, f],
                actual: vec![a.rows(), a.cols()],
            });
        }
        check_words("x", inputs.x, n * d)?;
        check_words("affinities", inputs.affinities, n * f)?;
        for (buffers, name) in state
            .iter()
            .zip(["parameters", "first moments", "second moments"])
        {
            buffers.check(name, f, d)?;
        }
        let params = state[0];
        let main_pairs = selection.nnz();
        let aux_pairs = aux.map_or(0, |a| a.nnz());
        let pairs = main_pairs + aux_pairs;
        let rows = if aux.is_some() { 2 * n } else { n };
        let pair_row = uninit(client, pairs);
        let pair_feature = uninit(client, pairs);
        let values = uninit(client, pairs);
        let slopes = uninit(client, pairs);
        let err = uninit(client, rows * d);
        let token_sse = uninit(client, n);
        let token_aux = uninit(client, n);
        let aux_active = zeros(client, 1);
        let aux_sel = aux.unwrap_or(selection);
        token_pass::launch::<R>(
            client,
            grid(n),
            unit_dim(),
            array(inputs.x, n * d),
            array(&params.b_dec, d),
            array(inputs.affinities, n * f),
            array(&params.w_dec, f * d),
            array(selection.offsets(), n + 1),
            array(selection.features(), main_pairs),
            array(selection.scores(), main_pairs),
            array(aux_sel.offsets(), n + 1),
            array(aux_sel.features(), aux_sel.nnz()),
            array(aux_sel.scores(), aux_sel.nnz()),
            array(&pair_row, pairs),
            array(&pair_feature, pairs),
            array(&values, pairs),
            array(&slopes, pairs),
            array(&err, rows * d),
            array(&token_sse, n),
            array(&token_aux, n),
            array(&aux_active, 1),
            n as u32,
            d as u32,
            f as u32,
            main_pairs as u32,
            inputs.activation == Activation::Relu,
            aux.is_some(),
        );

        // Every feature's pairs in row order.
        let row_offsets = match aux {
            Some(a) => {
                let joined = uninit(client, 2 * n + 1);
                join_offsets::launch::<R>(
                    client,
                    grid((n + 1).div_ceil(CUBE as usize)),
                    unit_dim(),
                    array(selection.offsets(), n + 1),
                    array(a.offsets(), n + 1),
                    array(&joined, 2 * n + 1),
                    n as u32,
                    main_pairs as u32,
                );
                joined
            }
            None => selection.offsets().clone(),
        };
        let view = by_feature(client, &row_offsets, &pair_feature, rows, f, pairs);
        Ok(Self {
            n,
            f,
            d,
            main_pairs,
            pairs,
            rows,
            with_aux: aux.is_some(),
            x: inputs.x.clone(),
            pair_row,
            values,
            slopes,
            err,
            token_sse,
            token_aux,
            aux_active,
            view,
        })
    }

    /// The partial column sums of the decoder bias gradient's two terms: the error rows (main
    /// rows only) and the encoder rows weighted by the encoder bias gradient `g_b_enc`.
    fn bias_partials<R: Runtime>(
        &self,
        client: &ComputeClient<R>,
        w_enc: &Handle,
        g_b_enc: &Handle,
    ) -> [Handle; 2] {
        let (n, f, d) = (self.n, self.f, self.d);
        let unused = uninit(client, 1);
        [
            column_partials(client, &self.err, [n, d], [&unused, &unused], PLAIN),
            column_partials(client, w_enc, [f, d], [g_b_enc, &unused], WEIGHTED),
        ]
    }
}
