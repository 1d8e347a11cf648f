//! `cargo xtask ci`: what `.ci/run` runs, step by step, failing fast.

use anyhow::{Context, Result, ensure};

use crate::repro::{Aux, DataSet, RunSpec, Scale, Sparsifier};
use crate::shell::{cargo, step};

/// Every feature that compiles a CUDA path (as `.ci/run` checks them).
const CUDA_FEATURES: &str =
    "sae-kernels/cuda,sae-model/cuda,sae-train/cuda,sae-cli/cuda,sae-benches/cuda";

pub fn run() -> Result<()> {
    step("fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "test",
        cargo().args(["test", "--workspace", "--all-targets", "--locked"]),
    )?;
    step(
        "doc tests",
        cargo().args(["test", "--workspace", "--doc", "--locked"]),
    )?;
    step(
        "cuda check",
        cargo().args([
            "check",
            "--workspace",
            "--all-targets",
            "--locked",
            "--features",
            CUDA_FEATURES,
        ]),
    )?;
    if workspace_has("sae-cli")? {
        smoke()?;
    } else {
        eprintln!("==> smoke: skipped, sae-cli is not a member of this workspace");
    }
    eprintln!("==> ci: all steps passed");
    Ok(())
}

fn workspace_has(package: &str) -> Result<bool> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("step `smoke`: cannot run cargo metadata")?;
    ensure!(
        output.status.success(),
        "step `smoke`: cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["name"] == package))
}

/// The README's main command on a tiny configuration, then a report of what it wrote, which
/// checks the run directory against the contract `sae-report` reads.
pub fn smoke() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("sae-ci-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec = RunSpec {
        data: DataSet::Synthetic,
        sparsifier: Sparsifier::MutualChoice,
        aux: Aux::Zipf,
        seed: 0,
        scale: Scale::smoke(),
    };
    let config = dir.join("config.toml");
    std::fs::write(&config, spec.config_toml(&crate::shell::root()))
        .with_context(|| format!("writing {}", config.display()))?;
    let out = dir.join("run");
    step(
        "smoke: sae train",
        cargo()
            .args(["run", "-p", "sae-cli", "--", "train", "--quiet", "--config"])
            .arg(&config)
            .arg("--set")
            .arg(crate::repro::out_dir_override(&out)),
    )?;
    eprintln!("==> smoke: report of {}", out.display());
    let report = sae_report::write_report(&out, &out.join("report"))
        .context("step `smoke: report` failed")?;
    ensure!(
        report.final_eval.is_some(),
        "step `smoke: report` failed: {} has no eval record",
        out.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("==> smoke: passed");
    Ok(())
}
