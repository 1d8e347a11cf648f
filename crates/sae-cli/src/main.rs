//! `sae`: train, evaluate, export and inspect sparse autoencoders.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use sae_model::Registry;
use sae_train::peers::NodeLaunch;
use sae_train::state::OnCorrupt;
use sae_train::{EvalData, EvalReport, NativeModel, RunConfig, TrainOptions, TrainSummary};

/// mimalloc keeps freed pages for reuse; with glibc every large batch-sized buffer is mapped,
/// faulted in and unmapped afresh at each step.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "sae",
    version,
    about = "Sparse autoencoders with TopK, Mutual Choice and Feature Choice allocation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train an SAE (default: the built-in synthetic ground truth).
    Train {
        /// TOML configuration; defaults are used for everything it does not set.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a field, e.g. `--set sparsifier.k=64` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Continue the run in this directory from its newest checkpoint.
        #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
        resume: Option<PathBuf>,
        /// Start afresh even though `out_dir` holds a run: that run's files are removed first.
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
        /// With `--resume`: when the newest checkpoint fails verification, continue from the
        /// newest one that verifies (the corrupt ones are kept aside as `*.corrupt`).
        #[arg(long, requires = "resume")]
        fallback: bool,
        /// With `--resume`: continue even though the data files changed since the run started.
        #[arg(long, requires = "resume")]
        allow_data_change: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// This machine's position in a run over several machines (`distributed.nodes`):
        /// `0..nodes`; machine `i` trains on the `i`-th share of every batch.
        #[arg(long, requires_all = ["node_address", "orchestrator"])]
        node: Option<usize>,
        /// With `--node`: where the other machines reach this one, `ws://HOST:PORT` (this
        /// machine serves its share of the sums on PORT).
        #[arg(long, value_name = "ADDRESS", requires = "node")]
        node_address: Option<String>,
        /// With `--node`: the address of `sae orchestrator`, `ws://HOST:PORT`.
        #[arg(long, value_name = "ADDRESS", requires = "node")]
        orchestrator: Option<String>,
    },
    /// Serve as the meeting point of the machines of a run over several machines
    /// (`distributed.nodes`) until stopped; start it first. It serves one launch at a time,
    /// launch after launch (a resume, the next run).
    Orchestrator {
        /// The port to listen on, on every interface of this machine (1-65535).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
    },
    /// Evaluate a run's newest checkpoint on its held-out data, or on files of your own.
    Eval {
        /// The run directory.
        run_dir: PathBuf,
        /// Tokens to evaluate, each row at most once (default: the run's `train.eval_tokens`;
        /// fewer when the data holds fewer rows).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        tokens: Option<u64>,
        /// Evaluate on these activation files (a file, a directory or a glob, as `data.path`
        /// takes) instead of the run's held-out split; read with the run's normaliser.
        #[arg(long)]
        data: Option<PathBuf>,
        /// The tensor to read from `--data` (default: the run's `data.tensor`).
        #[arg(long, requires = "data")]
        tensor: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export a run's model.
    Export {
        /// The run directory (its `model/`), or a native model directory.
        source: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Saelens)]
        format: Format,
        /// Output directory (refused when it is not empty, unless `--overwrite`).
        #[arg(long)]
        out: PathBuf,
        /// Write into a non-empty output directory, replacing the files of the export.
        #[arg(long)]
        overwrite: bool,
    },
    /// Convert a SAELens SAE directory into the native format.
    Import {
        /// SAELens directory (cfg.json, sae_weights.safetensors).
        source: PathBuf,
        /// Output directory of the native model (refused when it is not empty, unless
        /// `--overwrite`).
        #[arg(long)]
        out: PathBuf,
        /// Write into a non-empty output directory, replacing the model's files.
        #[arg(long)]
        overwrite: bool,
    },
    /// Plot a run's metrics (PNG) and summarise them in `RUN_DIR/report/report.md`.
    Report {
        /// The run directory.
        run_dir: PathBuf,
        /// Output directory (default: `RUN_DIR/report`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print a model's configuration and feature statistics.
    Inspect {
        /// A run directory or a native model directory.
        path: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// SAELens v6 layout (cfg.json, sae_weights.safetensors, sparsity.safetensors).
    Saelens,
    /// This project's format (sae.json, sae.safetensors).
    Native,
}

fn registry() -> Registry {
    let mut registry = Registry::with_builtins();
    sae_sparsifier_abstopk::register(&mut registry);
    registry
}

fn main() -> Result<()> {
    // The collective engine logs every tensor transfer at `info` (and installs a logger for
    // that unless one is there): warnings and errors only, on stderr.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .try_init();
    match Cli::parse().command {
        Command::Train {
            config,
            overrides,
            resume,
            overwrite,
            fallback,
            allow_data_change,
            quiet,
            node,
            node_address,
            orchestrator,
        } => {
            let options = TrainOptions {
                registry: registry(),
                resume: resume.is_some(),
                overwrite,
                on_corrupt: if fallback {
                    OnCorrupt::FallBack
                } else {
                    OnCorrupt::Fail
                },
                allow_data_change,
                progress: !quiet,
                stop: Arc::new(AtomicBool::new(false)),
                notice: |message| eprintln!("note: {message}"),
                node: node.map(|node| NodeLaunch {
                    node,
                    address: node_address.unwrap_or_default(),
                    orchestrator: orchestrator.unwrap_or_default(),
                }),
            };
            train(config, overrides, resume, options)
        }
        Command::Orchestrator { port } => orchestrator(port),
        Command::Eval {
            run_dir,
            tokens,
            data,
            tensor,
            json,
        } => eval(&run_dir, tokens, data, tensor, json),
        Command::Export {
            source,
            format,
            out,
            overwrite,
        } => {
            let model = read_native(&source)?;
            if let Some(stop) = model.meta.interrupted {
                eprintln!(
                    "note: {} is a partial model: its run was interrupted at step {} of {}",
                    source.display(),
                    stop.step,
                    stop.total_steps
                );
            }
            refuse_non_empty(&out, overwrite)?;
            match format {
                Format::Saelens => model.write_saelens(&out),
                Format::Native => model.write(&out),
            }
            .with_context(|| format!("writing {}", out.display()))?;
            println!("exported {} to {}", source.display(), out.display());
            Ok(())
        }
        Command::Import {
            source,
            out,
            overwrite,
        } => {
            if !source.join("cfg.json").exists() && model_dir(&source).join("sae.json").exists() {
                bail!(
                    "{} holds a model of this project (sae.json), not a SAELens SAE: \
                     `sae inspect` and `sae export` read it as it is",
                    source.display()
                );
            }
            let model = NativeModel::read_saelens(&source)
                .with_context(|| format!("reading SAELens SAE {}", source.display()))?;
            refuse_non_empty(&out, overwrite)?;
            model
                .write(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("imported {} to {}", source.display(), out.display());
            Ok(())
        }
        Command::Report { run_dir, out } => {
            let out = out.unwrap_or_else(|| run_dir.join(sae_report::REPORT_DIR));
            let report = sae_report::write_report(&run_dir, &out)
                .with_context(|| format!("reporting on {}", run_dir.display()))?;
            println!(
                "{} ({} plots)",
                report.markdown.display(),
                report.plots.len()
            );
            Ok(())
        }
        Command::Inspect { path } => inspect(&path),
    }
}

/// Serves burn-collective's global orchestrator on `port` until Ctrl-C.
fn orchestrator(port: u16) -> Result<()> {
    sae_train::peers::can_listen(port).with_context(|| format!("cannot listen on port {port}"))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the orchestrator's runtime")?;
    eprintln!(
        "orchestrator on port {port}: start each machine's `sae train --node I --node-address \
         ws://THAT_MACHINE:PORT --orchestrator ws://THIS_MACHINE:{port}`; Ctrl-C stops it"
    );
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

/// An output directory must be new or empty unless the user asked to overwrite it.
fn refuse_non_empty(out: &Path, overwrite: bool) -> Result<()> {
    if overwrite {
        return Ok(());
    }
    if out.is_file() {
        bail!("{} is a file, not a directory", out.display());
    }
    let occupied = std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        bail!(
            "{} is not empty: choose another directory, or pass --overwrite to replace its files",
            out.display()
        );
    }
    Ok(())
}

fn model_dir(path: &Path) -> PathBuf {
    if path.join("model").is_dir() {
        path.join("model")
    } else {
        path.to_path_buf()
    }
}

/// The native model at `path` (a model directory, or a run directory holding one); where
/// there is none, the error says what `path` holds instead.
fn read_native(path: &Path) -> Result<NativeModel> {
    let dir = model_dir(path);
    if !dir.join("sae.json").exists() {
        if path.join("cfg.json").exists() {
            bail!(
                "{} is a SAELens SAE (cfg.json), not a model of this project: \
                 `sae import {} --out DIR` converts it",
                path.display(),
                path.display()
            );
        }
        if path.join("checkpoints").is_dir() {
            bail!(
                "{} holds a run without a model yet (still running, or stopped before writing \
                 one): `sae train --resume {}` finishes it, `sae eval` evaluates its newest \
                 checkpoint",
                path.display(),
                path.display()
            );
        }
    }
    NativeModel::read(&dir).with_context(|| format!("reading the model of {}", path.display()))
}

fn train(
    config: Option<PathBuf>,
    overrides: Vec<String>,
    resume: Option<PathBuf>,
    options: TrainOptions,
) -> Result<()> {
    let config = match resume {
        Some(dir) => {
            if !overrides.is_empty() {
                bail!(
                    "--set cannot change a resumed run (its configuration is stored in its checkpoints)"
                );
            }
            sae_train::resume_config(&dir).with_context(|| format!("resuming {}", dir.display()))?
        }
        None => RunConfig::load(config.as_deref(), &overrides)?,
    };
    // Ctrl-C and SIGTERM (how schedulers stop jobs) both stop after the current step with a
    // checkpoint; a second one leaves at once.
    let flag = options.stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step; writing a checkpoint (signal again to abort)");
    })
    .context("installing the Ctrl-C / SIGTERM handler")?;
    let out_dir = config.out_dir.clone();
    eprintln!(
        "training {} on {:?} data with backend {:?} -> {}",
        config.sparsifier,
        config.data.source,
        config.backend,
        out_dir.display()
    );
    let summary = sae_train::train(config, &options).context("training failed")?;
    print_summary(&summary);
    if summary.interrupted {
        println!(
            "interrupted: the model is partial; continue with `sae train --resume {}`",
            out_dir.display()
        );
    }
    Ok(())
}

fn print_summary(s: &TrainSummary) {
    println!();
    println!("{:<34} {:>12}", "steps", s.steps);
    println!("{:<34} {:>12}", "tokens", s.tokens);
    println!("{:<34} {:>12.0}", "tokens / s", s.tokens_per_second);
    match &s.eval {
        Some(e) => print_eval(e),
        None if s.interrupted => println!("held-out evaluation skipped: the run was interrupted"),
        None => println!("held-out evaluation skipped: data.heldout_fraction = 0"),
    }
    println!("model: {}", s.model_dir.display());
}

fn print_eval(e: &EvalReport) {
    let percent = |f: f64| format!("{:.1}%", 100.0 * f);
    let mut rows: Vec<(&str, String, String)> = Vec::new();
    let asked = if e.eval_tokens < e.requested_tokens {
        format!("every row once; {} asked for", e.requested_tokens)
    } else {
        "held-out tokens, each row once".into()
    };
    rows.push(("tokens evaluated", e.eval_tokens.to_string(), asked));
    rows.push((
        "held-out FVU (batch selection)",
        format!("{:.4}", e.batch.fvu),
        "variance of the input the reconstruction misses (0 is perfect)".into(),
    ));
    if let Some(i) = &e.inference {
        rows.push((
            "held-out FVU (inference)",
            format!("{:.4}", i.fvu),
            "the same, one token at a time (thresholds, no batch)".into(),
        ));
        rows.push((
            "L0 mean (inference)",
            format!("{:.2}", i.l0_mean),
            "features active per token, one token at a time".into(),
        ));
    }
    rows.push((
        "L0 mean ± std (batch)",
        format!("{:.2} ± {:.2}", e.batch.l0_mean, e.batch.l0_std),
        "features active per token under the training rule".into(),
    ));
    rows.push((
        "dead in training (dead window)",
        percent(e.dead_in_training_fraction),
        "features that stopped firing during training".into(),
    ));
    rows.push((
        "dead on the evaluated tokens",
        percent(e.dead_on_eval_fraction),
        "features that fired on none of them".into(),
    ));
    rows.push((
        "under-used features",
        percent(e.underused_fraction),
        "firing less often than their Zipf target".into(),
    ));
    if let (Some(m), Some(r)) = (e.mmcs, e.recovered) {
        rows.push((
            "MMCS to the true dictionary",
            format!("{m:.3}"),
            "mean over true features of the best cosine to a learned one (1 is exact)".into(),
        ));
        rows.push((
            "true features recovered (>0.9)",
            percent(r),
            "true features some learned feature matches with cosine > 0.9".into(),
        ));
    }
    for (name, value, meaning) in rows {
        println!("{name:<32} {value:>14}   {meaning}");
    }
    if let Some(bands) = &e.recovery_by_frequency {
        println!("recovered by how often the true feature fires (most frequent first):");
        for band in bands {
            println!(
                "  fires on {:>6.2}% to {:>6.2}% of samples ({:>3} features) {:>14.1}%",
                100.0 * band.max_probability,
                100.0 * band.min_probability,
                band.features,
                100.0 * band.recovered
            );
        }
    }
}

fn eval(
    run_dir: &Path,
    tokens: Option<u64>,
    data: Option<PathBuf>,
    tensor: Option<String>,
    json: bool,
) -> Result<()> {
    let mut config = sae_train::resume_config(run_dir)
        .with_context(|| format!("opening run {}", run_dir.display()))?;
    if let Some(t) = tokens {
        config.train.eval_tokens = t;
    }
    let on = match data {
        Some(path) => EvalData::Files {
            path,
            tensor: tensor.unwrap_or_else(|| config.data.tensor.clone()),
        },
        None => EvalData::HeldOut,
    };
    let report = sae_train::trainer::evaluate_run(&config, &registry(), &on)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match &on {
            EvalData::HeldOut => println!("evaluated on the run's held-out rows"),
            EvalData::Files { path, tensor } => {
                println!("evaluated on {} (tensor `{tensor}`)", path.display())
            }
        }
        print_eval(&report);
    }
    Ok(())
}

fn inspect(path: &Path) -> Result<()> {
    let model = read_native(path)?;
    let m = &model.meta;
    println!("d_model      {}", m.d_model);
    println!("features     {}", m.features);
    println!("sparsifier   {}", m.sparsifier);
    println!(
        "normalizer   scale {} centred {}",
        m.normalizer.scale,
        m.normalizer.mean.is_some()
    );
    println!(
        "thresholds   {}",
        if m.has_thresholds {
            "per feature"
        } else {
            "none (per-token rule)"
        }
    );
    match m.interrupted {
        Some(stop) => println!(
            "status       partial: the run was interrupted at step {} of {}",
            stop.step, stop.total_steps
        ),
        None => println!("status       complete"),
    }
    let mut density = model.density.clone();
    density.sort_by(f32::total_cmp);
    if let (Some(min), Some(max)) = (density.first(), density.last()) {
        println!(
            "density      min {min:.2e}  median {:.2e}  max {max:.2e}",
            density[(density.len() - 1) / 2]
        );
    }
    println!(
        "never fired  {}",
        model.density.iter().filter(|&&d| d == 0.0).count()
    );
    Ok(())
}
