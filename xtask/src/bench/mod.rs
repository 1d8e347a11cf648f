//! `cargo xtask bench`: runs the criterion benches and summarises them in
//! `docs/benchmarks.md` and `docs/benchmarks.json`.
//!
//! Baseline pairing: within a criterion group, a benchmark is a **baseline** when its function
//! id starts with `naive_`, `baseline_`, `burn_topk` or `gemm`, or ends with `_baseline` (see
//! [`is_baseline`]). A baseline is its own reference. Any other benchmark is compared with the
//! group's baseline that best matches it, by, in order: the same first word of the id once the
//! baseline prefix is stripped (`row_topk` ↔ `naive_row_sort`), then the same parameter
//! (criterion's `value_str`), then id order. A group without baselines borrows those of its
//! sibling group, the one whose name differs only in the first `_`-separated word
//! (`select_4096x16384_k32` ↔ `naive_4096x16384_k32`), so slow baselines can run with their own
//! criterion settings. The ratio is time / baseline time, per unit of work when both declare
//! a throughput of the same kind: below 1 is faster.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::shell::{cargo, root, step};

pub mod peers;

#[derive(Debug)]
pub struct Options {
    pub quick: bool,
    pub backend: Option<String>,
    /// Cargo profile of the bench build (`bench` when absent); `dev` reuses the test build,
    /// whose dependencies and hot crates are optimised too.
    pub profile: Option<String>,
    /// Summarise this existing criterion directory instead of running the benches.
    pub criterion_dir: Option<PathBuf>,
    /// Time PyTorch and sparsify with this Python right before the benches and compare.
    pub peers: Option<String>,
}

/// Prefixes of the function ids that are their group's baselines.
pub const BASELINE_PREFIXES: [&str; 4] = ["naive_", "baseline_", "burn_topk", "gemm"];

/// Whether a benchmark with this function id is a baseline of its group.
pub fn is_baseline(function: &str) -> bool {
    BASELINE_PREFIXES.iter().any(|p| function.starts_with(p)) || function.ends_with("_baseline")
}

/// Whether two group names differ only in their first `_`-separated word.
fn siblings(a: &str, b: &str) -> bool {
    a != b
        && matches!((a.split_once('_'), b.split_once('_')), (Some((_, x)), Some((_, y))) if x == y)
}

/// What criterion counts per iteration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Throughput {
    Elements(u64),
    Bytes(u64),
}

/// One benchmark's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bench {
    pub group: String,
    /// The function id (the last id part when criterion stored none).
    pub function: String,
    /// The parameter, if any.
    pub value: Option<String>,
    /// Mean time per iteration, nanoseconds.
    pub mean_ns: f64,
    pub throughput: Option<Throughput>,
    /// Mean time / the paired baseline's mean time.
    pub ratio: Option<f64>,
    /// The full id of the paired baseline.
    pub baseline: Option<String>,
}

impl Bench {
    pub fn id(&self) -> String {
        match &self.value {
            Some(v) => format!("{}/{}/{}", self.group, self.function, v),
            None => format!("{}/{}", self.group, self.function),
        }
    }
    /// A result of `group/function` with only its mean time set, for tests.
    #[cfg(test)]
    pub fn with_mean(group: &str, function: &str, mean_ns: f64) -> Self {
        Self {
            group: group.into(),
            function: function.into(),
            value: None,
            mean_ns,
            throughput: None,
            ratio: None,
            baseline: None,
        }
    }

    /// Elements or bytes per second.
    pub fn per_second(&self) -> Option<(f64, &'static str)> {
        let secs = self.mean_ns * 1e-9;
        match self.throughput? {
            Throughput::Elements(n) => Some((n as f64 / secs, "elem/s")),
            Throughput::Bytes(n) => Some((n as f64 / secs, "B/s")),
        }
    }
}

#[derive(Deserialize)]
struct BenchmarkJson {
    group_id: String,
    function_id: Option<String>,
    value_str: Option<String>,
    throughput: Option<BTreeMap<String, u64>>,
    full_id: String,
}

#[derive(Deserialize)]
struct PointEstimate {
    point_estimate: f64,
}

#[derive(Deserialize)]
struct EstimatesJson {
    mean: PointEstimate,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// Every `new/` result under a criterion directory (`target/criterion`), sorted by id and
/// paired with baselines. The one reader of criterion's `benchmark.json` and
/// `estimates.json`: `gpu-run`'s report reads its benches through it too.
pub fn read_criterion(dir: &Path) -> Result<Vec<Bench>> {
    let mut found = Vec::new();
    collect_new_dirs(dir, &mut found)?;
    let mut benches = Vec::new();
    for new in found {
        let meta: BenchmarkJson = read_json(&new.join("benchmark.json"))?;
        let estimates: EstimatesJson = read_json(&new.join("estimates.json"))?;
        let throughput = meta.throughput.and_then(|t| {
            t.iter().next().map(|(kind, &n)| {
                if kind.starts_with("Bytes") {
                    Throughput::Bytes(n)
                } else {
                    Throughput::Elements(n)
                }
            })
        });
        let function = meta.function_id.unwrap_or_else(|| {
            meta.full_id
                .rsplit('/')
                .next()
                .unwrap_or(&meta.full_id)
                .to_string()
        });
        benches.push(Bench {
            group: meta.group_id,
            function,
            value: meta.value_str,
            mean_ns: estimates.mean.point_estimate,
            throughput,
            ratio: None,
            baseline: None,
        });
    }
    benches.sort_by_key(Bench::id);
    pair_baselines(&mut benches);
    Ok(benches)
}

fn collect_new_dirs(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| dir.display().to_string())?;
    for entry in entries {
        let path = entry.with_context(|| dir.display().to_string())?.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            if path.join("benchmark.json").is_file() && path.join("estimates.json").is_file() {
                found.push(path);
            }
        } else if path.file_name().is_some_and(|n| n != "report") {
            collect_new_dirs(&path, found)?;
        }
    }
    Ok(())
}

/// The first `_`-separated word of a function id, after any baseline prefix.
pub fn subject(function: &str) -> &str {
    let rest = BASELINE_PREFIXES
        .iter()
        .find_map(|p| function.strip_prefix(p))
        .unwrap_or(function);
    rest.split('_').find(|w| !w.is_empty()).unwrap_or(rest)
}

/// Sets `ratio` and `baseline` by the rule in the module documentation.
pub fn pair_baselines(benches: &mut [Bench]) {
    let snapshot = benches.to_vec();
    for b in benches.iter_mut() {
        let base = if is_baseline(&b.function) {
            Some(b.clone())
        } else {
            let score = |o: &Bench| {
                2 * u8::from(subject(&o.function) == subject(&b.function))
                    + u8::from(o.value == b.value)
            };
            let own = snapshot
                .iter()
                .any(|o| o.group == b.group && is_baseline(&o.function));
            let candidate = |o: &&Bench| {
                is_baseline(&o.function)
                    && if own {
                        o.group == b.group
                    } else {
                        siblings(&o.group, &b.group)
                    }
            };
            // max_by_key keeps the last maximum: iterate in reverse so ties go to the first id.
            snapshot
                .iter()
                .rev()
                .filter(candidate)
                .max_by_key(|o| score(o))
                .cloned()
        };
        if let Some(base) = base.filter(|base| base.mean_ns > 0.0) {
            // Per unit of work when both count the same kind of work (sizes may differ).
            let work = match (b.throughput, base.throughput) {
                (Some(Throughput::Elements(x)), Some(Throughput::Elements(y)))
                | (Some(Throughput::Bytes(x)), Some(Throughput::Bytes(y)))
                    if x > 0 && y > 0 =>
                {
                    y as f64 / x as f64
                }
                _ => 1.0,
            };
            b.ratio = Some(b.mean_ns / base.mean_ns * work);
            b.baseline = Some(base.id());
        }
    }
}

pub fn format_time(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn format_rate(rate: f64, unit: &str) -> String {
    let (scaled, prefix) = if rate >= 1e9 {
        (rate / 1e9, "G")
    } else if rate >= 1e6 {
        (rate / 1e6, "M")
    } else if rate >= 1e3 {
        (rate / 1e3, "k")
    } else {
        (rate, "")
    };
    format!("{scaled:.2} {prefix}{unit}")
}

/// Where and when the benchmarks ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub date: String,
    pub backend: String,
    /// Cargo profile the benches were built with.
    pub profile: String,
    /// 1-minute load average when the benches started (other processes skew timings);
    /// `None` when an existing criterion directory was summarised.
    pub load: Option<f64>,
}

impl Machine {
    fn here(backend: &str, profile: &str, load: Option<f64>) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpu: format!("{cpu}, {}", widest_simd()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            date: today(),
            backend: backend.to_string(),
            profile: profile.to_string(),
            load,
        }
    }
}

/// The widest vector instructions the CPU offers (the CPU GEMM's kernels are chosen by them
/// at run time, so the same model name can measure very differently).
fn widest_simd() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "AVX2";
        }
        "SSE"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "NEON"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// The 1-minute load average, where the system reports one.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
}

/// UTC date as YYYY-MM-DD (days-from-civil inverse, no date crate for one line).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The heading from which `docs/benchmarks.md` is written by hand: regenerating the file
/// keeps everything from it on.
pub const HAND_NOTES: &str = "## Notes kept by hand";

/// `generated` followed by the hand-kept part of `previous` (from [`HAND_NOTES`] on), if any.
pub fn with_hand_notes(mut generated: String, previous: &str) -> String {
    if let Some(at) = previous.find(HAND_NOTES) {
        if !generated.ends_with("\n\n") {
            generated.push('\n');
        }
        generated.push_str(&previous[at..]);
    }
    generated
}

/// `docs/benchmarks.md`: the machine, then one table per group.
pub fn markdown(benches: &[Bench], machine: &Machine, quick: bool) -> String {
    let mut md = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench{}` on {}.\n\n\
         - CPU: {} ({} cores)\n- backend: {}\n- cargo profile: {}\n- load average when the benches started: {}\n",
        if quick { " --quick" } else { "" },
        machine.date,
        machine.cpu,
        machine.cores,
        machine.backend,
        machine.profile,
        machine
            .load
            .map_or_else(|| "not recorded".into(), |l| format!("{l:.2}"))
    );
    md.push_str(
        "Times are criterion's mean per iteration. Baselines are the benchmarks whose id starts \
         with `naive_`, `baseline_`, `burn_topk` or `gemm`, or ends with `_baseline`; each other \
         benchmark is compared with its group's baseline of the same subject (first word of the \
         id after the baseline prefix: `row_topk` with `naive_row_sort`), else of the same \
         parameter, else the first; a group without baselines uses those of the group whose \
         name differs only in its first word (`select_N` with `naive_N`). Ratio = time / \
         baseline time, per unit of work where both declare a throughput: below 1 is faster.\n",
    );
    let mut groups: Vec<&str> = benches.iter().map(|b| b.group.as_str()).collect();
    groups.dedup();
    for group in groups {
        let _ = writeln!(
            md,
            "\n## {group}\n\n| benchmark | parameter | time | throughput | vs baseline |\n\
             |---|---|---:|---:|---:|"
        );
        for b in benches.iter().filter(|b| b.group == group) {
            let ratio = match (&b.ratio, &b.baseline) {
                (Some(_), Some(base)) if *base == b.id() => "baseline".to_string(),
                (Some(r), Some(_)) => format!("{r:.2}×"),
                _ => "—".to_string(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                b.function,
                b.value.as_deref().unwrap_or(""),
                format_time(b.mean_ns),
                b.per_second()
                    .map_or("—".into(), |(r, unit)| format_rate(r, unit)),
                ratio
            );
        }
    }
    md
}

pub fn run(options: &Options) -> Result<()> {
    let root = root();
    let backend = options.backend.clone().unwrap_or_else(|| "flex".into());
    let target = crate::shell::target_dir();
    if options.peers.is_some() && options.criterion_dir.is_some() {
        bail!("--peers times the peers beside a run of the benches: not with --criterion-dir");
    }
    let (criterion_dir, load, peer_times) = match &options.criterion_dir {
        Some(dir) => (dir.clone(), None, None),
        None => {
            let load = load_average();
            let peer_times = match &options.peers {
                Some(python) => {
                    peers::measure(python, peers::Shape::from_env(), &target.join("peers.json"))?
                }
                None => None,
            };
            run_benches(options, &backend)?;
            (target.join("criterion"), load, peer_times)
        }
    };
    let benches = read_criterion(&criterion_dir)?;
    let profile = options.profile.as_deref().unwrap_or("bench");
    let machine = Machine::here(&backend, profile, load);
    let docs = root.join("docs");
    let md_path = docs.join("benchmarks.md");
    let previous = std::fs::read_to_string(&md_path).unwrap_or_default();
    let mut generated = markdown(&benches, &machine, options.quick);
    if let Some(times) = &peer_times {
        generated.push_str(&peers::markdown(times, &benches));
    }
    std::fs::write(&md_path, with_hand_notes(generated, &previous))
        .with_context(|| md_path.display().to_string())?;
    let json_path = docs.join("benchmarks.json");
    let json = serde_json::json!({ "machine": machine, "quick": options.quick, "benchmarks": benches, "peers": peer_times });
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| json_path.display().to_string())?;
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

fn run_benches(options: &Options, backend: &str) -> Result<()> {
    let mut cmd = cargo();
    // Only `[[bench]]` targets (`--bench '*'`): `--benches` also runs every library's unit
    // tests under libtest's bench harness, which rejects the criterion flags below.
    cmd.args(["bench", "--workspace", "--bench", "*"]);
    if let Some(profile) = &options.profile {
        cmd.args(["--profile", profile]);
    }
    if backend == "cuda" {
        // The CUDA runtime of the kernels and burn's CUDA backend are behind features.
        let metadata = crate::ci::workspace_metadata()?;
        cmd.args(["--features", &crate::ci::cuda_features(&metadata)]);
    }
    if options.quick {
        cmd.args([
            "--",
            "--warm-up-time",
            "1",
            "--measurement-time",
            "2",
            "--sample-size",
            "10",
        ]);
    }
    // Benches that run on a tensor backend choose it from this variable.
    cmd.env("SAE_BENCH_BACKEND", backend);
    step("cargo bench", &mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<Bench> {
        read_criterion(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/criterion")).unwrap()
    }

    #[test]
    fn reads_every_new_result_and_ignores_base_and_report() {
        let benches = fixture();
        let ids: Vec<String> = benches.iter().map(Bench::id).collect();
        assert_eq!(
            ids,
            [
                "decode/f16",
                "row_topk/naive_sort/1024x4096",
                "row_topk/naive_sort/4096x4096",
                "row_topk/sae_alloc/1024x4096",
                "row_topk/sae_alloc/4096x4096",
                "select/global_topk",
                "select/naive_global_sort",
                "select/naive_row_sort",
                "select/row_topk",
                "shuffle_window/shuffle_window",
            ]
        );
        let decode = &benches[0];
        assert_eq!(decode.mean_ns, 1_500.0);
        assert_eq!(decode.throughput, Some(Throughput::Bytes(1 << 20)));
        assert_eq!(benches[9].throughput, None);
    }

    #[test]
    fn a_group_without_baselines_borrows_its_siblings() {
        let bench = Bench::with_mean;
        let mut benches = vec![
            bench("naive_64x64", "naive_row_sort", 100.0),
            bench("naive_64x64", "naive_column_sort", 400.0),
            bench("select_64x64", "column_topm", 20.0),
            bench("select_64x64", "row_topk", 10.0),
            bench("select_8x8", "row_topk", 1.0),
            bench("batch", "memcpy_baseline", 2.0),
            bench("batch", "stream", 3.0),
        ];
        pair_baselines(&mut benches);
        let ratio = |i: usize| benches[i].ratio;
        assert_eq!(ratio(2), Some(0.05));
        assert_eq!(ratio(3), Some(0.1));
        assert_eq!(ratio(4), None, "no sibling group for select_8x8");
        assert_eq!(ratio(6), Some(1.5));
        assert_eq!(
            benches[3].baseline.as_deref(),
            Some("naive_64x64/naive_row_sort")
        );
    }

    #[test]
    fn pairs_each_benchmark_with_the_baseline_of_its_parameter() {
        let benches = fixture();
        let find = |id: &str| benches.iter().find(|b| b.id() == id).unwrap();
        let fast = find("row_topk/sae_alloc/1024x4096");
        assert_eq!(
            fast.baseline.as_deref(),
            Some("row_topk/naive_sort/1024x4096")
        );
        assert!((fast.ratio.unwrap() - 0.25).abs() < 1e-12);
        let big = find("row_topk/sae_alloc/4096x4096");
        assert!((big.ratio.unwrap() - 0.125).abs() < 1e-12);
        assert_eq!(find("row_topk/naive_sort/4096x4096").ratio, Some(1.0));
        assert_eq!(find("decode/f16").ratio, None);
        // Two baselines in a group: each benchmark goes to the one of its subject.
        let row = find("select/row_topk");
        assert_eq!(row.baseline.as_deref(), Some("select/naive_row_sort"));
        assert!((row.ratio.unwrap() - 0.1).abs() < 1e-12);
        let global = find("select/global_topk");
        assert_eq!(global.baseline.as_deref(), Some("select/naive_global_sort"));
        assert!((global.ratio.unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(find("select/naive_global_sort").ratio, Some(1.0));
        let (rate, unit) = fast.per_second().unwrap();
        assert!((rate - 4194304.0 / 5e-4).abs() < 1.0);
        assert_eq!(unit, "elem/s");
    }

    #[test]
    fn baseline_rule() {
        for id in ["naive_row_topk", "baseline_scan", "burn_topk", "gemm_dense"] {
            assert!(is_baseline(id), "{id}");
        }
        for id in ["sae_alloc", "fused_gemm", "topk_burn"] {
            assert!(!is_baseline(id), "{id}");
        }
    }

    #[test]
    fn regenerating_keeps_the_hand_kept_notes() {
        let previous = "# Benchmarks\n\nold tables\n\n## Notes kept by hand\n\nfigures\n";
        let merged = with_hand_notes("# Benchmarks\n\nnew tables\n".into(), previous);
        assert_eq!(
            merged,
            "# Benchmarks\n\nnew tables\n\n## Notes kept by hand\n\nfigures\n"
        );
        assert_eq!(with_hand_notes("new\n".into(), "no notes\n"), "new\n");
    }

    #[test]
    fn markdown_has_a_table_per_group() {
        let machine = Machine {
            cpu: "Test CPU".into(),
            cores: 2,
            date: "2026-01-01".into(),
            backend: "flex".into(),
            profile: "bench".into(),
            load: Some(0.5),
        };
        let md = markdown(&fixture(), &machine, true);
        assert_eq!(md.matches("\n## ").count(), 4);
        assert!(md.contains("Test CPU (2 cores)"));
        assert!(
            md.contains("| sae_alloc | 1024x4096 | 500.000 µs | 8.39 Gelem/s | 0.25× |"),
            "{md}"
        );
        assert!(md.contains("| naive_sort | 1024x4096 | 2.000 ms | 2.10 Gelem/s | baseline |"));
        assert!(
            md.contains("| f16 |  | 1.500 µs | 699.05 GB/s | — |"),
            "{md}"
        );
    }

    #[test]
    fn today_is_a_date() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
