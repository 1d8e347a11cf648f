//! Batch-free inference thresholds.

use sae_alloc::*;

#[test]
fn global_estimate_is_an_ema_of_the_smallest_positive_kept_score() {
    let mut est = ThresholdEstimator::global(0.75).unwrap();
    assert_eq!(est.thresholds(), None);
    let first = [3.0, -1.0, 2.0, 0.0, 0.5, 4.0];
    let m = ScoreMatrix::new(&first, 2, 3).unwrap();
    // Keeps 4, 3, 2, 0.5: smallest positive 0.5.
    est.update(&global_topk(&m, 4).unwrap()).unwrap();
    assert_eq!(est.thresholds(), Some(Thresholds::Global(0.5)));
    // Keeps all: smallest positive is still 0.5 -> then one with 2.5.
    let second = [3.0, 2.5, 1.0, 1.0, 1.0, 1.0];
    est.update(&global_topk(&ScoreMatrix::new(&second, 2, 3).unwrap(), 2).unwrap())
        .unwrap();
    assert_eq!(
        est.thresholds(),
        Some(Thresholds::Global(0.75 * 0.5 + 0.25 * 2.5))
    );
    // A batch with no positive kept score leaves the estimate alone.
    let negative = [-1.0f32; 6];
    est.update(&global_topk(&ScoreMatrix::new(&negative, 2, 3).unwrap(), 3).unwrap())
        .unwrap();
    assert_eq!(est.thresholds(), Some(Thresholds::Global(1.0)));
}

#[test]
fn per_feature_estimate_tracks_each_features_smallest_kept_score() {
    #[rustfmt::skip]
    let data = [
        1.0, 5.0, 0.0,
        2.0, 4.0, 0.0,
        3.0, 6.0, 0.0,
    ];
    let m = ScoreMatrix::new(&data, 3, 3).unwrap();
    let caps = Capacities::from_vec(vec![2, 1, 0], 3).unwrap();
    let mut est = ThresholdEstimator::per_feature(3, 0.5).unwrap();
    est.update(&column_topm(&m, &caps).unwrap()).unwrap();
    let t = est.thresholds().unwrap();
    assert_eq!(t, Thresholds::PerFeature(vec![2.0, 6.0, f32::INFINITY]));
    // Applied to the same batch: feature 0 fires where > 2, feature 1 nowhere (> 6), 2 never.
    let inferred = apply_thresholds(&m, &t).unwrap();
    assert_eq!(inferred.token_ids(), vec![2]);
    assert_eq!(inferred.features(), &[0]);
    assert_eq!(inferred.scores(), &[3.0]);
}

#[test]
fn thresholds_round_trip_through_serde() {
    let mut est = ThresholdEstimator::per_feature(2, 0.9).unwrap();
    let data = [1.0, 2.0];
    est.update(&row_topk(&ScoreMatrix::new(&data, 1, 2).unwrap(), 1).unwrap())
        .unwrap();
    let json = serde_json::to_string(&est).unwrap();
    let back: ThresholdEstimator = serde_json::from_str(&json).unwrap();
    assert_eq!(back, est);
}
