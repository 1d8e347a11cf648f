//! Feature statistics: firing density, time since last fire, dead and under-used sets.

use sae_alloc::{Selection, usage_order, zipf_weights};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SaeError};

/// Windows of the feature statistics, in tokens, and the Zipf law the densities are measured
/// against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// Horizon of the firing-density EMA: each token's weight decays by `1 - 1/horizon`.
    pub density_horizon_tokens: f64,
    /// A feature is dead when it has not fired in this many tokens (Gao et al.: 10M).
    pub dead_window: u64,
    /// Exponent alpha of the Zipf law feature densities are expected to follow: the feature
    /// of density rank `r` targets a density proportional to `r^-alpha`. The one value behind
    /// Feature Choice's Zipf capacities, `aux_zipf`'s under-used weights and the under-used
    /// fraction of evaluations.
    pub zipf_exponent: f64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            density_horizon_tokens: 1_000_000.0,
            dead_window: 10_000_000,
            zipf_exponent: 1.0,
        }
    }
}

/// One batch's tokens and fires per feature, the input of [`FeatureStats::update_counts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredCounts {
    /// Tokens of the batch.
    pub tokens: u64,
    /// Fires of each feature (pairs whose code is non-zero).
    pub per_feature: Vec<u64>,
}

/// Running statistics of every feature, updated from each batch's selection.
///
/// Serialisable so a checkpoint restores it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    config: StatsConfig,
    tokens_seen: u64,
    /// EMA of the per-batch firing fraction, before bias correction.
    density_ema: Vec<f64>,
    /// Total weight of the EMA (bias correction: density = ema / weight).
    ema_weight: f64,
    since_fired: Vec<u64>,
    last_l0_mean: f32,
}

impl FeatureStats {
    /// Empty statistics for `features` features.
    pub fn new(features: usize, config: StatsConfig) -> Self {
        Self {
            config,
            tokens_seen: 0,
            density_ema: vec![0.0; features],
            ema_weight: 0.0,
            since_fired: vec![0; features],
            last_l0_mean: 0.0,
        }
    }

    /// Number of features.
    pub fn features(&self) -> usize {
        self.density_ema.len()
    }

    /// The windows in use.
    pub fn config(&self) -> &StatsConfig {
        &self.config
    }

    /// Tokens seen so far.
    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen
    }

    /// Updates from one batch: a pair counts as a fire when `fired(score)` (for relu
    /// sparsifiers, a positive affinity).
    pub fn update(&mut self, selection: &Selection, fired: impl Fn(f32) -> bool) -> Result<()> {
        let counts = self.fired_counts(selection, fired)?;
        self.update_counts(&counts)
    }

    /// What [`update`](Self::update) takes from a selection: the tokens and each feature's
    /// fires. The counts of a batch split over several peers are the sums of the peers'
    /// counts; [`update_counts`](Self::update_counts) takes them in.
    pub fn fired_counts(
        &self,
        selection: &Selection,
        fired: impl Fn(f32) -> bool,
    ) -> Result<FiredCounts> {
        if selection.cols() != self.features() {
            return Err(SaeError::Shape {
                what: "selection columns",
                expected: vec![self.features()],
                actual: vec![selection.cols()],
            });
        }
        let mut per_feature = vec![0u64; self.features()];
        for (&f, &s) in selection.features().iter().zip(selection.scores()) {
            if fired(s) {
                per_feature[f as usize] += 1;
            }
        }
        Ok(FiredCounts {
            tokens: selection.rows() as u64,
            per_feature,
        })
    }

    /// Takes in one batch's counts (see [`fired_counts`](Self::fired_counts)).
    pub fn update_counts(&mut self, counts: &FiredCounts) -> Result<()> {
        if counts.per_feature.len() != self.features() {
            return Err(SaeError::Shape {
                what: "fire counts",
                expected: vec![self.features()],
                actual: vec![counts.per_feature.len()],
            });
        }
        let n = counts.tokens;
        if n == 0 {
            return Ok(());
        }
        let fired_total: u64 = counts.per_feature.iter().sum();
        let keep = (1.0 - 1.0 / self.config.density_horizon_tokens.max(1.0)).powf(n as f64);
        let alpha = 1.0 - keep;
        for (ema, &c) in self.density_ema.iter_mut().zip(&counts.per_feature) {
            *ema = keep * *ema + alpha * (c as f64 / n as f64);
        }
        self.ema_weight = keep * self.ema_weight + alpha;
        for (since, &c) in self.since_fired.iter_mut().zip(&counts.per_feature) {
            *since = if c > 0 { 0 } else { *since + n };
        }
        self.tokens_seen += n;
        self.last_l0_mean = fired_total as f32 / n as f32;
        Ok(())
    }

    /// Firing density of each feature (fraction of tokens it fires on, EMA, bias-corrected).
    pub fn density(&self) -> Vec<f32> {
        if self.ema_weight <= 0.0 {
            return vec![0.0; self.features()];
        }
        self.density_ema
            .iter()
            .map(|e| (e / self.ema_weight) as f32)
            .collect()
    }

    /// Tokens since each feature last fired (tokens seen, if never).
    pub fn tokens_since_fired(&self) -> &[u64] {
        &self.since_fired
    }

    /// Mean L0 (fired pairs per token) of the last batch.
    pub fn last_l0_mean(&self) -> f32 {
        self.last_l0_mean
    }

    /// Dead features: not fired in the last `dead_window` tokens.
    pub fn dead_mask(&self) -> Vec<bool> {
        self.since_fired
            .iter()
            .map(|&s| s >= self.config.dead_window)
            .collect()
    }

    /// Fraction of features that are dead.
    pub fn dead_fraction(&self) -> f32 {
        let dead = self.dead_mask().iter().filter(|&&d| d).count();
        dead as f32 / self.features().max(1) as f32
    }

    /// Feature ids by descending density (rank 1 first), ties lower id first.
    pub fn usage_order(&self) -> Vec<u32> {
        usage_order(&self.density())
    }

    /// Zipf target density of each feature at its current rank:
    /// `tau_j = k * rank_j^-alpha / H(F, alpha)`, alpha = [`StatsConfig::zipf_exponent`].
    pub fn target_density(&self, k: f64) -> Vec<f32> {
        let order = self.usage_order();
        let weights = zipf_weights(self.features(), self.config.zipf_exponent);
        let mut tau = vec![0f32; self.features()];
        for (rank, &f) in order.iter().enumerate() {
            tau[f as usize] = (k * weights[rank]) as f32;
        }
        tau
    }

    /// aux_zipf candidate weights: `1 - rho_j / tau_j` for under-used features
    /// (`rho_j < tau_j`), 1 for dead features, 0 for the others.
    pub fn underused_weights(&self, k: f64) -> Vec<f32> {
        let tau = self.target_density(k);
        let rho = self.density();
        self.dead_mask()
            .iter()
            .zip(rho.iter().zip(&tau))
            .map(|(&dead, (&r, &t))| {
                if dead {
                    1.0
                } else if r < t {
                    (1.0 - r / t).clamp(f32::MIN_POSITIVE, 1.0)
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Weights that make aux_zipf select exactly as aux_k: 1 on dead features, 0 elsewhere.
    pub fn dead_weights(&self) -> Vec<f32> {
        self.dead_mask()
            .iter()
            .map(|&d| if d { 1.0 } else { 0.0 })
            .collect()
    }
}
