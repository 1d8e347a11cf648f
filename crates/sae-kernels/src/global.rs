//! Mutual Choice / BatchTopK: the `budget` largest scores of the whole matrix.
//!
//! The radix select runs over the whole matrix: each of the four passes is a grid of cubes
//! building shared-memory histograms of one digit (merged into a global histogram by atomic
//! adds) and a one-cube kernel that picks the digit and updates the device-side state (see
//! [`STATE`]); once the chosen bin is kept whole, the later passes return at once. Ties at the
//! threshold are kept by lowest row-major index: a grid kernel counts them per tile and a
//! one-cube kernel finds the last kept one. Nothing is read back to the host in between.
//!
//! With a candidate cut (a score expected at or below the threshold, e.g. the previous batch's
//! threshold lowered by a margin), one pass collects the scores at or above the cut into a
//! candidate buffer and the four radix passes run on the candidates only, so the matrix is read
//! once instead of four times. When fewer than `budget` or more than the buffer holds pass the
//! cut, the radix passes run on the whole matrix as without a cut. Both ways find the same
//! threshold: the `budget` largest scores are all at or above a cut that at least `budget`
//! scores pass.

use cubecl::prelude::*;
use sae_alloc::AllocError;

use crate::KernelError;
use crate::compact::{RowSizes, WHOLE, compact_rows};
use crate::key::{
    CUBE, HIST_WORDS, NO_KEY, RADIX_BITS, cube_index, hist_add, hist_clear, hist_count,
    is_nan_bits, key_of_bits, pick_digit, run_start, score_key, units_before,
};
use crate::launch::{array, filled, grid, uninit, unit_dim, zeros};
use crate::output::{DeviceScores, DeviceSelection};

/// Scores per unit in one tile of the grid kernels.
const PER_UNIT: u32 = 16;
/// Scores per tile (one cube).
const TILE: u32 = CUBE * PER_UNIT;
/// Words of the device-side state: `[prefix, remaining, mask, count of the chosen bin, mode,
/// candidates]`. `mode` is [`ON_CANDIDATES`] when the radix passes run on the candidates of a
/// cut (`candidates` of them) and 0 when they run on the whole matrix.
const STATE: usize = 6;
/// `mode` of the state when the radix passes run on the candidates.
const ON_CANDIDATES: u32 = 1;
/// Candidates a cut may collect per selected score (and at most half the matrix); past that
/// the passes run on the whole matrix.
const CANDIDATES_PER_SELECTED: usize = 16;

/// Adds the digit of `pass` of every score of one tile of `scores[..n]` that matches the
/// state's prefix to the global histogram; every unit of the cube calls it. With `flag_nan`,
/// pass 0 also records the index of the first NaN (`scores` must then be the matrix itself,
/// whose indices name the score).
#[cube]
// The outer test is resolved when the kernel is compiled; the inner one runs on the device.
#[allow(clippy::collapsible_if)]
fn tile_histogram(
    scores: &Array<f32>,
    state: &Array<u32>,
    hist: &mut Array<Atomic<u32>>,
    nan: &mut Array<Atomic<u32>>,
    n: usize,
    pass: u32,
    #[comptime] flag_nan: bool,
) {
    let unit = UNIT_POS as usize;
    let tile_start = cube_index() * TILE as usize;
    let shift = 24u32 - RADIX_BITS * pass;
    let prefix = state[0];
    let hi_mask = state[2];
    let local = SharedMemory::<Atomic<u32>>::new(HIST_WORDS as usize);
    hist_clear(&local, unit);
    sync_cube();
    for i in 0..PER_UNIT {
        let j = tile_start + (i * CUBE) as usize + unit;
        if j < n {
            let bits = u32::reinterpret(scores[j]);
            if flag_nan {
                if pass == 0u32 && is_nan_bits(bits) {
                    nan[0].fetch_min(j as u32);
                }
            }
            let key = key_of_bits(bits);
            if (key & hi_mask) == prefix {
                hist_add(&local, (key >> shift) & 255u32, unit);
            }
        }
    }
    sync_cube();
    let count = hist_count(&local, unit);
    if count > 0u32 {
        hist[(pass * CUBE) as usize + unit].fetch_add(count);
    }
}

/// Whether the radix pass `pass` still has work: pass 0 always, a later one while the
/// threshold is not settled, i.e. while the chosen bin is not kept whole.
#[cube]
fn pass_active(state: &Array<u32>, pass: u32) -> bool {
    pass == 0u32 || state[1] != state[3]
}

/// Histogram of one radix digit over the whole matrix (unless the passes run on candidates).
#[cube(launch)]
pub(crate) fn global_histogram(
    scores: &Array<f32>,
    state: &Array<u32>,
    hist: &mut Array<Atomic<u32>>,
    nan: &mut Array<Atomic<u32>>,
    total: u32,
    pass: u32,
) {
    // Pass 0 also looks for NaN.
    let n = total as usize;
    if cube_index() * (TILE as usize) < n && state[4] != ON_CANDIDATES && pass_active(state, pass) {
        tile_histogram(scores, state, hist, nan, n, pass, true);
    }
}

/// Histogram of one radix digit over the candidates of a cut (when the passes run on them).
#[cube(launch)]
pub(crate) fn candidate_histogram(
    candidates: &Array<f32>,
    state: &Array<u32>,
    hist: &mut Array<Atomic<u32>>,
    nan: &mut Array<Atomic<u32>>,
    pass: u32,
) {
    let n = state[5] as usize;
    if cube_index() * (TILE as usize) < n && state[4] == ON_CANDIDATES && pass_active(state, pass) {
        // A candidate's slot is not its index: `global_candidates` flagged NaN in the matrix.
        tile_histogram(candidates, state, hist, nan, n, pass, false);
    }
}

/// Collects every score whose key is at least `cut` into `candidates` (in no particular
/// order), counting them all in `count[0]` even past `capacity`, and flags NaN scores.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn global_candidates(
    scores: &Array<f32>,
    candidates: &mut Array<f32>,
    count: &mut Array<Atomic<u32>>,
    nan: &mut Array<Atomic<u32>>,
    total: u32,
    capacity: u32,
    cut: u32,
) {
    let unit = UNIT_POS as usize;
    let tile_start = cube_index() * TILE as usize;
    let n = total as usize;
    if tile_start < n {
        let mut bits = Array::<u32>::new(PER_UNIT as usize);
        let mut mine = 0u32;
        for i in 0..PER_UNIT {
            let j = tile_start + (i * CUBE) as usize + unit;
            let mut b = 0u32;
            if j < n {
                b = u32::reinterpret(scores[j]);
                if is_nan_bits(b) {
                    nan[0].fetch_min(j as u32);
                }
                if key_of_bits(b) >= cut {
                    mine += 1u32;
                }
            }
            bits[i as usize] = b;
        }
        // One global atomic per cube: units take their places in the cube's block first.
        let block = SharedMemory::<Atomic<u32>>::new(1usize);
        let mut base = SharedMemory::<u32>::new(1usize);
        if unit == 0 {
            block[0].store(0u32);
        }
        sync_cube();
        let mut at = block[0].fetch_add(mine);
        sync_cube();
        if unit == 0 {
            base[0] = count[0].fetch_add(block[0].load());
        }
        sync_cube();
        at += base[0];
        for i in 0..PER_UNIT {
            let j = tile_start + (i * CUBE) as usize + unit;
            let b = bits[i as usize];
            if j < n && key_of_bits(b) >= cut {
                if at < capacity {
                    candidates[at as usize] = f32::reinterpret(b);
                }
                at += 1u32;
            }
        }
    }
}

/// Decides where the radix passes run: on the candidates when at least `budget` and at most
/// `capacity` scores passed the cut, on the whole matrix otherwise; one unit.
#[cube(launch)]
pub(crate) fn candidate_verdict(
    count: &Array<u32>,
    state: &mut Array<u32>,
    budget: u32,
    capacity: u32,
) {
    if UNIT_POS == 0 {
        let passed = count[0];
        if budget <= passed && passed <= capacity {
            state[4] = ON_CANDIDATES;
            state[5] = passed;
        }
    }
}

/// Picks the digit of one pass from the merged histogram and updates the state; one cube.
///
/// On the candidates of `cut`, a bin kept whole is kept only from the cut up (the scores of
/// the bin below the cut are not candidates), so the settled threshold is the larger of the
/// bin's lowest key and the cut.
#[cube(launch)]
pub(crate) fn global_pick(
    hist: &Array<u32>,
    state: &mut Array<u32>,
    pass: u32,
    cut: u32,
    #[comptime] planes: bool,
) {
    let unit = UNIT_POS as usize;
    let shift = 24u32 - RADIX_BITS * pass;
    let remaining = state[1];
    // Every unit reads the state before unit 0 rewrites it (after the barriers below).
    if pass == 0u32 || remaining != state[3] {
        let mut scan = SharedMemory::<u32>::new(CUBE as usize);
        let mut choice = SharedMemory::<u32>::new(3usize);
        if unit == 0 {
            choice[0] = 0u32;
            choice[1] = 0u32;
            choice[2] = 0u32;
        }
        let count = hist[(pass * CUBE) as usize + 255 - unit];
        pick_digit(count, &mut scan, &mut choice, remaining, unit, planes);
        if unit == 0 {
            state[0] = state[0] | (choice[0] << shift);
            state[1] = remaining - choice[1];
            state[2] = state[2] | (255u32 << shift);
            state[3] = choice[2];
            if state[4] == ON_CANDIDATES && state[1] == state[3] {
                state[0] = max(state[0], cut);
            }
        }
    }
}

/// Number of scores equal to the threshold key in every tile.
#[cube(launch)]
// Kernel conditions do not short-circuit: the nested test keeps the read in bounds.
#[allow(clippy::collapsible_if)]
pub(crate) fn global_tie_tiles(
    scores: &Array<f32>,
    state: &Array<u32>,
    tile_counts: &mut Array<u32>,
    total: u32,
) {
    let unit = UNIT_POS as usize;
    let t = cube_index();
    let tile_start = t * TILE as usize;
    let n = total as usize;
    // Nothing to count when every tie is kept (`global_tie_find` then skips the search).
    if tile_start < n && state[1] != state[3] {
        let threshold = state[0];
        let count = SharedMemory::<Atomic<u32>>::new(1usize);
        if unit == 0 {
            count[0].store(0u32);
        }
        sync_cube();
        let mut mine = 0u32;
        for i in 0..PER_UNIT {
            let j = tile_start + (i * CUBE) as usize + unit;
            if j < n {
                if key_of_bits(u32::reinterpret(scores[j])) == threshold {
                    mine += 1u32;
                }
            }
        }
        if mine > 0u32 {
            count[0].fetch_add(mine);
        }
        sync_cube();
        if unit == 0 {
            tile_counts[t] = count[0].load();
        }
    }
}

/// Finds the row-major index of the last kept tie and writes the final threshold key and tie
/// limit; one cube.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn global_tie_find(
    scores: &Array<f32>,
    state: &Array<u32>,
    tile_counts: &Array<u32>,
    thresholds: &mut Array<u32>,
    tie_limits: &mut Array<u32>,
    tiles: u32,
    total: u32,
    budget: u32,
    #[comptime] planes: bool,
) {
    let unit = UNIT_POS as usize;
    let threshold = state[0];
    let need = state[1];
    let whole_bin = need == state[3];
    if !whole_bin {
        let mut scan = SharedMemory::<u32>::new(CUBE as usize);
        let mut found = SharedMemory::<u32>::new(2usize);
        if unit == 0 {
            found[0] = 0u32;
            found[1] = 0u32;
        }

        // Which tile holds the need-th tie, and how many ties of that tile are kept?
        let nt = tiles as usize;
        let (start, end) = (run_start(nt, unit), run_start(nt, unit + 1));
        let mut sum = 0u32;
        let mut t = start;
        while t < end {
            sum += tile_counts[t];
            t += 1;
        }
        let before = units_before(sum, &mut scan, unit, planes);
        let through = before + sum;
        if need > 0u32 && before < need && need <= through {
            let mut seen = before;
            let mut t = start;
            while t < end {
                let c = tile_counts[t];
                if seen < need && need <= seen + c {
                    found[0] = t as u32;
                    found[1] = need - seen;
                }
                seen += c;
                t += 1;
            }
        }
        sync_cube();
        let tile = found[0] as usize;
        let want = found[1];

        // Inside that tile, units scan contiguous runs so run order is index order.
        let n = total as usize;
        let first = min(tile * TILE as usize + unit * PER_UNIT as usize, n);
        let last = min(first + PER_UNIT as usize, n);
        let mut ties = 0u32;
        let mut j = first;
        while j < last {
            if key_of_bits(u32::reinterpret(scores[j])) == threshold {
                ties += 1u32;
            }
            j += 1;
        }
        let before = units_before(ties, &mut scan, unit, planes);
        let through = before + ties;
        if want > 0u32 && before < want && want <= through {
            let mut seen = before;
            let mut j = first;
            while j < last {
                if key_of_bits(u32::reinterpret(scores[j])) == threshold {
                    seen += 1u32;
                    if seen == want {
                        tie_limits[0] = (j + 1) as u32;
                    }
                }
                j += 1;
            }
        }
    }
    if unit == 0 {
        if budget == 0u32 {
            thresholds[0] = NO_KEY;
            tie_limits[0] = 0u32;
        } else if whole_bin {
            // Every key at or above `threshold` (a bin's lowest key, or a fully kept key) is
            // kept, and no other: the threshold sits just below it, with no ties.
            if threshold > 0u32 {
                thresholds[0] = threshold - 1u32;
                tie_limits[0] = 0u32;
            } else {
                thresholds[0] = 0u32;
                tie_limits[0] = total;
            }
        } else {
            thresholds[0] = threshold;
        }
    }
}

/// Keeps the `budget` largest scores of the whole matrix (ties: lower row-major index first),
/// the Mutual Choice / BatchTopK rule of [`sae_alloc::global_topk`].
///
/// Runs entirely on the device; the result holds exactly `budget` pairs.
pub fn global_topk<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    budget: usize,
) -> Result<DeviceSelection<R>, KernelError> {
    global_topk_with(scores, budget, None)
}

/// [`global_topk`] with a candidate cut: a score expected at or below the `budget`-th largest
/// (e.g. the previous batch's threshold lowered by a margin). The radix select then runs on the
/// scores at or above the cut, collected in one read of the matrix, when at least `budget` and
/// at most `16 * budget` (and half the matrix) pass; otherwise on the whole matrix. The result
/// is the same bit for bit whatever the cut (any float, NaN included); only the time differs.
pub fn global_topk_with<R: Runtime>(
    scores: &DeviceScores<'_, R>,
    budget: usize,
    cut: Option<f32>,
) -> Result<DeviceSelection<R>, KernelError> {
    let (rows, cols) = (scores.rows(), scores.cols());
    let total = rows * cols;
    if budget > total {
        return Err(AllocError::BudgetTooLarge {
            budget,
            available: total,
        }
        .into());
    }
    let client = scores.client();
    let tiles = total.div_ceil(TILE as usize);
    let state = client.create_from_slice(u32::as_bytes(&[0, budget as u32, 0, 0, 0, 0]));
    let hist = zeros(client, 4 * CUBE as usize);
    let nan = filled(client, 1, u32::MAX);
    // Budget 0 keeps nothing, and a budget over half the matrix leaves a cut little to
    // spare: no candidates then.
    let capacity = (CANDIDATES_PER_SELECTED * budget).min(total / 2);
    let cut = cut.filter(|_| 0 < budget && budget <= capacity).map(|c| {
        let candidates = uninit(client, capacity);
        let count = zeros(client, 1);
        let key = score_key(c);
        global_candidates::launch::<R>(
            client,
            grid(tiles),
            unit_dim(),
            array(scores.handle(), total),
            array(&candidates, capacity),
            array(&count, 1),
            array(&nan, 1),
            total as u32,
            capacity as u32,
            key,
        );
        candidate_verdict::launch::<R>(
            client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(1),
            array(&count, 1),
            array(&state, STATE),
            budget as u32,
            capacity as u32,
        );
        (candidates, capacity, key)
    });
    for pass in 0..4u32 {
        global_histogram::launch::<R>(
            client,
            grid(tiles),
            unit_dim(),
            array(scores.handle(), total),
            array(&state, STATE),
            array(&hist, 4 * CUBE as usize),
            array(&nan, 1),
            total as u32,
            pass,
        );
        if let Some((candidates, capacity, _)) = &cut {
            candidate_histogram::launch::<R>(
                client,
                grid(capacity.div_ceil(TILE as usize)),
                unit_dim(),
                array(candidates, *capacity),
                array(&state, STATE),
                array(&hist, 4 * CUBE as usize),
                array(&nan, 1),
                pass,
            );
        }
        global_pick::launch::<R>(
            client,
            CubeCount::Static(1, 1, 1),
            unit_dim(),
            array(&hist, 4 * CUBE as usize),
            array(&state, STATE),
            pass,
            cut.as_ref().map_or(0, |&(_, _, key)| key),
            scores.plane_ops(),
        );
    }
    let tile_counts = uninit(client, tiles);
    global_tie_tiles::launch::<R>(
        client,
        grid(tiles),
        unit_dim(),
        array(scores.handle(), total),
        array(&state, STATE),
        array(&tile_counts, tiles),
        total as u32,
    );
    let thresholds = uninit(client, 1);
    let tie_limits = uninit(client, 1);
    global_tie_find::launch::<R>(
        client,
        CubeCount::Static(1, 1, 1),
        unit_dim(),
        array(scores.handle(), total),
        array(&state, STATE),
        array(&tile_counts, tiles),
        array(&thresholds, 1),
        array(&tie_limits, 1),
        tiles as u32,
        total as u32,
        budget as u32,
        scores.plane_ops(),
    );
    compact_rows(
        scores,
        (&thresholds, 1),
        (&tie_limits, 1),
        WHOLE,
        nan,
        false,
        RowSizes::Counted(Some(budget)),
    )
}
