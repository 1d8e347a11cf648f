//! Learning rate as a function of tokens seen.

use crate::config::{Decay, ScheduleConfig};

/// The multiplier of the peak learning rate after `tokens` of a `total`-token run.
pub fn lr_factor(schedule: &ScheduleConfig, tokens: u64, total: u64) -> f64 {
    let warm = if schedule.warmup_tokens == 0 {
        1.0
    } else {
        ((tokens as f64 + 1.0) / schedule.warmup_tokens as f64).min(1.0)
    };
    let decay_len = schedule.decay_fraction * total as f64;
    let decay_start = total as f64 - decay_len;
    let progress = if decay_len <= 0.0 {
        0.0
    } else {
        ((tokens as f64 - decay_start) / decay_len).clamp(0.0, 1.0)
    };
    let shape = match schedule.decay {
        Decay::Constant => 0.0,
        Decay::Linear => progress,
        Decay::Cosine => 0.5 * (1.0 - (std::f64::consts::PI * progress).cos()),
    };
    warm * (1.0 - shape * (1.0 - schedule.final_fraction))
}
