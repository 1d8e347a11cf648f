//! Reductions of the step in a fixed order: a cube-wide sum, column sums of a matrix in
//! fixed row blocks, and the step's loss sums and gradient scales.
//!
//! Every sum adds the same values in the same order on every run and for any grid, so the
//! step gives the same bits each time (no float atomics anywhere).

use cubecl::prelude::*;

use crate::key::{CUBE, cube_index, run_start};

/// Rows per block of [`column_sums`]: a constant, so that the partial sums (and their
/// rounding) never depend on the device or the grid.
pub(crate) const ROWS_PER_BLOCK: u32 = 256;

/// Column sums of the matrix itself.
pub(crate) const PLAIN: u32 = 0;
/// Column sums of the rows weighted by `weights[row]`.
pub(crate) const WEIGHTED: u32 = 1;
/// Column sums of `(matrix - center[col])^2`.
pub(crate) const SQUARED: u32 = 2;

/// Slots of the step's hyper-parameter array (`hyper`), written by the host each step.
pub(crate) mod slot {
    pub(crate) const BETA1: usize = 0;
    pub(crate) const BETA2: usize = 1;
    pub(crate) const ONE_MINUS_BETA1: usize = 2;
    pub(crate) const ONE_MINUS_BETA2: usize = 3;
    pub(crate) const INV_CORRECTION2: usize = 4;
    pub(crate) const STEP_SCALE: usize = 5;
    pub(crate) const EPS: usize = 6;
    pub(crate) const AUX_COEF: usize = 7;
    pub(crate) const MSE_SCALE: usize = 8;
    pub(crate) const LEN: usize = 9;
}

/// The sum of every unit's `value`, the same in every unit: a tree over [`CUBE`] slots of
/// `scratch`, always in the same order. Every unit must call it.
#[cube]
pub(crate) fn cube_sum(value: f32, scratch: &mut SharedMemory<f32>, unit: usize) -> f32 {
    scratch[unit] = value;
    sync_cube();
    for step in 0..8u32 {
        let width = (CUBE >> (step + 1)) as usize;
        if unit < width {
            scratch[unit] += scratch[unit + width];
        }
        sync_cube();
    }
    let total = scratch[0];
    // The scratch may be reused right after.
    sync_cube();
    total
}

/// The sum of `values[0..len]`, the same in every unit: each unit adds a contiguous run in
/// order, then [`cube_sum`]. Every unit must call it.
#[cube]
pub(crate) fn ordered_sum(
    values: &Array<f32>,
    len: usize,
    scratch: &mut SharedMemory<f32>,
    unit: usize,
) -> f32 {
    let start = run_start(len, unit);
    let end = run_start(len, unit + 1);
    let mut sum = 0.0f32;
    let mut i = start;
    while i < end {
        sum += values[i];
        i += 1;
    }
    cube_sum(sum, scratch, unit)
}

/// Partial column sums over blocks of [`ROWS_PER_BLOCK`] rows: `partials[b * cols + j]` is
/// the sum over block `b`'s rows of the term `mode` names. Cube `c` covers columns
/// `(c % col_groups) * CUBE ..` of block `c / col_groups`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn column_sums(
    matrix: &Array<f32>,
    weights: &Array<f32>,
    center: &Array<f32>,
    partials: &mut Array<f32>,
    rows: u32,
    cols: u32,
    col_groups: u32,
    #[comptime] mode: u32,
) {
    let c = cube_index();
    let group = c % col_groups as usize;
    let block = c / col_groups as usize;
    let j = group * CUBE as usize + UNIT_POS as usize;
    let first = block * ROWS_PER_BLOCK as usize;
    let n = cols as usize;
    if j < n && first < rows as usize {
        let end = min(first + ROWS_PER_BLOCK as usize, rows as usize);
        let mut sum = 0.0f32;
        let mut r = first;
        while r < end {
            let x = matrix[r * n + j];
            if comptime![mode == PLAIN] {
                sum += x;
            } else if comptime![mode == WEIGHTED] {
                sum += weights[r] * x;
            } else {
                let y = x - center[j];
                sum += y * y;
            }
            r += 1;
        }
        partials[block * n + j] = sum;
    }
}

/// Column means from the partial sums of [`column_sums`]: `means[j] = sum_b partials / rows`.
#[cube(launch)]
pub(crate) fn column_means(partials: &Array<f32>, means: &mut Array<f32>, rows: u32, cols: u32) {
    let j = cube_index() * CUBE as usize + UNIT_POS as usize;
    let n = cols as usize;
    if j < n {
        let blocks = (rows as usize).div_ceil(ROWS_PER_BLOCK as usize);
        let mut sum = 0.0f32;
        for b in 0..blocks {
            sum += partials[b * n + j];
        }
        means[j] = sum / f32::cast_from(rows);
    }
}

/// The step's loss sums and gradient scales, one cube.
///
/// `status` gets `[sum of squared errors, auxiliary numerator, total variance]`; `scales`
/// gets `[dL/dx_hat per unit error, dL/de_hat per unit auxiliary error]`: `-2 / variance`
/// (FVU) or `-2 / (N d)` (MSE), and `-2 aux_coef / sse`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn loss_sums(
    token_sse: &Array<f32>,
    token_aux: &Array<f32>,
    variance_partials: &Array<f32>,
    hyper: &Array<f32>,
    status: &mut Array<f32>,
    scales: &mut Array<f32>,
    tokens: u32,
    variance_len: u32,
    #[comptime] fvu: bool,
    #[comptime] with_aux: bool,
) {
    let unit = UNIT_POS as usize;
    let mut scratch = SharedMemory::<f32>::new(CUBE as usize);
    let sse = ordered_sum(token_sse, tokens as usize, &mut scratch, unit);
    let variance = ordered_sum(variance_partials, variance_len as usize, &mut scratch, unit);
    let mut aux = 0.0f32;
    if with_aux {
        aux = ordered_sum(token_aux, tokens as usize, &mut scratch, unit);
    }
    if unit == 0 {
        status[0] = sse;
        status[1] = aux;
        status[2] = variance;
        let mut recon = hyper[slot::MSE_SCALE];
        if fvu {
            recon = 1.0f32 / variance;
        }
        scales[0] = -2.0f32 * recon;
        scales[1] = 0.0f32;
        if with_aux {
            scales[1] = -2.0f32 * hyper[slot::AUX_COEF] / sse;
        }
    }
}
