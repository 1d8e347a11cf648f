//! The markdown report of a `gpu-run`: the device, how each binary's run ended, the tests,
//! and the benches read from criterion: every kernel's bytes/s against the nominal bandwidth
//! and a copy, every rule against burn's top-k, the training step against the encoder GEMM.

use std::fmt::Write as _;

use super::bundle::Manifest;
use super::device::Device;
use super::run::{RunRecord, TestOutcome};
use crate::bench::{self, Bench, format_time};

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
