//! Batch-free inference thresholds.

use sae_alloc::*;

#[test]
fn global_estimate_is_an_ema_of_the_smallest_accepted_positive_score() {
    let mut est = ThresholdEstimator::global(0.75).unwrap();
    assert_eq!(est.thresholds(), None);
    let first = [3.0, -1.0, 2.0, 0.0, 0.5, 4.0];
    let m = ScoreMatrix::new(&first, 2, 3).unwrap();
    // Keeps 4, 3, 2, 0.5: level 0.5.
    est.update(&global_topk(&m, 4).unwrap()).unwrap();
    assert_eq!(est.thresholds(), Some(Thresholds::Global(0.5)));
    // Keeps 3 and 2.5: level 2.5.
    let second = [3.0, 2.5, 1.0, 1.0, 1.0, 1.0];
    est.update(&global_topk(&ScoreMatrix::new(&second, 2, 3).unwrap(), 2).unwrap())
        .unwrap();
    assert_eq!(
        est.thresholds(),
        Some(Thresholds::Global(0.75 * 0.5 + 0.25 * 2.5))
    );
    // A batch that kept a score <= 0 accepted every positive score: level 0.
    let mixed = [2.0, -1.0, -3.0, 0.0, 1.0, -2.0];
    est.update(&global_topk(&ScoreMatrix::new(&mixed, 2, 3).unwrap(), 3).unwrap())
        .unwrap();
    assert_eq!(est.thresholds(), Some(Thresholds::Global(0.75)));
    // A batch that kept nothing says nothing.
    est.update(&global_topk(&ScoreMatrix::new(&mixed, 2, 3).unwrap(), 0).unwrap())
        .unwrap();
    assert_eq!(est.thresholds(), Some(Thresholds::Global(0.75)));
    // All negative: level 0 again, and the threshold never goes below 0.
    let negative = [-1.0f32; 6];
    for _ in 0..100 {
        est.update(&global_topk(&ScoreMatrix::new(&negative, 2, 3).unwrap(), 3).unwrap())
            .unwrap();
    }
    let Some(Thresholds::Global(t)) = est.thresholds() else {
        panic!("global estimator")
    };
    assert!((0.0..1e-6).contains(&t), "{t}");
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
fn per_feature_levels_are_never_negative_and_fire_only_on_positive_scores() {
    // Feature 0 has two positive scores and capacity 3: it keeps a negative one too, so it
    // accepted every positive score (level 0). Feature 1 keeps only negative scores (level
    // 0). Feature 2 keeps 0.5 and 0.25 (level 0.25).
    #[rustfmt::skip]
    let data = [
        1.0, -2.0, 0.5,
        2.0, -1.0, 0.25,
        -4.0, -3.0, -1.0,
    ];
    let m = ScoreMatrix::new(&data, 3, 3).unwrap();
    let caps = Capacities::from_vec(vec![3, 2, 2], 7).unwrap();
    let mut est = ThresholdEstimator::per_feature(3, 0.5).unwrap();
    est.update(&column_topm(&m, &caps).unwrap()).unwrap();
    let t = est.thresholds().unwrap();
    assert_eq!(t, Thresholds::PerFeature(vec![0.0, 0.0, 0.25]));
    // At inference, feature 0 fires on its two positive scores, feature 1 never (its scores
    // are all negative), feature 2 on 0.5 only (0.25 is not above its level).
    let inferred = apply_thresholds(&m, &t).unwrap();
    assert_eq!(inferred.token_ids(), vec![0, 0, 1]);
    assert_eq!(inferred.features(), &[0, 2, 0]);
    assert!(inferred.scores().iter().all(|&s| s > 0.0));
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
