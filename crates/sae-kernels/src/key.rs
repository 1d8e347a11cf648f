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

/// Inclusive prefix sum of `values[0..CUBE]` in place, one value per unit (Hillis-Steele).
/// Every unit must call it; values must be written before the call.
#[cube]
pub(crate) fn block_inclusive_scan(values: &mut SharedMemory<u32>, unit: usize) {
    sync_cube();
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

/// One radix pass's choice: in a 256-bin histogram of the candidates' current digit, finds the
/// digit holding the `remaining`-th largest candidate. Writes `(digit, candidates above it)`
/// to `state[0..2]` and that digit's count to `state[2]` (all left unchanged when `remaining`
/// is 0). Every unit must call it.
#[cube]
pub(crate) fn pick_digit(
    hist: &SharedMemory<Atomic<u32>>,
    scan: &mut SharedMemory<u32>,
    state: &mut SharedMemory<u32>,
    remaining: u32,
    unit: usize,
) {
    // Unit u holds digit 255 - u, so the prefix sum counts candidates with a digit >= it.
    let count = hist[255 - unit].load();
    scan[unit] = count;
    block_inclusive_scan(scan, unit);
    let through = scan[unit];
    let above = through - count;
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
