//! End to end: `xtask repro --quick` on the synthetic data with a built `sae` binary.
//!
//! Ignored by default: it needs the trainer's binary and a few minutes. Run it with
//!
//! ```sh
//! cargo build --release -p sae-cli
//! SAE_BIN=$PWD/target/release/sae cargo test -p xtask --test repro_quick -- --ignored
//! ```
//!
//! It overwrites `target/repro/` and `docs/results.md`.

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "needs the sae binary (set SAE_BIN) and minutes of CPU"]
fn repro_quick_writes_results() {
    let sae = std::env::var("SAE_BIN").expect("SAE_BIN must point to the built sae binary");
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "repro",
            "--quick",
            "--seeds",
            "1",
            "--data",
            "synthetic",
            "--sae-bin",
        ])
        .arg(&sae)
        .status()
        .unwrap();
    assert!(status.success());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let md = std::fs::read_to_string(root.join("docs/results.md")).unwrap();
    assert!(md.contains("## synthetic (known dictionary)"));
    assert!(md.contains("## Paper claims"));
    assert!(
        root.join("target/repro/synthetic/mc/seed-0/report/fvu.png")
            .is_file()
    );
}
