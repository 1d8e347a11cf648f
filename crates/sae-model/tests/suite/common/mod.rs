//! Helpers shared by the integration tests.
#![allow(dead_code)]

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sae_model::{
    AuxLoss, FeatureChoice, MutualChoice, SaeConfig, SaeParams, Sparsifier, StatsConfig, TopK,
    TrainConfig,
};

/// The paper's rules with `k` features per token: TopK, Mutual Choice, Feature Choice uniform
/// and Zipf (its capacities Zipf from the first token).
pub fn builtin_sparsifiers(k: usize) -> Vec<Box<dyn Sparsifier>> {
    let mut zipf = FeatureChoice::zipf(k);
    zipf.zipf_warmup_tokens = 0;
    vec![
        Box::new(TopK { k }),
        Box::new(MutualChoice { k }),
        Box::new(FeatureChoice::uniform(k)),
        Box::new(zipf),
    ]
}

/// Step settings (lr 1e-2) under which every feature counts as dead from the first step, so
/// the auxiliary losses have pairs on every step.
pub fn all_dead_config(aux: AuxLoss) -> TrainConfig {
    TrainConfig {
        lr: Some(1e-2),
        aux,
        stats: StatsConfig {
            density_horizon_tokens: 500.0,
            dead_window: 0,
            ..StatsConfig::default()
        },
        ..TrainConfig::default()
    }
}

/// Uniform values in [-1, 1).
pub fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// A small SAE with random biases (so every parameter matters).
pub fn params(d: usize, f: usize, seed: u64) -> SaeParams {
    let mut p = SaeParams::init(&SaeConfig {
        d_model: d,
        features: f,
        seed,
    })
    .unwrap();
    p.b_enc = random(f, seed + 100).into_iter().map(|v| v * 0.1).collect();
    p.b_dec = random(d, seed + 200).into_iter().map(|v| v * 0.1).collect();
    p
}

/// A `[rows, cols]` tensor from host values.
pub fn tensor<B: Backend>(
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

/// Host values of a tensor.
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// Asserts `|a - b| <= tol * max(max|b|, 1e-6)` elementwise.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: {x} vs {y} (scale {scale}, tol {tol})"
        );
    }
}

/// Whether backend `B` can run a tiny computation; without it the checks on `B` are skipped
/// (with a notice naming `hint`), unless the environment variable `require` is `1`, in which
/// case they fail.
pub fn backend_available<B: Backend>(name: &str, require: &str, hint: &str) -> bool {
    let ok = std::panic::catch_unwind(|| {
        let device = Default::default();
        let t = Tensor::<B, 1>::from_floats([1.0, 2.0], &device);
        t.sum().into_scalar()
    })
    .is_ok();
    if !ok {
        if std::env::var(require).as_deref() == Ok("1") {
            panic!("{require}=1 but no {name} device is available");
        }
        eprintln!("skipping {name} checks: no {name} device ({hint})");
    }
    ok
}

/// Whether a wgpu adapter exists (see [`backend_available`]; `SAE_REQUIRE_WGPU=1` makes its
/// absence an error).
pub fn wgpu_available() -> bool {
    backend_available::<burn::backend::Wgpu>(
        "wgpu",
        "SAE_REQUIRE_WGPU",
        "install mesa-vulkan-drivers",
    )
}

/// Whether a CUDA device exists (see [`backend_available`]; `SAE_REQUIRE_CUDA=1` makes its
/// absence an error).
#[cfg(feature = "cuda")]
pub fn cuda_available() -> bool {
    backend_available::<burn::backend::Cuda>("cuda", "SAE_REQUIRE_CUDA", "needs an NVIDIA GPU")
}
