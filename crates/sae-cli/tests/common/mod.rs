//! Helpers shared by the tests that drive the `sae` binary.
#![allow(dead_code)] // each test binary uses its own share of them

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SAE: &str = env!("CARGO_BIN_EXE_sae");

/// A tiny run: 16-dim synthetic data, 64 features, checkpoints every 10 steps.
pub fn small_run(out: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--quiet",
        "--set",
        "data.synthetic.d=16",
        "--set",
        "data.synthetic.features=48",
        "--set",
        "data.sample_rows=1024",
        "--set",
        "model.d_sae=64",
        "--set",
        "sparsifier.name=\"mutual_choice\"",
        "--set",
        "sparsifier.k=4",
        "--set",
        "train.batch_size=128",
        "--set",
        "train.eval_tokens=512",
        "--set",
        "train.eval_every_tokens=0",
        "--set",
        "train.checkpoint_every_tokens=1280",
        "--set",
        "train.log_every_steps=5",
        "--set",
        "schedule.warmup_tokens=1000",
        "--set",
        "step.stats.dead_window=2000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("--set".into());
    args.push(format!("train.total_tokens={}", steps * 128));
    args.push("--set".into());
    args.push(format!("out_dir=\"{}\"", out.display()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub fn run(args: &[String]) -> Output {
    Command::new(SAE)
        .args(args)
        .output()
        .expect("the sae binary runs")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn weights(run_dir: &Path) -> Vec<u8> {
    std::fs::read(run_dir.join("model/sae.safetensors")).expect("final model written")
}

/// A run's checkpoint directories, oldest first, without those being written or replaced.
pub fn checkpoints(run_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("checkpoints")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.to_string_lossy();
            !name.ends_with(".partial") && !name.ends_with(".replaced")
        })
        .collect();
    found.sort();
    found
}

/// Starts a run and waits until it has written a checkpoint; returns the running child.
pub fn start_until_checkpoint(args: &[String], run_dir: &Path) -> std::process::Child {
    let mut child = Command::new(SAE)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while checkpoints(run_dir).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before its first checkpoint"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Asserts that an interrupted run's newest checkpoint holds the step it stopped at (the one
/// its partial model records), and that no checkpoint seen `before` the stop was newer. The
/// stop may share its step with the last periodic checkpoint: a signal can land between it and
/// the next step.
pub fn assert_checkpointed_where_stopped(run_dir: &Path, before: &[PathBuf]) {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("model/sae.json")).unwrap()).unwrap();
    let stopped_at = meta["interrupted"]["step"]
        .as_u64()
        .unwrap_or_else(|| panic!("the model does not record an interrupted step: {meta}"));
    assert!(stopped_at > 0, "{meta}");
    let after = checkpoints(run_dir);
    assert!(
        after
            .last()
            .is_some_and(|newest| newest.ends_with(format!("step-{stopped_at:012}"))),
        "no checkpoint at the interrupted step {stopped_at}: {after:?}"
    );
    assert!(after.last() >= before.last(), "{before:?} -> {after:?}");
}

/// `sae train --quiet --resume <run_dir>` plus `extra`.
pub fn resume_args(run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "train".to_string(),
        "--quiet".into(),
        "--resume".into(),
        run_dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Sends `signal` (e.g. "TERM") to a process.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

/// The records of a run's metrics file, as JSON objects.
pub fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .expect("metrics written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a metrics line is JSON"))
        .collect()
}

/// Writes `rows` x `d` f32 activations (row r, column c = sin(r * d + c)) as a shard.
pub fn write_shard(path: &Path, rows: usize, d: usize) -> Vec<f32> {
    let data: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.37).sin()).collect();
    write_f32_shard(path, rows, d, &data);
    data
}

pub fn write_f32_shard(path: &Path, rows: usize, d: usize, data: &[f32]) {
    sae_data::write_safetensors(
        path,
        &[sae_data::TensorRef {
            name: sae_data::DEFAULT_TENSOR,
            shape: vec![rows, d],
            data,
        }],
        sae_data::Dtype::F32,
    )
    .unwrap();
}

pub fn files_run(run_dir: &Path, shard: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let path = format!("data.path=\"{}\"", shard.display());
    let mut args: Vec<&str> = vec![
        "--set",
        "data.source=\"files\"",
        "--set",
        &path,
        "--set",
        "data.shuffle_rows=1024",
    ];
    args.extend_from_slice(extra);
    small_run(run_dir, steps, &args)
}

/// The final evaluation record of a run.
pub fn final_eval(run_dir: &Path) -> serde_json::Value {
    metrics(run_dir)
        .into_iter()
        .rev()
        .find(|r| r["kind"] == "eval")
        .unwrap_or_else(|| panic!("no eval record in {}", run_dir.display()))
}

/// Asserts that two runs' final evaluations agree within `1e-3` (batch and inference FVU
/// and L0) and saw the same tokens.
pub fn assert_same_evaluation(what: &str, got: &Path, want: &Path) {
    let (got, want) = (final_eval(got), final_eval(want));
    for (part, metric) in [
        ("batch", "fvu"),
        ("batch", "l0_mean"),
        ("inference", "fvu"),
        ("inference", "l0_mean"),
    ] {
        let (a, b) = (
            got[part][metric].as_f64().unwrap(),
            want[part][metric].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-3 * b.abs().max(1.0),
            "{what} {part} {metric}: {a} vs one device's {b}"
        );
    }
    assert_eq!(got["tokens"], want["tokens"], "{what}");
}

/// Runs `args` on wgpu; `None` (with a notice) when no Vulkan driver is there, unless
/// `SAE_REQUIRE_WGPU=1`.
pub fn on_wgpu(args: &[String]) -> Option<()> {
    let out = run(args);
    if out.status.success() {
        return Some(());
    }
    let message = text(&out);
    if message.contains("Vulkan driver") && std::env::var("SAE_REQUIRE_WGPU").as_deref() != Ok("1")
    {
        eprintln!("skipping: no wgpu adapter ({message})");
        return None;
    }
    panic!("the wgpu run failed: {message}");
}
