//! The training loop: batches, steps, schedule, metrics, evaluation and checkpoints.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use sae_model::{AuxLoss, Registry, Sae, SaeConfig, SaeError, TrainStep, sample_mean};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::{Checkpoints, write_atomic};
use crate::config::{BackendKind, RunConfig};
use crate::data::Activations;
use crate::eval::{EvalReport, evaluate};
use crate::export::write_native;
use crate::metrics::{MetricsLog, MetricsRecord};
use crate::schedule::lr_factor;
use crate::state::Checkpoint;
use crate::tensor::to_device;

/// How a run is driven, beyond its configuration.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Sparsifiers that configurations may name.
    pub registry: Registry,
    /// Continue from the newest checkpoint in `out_dir` instead of starting afresh.
    pub resume: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            registry: Registry::with_builtins(),
            resume: false,
            progress: false,
            stop: Arc::default(),
        }
    }
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimizer steps taken in total.
    pub steps: u64,
    /// Training tokens seen in total.
    pub tokens: u64,
    /// Wall-clock seconds of this invocation's training.
    pub seconds: f64,
    /// Training throughput of this invocation.
    pub tokens_per_second: f64,
    /// Held-out evaluation of the final model.
    pub eval: EvalReport,
    /// Where the final model was written (native format).
    pub model_dir: PathBuf,
    /// True when the run was stopped before its end.
    pub interrupted: bool,
}

/// Loads the configuration stored with the newest checkpoint of a run directory.
pub fn resume_config(out_dir: &std::path::Path) -> Result<RunConfig, TrainError> {
    let (_, dir) =
        Checkpoints::new(out_dir, 1)
            .latest()?
            .ok_or_else(|| TrainError::Checkpoint {
                path: out_dir.join("checkpoints"),
                reason: "no checkpoint to resume from".into(),
            })?;
    let mut config = Checkpoint::read(&dir)?.run.config;
    config.out_dir = out_dir.to_path_buf();
    Ok(config)
}

/// Runs `$body` with `$B` bound to the autodiff backend that `$kind` names.
macro_rules! with_backend {
    ($kind:expr, $B:ident => $body:expr) => {{
        use burn::backend::Autodiff;
        match $kind {
            BackendKind::Flex => {
                type $B = Autodiff<burn::backend::Flex>;
                $body
            }
            BackendKind::Ndarray => {
                type $B = Autodiff<burn::backend::NdArray>;
                $body
            }
            BackendKind::Wgpu => {
                type $B = Autodiff<burn::backend::Wgpu>;
                $body
            }
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => {
                type $B = Autodiff<burn::backend::Cuda>;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            BackendKind::Cuda => Err(TrainError::BackendUnavailable("cuda")),
        }
    }};
}

/// Trains as `config` says, on the backend it names.
pub fn train(config: RunConfig, options: &TrainOptions) -> Result<TrainSummary, TrainError> {
    with_backend!(config.backend, B => train_on::<B>(config, options, Default::default()))
}

/// Evaluates the newest checkpoint of the run `config` describes on its held-out data.
pub fn evaluate_run(config: &RunConfig, registry: &Registry) -> Result<EvalReport, TrainError> {
    with_backend!(config.backend, B => evaluate_checkpoint::<B>(config, registry, Default::default()))
}

fn evaluate_checkpoint<B: AutodiffBackend>(
    config: &RunConfig,
    registry: &Registry,
    device: B::Device,
) -> Result<EvalReport, TrainError> {
    let (_, dir) = Checkpoints::new(&config.out_dir, 1)
        .latest()?
        .ok_or_else(|| TrainError::Checkpoint {
            path: config.out_dir.join("checkpoints"),
            reason: "no checkpoint to evaluate".into(),
        })?;
    let ckpt = Checkpoint::read(&dir)?;
    let sparsifier = registry.build(&config.sparsifier)?;
    let step = TrainStep::<B>::from_state(
        &ckpt.train_state(),
        sparsifier,
        config.step.clone(),
        &device,
    )?;
    let mut acts = Activations::open(config)?;
    run_eval(
        &step,
        &mut acts,
        &ckpt.run.normalizer,
        config,
        zipf_exponent(config),
    )
}

fn zipf_exponent(config: &RunConfig) -> f64 {
    match config.step.aux {
        AuxLoss::AuxZipf { exponent } => exponent,
        _ => 1.0,
    }
}

/// Mean metrics over a logging window.
#[derive(Debug, Default)]
struct Window {
    steps: u32,
    loss: f64,
    fvu: f64,
    aux: f64,
    l0: f64,
}

fn crossed(tokens: u64, batch: u64, every: u64) -> bool {
    every > 0 && tokens / every > (tokens - batch) / every
}

/// Trains on backend `B`.
pub fn train_on<B: AutodiffBackend>(
    config: RunConfig,
    options: &TrainOptions,
    device: B::Device,
) -> Result<TrainSummary, TrainError> {
    let sparsifier = options.registry.build(&config.sparsifier)?;
    let mut acts = Activations::open(&config)?;
    let d = acts.d;
    let out_dir = config.out_dir.clone();
    let checkpoints = Checkpoints::new(&out_dir, config.train.keep_checkpoints);
    let (mut step, normalizer, mut tokens) = if options.resume {
        let (_, dir) = checkpoints
            .latest()?
            .ok_or_else(|| TrainError::Checkpoint {
                path: checkpoints.root().to_path_buf(),
                reason: "no checkpoint to resume from".into(),
            })?;
        let ckpt = Checkpoint::read(&dir)?;
        acts.train.restore(&ckpt.run.cursor)?;
        let step = TrainStep::<B>::from_state(
            &ckpt.train_state(),
            sparsifier,
            config.step.clone(),
            &device,
        )?;
        (step, ckpt.run.normalizer, ckpt.run.tokens)
    } else {
        let normalizer = acts.normalizer(&config)?;
        let mut sample = acts.sample.clone();
        normalizer.apply(&mut sample);
        let sae_config = SaeConfig {
            d_model: d,
            features: config.model.features(d),
            seed: config.seed,
        };
        let sae =
            Sae::<B::InnerBackend>::init(&sae_config, Some(&sample_mean(&sample, d)?), &device)?;
        std::fs::create_dir_all(&out_dir).map_err(|source| TrainError::Io {
            path: out_dir.clone(),
            source,
        })?;
        write_atomic(&out_dir.join("config.toml"), config.to_toml().as_bytes())?;
        (
            TrainStep::<B>::new(&sae, sparsifier, config.step.clone(), &device)?,
            normalizer,
            0,
        )
    };
    let mut metrics = MetricsLog::open(
        &out_dir.join("metrics.jsonl"),
        options.resume.then(|| step.step_count()),
    )?;
    let batch = config.train.batch_size;
    let total_steps = config.train.total_tokens / batch as u64;
    let zipf_exponent = zipf_exponent(&config);
    let peak_lr = step.lr();
    let bar = progress_bar(options.progress, total_steps, step.step_count());
    let started = Instant::now();
    let first_step = step.step_count();
    let mut window = Window::default();
    let mut x = Vec::new();
    let save = |step: &TrainStep<B>, tokens: u64, cursor| {
        let ckpt = Checkpoint::new(
            step.state(),
            tokens,
            cursor,
            normalizer.clone(),
            config.clone(),
        );
        checkpoints.save(step.step_count(), |dir| ckpt.write(dir))
    };
    let mut interrupted = false;
    while step.step_count() < total_steps {
        if options.stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        acts.train.next_batch(batch, &mut x)?;
        normalizer.apply(&mut x);
        step.set_lr(peak_lr * lr_factor(&config.schedule, tokens, config.train.total_tokens));
        let out = step
            .train_step(to_device::<B>(&x, batch, d, &device))
            .map_err(|e| match e {
                SaeError::NonFiniteLoss { .. }
                | SaeError::NonFiniteGradient { .. }
                | SaeError::NonFiniteInput => TrainError::Diverged {
                    step: step.step_count(),
                    source: e,
                    last_good: checkpoints.latest().ok().flatten().map(|(_, p)| p),
                },
                e => e.into(),
            })?;
        tokens += batch as u64;
        window.steps += 1;
        window.loss += f64::from(out.loss);
        window.fvu += f64::from(out.fvu);
        window.aux += f64::from(out.aux);
        window.l0 += f64::from(out.l0_mean);
        let n = step.step_count();
        if n % config.train.log_every_steps.max(1) == 0 || n == total_steps {
            let w = std::mem::take(&mut window);
            let k = f64::from(w.steps);
            let elapsed = started.elapsed().as_secs_f64();
            let rate = (n - first_step) as f64 * batch as f64 / elapsed;
            let values = serde_json::json!({
                "loss": w.loss / k, "fvu": w.fvu / k, "aux": w.aux / k, "l0": w.l0 / k,
                "dead_fraction": out.dead_fraction, "lr": step.lr(), "tokens_per_second": rate,
            });
            bar.set_position(n);
            bar.set_message(format!(
                "{rate:>7.0} tok/s  loss {:.4}  fvu {:.4}  L0 {:.1}  dead {:.1}%",
                w.loss / k,
                w.fvu / k,
                w.l0 / k,
                100.0 * out.dead_fraction
            ));
            metrics.write(&record("train", n, tokens, values))?;
        }
        if crossed(tokens, batch as u64, config.train.eval_every_tokens) && n < total_steps {
            let report = run_eval(&step, &mut acts, &normalizer, &config, zipf_exponent)?;
            metrics.write(&record(
                "eval",
                n,
                tokens,
                serde_json::to_value(&report).expect("serialises"),
            ))?;
        }
        if crossed(tokens, batch as u64, config.train.checkpoint_every_tokens) && n < total_steps {
            save(&step, tokens, acts.train.cursor())?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    save(&step, tokens, acts.train.cursor())?;
    let eval = run_eval(&step, &mut acts, &normalizer, &config, zipf_exponent)?;
    metrics.write(&record(
        "eval",
        step.step_count(),
        tokens,
        serde_json::to_value(&eval).expect("serialises"),
    ))?;
    let model_dir = out_dir.join("model");
    write_native(&model_dir, &step.state(), &normalizer, &config)?;
    let trained = (step.step_count() - first_step) as f64 * batch as f64;
    Ok(TrainSummary {
        steps: step.step_count(),
        tokens,
        seconds,
        tokens_per_second: trained / seconds.max(1e-9),
        eval,
        model_dir,
        interrupted,
    })
}

fn run_eval<B: AutodiffBackend>(
    step: &TrainStep<B>,
    acts: &mut Activations,
    normalizer: &sae_data::Normalizer,
    config: &RunConfig,
    zipf_exponent: f64,
) -> Result<EvalReport, TrainError> {
    let truth = acts.truth.clone();
    let source = acts.eval_source()?;
    evaluate(
        step,
        source,
        &|x: &mut [f32]| normalizer.apply(x),
        config.train.eval_tokens,
        config.train.batch_size,
        truth.as_deref(),
        zipf_exponent,
    )
}

fn record(kind: &str, step: u64, tokens: u64, values: serde_json::Value) -> MetricsRecord {
    let serde_json::Value::Object(values) = values else {
        unreachable!("metrics are objects")
    };
    MetricsRecord {
        kind: kind.into(),
        step,
        tokens,
        values,
    }
}

fn progress_bar(show: bool, total: u64, done: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(done);
    bar
}
