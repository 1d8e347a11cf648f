//! TopK SAE allocation: each token keeps its k largest features.

use rayon::prelude::*;

use crate::key::{admission_threshold, keep_largest, rank_index, rank_key};
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
                || Vec::with_capacity(2 * k.max(8) + LANE),
                |buf, (task, (feat_out, val_out))| {
                    let first = task * ROWS_PER_TASK;
                    for (i, (f, v)) in feat_out
                        .chunks_mut(k)
                        .zip(val_out.chunks_mut(k))
                        .enumerate()
                    {
                        let row = scores.row(first + i);
                        if !top_of_slice(row, k, buf) {
                            scores.check_no_nan(row, (first + i) * cols)?;
                            unreachable!("the row holds a NaN");
                        }
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
/// indices relative to the slice, in no particular order; returns `false`, with `buf` in no
/// particular state, if the slice holds a NaN.
///
/// Long slices first bound the answer from below. The scores are split into groups and the
/// `k`-th largest of the group maxima is at most the `k`-th largest score (the `k` groups with
/// the largest maxima each hold a score at least that large), so one more pass admitting only
/// the scores at or above it keeps every score of the top `k`, usually with few others. Any
/// partition into groups bounds alike; [`group_maxima`]'s is the one that vectorises.
pub(crate) fn top_of_slice(slice: &[f32], k: usize, buf: &mut Vec<u64>) -> bool {
    buf.clear();
    let groups = slice.len() / SPAN * LANE;
    if k > 0 && groups >= GROUPS_PER_SELECTED * k {
        if !group_maxima(slice, buf) {
            return false;
        }
        // The k-th largest group maximum; ties among maxima do not matter for a bound.
        keep_largest(buf, k);
        let bound = admission_threshold(buf);
        buf.clear();
        // Scores equal to the bound are candidates too: admit above the float just below it.
        // A bound of -inf bounds nothing (and has no float below it).
        if bound > f32::NEG_INFINITY {
            admit_from(slice, 0, k, bound.next_down(), buf);
            return true;
        }
    } else if has_nan(slice) {
        return false;
    }
    for (i, &x) in slice[..k].iter().enumerate() {
        buf.push(rank_key(x, i as u32));
    }
    // Later scores have higher indices, so one equal to the k-th largest so far loses its tie.
    let threshold = admission_threshold(buf);
    admit_from(&slice[k..], k, k, threshold, buf);
    true
}

/// Scores compared per branch-free test.
const LANE: usize = 16;
/// Scores per span of [`group_maxima`]: [`LANE`] groups of 64 scores each.
const SPAN: usize = 64 * LANE;
/// Groups per selected score from which a slice takes the lower bound: with fewer, the
/// bound passes too many scores to pay for its extra pass.
const GROUPS_PER_SELECTED: usize = 4;

/// Pushes the rank keys of the maxima of the groups of `slice`'s full [`SPAN`]s (the group
/// as index) to `buf`; `false` if the slice holds a NaN (the scores after the last full span
/// included). Group `LANE * s + j` holds the scores of
/// span `s` at positions `j` mod [`LANE`], so each span is one elementwise maximum of its
/// lanes, without a horizontal step. A NaN never wins a comparison and is found by its own
/// test in the same pass.
fn group_maxima(slice: &[f32], buf: &mut Vec<u64>) -> bool {
    let spans = slice.chunks_exact(SPAN);
    if has_nan(spans.remainder()) {
        return false;
    }
    let mut nan = [false; LANE];
    for (s, span) in spans.enumerate() {
        let mut max = [f32::NEG_INFINITY; LANE];
        for lane in span.chunks_exact(LANE) {
            for j in 0..LANE {
                let x = lane[j];
                max[j] = if x > max[j] { x } else { max[j] };
                nan[j] |= x.is_nan();
            }
        }
        let first = (s * LANE) as u32;
        buf.extend((first..).zip(max).map(|(g, m)| rank_key(m, g)));
    }
    !nan.contains(&true)
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

/// Pushes the rank keys of the scores of `lane` (starting at index `start`) above
/// `threshold`.
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
