//! The learning-rate schedule.

use sae_train::config::{Decay, ScheduleConfig};
use sae_train::schedule::lr_factor;

#[test]
fn warmup_then_constant_then_linear_decay() {
    let s = ScheduleConfig {
        warmup_tokens: 100,
        decay: Decay::Linear,
        decay_fraction: 0.5,
        final_fraction: 0.1,
    };
    assert!((lr_factor(&s, 49, 1000) - 0.5).abs() < 1e-12);
    assert_eq!(lr_factor(&s, 300, 1000), 1.0);
    assert_eq!(lr_factor(&s, 500, 1000), 1.0);
    assert!((lr_factor(&s, 750, 1000) - 0.55).abs() < 1e-12);
    assert!((lr_factor(&s, 1000, 1000) - 0.1).abs() < 1e-12);
}

#[test]
fn cosine_is_halfway_at_the_middle_of_its_window() {
    let s = ScheduleConfig {
        warmup_tokens: 0,
        decay: Decay::Cosine,
        decay_fraction: 1.0,
        final_fraction: 0.0,
    };
    assert!((lr_factor(&s, 500, 1000) - 0.5).abs() < 1e-12);
    let c = ScheduleConfig {
        decay: Decay::Constant,
        ..s
    };
    assert_eq!(lr_factor(&c, 999, 1000), 1.0);
}
