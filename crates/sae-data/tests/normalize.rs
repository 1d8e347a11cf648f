//! Normalisation: estimate, apply, invert.

mod common;

use common::noise;
use sae_data::{BatchSource, Normalizer, SyntheticConfig, SyntheticSource};

fn mean_squared_norm(rows: &[f32], d: usize) -> f32 {
    rows.chunks_exact(d)
        .map(|r| r.iter().map(|x| x * x).sum::<f32>())
        .sum::<f32>()
        / (rows.len() / d) as f32
}

#[test]
fn scale_gives_mean_squared_norm_d() {
    let d = 16;
    let rows: Vec<f32> = noise(1000 * d, 1).iter().map(|x| 40.0 * x + 3.0).collect();
    for center in [false, true] {
        let n = Normalizer::estimate(&rows, d, center).unwrap();
        assert_eq!(n.mean.is_some(), center);
        let mut normalised = rows.clone();
        n.apply(&mut normalised);
        assert!((mean_squared_norm(&normalised, d) - d as f32).abs() < 1e-3 * d as f32);
        if center {
            let mean0 = normalised.chunks_exact(d).map(|r| r[0]).sum::<f32>() / 1000.0;
            assert!(mean0.abs() < 1e-3, "{mean0}");
        }
        n.invert(&mut normalised);
        for (a, b) in rows.iter().zip(&normalised) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }
}

#[test]
fn identity_changes_nothing_and_round_trips_through_json() {
    let mut rows = vec![1.0, -2.0, 3.5];
    Normalizer::identity().apply(&mut rows);
    assert_eq!(rows, [1.0, -2.0, 3.5]);
    let n = Normalizer {
        scale: 0.25,
        mean: Some(vec![1.0, 2.0, 3.0]),
    };
    let json = serde_json::to_string(&n).unwrap();
    assert_eq!(serde_json::from_str::<Normalizer>(&json).unwrap(), n);
}

#[test]
fn bad_samples_are_refused() {
    assert!(Normalizer::estimate(&[], 4, false).is_err());
    assert!(Normalizer::estimate(&[1.0; 5], 4, false).is_err());
    assert!(Normalizer::estimate(&[0.0; 8], 4, false).is_err());
    assert!(
        Normalizer::estimate(&[2.0; 8], 4, true).is_err(),
        "zero after centring"
    );
    let msg = Normalizer::estimate(&[1.0, 2.0, f32::NAN, 4.0], 2, false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("row 1 column 0"), "{msg}");
}

#[test]
fn estimate_from_a_boxed_source() {
    let config = SyntheticConfig {
        noise_std: 0.0,
        ..SyntheticConfig::default()
    };
    let training = SyntheticSource::new(config).unwrap();
    let mut eval: Box<dyn BatchSource> = Box::new(training.held_out());
    let n = Normalizer::estimate_from(&mut eval, 4096, false).unwrap();
    let mut batch = Vec::new();
    let mut training: Box<dyn BatchSource> = Box::new(training);
    training.next_batch(4096, &mut batch).unwrap();
    n.apply(&mut batch);
    let d = training.d();
    let mean_squared = mean_squared_norm(&batch, d);
    assert!(
        (mean_squared - d as f32).abs() < 0.05 * d as f32,
        "{mean_squared}"
    );
}
