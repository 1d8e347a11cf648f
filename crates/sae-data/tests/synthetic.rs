//! The synthetic ground truth and the recovery metrics.

use sae_data::{
    BatchSource, Cursor, EVAL_START, SyntheticConfig, SyntheticSource, max_cosines, mmcs,
    recovery_by_frequency, recovery_fraction,
};

fn source() -> SyntheticSource {
    SyntheticSource::new(SyntheticConfig::default()).unwrap()
}

#[test]
fn dictionary_has_unit_rows_and_depends_on_the_seed() {
    let a = source();
    let c = a.config();
    assert_eq!(a.dictionary().len(), c.features * c.d);
    for row in a.dictionary().chunks_exact(c.d) {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    assert_eq!(a.dictionary(), source().dictionary());
    let b = SyntheticSource::new(SyntheticConfig {
        seed: 1,
        ..SyntheticConfig::default()
    })
    .unwrap();
    assert_ne!(a.dictionary(), b.dictionary());
}

#[test]
fn samples_are_pure_functions_of_the_index_for_any_thread_count() {
    let mut reference = source();
    let mut full = Vec::new();
    reference.next_batch(3000, &mut full).unwrap();
    let d = reference.d();
    // Sample by sample.
    let single = source();
    let mut row = vec![0.0; d];
    for i in [0usize, 1, 17, 2999] {
        single.sample(i as u64, &mut row);
        assert_eq!(row, full[i * d..(i + 1) * d]);
    }
    // In a one-thread pool and in pieces of odd sizes.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut pieces = Vec::new();
    let mut one = source();
    pool.install(|| {
        let mut batch = Vec::new();
        for n in [1, 999, 1000, 1000] {
            one.next_batch(n, &mut batch).unwrap();
            pieces.extend_from_slice(&batch);
        }
    });
    assert_eq!(pieces, full);
}

#[test]
fn cursor_resumes_exactly() {
    let mut a = source();
    let mut batch = Vec::new();
    a.next_batch(100, &mut batch).unwrap();
    let json = serde_json::to_string(&a.cursor()).unwrap();
    a.next_batch(50, &mut batch).unwrap();
    let mut b = source();
    b.restore(&serde_json::from_str::<Cursor>(&json).unwrap())
        .unwrap();
    let mut again = Vec::new();
    b.next_batch(50, &mut again).unwrap();
    assert_eq!(batch, again);
    assert!(b.restore(&Cursor::HeldOut { position: 0 }).is_err());
    assert!(b.restore(&Cursor::Synthetic { index: EVAL_START }).is_err());
}

#[test]
fn held_out_samples_differ_from_training_samples() {
    let train = source();
    let mut eval = train.held_out();
    assert_eq!(eval.cursor(), Cursor::Synthetic { index: EVAL_START });
    let mut batch = Vec::new();
    eval.next_batch(2, &mut batch).unwrap();
    let mut row = vec![0.0; train.d()];
    train.sample(0, &mut row);
    assert_ne!(row, batch[..train.d()]);
    train.sample(EVAL_START, &mut row);
    assert_eq!(row, batch[..train.d()]);
}

#[test]
fn activity_varies_and_follows_zipf() {
    let s = source();
    let n = 20_000u64;
    let mut counts = vec![0usize; s.config().features];
    let mut sizes = Vec::new();
    for i in 0..n {
        let active = s.active_features(i);
        assert!(
            active.windows(2).all(|w| w[0].0 < w[1].0),
            "distinct, sorted"
        );
        for &(f, a) in &active {
            counts[f] += 1;
            assert!((0.5..=1.5).contains(&a), "magnitude {a}");
        }
        sizes.push(active.len());
    }
    let mean = sizes.iter().sum::<usize>() as f64 / n as f64;
    assert!((mean - 5.0).abs() < 0.2, "mean active {mean}");
    let spread = sizes.iter().max().unwrap() - sizes.iter().min().unwrap();
    assert!(spread >= 8, "active counts vary: {spread}");
    assert!(sizes.contains(&0), "some samples have no active feature");
    // Zipf with exponent 1: feature 0 about twice as frequent as feature 1, 10x feature 9.
    let r1 = counts[0] as f64 / counts[1] as f64;
    let r9 = counts[0] as f64 / counts[9] as f64;
    assert!((1.6..2.4).contains(&r1), "{r1}");
    assert!((7.0..13.0).contains(&r9), "{r9}");
    let p = s.feature_probabilities();
    assert!((p.iter().sum::<f64>() - 5.0).abs() < 1e-6);
    assert!((counts[0] as f64 / n as f64 - p[0]).abs() < 0.02);
}

#[test]
fn samples_are_sums_of_true_features_plus_noise() {
    let s = SyntheticSource::new(SyntheticConfig {
        noise_std: 0.0,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let d = s.config().d;
    let mut row = vec![0.0; d];
    for i in 0..50 {
        s.sample(i, &mut row);
        let mut expected = vec![0.0f32; d];
        for (f, a) in s.active_features(i) {
            for (e, x) in expected.iter_mut().zip(&s.dictionary()[f * d..(f + 1) * d]) {
                *e += a * x;
            }
        }
        for (x, y) in row.iter().zip(&expected) {
            assert!((x - y).abs() < 1e-5);
        }
    }
}

#[test]
fn correlated_partners_fire_together() {
    let config = SyntheticConfig {
        correlation: 1.0,
        ..SyntheticConfig::default()
    };
    let s = SyntheticSource::new(config).unwrap();
    let mean = (0..2000).map(|i| s.active_features(i).len()).sum::<usize>() as f64 / 2000.0;
    assert!(mean > 8.0, "partners add features: {mean}");
}

#[test]
fn bad_configurations_are_refused() {
    for config in [
        SyntheticConfig {
            d: 0,
            ..SyntheticConfig::default()
        },
        SyntheticConfig {
            features: 0,
            ..SyntheticConfig::default()
        },
        SyntheticConfig {
            zipf_exponent: f64::NAN,
            ..SyntheticConfig::default()
        },
        SyntheticConfig {
            correlation: 1.5,
            ..SyntheticConfig::default()
        },
        SyntheticConfig {
            magnitude_min: 2.0,
            magnitude_max: 1.0,
            ..SyntheticConfig::default()
        },
    ] {
        assert!(SyntheticSource::new(config).is_err());
    }
    let parsed: SyntheticConfig = serde_json::from_str(r#"{"d": 32}"#).unwrap();
    assert_eq!(
        parsed,
        SyntheticConfig {
            d: 32,
            ..SyntheticConfig::default()
        }
    );
}

#[test]
fn metrics_score_the_truth_perfectly_and_noise_poorly() {
    let s = source();
    let d = s.config().d;
    let truth = s.dictionary();
    assert!((mmcs(truth, truth, d) - 1.0).abs() < 1e-5);
    assert_eq!(recovery_fraction(truth, truth, d, 0.9), 1.0);

    // Scaled, permuted, with extra features: still perfect.
    let mut learned: Vec<f32> = truth
        .chunks_exact(d)
        .rev()
        .flatten()
        .map(|x| 3.0 * x)
        .collect();
    learned.extend(vec![0.0; d]);
    assert!((mmcs(&learned, truth, d) - 1.0).abs() < 1e-5);

    // Only half of the features learned: half recovered.
    let half = &truth[..truth.len() / 2];
    assert_eq!(recovery_fraction(half, truth, d, 0.9), 0.5);

    // An unrelated dictionary scores low.
    let other = SyntheticSource::new(SyntheticConfig {
        seed: 5,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let score = mmcs(other.dictionary(), truth, d);
    assert!(score < 0.7, "{score}");
    assert_eq!(recovery_fraction(other.dictionary(), truth, d, 0.9), 0.0);

    // Hand-made: learned [1,0] matches truth [1,0] fully and [1,1]/sqrt2 at cos 0.707.
    let best = max_cosines(&[1.0, 0.0], &[1.0, 0.0, 1.0, 1.0], 2);
    assert!(
        (best[0] - 1.0).abs() < 1e-6 && (best[1] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6
    );
}

#[test]
fn recovery_by_frequency_bands_the_true_features_by_firing_probability() {
    // Five true features e_0..e_4 in 5 dimensions, with probabilities out of rank order;
    // learned: e_1 and e_3 exactly, e_0 at cosine 0.8 (not recovered).
    let d = 5;
    let mut truth = vec![0f32; 25];
    for f in 0..5 {
        truth[f * d + f] = 1.0;
    }
    let probabilities = [0.1, 0.5, 0.02, 0.3, 0.2];
    let mut learned = vec![0f32; 15];
    learned[1] = 1.0; // e_1
    learned[d + 3] = 1.0; // e_3
    learned[2 * d] = 0.8; // 0.8 e_0 + 0.6 e_2: cosine 0.8 with e_0, 0.6 with e_2
    learned[2 * d + 2] = 0.6;
    // By probability: e_1 (0.5), e_3 (0.3), e_4 (0.2), e_0 (0.1), e_2 (0.02); two bands of
    // 3 and 2 features (the first band takes the remainder).
    let bands = recovery_by_frequency(&learned, &truth, d, &probabilities, 2, 0.9);
    assert_eq!(bands.len(), 2);
    assert_eq!((bands[0].features, bands[1].features), (3, 2));
    assert_eq!(
        (bands[0].max_probability, bands[0].min_probability),
        (0.5, 0.2)
    );
    assert_eq!(
        (bands[1].max_probability, bands[1].min_probability),
        (0.1, 0.02)
    );
    assert!((bands[0].recovered - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(bands[1].recovered, 0.0);
    assert!((bands[0].mmcs - 2.0 / 3.0).abs() < 1e-6);
    assert!((bands[1].mmcs - 0.7).abs() < 1e-6);
    // One band is the whole recovery; more bands than features leave no empty band.
    let one = recovery_by_frequency(&learned, &truth, d, &probabilities, 1, 0.9);
    assert!(
        (one[0].recovered - f64::from(recovery_fraction(&learned, &truth, d, 0.9))).abs() < 1e-6
    );
    assert_eq!(
        recovery_by_frequency(&learned, &truth, d, &probabilities, 9, 0.9).len(),
        5
    );
}
