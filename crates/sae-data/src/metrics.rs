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

/// Recovery of the true features of one frequency band (the schema of evaluation records
/// defines it, so the metrics file's writer and readers share it).
pub use sae_metrics::FrequencyBand;

/// Recovery by how often the true features fire: the true features sorted by firing
/// probability (most frequent first, ties by index) and cut into `bands` bands of equal size
/// (the first `features % bands` bands one larger), each with its recovery and MMCS.
///
/// # Panics
/// As [`max_cosines`], and if `probabilities` does not have one entry per true feature or
/// `bands` is zero.
pub fn recovery_by_frequency(
    learned: &[f32],
    truth: &[f32],
    d: usize,
    probabilities: &[f64],
    bands: usize,
    threshold: f32,
) -> Vec<FrequencyBand> {
    let best = max_cosines(learned, truth, d);
    assert_eq!(
        best.len(),
        probabilities.len(),
        "one probability per true feature"
    );
    assert!(bands > 0, "at least one band");
    let mut order: Vec<usize> = (0..best.len()).collect();
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    let (base, extra) = (order.len() / bands, order.len() % bands);
    let sizes = (0..bands).map(|band| base + usize::from(band < extra));
    let ranges = sizes.scan(0, |start, size| {
        let range = *start..*start + size;
        *start += size;
        Some(range)
    });
    ranges
        .filter(|range| !range.is_empty())
        .map(|range| {
            let members = &order[range];
            let n = members.len() as f64;
            FrequencyBand {
                max_probability: probabilities[members[0]],
                min_probability: probabilities[members[members.len() - 1]],
                features: members.len(),
                recovered: members.iter().filter(|&&f| best[f] >= threshold).count() as f64 / n,
                mmcs: members.iter().map(|&f| f64::from(best[f])).sum::<f64>() / n,
            }
        })
        .collect()
}
