//! Order-preserving keys and the block-level building blocks every kernel shares.
//!
//! Kernels rank scores by the same `u32` key as [`sae_alloc::key::score_key`]: unsigned key
//! order equals float order, `-0.0` and `+0.0` share one key. Computing the key from the bits
//! (not with `x + 0.0`) keeps it exact under any float optimisation a GPU compiler applies.

use cubecl::prelude::*;

pub use sae_alloc::key::{key_score, score_key};

/// Units per cube. Equal to the number of radix bins, so one unit owns one bin.
pub(crate) const CUBE: u32 = 256;
/// Bits of the key resolved per radix pass (four passes cover the 32-bit key).
pub(crate) const RADIX_BITS: u32 = 8;
/// Key that no score exceeds: the rule "key > threshold" then keeps nothing.
pub(crate) const NO_KEY: u32 = u32::MAX;
/// Copies of every bin of a shared-memory histogram. Unit `u` adds to copy `u % HIST_COPIES`,
/// so units of one plane that see the same digit (the common case in the first pass, where
/// most scores share their sign and top exponent bits) rarely contend for one address.
pub(crate) const HIST_COPIES: u32 = 8;
/// Shared-memory words of a histogram with its copies.
pub(crate) const HIST_WORDS: u32 = CUBE * HIST_COPIES;

/// The device twin of [`score_key`], from the raw bits of a score.
#[cube]
pub(crate) fn key_of_bits(bits: u32) -> u32 {
    // -0.0 becomes +0.0 so both zeros tie.
    let bits = select(bits == 0x8000_0000u32, 0u32, bits);
    select(
        (bits & 0x8000_0000u32) != 0u32,
        bits ^ 0xFFFF_FFFFu32,
        bits | 0x8000_0000u32,
    )
}

/// Whether the raw bits of a score encode a NaN (tested on bits: GPU compilers may assume
/// floats are never NaN).
#[cube]
pub(crate) fn is_nan_bits(bits: u32) -> bool {
    (bits & 0x7FFF_FFFFu32) > 0x7F80_0000u32
}

/// Inclusive prefix sum of `values[0..CUBE]` in place, one value per unit. Every unit must
/// call it; values must be written before the call.
///
/// With `planes`, each plane (warp) sums its units' values with one plane operation and the
/// planes' totals are added in shared memory: three barriers. Without, a Hillis-Steele scan
/// in shared memory: sixteen barriers, on every device. Both give the same sums.
#[cube]
pub(crate) fn block_inclusive_scan(
    values: &mut SharedMemory<u32>,
    unit: usize,
    #[comptime] planes: bool,
) {
    sync_cube();
    if planes {
        let inclusive = plane_inclusive_sum(values[unit]);
        let plane = unit / PLANE_DIM as usize;
        // One slot per plane; planes have at least one unit.
        let mut totals = SharedMemory::<u32>::new(CUBE as usize);
        if UNIT_POS_PLANE == PLANE_DIM - 1 {
            totals[plane] = inclusive;
        }
        sync_cube();
        let mut before = 0u32;
        for p in 0..plane {
            before += totals[p];
        }
        // Each unit reads and writes its own slot only.
        values[unit] = before + inclusive;
        sync_cube();
    } else {
        for step in 0..8u32 {
            let offset = (1u32 << step) as usize;
            let mut add = 0u32;
            if unit >= offset {
                add = values[unit - offset];
            }
            sync_cube();
            values[unit] += add;
            sync_cube();
        }
    }
}

/// Where the run of unit `unit` starts when a cube splits `0..n` into contiguous runs of
/// equal length (the last ones shorter or empty); the run ends where unit `unit + 1`'s starts.
/// Runs in unit order are in index order, which ordered prefix sums rely on.
#[cube]
pub(crate) fn run_start(n: usize, unit: usize) -> usize {
    min(unit * n.div_ceil(CUBE as usize), n)
}

/// An exclusive prefix sum over units: how many of the `count`s of lower units come before
/// this one's. Every unit must call it; `scan` holds the inclusive sums afterwards.
/// `planes`: see [`block_inclusive_scan`].
#[cube]
pub(crate) fn units_before(
    count: u32,
    scan: &mut SharedMemory<u32>,
    unit: usize,
    #[comptime] planes: bool,
) -> u32 {
    scan[unit] = count;
    block_inclusive_scan(scan, unit, planes);
    scan[unit] - count
}

/// Zeroes every copy of bin `unit` of a [`HIST_WORDS`]-word histogram; every unit calls it.
#[cube]
pub(crate) fn hist_clear(hist: &SharedMemory<Atomic<u32>>, unit: usize) {
    for c in 0..HIST_COPIES {
        hist[unit * HIST_COPIES as usize + c as usize].store(0u32);
    }
}

/// Counts one candidate with `digit` in the copy that `unit` owns.
#[cube]
pub(crate) fn hist_add(hist: &SharedMemory<Atomic<u32>>, digit: u32, unit: usize) {
    let copy = unit % HIST_COPIES as usize;
    hist[(digit * HIST_COPIES) as usize + copy].fetch_add(1u32);
}

/// The count of bin `digit`, over its copies.
#[cube]
pub(crate) fn hist_count(hist: &SharedMemory<Atomic<u32>>, digit: usize) -> u32 {
    let mut sum = 0u32;
    for c in 0..HIST_COPIES {
        sum += hist[digit * HIST_COPIES as usize + c as usize].load();
    }
    sum
}

/// One radix pass's choice: given, in unit `u`, the number of candidates whose current digit
/// is `255 - u`, finds the digit holding the `remaining`-th largest candidate. Writes `(digit,
/// candidates above it)` to `state[0..2]` and that digit's count to `state[2]` (all left
/// unchanged when `remaining` is 0). Every unit must call it. `planes`: see
/// [`block_inclusive_scan`].
#[cube]
pub(crate) fn pick_digit(
    count: u32,
    scan: &mut SharedMemory<u32>,
    state: &mut SharedMemory<u32>,
    remaining: u32,
    unit: usize,
    #[comptime] planes: bool,
) {
    // Unit u holds digit 255 - u, so the prefix sum counts candidates with a digit >= it.
    let above = units_before(count, scan, unit, planes);
    let through = above + count;
    if above < remaining && remaining <= through {
        state[0] = 255u32 - unit as u32;
        state[1] = above;
        state[2] = count;
    }
    sync_cube();
}

/// Index of the cube in a (possibly two-dimensional) grid of cubes.
#[cube]
pub(crate) fn cube_index() -> usize {
    (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize
}
