//! Radix select inside one group (a row or a column), one cube per group.
//!
//! A group's `k`-th largest key is found in four passes of eight bits: each pass builds a
//! 256-bin shared-memory histogram of the digit of the keys that still match the prefix found
//! so far, and one prefix sum over the bins picks the digit holding the `k`-th key. The result
//! is the group's threshold key `T` and the number of ties at `T` to keep; a last pass finds
//! where the last kept tie sits (ties are kept by lowest position), so the selection becomes
//! the element-wise rule `key > T || (key == T && position < tie_limit)`.
//!
//! As soon as the chosen bin is kept whole (its count equals what is still needed), the
//! threshold is settled just below the bin and the remaining passes are skipped: with
//! continuous scores this usually happens after two or three passes, and no tie search runs.

use cubecl::prelude::*;

use crate::key::{
    CUBE, HIST_WORDS, NO_KEY, RADIX_BITS, cube_index, hist_add, hist_clear, hist_count,
    is_nan_bits, key_of_bits, pick_digit, run_start, units_before,
};

/// Finds every group's threshold key and tie limit.
///
/// Group `g` holds the `len` scores at `g * group_step + j * elem_step`, `j = 0..len`, and
/// keeps `ks[g]` of them (`ks[0]` for every group unless `per_group_k`). Writes
/// `thresholds[g]` (the `k`-th largest key, [`NO_KEY`] when `k == 0`) and `tie_limits[g]`
/// (one past the position `j` of the last kept tie, 0 when `k == 0`). The flat index of the
/// first NaN seen goes to `nan[0]` by atomic minimum.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn select_groups(
    scores: &Array<f32>,
    ks: &Array<u32>,
    thresholds: &mut Array<u32>,
    tie_limits: &mut Array<u32>,
    nan: &mut Array<Atomic<u32>>,
    groups: u32,
    len: u32,
    group_step: u32,
    elem_step: u32,
    #[comptime] per_group_k: bool,
    #[comptime] planes: bool,
) {
    let g = cube_index();
    // The whole cube takes the same branch, so the barriers inside stay uniform.
    if g < groups as usize {
        let unit = UNIT_POS as usize;
        let n = len as usize;
        let step = elem_step as usize;
        let base = g * group_step as usize;
        let mut k = ks[0];
        if per_group_k {
            k = ks[g];
        }

        let hist = SharedMemory::<Atomic<u32>>::new(HIST_WORDS as usize);
        let mut scan = SharedMemory::<u32>::new(CUBE as usize);
        let mut state = SharedMemory::<u32>::new(3usize);

        let mut prefix = 0u32;
        let mut hi_mask = 0u32;
        let mut remaining = k;
        // Once the count of the chosen digit equals `remaining`, the whole bin is kept and the
        // threshold is settled without the remaining passes.
        let mut settled = false;
        for pass in 0..4u32 {
            // `settled` comes from shared memory after a barrier: the branch is uniform.
            if !settled {
                let shift = 24u32 - RADIX_BITS * pass;
                hist_clear(&hist, unit);
                if unit == 0 {
                    state[0] = 0u32;
                    state[1] = 0u32;
                    state[2] = 0u32;
                }
                sync_cube();
                let mut j = unit;
                while j < n {
                    let at = base + j * step;
                    let bits = u32::reinterpret(scores[at]);
                    if pass == 0 && is_nan_bits(bits) {
                        nan[0].fetch_min(at as u32);
                    }
                    let key = key_of_bits(bits);
                    if (key & hi_mask) == prefix {
                        hist_add(&hist, (key >> shift) & 255u32, unit);
                    }
                    j += CUBE as usize;
                }
                sync_cube();
                let count = hist_count(&hist, 255 - unit);
                pick_digit(count, &mut scan, &mut state, remaining, unit, planes);
                prefix |= state[0] << shift;
                remaining -= state[1];
                hi_mask |= 255u32 << shift;
                settled = state[2] == remaining;
                sync_cube();
            }
        }

        if !settled {
            // Only some ties at the full key `prefix` are kept. Where is the `remaining`-th?
            // Units scan contiguous runs, so run order is position order.
            let (start, end) = (run_start(n, unit), run_start(n, unit + 1));
            let mut ties = 0u32;
            let mut j = start;
            while j < end {
                let key = key_of_bits(u32::reinterpret(scores[base + j * step]));
                if key == prefix {
                    ties += 1u32;
                }
                j += 1;
            }
            let before = units_before(ties, &mut scan, unit, planes);
            let through = before + ties;
            if before < remaining && remaining <= through {
                let mut seen = before;
                let mut j = start;
                while j < end {
                    let key = key_of_bits(u32::reinterpret(scores[base + j * step]));
                    if key == prefix {
                        seen += 1u32;
                        if seen == remaining {
                            tie_limits[g] = (j + 1) as u32;
                        }
                    }
                    j += 1;
                }
            }
            if unit == 0 {
                thresholds[g] = prefix;
            }
        } else if unit == 0 {
            // Every key at or above `prefix` (its low bits are still zero) is kept, and no
            // other: the threshold sits just below it, with no ties.
            if prefix > 0u32 {
                thresholds[g] = prefix - 1u32;
                tie_limits[g] = 0u32;
            } else {
                thresholds[g] = 0u32;
                tie_limits[g] = len;
            }
        }
        // Nothing is kept when k = 0 (the passes above still looked for NaN).
        if unit == 0 && k == 0u32 {
            thresholds[g] = NO_KEY;
            tie_limits[g] = 0u32;
        }
    }
}
