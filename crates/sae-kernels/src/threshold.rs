//! Batch-free inference: keep every score strictly above its feature's threshold.

use cubecl::prelude::*;
use cubecl::server::Handle;
use sae_alloc::{AllocError, Thresholds};

use crate::KernelError;
use crate::compact::{BY_COLUMN, RowSizes, WHOLE, compact_rows, threshold_keys};
use crate::key::CUBE;
use crate::launch::{array, check_words, filled, grid, uninit, unit_dim};
use crate::output::{DeviceScores, DeviceSelection};

/// Keeps every score strictly above its (global or per-feature) threshold, the rule of
/// [`sae_alloc::apply_thresholds`]. The number of kept pairs depends on the data, so it is
/// read back (one u32 per row) to size the outputs.
pub fn apply_thresholds<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    thresholds: &Thresholds,
) -> Result<DeviceSelection<R>, KernelError> {
    let cols = scores.cols();
    let (values, per_feature) = match thresholds {
        Thresholds::Global(t) => (std::slice::from_ref(t), false),
        Thresholds::PerFeature(t) => {
            if t.len() != cols {
                return Err(AllocError::ThresholdCount {
                    got: t.len(),
                    expected: cols,
                }
                .into());
            }
            (t.as_slice(), true)
        }
    };
    let handle = scores.client().create_from_slice(f32::as_bytes(values));
    apply_thresholds_on_device(scores, &handle, per_feature)
}

/// [`apply_thresholds`] with the thresholds already on the device: `cols` f32 when
/// `per_feature`, else one f32 for every feature.
pub fn apply_thresholds_on_device<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    thresholds: &Handle,
    per_feature: bool,
) -> Result<DeviceSelection<R>, KernelError> {
    let count = if per_feature { scores.cols() } else { 1 };
    check_words("thresholds", thresholds, count)?;
    let client = scores.client();
    let keys = uninit(client, count);
    let tie_limits = uninit(client, count);
    threshold_keys::launch::<R>(
        client,
        grid(count.div_ceil(CUBE as usize)),
        unit_dim(),
        array(thresholds, count),
        array(&keys, count),
        array(&tie_limits, count),
        count as u32,
    );
    let nan = filled(client, 1, u32::MAX);
    let mode = if per_feature { BY_COLUMN } else { WHOLE };
    compact_rows(
        scores,
        (&keys, count),
        (&tie_limits, count),
        mode,
        nan,
        true,
        RowSizes::Counted(None),
    )
}
