//! `gpu-run`: on the GPU machine, the bundle's CUDA tests and then its benches (the kernels
//! bench and one training step once more under Nsight Compute where `ncu` is found), all
//! within a time budget, each logged; then the report, as markdown and JSON.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::bundle::{Binary, Manifest, read_manifest, unpack};
use super::device::{cuda_environment, query_device};
use super::ncu;
use super::report::report;
use crate::bench;
use crate::shell::describe;

/// `gpu-run` options.
#[derive(Debug)]
pub struct RunOptions {
    /// The bundle directory (default: the directory of this executable).
    pub bundle: Option<PathBuf>,
    /// Where the report and logs go.
    pub out: PathBuf,
    /// Skip the benches (tests only).
    pub no_bench: bool,
    /// Skip the tests (benches only), for a second run on a machine whose tests passed.
    pub no_tests: bool,
    /// A criterion filter (regular expression on bench ids) for every bench binary.
    pub filter: Option<String>,
    /// Nominal memory bandwidth in GB/s, for devices the built-in table does not know.
    pub peak_gbs: Option<f64>,
    /// Seconds for all the binaries together; one still running then is stopped.
    pub budget_s: u64,
    /// Skip the Nsight Compute profiles (the kernels bench, one training step).
    pub no_ncu: bool,
}

/// One test binary's outcome, from libtest's `test result:` lines.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TestOutcome {
    pub binary: String,
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
    pub exit_ok: bool,
}

/// Sums the counts of every `test result:` line of libtest output.
pub fn parse_test_results(binary: &str, output: &str, exit_ok: bool) -> TestOutcome {
    let mut outcome = TestOutcome {
        binary: binary.to_string(),
        exit_ok,
        ..TestOutcome::default()
    };
    for line in output.lines().filter(|l| l.starts_with("test result:")) {
        for part in line.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next())
                && let Ok(n) = n.parse::<u32>()
            {
                match what {
                    "passed" => outcome.passed += n,
                    "failed" => outcome.failed += n,
                    "ignored" => outcome.ignored += n,
                    _ => {}
                }
            }
        }
    }
    outcome
}

/// How one bundled binary's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum RunStatus {
    Ok,
    Failed,
    /// Still running when the time budget ran out, and stopped.
    Stopped,
}

/// One bundled binary's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub binary: String,
    pub kind: String,
    pub seconds: f64,
    pub status: RunStatus,
}

/// Runs `cmd` until it ends or `deadline` passes (then stops it), appending its output to
/// `log`; returns the output and how it ended.
fn run_logged(
    title: &str,
    cmd: &mut Command,
    log: &Path,
    deadline: Instant,
) -> Result<(String, RunStatus)> {
    eprintln!("==> {title}: {}", describe(cmd));
    let capture = std::env::temp_dir().join("sae-gpu-run.out");
    let file = std::fs::File::create(&capture).with_context(|| capture.display().to_string())?;
    let mut child = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break if status.success() {
                RunStatus::Ok
            } else {
                RunStatus::Failed
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break RunStatus::Stopped;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut text =
        String::from_utf8_lossy(&std::fs::read(&capture).unwrap_or_default()).into_owned();
    if status == RunStatus::Stopped {
        text.push_str("\n[stopped: the time budget of the run ran out]\n");
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| log.display().to_string())?;
    writeln!(file, "==> {title}: {}\n{text}", describe(cmd))?;
    Ok((text, status))
}

/// What a `gpu-run` does and records: its logs, the time left, and how each run ended.
struct Session {
    work: PathBuf,
    tests_log: PathBuf,
    bench_log: PathBuf,
    deadline: Instant,
    runs: Vec<RunRecord>,
}

impl Session {
    /// Runs `cmd` as `name` within the deadline, recording how it ended.
    fn run(&mut self, name: &str, kind: &str, cmd: &mut Command) -> Result<(String, RunStatus)> {
        cuda_environment(cmd);
        let log = if kind == "test" {
            &self.tests_log
        } else {
            &self.bench_log
        };
        let started = Instant::now();
        let (text, status) = run_logged(name, cmd, log, self.deadline)?;
        self.runs.push(RunRecord {
            binary: name.to_string(),
            kind: kind.to_string(),
            seconds: started.elapsed().as_secs_f64(),
            status,
        });
        Ok((text, status))
    }

    /// A bench binary on CUDA at the full shapes, its criterion results under `home`.
    fn bench_command(&self, exe: &Path, home: &str) -> Command {
        let mut cmd = Command::new(exe);
        cmd.env("CRITERION_HOME", self.work.join(home))
            .env("SAE_BENCH_SHAPES", "full")
            .env("SAE_BENCH_BACKEND", "cuda");
        cmd
    }

    /// Unpacks `binary` from `bundle` into the work folder; returns its path and its name
    /// (`package/target`).
    fn unpack(&self, bundle: &Path, binary: &Binary) -> Result<(PathBuf, String)> {
        let exe = self.work.join(binary.file.trim_end_matches(".xz"));
        unpack(&bundle.join(&binary.file), &exe)?;
        Ok((exe, format!("{}/{}", binary.package, binary.target)))
    }
}

pub fn run(options: &RunOptions) -> Result<()> {
    let bundle = match &options.bundle {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the xtask executable has no directory")?
            .to_path_buf(),
    };
    let manifest = read_manifest(&bundle)?;
    let out = &options.out;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let device = query_device(options.peak_gbs)?;
    eprintln!("device: {device:?}");
    let work = std::env::temp_dir().join("sae-gpu-run");
    std::fs::create_dir_all(&work).with_context(|| work.display().to_string())?;
    let mut session = Session {
        work,
        tests_log: out.join("tests.log"),
        bench_log: out.join("bench.log"),
        deadline: Instant::now() + Duration::from_secs(options.budget_s),
        runs: Vec::new(),
    };

    // Tests first: a bench on a device that fails its tests measures nothing worth keeping.
    let tests = manifest
        .binaries
        .iter()
        .filter(|b| b.kind == "test" && !options.no_tests);
    let mut outcomes = Vec::new();
    for binary in tests {
        let (exe, name) = session.unpack(&bundle, binary)?;
        // Only the CUDA cases (their modules and functions are named `cuda`).
        let mut cmd = Command::new(&exe);
        cmd.arg("cuda").env("SAE_REQUIRE_CUDA", "1");
        let (text, status) = session.run(&name, "test", &mut cmd)?;
        outcomes.push(parse_test_results(&name, &text, status == RunStatus::Ok));
    }
    let profiles = if options.no_bench {
        Profiles::default()
    } else {
        run_benches(&mut session, &bundle, &manifest, options)?
    };
    let criterion = session.work.join("criterion");
    let benches = if criterion.is_dir() {
        bench::read_criterion(&criterion)?
    } else {
        Vec::new()
    };

    let runs = &session.runs;
    let report = report(&manifest, &device, runs, &outcomes, &benches)
        + &ncu::markdown(&profiles.kernels, ncu::KERNELS_BENCH)
        + &ncu::markdown(&profiles.step, ncu::ONE_STEP);
    let report_path = out.join("gpu-report.md");
    std::fs::write(&report_path, &report).with_context(|| report_path.display().to_string())?;
    let json = serde_json::json!({
        "device": device, "commit": manifest.commit, "runs": runs, "tests": outcomes,
        "benchmarks": benches, "kernels": profiles.kernels, "step_kernels": profiles.step,
    });
    let json_path = out.join("gpu-report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| json_path.display().to_string())?;
    print!("{report}");
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.exit_ok || o.failed > 0 || o.passed == 0)
        .map(|o| o.binary.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("CUDA tests failed or did not run: {}", failed.join(", "));
    }
    Ok(())
}

/// What Nsight Compute measured: the kernels bench's rules, and one training step.
#[derive(Debug, Default)]
struct Profiles {
    kernels: Vec<ncu::KernelProfile>,
    step: Vec<ncu::KernelProfile>,
}

/// The kernels' bench (the bandwidth figures), one pass of it under Nsight Compute where
/// `ncu` exists, then the workspace benches, the longest, and one training step under Nsight
/// Compute. Criterion keeps every finished benchmark, so a bench stopped at the deadline or
/// failing late still reports what it measured.
fn run_benches(
    session: &mut Session,
    bundle: &Path,
    manifest: &Manifest,
    options: &RunOptions,
) -> Result<Profiles> {
    let mut benches: Vec<&Binary> = manifest
        .binaries
        .iter()
        .filter(|b| b.kind == "bench")
        .collect();
    benches.sort_by_key(|b| b.package != "sae-kernels");
    let mut profiles = Profiles::default();
    for binary in benches {
        let (exe, name) = session.unpack(bundle, binary)?;
        let mut cmd = session.bench_command(&exe, "criterion");
        cmd.arg("--bench").args(&options.filter);
        session.run(&name, "bench", &mut cmd)?;
        let Some(ncu) = ncu::find().filter(|_| !options.no_ncu) else {
            continue;
        };
        // One pass in criterion's test mode (no `--bench`): each selected bench runs once.
        let (label, file, filter) = match (binary.package.as_str(), binary.target.as_str()) {
            ("sae-kernels", _) => ("ncu sae-kernels/kernels", "ncu.csv", None),
            (_, "step") => (
                "ncu one step",
                "ncu-step.csv",
                Some("train_step/step_topk$"),
            ),
            _ => continue,
        };
        let csv = options.out.join(file);
        let mut cmd = session.bench_command(&ncu, "criterion-ncu");
        cmd.args(ncu::args(&csv)).arg(&exe).args(filter);
        session.run(label, "profile", &mut cmd)?;
        let found = ncu::parse(&std::fs::read_to_string(&csv).unwrap_or_default());
        if filter.is_some() {
            profiles.step = found;
        } else {
            profiles.kernels = found;
        }
    }
    Ok(profiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_results_are_summed_over_result_lines() {
        let out = "running 3 tests\ntest a ... ok\n\
            test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 9 filtered out; finished in 1.2s\n\
            test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n";
        let o = parse_test_results("x", out, false);
        assert_eq!((o.passed, o.failed, o.ignored), (4, 2, 1));
        assert!(!o.exit_ok);
        assert_eq!(parse_test_results("y", "no tests here", true).passed, 0);
    }
}
