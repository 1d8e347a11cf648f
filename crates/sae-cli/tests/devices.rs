//! `sae train` on a GPU backend (wgpu; lavapipe where there is no GPU) trains the model the CPU
//! run trains: the device step path and the host path end in the same evaluation, for every
//! allocation rule.

mod common;

use std::path::Path;

use common::*;

/// The final evaluation record of a run.
fn final_eval(run_dir: &Path) -> serde_json::Value {
    metrics(run_dir)
        .into_iter()
        .rev()
        .find(|r| r["kind"] == "eval")
        .unwrap_or_else(|| panic!("no eval record in {}", run_dir.display()))
}

/// Runs `args` on wgpu; `None` (with a notice) when no Vulkan driver is there, unless
/// `SAE_REQUIRE_WGPU=1`.
fn on_wgpu(args: &[String]) -> Option<()> {
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

#[test]
fn training_on_wgpu_ends_in_the_cpu_runs_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    for rule in ["mutual_choice", "feature_choice", "topk"] {
        let name = format!("sparsifier.name=\"{rule}\"");
        let (cpu, gpu) = (
            tmp.path().join(rule),
            tmp.path().join(format!("{rule}-wgpu")),
        );
        let out = run(&small_run(&cpu, 30, &["--set", &name]));
        assert!(out.status.success(), "{}", text(&out));
        let wgpu = small_run(&gpu, 30, &["--set", &name, "--set", "backend=\"wgpu\""]);
        if on_wgpu(&wgpu).is_none() {
            return;
        }
        let (want, got) = (final_eval(&cpu), final_eval(&gpu));
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
                "{rule} {part} {metric}: wgpu {a} vs cpu {b}"
            );
        }
        assert_eq!(got["tokens"], want["tokens"], "{rule}");
    }
}
