//! Feature Choice: each feature keeps its `m_f` largest tokens.

use cubecl::prelude::*;
use cubecl::server::Handle;
use sae_alloc::Capacities;

use crate::KernelError;
use crate::column_resident::{MAX_ROWS, STRIP, chunks_for, column_select_resident};
use crate::compact::{BY_COLUMN, RowSizes, compact_rows};
use crate::launch::{array, check_words, filled, grid, uninit, unit_dim};
use crate::output::{DeviceScores, DeviceSelection};
use crate::select::select_groups;

/// Which kernel finds the columns' thresholds in [`column_topm_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColumnKernel {
    /// One cube per strip of 8 adjacent columns holds them in registers, so the matrix is
    /// read once, a 32-byte sector per row of a strip; columns longer than 4096 rows do not
    /// fit and stream.
    #[default]
    Resident,
    /// One cube per column reads the column once per radix pass, 4 bytes a row.
    Streaming,
}

/// Keeps, for every feature `f`, its `capacities[f]` largest tokens (ties: lower row first),
/// the rule of [`sae_alloc::column_topm`]. The capacities (`cols` u32) are uploaded; the
/// scores never leave the device. Columns of up to 4096 rows are read once, by strips of 8
/// columns held in registers; longer columns stream.
pub fn column_topm<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    capacities: &Capacities,
) -> Result<DeviceSelection<R>, KernelError> {
    column_topm_with(scores, capacities, ColumnKernel::Resident)
}

/// [`column_topm`] by the kernel `kernel` names (the same result bit for bit).
pub fn column_topm_with<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    capacities: &Capacities,
    kernel: ColumnKernel,
) -> Result<DeviceSelection<R>, KernelError> {
    let (rows, cols) = (scores.rows(), scores.cols());
    let caps = capacities.for_shape(rows, cols)?;
    let handle = scores.client().create_from_slice(u32::as_bytes(caps));
    select_and_compact(scores, &handle, capacities.budget(), kernel)
}

/// [`column_topm`] with the capacities already on the device: `capacities` holds `cols` u32,
/// each at most `rows`, summing to `budget`. These conditions are not checked (checking
/// would read the capacities back); breaking them gives a meaningless selection.
pub fn column_topm_on_device<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    capacities: &Handle,
    budget: usize,
) -> Result<DeviceSelection<R>, KernelError> {
    select_and_compact(scores, capacities, budget, ColumnKernel::Resident)
}

/// The columns' thresholds by `kernel`, then the ordered compaction.
fn select_and_compact<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    capacities: &Handle,
    budget: usize,
    kernel: ColumnKernel,
) -> Result<DeviceSelection<R>, KernelError> {
    let (rows, cols) = (scores.rows(), scores.cols());
    check_words("capacities", capacities, cols)?;
    let client = scores.client();
    let thresholds = uninit(client, cols);
    let tie_limits = uninit(client, cols);
    let nan = filled(client, 1, u32::MAX);
    if kernel == ColumnKernel::Resident && rows <= MAX_ROWS {
        column_select_resident::launch::<R>(
            client,
            grid(cols.div_ceil(STRIP as usize)),
            unit_dim(),
            array(scores.handle(), rows * cols),
            array(capacities, cols),
            array(&thresholds, cols),
            array(&tie_limits, cols),
            array(&nan, 1),
            rows as u32,
            cols as u32,
            chunks_for(rows),
            scores.plane_ops(),
        );
    } else {
        select_groups::launch::<R>(
            client,
            grid(cols),
            unit_dim(),
            array(scores.handle(), rows * cols),
            array(capacities, cols),
            array(&thresholds, cols),
            array(&tie_limits, cols),
            array(&nan, 1),
            cols as u32,
            rows as u32,
            1,
            cols as u32,
            true,
            scores.plane_ops(),
        );
    }
    compact_rows(
        scores,
        (&thresholds, cols),
        (&tie_limits, cols),
        BY_COLUMN,
        nan,
        false,
        RowSizes::Counted(Some(budget)),
    )
}
