//! Mutual Choice / BatchTopK allocation: the `budget` largest scores of the whole matrix.

use rayon::prelude::*;

use crate::key::score_key;
use crate::{AllocError, ScoreMatrix, Selection};

/// Scores per parallel part of a pass; a part's histogram and lists stay small and hot.
const PART_LEN: usize = 1 << 16;
/// The first pass ranks by the high 16 bits of the key, the second by the low 16.
const BINS: usize = 1 << 16;

/// Keeps the `budget` largest scores anywhere in the matrix (ties: lower row-major index first).
///
/// Radix select on order-preserving keys, no sort: pass 1 histograms the high 16 key bits,
/// pass 2 histograms the low 16 bits inside the boundary bin, which fixes the exact threshold
/// key and how many of its ties to keep; pass 3 collects the kept positions in row-major order.
pub fn global_topk(scores: &ScoreMatrix, budget: usize) -> Result<Selection, AllocError> {
    let data = scores.data();
    let available = data.len();
    if budget > available {
        return Err(AllocError::BudgetTooLarge { budget, available });
    }
    let high = histogram(scores, |_| true, |key| (key >> 16) as usize)?;
    if budget == 0 {
        return Ok(Selection::empty(scores.rows(), scores.cols()));
    }
    let (high_bin, above_high) = boundary_bin(&high, budget);
    let low = histogram(
        scores,
        |key| (key >> 16) as usize == high_bin,
        |key| (key & 0xFFFF) as usize,
    )?;
    let (low_bin, above_low) = boundary_bin(&low, budget - above_high);
    let threshold = ((high_bin as u32) << 16) | low_bin as u32;
    let ties_to_keep = budget - above_high - above_low;

    let parts: Vec<Vec<u64>> = data
        .par_chunks(PART_LEN)
        .enumerate()
        .map(|(part, chunk)| collect_part(chunk, part * PART_LEN, threshold, ties_to_keep))
        .collect();
    let mut kept = Vec::with_capacity(budget);
    let mut ties_left = ties_to_keep;
    for flat in &parts {
        // Parts come in row-major order, so the first `ties_to_keep` ties overall are
        // the lowest-index ones.
        for &i in flat {
            if score_key(data[i as usize]) == threshold {
                if ties_left == 0 {
                    continue;
                }
                ties_left -= 1;
            }
            kept.push(i);
        }
    }
    debug_assert_eq!(kept.len(), budget);
    Ok(Selection::from_sorted_flat(
        data,
        scores.rows(),
        scores.cols(),
        &kept,
    ))
}

/// Histogram of `bin(key)` over the scores whose key passes `filter`; rejects NaN.
fn histogram(
    scores: &ScoreMatrix,
    filter: impl Fn(u32) -> bool + Sync,
    bin: impl Fn(u32) -> usize + Sync,
) -> Result<Vec<u32>, AllocError> {
    scores
        .data()
        .par_chunks(PART_LEN)
        .enumerate()
        .try_fold(
            || vec![0u32; BINS],
            |mut hist, (part, chunk)| {
                scores.check_no_nan(chunk, part * PART_LEN)?;
                for &x in chunk {
                    let key = score_key(x);
                    if filter(key) {
                        hist[bin(key)] += 1;
                    }
                }
                Ok(hist)
            },
        )
        .try_reduce(
            || vec![0u32; BINS],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                Ok(a)
            },
        )
}

/// The bin holding the `want`-th largest key (1-based), and how many keys lie above that bin.
fn boundary_bin(hist: &[u32], want: usize) -> (usize, usize) {
    let mut above = 0usize;
    for bin in (0..hist.len()).rev() {
        let count = hist[bin] as usize;
        if above + count >= want {
            return (bin, above);
        }
        above += count;
    }
    unreachable!("histogram holds fewer than {want} keys")
}

/// Flat indices (ascending) of a part's scores above `threshold`, and of its first `max_ties`
/// scores equal to it (no part can contribute more ties than the whole budget keeps).
fn collect_part(chunk: &[f32], start: usize, threshold: u32, max_ties: usize) -> Vec<u64> {
    let mut flat = Vec::new();
    let mut ties = 0usize;
    let threshold_score = crate::key::key_score(threshold);
    for (i, &x) in chunk.iter().enumerate() {
        // Cheap float pre-test; the exact key decides.
        if x >= threshold_score {
            let key = score_key(x);
            if key > threshold {
                flat.push((start + i) as u64);
            } else if key == threshold && ties < max_ties {
                flat.push((start + i) as u64);
                ties += 1;
            }
        }
    }
    flat
}
