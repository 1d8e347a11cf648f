//! The device step ([`StepPath::Device`], the training path on burn's cubecl backends; wgpu
//! on lavapipe where there is no GPU) against the host step (`fused` on Flex): the same
//! selections, losses, gradients and parameters, the same bits on every run and on both of
//! burn's wgpu backends, and a failed step that changes nothing.

use crate::common;

use burn::backend::wgpu::{CubeBackend, WgpuRuntime};
use burn::backend::{Autodiff, Flex, Wgpu};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use common::{all_dead_config as config, builtin_sparsifiers, host, params, random, tensor};
use sae_model::{
    AuxLoss, MutualChoice, Sae, SaeError, SaeParams, Sparsifier, StepOutput, StepPath, TopK,
    TrainConfig, TrainState, TrainStep,
};

/// burn's wgpu backend without its fusion layer.
type Plain = CubeBackend<WgpuRuntime, f32, i32, u32>;

/// `(N, d, F, k)`: widths that are not multiples of 4, features with no pairs, features with
/// more pairs than a cube has units (600 tokens, 16 features), several row blocks, k = 1.
const CASES: [(usize, usize, usize, usize); 3] = [(37, 13, 70, 3), (600, 5, 16, 8), (9, 6, 40, 1)];

fn trainer<B: AutodiffBackend>(
    rule: Box<dyn Sparsifier>,
    cfg: TrainConfig,
    (d, f): (usize, usize),
) -> TrainStep<B> {
    let device = Default::default();
    let sae = Sae::<B::InnerBackend>::from_params(&params(d, f, 7), &device).unwrap();
    TrainStep::new(&sae, rule, cfg, &device).unwrap()
}

fn batch<B: AutodiffBackend>(seed: u64, n: usize, d: usize) -> Tensor<B, 2> {
    let device = Default::default();
    Tensor::from_inner(tensor::<B::InnerBackend>(
        random(n * d, seed),
        n,
        d,
        &device,
    ))
}

/// `|a - b| <= tol * max(|b|, 1e-3)` for each loss term.
fn assert_losses(what: &str, got: &StepOutput, want: &StepOutput, tol: f32) {
    for (term, a, b) in [
        ("loss", got.loss, want.loss),
        ("mse", got.mse, want.mse),
        ("fvu", got.fvu, want.fvu),
        ("aux", got.aux, want.aux),
    ] {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1e-3),
            "{what}: {term} {a} vs {b}"
        );
    }
}

fn assert_params_close(what: &str, got: &SaeParams, want: &SaeParams, tol: f32) {
    for (name, a, b) in [
        ("w_enc", &got.w_enc, &want.w_enc),
        ("b_enc", &got.b_enc, &want.b_enc),
        ("w_dec", &got.w_dec, &want.w_dec),
        ("b_dec", &got.b_dec, &want.b_dec),
    ] {
        common::assert_close(&format!("{what} {name}"), a, b, tol);
    }
}

/// How closely a device backend follows the host step. wgpu multiplies in f32, so the
/// selections are the host's exactly; burn's CUDA matmul multiplies in tf32 (about 1e-3
/// relative), so near-ties may be chosen differently there and only the losses are compared.
#[derive(Debug, Clone, Copy)]
struct Agreement {
    /// Selections equal, and gradients and parameters compared.
    exact: bool,
    /// Relative tolerance of the loss terms.
    loss: f32,
}

const F32_GEMM: Agreement = Agreement {
    exact: true,
    loss: 1e-5,
};

/// Every built-in rule, with and without the auxiliary losses, on backend `B`'s device path
/// against the host step. After the first step from zero moments `m = (1 - beta1) g`: the
/// first moments are the gradients (the decoder's with its parallel component removed).
fn agrees_with_the_host_step<B: AutodiffBackend>(agreement: Agreement) {
    assert_eq!(
        StepPath::Auto.resolve::<B::InnerBackend>(&Default::default()),
        StepPath::Device
    );
    for (n, d, f, k) in CASES {
        for i in 0..builtin_sparsifiers(k).len() {
            let rule = || builtin_sparsifiers(k).remove(i);
            let name = format!("{} {i}", rule().name());
            let mut auxes = vec![AuxLoss::None, AuxLoss::AuxK];
            if rule().name() == "feature_choice" {
                auxes.push(AuxLoss::AuxZipf);
            }
            for aux in auxes {
                let what = format!("{name} {aux:?} N={n} d={d} F={f} k={k}");
                let mut on_host = trainer::<Autodiff<Flex>>(rule(), config(aux), (d, f));
                let mut on_device = trainer::<B>(rule(), config(aux), (d, f));
                for seed in 0..4 {
                    let what = format!("{what} step {seed}");
                    let want = on_host.train_step(batch(seed, n, d)).unwrap();
                    let got = on_device.train_step(batch(seed, n, d)).unwrap();
                    if aux != AuxLoss::None {
                        assert!(got.aux > 0.0, "{what}: no auxiliary pairs");
                    }
                    if !agreement.exact {
                        if seed == 0 {
                            assert_losses(&what, &got, &want, agreement.loss);
                        }
                        continue;
                    }
                    assert_eq!(got.selection.offsets(), want.selection.offsets(), "{what}");
                    assert_eq!(
                        got.selection.features(),
                        want.selection.features(),
                        "{what}"
                    );
                    assert_losses(&what, &got, &want, agreement.loss);
                    if seed == 0 {
                        let (got, want) = (on_device.state(), on_host.state());
                        let what = format!("{what} gradients");
                        assert_params_close(&what, &got.adam_m, &want.adam_m, 1e-5);
                    }
                }
                if agreement.exact {
                    let (got, want) = (on_device.state(), on_host.state());
                    assert_params_close(&what, &got.params, &want.params, 1e-3);
                    assert_params_close(&format!("{what} m"), &got.adam_m, &want.adam_m, 1e-3);
                    assert_params_close(&format!("{what} v"), &got.adam_v, &want.adam_v, 1e-3);
                    assert_eq!(got.stats, want.stats, "{what}: statistics");
                }
            }
        }
    }
}

/// Three steps of every rule with `aux_k` on backend `B`.
fn three_steps<B: AutodiffBackend>(i: usize) -> TrainState {
    let (n, d, f, k) = CASES[0];
    let mut t = trainer::<B>(
        builtin_sparsifiers(k).remove(i),
        config(AuxLoss::AuxK),
        (d, f),
    );
    for seed in 0..3 {
        t.train_step(batch(seed, n, d)).unwrap();
    }
    t.state()
}

/// The same bits on every run, and on burn's backend with (`Fused`) and without (`Plain`)
/// its fusion layer.
fn bit_identical<Fused: AutodiffBackend, Plain: AutodiffBackend>() {
    let k = CASES[0].3;
    for i in 0..builtin_sparsifiers(k).len() {
        let what = format!("{} {i}", builtin_sparsifiers(k)[i].name());
        let first = three_steps::<Fused>(i);
        assert_eq!(three_steps::<Fused>(i), first, "{what}: a second run");
        assert_eq!(three_steps::<Plain>(i), first, "{what}: without fusion");
    }
}

/// Three steps, a save through the serde data model and a restore, three more steps: the
/// same bits as six steps in one go, thresholds and statistics included (FC Zipf with
/// `aux_zipf`, MC with `aux_k`).
fn resume_is_bit_identical<B: AutodiffBackend>() {
    let (n, d, f, k) = CASES[0];
    for (i, aux) in [(3, AuxLoss::AuxZipf), (1, AuxLoss::AuxK)] {
        let mut a = trainer::<B>(builtin_sparsifiers(k).remove(i), config(aux), (d, f));
        for seed in 0..3 {
            a.train_step(batch(seed, n, d)).unwrap();
        }
        let saved = serde_json::to_value(a.state()).unwrap();
        let restored: TrainState = serde_json::from_value(saved).unwrap();
        let device = Default::default();
        let mut b = TrainStep::<B>::from_state(
            &restored,
            builtin_sparsifiers(k).remove(i),
            config(aux),
            &device,
        )
        .unwrap();
        for seed in 3..6 {
            let (oa, ob) = (
                a.train_step(batch(seed, n, d)).unwrap(),
                b.train_step(batch(seed, n, d)).unwrap(),
            );
            assert_eq!(oa.loss.to_bits(), ob.loss.to_bits(), "rule {i} step {seed}");
            assert_eq!(oa.selection, ob.selection, "rule {i} step {seed}");
        }
        assert_eq!(a.state(), b.state(), "rule {i}");
        assert!(a.thresholds().is_some(), "rule {i}");
    }
}

/// Auxiliary candidates that fire on no token give the auxiliary loss no pair: it is off
/// (0) on both paths, though the device's row top-k pads every row.
fn aux_is_off_without_firing_candidates<B: AutodiffBackend>() {
    let (n, d, f, k) = CASES[0];
    let mut p = params(d, f, 7);
    p.b_enc.fill(-100.0);
    let host_sae = Sae::<Flex>::from_params(&p, &Default::default()).unwrap();
    let device_sae = Sae::<B::InnerBackend>::from_params(&p, &Default::default()).unwrap();
    let rule = || Box::new(TopK { k });
    let cfg = config(AuxLoss::AuxK);
    let mut on_host =
        TrainStep::<Autodiff<Flex>>::new(&host_sae, rule(), cfg.clone(), &Default::default())
            .unwrap();
    let mut on_device = TrainStep::<B>::new(&device_sae, rule(), cfg, &Default::default()).unwrap();
    let want = on_host.train_step(batch(0, n, d)).unwrap();
    let got = on_device.train_step(batch(0, n, d)).unwrap();
    assert_eq!((got.aux, want.aux), (0.0, 0.0));
    assert_losses("no firing candidate", &got, &want, 1e-5);
}

#[test]
fn device_step_has_no_aux_loss_without_firing_candidates() {
    if common::wgpu_available() {
        aux_is_off_without_firing_candidates::<Autodiff<Wgpu>>();
    }
}

#[test]
fn device_step_resumes_bit_identically() {
    if common::wgpu_available() {
        resume_is_bit_identical::<Autodiff<Wgpu>>();
    }
}

#[test]
fn device_step_has_the_host_steps_selection_loss_gradients_and_parameters() {
    if common::wgpu_available() {
        agrees_with_the_host_step::<Autodiff<Wgpu>>(F32_GEMM);
    }
}

#[test]
fn device_steps_are_bit_identical_across_runs_and_backends() {
    if common::wgpu_available() {
        bit_identical::<Autodiff<Wgpu>, Autodiff<Plain>>();
    }
}

/// A NaN in the batch and an overflowing batch are errors that leave the state as it was;
/// training then goes on from it.
fn failed_steps_change_nothing<B: AutodiffBackend>() {
    let (n, d, f, k) = CASES[0];
    let mut t = trainer::<B>(Box::new(MutualChoice { k }), config(AuxLoss::AuxK), (d, f));
    t.train_step(batch(0, n, d)).unwrap();
    let before = t.state();
    let device = Default::default();
    let mut x = random(n * d, 1);
    x[5] = f32::NAN;
    let err = t
        .train_step(Tensor::from_inner(tensor(x, n, d, &device)))
        .unwrap_err();
    assert!(matches!(err, SaeError::NonFiniteInput), "{err:?}");
    assert_eq!(t.state(), before, "after a NaN input");
    let huge = vec![1e30f32; n * d];
    let err = t
        .train_step(Tensor::from_inner(tensor(huge, n, d, &device)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            SaeError::NonFiniteLoss { step: 1, .. } | SaeError::NonFiniteGradient { step: 1, .. }
        ),
        "{err:?}"
    );
    assert_eq!(t.state(), before, "after an overflowing batch");
    let out = t.train_step(batch(2, n, d)).unwrap();
    assert!(out.loss.is_finite());
    assert_eq!(t.step_count(), 2);
    let norms: Vec<f32> = host(t.params().w_dec.clone())
        .chunks(d)
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect();
    assert!(norms.iter().all(|&x| (x - 1.0).abs() < 1e-5), "{norms:?}");
}

#[test]
fn a_failed_device_step_leaves_the_state_unchanged() {
    if common::wgpu_available() {
        failed_steps_change_nothing::<Autodiff<Wgpu>>();
    }
}

/// The same checks on burn's CUDA backend (`--features cuda`; they run where an NVIDIA GPU is
/// present, and fail without one under `SAE_REQUIRE_CUDA=1`).
#[cfg(feature = "cuda")]
mod cuda {
    use burn::backend::{Autodiff, Cuda};
    use burn_cubecl::CubeBackend;
    use cubecl::cuda::CudaRuntime;

    use super::{Agreement, common};

    /// tf32 products: about 1e-3 relative in the affinities.
    const TF32_GEMM: Agreement = Agreement {
        exact: false,
        loss: 5e-3,
    };

    #[test]
    fn cuda_device_step_follows_the_host_step() {
        if common::cuda_available() {
            super::agrees_with_the_host_step::<Autodiff<Cuda>>(TF32_GEMM);
        }
    }

    #[test]
    fn cuda_device_steps_are_bit_identical_across_runs_and_backends() {
        if common::cuda_available() {
            super::bit_identical::<Autodiff<Cuda>, Autodiff<CubeBackend<CudaRuntime, f32, i32, u32>>>(
            );
        }
    }

    #[test]
    fn cuda_device_step_resumes_bit_identically() {
        if common::cuda_available() {
            super::resume_is_bit_identical::<Autodiff<Cuda>>();
        }
    }

    #[test]
    fn cuda_device_step_has_no_aux_loss_without_firing_candidates() {
        if common::cuda_available() {
            super::aux_is_off_without_firing_candidates::<Autodiff<Cuda>>();
        }
    }

    #[test]
    fn cuda_failed_device_step_leaves_the_state_unchanged() {
        if common::cuda_available() {
            super::failed_steps_change_nothing::<Autodiff<Cuda>>();
        }
    }
}
