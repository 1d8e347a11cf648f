//! Synthetic activations with a known dictionary, for measuring feature recovery.
//!
//! Sample `i` is `sum_f a_f * D_f + noise`, where `D` holds unit-norm true feature directions,
//! each feature fires independently with a probability that follows a Zipf law in its rank
//! (so the number of active features varies), and the magnitudes `a_f` are non-negative.
//! Every sample is a pure function of `(seed, i)`: its randomness is ChaCha stream `i` under a
//! key derived from the seed, so batches are generated in parallel and are identical for any
//! thread count, and a cursor is just an index.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::source::{BatchSource, Cursor};
use crate::stream::mix;

/// Parameters of the synthetic ground truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyntheticConfig {
    /// Activation width.
    pub d: usize,
    /// Number of true features.
    pub features: usize,
    /// Zipf exponent of feature frequencies: feature `f` (0-based rank) fires with probability
    /// proportional to `(f + 1)^-zipf_exponent` (capped at 1). Zero makes all features equally
    /// frequent.
    pub zipf_exponent: f64,
    /// Mean number of active features per sample. Features fire independently, so the count
    /// varies from sample to sample.
    pub mean_active: f64,
    /// Smallest magnitude of an active feature.
    pub magnitude_min: f32,
    /// Largest magnitude of an active feature (magnitudes are uniform in between).
    pub magnitude_max: f32,
    /// Probability that an active feature's fixed partner feature fires with it.
    pub correlation: f64,
    /// Standard deviation of the Gaussian noise added to every coordinate.
    pub noise_std: f32,
    /// Seed of the dictionary and of every sample.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            d: 64,
            features: 512,
            zipf_exponent: 1.0,
            mean_active: 5.0,
            magnitude_min: 0.5,
            magnitude_max: 1.5,
            correlation: 0.0,
            noise_std: 0.01,
            seed: 0,
        }
    }
}

/// First sample index of the evaluation range; training indices stay far below it.
pub const EVAL_START: u64 = 1 << 63;

const DICTIONARY: u64 = 11;
const SAMPLES: u64 = 12;

/// A standard normal draw (Box-Muller; one of the pair is discarded for simplicity).
fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Firing probabilities `min(1, s * (f + 1)^-exponent)`, with `s` found by bisection so they
/// sum to `mean_active`.
fn zipf_probabilities(features: usize, exponent: f64, mean_active: f64) -> Vec<f64> {
    let weights: Vec<f64> = (0..features)
        .map(|f| ((f + 1) as f64).powf(-exponent))
        .collect();
    let total = |s: f64| weights.iter().map(|w| (s * w).min(1.0)).sum::<f64>();
    let (mut lo, mut hi) = (0.0, 1.0 / weights[features - 1]);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if total(mid) < mean_active {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    weights.iter().map(|w| (hi * w).min(1.0)).collect()
}

/// Two independent standard normal draws in `f32` (Box-Muller, both outputs used), for the
/// per-coordinate noise where speed matters more than the far tail (|z| < 5.8).
fn gaussian_pair(rng: &mut ChaCha8Rng) -> (f32, f32) {
    let u1: f32 = 1.0 - rng.random::<f32>();
    let u2: f32 = rng.random::<f32>();
    let r = (-2.0 * u1.ln()).sqrt();
    let (sin, cos) = (std::f32::consts::TAU * u2).sin_cos();
    (r * cos, r * sin)
}

/// The synthetic generator: a [`BatchSource`] whose true dictionary is known.
#[derive(Clone, Debug)]
pub struct SyntheticSource {
    config: SyntheticConfig,
    /// `features x d`, unit-norm rows.
    dictionary: Vec<f32>,
    /// Firing probability of each feature, non-increasing in the rank.
    probabilities: Vec<f64>,
    /// Each feature's correlated partner.
    partners: Vec<u32>,
    key: [u8; 32],
    index: u64,
    start: u64,
}

impl SyntheticSource {
    /// Builds the generator and its dictionary; checks the configuration.
    pub fn new(config: SyntheticConfig) -> Result<Self, DataError> {
        let c = &config;
        if c.d == 0 || c.features == 0 || c.features > u32::MAX as usize {
            return Err(DataError::config(
                "synthetic d and features must be positive",
            ));
        }
        let finite_non_negative = |x: f64| x.is_finite() && x >= 0.0;
        if !finite_non_negative(c.zipf_exponent)
            || !finite_non_negative(c.mean_active)
            || c.mean_active > c.features as f64
            || !(0.0..=1.0).contains(&c.correlation)
            || !finite_non_negative(f64::from(c.noise_std))
            || !finite_non_negative(f64::from(c.magnitude_min))
            || !c.magnitude_max.is_finite()
            || c.magnitude_max < c.magnitude_min
        {
            return Err(DataError::config(format!(
                "synthetic configuration out of range: {config:?}"
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(mix(&[c.seed, DICTIONARY]));
        let mut dictionary = vec![0f32; c.features * c.d];
        for row in dictionary.chunks_exact_mut(c.d) {
            loop {
                row.iter_mut().for_each(|x| *x = gaussian(&mut rng) as f32);
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 1e-6 {
                    row.iter_mut().for_each(|x| *x /= norm);
                    break;
                }
            }
        }
        let partners = (0..c.features)
            .map(|f| {
                if c.features == 1 {
                    return 0;
                }
                let other = rng.random_range(0..c.features as u64 - 1) as usize;
                (if other >= f { other + 1 } else { other }) as u32
            })
            .collect();
        let probabilities = zipf_probabilities(c.features, c.zipf_exponent, c.mean_active);
        let mut key = [0u8; 32];
        for (i, chunk) in key.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&mix(&[c.seed, SAMPLES, i as u64]).to_le_bytes());
        }
        Ok(Self {
            config,
            dictionary,
            probabilities,
            partners,
            key,
            index: 0,
            start: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SyntheticConfig {
        &self.config
    }

    /// The true dictionary: `features x d`, row-major, unit-norm rows.
    pub fn dictionary(&self) -> &[f32] {
        &self.dictionary
    }

    /// Probability that each feature fires in a sample (before correlated partners are added);
    /// sums to `mean_active`.
    pub fn feature_probabilities(&self) -> &[f64] {
        &self.probabilities
    }

    /// A generator over the evaluation indices (from [`EVAL_START`]), disjoint from training.
    pub fn held_out(&self) -> Self {
        Self {
            index: EVAL_START,
            start: EVAL_START,
            ..self.clone()
        }
    }

    /// The active features of sample `index` and their magnitudes, by increasing feature.
    pub fn active_features(&self, index: u64) -> Vec<(usize, f32)> {
        let mut rng = ChaCha8Rng::from_seed(self.key);
        rng.set_stream(index);
        self.draw_active(&mut rng)
    }

    fn draw_active(&self, rng: &mut ChaCha8Rng) -> Vec<(usize, f32)> {
        let c = &self.config;
        let p = &self.probabilities;
        let n = p.len();
        let mut active: Vec<usize> = Vec::new();
        // Independent Bernoulli draws by thinning: candidates are proposed at rate q = p[f], an
        // upper bound for every later feature since p is non-increasing, found by geometric
        // skips, and accepted with p[g] / q. Costs about mean_active draws, not `features`.
        let mut f = 0;
        while f < n {
            let q = p[f];
            if q <= 0.0 {
                break;
            }
            if q < 1.0 {
                let u = 1.0 - rng.random::<f64>();
                let skip = (u.ln() / (-q).ln_1p()).floor();
                if skip >= (n - f) as f64 {
                    break;
                }
                f += skip as usize;
            }
            if p[f] >= q || rng.random::<f64>() * q < p[f] {
                active.push(f);
            }
            f += 1;
        }
        if c.correlation > 0.0 {
            for i in 0..active.len() {
                let partner = self.partners[active[i]] as usize;
                if rng.random::<f64>() < c.correlation && !active.contains(&partner) {
                    active.push(partner);
                }
            }
            active.sort_unstable();
        }
        active
            .into_iter()
            .map(|f| {
                let a = c.magnitude_min + (c.magnitude_max - c.magnitude_min) * rng.random::<f32>();
                (f, a)
            })
            .collect()
    }

    /// Writes sample `index` (`d` values) into `out`.
    pub fn sample(&self, index: u64, out: &mut [f32]) {
        let d = self.config.d;
        assert_eq!(out.len(), d, "a sample has d = {d} values");
        let mut rng = ChaCha8Rng::from_seed(self.key);
        rng.set_stream(index);
        let active = self.draw_active(&mut rng);
        out.fill(0.0);
        for (f, a) in active {
            let direction = &self.dictionary[f * d..(f + 1) * d];
            for (o, x) in out.iter_mut().zip(direction) {
                *o += a * x;
            }
        }
        if self.config.noise_std > 0.0 {
            for pair in out.chunks_mut(2) {
                let (a, b) = gaussian_pair(&mut rng);
                pair[0] += self.config.noise_std * a;
                if let Some(x) = pair.get_mut(1) {
                    *x += self.config.noise_std * b;
                }
            }
        }
    }
}

impl BatchSource for SyntheticSource {
    fn d(&self) -> usize {
        self.config.d
    }

    fn next_batch(&mut self, rows: usize, out: &mut Vec<f32>) -> Result<(), DataError> {
        let d = self.config.d;
        // Every value is overwritten; resizing without clearing skips a memset per batch.
        out.resize(rows * d, 0.0);
        let first = self.index;
        out.par_chunks_mut(d)
            .with_min_len(32)
            .enumerate()
            .for_each(|(i, row)| self.sample(first.wrapping_add(i as u64), row));
        self.index = first.wrapping_add(rows as u64);
        Ok(())
    }

    fn cursor(&self) -> Cursor {
        Cursor::Synthetic { index: self.index }
    }

    fn restore(&mut self, cursor: &Cursor) -> Result<(), DataError> {
        match *cursor {
            Cursor::Synthetic { index } if (index >= EVAL_START) == (self.start >= EVAL_START) => {
                self.index = index;
                Ok(())
            }
            _ => Err(DataError::CursorMismatch {
                reason: format!(
                    "{cursor:?} is not a synthetic {} cursor",
                    if self.start >= EVAL_START {
                        "evaluation"
                    } else {
                        "training"
                    }
                ),
            }),
        }
    }
}
