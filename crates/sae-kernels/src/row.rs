//! TopK SAE: each token keeps its `k` largest features.

use cubecl::prelude::*;
use sae_alloc::AllocError;

use crate::KernelError;
use crate::compact::{BY_ROW, PairOutputs, RowSizes, compact_rows, uniform_row_offsets};
use crate::launch::{array, filled, grid, uninit, unit_dim};
use crate::output::{DeviceScores, DeviceSelection};
use crate::row_resident::{MAX_COLS, chunks_for, row_topk_resident};
use crate::select::select_groups;

/// Which kernels [`row_topk_with`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowKernel {
    /// One cube per row holds its row in registers, so the matrix is read once; rows longer
    /// than 32768 columns do not fit and stream.
    #[default]
    Resident,
    /// A radix select that reads the row once per pass, then a compaction that reads it again.
    Streaming,
}

/// Keeps the `k` largest scores of every row (ties: lower column first), the rule of
/// [`sae_alloc::row_topk`]. Rows of up to 32768 scores are read once, by one cube per row that
/// holds its row in registers; longer rows stream: one cube per row finds the row's threshold
/// by radix select, then one cube per row writes its `k` features in ascending order.
pub fn row_topk<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    k: usize,
) -> Result<DeviceSelection<R>, KernelError> {
    row_topk_with(scores, k, RowKernel::Resident)
}

/// [`row_topk`] by the kernels `kernel` names (the same result bit for bit).
pub fn row_topk_with<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    k: usize,
    kernel: RowKernel,
) -> Result<DeviceSelection<R>, KernelError> {
    let cols = scores.cols();
    if k > cols {
        return Err(AllocError::KTooLarge { k, cols }.into());
    }
    if kernel == RowKernel::Resident && cols <= MAX_COLS {
        return Ok(resident(scores, k));
    }
    streaming(scores, k)
}

/// The resident kernel and the selection's uniform offsets.
fn resident<R: Runtime>(scores: &DeviceScores<'_, R>, k: usize) -> DeviceSelection<R> {
    let (rows, cols) = (scores.rows(), scores.cols());
    let client = scores.client();
    let nnz = rows * k;
    let offsets = uniform_row_offsets(client, rows, k);
    let out = PairOutputs::new(client, nnz, cols);
    let nan = filled(client, 1, u32::MAX);
    row_topk_resident::launch::<R>(
        client,
        grid(rows),
        unit_dim(),
        array(scores.handle(), rows * cols),
        array(&out.tokens, nnz),
        array(&out.features, nnz),
        array(&out.values, nnz),
        array(&out.feature_counts, cols),
        array(&nan, 1),
        rows as u32,
        cols as u32,
        k as u32,
        chunks_for(cols),
        scores.plane_ops(),
    );
    out.into_selection(client, (rows, cols, nnz), offsets, nan)
}

/// The streaming kernels: radix select per row, then the compaction.
fn streaming<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    k: usize,
) -> Result<DeviceSelection<R>, KernelError> {
    let (rows, cols) = (scores.rows(), scores.cols());
    let client = scores.client();
    let ks = filled(client, 1, k as u32);
    let thresholds = uninit(client, rows);
    let tie_limits = uninit(client, rows);
    let nan = filled(client, 1, u32::MAX);
    select_groups::launch::<R>(
        client,
        grid(rows),
        unit_dim(),
        array(scores.handle(), rows * cols),
        array(&ks, 1),
        array(&thresholds, rows),
        array(&tie_limits, rows),
        array(&nan, 1),
        rows as u32,
        cols as u32,
        cols as u32,
        1,
        false,
        scores.plane_ops(),
    );
    compact_rows(
        scores,
        (&thresholds, rows),
        (&tie_limits, rows),
        BY_ROW,
        nan,
        false,
        RowSizes::Uniform(k),
    )
}
