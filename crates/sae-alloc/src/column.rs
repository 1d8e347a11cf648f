//! Feature Choice allocation: each feature keeps its `m_f` largest tokens.

use rayon::prelude::*;

use crate::key::{rank_index, rank_key, rank_score};
use crate::matrix::has_nan;
use crate::row::{SliceTop, top_of_slice};
use crate::{AllocError, Capacities, ScoreMatrix, Selection};

/// Widest column block of one task: each row contributes one sequential run of up to 8 KiB,
/// long enough for the prefetcher, while the block's thresholds stay in L1.
const MAX_BLOCK: usize = 2048;
/// Narrowest column block (unless the matrix is narrower).
const MIN_BLOCK: usize = 256;
/// Blocks per thread, so that a descheduled thread does not hold up the others.
const BLOCKS_PER_THREAD: usize = 4;

/// Keeps, for every feature `f`, its `capacities[f]` largest tokens (ties: lower row first).
///
/// Each task owns a block of columns and streams the rows once; every column keeps its current
/// top tokens in a min-heap whose root gives an exact admission threshold, so a score costs one
/// (vectorised) comparison unless it enters its column's top. Blocks own disjoint columns: no
/// merge, and the result does not depend on the block width or the thread count.
pub fn column_topm(scores: &ScoreMatrix, capacities: &Capacities) -> Result<Selection, AllocError> {
    let (rows, cols) = (scores.rows(), scores.cols());
    let caps = capacities.for_shape(rows, cols)?;
    let width = cols
        .div_ceil(BLOCKS_PER_THREAD * rayon::current_num_threads())
        .next_multiple_of(LANE)
        .clamp(MIN_BLOCK, MAX_BLOCK);
    let blocks: Option<Vec<Vec<u64>>> = (0..cols.div_ceil(width))
        .into_par_iter()
        .map(|block| {
            let first = block * width;
            scan_block(scores, first, &caps[first..(first + width).min(cols)])
        })
        .collect();
    // A NaN anywhere (also in a column of capacity 0) is an error. The scan stops at the
    // first NaN it meets; a row-major check names the first one of the matrix.
    let Some(blocks) = blocks else {
        scores.check_no_nan(scores.data(), 0)?;
        unreachable!("the scan met a NaN");
    };
    let data = scores.data();
    Ok(to_rows([rows, cols], caps, &blocks, |row, col| {
        data[row * cols + col]
    }))
}

/// [`column_topm`] on the transpose: `by_feature` holds the `rows` x `cols` score matrix
/// feature-major (its row `f` is feature `f`'s scores over the tokens), and the selection,
/// errors included, is that of the token-major matrix, the same as `column_topm` gives.
///
/// Each feature's scores are contiguous here, so every feature takes row top-k's path with
/// `k = m_f` (a lower bound from block maxima, then one admitting pass) instead of a strided
/// scan with a heap per column; features are independent, so the result does not depend on
/// the thread count.
pub fn column_topm_transposed(
    by_feature: &ScoreMatrix,
    capacities: &Capacities,
) -> Result<Selection, AllocError> {
    let (cols, rows) = (by_feature.rows(), by_feature.cols());
    let caps = capacities.for_shape(rows, cols)?;
    let width = cols
        .div_ceil(BLOCKS_PER_THREAD * rayon::current_num_threads())
        .max(1);
    let blocks: Option<Vec<Vec<u64>>> = (0..cols.div_ceil(width))
        .into_par_iter()
        .map(|block| {
            let features = block * width..((block + 1) * width).min(cols);
            let kept = caps[features.clone()].iter().map(|&c| c as usize).sum();
            let mut keys = Vec::with_capacity(kept);
            let mut top = SliceTop::default();
            for f in features {
                let scores = by_feature.row(f);
                match caps[f] {
                    0 if has_nan(scores) => return None,
                    0 => {}
                    cap if top_of_slice(scores, cap as usize, &mut top) => {
                        keys.extend_from_slice(&top.keys);
                    }
                    _ => return None,
                }
            }
            Some(keys)
        })
        .collect();
    let Some(blocks) = blocks else {
        return Err(first_nan_by_row(by_feature));
    };
    let data = by_feature.data();
    Ok(to_rows([rows, cols], caps, &blocks, |row, col| {
        data[col * rows + row]
    }))
}

/// The error for the first NaN, in the order of the token-major matrix, of a matrix held
/// feature-major (which holds one).
fn first_nan_by_row(by_feature: &ScoreMatrix) -> AllocError {
    let (row, col) = (0..by_feature.rows())
        .into_par_iter()
        .filter_map(|f| {
            let token = by_feature.row(f).iter().position(|x| x.is_nan())?;
            Some((token, f))
        })
        .min()
        .expect("a feature's scores hold a NaN");
    AllocError::NanScore { row, col }
}

/// Columns compared per branch-free test.
const LANE: usize = 16;

/// The top rank keys (index = row) of columns `first..first + caps.len()`: column `c`'s
/// `caps[c]` keys, unordered, follow those of column `c - 1`. `None` if a score is NaN.
///
/// Each column's admission threshold is NaN while its heap fills (`!(x <= NaN)` admits
/// everything, `-inf` included), `+inf` for capacity 0, and otherwise the smallest kept score;
/// a later row with an equal score loses its tie, so admission is `!(x <= threshold)`, i.e.
/// strictly greater. NaN scores fail every comparison, so they reach the admission test.
#[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN thresholds are the point
fn scan_block(scores: &ScoreMatrix, first: usize, caps: &[u32]) -> Option<Vec<u64>> {
    let width = caps.len();
    let mut thresholds: Vec<f32> = caps
        .iter()
        .map(|&c| if c == 0 { f32::INFINITY } else { f32::NAN })
        .collect();
    let mut heaps = ColumnHeaps::new(caps);
    let full = width - width % LANE;
    for row in 0..scores.rows() {
        let run = &scores.row(row)[first..first + width];
        for start in (0..full).step_by(LANE) {
            let x: &[f32; LANE] = run[start..start + LANE].try_into().expect("full lane");
            let t: &[f32; LANE] = thresholds[start..start + LANE]
                .try_into()
                .expect("full lane");
            if !x.iter().zip(t).fold(false, |any, (&x, &t)| any | !(x <= t)) {
                continue;
            }
            // Each column occurs once per lane, so the mask stays valid while admitting.
            let mut hits = x
                .iter()
                .zip(t)
                .enumerate()
                .fold(0u32, |m, (j, (&x, &t))| m | (u32::from(!(x <= t)) << j));
            while hits != 0 {
                let j = hits.trailing_zeros() as usize;
                hits &= hits - 1;
                thresholds[start + j] = heaps.admit(start + j, rank_key_checked(x[j], row)?)?;
            }
        }
        for col in full..width {
            let x = run[col];
            if !(x <= thresholds[col]) {
                thresholds[col] = heaps.admit(col, rank_key_checked(x, row)?)?;
            }
        }
    }
    Some(heaps.keys)
}

/// The rank key of a score, or `None` for NaN.
#[inline]
fn rank_key_checked(x: f32, row: usize) -> Option<u64> {
    (!x.is_nan()).then(|| rank_key(x, row as u32))
}

/// One binary min-heap of rank keys per column, stored back to back: the root is the
/// column's weakest kept token.
struct ColumnHeaps {
    keys: Vec<u64>,
    starts: Vec<usize>,
    lens: Vec<u32>,
}

impl ColumnHeaps {
    fn new(caps: &[u32]) -> Self {
        let mut starts = Vec::with_capacity(caps.len() + 1);
        starts.push(0);
        for &c in caps {
            starts.push(starts.last().unwrap() + c as usize);
        }
        Self {
            keys: vec![0; *starts.last().unwrap()],
            starts,
            lens: vec![0; caps.len()],
        }
    }

    /// Admits `key` into column `col` (evicting the root when full) and returns the column's
    /// new admission threshold (NaN while not full). `Some` always; `Option` for `?` chaining.
    #[inline]
    fn admit(&mut self, col: usize, key: u64) -> Option<f32> {
        let heap = &mut self.keys[self.starts[col]..self.starts[col + 1]];
        let len = &mut self.lens[col];
        if (*len as usize) < heap.len() {
            sift_up(heap, *len as usize, key);
            *len += 1;
            if (*len as usize) < heap.len() {
                return Some(f32::NAN);
            }
        } else {
            sift_down(heap, key);
        }
        Some(rank_score(heap[0]))
    }
}

/// Inserts `key` at position `len` of the min-heap `heap[..len]`.
#[inline]
fn sift_up(heap: &mut [u64], mut i: usize, key: u64) {
    while i > 0 {
        let parent = (i - 1) / 2;
        if heap[parent] <= key {
            break;
        }
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = key;
}

/// Replaces the root of the full min-heap `heap` by `key` (larger than the root).
#[inline]
fn sift_down(heap: &mut [u64], key: u64) {
    let n = heap.len();
    let mut i = 0;
    loop {
        let mut child = 2 * i + 1;
        if child >= n {
            break;
        }
        if child + 1 < n && heap[child + 1] < heap[child] {
            child += 1;
        }
        if heap[child] >= key {
            break;
        }
        heap[i] = heap[child];
        i = child;
    }
    heap[i] = key;
}

/// Regroups the per-column picks of the blocks (in column order, `caps[c]` keys for column
/// `c`) into the CSR-by-row layout of a `rows` x `cols` matrix whose score at (row, column)
/// is `score_at(row, col)`.
fn to_rows(
    [rows, cols]: [usize; 2],
    caps: &[u32],
    blocks: &[Vec<u64>],
    score_at: impl Fn(usize, usize) -> f32,
) -> Selection {
    let mut offsets = vec![0usize; rows + 1];
    for &key in blocks.iter().flatten() {
        offsets[rank_index(key) as usize + 1] += 1;
    }
    for r in 0..rows {
        offsets[r + 1] += offsets[r];
    }
    let nnz = offsets[rows];
    let mut next = offsets.clone();
    let mut features = vec![0u32; nnz];
    let mut values = vec![0f32; nnz];
    // Visiting columns in ascending order fills each row's slots in ascending feature order.
    let mut picks = blocks.iter().flatten();
    for (col, &cap) in caps.iter().enumerate() {
        for &key in picks.by_ref().take(cap as usize) {
            let row = rank_index(key) as usize;
            let slot = next[row];
            next[row] += 1;
            features[slot] = col as u32;
            // The key holds the score itself, except that it maps -0.0 to +0.0.
            let score = rank_score(key);
            values[slot] = if score == 0.0 {
                score_at(row, col)
            } else {
                score
            };
        }
    }
    Selection::from_parts_unchecked(rows, cols, offsets, features, values)
}
