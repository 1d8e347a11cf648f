//! Synthetic activations with a known dictionary, for measuring feature recovery.
//!
//! Sample `i` is `sum_f a_f * D_f + noise`, where `D` holds unit-norm true feature directions,
//! the active set has a Poisson-distributed size and draws features by a Zipf law, and the
//! magnitudes `a_f` are non-negative. Every sample is a pure function of `(seed, i)`: its
//! randomness is ChaCha stream `i` under a key derived from the seed, so batches are generated
//! in parallel and are identical for any thread count, and a cursor is just an index.

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
    /// Zipf exponent of feature frequencies: feature `f` (0-based rank) is drawn with weight
    /// `(f + 1)^-zipf_exponent`. Zero makes all features equally frequent.
    pub zipf_exponent: f64,
    /// Mean number of active features per sample (Poisson distributed, so it varies).
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

/// A Poisson draw by inversion (the means used here are small).
fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> usize {
    let mut k = 0;
    let mut p = (-mean).exp();
    let mut cdf = p;
    let u: f64 = rng.random();
    while u > cdf && k < 10_000 {
        k += 1;
        p *= mean / k as f64;
        cdf += p;
        if p == 0.0 && cdf < u {
            break;
        }
    }
    k
}

/// The synthetic generator: a [`BatchSource`] whose true dictionary is known.
#[derive(Clone, Debug)]
pub struct SyntheticSource {
    config: SyntheticConfig,
    /// `features x d`, unit-norm rows.
    dictionary: Vec<f32>,
    /// Cumulative Zipf weights, normalised to end at 1.
    cdf: Vec<f64>,
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
            || c.mean_active > 1000.0
            || !(0.0..=1.0).contains(&c.correlation)
            || !finite_non_negative(f64::from(c.noise_std))
            || !finite_non_negative(f64::from(c.magnitude_min))
            || !(f64::from(c.magnitude_max) >= f64::from(c.magnitude_min))
            || !c.magnitude_max.is_finite()
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
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (0..c.features)
            .map(|f| {
                total += ((f + 1) as f64).powf(-c.zipf_exponent);
                total
            })
            .collect();
        cdf.iter_mut().for_each(|x| *x /= total);
        let mut key = [0u8; 32];
        for (i, chunk) in key.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&mix(&[c.seed, SAMPLES, i as u64]).to_le_bytes());
        }
        Ok(Self {
            config,
            dictionary,
            cdf,
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

    /// Probability that one Zipf draw picks each feature (normalised weights).
    pub fn feature_weights(&self) -> Vec<f64> {
        let mut previous = 0.0;
        self.cdf
            .iter()
            .map(|&c| {
                let w = c - previous;
                previous = c;
                w
            })
            .collect()
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
        let k = poisson(rng, c.mean_active).min(c.features);
        let mut active: Vec<(usize, f32)> = Vec::with_capacity(2 * k);
        let magnitude = |rng: &mut ChaCha8Rng| {
            c.magnitude_min + (c.magnitude_max - c.magnitude_min) * rng.random::<f32>()
        };
        let mut attempts = 0;
        while active.len() < k && attempts < 64 * (k + 1) {
            attempts += 1;
            let u: f64 = rng.random();
            let f = self.cdf.partition_point(|&x| x <= u).min(c.features - 1);
            if active.iter().any(|&(g, _)| g == f) {
                continue;
            }
            let a = magnitude(rng);
            active.push((f, a));
            if c.correlation > 0.0 && rng.random::<f64>() < c.correlation {
                let p = self.partners[f] as usize;
                if !active.iter().any(|&(g, _)| g == p) {
                    let a = magnitude(rng);
                    active.push((p, a));
                }
            }
        }
        active.sort_unstable_by_key(|&(f, _)| f);
        active
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
            for o in out.iter_mut() {
                *o += self.config.noise_std * gaussian(&mut rng) as f32;
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
        out.clear();
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
