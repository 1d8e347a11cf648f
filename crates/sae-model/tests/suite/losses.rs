//! Loss values checked by hand on tiny inputs, and aux_zipf = aux_k on the dead set.

use crate::common;

use burn::backend::{Autodiff, Flex};
use common::{random, tensor};
use sae_model::sae_alloc::{ScoreMatrix, Selection};
use sae_model::{
    Activation, FeatureStats, LossSpec, ReconLoss, Sae, SaeParams, Sparsifier, StatsConfig,
    StepPath, TopK, aux_selection, aux_selection_in, fused::AffinityLayout, fvu, loss_and_grads,
    mse, sae::host_vec,
};

type Inner = Flex;
type B = Autodiff<Flex>;

fn scalar(t: burn::tensor::Tensor<Inner, 1>) -> f32 {
    t.into_scalar()
}

#[test]
fn mse_and_fvu_by_hand() {
    let device = Default::default();
    let x = tensor::<Inner>(vec![1.0, 0.0, 3.0, 2.0], 2, 2, &device);
    let x_hat = tensor::<Inner>(vec![1.0, 1.0, 2.0, 2.0], 2, 2, &device);
    // Squared errors 0, 1, 1, 0: sum 2 over 4 elements.
    assert!((scalar(mse(x.clone(), x_hat.clone())) - 0.5).abs() < 1e-7);
    // Batch mean (2, 1); total variance 1 + 1 + 1 + 1 = 4; FVU = 2 / 4.
    assert!((scalar(fvu(x, x_hat)) - 0.5).abs() < 1e-7);
}

/// d = 2, F = 2, w_enc = I, w_dec rows (1, 0) and (0.6, 0.8), biases 0, x = (3, 1).
fn tiny() -> SaeParams {
    SaeParams {
        d_model: 2,
        features: 2,
        w_enc: vec![1.0, 0.0, 0.0, 1.0],
        b_enc: vec![0.0, 0.0],
        w_dec: vec![1.0, 0.0, 0.6, 0.8],
        b_dec: vec![0.0, 0.0],
    }
}

#[test]
fn aux_k_by_hand() {
    let device = Default::default();
    let sae = Sae::<Inner>::from_params(&tiny(), &device).unwrap();
    let x = tensor::<Inner>(vec![3.0, 1.0], 1, 2, &device);
    let z = host_vec(sae.affinities(x.clone()));
    assert_eq!(z, vec![3.0, 1.0]);
    let stats = FeatureStats::new(2, StatsConfig::default());
    let sel = TopK { k: 1 }
        .select(&ScoreMatrix::new(&z, 1, 2).unwrap(), &stats)
        .unwrap();
    assert_eq!(sel.features(), &[0]);
    // Feature 1 dead: aux selects it with code 1.
    let aux = aux_selection(&z, 1, 2, &[0.0, 1.0], 1, Activation::Relu).unwrap();
    assert_eq!(aux.features(), &[1]);
    let out = loss_and_grads::<B>(
        &sae.tensors(),
        x,
        &LossSpec {
            selection: &sel,
            aux_selection: Some(&aux),
            activation: Activation::Relu,
            recon_loss: ReconLoss::Mse,
            aux_coef: 1.0,
            path: StepPath::Sparse,
        },
    )
    .unwrap();
    // x_hat = 3 * (1, 0); e = (0, 1); e_hat = 1 * (0.6, 0.8);
    // aux = ||(-0.6, 0.2)||^2 / ||e||^2 = 0.4; mse = (0 + 1) / 2.
    assert!((out.mse - 0.5).abs() < 1e-6, "mse {}", out.mse);
    assert!((out.aux - 0.4).abs() < 1e-6, "aux {}", out.aux);
    assert!((out.loss - 0.9).abs() < 1e-6, "loss {}", out.loss);
}

#[test]
fn aux_selection_ranks_by_weighted_affinity() {
    // Row (0.5, 2.0, 1.0, -1.0), weights (1, 0.1, 0.9, 1): weighted 0.5, 0.2, 0.9, -1.
    let z = [0.5, 2.0, 1.0, -1.0];
    let sel = aux_selection(&z, 1, 4, &[1.0, 0.1, 0.9, 1.0], 2, Activation::Relu).unwrap();
    assert_eq!(sel.features(), &[0, 2]);
    assert_eq!(sel.scores(), &[0.5, 1.0]);
    // Non-candidates (weight 0) never appear; relu-zero codes are dropped.
    let sel = aux_selection(&z, 1, 4, &[0.0, 0.0, 0.0, 1.0], 2, Activation::Relu).unwrap();
    assert_eq!(sel.nnz(), 0);
}

/// On feature-major affinities (as the CPU step holds them for Feature Choice) the auxiliary
/// selection is the token-major one: pairs, order and scores, for either activation, with
/// ties, candidates that do not fire, and `k_aux` above and below the candidates per token.
#[test]
fn aux_selection_on_feature_major_affinities_is_the_same() {
    let (n, f) = (9, 23);
    let mut z = random(n * f, 3);
    for (i, v) in z.iter_mut().enumerate() {
        if i % 5 == 0 {
            *v = 0.25;
        }
    }
    let by_feature = ScoreMatrix::new(&z, n, f).unwrap().transposed();
    let weights: Vec<f32> = (0..f).map(|j| [0.0, 1.0, 0.5][j % 3]).collect();
    for activation in [Activation::Relu, Activation::Identity] {
        for k_aux in [1, 3, 20] {
            let want = aux_selection(&z, n, f, &weights, k_aux, activation).unwrap();
            assert!(want.nnz() > 0);
            let got = aux_selection_in(
                AffinityLayout::FeatureMajor,
                &by_feature,
                n,
                f,
                &weights,
                k_aux,
                activation,
            )
            .unwrap();
            assert_eq!(got, want, "{activation:?}, k_aux {k_aux}");
        }
    }
}

#[test]
fn aux_zipf_equals_aux_k_on_dead_set_with_unit_weights() {
    let device = Default::default();
    let (n, d, f) = (16, 6, 20);
    let p = common::params(d, f, 5);
    let sae = Sae::<Inner>::from_params(&p, &device).unwrap();
    let x = tensor::<Inner>(random(n * d, 6), n, d, &device);
    let z = host_vec(sae.affinities(x.clone()));
    // Statistics where features 0..10 fired and 10..20 never did: dead after the window.
    let mut stats = FeatureStats::new(
        f,
        StatsConfig {
            density_horizon_tokens: 50.0,
            dead_window: 32,
            ..StatsConfig::default()
        },
    );
    let features: Vec<u32> = (0..n as u32).map(|t| t % 10).collect();
    let offsets: Vec<usize> = (0..=n).collect();
    let sel = Selection::from_parts(n, f, offsets, features, vec![1.0; n]).unwrap();
    for _ in 0..3 {
        stats.update(&sel, |s| s > 0.0).unwrap();
    }
    let dead = stats.dead_mask();
    assert_eq!(dead.iter().filter(|&&d| d).count(), 10);
    // aux_k: dead set, unit weights.
    let aux_k = aux_selection(&z, n, f, &stats.dead_weights(), 3, Activation::Relu).unwrap();
    // aux_zipf with the candidate set forced to the dead set and unit weights.
    let zipf_weights: Vec<f32> = stats
        .underused_weights(3.0)
        .iter()
        .zip(&dead)
        .map(|(_, &d)| if d { 1.0 } else { 0.0 })
        .collect();
    let aux_zipf = aux_selection(&z, n, f, &zipf_weights, 3, Activation::Relu).unwrap();
    assert_eq!(aux_k, aux_zipf);
    // And the dead features are all under-used with weight 1 in aux_zipf's own weights.
    for (w, &d) in stats.underused_weights(3.0).iter().zip(&dead) {
        if d {
            assert_eq!(*w, 1.0);
        }
    }
    let main = TopK { k: 3 }
        .select(&ScoreMatrix::new(&z, n, f).unwrap(), &stats)
        .unwrap();
    let loss = |aux: &Selection| {
        loss_and_grads::<B>(
            &sae.tensors(),
            x.clone(),
            &LossSpec {
                selection: &main,
                aux_selection: Some(aux),
                activation: Activation::Relu,
                recon_loss: ReconLoss::Fvu,
                aux_coef: 1.0 / 32.0,
                path: StepPath::Sparse,
            },
        )
        .unwrap()
    };
    assert!(aux_k.nnz() > 0);
    let (a, b) = (loss(&aux_k), loss(&aux_zipf));
    assert_eq!(a.aux, b.aux);
    assert_eq!(a.loss, b.loss);
}
