//! TopK SAE: each token keeps its `k` largest features.

use cubecl::prelude::*;
use sae_alloc::AllocError;

use crate::KernelError;
use crate::compact::{BY_ROW, RowSizes, compact_rows};
use crate::launch::{array, filled, grid, uninit, unit_dim};
use crate::output::{DeviceScores, DeviceSelection};
use crate::select::select_groups;

/// Keeps the `k` largest scores of every row (ties: lower column first), the rule of
/// [`sae_alloc::row_topk`]. One cube per row finds the row's threshold by radix select, then
/// one cube per row writes its `k` features in ascending order.
pub fn row_topk<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    k: usize,
) -> Result<DeviceSelection<R>, KernelError> {
    let (rows, cols) = (scores.rows(), scores.cols());
    if k > cols {
        return Err(AllocError::KTooLarge { k, cols }.into());
    }
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
