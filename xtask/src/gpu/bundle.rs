//! `gpu-bundle`: the CUDA tests and benches built here, stripped and xz-compressed into
//! `gpu-bundle/` with a manifest and a copy of this program; and, on the GPU machine, reading
//! that manifest and unpacking the binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::shell::{cargo, describe, root, step};

/// Where `gpu-bundle` writes, relative to the workspace root (ignored by git).
pub const BUNDLE_DIR: &str = "gpu-bundle";
const MANIFEST: &str = "manifest.json";

/// `gpu-bundle` options.
#[derive(Debug)]
pub struct BundleOptions {
    /// `CUDARC_CUDA_VERSION` for the build (`13000`: CUDA 13.0, the driver API of driver 580).
    pub cuda_version: String,
}

/// What a bundle holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The commit the binaries were built from (`-dirty`: with uncommitted changes).
    pub commit: String,
    pub cuda_version: String,
    pub binaries: Vec<Binary>,
}

/// One bundled executable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binary {
    pub package: String,
    pub target: String,
    /// `test` or `bench`.
    pub kind: String,
    /// The compressed file, relative to the bundle.
    pub file: String,
}

#[derive(Deserialize)]
struct ArtifactMessage {
    reason: String,
    package_id: Option<String>,
    target: Option<ArtifactTarget>,
    executable: Option<PathBuf>,
}

#[derive(Deserialize)]
struct ArtifactTarget {
    name: String,
    kind: Vec<String>,
}

/// The package name in a cargo package id: `path+file:///x/crates/sae-model#0.1.0` (name =
/// last path segment) or `path+file:///x/benches#sae-benches@0.1.0`.
pub fn package_name(id: &str) -> &str {
    let (path, fragment) = id.rsplit_once('#').unwrap_or((id, ""));
    match fragment.split_once('@') {
        Some((name, _)) => name,
        None => path.rsplit('/').next().unwrap_or(path),
    }
}

pub fn bundle(options: &BundleOptions) -> Result<()> {
    let root = root();
    let dir = root.join(BUNDLE_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| dir.display().to_string())?;
    }
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;

    // The bundle packs these crates' CUDA tests and benches; their `cuda` features come from
    // their manifests.
    let packages = ["sae-kernels", "sae-model", "sae-benches"];
    let features = crate::ci::cuda_features_of(&crate::ci::workspace_metadata()?, |name| {
        packages.contains(&name)
    });
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--no-run",
        "--locked",
        "--message-format=json-render-diagnostics",
    ])
    .args(packages.iter().flat_map(|p| ["-p", p]))
    .args(["--features", &features])
    .args(["--test", "suite", "--bench", "kernels", "--bench", "step"])
    .env("CUDARC_CUDA_VERSION", &options.cuda_version)
    .stdout(Stdio::piped());
    eprintln!("==> build: {}", describe(&cmd));
    let output = cmd
        .spawn()
        .and_then(|child| child.wait_with_output())
        .context("cannot start cargo")?;
    if !output.status.success() {
        bail!("build failed ({}): {}", output.status, describe(&cmd));
    }

    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<ArtifactMessage>(line) else {
            continue;
        };
        let (Some(exe), Some(target), Some(id)) = (msg.executable, msg.target, msg.package_id)
        else {
            continue;
        };
        if msg.reason != "compiler-artifact" {
            continue;
        }
        let kind = target.kind.first().cloned().unwrap_or_default();
        let package = package_name(&id).to_string();
        let file = format!("{package}.{kind}.{}.xz", target.name);
        pack(&exe, &dir.join(&file))?;
        binaries.push(Binary {
            package,
            target: target.name,
            kind,
            file,
        });
    }
    if binaries.len() != 4 {
        bail!("expected 4 executables (2 test suites, 2 benches), cargo built {binaries:?}");
    }
    binaries.sort_by(|a, b| a.file.cmp(&b.file));
    let this = std::env::current_exe().context("cannot find the running xtask")?;
    strip(&this, &dir.join("xtask"))?;

    let manifest = Manifest {
        commit: git_commit(&root),
        cuda_version: options.cuda_version.clone(),
        binaries,
    };
    let path = dir.join(MANIFEST);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)? + "\n")
        .with_context(|| path.display().to_string())?;
    let bytes: u64 = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "wrote {} ({:.1} MiB); on the GPU machine: {BUNDLE_DIR}/xtask gpu-run --out DIR",
        dir.display(),
        bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// The short commit hash, with `-dirty` when the work tree has uncommitted changes.
fn git_commit(root: &Path) -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=7"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}

fn strip(from: &Path, to: &Path) -> Result<()> {
    step("strip", Command::new("strip").arg("-o").arg(to).arg(from))
}

/// Strips `exe` and compresses it to `to` (xz).
fn pack(exe: &Path, to: &Path) -> Result<()> {
    let stripped = to.with_extension("");
    strip(exe, &stripped)?;
    step(
        "compress",
        Command::new("xz").args(["-9", "-T0", "-f"]).arg(&stripped),
    )
}

/// Decompresses `from` (xz) to the executable `to`, with `xz` or, where it is missing,
/// Python's `lzma`.
pub fn unpack(from: &Path, to: &Path) -> Result<()> {
    let file = std::fs::File::create(to).with_context(|| to.display().to_string())?;
    let xz = Command::new("xz")
        .arg("-dc")
        .arg(from)
        .stdout(file)
        .status();
    if !matches!(xz, Ok(s) if s.success()) {
        step(
            "decompress (python)",
            Command::new("python3").args([
                "-c",
                "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))",
            ])
            .arg(from)
            .arg(to),
        )?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))
        .with_context(|| to.display().to_string())
}

pub fn read_manifest(bundle: &Path) -> Result<Manifest> {
    let path = bundle.join(MANIFEST);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid manifest", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_come_from_ids_old_and_new() {
        assert_eq!(
            package_name("path+file:///w/crates/sae-model#0.1.0"),
            "sae-model"
        );
        assert_eq!(
            package_name("path+file:///w/benches#sae-benches@0.1.0"),
            "sae-benches"
        );
    }
}
