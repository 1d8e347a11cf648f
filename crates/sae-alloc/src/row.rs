//! TopK SAE allocation: each token keeps its k largest features.

use rayon::prelude::*;

use crate::key::{admission_threshold, keep_largest, key_score, rank_index, rank_key, score_key};
use crate::matrix::has_nan;
use crate::{AllocError, ScoreMatrix, Selection};

/// Rows handed to one rayon task: enough work to amortise scheduling, few enough to balance.
const ROWS_PER_TASK: usize = 16;

/// Keeps the `k` largest scores of every row (ties: lower column first).
///
/// One pass per row with a running admission threshold: a candidate buffer of up to `2k`
/// keys is pruned back to `k` with a selection (not a sort) whenever it fills, so the cost
/// is one comparison per score plus O(k) per prune.
pub fn row_topk(scores: &ScoreMatrix, k: usize) -> Result<Selection, AllocError> {
    let (rows, cols) = (scores.rows(), scores.cols());
    if k > cols {
        return Err(AllocError::KTooLarge { k, cols });
    }
    let mut features = vec![0u32; rows * k];
    let mut values = vec![0f32; rows * k];
    if k > 0 {
        features
            .par_chunks_mut(k * ROWS_PER_TASK)
            .zip(values.par_chunks_mut(k * ROWS_PER_TASK))
            .enumerate()
            .try_for_each_init(
                || SliceTop::with_capacity(k),
                |top, (task, (feat_out, val_out))| {
                    let first = task * ROWS_PER_TASK;
                    for (i, (f, v)) in feat_out
                        .chunks_mut(k)
                        .zip(val_out.chunks_mut(k))
                        .enumerate()
                    {
                        let row = scores.row(first + i);
                        if !top_of_slice(row, k, top) {
                            scores.check_no_nan(row, (first + i) * cols)?;
                            unreachable!("the row holds a NaN");
                        }
                        write_by_index(&mut top.keys, row, f, v);
                    }
                    Ok::<(), AllocError>(())
                },
            )?;
    } else {
        // Nothing is selected, but NaN input is still an error, as for every other k.
        scores.check_no_nan(scores.data(), 0)?;
    }
    let offsets = (0..=rows).map(|r| r * k).collect();
    Ok(Selection::from_parts_unchecked(
        rows, cols, offsets, features, values,
    ))
}

/// The working memory of [`top_of_slice`], reused from slice to slice: rank keys and block
/// maxima.
#[derive(Debug, Default)]
pub(crate) struct SliceTop {
    /// The top `k` rank keys of the last slice (indices relative to it), in no order.
    pub(crate) keys: Vec<u64>,
    maxima: Vec<f32>,
    /// The score keys of `maxima`, for the selection of the bound.
    maxima_keys: Vec<u32>,
}

impl SliceTop {
    /// Room for the candidates of a top `k` without reallocation.
    pub(crate) fn with_capacity(k: usize) -> Self {
        Self {
            keys: Vec::with_capacity(2 * k.max(8) + LANE),
            ..Self::default()
        }
    }
}

/// Fills `top.keys` with the rank keys of the `k` (1 <= k <= len) largest values of `slice`,
/// indices relative to the slice, in no particular order; returns `false`, with `top` in no
/// particular state, if the slice holds a NaN.
///
/// Long slices first bound the answer from below. The scores are split into blocks of
/// [`BLOCK`] and the `k`-th largest of the block maxima is at most the `k`-th largest score
/// (the `k` blocks with the largest maxima each hold a score at least that large), so every
/// score of the top `k` lies in a block whose maximum reaches that bound. The second pass
/// visits only those blocks, usually about `k` of them, and the scores after the last full
/// block.
pub(crate) fn top_of_slice(slice: &[f32], k: usize, top: &mut SliceTop) -> bool {
    let SliceTop {
        keys,
        maxima,
        maxima_keys,
    } = top;
    keys.clear();
    let blocks = slice.len() / BLOCK;
    if k > 0 && blocks >= BLOCKS_PER_SELECTED * k {
        maxima.clear();
        if !block_maxima(slice, maxima) {
            return false;
        }
        // The k-th largest block maximum; ties among maxima do not matter for a bound, so
        // it is selected on score keys alone (half the width of rank keys).
        maxima_keys.clear();
        maxima_keys.extend(maxima.iter().map(|&m| score_key(m)));
        let (_, &mut kth, _) = maxima_keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        let bound = key_score(kth);
        // Scores equal to the bound are candidates too: admit above the float just below it.
        // A bound of -inf bounds nothing (and has no float below it).
        if bound > f32::NEG_INFINITY {
            admit_from_blocks(slice, maxima, k, bound.next_down(), keys);
            return true;
        }
    } else if has_nan(slice) {
        return false;
    }
    for (i, &x) in slice[..k].iter().enumerate() {
        keys.push(rank_key(x, i as u32));
    }
    // Later scores have higher indices, so one equal to the k-th largest so far loses its tie.
    let threshold = admission_threshold(keys);
    admit_from(&slice[k..], k, k, threshold, keys);
    true
}

/// Scores compared per branch-free test.
const LANE: usize = 16;
/// Scores per block of the lower bound: a few lanes, whose maximum is one vertical maximum
/// of the lanes and one horizontal of the result.
const BLOCK: usize = 4 * LANE;
/// Blocks per selected score from which a slice takes the lower bound: with fewer, the
/// bound passes too many scores to pay for its extra pass.
const BLOCKS_PER_SELECTED: usize = 4;

/// Pushes the maximum of each full [`BLOCK`] of `slice` to `maxima`; `false` if the slice
/// holds a NaN (the scores after the last full block included). A NaN never wins a
/// comparison and is found by its own test in the same pass.
fn block_maxima(slice: &[f32], maxima: &mut Vec<f32>) -> bool {
    let blocks = slice.chunks_exact(BLOCK);
    if has_nan(blocks.remainder()) {
        return false;
    }
    let mut nan = [false; LANE];
    maxima.extend(blocks.map(|block| {
        let mut max = [f32::NEG_INFINITY; LANE];
        for lane in block.chunks_exact(LANE) {
            for j in 0..LANE {
                let x = lane[j];
                max[j] = if x > max[j] { x } else { max[j] };
                nan[j] |= x.is_nan();
            }
        }
        // Halve the lanes until one holds the block's maximum.
        let mut width = LANE / 2;
        while width > 0 {
            for j in 0..width {
                max[j] = if max[j + width] > max[j] {
                    max[j + width]
                } else {
                    max[j]
                };
            }
            width /= 2;
        }
        max[0]
    }));
    !nan.contains(&true)
}

/// [`admit_from`] on the whole of `slice` (first index 0), visiting only the blocks whose
/// maximum (`maxima`, one per full [`BLOCK`]) beats the running threshold, and then the
/// scores after the last full block. Blocks go in index order, so ties break as in
/// [`admit_from`].
fn admit_from_blocks(slice: &[f32], maxima: &[f32], k: usize, threshold: f32, buf: &mut Vec<u64>) {
    let cap = 2 * k.max(8);
    let mut threshold = threshold;
    for (b, &max) in maxima.iter().enumerate() {
        if max > threshold {
            let start = b * BLOCK;
            admit(&slice[start..start + BLOCK], start, threshold, buf);
            if buf.len() >= cap {
                keep_largest(buf, k);
                threshold = admission_threshold(buf);
            }
        }
    }
    let tail = maxima.len() * BLOCK;
    admit(&slice[tail..], tail, threshold, buf);
    keep_largest(buf, k);
}

/// Adds to `buf` every score of `scores` (whose first index is `start`) strictly above a bar
/// that starts at `threshold` and rises to the `k`-th largest kept so far whenever `buf` fills
/// (a later score equal to it has a higher index and loses the tie); then keeps the top `k`.
/// `threshold` must let every score of the top `k` of `scores` and `buf` together through.
/// Fixed-size lanes are tested branch-free first, so the common "nothing here beats the bar"
/// case stays vectorised.
fn admit_from(scores: &[f32], start: usize, k: usize, threshold: f32, buf: &mut Vec<u64>) {
    let cap = 2 * k.max(8);
    let mut threshold = threshold;
    let mut lanes = scores.chunks_exact(LANE);
    for (lane_index, lane) in lanes.by_ref().enumerate() {
        let lane: &[f32; LANE] = lane.try_into().expect("exact chunk");
        if lane.iter().fold(false, |any, &x| any | (x > threshold)) {
            admit(lane, start + lane_index * LANE, threshold, buf);
            if buf.len() >= cap {
                keep_largest(buf, k);
                threshold = admission_threshold(buf);
            }
        }
    }
    let tail = lanes.remainder();
    admit(tail, start + scores.len() - tail.len(), threshold, buf);
    keep_largest(buf, k);
}

/// Pushes the rank keys of the scores of `scores` (starting at index `start`) above
/// `threshold`, in index order. Each [`LANE`] is compared at once into a bit mask, whose set
/// bits are then visited: no branch per score to mispredict.
#[inline]
fn admit(scores: &[f32], start: usize, threshold: f32, buf: &mut Vec<u64>) {
    let mut lanes = scores.chunks_exact(LANE);
    for (l, lane) in lanes.by_ref().enumerate() {
        let lane: &[f32; LANE] = lane.try_into().expect("exact chunk");
        let mut above =
            (0..LANE).fold(0u32, |bits, j| bits | (u32::from(lane[j] > threshold) << j));
        while above != 0 {
            let j = above.trailing_zeros() as usize;
            buf.push(rank_key(lane[j], (start + l * LANE + j) as u32));
            above &= above - 1;
        }
    }
    let tail = lanes.remainder();
    let first = start + scores.len() - tail.len();
    for (j, &x) in tail.iter().enumerate() {
        if x > threshold {
            buf.push(rank_key(x, (first + j) as u32));
        }
    }
}

/// Writes the kept keys of `buf` out in ascending index order.
fn write_by_index(buf: &mut [u64], row: &[f32], features: &mut [u32], values: &mut [f32]) {
    // Descending key order of the low half is ascending index order.
    buf.sort_unstable_by_key(|&key| std::cmp::Reverse(key as u32));
    for ((key, f), v) in buf.iter().zip(features).zip(values) {
        let index = rank_index(*key);
        *f = index;
        *v = row[index as usize];
    }
}
