//! Feature statistics: density EMA, dead set, under-used weights, serialisation.

use sae_model::sae_alloc::Selection;
use sae_model::{FeatureStats, StatsConfig};

/// `n` tokens, token t fires feature `t % fire_mod`.
fn selection(n: usize, f: usize, fire_mod: u32) -> Selection {
    let features = (0..n as u32).map(|t| t % fire_mod).collect();
    Selection::from_parts(n, f, (0..=n).collect(), features, vec![1.0; n]).unwrap()
}

#[test]
fn density_dead_and_l0() {
    let mut s = FeatureStats::new(
        4,
        StatsConfig {
            density_horizon_tokens: 1e9,
            dead_window: 10,
            ..StatsConfig::default()
        },
    );
    s.update(&selection(8, 4, 2), |z| z > 0.0).unwrap();
    // Huge horizon: bias-corrected density is the plain fraction.
    let d = s.density();
    assert!((d[0] - 0.5).abs() < 1e-6 && (d[1] - 0.5).abs() < 1e-6 && d[2] == 0.0);
    assert_eq!(s.tokens_since_fired(), &[0, 0, 8, 8]);
    assert_eq!(s.dead_mask(), vec![false, false, false, false]);
    assert_eq!(s.last_l0_mean(), 1.0);
    s.update(&selection(8, 4, 2), |z| z > 0.0).unwrap();
    assert_eq!(s.dead_mask(), vec![false, false, true, true]);
    assert_eq!(s.dead_fraction(), 0.5);
    assert_eq!(s.tokens_seen(), 16);
    // Non-positive scores do not count as fires.
    s.update(&selection(4, 4, 1), |z| z > 1.0).unwrap();
    assert_eq!(s.tokens_since_fired()[0], 4);
    assert_eq!(s.last_l0_mean(), 0.0);
}

#[test]
fn density_ema_forgets() {
    let mut s = FeatureStats::new(
        2,
        StatsConfig {
            density_horizon_tokens: 10.0,
            dead_window: 1000,
            ..StatsConfig::default()
        },
    );
    for _ in 0..50 {
        s.update(&selection(10, 2, 1), |z| z > 0.0).unwrap();
    }
    assert!((s.density()[0] - 1.0).abs() < 1e-6);
    for _ in 0..50 {
        s.update(&selection(10, 2, 2), |z| z > 0.0).unwrap();
    }
    // Half the tokens now fire feature 0 and half feature 1.
    assert!((s.density()[0] - 0.5).abs() < 1e-3, "{:?}", s.density());
    assert!((s.density()[1] - 0.5).abs() < 1e-3);
}

#[test]
fn underused_weights_follow_zipf_targets() {
    let f = 4;
    let mut s = FeatureStats::new(
        f,
        StatsConfig {
            density_horizon_tokens: 1e9,
            dead_window: 100,
            ..StatsConfig::default()
        },
    );
    // Feature 0 fires on every token, 1 on half, 2 on a quarter, 3 never (not yet dead).
    let n = 8;
    let mut features = Vec::new();
    let mut offsets = vec![0];
    for t in 0..n {
        features.push(0);
        if t % 2 == 0 {
            features.push(1);
        }
        if t % 4 == 0 {
            features.push(2);
        }
        offsets.push(features.len());
    }
    let scores = vec![1.0; features.len()];
    let batch = Selection::from_parts(n, f, offsets, features, scores).unwrap();
    s.update(&batch, |z| z > 0.0).unwrap();
    assert_eq!(s.usage_order(), vec![0, 1, 2, 3]);
    // k = 1.75 (mean L0), alpha = 1: H(4) = 25/12; tau_r = 1.75 * 12 / 25 / r.
    let tau = s.target_density(1.75);
    let h = 25.0 / 12.0;
    for (r, t) in tau.iter().enumerate() {
        assert!((t - 1.75 / h / (r + 1) as f32).abs() < 1e-6);
    }
    let w = s.underused_weights(1.75);
    // rho = (1, .5, .25, 0); tau = (.84, .42, .28, .21).
    assert_eq!(w[0], 0.0);
    assert_eq!(w[1], 0.0);
    assert!((w[2] - (1.0 - 0.25 / tau[2])).abs() < 1e-6);
    assert_eq!(w[3], 1.0);

    // The targets follow the configured exponent: alpha = 2, H(4, 2) = 205/144.
    let mut steep = FeatureStats::new(
        f,
        StatsConfig {
            density_horizon_tokens: 1e9,
            dead_window: 100,
            zipf_exponent: 2.0,
        },
    );
    steep.update(&batch, |z| z > 0.0).unwrap();
    let h2 = 205.0 / 144.0;
    for (r, t) in steep.target_density(1.75).iter().enumerate() {
        let want = 1.75 / h2 / ((r + 1) * (r + 1)) as f32;
        assert!((t - want).abs() < 1e-6, "rank {r}: {t} vs {want}");
    }
}

#[test]
fn stats_round_trip_through_serde() {
    let mut s = FeatureStats::new(3, StatsConfig::default());
    s.update(&selection(5, 3, 3), |z| z > 0.0).unwrap();
    let json = serde_json::to_string(&s).unwrap();
    let back: FeatureStats = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}
