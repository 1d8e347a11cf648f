//! The training step: learning, decoder constraint, exact resume, non-finite errors.

use crate::common;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use common::{host, params, random, tensor};
use sae_model::{
    AuxLoss, FeatureChoice, MutualChoice, Sae, SaeError, SaeTensors, Sparsifier, StatsConfig,
    StepPath, TopK, TrainConfig, TrainState, TrainStep,
};

const N: usize = 64;
const D: usize = 8;
const F: usize = 32;

fn config() -> TrainConfig {
    TrainConfig {
        lr: Some(1e-2),
        stats: StatsConfig {
            density_horizon_tokens: 500.0,
            dead_window: 256,
            ..StatsConfig::default()
        },
        ..TrainConfig::default()
    }
}

fn batch<B: AutodiffBackend>(seed: u64, device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_inner(tensor::<B::InnerBackend>(random(N * D, seed), N, D, device))
}

fn trainer<B: AutodiffBackend>(
    s: Box<dyn Sparsifier>,
    config: TrainConfig,
    device: &B::Device,
) -> TrainStep<B> {
    let sae = Sae::<B::InnerBackend>::from_params(&params(D, F, 1), device).unwrap();
    TrainStep::new(&sae, s, config, device).unwrap()
}

fn row_norms<B: burn::tensor::backend::Backend>(p: &SaeTensors<B>) -> Vec<f32> {
    host(p.w_dec.clone())
        .chunks(D)
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect()
}

fn learns<B: AutodiffBackend>(device: &B::Device) {
    let rules: Vec<Box<dyn Sparsifier>> = vec![
        Box::new(TopK { k: 4 }),
        Box::new(MutualChoice { k: 4 }),
        Box::new(FeatureChoice::uniform(4)),
    ];
    for s in rules {
        let name = s.name().to_owned();
        let mut t = trainer::<B>(s, config(), device);
        let x = batch::<B>(3, device);
        let first = t.train_step(x.clone()).unwrap();
        let mut last = first.clone();
        for _ in 0..30 {
            last = t.train_step(x.clone()).unwrap();
        }
        assert!(
            last.loss < first.loss * 0.9,
            "{name}: {} -> {}",
            first.loss,
            last.loss
        );
        assert!(
            last.l0_mean > 0.0 && last.l0_mean <= 4.0 + 1e-6,
            "{name}: l0 {}",
            last.l0_mean
        );
        assert_eq!(t.step_count(), 31);
        for norm in row_norms(t.params()) {
            assert!((norm - 1.0).abs() < 1e-5, "{name}: decoder row norm {norm}");
        }
    }
}

#[test]
fn step_learns_on_flex() {
    learns::<Autodiff<Flex>>(&Default::default());
}

#[test]
fn step_learns_on_ndarray() {
    learns::<Autodiff<NdArray>>(&Default::default());
}

#[test]
fn step_learns_on_wgpu() {
    if common::wgpu_available() {
        learns::<Autodiff<burn::backend::Wgpu>>(&Default::default());
    }
}

#[cfg(feature = "cuda")]
#[test]
fn step_learns_on_cuda() {
    if common::cuda_available() {
        learns::<Autodiff<burn::backend::Cuda>>(&Default::default());
    }
}

/// `auto` is the fused host path on the CPU backends, with or without autodiff, and the
/// sparse gather path on wgpu; explicit paths stay as they are.
#[test]
fn auto_path_resolves_per_backend() {
    let cpu = Default::default();
    assert_eq!(StepPath::Auto.resolve::<Flex>(&cpu), StepPath::Fused);
    assert_eq!(
        StepPath::Auto.resolve::<Autodiff<Flex>>(&cpu),
        StepPath::Fused
    );
    let cpu = Default::default();
    assert_eq!(StepPath::Auto.resolve::<NdArray>(&cpu), StepPath::Fused);
    assert_eq!(StepPath::Dense.resolve::<NdArray>(&cpu), StepPath::Dense);
    assert_eq!(StepPath::Sparse.resolve::<NdArray>(&cpu), StepPath::Sparse);
    if common::wgpu_available() {
        let gpu = Default::default();
        assert_eq!(
            StepPath::Auto.resolve::<burn::backend::Wgpu>(&gpu),
            StepPath::Device
        );
        let path = StepPath::Auto.resolve::<Autodiff<burn::backend::Wgpu>>(&gpu);
        assert_eq!(path, StepPath::Device);
    }
}

#[test]
fn dense_and_sparse_steps_agree() {
    type B = Autodiff<NdArray>;
    let device = Default::default();
    let mut a = trainer::<B>(Box::new(MutualChoice { k: 4 }), config(), &device);
    let mut b = trainer::<B>(
        Box::new(MutualChoice { k: 4 }),
        TrainConfig {
            path: StepPath::Dense,
            ..config()
        },
        &device,
    );
    for seed in 0..3 {
        let x = batch::<B>(seed, &device);
        let (oa, ob) = (a.train_step(x.clone()).unwrap(), b.train_step(x).unwrap());
        // Same pairs; the affinities may differ in the last bits after dense vs sparse updates.
        assert_eq!(oa.selection.offsets(), ob.selection.offsets());
        assert_eq!(oa.selection.features(), ob.selection.features());
        assert!((oa.loss - ob.loss).abs() <= 1e-4 * ob.loss.abs());
    }
    common::assert_close(
        "w_dec",
        &host(a.params().w_dec.clone()),
        &host(b.params().w_dec.clone()),
        1e-3,
    );
}

/// The host step (the CPU default: codes taken from the selection's scores, Feature Choice
/// on feature-major affinities, gradients and Adam in its own buffers reused across steps)
/// trains the model the autodiff `sparse` path trains, for every built-in rule with `aux_k`.
#[test]
fn host_and_sparse_steps_agree_for_every_rule_with_aux() {
    type B = Autodiff<Flex>;
    let device = Default::default();
    let rules: [fn() -> Box<dyn Sparsifier>; 3] = [
        || Box::new(TopK { k: 2 }),
        || Box::new(MutualChoice { k: 2 }),
        || Box::new(FeatureChoice::uniform(2)),
    ];
    let cfg = TrainConfig {
        aux: AuxLoss::AuxK,
        stats: StatsConfig {
            dead_window: 2 * N as u64,
            ..config().stats
        },
        ..config()
    };
    // A quarter of the features start with a low bias, so TopK and MC leave them dead and
    // `aux_k` has pairs to train.
    let mut p = params(D, F, 1);
    p.b_enc[..F / 4].fill(-1.0);
    let sae = Sae::<Flex>::from_params(&p, &device).unwrap();
    for rule in rules {
        let name = rule().name().to_owned();
        let mut on_host = TrainStep::<B>::new(&sae, rule(), cfg.clone(), &device).unwrap();
        assert_eq!(cfg.path.resolve::<Flex>(&device), StepPath::Fused);
        let sparse_cfg = TrainConfig {
            path: StepPath::Sparse,
            ..cfg.clone()
        };
        let mut sparse = TrainStep::<B>::new(&sae, rule(), sparse_cfg, &device).unwrap();
        let mut aux_steps = 0;
        for seed in 0..8 {
            let x = batch::<B>(seed, &device);
            let (a, b) = (
                on_host.train_step(x.clone()).unwrap(),
                sparse.train_step(x).unwrap(),
            );
            assert_eq!(
                a.selection.features(),
                b.selection.features(),
                "{name} step {seed}"
            );
            assert_eq!(
                a.selection.offsets(),
                b.selection.offsets(),
                "{name} step {seed}"
            );
            for (what, got, want) in [("loss", a.loss, b.loss), ("aux", a.aux, b.aux)] {
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1e-3),
                    "{name} step {seed}: {what} {got} vs {want}"
                );
            }
            aux_steps += usize::from(a.aux > 0.0);
        }
        if name != "feature_choice" {
            assert!(aux_steps > 0, "{name}: no step had dead features for aux_k");
        }
        for (what, got, want) in [
            (
                "w_enc",
                on_host.params().w_enc.clone(),
                sparse.params().w_enc.clone(),
            ),
            (
                "w_dec",
                on_host.params().w_dec.clone(),
                sparse.params().w_dec.clone(),
            ),
        ] {
            common::assert_close(&format!("{name} {what}"), &host(got), &host(want), 1e-3);
        }
    }
}

#[test]
fn resume_is_bit_identical() {
    type B = Autodiff<Flex>;
    let device = Default::default();
    let mut fc = FeatureChoice::zipf(4);
    fc.zipf_warmup_tokens = 2 * N as u64;
    let cfg = TrainConfig {
        aux: AuxLoss::AuxZipf,
        ..config()
    };
    let mut a = trainer::<B>(Box::new(fc.clone()), cfg.clone(), &device);
    for seed in 0..3 {
        a.train_step(batch::<B>(seed, &device)).unwrap();
    }
    // Through the serde data model. (JSON text needs serde_json's `float_roundtrip` feature to
    // parse floats exactly; binary formats are exact as is.)
    let saved = serde_json::to_value(a.state()).unwrap();
    let restored: TrainState = serde_json::from_value(saved).unwrap();
    assert_eq!(restored, a.state());
    let mut b = TrainStep::<B>::from_state(&restored, Box::new(fc), cfg, &device).unwrap();
    for seed in 3..6 {
        let (oa, ob) = (
            a.train_step(batch::<B>(seed, &device)).unwrap(),
            b.train_step(batch::<B>(seed, &device)).unwrap(),
        );
        assert_eq!(oa.loss.to_bits(), ob.loss.to_bits());
        assert_eq!(oa.selection, ob.selection);
    }
    assert_eq!(a.state(), b.state());
    assert!(a.thresholds().is_some());
}

#[test]
fn non_finite_input_and_loss_are_errors() {
    type B = Autodiff<Flex>;
    let device = Default::default();
    let mut t = trainer::<B>(Box::new(TopK { k: 4 }), config(), &device);
    let before = t.state();
    let mut x = random(N * D, 1);
    x[5] = f32::NAN;
    let err = t
        .train_step(Tensor::from_inner(tensor(x, N, D, &device)))
        .unwrap_err();
    assert!(matches!(err, SaeError::NonFiniteInput), "{err:?}");
    let huge = vec![1e30f32; N * D];
    let err = t
        .train_step(Tensor::from_inner(tensor(huge, N, D, &device)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            SaeError::NonFiniteLoss { .. }
                | SaeError::NonFiniteGradient { .. }
                | SaeError::NonFiniteInput
        ),
        "{err:?}"
    );
    assert_eq!(
        t.state(),
        before,
        "a failed step must leave the state unchanged"
    );
}

#[test]
fn thresholds_and_inference() {
    type B = Autodiff<Flex>;
    let device = Default::default();
    let mut mc = trainer::<B>(Box::new(MutualChoice { k: 4 }), config(), &device);
    let mut fc = trainer::<B>(Box::new(FeatureChoice::uniform(4)), config(), &device);
    let mut topk = trainer::<B>(Box::new(TopK { k: 4 }), config(), &device);
    assert!(
        mc.infer(batch::<B>(0, &device)).is_err(),
        "no thresholds before training"
    );
    for seed in 0..5 {
        mc.train_step(batch::<B>(seed, &device)).unwrap();
        fc.train_step(batch::<B>(seed, &device)).unwrap();
        topk.train_step(batch::<B>(seed, &device)).unwrap();
    }
    assert!(matches!(
        mc.thresholds(),
        Some(sae_model::sae_alloc::Thresholds::Global(_))
    ));
    assert!(matches!(
        fc.thresholds(),
        Some(sae_model::sae_alloc::Thresholds::PerFeature(_))
    ));
    assert!(topk.thresholds().is_none());
    let l0 = |s: &sae_model::sae_alloc::Selection| s.nnz() as f32 / s.rows() as f32;
    let x = batch::<B>(9, &device);
    assert!(l0(&mc.infer(x.clone()).unwrap()) > 0.0);
    assert!(l0(&fc.infer(x.clone()).unwrap()) > 0.0);
    assert_eq!(topk.infer(x).unwrap().nnz(), N * 4);
}

#[test]
fn wrong_width_is_a_shape_error() {
    type B = Autodiff<Flex>;
    let device = Default::default();
    let mut t = trainer::<B>(Box::new(TopK { k: 4 }), config(), &device);
    let x = Tensor::from_inner(tensor(random(N * (D + 1), 1), N, D + 1, &device));
    assert!(matches!(t.train_step(x), Err(SaeError::Shape { .. })));
}
