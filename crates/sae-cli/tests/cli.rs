//! The `sae` binary end to end: training, exact resume after SIGKILL, Ctrl-C, divergence,
//! bad input, export.

mod common;

use common::*;

#[test]
fn trains_and_reports_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&small_run(tmp.path(), 60, &[]));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "held-out FVU",
        "L0 mean",
        "dead in training",
        "MMCS",
        "recovered by how often",
    ] {
        assert!(stdout.contains(needle), "summary lacks {needle}: {stdout}");
    }
    let metrics = std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().count() >= 12, "{metrics}");
    assert!(tmp.path().join("config.toml").exists());
    let out = run(&["report".into(), tmp.path().display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let summary = std::fs::read_to_string(tmp.path().join("report/report.md")).unwrap();
    assert!(summary.contains("FVU"), "{summary}");
    assert!(tmp.path().join("report/fvu.png").exists());
}

#[test]
fn a_killed_run_resumes_to_bit_identical_weights() {
    let steps = 1500;
    let whole = tempfile::tempdir().unwrap();
    let out = run(&small_run(whole.path(), steps, &[]));
    assert!(out.status.success(), "{}", text(&out));

    let killed = tempfile::tempdir().unwrap();
    let mut child = start_until_checkpoint(&small_run(killed.path(), steps, &[]), killed.path());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.path().join("model").exists(),
        "the killed run must not have finished"
    );

    let resume = vec![
        "train".to_string(),
        "--quiet".into(),
        "--resume".into(),
        killed.path().display().to_string(),
    ];
    let out = run(&resume);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        weights(whole.path()) == weights(killed.path()),
        "resumed weights differ from the uninterrupted run"
    );
}

#[test]
fn ctrl_c_checkpoints_then_exits_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let child = start_until_checkpoint(&small_run(tmp.path(), 100_000, &[]), tmp.path());
    let first = checkpoints(tmp.path());
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_checkpointed_where_stopped(tmp.path(), &first);
}

#[test]
fn divergence_stops_with_a_clear_error_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    // A learning rate this large overflows the parameters within a few steps of warm-up.
    let out = run(&small_run(
        tmp.path(),
        400,
        &[
            "--set",
            "step.lr=1e30",
            "--set",
            "schedule.warmup_tokens=10000",
        ],
    ));
    assert!(!out.status.success());
    let message = text(&out);
    assert!(message.contains("diverged at step"), "{message}");
    assert!(message.contains("last good checkpoint"), "{message}");
}

#[test]
fn bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-shards");
    let args = small_run(
        tmp.path(),
        10,
        &[
            "--set",
            "data.source=\"files\"",
            "--set",
            &format!("data.path=\"{}\"", missing.display()),
        ],
    );
    let out = run(&args);
    assert!(!out.status.success());
    assert!(text(&out).contains("no-such-shards"), "{}", text(&out));

    let out = run(&small_run(
        tmp.path(),
        10,
        &["--set", "sparsifier.name=\"nonesuch\""],
    ));
    assert!(!out.status.success());
    assert!(text(&out).contains("nonesuch"), "{}", text(&out));

    let out = run(&small_run(tmp.path(), 10, &["--set", "train.bach_size=3"]));
    assert!(!out.status.success());
    assert!(text(&out).contains("bach_size"), "{}", text(&out));

    // Evaluating a directory that holds no run, or none at all.
    let empty = tempfile::tempdir().unwrap();
    let out = run(&["eval".into(), empty.path().display().to_string()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not a run directory"), "{}", text(&out));
    let out = run(&["eval".into(), missing.display().to_string()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is not a directory"), "{}", text(&out));

    // Port 0 would let the system pick a port the machines cannot know.
    let out = run(&["orchestrator".into(), "--port".into(), "0".into()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--port"), "{}", text(&out));
}

#[test]
fn exports_saelens_and_imports_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let out = run(&small_run(&run_dir, 40, &[]));
    assert!(out.status.success(), "{}", text(&out));
    let lens = tmp.path().join("lens");
    let out = run(&[
        "export".into(),
        run_dir.display().to_string(),
        "--out".into(),
        lens.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lens.join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "jumprelu");
    assert_eq!(cfg["d_in"], 16);
    assert_eq!(cfg["d_sae"], 64);
    assert!(lens.join("sparsity.safetensors").exists());
    let back = tmp.path().join("back");
    let out = run(&[
        "import".into(),
        lens.display().to_string(),
        "--out".into(),
        back.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["inspect".into(), back.display().to_string()]);
    assert!(
        out.status.success() && text(&out).contains("features     64"),
        "{}",
        text(&out)
    );

    // One format where the other is expected: the error says which it is and what reads it.
    let out = run(&["inspect".into(), lens.display().to_string()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is a SAELens SAE"), "{}", text(&out));
    let out = run(&[
        "import".into(),
        run_dir.display().to_string(),
        "--out".into(),
        tmp.path().join("again").display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not a SAELens SAE"), "{}", text(&out));
    // A run without a model yet (its model removed here).
    std::fs::remove_dir_all(run_dir.join("model")).unwrap();
    let out = run(&["inspect".into(), run_dir.display().to_string()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("holds a run without a model yet"),
        "{}",
        text(&out)
    );
}
