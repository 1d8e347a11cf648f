//! The command line, without the trainer: argument errors and a dry run of the repro grid.

use std::process::Command;

fn xtask(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn unknown_commands_and_flags_fail_with_usage() {
    let out = xtask(&["bogus"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("usage: cargo xtask") && err.contains("unknown command `bogus`"));
    let out = xtask(&["repro", "--data", "imaginary", "--dry-run"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data must be"));
    assert!(!xtask(&["release", "--now"]).status.success());
}

#[test]
fn repro_dry_run_prints_one_command_per_configuration() {
    let out = xtask(&[
        "repro",
        "--quick",
        "--dry-run",
        "--data",
        "synthetic",
        "--seeds",
        "2",
        "--backend",
        "wgpu",
        "--sae-bin",
        "/opt/sae",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = stdout.lines().collect();
    // 4 sparsifiers x 3 auxiliary losses x 2 seeds.
    assert_eq!(commands.len(), 24, "{stdout}");
    for command in &commands {
        assert!(
            command.starts_with("/opt/sae train --quiet --config "),
            "{command}"
        );
        assert!(
            command.contains("--set out_dir=\"") && command.ends_with("--set backend=\"wgpu\"")
        );
    }
    assert!(
        commands
            .iter()
            .any(|c| c.contains("/synthetic/fc_zipf+aux_zipf/seed-1\""))
    );
}
