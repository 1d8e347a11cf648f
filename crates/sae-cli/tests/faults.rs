//! What the `sae` binary does when things go wrong around a run: a reused or shared run
//! directory, signals, corrupt checkpoints, changed data, torn metrics, bad settings, a missing
//! GPU driver. Each case is a row of the fault table in `crates/sae-train/README.md`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ok(args: &[String]) -> String {
    let out = run(args);
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

fn fails(args: &[String]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "expected a failure: {}", text(&out));
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error, not a panic or a signal: {}",
        text(&out)
    );
    text(&out)
}

fn steps_of(run_dir: &Path) -> Vec<u64> {
    checkpoints(run_dir)
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.trim_start_matches("step-").parse().unwrap()
        })
        .collect()
}

#[test]
fn a_directory_holding_a_run_is_refused_unless_resumed_or_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    ok(&small_run(tmp.path(), 40, &[]));
    let first = weights(tmp.path());

    let message = fails(&small_run(tmp.path(), 20, &[]));
    for needle in [
        tmp.path().display().to_string().as_str(),
        "already holds a run",
        "--resume",
        "--overwrite",
    ] {
        assert!(message.contains(needle), "lacks {needle}: {message}");
    }
    assert_eq!(
        weights(tmp.path()),
        first,
        "the refused run touched the model"
    );
    assert_eq!(
        steps_of(tmp.path()),
        vec![30, 40],
        "the refused run touched checkpoints"
    );

    ok(&small_run(tmp.path(), 20, &["--overwrite"]));
    assert_eq!(
        steps_of(tmp.path()),
        vec![10, 20],
        "only the new run's checkpoints remain"
    );
    let config = std::fs::read_to_string(tmp.path().join("config.toml")).unwrap();
    assert!(config.contains("total_tokens = 2560"), "{config}");
}

#[test]
fn a_second_process_in_the_same_directory_stops_at_once_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = start_until_checkpoint(&small_run(tmp.path(), 100_000, &[]), tmp.path());
    let started = Instant::now();
    let message = fails(&small_run(tmp.path(), 20, &["--overwrite"]));
    assert!(started.elapsed() < Duration::from_secs(30), "not at once");
    assert!(
        message.contains(&format!("in use by process {}", first.id())),
        "{message}"
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run must be unharmed"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // The lock dies with its holder, even one killed with SIGKILL.
    ok(&small_run(tmp.path(), 20, &["--overwrite"]));
}

#[test]
fn sigterm_checkpoints_and_marks_the_model_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let child = start_until_checkpoint(&small_run(tmp.path(), 100_000, &[]), tmp.path());
    let before = checkpoints(tmp.path());
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("partial"), "{}", text(&out));
    assert_checkpointed_where_stopped(tmp.path(), &before);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("model/sae.json")).unwrap()).unwrap();
    assert_eq!(meta["interrupted"]["total_steps"], 100_000);
    let inspected = ok(&["inspect".into(), tmp.path().display().to_string()]);
    assert!(
        inspected.contains("partial: the run was interrupted at step"),
        "{inspected}"
    );
}

#[test]
fn a_corrupt_newest_checkpoint_is_named_and_fallback_resumes_from_the_previous_one() {
    let whole = tempfile::tempdir().unwrap();
    ok(&small_run(whole.path(), 40, &[]));

    let tmp = tempfile::tempdir().unwrap();
    ok(&small_run(tmp.path(), 40, &[]));
    let newest = checkpoints(tmp.path()).pop().unwrap();
    let tensors = newest.join("tensors.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // one flipped bit in a weight
    std::fs::write(&tensors, bytes).unwrap();

    let message = fails(&resume_args(tmp.path(), &[]));
    assert!(
        message.contains(&tensors.display().to_string()),
        "{message}"
    );
    assert!(message.contains("corrupt"), "{message}");
    assert!(message.contains("--fallback"), "{message}");

    let message = ok(&resume_args(tmp.path(), &["--fallback"]));
    assert!(message.contains("passed over"), "{message}");
    assert!(
        newest
            .with_file_name(format!(
                "{}.corrupt",
                newest.file_name().unwrap().to_string_lossy()
            ))
            .is_dir(),
        "the corrupt checkpoint is kept aside"
    );
    assert_eq!(
        weights(tmp.path()),
        weights(whole.path()),
        "resuming from the previous checkpoint reaches the same bits"
    );
}

/// Metrics without the wall-clock throughput, which no two runs share.
fn comparable_metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    let mut records = metrics(run_dir);
    for r in &mut records {
        r.as_object_mut().unwrap().remove("tokens_per_second");
    }
    records
}

#[test]
fn a_resumed_run_logs_exactly_what_an_uninterrupted_run_logs() {
    // Lines every 7 steps, checkpoints every 10: most checkpoints fall inside a window.
    let extra = ["--set", "train.log_every_steps=7"];
    let whole = tempfile::tempdir().unwrap();
    ok(&small_run(whole.path(), 1500, &extra));

    let killed = tempfile::tempdir().unwrap();
    let mut child = start_until_checkpoint(&small_run(killed.path(), 1500, &extra), killed.path());
    std::thread::sleep(Duration::from_millis(30));
    child.kill().unwrap();
    child.wait().unwrap();
    // A write cut short by the kill.
    let path = killed.path().join("metrics.jsonl");
    let mut torn = std::fs::read(&path).unwrap();
    torn.extend_from_slice(br#"{"kind":"train","step":99"#);
    std::fs::write(&path, torn).unwrap();

    ok(&resume_args(killed.path(), &[]));
    let (a, b) = (
        comparable_metrics(whole.path()),
        comparable_metrics(killed.path()),
    );
    assert_eq!(a.len(), b.len(), "line counts differ");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y);
    }
}

#[test]
fn bad_settings_are_refused_before_training_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    for (set, field) in [
        ("sparsifier.k=0", "sparsifier.k"),
        ("step.lr=-1.0", "step.lr"),
        ("step.lr=nan", "step.lr"),
        ("step.beta1=1.0", "step.beta1"),
        ("step.beta2=1.5", "step.beta2"),
        ("train.eval_tokens=0", "train.eval_tokens"),
        ("train.log_every_steps=0", "train.log_every_steps"),
        ("schedule.final_fraction=2.0", "schedule.final_fraction"),
        ("sparsifier.k=65", "sparsifier.k"),
        // More features than 32-bit ids name; a dictionary larger than any machine's memory.
        ("model.d_sae=99999999999", "32-bit feature ids"),
        ("model.d_sae=2000000000", "more than this machine's"),
    ] {
        let dir = tmp.path().join(field);
        let started = Instant::now();
        let message = fails(&small_run(&dir, 1_000_000, &["--set", set]));
        assert!(message.contains(field), "{set}: {message}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{set}: refused only after {:?}",
            started.elapsed()
        );
        assert!(!dir.join("checkpoints").exists(), "{set}: trained anyway");
    }
    let message = fails(&small_run(
        &tmp.path().join("typo"),
        10,
        &["--set", "sparsifier.name=\"abstopk\""],
    ));
    assert!(message.contains("did you mean \"abs_topk\""), "{message}");
}

#[test]
fn resuming_on_changed_data_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let shard = tmp.path().join("acts.safetensors");
    let (rows, d) = (8192, 16);
    let mut data = write_shard(&shard, rows, d);
    let run_dir = tmp.path().join("run");
    ok(&files_run(
        &run_dir,
        &shard,
        20,
        &["--set", "data.heldout_fraction=0.1"],
    ));

    data[0] += 1.0; // one value of the first row
    write_f32_shard(&shard, rows, d, &data);
    let message = fails(&resume_args(&run_dir, &[]));
    assert!(message.contains("acts.safetensors"), "{message}");
    assert!(message.contains("--allow-data-change"), "{message}");
    let message = ok(&resume_args(&run_dir, &["--allow-data-change"]));
    assert!(message.contains("data changed"), "{message}");
}

#[test]
fn a_held_out_split_without_rows_is_refused_before_training_and_zero_skips_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let shard = tmp.path().join("acts.safetensors");
    write_shard(&shard, 4096, 16);
    let started = Instant::now();
    let message = fails(&files_run(
        &tmp.path().join("tiny"),
        &shard,
        1_000_000,
        &["--set", "data.heldout_fraction=0.0001"],
    ));
    assert!(message.contains("holds out no rows"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(30));

    let run_dir = tmp.path().join("none");
    let message = ok(&files_run(
        &run_dir,
        &shard,
        20,
        &["--set", "data.heldout_fraction=0.0"],
    ));
    assert!(message.contains("evaluation skipped"), "{message}");
    assert!(run_dir.join("model/sae.json").exists());
}

#[test]
fn export_and_import_refuse_a_non_empty_directory_without_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    ok(&small_run(&run_dir, 20, &[]));
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let export = |extra: &[&str]| {
        let mut args = vec![
            "export".to_string(),
            run_dir.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let message = fails(&export(&[]));
    assert!(
        message.contains("not empty") && message.contains("--overwrite"),
        "{message}"
    );
    assert!(!out.join("cfg.json").exists());
    ok(&export(&["--overwrite"]));
    assert!(out.join("cfg.json").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );

    let back = tmp.path().join("back");
    std::fs::create_dir(&back).unwrap();
    std::fs::write(back.join("x"), "y").unwrap();
    let message = fails(&[
        "import".into(),
        out.display().to_string(),
        "--out".into(),
        back.display().to_string(),
    ]);
    assert!(message.contains("not empty"), "{message}");
}

#[test]
fn inspect_refuses_a_model_without_features_instead_of_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    ok(&small_run(&run_dir, 20, &[]));
    let meta_path = run_dir.join("model/sae.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["features"] = 0.into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let message = fails(&["inspect".into(), run_dir.display().to_string()]);
    assert!(message.contains("features = 0"), "{message}");
}

#[test]
fn wgpu_without_an_adapter_is_an_error_saying_what_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(SAE)
        .args(small_run(tmp.path(), 10, &["--set", "backend=\"wgpu\""]))
        // No Vulkan driver is found through this manifest list.
        .env("VK_ICD_FILENAMES", tmp.path().join("no-driver.json"))
        .env("VK_DRIVER_FILES", tmp.path().join("no-driver.json"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let message = text(&out);
    assert!(message.contains("Vulkan driver"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
}

#[test]
fn exporting_abs_topk_to_saelens_is_refused_saying_why() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    ok(&small_run(
        &run_dir,
        10,
        &["--set", "sparsifier.name=\"abs_topk\""],
    ));
    let message = fails(&[
        "export".into(),
        run_dir.display().to_string(),
        "--out".into(),
        tmp.path().join("lens").display().to_string(),
    ]);
    assert!(message.contains("abs_topk"), "{message}");
    assert!(message.contains("signed"), "{message}");
    assert!(!message.contains("thresholds"), "{message}");
}
