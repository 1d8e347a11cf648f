//! Ordered compaction: from per-group thresholds to the CSR layout of a `Selection`.
//!
//! Every rule ends in the same element-wise test, `key > T || (key == T && pos < tie_limit)`,
//! where `T`, `tie_limit` and the position `pos` belong to the element's row (TopK), column
//! (Feature Choice) or the whole matrix (Mutual Choice). One cube per row counts its kept
//! scores, one cube turns the counts into offsets, and one cube per row writes its kept
//! features in ascending order (chunks of the row staged in shared memory, a prefix sum over
//! contiguous runs of each chunk).

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::KernelError;
use crate::key::{CUBE, NO_KEY, cube_index, is_nan_bits, key_of_bits, run_start, units_before};
use crate::launch::{array, grid, read_u32, uninit, unit_dim, zeros};
use crate::output::{DeviceScores, DeviceSelection};

/// `T` and `tie_limit` are per row, the position is the column.
pub(crate) const BY_ROW: u32 = 0;
/// `T` and `tie_limit` are per column, the position is the row.
pub(crate) const BY_COLUMN: u32 = 1;
/// One `T` and `tie_limit` for the matrix, the position is the row-major index.
pub(crate) const WHOLE: u32 = 2;

/// Whether the score with `key` at (`row`, `col`) is kept.
#[cube]
// The zero initial values are overwritten by exactly one comptime branch.
#[allow(unused_assignments)]
pub(crate) fn keeps(
    key: u32,
    row: usize,
    col: usize,
    cols: usize,
    thresholds: &Array<u32>,
    tie_limits: &Array<u32>,
    #[comptime] mode: u32,
) -> bool {
    let mut threshold = 0u32;
    let mut limit = 0u32;
    let mut pos = 0u32;
    if comptime![mode == BY_ROW] {
        threshold = thresholds[row];
        limit = tie_limits[row];
        pos = col as u32;
    } else if comptime![mode == BY_COLUMN] {
        threshold = thresholds[col];
        limit = tie_limits[col];
        pos = row as u32;
    } else {
        threshold = thresholds[0];
        limit = tie_limits[0];
        pos = (row * cols + col) as u32;
    }
    let above = key > threshold;
    let tie = key == threshold && pos < limit;
    above || tie
}

/// Number of kept scores of every row; with `check_nan`, also records the first NaN.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
// `check_nan` is a comptime flag: nesting keeps the NaN test out of kernels that skip it.
#[allow(clippy::collapsible_if)]
pub(crate) fn row_counts(
    scores: &Array<f32>,
    thresholds: &Array<u32>,
    tie_limits: &Array<u32>,
    counts: &mut Array<u32>,
    nan: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    #[comptime] mode: u32,
    #[comptime] check_nan: bool,
) {
    let r = cube_index();
    if r < rows as usize {
        let unit = UNIT_POS as usize;
        let n = cols as usize;
        let base = r * n;
        let total = SharedMemory::<Atomic<u32>>::new(1usize);
        if unit == 0 {
            total[0].store(0u32);
        }
        sync_cube();
        let mut mine = 0u32;
        let mut f = unit;
        while f < n {
            let bits = u32::reinterpret(scores[base + f]);
            if check_nan {
                if is_nan_bits(bits) {
                    nan[0].fetch_min((base + f) as u32);
                }
            }
            if keeps(key_of_bits(bits), r, f, n, thresholds, tie_limits, mode) {
                mine += 1u32;
            }
            f += CUBE as usize;
        }
        if mine > 0u32 {
            total[0].fetch_add(mine);
        }
        sync_cube();
        if unit == 0 {
            counts[r] = total[0].load();
        }
    }
}

/// CSR offsets (`rows + 1` of them) from per-row counts; one cube.
#[cube(launch)]
pub(crate) fn exclusive_offsets(
    counts: &Array<u32>,
    offsets: &mut Array<u32>,
    rows: u32,
    #[comptime] planes: bool,
) {
    let unit = UNIT_POS as usize;
    let n = rows as usize;
    let mut scan = SharedMemory::<u32>::new(CUBE as usize);
    let (start, end) = (run_start(n, unit), run_start(n, unit + 1));
    let mut sum = 0u32;
    let mut j = start;
    while j < end {
        sum += counts[j];
        j += 1;
    }
    let mut at = units_before(sum, &mut scan, unit, planes);
    let mut j = start;
    while j < end {
        offsets[j] = at;
        at += counts[j];
        j += 1;
    }
    if unit == (CUBE - 1) as usize {
        offsets[n] = scan[unit];
    }
}

/// Offsets of a rule that keeps exactly `k` scores per row: `offsets[i] = i * k`.
#[cube(launch)]
pub(crate) fn uniform_offsets(offsets: &mut Array<u32>, rows: u32, k: u32) {
    let i = cube_index() * CUBE as usize + UNIT_POS as usize;
    if i <= rows as usize {
        offsets[i] = i as u32 * k;
    }
}

/// Scores per unit in one chunk of a row staged in shared memory by [`row_compact`].
const STAGE_PER_UNIT: u32 = 16;
/// Scores per staged chunk.
const STAGE: u32 = CUBE * STAGE_PER_UNIT;

/// Shared-memory slot of staged score `i`: one pad word every 32, so units reading
/// contiguous runs of [`STAGE_PER_UNIT`] scores hit distinct banks.
#[cube]
fn staged(i: usize) -> usize {
    i + i / 32
}

/// Writes every row's kept (token, feature, score) triples at its offset, features ascending,
/// and counts the selections of every feature.
///
/// One cube per row walks it in chunks of [`STAGE`] scores: the chunk is loaded into shared
/// memory with coalesced reads, each unit counts the kept scores of its contiguous run of the
/// chunk, a prefix sum over the units gives each run its output position, and the runs are
/// written in order.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn row_compact(
    scores: &Array<f32>,
    thresholds: &Array<u32>,
    tie_limits: &Array<u32>,
    offsets: &Array<u32>,
    tokens: &mut Array<u32>,
    features: &mut Array<u32>,
    values: &mut Array<f32>,
    feature_counts: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    #[comptime] mode: u32,
    #[comptime] planes: bool,
) {
    let r = cube_index();
    if r < rows as usize {
        let unit = UNIT_POS as usize;
        let n = cols as usize;
        let base = r * n;
        let mut stage = SharedMemory::<f32>::new((STAGE + STAGE / 32) as usize);
        let mut scan = SharedMemory::<u32>::new(CUBE as usize);
        let mut written = offsets[r] as usize;
        let mut chunk = 0usize;
        while chunk < n {
            for i in 0..STAGE_PER_UNIT {
                let j = (i * CUBE) as usize + unit;
                if chunk + j < n {
                    stage[staged(j)] = scores[base + chunk + j];
                }
            }
            sync_cube();
            let first = unit * STAGE_PER_UNIT as usize;
            let end = min(first + STAGE_PER_UNIT as usize, n - chunk);
            let mut mine = 0u32;
            let mut j = first;
            while j < end {
                let key = key_of_bits(u32::reinterpret(stage[staged(j)]));
                if keeps(key, r, chunk + j, n, thresholds, tie_limits, mode) {
                    mine += 1u32;
                }
                j += 1;
            }
            let mut at = written + units_before(mine, &mut scan, unit, planes) as usize;
            let mut j = first;
            while j < end {
                let x = stage[staged(j)];
                let f = chunk + j;
                if keeps(
                    key_of_bits(u32::reinterpret(x)),
                    r,
                    f,
                    n,
                    thresholds,
                    tie_limits,
                    mode,
                ) {
                    tokens[at] = r as u32;
                    features[at] = f as u32;
                    values[at] = x;
                    feature_counts[f].fetch_add(1u32);
                    at += 1;
                }
                j += 1;
            }
            written += scan[CUBE as usize - 1] as usize;
            chunk += STAGE as usize;
            // The next chunk overwrites the stage and the scan.
            sync_cube();
        }
    }
}

/// Threshold keys for inference: a score is kept when strictly above its feature's threshold,
/// i.e. its key is above the threshold's key, with no ties. A NaN threshold keeps nothing.
#[cube(launch)]
pub(crate) fn threshold_keys(
    thresholds: &Array<f32>,
    keys: &mut Array<u32>,
    tie_limits: &mut Array<u32>,
    count: u32,
) {
    let i = cube_index() * CUBE as usize + UNIT_POS as usize;
    if i < count as usize {
        let bits = u32::reinterpret(thresholds[i]);
        let mut key = key_of_bits(bits);
        if is_nan_bits(bits) {
            key = NO_KEY;
        }
        keys[i] = key;
        tie_limits[i] = 0u32;
    }
}

/// How the CSR offsets of a selection are obtained.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowSizes {
    /// Every row keeps exactly this many scores.
    Uniform(usize),
    /// Counted on the device; the total, if known beforehand, avoids reading it back.
    Counted(Option<usize>),
}

/// Runs the compaction for per-group thresholds already on the device.
///
/// `thresholds` and `tie_limits` come with their element counts; `mode` says whose they are
/// (`BY_ROW`, `BY_COLUMN`, `WHOLE`).
pub(crate) fn compact_rows<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    thresholds: (&Handle, usize),
    tie_limits: (&Handle, usize),
    mode: u32,
    nan: Handle,
    check_nan: bool,
    sizes: RowSizes,
) -> Result<DeviceSelection<R>, KernelError> {
    let client = scores.client();
    let (rows, cols) = (scores.rows(), scores.cols());
    let total = rows * cols;
    let (offsets, nnz) = match sizes {
        RowSizes::Uniform(k) => (uniform_row_offsets(client, rows, k), rows * k),
        RowSizes::Counted(known) => {
            let offsets = uninit(client, rows + 1);
            let counts = uninit(client, rows);
            row_counts::launch::<R>(
                client,
                grid(rows),
                unit_dim(),
                array(scores.handle(), total),
                array(thresholds.0, thresholds.1),
                array(tie_limits.0, tie_limits.1),
                array(&counts, rows),
                array(&nan, 1),
                rows as u32,
                cols as u32,
                mode,
                check_nan,
            );
            exclusive_offsets::launch::<R>(
                client,
                CubeCount::Static(1, 1, 1),
                unit_dim(),
                array(&counts, rows),
                array(&offsets, rows + 1),
                rows as u32,
                scores.plane_ops(),
            );
            let nnz = match known {
                Some(n) => n,
                None => read_u32(client, &offsets)?[rows] as usize,
            };
            (offsets, nnz)
        }
    };
    let out = PairOutputs::new(client, nnz, cols);
    row_compact::launch::<R>(
        client,
        grid(rows),
        unit_dim(),
        array(scores.handle(), total),
        array(thresholds.0, thresholds.1),
        array(tie_limits.0, tie_limits.1),
        array(&offsets, rows + 1),
        array(&out.tokens, nnz),
        array(&out.features, nnz),
        array(&out.values, nnz),
        array(&out.feature_counts, cols),
        rows as u32,
        cols as u32,
        mode,
        scores.plane_ops(),
    );
    Ok(out.into_selection(client, (rows, cols, nnz), offsets, nan))
}

/// The CSR offsets of `rows` rows of `k` pairs each: `i * k`.
pub(crate) fn uniform_row_offsets<R: Runtime>(
    client: &ComputeClient<R>,
    rows: usize,
    k: usize,
) -> Handle {
    let offsets = uninit(client, rows + 1);
    uniform_offsets::launch::<R>(
        client,
        grid((rows + 1).div_ceil(CUBE as usize)),
        unit_dim(),
        array(&offsets, rows + 1),
        rows as u32,
        k as u32,
    );
    offsets
}

/// The per-pair outputs a compaction writes: token, feature and score of each of `nnz` pairs,
/// and each feature's count (zeroed).
pub(crate) struct PairOutputs {
    pub(crate) tokens: Handle,
    pub(crate) features: Handle,
    pub(crate) values: Handle,
    pub(crate) feature_counts: Handle,
}

impl PairOutputs {
    /// Buffers for `nnz` pairs over `cols` features.
    pub(crate) fn new<R: Runtime>(client: &ComputeClient<R>, nnz: usize, cols: usize) -> Self {
        Self {
            tokens: uninit(client, nnz),
            features: uninit(client, nnz),
            values: uninit(client, nnz),
            feature_counts: zeros(client, cols),
        }
    }

    /// The selection of a `(rows, cols, nnz)` matrix with these outputs, its CSR `offsets` and
    /// its NaN flag.
    pub(crate) fn into_selection<R: Runtime>(
        self,
        client: &ComputeClient<R>,
        (rows, cols, nnz): (usize, usize, usize),
        offsets: Handle,
        nan: Handle,
    ) -> DeviceSelection<R> {
        DeviceSelection {
            client: client.clone(),
            rows,
            cols,
            nnz,
            offsets,
            tokens: self.tokens,
            features: self.features,
            scores: self.values,
            feature_counts: self.feature_counts,
            nan,
        }
    }
}
