//! `cargo xtask repro --smoke` end to end against the real `sae` binary: every run of the
//! synthetic grid trains, and `results.md` has its table, claims and plot links.
//!
//! The binary is the one `cargo test --workspace` builds beside this crate's (sae-cli's own
//! tests need it); `SAE_BIN` overrides it. Everything is written to a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;

fn sae_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SAE_BIN") {
        return bin.into();
    }
    let xtask = Path::new(env!("CARGO_BIN_EXE_xtask"));
    let bin = xtask.with_file_name(format!("sae{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} not found: build it first (`cargo build -p sae-cli`) or set SAE_BIN",
        bin.display()
    );
    bin
}

#[test]
fn repro_smoke_writes_a_well_formed_results_table() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["repro", "--smoke", "--seeds", "1", "--data", "synthetic"])
        .arg("--sae-bin")
        .arg(sae_bin())
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(md.contains("## synthetic (known dictionary)"));
    assert!(md.contains("## Paper claims"));
    let table: Vec<&str> = md
        .lines()
        .skip_while(|l| !l.starts_with("| sparsifier |"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    // Header, rule, then one row per sparsifier x auxiliary loss.
    assert_eq!(table.len(), 2 + 4 * 3, "{md}");
    let columns = table[0].matches('|').count();
    for row in &table[2..] {
        assert_eq!(row.matches('|').count(), columns, "{row}");
        assert!(!row.contains("NaN"), "{row}");
        let link = row
            .rsplit("](")
            .next()
            .unwrap()
            .trim_end_matches([')', '|', ' ']);
        let report = out.path().join(link);
        assert!(report.is_file(), "{row}: {} missing", report.display());
        assert!(report.with_file_name("fvu.png").is_file());
    }
}
