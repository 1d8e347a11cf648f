//! Column top-m in one read of the score matrix: each cube holds a strip of columns in
//! registers.
//!
//! A column of a row-major `[N, F]` matrix is strided: one cube per column (the streaming
//! [`crate::select::select_groups`]) reads 4 bytes of every 32-byte memory sector it touches,
//! once per radix pass. Here one cube takes a strip of [`STRIP`] adjacent columns, so each row
//! of the strip is one 32-byte sector, and loads the strip once, in chunks of [`CHUNK_ROWS`]
//! rows staged in shared memory. The units of a column (`CUBE / STRIP` of them) keep
//! contiguous runs of [`RUN`] rows of every chunk in registers, and the radix select, the tie
//! search and the threshold of each column run from there. The output is the same per-column
//! threshold and tie limit as the streaming kernel's, which the ordered compaction then
//! applies. Columns of up to [`MAX_ROWS`] scores fit; longer ones take the streaming kernel.

use cubecl::prelude::*;

use crate::key::{
    CUBE, NO_KEY, RADIX_BITS, cube_index, is_nan_bits, key_of_bits, pick_digit, units_before,
};
use crate::launch::resident_chunks;

/// Adjacent columns per cube: 8 f32 fill one 32-byte sector of a row.
pub(crate) const STRIP: u32 = 8;
/// Units per column.
const LANES: u32 = CUBE / STRIP;
/// Rows a unit keeps from one chunk.
const RUN: u32 = 8;
/// Rows per staged chunk.
const CHUNK_ROWS: u32 = LANES * RUN;
/// Scores per staged chunk.
const CHUNK: u32 = CHUNK_ROWS * STRIP;
/// Most chunks a cube holds (128 registers per unit).
const MAX_CHUNKS: u32 = 16;
/// Longest column the resident kernel takes.
pub(crate) const MAX_ROWS: usize = (CHUNK_ROWS * MAX_CHUNKS) as usize;
/// Copies of every histogram bin (units of one column that see the same digit contend less).
const COPIES: u32 = 2;
/// Shared-memory words of one column's histogram.
const COLUMN_HIST: u32 = 256 * COPIES;

/// Chunks a column of `rows` scores needs.
pub(crate) fn chunks_for(rows: usize) -> u32 {
    resident_chunks(rows, CHUNK_ROWS)
}

/// Shared-memory slot of staged score `i` (row-major `[CHUNK_ROWS, STRIP]`): one pad word
/// every 128, so the units of a column, reading runs 64 words apart, hit distinct banks.
#[cube]
fn staged(i: usize) -> usize {
    i + i / 128
}

/// Row of a unit's `i`-th kept score: chunk-major, then lane, then position in the run.
#[cube]
fn row_of(i: usize, lane: usize) -> usize {
    let chunk = i / RUN as usize;
    chunk * CHUNK_ROWS as usize + lane * RUN as usize + i % RUN as usize
}

/// Finds the threshold key and tie limit of every column (ties to the lower row): column `f`
/// keeps `ks[f]` scores; `thresholds[f]` is the `k`-th largest key ([`NO_KEY`] when `k == 0`)
/// and `tie_limits[f]` one past the row of the last kept tie, as
/// [`crate::select::select_groups`] writes them for columns. The flat index of the first NaN
/// goes to `nan[0]` by atomic minimum.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn column_select_resident(
    scores: &Array<f32>,
    ks: &Array<u32>,
    thresholds: &mut Array<u32>,
    tie_limits: &mut Array<u32>,
    nan: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    #[comptime] chunks: u32,
    #[comptime] planes: bool,
) {
    let first_col = cube_index() * STRIP as usize;
    // The whole cube takes the same branch, so the barriers inside stay uniform.
    if first_col < cols as usize {
        let unit = UNIT_POS as usize;
        let (n, width) = (rows as usize, cols as usize);
        let c = unit / LANES as usize;
        let lane = unit % LANES as usize;
        let col = first_col + c;
        let live = col < width;
        let held = comptime![(chunks * RUN) as usize];
        let mut bits = Array::<u32>::new(held);

        // The one read of the strip: 8 adjacent units read one row's 32 bytes.
        let mut stage = SharedMemory::<u32>::new((CHUNK + CHUNK / 128) as usize);
        for ch in 0..chunks {
            let first_row = (ch * CHUNK_ROWS) as usize;
            for i in 0..RUN {
                let e = (i * CUBE) as usize + unit;
                let (r, cc) = (
                    first_row + e / STRIP as usize,
                    first_col + e % STRIP as usize,
                );
                if r < n && cc < width {
                    stage[staged(e)] = u32::reinterpret(scores[r * width + cc]);
                }
            }
            sync_cube();
            for i in 0..RUN {
                let at = (ch * RUN + i) as usize;
                let r = row_of(at, lane);
                let mut b = 0u32;
                if r < n && live {
                    b = stage[staged((lane * RUN as usize + i as usize) * STRIP as usize + c)];
                    if is_nan_bits(b) {
                        nan[0].fetch_min((r * width + col) as u32);
                    }
                }
                bits[at] = b;
            }
            sync_cube();
        }

        // Radix select per column on the registers; the columns' states in shared memory.
        let hist = SharedMemory::<Atomic<u32>>::new((COLUMN_HIST * STRIP) as usize);
        let mut scan = SharedMemory::<u32>::new(CUBE as usize);
        let mut choice = SharedMemory::<u32>::new(3usize);
        // Per column: prefix, mask, still needed, settled (1) or not (0).
        let mut column = SharedMemory::<u32>::new((4 * STRIP) as usize);
        let mut pending = SharedMemory::<u32>::new(1usize);
        if unit < STRIP as usize {
            let f = first_col + unit;
            let mut k = 0u32;
            if f < width {
                k = ks[f];
            }
            column[unit * 4] = 0u32;
            column[unit * 4 + 1] = 0u32;
            column[unit * 4 + 2] = k;
            column[unit * 4 + 3] = 0u32;
        }
        if unit == 0 {
            pending[0] = 1u32;
        }
        sync_cube();
        for pass in 0..4u32 {
            // `pending` is read after a barrier: the branch is uniform.
            if pending[0] == 1u32 {
                let shift = 24u32 - RADIX_BITS * pass;
                let mut w = unit;
                while w < (COLUMN_HIST * STRIP) as usize {
                    hist[w].store(0u32);
                    w += CUBE as usize;
                }
                sync_cube();
                let (prefix, mask) = (column[c * 4], column[c * 4 + 1]);
                if live && column[c * 4 + 3] == 0u32 {
                    let copy = (unit % COPIES as usize) as u32;
                    for i in 0..held {
                        let key = key_of_bits(bits[i]);
                        if row_of(i, lane) < n && (key & mask) == prefix {
                            let digit = (key >> shift) & 255u32;
                            let slot = c as u32 * COLUMN_HIST + digit * COPIES + copy;
                            hist[slot as usize].fetch_add(1u32);
                        }
                    }
                }
                sync_cube();
                for s in 0..STRIP {
                    let base = s * 4;
                    let remaining = column[(base + 2) as usize];
                    if unit == 0 {
                        choice[0] = 0u32;
                        choice[1] = 0u32;
                        choice[2] = 0u32;
                    }
                    let mut count = 0u32;
                    let bin = s * COLUMN_HIST + (255u32 - unit as u32) * COPIES;
                    for copy in 0..COPIES {
                        count += hist[(bin + copy) as usize].load();
                    }
                    // Every unit takes part; a settled column's choice is not used.
                    pick_digit(count, &mut scan, &mut choice, remaining, unit, planes);
                    if unit == 0 && column[(base + 3) as usize] == 0u32 {
                        let left = remaining - choice[1];
                        column[base as usize] |= choice[0] << shift;
                        column[(base + 1) as usize] |= 255u32 << shift;
                        column[(base + 2) as usize] = left;
                        column[(base + 3) as usize] = select(choice[2] == left, 1u32, 0u32);
                    }
                    sync_cube();
                }
                if unit == 0 {
                    let mut open = 0u32;
                    for s in 0..STRIP {
                        if first_col + (s as usize) < width && column[(s * 4 + 3) as usize] == 0 {
                            open = 1u32;
                        }
                    }
                    pending[0] = open;
                }
                sync_cube();
            }
        }

        let prefix = column[c * 4];
        let remaining = column[c * 4 + 2];
        let settled = column[c * 4 + 3] == 1u32;
        let mut k = 0u32;
        if live {
            k = ks[col];
        }
        // Some column keeps only some of its ties at the full key `prefix`: the first
        // `remaining` of them in row order, chunk by chunk. Every unit takes part in the
        // scans; the units of a column are consecutive, so a column's share of a scan over
        // all units is that scan minus its value before the column's first unit.
        if pending[0] == 1u32 {
            let first_unit = c * LANES as usize;
            let mut before_chunk = 0u32;
            for ch in 0..chunks {
                let mut ties = 0u32;
                for i in 0..RUN {
                    let at = (ch * RUN + i) as usize;
                    if live && !settled && row_of(at, lane) < n && key_of_bits(bits[at]) == prefix {
                        ties += 1u32;
                    }
                }
                let all_before = units_before(ties, &mut scan, unit, planes);
                let mut column_start = 0u32;
                if first_unit > 0 {
                    column_start = scan[first_unit - 1];
                }
                let before = before_chunk + all_before - column_start;
                if ties > 0u32 && before < remaining && remaining <= before + ties {
                    let mut seen = before;
                    for i in 0..RUN {
                        let at = (ch * RUN + i) as usize;
                        if row_of(at, lane) < n && key_of_bits(bits[at]) == prefix {
                            seen += 1u32;
                            if seen == remaining {
                                tie_limits[col] = (row_of(at, lane) + 1) as u32;
                            }
                        }
                    }
                }
                before_chunk += scan[first_unit + LANES as usize - 1] - column_start;
                // The next chunk's scan overwrites this one's.
                sync_cube();
            }
        }
        if live && lane == 0 {
            if k == 0u32 {
                thresholds[col] = NO_KEY;
                tie_limits[col] = 0u32;
            } else if !settled {
                thresholds[col] = prefix;
            } else if prefix > 0u32 {
                // Every key at or above `prefix` is kept, and no other.
                thresholds[col] = prefix - 1u32;
                tie_limits[col] = 0u32;
            } else {
                thresholds[col] = 0u32;
                tie_limits[col] = rows;
            }
        }
    }
}
