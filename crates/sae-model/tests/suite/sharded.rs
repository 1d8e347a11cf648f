//! Training over several peers ([`TrainStep::train_step_sharded`], `burn-collective` between
//! threads of CPU peers, and of wgpu peers on the device step) against one device on the
//! whole batch: the same selected pairs at every step; the batch's losses; parameters after
//! 20 steps within a tolerance; and the same state, bit for bit, on every peer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common;

use burn::backend::{Autodiff, Flex, Wgpu};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use common::{all_dead_config as config, builtin_sparsifiers, params, random, tensor};
use sae_model::sae_alloc::Selection;
use sae_model::{
    AuxLoss, BurnPeer, Collective, Sae, SaeError, Sparsifier, StepOutput, TrainConfig, TrainState,
    TrainStep,
};

/// CPU peers (the host step).
type B = Autodiff<Flex>;
/// wgpu peers (the device step; lavapipe where there is no GPU).
type Gpu = Autodiff<Wgpu>;

/// burn-collective's server is one per process and backend: one sharded run at a time.
static COLLECTIVE: Mutex<()> = Mutex::new(());

const D: usize = 13;
const F: usize = 70;
const N: usize = 37;
const K: usize = 3;
const STEPS: usize = 20;
/// How long a sum waits for the other peers: far beyond any step here.
const WAIT: Duration = Duration::from_secs(120);

fn trainer<B: AutodiffBackend>(rule: Box<dyn Sparsifier>, cfg: TrainConfig) -> TrainStep<B> {
    let device = Default::default();
    let sae = Sae::<B::InnerBackend>::from_params(&params(D, F, 7), &device).unwrap();
    TrainStep::new(&sae, rule, cfg, &device).unwrap()
}

fn batch<B: AutodiffBackend>(data: &[f32]) -> Tensor<B, 2> {
    Tensor::from_inner(tensor::<B::InnerBackend>(
        data.to_vec(),
        data.len() / D,
        D,
        &Default::default(),
    ))
}

/// Step `s`'s batch, `[N, D]`, row-major.
fn batches() -> Vec<Vec<f32>> {
    (0..STEPS).map(|s| random(N * D, 100 + s as u64)).collect()
}

/// What one peer saw: per step its output and the whole-batch selection one device makes
/// with the state the step started from (peer 0 only), then its final state.
struct PeerRun {
    outputs: Vec<Result<StepOutput, SaeError>>,
    whole: Vec<Result<Selection, SaeError>>,
    state: TrainState,
}

/// Trains on `data` over peers holding rows `cuts[p]..cuts[p + 1]`, one thread each, on
/// backend `B` (the peers' sums go through CPU tensors whatever `B` is).
fn sharded_run<B: AutodiffBackend>(
    rule: impl Fn() -> Box<dyn Sparsifier> + Sync,
    cfg: &TrainConfig,
    cuts: &[usize],
    data: &[Vec<f32>],
) -> Vec<PeerRun> {
    let _one_at_a_time = COLLECTIVE.lock().unwrap_or_else(|e| e.into_inner());
    let peers = cuts.len() - 1;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..peers)
            .map(|p| {
                let rule = &rule;
                scope.spawn(move || {
                    let mut collective =
                        BurnPeer::<Flex>::register(p, peers, &Default::default(), WAIT, None)
                            .expect("peers register");
                    let mut t = trainer::<B>(rule(), cfg.clone());
                    let (mut outputs, mut whole) = (Vec::new(), Vec::new());
                    for x in data {
                        if p == 0 {
                            whole.push(t.select(batch::<B>(x)));
                        }
                        let rows = &x[cuts[p] * D..cuts[p + 1] * D];
                        outputs.push(t.train_step_sharded(batch::<B>(rows), &mut collective));
                    }
                    PeerRun {
                        outputs,
                        whole,
                        state: t.state(),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The peers' selections of one step stacked into one selection of the batch.
fn stacked(runs: &[PeerRun], step: usize) -> Selection {
    let (mut offsets, mut features, mut scores) = (vec![0], Vec::new(), Vec::new());
    for run in runs {
        let s = &run.outputs[step].as_ref().unwrap().selection;
        for row in 0..s.rows() {
            let (f, v) = s.row(row);
            features.extend_from_slice(f);
            scores.extend_from_slice(v);
            offsets.push(features.len());
        }
    }
    let rows = offsets.len() - 1;
    Selection::from_parts(rows, F, offsets, features, scores).unwrap()
}

/// The same pairs, exactly; the same scores up to the last bits. (The encoder GEMM's
/// blocking follows the number of rows, so a shard's affinities may differ from the whole
/// batch's in the last bit; on equal scores the sharded rules are exact, see sae-alloc's
/// `tests/sharded.rs`.)
fn assert_same_pairs(what: &str, got: &Selection, want: &Selection) {
    assert_eq!(got.offsets(), want.offsets(), "{what}: pairs per token");
    assert_eq!(got.features(), want.features(), "{what}: features");
    common::assert_close(
        &format!("{what}: scores"),
        got.scores(),
        want.scores(),
        1e-6,
    );
}

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * b.abs().max(1e-3)
}

fn follows_one_device<B: AutodiffBackend>(
    rule: &(dyn Fn() -> Box<dyn Sparsifier> + Sync),
    aux: AuxLoss,
    cuts: &[usize],
) {
    let name = format!(
        "{} {aux:?} over {} peers of {}",
        rule().name(),
        cuts.len() - 1,
        std::any::type_name::<B>()
    );
    let data = batches();
    let cfg = config(aux);
    let runs = sharded_run::<B>(|| rule(), &cfg, cuts, &data);
    let mut single = trainer::<B>(rule(), cfg);
    for (s, x) in data.iter().enumerate() {
        let want = single.train_step(batch::<B>(x)).unwrap();
        let got = runs[0].outputs[s].as_ref().unwrap();
        // The selection the sharded step made is the single-device rule's on the same state.
        let whole = runs[0].whole[s].as_ref().unwrap();
        assert_same_pairs(&format!("{name}: step {s}"), &stacked(&runs, s), whole);
        if s == 0 {
            assert_same_pairs(
                &format!("{name}: first step"),
                &stacked(&runs, 0),
                &want.selection,
            );
        }
        for (term, a, b) in [
            ("loss", got.loss, want.loss),
            ("fvu", got.fvu, want.fvu),
            ("mse", got.mse, want.mse),
            ("aux", got.aux, want.aux),
            ("l0", got.l0_mean, want.l0_mean),
        ] {
            assert!(close(a, b, 1e-4), "{name}: step {s} {term} {a} vs {b}");
        }
        for run in &runs[1..] {
            let other = run.outputs[s].as_ref().unwrap();
            assert_eq!(
                [other.loss, other.fvu, other.aux, other.l0_mean],
                [got.loss, got.fvu, got.aux, got.l0_mean],
                "{name}: step {s} losses differ between peers"
            );
        }
    }
    for run in &runs[1..] {
        assert!(run.state == runs[0].state, "{name}: peers' states differ");
    }
    let (got, want) = (&runs[0].state, single.state());
    for (what, a, b) in [
        ("w_enc", &got.params.w_enc, &want.params.w_enc),
        ("b_enc", &got.params.b_enc, &want.params.b_enc),
        ("w_dec", &got.params.w_dec, &want.params.w_dec),
        ("b_dec", &got.params.b_dec, &want.params.b_dec),
    ] {
        common::assert_close(&format!("{name}: {what} after {STEPS} steps"), a, b, 1e-4);
    }
    assert_eq!(got.step, want.step);
    assert_eq!(got.stats.tokens_seen(), want.stats.tokens_seen(), "{name}");
}

/// Every built-in rule with and without the auxiliary losses, over 2 and 4 peers with uneven
/// shards.
#[test]
fn sharded_training_follows_one_device_on_the_whole_batch() {
    for cuts in [&[0, 20, 37][..], &[0, 9, 10, 25, 37]] {
        for i in 0..builtin_sparsifiers(K).len() {
            let rule = move || builtin_sparsifiers(K).swap_remove(i);
            for aux in [AuxLoss::None, AuxLoss::AuxK, AuxLoss::AuxZipf] {
                follows_one_device::<B>(&rule, aux, cuts);
            }
        }
    }
}

/// The same on wgpu peers, each running the device step on its rows: every built-in rule
/// with and without the auxiliary losses, over 2 and 4 peers with uneven shards.
#[test]
fn device_peers_follow_one_device_on_the_whole_batch() {
    for cuts in [&[0, 20, 37][..], &[0, 9, 10, 25, 37]] {
        for i in 0..builtin_sparsifiers(K).len() {
            let rule = move || builtin_sparsifiers(K).swap_remove(i);
            for aux in [AuxLoss::None, AuxLoss::AuxK, AuxLoss::AuxZipf] {
                follows_one_device::<Gpu>(&rule, aux, cuts);
            }
        }
    }
}

/// A NaN in one peer's rows fails the step on every peer with the same error and changes no
/// state; the next step trains on.
fn a_nan_on_one_peer_fails_every_peer<B: AutodiffBackend>() {
    let mut data = batches();
    data.truncate(3);
    data[1][30 * D + 4] = f32::NAN;
    let cuts = [0, 20, 37];
    let cfg = config(AuxLoss::AuxK);
    for i in 0..builtin_sparsifiers(K).len() {
        let rule = || builtin_sparsifiers(K).swap_remove(i);
        let runs = sharded_run::<B>(rule, &cfg, &cuts, &data);
        let mut reference = trainer::<B>(rule(), cfg.clone());
        reference.train_step(batch::<B>(&data[0])).unwrap();
        reference.train_step(batch::<B>(&data[2])).unwrap();
        for run in &runs {
            assert!(
                matches!(run.outputs[1], Err(SaeError::NonFiniteInput)),
                "rule {i}: {:?}",
                run.outputs[1]
            );
            assert!(run.outputs[2].is_ok());
            assert_eq!(run.state.step, 2);
            assert!(run.state == runs[0].state);
        }
        common::assert_close(
            &format!("rule {i}: w_enc after a failed step"),
            &runs[0].state.params.w_enc,
            &reference.state().params.w_enc,
            1e-5,
        );
    }
}

#[test]
fn a_nan_on_one_peer_fails_every_peer_and_changes_nothing() {
    a_nan_on_one_peer_fails_every_peer::<B>();
}

#[test]
fn a_nan_on_one_device_peer_fails_every_peer_and_changes_nothing() {
    a_nan_on_one_peer_fails_every_peer::<Gpu>();
}

/// A peer that leaves the group mid-run: burn-collective then sums without it, and every
/// remaining peer's next sum fails (each sum counts its participants) instead of going on
/// with a partial sum.
#[test]
fn a_peer_that_leaves_fails_the_others_next_sum() {
    let _one_at_a_time = COLLECTIVE.lock().unwrap_or_else(|e| e.into_inner());
    let left = std::sync::Barrier::new(3);
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|p| {
                let left = &left;
                scope.spawn(move || {
                    let mut peer =
                        BurnPeer::<Flex>::register(p, 3, &Default::default(), WAIT, None).unwrap();
                    let mut counts = [p as u64, 1 << 40];
                    let first = peer.sum_counts(&mut counts).map(|()| counts);
                    if p == 2 {
                        drop(peer);
                        left.wait();
                        return (first, None);
                    }
                    left.wait();
                    let mut again = [1u64];
                    (first, Some(peer.sum_counts(&mut again)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (p, (first, second)) in outcomes.into_iter().enumerate() {
        assert_eq!(
            first.unwrap(),
            [3, 3 << 40],
            "peer {p}: the sum of all three"
        );
        if p < 2 {
            match second {
                Some(Err(SaeError::Collective { reason, .. })) => {
                    assert!(reason.contains("a peer has stopped"), "peer {p}: {reason}")
                }
                other => panic!("peer {p}: expected a failed sum, got {other:?}"),
            }
        }
    }
}

/// A peer that stops taking part without leaving (a hung or dead thread): the others' sum
/// fails after the timeout, naming it, instead of waiting forever.
#[test]
fn a_sum_waits_for_a_silent_peer_only_as_long_as_the_timeout() {
    let _one_at_a_time = COLLECTIVE.lock().unwrap_or_else(|e| e.into_inner());
    let timeout = Duration::from_millis(500);
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|p| {
                scope.spawn(move || {
                    let mut peer =
                        BurnPeer::<Flex>::register(p, 3, &Default::default(), timeout, None)
                            .unwrap();
                    let mut counts = [1u64];
                    let first = peer.sum_counts(&mut counts).map(|()| counts[0]);
                    if p == 2 {
                        // Silent from here on, and still registered.
                        std::mem::forget(peer);
                        return (first, None);
                    }
                    let started = Instant::now();
                    let mut values = [1.0f32];
                    let second = peer.sum_values(&mut [&mut values]);
                    (first, Some((second, started.elapsed())))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The group holds the silent peer and the sum nobody finished: start afresh.
    burn_collective::reset_collective::<Flex>();
    for (p, (first, second)) in outcomes.into_iter().enumerate() {
        assert_eq!(first.unwrap(), 3, "peer {p}");
        if let Some((second, waited)) = second {
            match second {
                Err(SaeError::Collective { reason, .. }) => {
                    assert!(
                        reason.contains("peers [2] did not join sum 2"),
                        "peer {p}: {reason}"
                    )
                }
                other => panic!("peer {p}: expected a timed-out sum, got {other:?}"),
            }
            assert!(
                waited >= timeout && waited < timeout * 20,
                "peer {p} waited {waited:?}"
            );
        }
    }
}

/// The peers' tensors are summed in a fixed order (by device, then by peer), so a run repeats
/// bit for bit, over any number of peers (with two, `a + b == b + a` holds anyway).
fn repeats_bit_for_bit<B: AutodiffBackend>(shards: &[&[usize]]) {
    let data = &batches()[..5];
    let cfg = config(AuxLoss::AuxZipf);
    for cuts in shards {
        for i in 0..builtin_sparsifiers(K).len() {
            let rule = || builtin_sparsifiers(K).swap_remove(i);
            let first = sharded_run::<B>(rule, &cfg, cuts, data);
            for _ in 0..2 {
                let again = sharded_run::<B>(rule, &cfg, cuts, data);
                assert!(
                    first[0].state == again[0].state,
                    "rule {i}, shards {cuts:?}: the runs differ"
                );
            }
        }
    }
}

#[test]
fn a_run_over_several_peers_repeats_bit_for_bit() {
    repeats_bit_for_bit::<B>(&[&[0, 20, 37], &[0, 9, 21, 37], &[0, 5, 14, 30, 37]]);
}

#[test]
fn a_run_over_several_device_peers_repeats_bit_for_bit() {
    repeats_bit_for_bit::<Gpu>(&[&[0, 9, 21, 37]]);
}

/// `disagreement` finds the first digest some peer holds otherwise than peer 0, and every
/// peer hears the same: here peers 1 and 3 of 4 differ in the second item, peer 2 in the
/// third; digests are compared on their low 48 bits.
#[test]
fn peers_agree_on_the_first_item_that_differs_and_on_who_differs() {
    let _one_at_a_time = COLLECTIVE.lock().unwrap_or_else(|e| e.into_inner());
    let peers = 4;
    let answers: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..peers)
            .map(|p| {
                scope.spawn(move || {
                    let mut collective =
                        BurnPeer::<Flex>::register(p, peers, &Default::default(), WAIT, None)
                            .expect("peers register");
                    let alike = [7u64, 1 << 60, u64::MAX];
                    let same = sae_model::disagreement(&mut collective, &alike).unwrap();
                    let mut digests = [7u64, 9 + (p % 2) as u64, 11 + u64::from(p == 2)];
                    // Above bit 48: not compared.
                    digests[0] |= (p as u64) << 50;
                    let differ = sae_model::disagreement(&mut collective, &digests).unwrap();
                    (same, differ)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (p, (same, differ)) in answers.into_iter().enumerate() {
        assert_eq!(same, None, "peer {p}");
        assert_eq!(
            differ,
            Some(sae_model::Disagreement {
                item: 1,
                peers: vec![1, 3]
            }),
            "peer {p}"
        );
    }
}

/// Over CUDA peers (`--features cuda`; where an NVIDIA GPU is present): every rule trains,
/// every peer holds the same state bit for bit, and the first step's losses are the one-device
/// step's within 5e-3 (burn's CUDA matmul multiplies in tf32, so a shard's affinities may
/// differ from the whole batch's beyond the last bit and near-ties may go another way).
#[cfg(feature = "cuda")]
mod cuda {
    use burn::backend::{Autodiff, Cuda};

    use super::*;

    #[test]
    fn cuda_device_peers_hold_one_state_and_follow_one_device() {
        if !common::cuda_available() {
            return;
        }
        type G = Autodiff<Cuda>;
        let data = &batches()[..5];
        let cfg = config(AuxLoss::AuxK);
        for i in 0..builtin_sparsifiers(K).len() {
            let rule = || builtin_sparsifiers(K).swap_remove(i);
            let runs = sharded_run::<G>(rule, &cfg, &[0, 20, 37], data);
            let want = trainer::<G>(rule(), cfg.clone())
                .train_step(batch::<G>(&data[0]))
                .unwrap();
            let got = runs[0].outputs[0].as_ref().unwrap();
            assert!(
                close(got.loss, want.loss, 5e-3),
                "rule {i}: {} vs {}",
                got.loss,
                want.loss
            );
            for run in &runs {
                assert!(run.outputs.iter().all(Result::is_ok), "rule {i}");
                assert!(run.state == runs[0].state, "rule {i}: peers' states differ");
            }
        }
    }
}
