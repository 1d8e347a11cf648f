//! `cargo xtask ci`: every check CI runs, step by step, failing fast. `.ci/run` installs what
//! a fresh machine lacks and then calls this; there is no other list of CI checks.

use anyhow::{Context, Result, ensure};

use crate::repro::{Arm, Aux, DataSet, RunSpec, Scale, TrainingConfig, real_data_path};
use crate::shell::{cargo, step};

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
    // The CUDA paths build without a CUDA toolkit (NVRTC compiles the kernels at run time):
    // keep them compiling where no GPU runs them.
    let metadata = workspace_metadata()?;
    step(
        "cuda check",
        cargo().args([
            "check",
            "--workspace",
            "--all-targets",
            "--locked",
            "--features",
            &cuda_features(&metadata),
        ]),
    )?;
    if workspace_has(&metadata, "sae-cli") {
        smoke()?;
    } else {
        eprintln!("==> smoke: skipped, sae-cli is not a member of this workspace");
    }
    eprintln!("==> ci: all steps passed");
    Ok(())
}

/// `cargo metadata` of the workspace members.
pub fn workspace_metadata() -> Result<serde_json::Value> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cannot run cargo metadata")?;
    ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn packages(metadata: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    metadata["packages"].as_array().into_iter().flatten()
}

fn workspace_has(metadata: &serde_json::Value, package: &str) -> bool {
    packages(metadata).any(|p| p["name"] == package)
}

/// `member/cuda` for every workspace member with a `cuda` feature: the manifests are the one
/// list of the crates with a CUDA path.
pub fn cuda_features(metadata: &serde_json::Value) -> String {
    cuda_features_of(metadata, |_| true)
}

/// [`cuda_features`] of the members `wanted` selects (the packages a build names with `-p`).
pub fn cuda_features_of(metadata: &serde_json::Value, wanted: impl Fn(&str) -> bool) -> String {
    packages(metadata)
        .filter(|p| wanted(p["name"].as_str().unwrap_or_default()))
        .filter(|p| p["features"].get("cuda").is_some())
        .map(|p| format!("{}/cuda", p["name"].as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The README's main command on a tiny configuration, then a report of what it wrote, which
/// checks the run directory against the contract `sae-report` reads.
pub fn smoke() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("sae-ci-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec = RunSpec {
        data: DataSet::Synthetic,
        arm: Arm::MutualChoice,
        aux: Aux::Zipf,
        seed: 0,
        scale: Scale::smoke(),
    };
    let config = dir.join("config.toml");
    let training = TrainingConfig::for_run(&spec, &real_data_path(&crate::shell::root()));
    std::fs::write(&config, training.to_toml())
        .with_context(|| format!("writing {}", config.display()))?;
    let out = dir.join("run");
    // The binary the test step built (its integration tests drive it): `cargo run -p sae-cli`
    // alone resolves features differently and would rebuild burn's GPU stack for nothing.
    let built = crate::shell::target_dir()
        .join("debug")
        .join(format!("sae{}", std::env::consts::EXE_SUFFIX));
    let mut train = if built.exists() {
        std::process::Command::new(&built)
    } else {
        let mut run = cargo();
        run.args(["run", "-p", "sae-cli", "--"]);
        run
    };
    train
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .arg("--set")
        .arg(crate::repro::out_dir_override(&out));
    step("smoke: sae train", &mut train)?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn cuda_features_are_read_from_the_members_manifests() {
        let metadata = serde_json::json!({"packages": [
            {"name": "a", "features": {"cuda": ["dep/cuda"], "default": []}},
            {"name": "b", "features": {"default": []}},
            {"name": "c", "features": {"cuda": []}},
        ]});
        assert_eq!(super::cuda_features(&metadata), "a/cuda,c/cuda");
        assert_eq!(
            super::cuda_features_of(&metadata, |name| name != "a"),
            "c/cuda"
        );
        assert!(super::workspace_has(&metadata, "b"));
        assert!(!super::workspace_has(&metadata, "d"));
    }
}
