//! TopK SAE allocation: each token keeps its k largest features.

use rayon::prelude::*;

use crate::key::{admission_threshold, keep_largest, rank_index, rank_key};
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
                || Vec::with_capacity(2 * k.max(8) + LANE),
                |buf, (task, (feat_out, val_out))| {
                    let first = task * ROWS_PER_TASK;
                    for (i, (f, v)) in feat_out
                        .chunks_mut(k)
                        .zip(val_out.chunks_mut(k))
                        .enumerate()
                    {
                        let row = scores.row(first + i);
                        scores.check_no_nan(row, (first + i) * cols)?;
                        top_of_slice(row, k, buf);
                        write_by_index(buf, row, f, v);
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

/// Fills `buf` with the rank keys of the `k` (1 <= k <= len) largest values of `slice`,
/// indices relative to the slice, in no particular order.
///
/// Long slices first bound the answer from below: the `k`-th largest of the maxima of
/// [`BLOCK`]-score blocks is at most the `k`-th largest score (the `k` blocks with the largest
/// maxima each hold a score at least that large), so one more pass admitting only the scores
/// at or above it keeps every score of the top `k`, usually with few others.
pub(crate) fn top_of_slice(slice: &[f32], k: usize, buf: &mut Vec<u64>) {
    if k > 0 && slice.len() / BLOCK >= BLOCKS_PER_SELECTED * k {
        top_of_long_slice(slice, k, buf);
        return;
    }
    buf.clear();
    let cap = 2 * k.max(8);
    for (i, &x) in slice[..k].iter().enumerate() {
        buf.push(rank_key(x, i as u32));
    }
    let mut threshold = admission_threshold(buf);
    // Scores arrive in index order, so a later score equal to the threshold loses its tie:
    // admission is strictly greater. Fixed-size lanes are tested branch-free first, so the
    // common "nothing here beats the threshold" case stays vectorised.
    let rest = &slice[k..];
    let mut lanes = rest.chunks_exact(LANE);
    for (lane_index, lane) in lanes.by_ref().enumerate() {
        let lane: &[f32; LANE] = lane.try_into().expect("exact chunk");
        if lane.iter().fold(false, |any, &x| any | (x > threshold)) {
            admit(lane, k + lane_index * LANE, threshold, buf);
            if buf.len() >= cap {
                keep_largest(buf, k);
                threshold = admission_threshold(buf);
            }
        }
    }
    let tail = lanes.remainder();
    admit(tail, slice.len() - tail.len(), threshold, buf);
    keep_largest(buf, k);
}

/// Scores compared per branch-free test.
const LANE: usize = 16;
/// Scores per block of the lower bound of [`top_of_slice`].
const BLOCK: usize = 64;
/// Blocks per selected score from which a slice takes the lower bound: with fewer, the
/// bound passes too many scores to pay for its extra pass.
const BLOCKS_PER_SELECTED: usize = 4;

/// [`top_of_slice`] by the block-maxima lower bound; the slice holds at least `k` full blocks.
fn top_of_long_slice(slice: &[f32], k: usize, buf: &mut Vec<u64>) {
    buf.clear();
    // Full blocks only: the scores after the last one are still scanned below.
    for (b, block) in slice.chunks_exact(BLOCK).enumerate() {
        let max = block.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        buf.push(rank_key(max, b as u32));
    }
    // The k-th largest block maximum; ties among maxima do not matter for a bound.
    keep_largest(buf, k);
    let bound = admission_threshold(buf);
    buf.clear();
    // Every score at or above the bound is a candidate, equal ones included: their ties are
    // broken by index in the rank keys. The buffer is pruned to the top `k` when it fills,
    // which only raises the bar.
    let cap = 2 * k.max(8);
    let mut threshold = bound;
    let mut lanes = slice.chunks_exact(LANE);
    for (lane_index, lane) in lanes.by_ref().enumerate() {
        let lane: &[f32; LANE] = lane.try_into().expect("exact chunk");
        if lane.iter().fold(false, |any, &x| any | (x >= threshold)) {
            admit_from(lane, lane_index * LANE, threshold, buf);
            if buf.len() >= cap {
                keep_largest(buf, k);
                threshold = admission_threshold(buf);
            }
        }
    }
    let rest = lanes.remainder();
    admit_from(rest, slice.len() - rest.len(), threshold, buf);
    keep_largest(buf, k);
}

/// Pushes the rank keys of the scores of `lane` (starting at index `start`) at or above
/// `threshold`.
#[inline]
fn admit_from(lane: &[f32], start: usize, threshold: f32, buf: &mut Vec<u64>) {
    for (j, &x) in lane.iter().enumerate() {
        if x >= threshold {
            buf.push(rank_key(x, (start + j) as u32));
        }
    }
}

/// Pushes the rank keys of the scores of `lane` (starting at index `start`) above `threshold`.
#[inline]
fn admit(lane: &[f32], start: usize, threshold: f32, buf: &mut Vec<u64>) {
    for (j, &x) in lane.iter().enumerate() {
        if x > threshold {
            buf.push(rank_key(x, (start + j) as u32));
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
