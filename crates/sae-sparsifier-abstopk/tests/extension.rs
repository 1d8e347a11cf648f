//! A sparsifier from another crate, registered by name, trains through sae-model's public API.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::{Tensor, TensorData};
use sae_model::sae_alloc::ScoreMatrix;
use sae_model::{
    Activation, AuxLoss, FeatureStats, LossSpec, ReconLoss, Registry, Sae, SaeConfig, StatsConfig,
    StepPath, TrainConfig, TrainStep, loss_and_grads, sae::host_vec,
};

const N: usize = 32;
const D: usize = 8;
const F: usize = 24;

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn registry() -> Registry {
    let mut r = Registry::with_builtins();
    sae_sparsifier_abstopk::register(&mut r);
    r
}

#[test]
fn selects_by_magnitude_keeping_signs() {
    let s = registry()
        .build_str(r#"{"name": "abs_topk", "k": 2}"#)
        .unwrap();
    let z = [0.5, -3.0, 2.0, 0.1, -0.2, 0.3, 0.0, 1.0];
    let sel = s
        .select(
            &ScoreMatrix::new(&z, 2, 4).unwrap(),
            &FeatureStats::new(4, StatsConfig::default()),
        )
        .unwrap();
    assert_eq!(sel.row(0), (&[1u32, 2][..], &[-3.0f32, 2.0][..]));
    assert_eq!(sel.row(1), (&[1u32, 3][..], &[0.3f32, 1.0][..]));
    assert_eq!(s.activation(), Activation::Identity);
}

#[test]
fn trains_by_name_through_the_registry() {
    type B = Autodiff<Flex>;
    let device = Default::default();
    let s = registry()
        .build_str(r#"{"name": "abs_topk", "k": 3}"#)
        .unwrap();
    let sae = Sae::<Flex>::init(
        &SaeConfig {
            d_model: D,
            features: F,
            seed: 2,
        },
        None,
        &device,
    )
    .unwrap();
    let config = TrainConfig {
        lr: Some(1e-2),
        aux: AuxLoss::None,
        ..TrainConfig::default()
    };
    let mut t = TrainStep::<B>::new(&sae, s, config, &device).unwrap();
    let x = Tensor::<B, 2>::from_data(TensorData::new(data(N * D, 1), [N, D]), &device);
    let first = t.train_step(x.clone()).unwrap();
    let mut last = first.clone();
    for _ in 0..20 {
        last = t.train_step(x.clone()).unwrap();
    }
    assert!(
        last.loss.is_finite() && last.loss < first.loss,
        "{} -> {}",
        first.loss,
        last.loss
    );
    // Signed codes: some selected affinities are negative.
    assert!(last.selection.scores().iter().any(|&z| z < 0.0));
    assert!(last.selection.l0_per_token().iter().all(|&l| l == 3));
}

#[test]
fn signed_codes_match_the_dense_oracle() {
    type B = Autodiff<NdArray>;
    let device = Default::default();
    let s = registry()
        .build_str(r#"{"name": "abs_topk", "k": 3}"#)
        .unwrap();
    let sae = Sae::<NdArray>::init(
        &SaeConfig {
            d_model: D,
            features: F,
            seed: 3,
        },
        None,
        &device,
    )
    .unwrap();
    let x = Tensor::<NdArray, 2>::from_data(TensorData::new(data(N * D, 2), [N, D]), &device);
    let z = host_vec(sae.affinities(x.clone()));
    let sel = s
        .select(
            &ScoreMatrix::new(&z, N, F).unwrap(),
            &FeatureStats::new(F, StatsConfig::default()),
        )
        .unwrap();
    let run = |path| {
        loss_and_grads::<B>(
            &sae.tensors(),
            x.clone(),
            &LossSpec {
                selection: &sel,
                aux_selection: None,
                activation: s.activation(),
                recon_loss: ReconLoss::Fvu,
                aux_coef: 0.0,
                path,
            },
        )
        .unwrap()
    };
    let b = run(StepPath::Dense);
    for path in [StepPath::Sparse, StepPath::Fused] {
        let a = run(path);
        assert!((a.loss - b.loss).abs() <= 1e-4 * b.loss.abs(), "{path:?}");
        let (ga, gb) = (host_vec(a.grads.w_enc), host_vec(b.grads.w_enc.clone()));
        let scale = gb.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (u, v) in ga.iter().zip(&gb) {
            assert!((u - v).abs() <= 1e-4 * scale, "{path:?}: {u} vs {v}");
        }
    }
}
