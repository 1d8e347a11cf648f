//! Running commands as named steps.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of this crate's manifest directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, or `target/` in the workspace root.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// `cargo`, as the one that runs us (rustup sets `CARGO`).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` as step `name`, printing it first; an error names the step that failed.
pub fn step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("==> {name}: {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("step `{name}`: cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("step `{name}` failed ({status}): {}", describe(cmd));
    }
    Ok(())
}
