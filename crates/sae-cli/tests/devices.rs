//! `sae train` on a GPU backend (wgpu; lavapipe where there is no GPU), or over several CPU
//! peers (`distributed.devices`), trains the model the one-device CPU run trains: the runs end
//! in the same evaluation, for every allocation rule.

mod common;

use common::*;

#[test]
fn training_over_peers_ends_in_the_one_device_runs_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    for rule in ["mutual_choice", "feature_choice", "topk"] {
        let name = format!("sparsifier.name=\"{rule}\"");
        let one = tmp.path().join(rule);
        let out = run(&small_run(&one, 30, &["--set", &name]));
        assert!(out.status.success(), "{}", text(&out));
        // Three peers: 128 rows split 42 / 43 / 43.
        let three = tmp.path().join(format!("{rule}-3"));
        let out = run(&small_run(
            &three,
            30,
            &["--set", &name, "--set", "distributed.devices=3"],
        ));
        assert!(out.status.success(), "{}", text(&out));
        assert_same_evaluation(&format!("{rule} over 3 peers"), &three, &one);
    }
}

/// Settings that cannot train over several peers are refused before any step, naming the
/// option at fault.
#[test]
fn settings_that_cannot_train_over_peers_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    for (sets, expected) in [
        (
            &["step.path=\"device\""][..],
            "needs step.path = \"auto\" or \"fused\"",
        ),
        (
            &["train.batch_size=2"],
            "train.batch_size = 2 is less than the 4 peers of distributed.devices = 4",
        ),
        (&["step.path=\"sparse\""], "needs step.path"),
        (
            &["backend=\"wgpu\"", "step.path=\"fused\""],
            "on backend = \"wgpu\" needs step.path = \"auto\" or \"device\"",
        ),
    ] {
        let dir = tmp.path().join("refused");
        let mut extra = vec!["--set", "distributed.devices=4"];
        for set in sets {
            extra.extend(["--set", set]);
        }
        let out = run(&small_run(&dir, 30, &extra));
        assert!(!out.status.success(), "{sets:?} was accepted");
        let message = text(&out);
        assert!(message.contains(expected), "{sets:?}: {message}");
        assert!(
            !dir.join("metrics.jsonl").exists(),
            "{sets:?}: training started"
        );
    }
}

/// Each rule trained on wgpu by `devices` peers (the device step on each) ends in the
/// evaluation of the one-device CPU run.
fn wgpu_ends_in_the_cpu_runs_evaluation(devices: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let peers = format!("distributed.devices={devices}");
    for rule in ["mutual_choice", "feature_choice", "topk"] {
        let name = format!("sparsifier.name=\"{rule}\"");
        let (cpu, gpu) = (
            tmp.path().join(rule),
            tmp.path().join(format!("{rule}-wgpu-{devices}")),
        );
        let out = run(&small_run(&cpu, 30, &["--set", &name]));
        assert!(out.status.success(), "{}", text(&out));
        let wgpu = small_run(
            &gpu,
            30,
            &["--set", &name, "--set", "backend=\"wgpu\"", "--set", &peers],
        );
        if on_wgpu(&wgpu).is_none() {
            return;
        }
        assert_same_evaluation(&format!("{rule} on {devices} wgpu peers"), &gpu, &cpu);
    }
}

#[test]
fn training_on_wgpu_ends_in_the_cpu_runs_evaluation() {
    wgpu_ends_in_the_cpu_runs_evaluation(1);
}

/// Two wgpu peers, each running the device step on its rows, train the model one CPU device
/// trains on the whole batch.
#[test]
fn training_over_wgpu_peers_ends_in_the_cpu_runs_evaluation() {
    wgpu_ends_in_the_cpu_runs_evaluation(2);
}
