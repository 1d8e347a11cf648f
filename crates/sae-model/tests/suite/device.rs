//! Selection on burn's cubecl backends (wgpu, on lavapipe where there is no GPU; cuda with the
//! `cuda` feature) runs the
//! `sae-kernels` kernels on the affinities' own buffer and must choose exactly the pairs the
//! host rules choose from the same values.

use crate::common;

use burn::backend::wgpu::{CubeBackend, WgpuRuntime};
use burn::backend::{Flex, Wgpu};
use burn::tensor::backend::Backend;
use common::{random, tensor};
use sae_model::sae_alloc::{AllocError, ScoreMatrix, Selection};
use sae_model::{
    Activation, BatchAffinities, FeatureStats, SaeError, Sparsifier, StatsConfig, TopK,
    aux_selection, select_on_backend,
};

/// Odd shapes (not multiples of the kernels' cube size).
const SHAPES: [(usize, usize); 3] = [(37, 300), (130, 67), (5, 1031)];

/// Scores on a coarse grid, so ties are frequent, with negatives and signed zeros.
fn tied_scores(len: usize, seed: u64) -> Vec<f32> {
    random(len, seed)
        .into_iter()
        .map(|v| (v * 8.0).round() / 8.0)
        .collect()
}

/// Feature statistics that have seen data: some features dead, Zipf capacities non-uniform.
fn warm_stats(n: usize, f: usize, seed: u64) -> FeatureStats {
    let mut stats = FeatureStats::new(
        f,
        StatsConfig {
            density_horizon_tokens: 100.0,
            dead_window: 2 * n as u64,
            ..StatsConfig::default()
        },
    );
    let z = random(n * f, seed);
    let sel = TopK { k: 2 }
        .select(&ScoreMatrix::new(&z, n, f).unwrap(), &stats)
        .unwrap();
    for _ in 0..3 {
        stats.update(&sel, |s| s > 0.0).unwrap();
    }
    stats
}

fn assert_same(what: &str, got: &Selection, want: &Selection) {
    assert_eq!(got.offsets(), want.offsets(), "{what}: offsets");
    assert_eq!(got.features(), want.features(), "{what}: features");
    let bits = |s: &Selection| s.scores().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(got), bits(want), "{what}: scores");
}

/// Every built-in rule on backend `B`'s device against the host rule on the same scores.
fn builtin_rules_match_host<B: Backend>() {
    let device = Default::default();
    for (i, &(n, f)) in SHAPES.iter().enumerate() {
        let z = tied_scores(n * f, i as u64);
        let stats = warm_stats(n, f, 50 + i as u64);
        for k in [1, 3, 9] {
            for sparsifier in common::builtin_sparsifiers(k) {
                let what = format!("{} k={k} {n}x{f}", sparsifier.name());
                let batch =
                    select_on_backend(tensor::<B>(z.clone(), n, f, &device), &*sparsifier, &stats)
                        .unwrap();
                assert!(
                    matches!(batch.affinities, BatchAffinities::Device(_)),
                    "{what}: selection did not run on the device"
                );
                let want = sparsifier
                    .select(&ScoreMatrix::new(&z, n, f).unwrap(), &stats)
                    .unwrap();
                assert_same(&what, &batch.selection, &want);
            }
        }
    }
}

#[test]
fn builtin_rules_run_on_wgpu_and_match_the_host() {
    if common::wgpu_available() {
        builtin_rules_match_host::<Wgpu>();
        // burn's cubecl backend without the fusion layer.
        builtin_rules_match_host::<CubeBackend<WgpuRuntime, f32, i32, u32>>();
    }
}

/// The auxiliary selection from backend `B`'s device against the host one.
fn aux_selection_matches_host<B: Backend>() {
    let device = Default::default();
    for (i, &(n, f)) in SHAPES.iter().enumerate() {
        let z = tied_scores(n * f, 10 + i as u64);
        let stats = warm_stats(n, f, 60 + i as u64);
        let mut fractional = stats.underused_weights(2.0);
        // Also weights with exact zeros between candidates, and more candidates than k_aux.
        fractional.iter_mut().step_by(3).for_each(|w| *w = 0.0);
        for weights in [stats.dead_weights(), fractional, vec![1.0; f]] {
            for (k_aux, activation) in [(4, Activation::Relu), (f + 5, Activation::Identity)] {
                let what = format!("{n}x{f} k_aux={k_aux} {activation:?}");
                let batch = select_on_backend(
                    tensor::<B>(z.clone(), n, f, &device),
                    &TopK { k: 1 },
                    &stats,
                )
                .unwrap();
                let got = batch.aux_selection(&weights, k_aux, activation).unwrap();
                let want = aux_selection(&z, n, f, &weights, k_aux, activation).unwrap();
                assert_same(&what, &got, &want);
            }
        }
    }
}

/// A NaN affinity on backend `B`'s device is an error naming its row and column.
fn nan_affinities_are_reported<B: Backend>() {
    let (n, f) = (6, 40);
    let mut z = random(n * f, 3);
    z[2 * f + 17] = f32::NAN;
    let stats = FeatureStats::new(f, StatsConfig::default());
    for sparsifier in common::builtin_sparsifiers(2) {
        let err = select_on_backend(
            tensor::<B>(z.clone(), n, f, &Default::default()),
            &*sparsifier,
            &stats,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                SaeError::Alloc(AllocError::NanScore { row: 2, col: 17 })
            ),
            "{}: {err:?}",
            sparsifier.name()
        );
    }
}

#[test]
fn aux_selection_on_wgpu_matches_the_host() {
    if common::wgpu_available() {
        aux_selection_matches_host::<Wgpu>();
    }
}

#[test]
fn nan_affinities_are_reported_on_wgpu() {
    if common::wgpu_available() {
        nan_affinities_are_reported::<Wgpu>();
    }
}

/// The same checks on burn's CUDA backend, fused and unfused (`--features cuda`; they run
/// where an NVIDIA GPU is present, and fail without one under `SAE_REQUIRE_CUDA=1`).
#[cfg(feature = "cuda")]
mod cuda {
    use burn::backend::Cuda;
    use burn_cubecl::CubeBackend;
    use cubecl::cuda::CudaRuntime;

    #[test]
    fn builtin_rules_run_on_cuda_and_match_the_host() {
        if super::common::cuda_available() {
            super::builtin_rules_match_host::<Cuda>();
            super::builtin_rules_match_host::<CubeBackend<CudaRuntime, f32, i32, u32>>();
        }
    }

    #[test]
    fn aux_selection_on_cuda_matches_the_host() {
        if super::common::cuda_available() {
            super::aux_selection_matches_host::<Cuda>();
        }
    }

    #[test]
    fn nan_affinities_are_reported_on_cuda() {
        if super::common::cuda_available() {
            super::nan_affinities_are_reported::<Cuda>();
        }
    }
}

#[test]
fn cpu_backends_select_on_the_host() {
    let (n, f) = (8, 20);
    let z = random(n * f, 4);
    let stats = FeatureStats::new(f, StatsConfig::default());
    let batch = select_on_backend(
        tensor::<Flex>(z.clone(), n, f, &Default::default()),
        &TopK { k: 3 },
        &stats,
    )
    .unwrap();
    match batch.affinities {
        BatchAffinities::Host(host) => assert_eq!(host, z),
        BatchAffinities::Device(_) => panic!("Flex has no device selection"),
    }
}

/// A device's largest buffer, which a run's sizes are checked against before training: wgpu
/// reports its adapter's limit, and a tensor of exactly that size is allocated and used; the
/// CPU backends report none.
#[test]
fn the_largest_buffer_is_the_adapters_limit_on_wgpu_and_none_on_the_cpu() {
    assert_eq!(sae_model::largest_buffer::<Flex>(&Default::default()), None);
    if !common::wgpu_available() {
        return;
    }
    let device = Default::default();
    let largest = sae_model::largest_buffer::<Wgpu>(&device).expect("wgpu reports its limit");
    assert!(largest >= 1 << 20, "{largest} bytes");
    // Capped at 1 GiB: an adapter whose limit is its whole memory is not filled here.
    let elements = (largest.min(1 << 30) / 4) as usize;
    let ones = burn::tensor::Tensor::<Wgpu, 1>::ones([elements], &device);
    let last = ones.narrow(0, elements - 1, 1).into_data();
    assert_eq!(last.to_vec::<f32>().unwrap(), vec![1.0]);
}
