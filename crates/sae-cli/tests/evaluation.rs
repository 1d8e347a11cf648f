//! `sae eval`: each row evaluated once, evaluation on files of the user's choosing, and
//! batch-free inference that tracks the batch rule it stands in for.

mod common;

use std::path::Path;

use common::*;

/// `sae eval RUN_DIR EXTRA...`.
fn eval(run_dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["eval".to_string(), run_dir.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&args)
}

fn eval_json(run_dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = eval(run_dir, &args);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("the report is JSON")
}

fn tokens_of(report: &serde_json::Value) -> (u64, u64) {
    (
        report["eval_tokens"].as_u64().unwrap(),
        report["requested_tokens"].as_u64().unwrap(),
    )
}

#[test]
fn every_held_out_row_is_evaluated_once_and_the_count_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let shard = tmp.path().join("acts.safetensors");
    write_shard(&shard, 8192, 16);
    let run_dir = tmp.path().join("run");
    // 5% of 8192 rows in blocks of 64: a few hundred held-out rows, fewer than the 512
    // evaluation tokens the run asks for.
    let out = run(&files_run(
        &run_dir,
        &shard,
        20,
        &["--set", "data.heldout_fraction=0.05"],
    ));
    assert!(out.status.success(), "{}", text(&out));
    let summary = text(&out);
    let all = eval_json(&run_dir, &["--tokens", "1000000"]);
    let (held_out, asked) = tokens_of(&all);
    assert_eq!(asked, 1_000_000);
    assert!((200..512).contains(&held_out), "{held_out} held-out rows");
    let line = summary
        .lines()
        .find(|l| l.starts_with("tokens evaluated"))
        .unwrap_or_else(|| panic!("no token count in {summary}"));
    assert!(
        line.contains(&format!(" {held_out} ")) && line.contains("every row once; 512 asked for"),
        "{line}"
    );
    // The default request (the run's 512) is capped at the same rows.
    assert_eq!(tokens_of(&eval_json(&run_dir, &[])), (held_out, 512));
    // Fewer than the held-out rows: exactly as many as asked.
    assert_eq!(
        tokens_of(&eval_json(&run_dir, &["--tokens", "100"])),
        (100, 100)
    );
    let out = eval(&run_dir, &["--tokens", "0"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--tokens"), "{}", text(&out));
}

#[test]
fn eval_reads_every_row_of_files_the_user_names() {
    let tmp = tempfile::tempdir().unwrap();
    let shard = tmp.path().join("acts.safetensors");
    write_shard(&shard, 4096, 16);
    let run_dir = tmp.path().join("run");
    let out = run(&files_run(
        &run_dir,
        &shard,
        20,
        &["--set", "data.heldout_fraction=0.0"],
    ));
    assert!(out.status.success(), "{}", text(&out));

    let other = tmp.path().join("other.safetensors");
    let data: Vec<f32> = (0..300 * 16).map(|i| (i as f32 * 0.11).cos()).collect();
    write_f32_shard(&other, 300, 16, &data);
    let on = |extra: &[&str]| {
        let mut args = vec!["--data", other.to_str().unwrap()];
        args.extend_from_slice(extra);
        eval_json(&run_dir, &args)
    };
    let all = on(&[]);
    assert_eq!(tokens_of(&all), (300, 512));
    assert!(all["batch"]["fvu"].as_f64().unwrap().is_finite());
    assert_eq!(all["mmcs"], serde_json::Value::Null);
    assert_eq!(tokens_of(&on(&["--tokens", "64"])), (64, 64));
    // The same rows in another order give the same per-token (inference) report: every row
    // is read once. (The batch rule depends on which rows share a batch, so it may differ.)
    let mut reversed: Vec<f32> = Vec::with_capacity(data.len());
    for row in data.chunks_exact(16).rev() {
        reversed.extend_from_slice(row);
    }
    let flipped = tmp.path().join("flipped.safetensors");
    write_f32_shard(&flipped, 300, 16, &reversed);
    let again = eval_json(&run_dir, &["--data", flipped.to_str().unwrap()]);
    let fvu = |r: &serde_json::Value| r["inference"]["fvu"].as_f64().unwrap();
    assert!((fvu(&again) - fvu(&all)).abs() < 1e-9, "{again} vs {all}");

    let human = eval(&run_dir, &["--data", other.to_str().unwrap()]);
    assert!(human.status.success(), "{}", text(&human));
    let human = text(&human);
    assert!(human.contains("other.safetensors"), "{human}");
    assert!(human.contains("every row once; 512 asked for"), "{human}");

    // Rows of another width: refused, naming the file and both widths.
    let narrow = tmp.path().join("narrow.safetensors");
    write_f32_shard(&narrow, 10, 8, &[0.5; 80]);
    let out = eval(&run_dir, &["--data", narrow.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let message = text(&out);
    assert!(message.contains("narrow.safetensors"), "{message}");
    assert!(
        message.contains("width 8") && message.contains("width 16"),
        "{message}"
    );
    // A tensor the file does not hold: named.
    let out = eval(
        &run_dir,
        &["--data", other.to_str().unwrap(), "--tensor", "resid"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("resid"), "{}", text(&out));
}

/// Trains `sparsifier` on the synthetic data and returns the held-out report on 8192 tokens.
fn trained_report(run_dir: &Path, sparsifier: &str) -> serde_json::Value {
    let name = format!("sparsifier.name=\"{sparsifier}\"");
    let out = run(&small_run(run_dir, 300, &["--set", &name]));
    assert!(out.status.success(), "{}", text(&out));
    eval_json(run_dir, &["--tokens", "8192"])
}

#[test]
fn threshold_inference_tracks_the_batch_rule_on_held_out_data() {
    let tmp = tempfile::tempdir().unwrap();
    for sparsifier in ["feature_choice", "mutual_choice"] {
        let report = trained_report(&tmp.path().join(sparsifier), sparsifier);
        let batch = &report["batch"];
        let inference = &report["inference"];
        let get = |m: &serde_json::Value, key: &str| m[key].as_f64().unwrap();
        let (l0_batch, l0_inf) = (get(batch, "l0_mean"), get(inference, "l0_mean"));
        let (fvu_batch, fvu_inf) = (get(batch, "fvu"), get(inference, "fvu"));
        eprintln!("{sparsifier}: L0 {l0_batch} / {l0_inf}, FVU {fvu_batch} / {fvu_inf}");
        assert!(
            (l0_inf - l0_batch).abs() <= 0.2 * l0_batch,
            "{sparsifier}: inference L0 {l0_inf} vs batch {l0_batch}"
        );
        assert!(
            (fvu_inf - fvu_batch).abs() <= 0.2 * fvu_batch,
            "{sparsifier}: inference FVU {fvu_inf} vs batch {fvu_batch}"
        );
    }
}
