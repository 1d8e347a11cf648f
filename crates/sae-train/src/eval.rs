//! Held-out evaluation: reconstruction, sparsity and feature health, with batch selection and
//! with batch-free inference, plus feature recovery when the true dictionary is known.

use burn::tensor::backend::AutodiffBackend;
pub use sae_metrics::{DENSITY_BINS, EvalReport, RECOVERY_COSINE, SelectionMetrics};
use sae_model::sae::host_vec;
use sae_model::sae_alloc::Selection;
use sae_model::{Activation, TrainStep};

use crate::TrainError;
use crate::data::{EvalRows, GroundTruth};
use crate::tensor::to_device;

/// Frequency bands of the recovery breakdown.
pub const FREQUENCY_BANDS: usize = 8;

/// Running sums for one selection method.
#[derive(Debug)]
struct Accumulator {
    sse: f64,
    elements: u64,
    l0: Vec<u64>,
    /// Per feature: whether it gave a non-zero code on some evaluated token.
    fired: Vec<bool>,
}

impl Accumulator {
    fn new(features: usize) -> Self {
        Self {
            sse: 0.0,
            elements: 0,
            l0: Vec::new(),
            fired: vec![false; features],
        }
    }

    /// Fraction of features that gave no non-zero code on any token added.
    fn silent_fraction(&self) -> f64 {
        self.fired.iter().filter(|&&f| !f).count() as f64 / self.fired.len() as f64
    }

    /// Adds a batch: `x` and its reconstruction `x_hat` (row-major, `rows x d`), and the
    /// selection that gave it (a pair with a non-zero code counts towards L0 and fires).
    fn add(&mut self, x: &[f32], x_hat: &[f32], selection: &Selection, activation: Activation) {
        self.sse += x
            .iter()
            .zip(x_hat)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>();
        self.elements += x.len() as u64;
        for row in 0..selection.rows() {
            let (features, scores) = selection.row(row);
            let mut l0 = 0usize;
            for (&f, &s) in features.iter().zip(scores) {
                if activation.fires(s) {
                    l0 += 1;
                    self.fired[f as usize] = true;
                }
            }
            if self.l0.len() <= l0 {
                self.l0.resize(l0 + 1, 0);
            }
            self.l0[l0] += 1;
        }
    }

    fn finish(self, variance_sum: f64) -> SelectionMetrics {
        let tokens: u64 = self.l0.iter().sum();
        let mean = self
            .l0
            .iter()
            .enumerate()
            .map(|(i, &c)| i as f64 * c as f64)
            .sum::<f64>()
            / tokens as f64;
        let var = self
            .l0
            .iter()
            .enumerate()
            .map(|(i, &c)| (i as f64 - mean).powi(2) * c as f64)
            .sum::<f64>()
            / tokens as f64;
        SelectionMetrics {
            fvu: self.sse / variance_sum,
            mse: self.sse / self.elements as f64,
            l0_mean: mean,
            l0_std: var.sqrt(),
            l0_histogram: self.l0,
        }
    }
}

/// Evaluates the model of `step` on up to `tokens` rows of `rows` (each row once, from the
/// first), as they come: normalise them beforehand ([`EvalRows::normalized`]).
pub fn evaluate<B: AutodiffBackend>(
    step: &TrainStep<B>,
    rows: &mut EvalRows,
    tokens: u64,
    batch_size: usize,
    truth: Option<&GroundTruth>,
) -> Result<EvalReport, TrainError> {
    let params = step.sae().to_params();
    let d = params.d_model;
    let sparsifier = step.sparsifier();
    let activation = sparsifier.activation();
    let device = step.device().clone();
    let (mut batch_acc, mut infer_acc) = (
        Accumulator::new(params.features),
        Accumulator::new(params.features),
    );
    let mut has_inference = true;
    let (mut sum, mut sum_sq, mut seen) = (vec![0f64; d], 0f64, 0u64);
    let wanted = rows
        .rows()
        .map_or(tokens, |available| tokens.min(available));
    if wanted == 0 {
        return Err(TrainError::Config {
            origin: "evaluation".into(),
            reason: "0 tokens to evaluate: ask for at least 1".into(),
        });
    }
    let source = rows.source();
    let mut x = Vec::new();
    while seen < wanted {
        let rows = batch_size.min((wanted - seen) as usize);
        source.next_batch(rows, &mut x)?;
        for row in x.chunks_exact(d) {
            sum.iter_mut()
                .zip(row)
                .for_each(|(s, &v)| *s += f64::from(v));
            sum_sq += row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
        }
        let on_device = to_device::<B>(&x, rows, d, &device);
        let batch = step.select(on_device.clone())?;
        let x_hat = host_vec(step.reconstruct(on_device.clone(), &batch)?);
        batch_acc.add(&x, &x_hat, &batch, activation);
        if has_inference {
            match step.infer(on_device.clone()) {
                Ok(sel) => {
                    let x_hat = host_vec(step.reconstruct(on_device, &sel)?);
                    infer_acc.add(&x, &x_hat, &sel, activation);
                }
                Err(_) => has_inference = false,
            }
        }
        seen += rows as u64;
    }
    let mean_sq_norm: f64 = sum.iter().map(|s| (s / seen as f64).powi(2)).sum();
    let variance_sum = sum_sq - seen as f64 * mean_sq_norm;
    let stats = step.stats();
    let features = params.features as f64;
    let dead = stats.dead_mask().iter().filter(|&&d| d).count() as f64 / features;
    let silent = batch_acc.silent_fraction();
    let underused = stats
        .underused_weights(sparsifier.k() as f64)
        .iter()
        .filter(|&&w| w > 0.0)
        .count() as f64
        / features;
    let mut density_histogram = vec![0u64; DENSITY_BINS];
    for rho in stats.density() {
        let log = f64::from(rho).max(1e-10).log10();
        let bin = (((log + 10.0) / 10.0) * DENSITY_BINS as f64) as usize;
        density_histogram[bin.min(DENSITY_BINS - 1)] += 1;
    }
    let w = &params.w_dec;
    let (mmcs, recovered, recovery_by_frequency) = match truth {
        Some(t) => (
            Some(f64::from(sae_data::mmcs(w, &t.dictionary, d))),
            Some(f64::from(sae_data::recovery_fraction(
                w,
                &t.dictionary,
                d,
                RECOVERY_COSINE,
            ))),
            Some(sae_data::recovery_by_frequency(
                w,
                &t.dictionary,
                d,
                &t.probabilities,
                FREQUENCY_BANDS,
                RECOVERY_COSINE,
            )),
        ),
        None => (None, None, None),
    };
    Ok(EvalReport {
        eval_tokens: seen,
        requested_tokens: tokens,
        batch: batch_acc.finish(variance_sum),
        inference: has_inference.then(|| infer_acc.finish(variance_sum)),
        dead_in_training_fraction: dead,
        dead_on_eval_fraction: silent,
        underused_fraction: underused,
        density_histogram,
        mmcs,
        recovered,
        recovery_by_frequency,
    })
}
