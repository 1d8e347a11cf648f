//! Feature Choice: each feature keeps its `m_f` largest tokens.

use cubecl::prelude::*;
use cubecl::server::Handle;
use sae_alloc::Capacities;

use crate::KernelError;
use crate::compact::{BY_COLUMN, RowSizes, compact_rows};
use crate::launch::{array, check_words, filled, grid, uninit, unit_dim};
use crate::output::{DeviceScores, DeviceSelection};
use crate::select::select_groups;

/// Keeps, for every feature `f`, its `capacities[f]` largest tokens (ties: lower row first),
/// the rule of [`sae_alloc::column_topm`]. The capacities (`cols` u32) are uploaded; the
/// scores never leave the device.
pub fn column_topm<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    capacities: &Capacities,
) -> Result<DeviceSelection<R>, KernelError> {
    let (rows, cols) = (scores.rows(), scores.cols());
    let caps = capacities.for_shape(rows, cols)?;
    let handle = scores.client().create_from_slice(u32::as_bytes(caps));
    column_topm_on_device(scores, &handle, capacities.budget())
}

/// [`column_topm`] with the capacities already on the device: `capacities` holds `cols` u32,
/// each at most `rows`, summing to `budget`. These conditions are not checked (checking
/// would read the capacities back); breaking them gives a meaningless selection.
pub fn column_topm_on_device<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    capacities: &Handle,
    budget: usize,
) -> Result<DeviceSelection<R>, KernelError> {
    let (rows, cols) = (scores.rows(), scores.cols());
    check_words("capacities", capacities, cols)?;
    let client = scores.client();
    let thresholds = uninit(client, cols);
    let tie_limits = uninit(client, cols);
    let nan = filled(client, 1, u32::MAX);
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
    );
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
