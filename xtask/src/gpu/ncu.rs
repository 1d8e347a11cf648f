//! Nsight Compute (`ncu`) for `gpu-run`: each kernel's time and share of the device's memory
//! and compute throughput, read from the hardware counters while the kernels bench runs each
//! rule once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bench::format_time;

/// The counters read per launch: duration, DRAM and SM throughput as a share of the peak the
/// device sustains, and the grid size (which tells the bench shapes apart).
pub const METRICS: [&str; 4] = [
    "gpu__time_duration.sum",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "launch__grid_size",
];

/// At most this many launches are profiled (each is replayed once per counter pass).
pub const LAUNCH_COUNT: u32 = 300;

/// `ncu` on `PATH`, in the CUDA toolkit, or in Nsight Compute's own install folders.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // Subfolders of these: a versioned Nsight Compute folder, the toolkit's `bin`.
    for parent in ["/opt/nvidia/nsight-compute", "/usr/local/cuda"] {
        if let Ok(entries) = std::fs::read_dir(parent) {
            dirs.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    dirs.into_iter()
        .map(|d| d.join("ncu"))
        .find(|p| p.is_file())
}

/// The arguments that make `ncu` profile `exe` and write raw CSV to `csv`.
pub fn args(csv: &Path) -> Vec<String> {
    vec![
        "--csv".into(),
        "--page".into(),
        "raw".into(),
        // Clocks as the benches ran them, not locked to base.
        "--clock-control".into(),
        "none".into(),
        "--launch-count".into(),
        LAUNCH_COUNT.to_string(),
        "--metrics".into(),
        METRICS.join(","),
        "--log-file".into(),
        csv.display().to_string(),
    ]
}

/// Splits one CSV line with `"`-quoted fields (quotes doubled inside).
pub fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// One kernel (by name and grid size) over all its profiled launches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelProfile {
    pub kernel: String,
    pub grid: String,
    pub launches: u32,
    pub total_ns: f64,
    /// Time-weighted mean DRAM throughput, % of the sustained peak.
    pub dram_pct: f64,
    /// Time-weighted mean SM throughput, % of the sustained peak.
    pub sm_pct: f64,
}

/// Reads `ncu --csv --page raw` output: a header line naming the columns (`Kernel Name` and
/// the [`METRICS`]), a units line, one line per launch; `==PROF==` lines are skipped. Kernels
/// come back by total time, longest first.
pub fn parse(text: &str) -> Vec<KernelProfile> {
    let mut rows = text.lines().filter(|l| l.starts_with('"')).map(split_csv);
    let Some(header) = rows.next() else {
        return Vec::new();
    };
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(name), Some(time), Some(dram), Some(sm), Some(grid)) = (
        column("Kernel Name"),
        column(METRICS[0]),
        column(METRICS[1]),
        column(METRICS[2]),
        column(METRICS[3]),
    ) else {
        return Vec::new();
    };
    let number = |row: &[String], i: usize| {
        row.get(i)
            .and_then(|v| v.replace(',', "").parse::<f64>().ok())
    };
    let mut by_kernel: BTreeMap<(String, String), KernelProfile> = BTreeMap::new();
    for row in rows {
        // The units line (and anything else without a duration) has no number there.
        let Some(ns) = number(&row, time) else {
            continue;
        };
        let kernel = row[name].split('(').next().unwrap_or_default().to_string();
        let size = row.get(grid).cloned().unwrap_or_default();
        let entry = by_kernel
            .entry((kernel.clone(), size.clone()))
            .or_insert(KernelProfile {
                kernel,
                grid: size,
                launches: 0,
                total_ns: 0.0,
                dram_pct: 0.0,
                sm_pct: 0.0,
            });
        entry.launches += 1;
        entry.total_ns += ns;
        entry.dram_pct += ns * number(&row, dram).unwrap_or(0.0);
        entry.sm_pct += ns * number(&row, sm).unwrap_or(0.0);
    }
    let mut kernels: Vec<KernelProfile> = by_kernel
        .into_values()
        .map(|mut k| {
            if k.total_ns > 0.0 {
                k.dram_pct /= k.total_ns;
                k.sm_pct /= k.total_ns;
            }
            k
        })
        .collect();
    kernels.sort_by(|a, b| b.total_ns.total_cmp(&a.total_ns));
    kernels
}

/// What a profile covered: the report section's title and the sentence that says what ran.
#[derive(Debug, Clone, Copy)]
pub struct Profiled {
    /// The section title.
    pub title: &'static str,
    /// What ran under the profiler.
    pub what: &'static str,
}

/// The kernels bench in criterion's test mode.
pub const KERNELS_BENCH: Profiled = Profiled {
    title: "Kernels under Nsight Compute",
    what: "The kernels bench in test mode (each rule once per shape, both shapes)",
};

/// One TopK training step of the step bench, with the set-up before it.
pub const ONE_STEP: Profiled = Profiled {
    title: "One training step under Nsight Compute",
    what: "The step bench in test mode filtered to `train_step/step_topk$` (the model's \
           initialisation, then one TopK step on the device path: GEMM, selection, the step's \
           kernels)",
};

/// The report section for the profiled kernels.
pub fn markdown(kernels: &[KernelProfile], profiled: Profiled) -> String {
    if kernels.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "\n## {}\n\n{}, every launch profiled with the clocks left as they are. Shares \
         are of the peak the device sustains, time-weighted over launches.\n\n\
         | kernel | grid | launches | time | DRAM % of peak | SM % of peak |\n\
         |---|---:|---:|---:|---:|---:|\n",
        profiled.title, profiled.what
    );
    for k in kernels {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0}% | {:.0}% |",
            k.kernel,
            k.grid,
            k.launches,
            format_time(k.total_ns),
            k.dram_pct,
            k.sm_pct
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_keep_quoted_commas_and_quotes() {
        assert_eq!(
            split_csv(r#""a","b, c","say ""hi""",4"#),
            vec!["a", "b, c", "say \"hi\"", "4"]
        );
    }

    #[test]
    fn launches_are_summed_per_kernel_and_grid() {
        let text = "==PROF== Connected to process\n\
            \"ID\",\"Kernel Name\",\"gpu__time_duration.sum\",\"dram__throughput.avg.pct_of_peak_sustained_elapsed\",\"sm__throughput.avg.pct_of_peak_sustained_elapsed\",\"launch__grid_size\"\n\
            \"\",\"\",\"nsecond\",\"%\",\"%\",\"\"\n\
            \"0\",\"select_groups(Array<f32>, ...)\",\"1,000\",\"80\",\"10\",\"4096\"\n\
            \"1\",\"select_groups(Array<f32>, ...)\",\"3,000\",\"40\",\"30\",\"4096\"\n\
            \"2\",\"row_compact\",\"500\",\"20\",\"5\",\"4096\"\n\
            \"3\",\"select_groups(Array<f32>, ...)\",\"7000\",\"50\",\"50\",\"16384\"\n";
        let k = parse(text);
        assert_eq!(k.len(), 3);
        assert_eq!(
            (k[0].kernel.as_str(), k[0].grid.as_str()),
            ("select_groups", "16384")
        );
        assert_eq!((k[1].launches, k[1].total_ns), (2, 4000.0));
        // Time-weighted: (1000 * 80 + 3000 * 40) / 4000 = 50.
        assert_eq!((k[1].dram_pct, k[1].sm_pct), (50.0, 25.0));
        assert_eq!(k[2].kernel, "row_compact");
        let md = markdown(&k, ONE_STEP);
        assert!(md.contains("| select_groups | 4096 | 2 | 4.000 µs | 50% | 25% |"));
        assert!(md.contains("## One training step under Nsight Compute"));
        assert!(parse("no csv here").is_empty());
        assert_eq!(markdown(&[], KERNELS_BENCH), "", "no profile, no section");
    }
}
