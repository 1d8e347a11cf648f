//! Input normalisation: an optional mean subtraction and one global scale.

use serde::{Deserialize, Serialize};

use crate::dtype::first_non_finite;
use crate::error::DataError;
use crate::source::{BatchSource, Cursor};

/// Maps activations `x` to `(x - mean) * scale`, and back.
///
/// [`Normalizer::estimate`] picks `scale` so that normalised rows have mean squared norm `d`
/// (entries of order one whatever the model's residual scale). SAELens'
/// `expected_average_only_in` aims the mean *norm* at `sqrt(d)` instead; for activations whose
/// norms vary little the two agree closely. Keep the normalizer with a trained SAE: reconstructions
/// and exported weights map back to the model's units through [`Normalizer::invert`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    /// Multiplier applied after centring.
    pub scale: f32,
    /// Per-dimension mean subtracted first, if centring.
    pub mean: Option<Vec<f32>>,
}

impl Default for Normalizer {
    fn default() -> Self {
        Self::identity()
    }
}

impl Normalizer {
    /// The normalizer that changes nothing.
    pub fn identity() -> Self {
        Self {
            scale: 1.0,
            mean: None,
        }
    }

    /// Estimates the normalizer from a sample of rows (row-major, `d` wide).
    ///
    /// With `center`, the per-dimension mean is estimated and subtracted before the scale is
    /// measured. Fails on an empty, ragged, non-finite or all-zero sample.
    pub fn estimate(sample: &[f32], d: usize, center: bool) -> Result<Self, DataError> {
        if d == 0 || sample.is_empty() || !sample.len().is_multiple_of(d) {
            return Err(DataError::config(format!(
                "normalizer sample of {} values is not a non-empty whole number of rows of width {d}",
                sample.len()
            )));
        }
        if let Some(i) = first_non_finite(sample) {
            return Err(DataError::config(format!(
                "normalizer sample row {} column {} is {} (not finite)",
                i / d,
                i % d,
                sample[i]
            )));
        }
        let rows = sample.len() / d;
        let mean = center.then(|| {
            let mut sum = vec![0f64; d];
            for row in sample.chunks_exact(d) {
                for (s, &x) in sum.iter_mut().zip(row) {
                    *s += f64::from(x);
                }
            }
            sum.iter()
                .map(|s| (s / rows as f64) as f32)
                .collect::<Vec<f32>>()
        });
        let mut squared = 0f64;
        for row in sample.chunks_exact(d) {
            squared += match &mean {
                Some(m) => row
                    .iter()
                    .zip(m)
                    .map(|(&x, &m)| f64::from(x - m).powi(2))
                    .sum::<f64>(),
                None => row.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>(),
            };
        }
        let mean_squared_norm = squared / rows as f64;
        if mean_squared_norm <= 0.0 {
            return Err(DataError::config(
                "normalizer sample has zero norm after centring; no scale exists",
            ));
        }
        Ok(Self {
            scale: (d as f64 / mean_squared_norm).sqrt() as f32,
            mean,
        })
    }

    /// Estimates the normalizer from the next `rows` rows of `source` (which advances; pass an
    /// evaluation source or a fresh copy to leave a training stream where it is).
    pub fn estimate_from(
        source: &mut dyn BatchSource,
        rows: usize,
        center: bool,
    ) -> Result<Self, DataError> {
        let mut sample = Vec::new();
        source.next_batch(rows, &mut sample)?;
        Self::estimate(&sample, source.d(), center)
    }

    /// Checks that the mean (if any) is `d` wide.
    pub fn check_width(&self, d: usize) -> Result<(), DataError> {
        match &self.mean {
            Some(mean) if mean.len() != d => Err(DataError::config(format!(
                "normalizer mean has {} values but the activations have d = {d}",
                mean.len()
            ))),
            _ => Ok(()),
        }
    }

    /// Normalises rows in place (`rows.len()` a multiple of the mean's width when centring).
    pub fn apply(&self, rows: &mut [f32]) {
        match &self.mean {
            Some(mean) => {
                for row in rows.chunks_exact_mut(mean.len()) {
                    for (x, m) in row.iter_mut().zip(mean) {
                        *x = (*x - m) * self.scale;
                    }
                }
            }
            None => rows.iter_mut().for_each(|x| *x *= self.scale),
        }
    }

    /// Maps normalised rows back to the original units, in place.
    pub fn invert(&self, rows: &mut [f32]) {
        let inverse = 1.0 / self.scale;
        match &self.mean {
            Some(mean) => {
                for row in rows.chunks_exact_mut(mean.len()) {
                    for (x, m) in row.iter_mut().zip(mean) {
                        *x = *x * inverse + m;
                    }
                }
            }
            None => rows.iter_mut().for_each(|x| *x *= inverse),
        }
    }
}

/// A [`BatchSource`] whose batches come out normalised: the one place a run's normaliser is
/// applied to its rows (training batches and evaluation rows alike).
#[derive(Debug)]
pub struct Normalized<S> {
    source: S,
    normalizer: Normalizer,
}

impl<S: BatchSource> Normalized<S> {
    /// Wraps `source`. Fails if the normaliser's mean is not the source's width.
    pub fn new(source: S, normalizer: Normalizer) -> Result<Self, DataError> {
        normalizer.check_width(source.d())?;
        Ok(Self { source, normalizer })
    }

    /// The normaliser applied.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// The raw source.
    pub fn inner(&self) -> &S {
        &self.source
    }
}

impl<S: BatchSource> BatchSource for Normalized<S> {
    fn d(&self) -> usize {
        self.source.d()
    }

    fn next_batch(&mut self, rows: usize, out: &mut Vec<f32>) -> Result<(), DataError> {
        self.source.next_batch(rows, out)?;
        self.normalizer.apply(out);
        Ok(())
    }

    fn cursor(&self) -> Cursor {
        self.source.cursor()
    }

    fn restore(&mut self, cursor: &Cursor) -> Result<(), DataError> {
        self.source.restore(cursor)
    }
}
