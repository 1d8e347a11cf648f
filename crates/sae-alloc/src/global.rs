//! Mutual Choice / BatchTopK allocation: the `budget` largest scores of the whole matrix.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::key::score_key;
use crate::{AllocError, ScoreMatrix, Selection};

/// Scores per parallel part of a pass; a part's histogram and lists stay small and hot.
const PART_LEN: usize = 1 << 16;
/// The first pass ranks by the high 16 bits of the key, the second by the low 16.
const BINS: usize = 1 << 16;

/// Keeps the `budget` largest scores anywhere in the matrix (ties: lower row-major index first).
///
/// Usually one streaming pass: a sample spread over all rows and columns gives a score that
/// about `budget` (plus a safety margin) entries reach; one vectorised pass collects those
/// candidates with their keys, and an exact selection among them fixes the cut. When the
/// sample misjudges (too few candidates, or far too many, e.g. under massive ties), a radix
/// select on order-preserving keys takes over: 16 + 16 bits of histograms, then a collecting
/// pass. Both give the same, exact result.
pub fn global_topk(scores: &ScoreMatrix, budget: usize) -> Result<Selection, AllocError> {
    let available = scores.data().len();
    if budget > available {
        return Err(AllocError::BudgetTooLarge { budget, available });
    }
    if budget > 0
        && budget < available
        && let Some(bound) = sample_bound(scores, budget)
        && let Some(selection) = select_above(scores, budget, bound)?
    {
        return Ok(selection);
    }
    radix_select(scores, budget)
}

/// Candidates collected beyond the expected count before the sampled path gives up.
const SLACK: f64 = 4.0;

/// A score that, judging by a sample, a little more than `budget` entries reach.
///
/// The sample is systematic with a stride coprime to the row length, so it visits every
/// column about equally often (a stride sharing a factor with it would see only a few
/// features, whose score levels can differ a lot).
fn sample_bound(scores: &ScoreMatrix, budget: usize) -> Option<f32> {
    const SAMPLE: usize = 1 << 15;
    let data = scores.data();
    let mut stride = (data.len() / SAMPLE).max(1);
    while gcd(stride, scores.cols()) != 1 {
        stride += 1;
    }
    let mut sample: Vec<f32> = data
        .iter()
        .step_by(stride)
        .copied()
        .filter(|x| !x.is_nan())
        .collect();
    let expected = budget as f64 * sample.len() as f64 / data.len() as f64;
    let rank = (expected + 4.0 * expected.sqrt() + 16.0) as usize;
    if rank >= sample.len() {
        return None;
    }
    let (_, bound, _) = sample.select_nth_unstable_by(rank, |a, b| b.total_cmp(a));
    Some(*bound)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The candidates of one part: `(score key << 32) | offset in the part`, ascending offset.
type Candidates = Vec<u64>;

/// The exact selection from the candidates `>= bound`; `None` when there are fewer than
/// `budget` of them, or so many that the sample was clearly wrong.
fn select_above(
    scores: &ScoreMatrix,
    budget: usize,
    bound: f32,
) -> Result<Option<Selection>, AllocError> {
    let data = scores.data();
    let too_many = (budget as f64 * SLACK) as usize + PART_LEN;
    let collected = AtomicUsize::new(0);
    let parts: Vec<Part> = data
        .par_chunks(PART_LEN)
        .map(|chunk| {
            if collected.load(Ordering::Relaxed) > too_many {
                return Part::GaveUp;
            }
            let part = candidates(chunk, bound);
            if let Part::Found(c) = &part {
                collected.fetch_add(c.len(), Ordering::Relaxed);
            }
            part
        })
        .collect();
    if parts.iter().any(|p| matches!(p, Part::Nan)) {
        // Name the first NaN of the matrix, whichever part met one.
        scores.check_no_nan(data, 0)?;
        unreachable!("a part met a NaN");
    }
    let Some(parts) = parts
        .into_iter()
        .map(|p| match p {
            Part::Found(c) => Some(c),
            _ => None,
        })
        .collect::<Option<Vec<Candidates>>>()
    else {
        return Ok(None);
    };
    let count: usize = parts.iter().map(Vec::len).sum();
    if count < budget || count > too_many {
        return Ok(None);
    }
    // The score key of the budget-th largest candidate; all keys above it are kept, and of
    // those equal to it the first ones in row-major order.
    let mut keys: Vec<u32> = parts.iter().flatten().map(|&c| (c >> 32) as u32).collect();
    let (above, &mut cut, _) = keys.select_nth_unstable_by(budget - 1, |a, b| b.cmp(a));
    // `above` holds the budget - 1 keys ranked before the cut, some of them equal to it.
    let mut ties = 1 + above.iter().filter(|&&k| k == cut).count();
    let mut kept = Vec::with_capacity(budget);
    for (part, found) in parts.iter().enumerate() {
        for &c in found {
            let key = (c >> 32) as u32;
            if key > cut || (key == cut && ties > 0) {
                ties -= usize::from(key == cut);
                kept.push((part * PART_LEN) as u64 + (c & 0xFFFF_FFFF));
            }
        }
    }
    debug_assert_eq!(kept.len(), budget);
    Ok(Some(Selection::from_sorted_flat(
        data,
        scores.rows(),
        scores.cols(),
        &kept,
    )))
}

/// What the candidate pass found in one part.
enum Part {
    /// The candidates.
    Found(Candidates),
    /// A NaN score.
    Nan,
    /// Nothing: enough candidates were found elsewhere to abandon the sampled path.
    GaveUp,
}

/// The candidates `>= bound` of a part, or [`Part::Nan`].
#[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN must pass the lane test
fn candidates(chunk: &[f32], bound: f32) -> Part {
    const LANE: usize = 16;
    let mut found = Vec::new();
    let lanes = chunk.chunks_exact(LANE);
    let tail = lanes.remainder();
    for (l, lane) in lanes.enumerate() {
        let lane: &[f32; LANE] = lane.try_into().expect("exact chunk");
        // `!(x < bound)` also holds for NaN, which thus reaches the exact test.
        if lane.iter().fold(false, |any, &x| any | !(x < bound))
            && !admit(lane, l * LANE, bound, &mut found)
        {
            return Part::Nan;
        }
    }
    if admit(tail, chunk.len() - tail.len(), bound, &mut found) {
        Part::Found(found)
    } else {
        Part::Nan
    }
}

/// Pushes the candidates `>= bound` of `lane` (whose first offset is `start`) to `found`;
/// `false` at a NaN.
#[inline]
fn admit(lane: &[f32], start: usize, bound: f32, found: &mut Candidates) -> bool {
    for (j, &x) in lane.iter().enumerate() {
        if x >= bound {
            found.push((u64::from(score_key(x)) << 32) | (start + j) as u64);
        } else if x.is_nan() {
            return false;
        }
    }
    true
}

/// The radix-select path (see [`global_topk`]).
fn radix_select(scores: &ScoreMatrix, budget: usize) -> Result<Selection, AllocError> {
    let data = scores.data();
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The sampled path, whatever bound it is given, and the radix path agree exactly.
    #[test]
    fn sampled_and_radix_paths_agree() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for case in 0..40 {
            let (rows, cols) = (rng.random_range(1..300), rng.random_range(1..400));
            let levels = if case % 2 == 0 { 5 } else { 100_000 };
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-levels..levels) as f32 / 7.0)
                .collect();
            let m = ScoreMatrix::new(&data, rows, cols).unwrap();
            let budget = rng.random_range(1..=rows * cols);
            let exact = radix_select(&m, budget).unwrap();
            assert_eq!(global_topk(&m, budget).unwrap(), exact);
            for _ in 0..5 {
                let bound = data[rng.random_range(0..data.len())];
                if let Some(sampled) = select_above(&m, budget, bound).unwrap() {
                    assert_eq!(sampled, exact, "bound {bound}, budget {budget}");
                }
            }
        }
    }
}
