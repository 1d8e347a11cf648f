//! Workspace automation, run as `cargo xtask <command>`:
//!
//! - `ci`: formatting, lints, tests, doc tests and a smoke run of `sae train`;
//! - `bench [--quick] [--backend B] [--profile P] [--peers]`: criterion benches, summarised in
//!   `docs/benchmarks.md`, with PyTorch and sparsify timed beside them under `--peers`;
//! - `repro [--quick | --wide | --smoke] [--seeds N] [--data synthetic|real|both] [--sae-bin PATH]
//!   [--out DIR]`: the paper's comparison, summarised in `docs/results.md`;
//! - `release`: metadata and changelog checks and a dry-run packaging, never a publish;
//! - `gpu-bundle [--cuda-version V]`: the CUDA tests and benches as stripped binaries in
//!   `gpu-bundle/`, for a GPU machine without a Rust toolchain;
//! - `gpu-run --out DIR [...]` (options in `USAGE`): runs them there (and profiles the kernels
//!   and one training step with Nsight Compute where `ncu` is found) and writes
//!   `DIR/gpu-report.md`.

mod bench;
mod ci;
mod flags;
mod gpu;
mod release;
mod repro;
mod shell;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  ci                                   fmt, clippy, tests, doc tests, smoke run of `sae train`
  bench [--quick] [--backend B] [--profile P] [--criterion-dir DIR] [--peers]
                                       cargo bench (or summarise DIR without running);
                                       writes docs/benchmarks.{md,json}; --peers times
                                       PyTorch and sparsify first ($SAE_PEERS_PYTHON,
                                       default python3) and compares
  repro [--quick | --wide | --smoke] [--seeds N] [--data synthetic|real|both] [--backend B]
        [--sae-bin PATH] [--out DIR] [--dry-run]
                                       the paper's comparison; writes docs/results.md
                                       (or DIR/results.md, runs under DIR/runs); --wide:
                                       a 16x dictionary where features die
                                       (docs/wide/results.md by convention)
  release                              check crate metadata and CHANGELOG, dry-run packaging
  gpu-bundle [--cuda-version V]        build the CUDA tests and benches into gpu-bundle/
                                       (V: CUDARC_CUDA_VERSION, default 13000)
  gpu-run --out DIR [--bundle DIR] [--no-bench] [--no-tests] [--filter RE] [--no-ncu] [--peak-gbs X] [--budget S]
                                       on a GPU machine: run the bundle's CUDA tests and
                                       benches, and profile the kernels with ncu, within S
                                       seconds (default 540); write DIR/gpu-report.{md,json}
";

fn main() -> Result<()> {
    let mut args = flags::Args::new(std::env::args().skip(1));
    let Some(command) = args.command() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    match command.as_str() {
        "ci" => {
            args.finish()?;
            ci::run()
        }
        "bench" => {
            let options = bench::Options {
                quick: args.switch("--quick"),
                backend: args.value("--backend")?,
                profile: args.value("--profile")?,
                criterion_dir: args.value("--criterion-dir")?.map(Into::into),
                peers: args.switch("--peers").then(|| {
                    std::env::var("SAE_PEERS_PYTHON").unwrap_or_else(|_| "python3".into())
                }),
            };
            args.finish()?;
            bench::run(&options)
        }
        "repro" => {
            let quick = args.switch("--quick");
            let wide = args.switch("--wide");
            let smoke = args.switch("--smoke");
            let out = args.value("--out")?.map(Into::into);
            let seeds = args.value("--seeds")?.map(|s| s.parse()).transpose()?;
            let data = args
                .value("--data")?
                .map(|d| d.parse())
                .transpose()?
                .unwrap_or(repro::DataChoice::Both);
            let sae_bin = args.value("--sae-bin")?.map(Into::into);
            let dry_run = args.switch("--dry-run");
            let backend = args.value("--backend")?;
            args.finish()?;
            repro::run(&repro::Options {
                quick,
                wide,
                smoke,
                out,
                seeds: seeds.unwrap_or(if quick { 1 } else { 3 }),
                data,
                sae_bin,
                dry_run,
                backend,
            })
        }
        "release" => {
            args.finish()?;
            release::run()
        }
        "gpu-bundle" => {
            let cuda_version = args
                .value("--cuda-version")?
                .unwrap_or_else(|| "13000".into());
            args.finish()?;
            gpu::bundle(&gpu::BundleOptions { cuda_version })
        }
        "gpu-run" => {
            let Some(out) = args.value("--out")? else {
                bail!("gpu-run needs --out DIR");
            };
            let options = gpu::RunOptions {
                out: out.into(),
                bundle: args.value("--bundle")?.map(Into::into),
                no_bench: args.switch("--no-bench"),
                no_tests: args.switch("--no-tests"),
                filter: args.value("--filter")?,
                peak_gbs: args
                    .value("--peak-gbs")?
                    .map(|v| v.parse())
                    .transpose()
                    .context("--peak-gbs must be a number")?,
                budget_s: args
                    .value("--budget")?
                    .map(|v| v.parse())
                    .transpose()
                    .context("--budget must be a number of seconds")?
                    .unwrap_or(540),
                no_ncu: args.switch("--no-ncu"),
            };
            args.finish()?;
            gpu::run(&options)
        }
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}
