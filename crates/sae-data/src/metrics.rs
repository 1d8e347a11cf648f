//! Ground-truth recovery metrics: how well a learned dictionary matches the true features.

use rayon::prelude::*;

/// Rows scaled to unit norm (zero rows stay zero, so their cosines are zero).
fn unit_rows(rows: &[f32], d: usize) -> Vec<f32> {
    let mut out = rows.to_vec();
    for row in out.chunks_exact_mut(d) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
    out
}

/// For each true feature, the largest cosine similarity with any learned feature.
///
/// `learned` and `truth` are row-major, one feature per row of width `d`; rows need not be
/// unit-norm.
///
/// # Panics
/// If `d` is zero or a length is not a multiple of `d`.
pub fn max_cosines(learned: &[f32], truth: &[f32], d: usize) -> Vec<f32> {
    assert!(
        d > 0 && learned.len().is_multiple_of(d) && truth.len().is_multiple_of(d),
        "dictionaries of {} and {} values are not whole rows of width {d}",
        learned.len(),
        truth.len()
    );
    let learned = unit_rows(learned, d);
    let truth = unit_rows(truth, d);
    truth
        .par_chunks_exact(d)
        .map(|t| {
            learned
                .chunks_exact(d)
                .map(|l| l.iter().zip(t).map(|(a, b)| a * b).sum::<f32>())
                .fold(if learned.is_empty() { 0.0 } else { f32::MIN }, f32::max)
        })
        .collect()
}

/// Mean max cosine similarity (MMCS): the mean over true features of their best cosine with a
/// learned feature. 1 means every true direction was found.
///
/// # Panics
/// As [`max_cosines`].
pub fn mmcs(learned: &[f32], truth: &[f32], d: usize) -> f32 {
    let best = max_cosines(learned, truth, d);
    if best.is_empty() {
        return 0.0;
    }
    best.iter().sum::<f32>() / best.len() as f32
}

/// Fraction of true features matched by some learned feature with cosine at least
/// `threshold` (0.9 is customary).
///
/// # Panics
/// As [`max_cosines`].
pub fn recovery_fraction(learned: &[f32], truth: &[f32], d: usize, threshold: f32) -> f32 {
    let best = max_cosines(learned, truth, d);
    if best.is_empty() {
        return 0.0;
    }
    best.iter().filter(|&&c| c >= threshold).count() as f32 / best.len() as f32
}
