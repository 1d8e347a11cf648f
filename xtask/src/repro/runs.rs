//! The `sae train` runs of the grid: the trainer binary, the command of each run, reading a
//! finished run back, and publishing the reports that `results.md` links to.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use sae_report::FinalEval;

use super::grid::RunSpec;
use super::options::Options;
use crate::shell::{cargo, step, target_dir};

/// The `sae` binary: `--sae-bin`, else a release build of `sae-cli` (a bare `sae` for a dry
/// run, which builds nothing).
pub fn sae_binary(options: &Options) -> Result<PathBuf> {
    Ok(match &options.sae_bin {
        Some(bin) => bin.clone(),
        None if options.dry_run => PathBuf::from("sae"),
        None => {
            step(
                "build sae",
                cargo().args(["build", "--release", "-p", "sae-cli"]),
            )?;
            target_dir().join("release/sae")
        }
    })
}

/// `sae train` of the configuration file `config` into `dir`, on `backend` where given.
pub fn train_command(sae: &Path, config: &Path, dir: &Path, backend: Option<&str>) -> Command {
    let mut cmd = Command::new(sae);
    cmd.args(["train", "--quiet", "--config"])
        .arg(config)
        .arg("--set")
        .arg(out_dir_override(dir));
    if let Some(backend) = backend {
        cmd.arg("--set").arg(format!("backend=\"{backend}\""));
    }
    cmd
}

/// `--set out_dir="..."`: override values are TOML, so the path is a quoted string.
pub fn out_dir_override(dir: &Path) -> String {
    let path = dir.display().to_string();
    format!(
        "out_dir=\"{}\"",
        path.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

/// A finished run: its configuration, final numbers and directory.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub spec: RunSpec,
    pub dir: PathBuf,
    pub final_eval: FinalEval,
    /// Training throughput at the end of the run.
    pub tokens_per_second: Option<f64>,
}

/// Writes the plots and `report.md` of a finished run and reads its final numbers.
pub fn load_run(spec: RunSpec, dir: PathBuf) -> Result<RunResult> {
    let report = sae_report::write_report(&dir, &dir.join("report"))?;
    let final_eval = report
        .final_eval
        .with_context(|| format!("{}: no eval record", dir.display()))?;
    Ok(RunResult {
        spec,
        dir,
        final_eval,
        tokens_per_second: report.tokens_per_second,
    })
}

/// Copies the report (plots and summary) of each configuration's first seed to
/// `dest/<data>-<variant>/report/` and points that run there, so the links of `results.md`
/// hold in a clone without `target/`.
pub fn publish_reports(results: &mut [RunResult], dest: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dest);
    let mut seen = std::collections::BTreeSet::new();
    for r in results.iter_mut() {
        let name = format!("{}-{}", r.spec.data.name(), r.spec.variant());
        if !seen.insert(name.clone()) {
            continue;
        }
        let to = dest.join(&name);
        let report = to.join("report");
        std::fs::create_dir_all(&report).with_context(|| report.display().to_string())?;
        let from = r.dir.join("report");
        for entry in std::fs::read_dir(&from).with_context(|| from.display().to_string())? {
            let path = entry?.path();
            if path.is_file() {
                let file = report.join(path.file_name().expect("a file has a name"));
                std::fs::copy(&path, &file).with_context(|| file.display().to_string())?;
            }
        }
        r.dir = to;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_directory_is_a_quoted_toml_override() {
        assert_eq!(
            out_dir_override(Path::new("/a \"b\"/c")),
            r#"out_dir="/a \"b\"/c""#
        );
        let cmd = train_command(
            Path::new("sae"),
            Path::new("c.toml"),
            Path::new("runs/x"),
            Some("cuda"),
        );
        assert_eq!(
            crate::shell::describe(&cmd),
            r#"sae train --quiet --config c.toml --set out_dir="runs/x" --set backend="cuda""#
        );
    }
}
