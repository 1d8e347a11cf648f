//! Row top-k in one read of the score matrix: each cube holds its row in registers.
//!
//! One cube per row loads the row once, in chunks of [`CHUNK`] scores staged in shared
//! memory for coalesced reads; unit `u` keeps the contiguous run `u * RUN .. (u + 1) * RUN` of
//! every chunk in a local array (its registers). The radix select of [`crate::select`] and
//! the ordered compaction of [`crate::compact`] then run on those registers, so the matrix is
//! read once instead of once per radix pass plus once for the compaction. Rows of up to
//! [`MAX_COLS`] scores fit; longer rows take the streaming kernels.

use cubecl::prelude::*;

use crate::key::{
    CUBE, HIST_WORDS, NO_KEY, RADIX_BITS, cube_index, hist_add, hist_clear, hist_count,
    is_nan_bits, key_of_bits, pick_digit, units_before,
};
use crate::launch::resident_chunks;

/// Scores a unit keeps from one chunk.
const RUN: u32 = 16;
/// Scores per staged chunk.
const CHUNK: u32 = CUBE * RUN;
/// Most chunks a cube holds (128 registers per unit).
const MAX_CHUNKS: u32 = 8;
/// Longest row the resident kernel takes.
pub(crate) const MAX_COLS: usize = (CHUNK * MAX_CHUNKS) as usize;

/// Chunks a row of `cols` scores needs.
pub(crate) fn chunks_for(cols: usize) -> u32 {
    resident_chunks(cols, CHUNK)
}

/// Shared-memory slot of staged score `i`: one pad word every 32, so units copying
/// contiguous runs of [`RUN`] scores hit distinct banks.
#[cube]
fn staged(i: usize) -> usize {
    i + i / 32
}

/// Column of a unit's `i`-th kept score: chunk-major, then unit, then position in the run.
#[cube]
fn column(i: usize, unit: usize) -> usize {
    let chunk = i / RUN as usize;
    chunk * CHUNK as usize + unit * RUN as usize + i % RUN as usize
}

/// Whether the score with raw `bits` in column `col` is kept by threshold `t` and tie limit
/// `limit`, in a row of `n` columns.
#[cube]
fn kept(bits: u32, col: usize, n: usize, t: u32, limit: u32) -> bool {
    let key = key_of_bits(bits);
    col < n && (key > t || (key == t && (col as u32) < limit))
}

/// Keeps the `k` largest scores of every row (ties to the lower column), writing them at
/// `row * k`, features ascending, and counting every feature's selections.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn row_topk_resident(
    scores: &Array<f32>,
    tokens: &mut Array<u32>,
    features: &mut Array<u32>,
    values: &mut Array<f32>,
    feature_counts: &mut Array<Atomic<u32>>,
    nan: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    k: u32,
    #[comptime] chunks: u32,
    #[comptime] planes: bool,
) {
    let r = cube_index();
    // The whole cube takes the same branch, so the barriers inside stay uniform.
    if r < rows as usize {
        let unit = UNIT_POS as usize;
        let n = cols as usize;
        let base = r * n;
        let held = comptime![(chunks * RUN) as usize];
        let mut bits = Array::<u32>::new(held);

        // The one read of the row.
        let mut stage = SharedMemory::<u32>::new((CHUNK + CHUNK / 32) as usize);
        for c in 0..chunks {
            let start = (c * CHUNK) as usize;
            for i in 0..RUN {
                let j = (i * CUBE) as usize + unit;
                if start + j < n {
                    stage[staged(j)] = u32::reinterpret(scores[base + start + j]);
                }
            }
            sync_cube();
            for i in 0..RUN {
                let col = start + unit * RUN as usize + i as usize;
                let b = stage[staged(unit * RUN as usize + i as usize)];
                if col < n && is_nan_bits(b) {
                    nan[0].fetch_min((base + col) as u32);
                }
                bits[(c * RUN + i) as usize] = b;
            }
            sync_cube();
        }

        // Radix select on the registers (as `select_groups` does on the matrix).
        let hist = SharedMemory::<Atomic<u32>>::new(HIST_WORDS as usize);
        let mut scan = SharedMemory::<u32>::new(CUBE as usize);
        let mut state = SharedMemory::<u32>::new(3usize);
        let mut rule = SharedMemory::<u32>::new(2usize);
        let mut prefix = 0u32;
        let mut hi_mask = 0u32;
        let mut remaining = k;
        let mut settled = false;
        for pass in 0..4u32 {
            if !settled {
                let shift = 24u32 - RADIX_BITS * pass;
                hist_clear(&hist, unit);
                if unit == 0 {
                    state[0] = 0u32;
                    state[1] = 0u32;
                    state[2] = 0u32;
                }
                sync_cube();
                for i in 0..held {
                    let key = key_of_bits(bits[i]);
                    if column(i, unit) < n && (key & hi_mask) == prefix {
                        hist_add(&hist, (key >> shift) & 255u32, unit);
                    }
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
        if unit == 0 {
            if settled {
                // Every key at or above `prefix` is kept, and no other.
                rule[0] = select(prefix > 0u32, prefix - 1u32, 0u32);
                rule[1] = select(prefix > 0u32, 0u32, cols);
            } else {
                rule[0] = prefix;
                rule[1] = 0u32;
            }
            if k == 0u32 {
                rule[0] = NO_KEY;
                rule[1] = 0u32;
            }
        }
        sync_cube();
        if !settled && k > 0u32 {
            // Only some ties at the full key `prefix` are kept: the first `remaining` of them
            // in column order, chunk by chunk.
            let mut before_chunk = 0u32;
            for c in 0..chunks {
                let mut ties = 0u32;
                for i in 0..RUN {
                    let at = (c * RUN + i) as usize;
                    if column(at, unit) < n && key_of_bits(bits[at]) == prefix {
                        ties += 1u32;
                    }
                }
                let before = before_chunk + units_before(ties, &mut scan, unit, planes);
                if before < remaining && remaining <= before + ties {
                    let mut seen = before;
                    for i in 0..RUN {
                        let at = (c * RUN + i) as usize;
                        if column(at, unit) < n && key_of_bits(bits[at]) == prefix {
                            seen += 1u32;
                            if seen == remaining {
                                rule[1] = (column(at, unit) + 1) as u32;
                            }
                        }
                    }
                }
                before_chunk += scan[CUBE as usize - 1];
                // The next chunk's scan overwrites this one's.
                sync_cube();
            }
        }
        let t = rule[0];
        let limit = rule[1];

        // Ordered compaction from the registers.
        let mut written = r * k as usize;
        for c in 0..chunks {
            let mut mine = 0u32;
            for i in 0..RUN {
                let at = (c * RUN + i) as usize;
                if kept(bits[at], column(at, unit), n, t, limit) {
                    mine += 1u32;
                }
            }
            let mut out = written + units_before(mine, &mut scan, unit, planes) as usize;
            for i in 0..RUN {
                let at = (c * RUN + i) as usize;
                let col = column(at, unit);
                if kept(bits[at], col, n, t, limit) {
                    tokens[out] = r as u32;
                    features[out] = col as u32;
                    values[out] = f32::reinterpret(bits[at]);
                    feature_counts[col].fetch_add(1u32);
                    out += 1;
                }
            }
            written += scan[CUBE as usize - 1] as usize;
            sync_cube();
        }
    }
}
