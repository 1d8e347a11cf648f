//! Where a batch's selection runs: [`select_on_backend`] decides between the device kernels
//! and a sparsifier's host rule, and [`BatchSelection`] keeps the affinities wherever that
//! left them for the auxiliary selection.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use sae_alloc::{ScoreMatrix, Selection};

use crate::device;
use crate::error::Result;
use crate::loss::aux_selection;
use crate::rule::Activation;
use crate::sae::host_vec;
use crate::sparsifier::Sparsifier;
use crate::stats::FeatureStats;

/// Where the affinities of a batch are after its selection.
#[derive(Debug, Clone)]
pub enum BatchAffinities<B: Backend> {
    /// Copied to the host, row-major `[N, F]` (the host rules needed them there).
    Host(Vec<f32>),
    /// Still on the device only (the selection ran there).
    Device(Tensor<B, 2>),
}

/// A batch's selection, and its affinities wherever the selection left them (reused by the
/// auxiliary loss's selection).
#[derive(Debug, Clone)]
pub struct BatchSelection<B: Backend> {
    /// The chosen pairs.
    pub selection: Selection,
    /// The affinities `[N, F]` the pairs were chosen from.
    pub affinities: BatchAffinities<B>,
}

impl<B: Backend> BatchSelection<B> {
    /// The auxiliary selection ([`crate::aux_selection`]) from the same affinities, on the
    /// device when they are there.
    pub fn aux_selection(
        &self,
        weights: &[f32],
        k_aux: usize,
        activation: Activation,
    ) -> Result<Selection> {
        let (rows, cols) = (self.selection.rows(), self.selection.cols());
        match &self.affinities {
            BatchAffinities::Host(host) => {
                aux_selection(host, rows, cols, weights, k_aux, activation)
            }
            BatchAffinities::Device(scores) => device::aux_select_on_device(
                scores, weights, k_aux, activation,
            )
            .unwrap_or_else(|| {
                let host = host_vec(scores.clone());
                aux_selection(&host, rows, cols, weights, k_aux, activation)
            }),
        }
    }
}

/// Runs a sparsifier on a batch of detached affinities held by any backend.
///
/// This is the one place that decides how selection runs for a backend: on burn's cubecl
/// backends (wgpu, cuda) a [`Sparsifier::builtin`] rule runs as a `sae-kernels` kernel on the
/// affinities' own buffer, and only the selected pairs travel to the host; everywhere else (and
/// for sparsifiers without a built-in rule) the affinities are copied to the host and
/// [`Sparsifier::select`] runs there.
pub fn select_on_backend<B: Backend>(
    affinities: Tensor<B, 2>,
    sparsifier: &dyn Sparsifier,
    stats: &FeatureStats,
) -> Result<BatchSelection<B>> {
    let [n, f] = affinities.dims();
    if device::is_cubecl::<B>()
        && let Some(rule) = sparsifier.builtin(n, stats)?
        && let Some(selection) = device::select_on_device(&affinities, &rule)
    {
        return Ok(BatchSelection {
            selection: selection?,
            affinities: BatchAffinities::Device(affinities),
        });
    }
    let host = host_vec(affinities);
    let scores = ScoreMatrix::new(&host, n, f)?;
    let selection = sparsifier.select(&scores, stats)?;
    Ok(BatchSelection {
        selection,
        affinities: BatchAffinities::Host(host),
    })
}
