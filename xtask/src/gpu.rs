//! `cargo xtask gpu-bundle` and `xtask gpu-run`: the CUDA tests and benches, for a machine
//! with an NVIDIA GPU but no Rust toolchain.
//!
//! `gpu-bundle` runs here. It builds the integration tests of `sae-kernels` and `sae-model` and
//! the `kernels` and `step` benches with every CUDA feature, then strips and xz-compresses them
//! into `gpu-bundle/` with a manifest and a copy of this program. The binaries link no CUDA
//! library: cudarc loads the driver and NVRTC when they start.
//!
//! `gpu-run` runs on the GPU machine (`gpu-bundle/xtask gpu-run --out DIR`). It unpacks the
//! binaries and runs the CUDA cases of every test binary with `SAE_REQUIRE_CUDA=1`, so a
//! missing GPU fails instead of skipping. Then it runs the benches (kernels at the paper-scale
//! shapes, the training step on burn's CUDA backend) and writes `DIR/gpu-report.md`:
//! - every kernel's bytes/s, against the device's nominal memory bandwidth and against a copy
//!   of the same bytes;
//! - every rule against burn's own top-k on the same input;
//! - the step time against the encoder GEMM.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::bench::{self, Bench, format_time};
use crate::ncu;
use crate::shell::{cargo, describe, root, step};

/// Where `gpu-bundle` writes, relative to the workspace root (ignored by git).
pub const BUNDLE_DIR: &str = "gpu-bundle";
const MANIFEST: &str = "manifest.json";
/// The features that put the CUDA runtime into the kernels' and the model's tests and into
/// the benches (`cargo xtask bench --backend cuda` uses them too).
pub const CUDA_FEATURES: &str = "sae-kernels/cuda,sae-model/cuda,sae-benches/cuda";

/// `gpu-bundle` options.
#[derive(Debug)]
pub struct BundleOptions {
    /// `CUDARC_CUDA_VERSION` for the build (`13000`: CUDA 13.0, the driver API of driver 580).
    pub cuda_version: String,
}

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
    /// Skip the Nsight Compute profile of the kernels.
    pub no_ncu: bool,
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

    let mut cmd = cargo();
    cmd.args([
        "test",
        "--no-run",
        "--locked",
        "--message-format=json-render-diagnostics",
    ])
    .args(["-p", "sae-kernels", "-p", "sae-model", "-p", "sae-benches"])
    .args(["--features", CUDA_FEATURES])
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
fn unpack(from: &Path, to: &Path) -> Result<()> {
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

/// The GPU as `nvidia-smi` names it, with its nominal memory bandwidth where known.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub name: String,
    pub driver: String,
    pub memory: String,
    /// Nominal memory bandwidth, bytes per second.
    pub peak_bytes_per_s: Option<f64>,
}

/// Nominal memory bandwidth (bytes/s) of the data-centre GPUs this project is run on, from
/// the vendor's data sheets; `None` for others.
pub fn nominal_bandwidth(name: &str) -> Option<f64> {
    let name = name.to_ascii_uppercase();
    let tbs = if name.contains("H200") {
        4.8
    } else if name.contains("H100") && name.contains("PCIE") {
        2.0
    } else if name.contains("H100") && name.contains("NVL") {
        3.9
    } else if name.contains("H100") {
        3.35
    } else if name.contains("A100") && name.contains("80GB") {
        2.039
    } else if name.contains("A100") {
        1.555
    } else {
        return None;
    };
    Some(tbs * 1e12)
}

fn query_device(peak_gbs: Option<f64>) -> Result<Device> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
        ])
        .output()
        .context("cannot run nvidia-smi: is this a machine with an NVIDIA GPU?")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    let fields: Vec<&str> = first.split(',').map(str::trim).collect();
    if !out.status.success() || fields.len() < 3 {
        bail!("nvidia-smi found no GPU: {}", text.trim());
    }
    Ok(Device {
        name: fields[0].to_string(),
        driver: fields[1].to_string(),
        memory: fields[2].to_string(),
        peak_bytes_per_s: peak_gbs
            .map(|g| g * 1e9)
            .or_else(|| nominal_bandwidth(fields[0])),
    })
}

/// Points cubecl at the CUDA toolkit (headers for NVRTC) and the loader at its libraries.
fn cuda_environment(cmd: &mut Command) {
    // `CUDA_PATH`, the usual install folders, or the folder above the `nvcc` on `PATH`.
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|dir| dir.join("nvcc").is_file())
        .filter_map(|dir| dir.parent().map(Path::to_path_buf));
    let cuda = std::env::var_os("CUDA_PATH")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/local/cuda", "/opt/cuda"]
                .iter()
                .map(PathBuf::from)
                .chain(on_path)
                .find(|p| p.join("include").is_dir())
        });
    let mut libs: Vec<PathBuf> = ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(cuda) = cuda {
        libs.push(cuda.join("lib64"));
        cmd.env("CUDA_PATH", cuda);
    }
    let existing = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    libs.extend(std::env::split_paths(&existing));
    if let Ok(joined) = std::env::join_paths(libs.iter().filter(|p| p.is_dir())) {
        cmd.env("LD_LIBRARY_PATH", joined);
    }
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

fn read_manifest(bundle: &Path) -> Result<Manifest> {
    let path = bundle.join(MANIFEST);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid manifest", path.display()))
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
    let kernels = if options.no_bench {
        Vec::new()
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
    let report = report(&manifest, &device, runs, &outcomes, &benches) + &ncu::markdown(&kernels);
    let report_path = out.join("gpu-report.md");
    std::fs::write(&report_path, &report).with_context(|| report_path.display().to_string())?;
    let json = serde_json::json!({
        "device": device, "commit": manifest.commit, "runs": runs, "tests": outcomes,
        "benchmarks": benches, "kernels": kernels,
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

/// The kernels' bench (the bandwidth figures), one pass of it under Nsight Compute where
/// `ncu` exists, then the workspace benches, the longest; returns the kernels `ncu` measured.
/// Criterion keeps every finished benchmark, so a bench stopped at the deadline or failing
/// late still reports what it measured.
fn run_benches(
    session: &mut Session,
    bundle: &Path,
    manifest: &Manifest,
    options: &RunOptions,
) -> Result<Vec<ncu::KernelProfile>> {
    let mut benches: Vec<&Binary> = manifest
        .binaries
        .iter()
        .filter(|b| b.kind == "bench")
        .collect();
    benches.sort_by_key(|b| b.package != "sae-kernels");
    let mut kernels = Vec::new();
    for binary in benches {
        let (exe, name) = session.unpack(bundle, binary)?;
        let mut cmd = session.bench_command(&exe, "criterion");
        cmd.arg("--bench").args(&options.filter);
        session.run(&name, "bench", &mut cmd)?;
        if binary.package != "sae-kernels" || options.no_ncu {
            continue;
        }
        if let Some(ncu) = ncu::find() {
            // One pass of the kernels bench (criterion's test mode).
            let csv = options.out.join("ncu.csv");
            let mut cmd = session.bench_command(&ncu, "criterion-ncu");
            cmd.args(ncu::args(&csv)).arg(&exe);
            session.run("ncu sae-kernels/kernels", "profile", &mut cmd)?;
            kernels = ncu::parse(&std::fs::read_to_string(&csv).unwrap_or_default());
        }
    }
    Ok(kernels)
}

/// `rows x cols` of a kernel bench parameter such as `4096x16384_k32`.
pub fn parse_shape(value: &str) -> Option<(u64, u64)> {
    let (shape, _) = value.split_once('_').unwrap_or((value, ""));
    let (rows, cols) = shape.split_once('x')?;
    Some((rows.parse().ok()?, cols.parse().ok()?))
}

/// Bytes a kernel bench must move at least: one read of the f32 score matrix (two, read and
/// write, for the copy baseline). The selection written back (`N k` pairs) is under 1% of it
/// at the bench shapes and not counted.
pub fn min_bytes(bench: &Bench) -> Option<u64> {
    let (rows, cols) = parse_shape(bench.value.as_deref()?)?;
    let reads = rows * cols * 4;
    Some(if bench.function == "copy_baseline" {
        2 * reads
    } else {
        reads
    })
}

/// The markdown report of a `gpu-run`.
pub fn report(
    manifest: &Manifest,
    device: &Device,
    runs: &[RunRecord],
    outcomes: &[TestOutcome],
    benches: &[Bench],
) -> String {
    let mut md = String::from("# CUDA run\n\n");
    let peak = device.peak_bytes_per_s;
    let _ = writeln!(
        md,
        "- device: {} ({}, driver {})\n- nominal memory bandwidth: {}\n- commit: {}, \
         CUDA bindings {}, binaries built with the dev profile (dependencies at opt-level 3)\n",
        device.name,
        device.memory,
        device.driver,
        peak.map_or("unknown (pass --peak-gbs)".into(), |p| format!(
            "{:.0} GB/s",
            p / 1e9
        )),
        manifest.commit,
        manifest.cuda_version,
    );
    md.push_str("## Runs\n\n| binary | kind | seconds | ended |\n|---|---|---:|---|\n");
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:?} |",
            r.binary, r.kind, r.seconds, r.status
        );
    }
    if !outcomes.is_empty() {
        md.push_str("\n## Tests (CUDA cases, `SAE_REQUIRE_CUDA=1`)\n\n");
        md.push_str("| binary | passed | failed | ignored | exit |\n|---|---:|---:|---:|---|\n");
    }
    for o in outcomes {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            o.binary,
            o.passed,
            o.failed,
            o.ignored,
            if o.exit_ok { "ok" } else { "FAILED" }
        );
    }
    md += &kernels_section(benches, peak);
    md += &select_section(benches);
    md += &steps_section(benches);
    md
}

/// The benches of `group` that are not baselines (`with_baselines` false) or all of them.
fn in_group<'a>(benches: &'a [Bench], group: &str, with_baselines: bool) -> Vec<&'a Bench> {
    benches
        .iter()
        .filter(|b| b.group == group && (with_baselines || !bench::is_baseline(&b.function)))
        .collect()
}

/// A ratio as the report prints it, `—` when there is none.
fn times(ratio: Option<f64>, digits: usize) -> String {
    ratio.map_or("—".into(), |r| format!("{r:.digits$}×"))
}

/// Every kernel's bytes/s against the nominal bandwidth `peak` and its time against the copy.
fn kernels_section(benches: &[Bench], peak: Option<f64>) -> String {
    let mut md = String::new();
    let kernels = in_group(benches, "select/cuda", true);
    if !kernels.is_empty() {
        md.push_str(
            "\n## Kernels\n\nBytes/s count one read of the f32 score matrix per rule (read and \
             write for the copy), whatever the kernels actually move: the share of the nominal \
             bandwidth is what the rule achieves as a single pass would.\n\n\
             | kernel | shape | time | bytes/s | of nominal | time / copy |\n\
             |---|---|---:|---:|---:|---:|\n",
        );
        for b in kernels {
            let rate = min_bytes(b).map(|n| n as f64 / (b.mean_ns * 1e-9));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                b.function,
                b.value.as_deref().unwrap_or(""),
                format_time(b.mean_ns),
                rate.map_or("—".into(), |r| format!("{:.0} GB/s", r / 1e9)),
                match (rate, peak) {
                    (Some(r), Some(p)) => format!("{:.0}%", 100.0 * r / p),
                    _ => "—".into(),
                },
                times(b.ratio, 2),
            );
        }
    }
    md
}

/// Every rule against burn's top-k on the same input.
fn select_section(benches: &[Bench]) -> String {
    let mut md = String::new();
    let select = in_group(benches, "select_k", false);
    if !select.is_empty() {
        md.push_str(
            "\n## Against burn's top-k (same affinities, burn's CUDA backend)\n\n\
             burn: `argtopk` and a gather, device reductions, for rows and columns; for the \
             global rule `topk_with_indices` of the flattened matrix, burn's only route for \
             k N elements (a full sort, on the host in burn 0.21). Ours includes reading the \
             selection back to the host; burn's result stays on the device.\n\n\
             | rule | ours | burn | burn / ours |\n|---|---:|---:|---:|\n",
        );
        for b in select {
            // Only burn doing the same rule: a bench whose own burn run did not finish (the
            // host sort of the global rule is slow) has no ratio rather than another rule's.
            let base = b
                .baseline
                .as_ref()
                .and_then(|id| benches.iter().find(|o| &o.id() == id))
                .filter(|o| bench::subject(&o.function) == bench::subject(&b.function));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                b.function,
                format_time(b.mean_ns),
                base.map_or("not measured".into(), |o| format_time(o.mean_ns)),
                times(base.and(b.ratio).map(|r| 1.0 / r), 1),
            );
        }
    }
    md
}

/// The training step against the encoder GEMM.
fn steps_section(benches: &[Bench]) -> String {
    let mut md = String::new();
    let steps = in_group(benches, "train_step", true);
    if !steps.is_empty() {
        md.push_str("\n## Training step\n\n| bench | time | / encoder GEMM |\n|---|---:|---:|\n");
        for b in steps {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                b.function,
                format_time(b.mean_ns),
                times(b.ratio, 2),
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Throughput;

    fn bench(group: &str, function: &str, value: Option<&str>, mean_ns: f64) -> Bench {
        Bench {
            group: group.into(),
            function: function.into(),
            value: value.map(Into::into),
            mean_ns,
            throughput: Some(Throughput::Elements(1)),
            ratio: None,
            baseline: None,
        }
    }

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

    #[test]
    fn nominal_bandwidth_knows_the_lent_gpus() {
        assert_eq!(nominal_bandwidth("NVIDIA H100 80GB HBM3"), Some(3.35e12));
        assert_eq!(nominal_bandwidth("NVIDIA H200"), Some(4.8e12));
        assert_eq!(nominal_bandwidth("NVIDIA H100 PCIe"), Some(2.0e12));
        assert_eq!(nominal_bandwidth("NVIDIA GeForce RTX 4090"), None);
    }

    #[test]
    fn kernel_bytes_and_report_rates() {
        assert_eq!(parse_shape("4096x16384_k32"), Some((4096, 16384)));
        assert_eq!(parse_shape("junk"), None);
        let mut benches = vec![
            bench("select/cuda", "copy_baseline", Some("1000x1000_k32"), 1e6),
            bench("select/cuda", "row_topk", Some("1000x1000_k32"), 2e6),
            bench("select_k", "burn_topk_row", None, 30e6),
            bench("select_k", "row_topk", None, 3e6),
        ];
        bench::pair_baselines(&mut benches);
        assert_eq!(min_bytes(&benches[0]), Some(8_000_000));
        assert_eq!(min_bytes(&benches[1]), Some(4_000_000));
        let device = Device {
            name: "test".into(),
            driver: "1".into(),
            memory: "1 MiB".into(),
            peak_bytes_per_s: Some(4e9),
        };
        let manifest = Manifest {
            commit: "abc".into(),
            cuda_version: "13000".into(),
            binaries: vec![],
        };
        let md = report(&manifest, &device, &[], &[], &benches);
        // 4 MB in 2 ms = 2 GB/s = 50% of 4 GB/s, at 2x the copy's time.
        assert!(
            md.contains("| row_topk | 1000x1000_k32 | 2.000 ms | 2 GB/s | 50% | 2.00× |"),
            "{md}"
        );
        assert!(
            md.contains("| row_topk | 3.000 ms | 30.000 ms | 10.0× |"),
            "{md}"
        );
    }

    #[test]
    fn a_rule_without_its_own_burn_run_has_no_ratio() {
        let mut benches = vec![
            bench("select_k", "row_topk", None, 1e6),
            bench("select_k", "burn_topk_row", None, 5e6),
            bench("select_k", "global_topk", None, 2e6),
        ];
        bench::pair_baselines(&mut benches);
        let md = select_section(&benches);
        assert!(
            md.contains("| row_topk | 1.000 ms | 5.000 ms | 5.0× |"),
            "{md}"
        );
        assert!(
            md.contains("| global_topk | 2.000 ms | not measured | — |"),
            "{md}"
        );
    }
}
