//! `cargo xtask bench --peers`: PyTorch and EleutherAI sparsify timed on the step bench's
//! shape right before the project's benches (`benches/peers/peers.py`), and compared with the
//! project's figures of the same run in `docs/benchmarks.md`.
//!
//! The peers are optional: where the Python has no torch, the comparison is skipped with a
//! notice; where it has torch but no sparsify, the step comparison is left out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Bench, format_time};
use crate::shell::root;

/// Exit status of `peers.py` when its Python has no torch.
const NO_TORCH: i32 = 3;

/// The bench shape, as the step bench reads it from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub n: usize,
    pub d: usize,
    pub f: usize,
    pub k: usize,
}

impl Shape {
    /// `SAE_BENCH_N`, `_D`, `_F`, `_K`, with the step bench's defaults.
    pub fn from_env() -> Self {
        let var = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            n: var("SAE_BENCH_N", 4096),
            d: var("SAE_BENCH_D", 384),
            f: var("SAE_BENCH_F", 16384),
            k: var("SAE_BENCH_K", 32),
        }
    }
}

/// What `peers.py` writes: versions, threads and median seconds per measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerTimes {
    pub shape: Shape,
    pub torch: String,
    #[serde(default)]
    pub sparsify: Option<String>,
    pub threads: usize,
    pub repeats: usize,
    pub seconds: BTreeMap<String, f64>,
}

/// Runs `peers.py` with `python` on `shape`, writing its JSON to `out`. `None`, after a
/// notice, where the Python or its torch is missing.
pub fn measure(python: &str, shape: Shape, out: &Path) -> Result<Option<PeerTimes>> {
    let script = root().join("benches/peers/peers.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg("--out").arg(out);
    for (flag, value) in [
        ("--n", shape.n),
        ("--d", shape.d),
        ("--f", shape.f),
        ("--k", shape.k),
    ] {
        cmd.arg(flag).arg(value.to_string());
    }
    eprintln!("peers: {python} {}", script.display());
    let status = match cmd.status() {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("peers: skipped, no {python} on this machine");
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("running {python}")),
    };
    match status.code() {
        Some(0) => {}
        Some(NO_TORCH) => {
            eprintln!("peers: skipped, {python} has no torch (pip install torch eai-sparsify)");
            return Ok(None);
        }
        _ => bail!("{} failed ({status})", script.display()),
    }
    let text = std::fs::read_to_string(out).with_context(|| out.display().to_string())?;
    let times: PeerTimes = serde_json::from_str(&text)
        .with_context(|| format!("{}: not what peers.py writes", out.display()))?;
    if times.shape != shape {
        bail!(
            "{}: measured {:?}, not {shape:?}",
            out.display(),
            times.shape
        );
    }
    Ok(Some(times))
}

/// One comparison: our benchmark, the peer's measurement, and the target speed-up.
struct Pair {
    what: &'static str,
    ours: &'static str,
    peer: &'static str,
    /// Peer time / our time that the project aims at.
    target: f64,
}

const PAIRS: [Pair; 5] = [
    Pair {
        what: "encoder GEMM",
        ours: "train_step/gemm_encoder",
        peer: "torch_gemm",
        target: 1.0,
    },
    Pair {
        what: "TopK training step (tokens/s)",
        ours: "train_step/step_topk",
        peer: "sparsify_step",
        target: 1.5,
    },
    Pair {
        what: "row selection (TopK)",
        ours: "select_k/row_topk",
        peer: "torch_topk_row",
        target: 2.0,
    },
    Pair {
        what: "global selection (Mutual Choice)",
        ours: "select_k/global_topk",
        peer: "torch_topk_global",
        target: 10.0,
    },
    Pair {
        what: "column selection (Feature Choice)",
        ours: "select_k/column_topm",
        peer: "torch_topk_column",
        target: 4.0,
    },
];

/// The `## Peers` section: each comparison whose two sides were both measured.
pub fn markdown(peers: &PeerTimes, benches: &[Bench]) -> String {
    let Shape { n, d, f, k } = peers.shape;
    let mut md = format!(
        "\n## Peers\n\nPyTorch {} ({} threads){}, timed by `benches/peers/peers.py` right before \
         the benches above, at N={n}, d={d}, F={f}, k={k}: median of {} runs (ours: criterion's \
         mean). Speed-up = peer time / our time (above 1: we are faster); the target is the \
         project's.\n\n| what | ours | peer | peer time | speed-up | target |\n\
         |---|---|---|---:|---:|---:|\n",
        peers.torch,
        peers.threads,
        peers
            .sparsify
            .as_ref()
            .map_or(String::new(), |v| format!(", sparsify {v}")),
        peers.repeats,
    );
    for pair in &PAIRS {
        let ours = benches.iter().find(|b| b.id() == pair.ours);
        let (Some(ours), Some(&peer)) = (ours, peers.seconds.get(pair.peer)) else {
            continue;
        };
        let speedup = peer * 1e9 / ours.mean_ns;
        let _ = writeln!(
            md,
            "| {} | `{}` {} | `{}` | {} | {speedup:.2}× | {} {:.1}× |",
            pair.what,
            pair.ours,
            format_time(ours.mean_ns),
            pair.peer,
            format_time(peer * 1e9),
            if speedup >= pair.target {
                "met:"
            } else {
                "**not met**:"
            },
            pair.target,
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(id: &str, mean_ns: f64) -> Bench {
        let (group, function) = id.split_once('/').unwrap();
        Bench::with_mean(group, function, mean_ns)
    }

    #[test]
    fn compares_what_both_sides_measured_against_the_targets() {
        let peers = PeerTimes {
            shape: Shape {
                n: 8,
                d: 4,
                f: 16,
                k: 2,
            },
            torch: "2.0".into(),
            sparsify: None,
            threads: 2,
            repeats: 7,
            seconds: [("torch_gemm", 0.2), ("torch_topk_row", 0.03)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        };
        let benches = [
            bench("train_step/gemm_encoder", 0.16e9),
            bench("select_k/row_topk", 0.02e9),
            bench("select_k/global_topk", 0.01e9),
        ];
        let md = markdown(&peers, &benches);
        assert!(md.contains("PyTorch 2.0 (2 threads), timed"), "{md}");
        assert!(
            md.contains("| encoder GEMM | `train_step/gemm_encoder` 160.000 ms | `torch_gemm` | 200.000 ms | 1.25× | met: 1.0× |"),
            "{md}"
        );
        assert!(md.contains("| 1.50× | **not met**: 2.0× |"), "{md}");
        // No peer time for the global rule, no bench for the step: both rows left out.
        assert!(!md.contains("global selection") && !md.contains("training step"));
    }

    #[test]
    fn reads_what_the_script_writes() {
        let json = r#"{"shape": {"n": 8, "d": 4, "f": 16, "k": 2}, "torch": "2.15.0",
            "threads": 2, "repeats": 7, "seconds": {"torch_gemm": 0.2},
            "samples": {"torch_gemm": [0.2]}, "sparsify": "1.3.3"}"#;
        let times: PeerTimes = serde_json::from_str(json).unwrap();
        assert_eq!(times.sparsify.as_deref(), Some("1.3.3"));
        assert_eq!(times.seconds["torch_gemm"], 0.2);
    }
}
