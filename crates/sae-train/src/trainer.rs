//! The training loop: batches, steps, schedule, metrics, evaluation and checkpoints.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use sae_model::{
    FeatureStats, Machines, Registry, Sae, SaeConfig, SaeError, TrainStep, sample_mean,
};
use serde::{Deserialize, Serialize};

use sae_data::DataFingerprint;

use crate::TrainError;
use crate::checkpoint::{Checkpoints, write_atomic};
use crate::config::{BackendKind, RunConfig};
use crate::data::{Activations, EvalRows, GroundTruth};
use crate::eval::{EvalReport, evaluate};
use crate::export::{Interrupted, SelectionSpec, write_native};
use crate::metrics::{EvalRecord, LogWindow, MetricsLog, Record, ResumePoint, TrainRecord};
use crate::peers::{Group, NodeLaunch, Peers, agreed};
use crate::run_dir::{Claim, RunDir};
use crate::schedule::lr_factor;
use crate::state::{Checkpoint, LoopState, OnCorrupt, RunState};
use crate::tensor::to_device;

/// How a run is driven, beyond its configuration.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Sparsifiers that configurations may name.
    pub registry: Registry,
    /// Continue from the newest checkpoint in `out_dir` instead of starting afresh.
    pub resume: bool,
    /// Start afresh in an `out_dir` that holds a run, removing that run first (without it, such
    /// a directory is refused).
    pub overwrite: bool,
    /// When resuming and the newest checkpoint fails verification: stop (the default), or
    /// continue from the newest one that verifies, setting the corrupt ones aside.
    pub on_corrupt: OnCorrupt,
    /// Resume even though the data files differ from those the run started on.
    pub allow_data_change: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Set (e.g. by a Ctrl-C or SIGTERM handler) to stop after the current step with a
    /// checkpoint. Over several machines, set on any one it stops all at the same step.
    pub stop: Arc<AtomicBool>,
    /// Receives what the user should know as it happens (a checkpoint passed over, data
    /// allowed to change, evaluation skipped). The library prints nothing itself.
    pub notice: fn(&str),
    /// This machine's part in a run over several machines (`distributed.nodes` > 1).
    pub node: Option<NodeLaunch>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            registry: Registry::with_builtins(),
            resume: false,
            overwrite: false,
            on_corrupt: OnCorrupt::Fail,
            allow_data_change: false,
            progress: false,
            stop: Arc::default(),
            notice: |_| {},
            node: None,
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
    /// Held-out evaluation of the final model; `None` when the run holds no data out or was
    /// interrupted (an interrupted run stops promptly, as schedulers expect).
    pub eval: Option<EvalReport>,
    /// Where the final model was written (native format).
    pub model_dir: PathBuf,
    /// True when the run was stopped before its end (its model is marked partial).
    pub interrupted: bool,
}

/// Loads the configuration stored with the newest readable checkpoint of a run directory.
///
/// Only the small JSON part is read and verified here; training verifies the whole
/// checkpoint it resumes from.
pub fn resume_config(out_dir: &std::path::Path) -> Result<RunConfig, TrainError> {
    let checkpoints = Checkpoints::new(out_dir, 1);
    let mut last_error = None;
    for (_, dir) in checkpoints.list()?.into_iter().rev() {
        match RunState::read_verified(&dir) {
            Ok(run) => {
                let mut config = run.config;
                config.out_dir = out_dir.to_path_buf();
                return Ok(config);
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| TrainError::Checkpoint {
        path: checkpoints.root().to_path_buf(),
        reason: if out_dir.is_dir() {
            "no checkpoint here: not a run directory, or a run stopped before its first \
             checkpoint"
                .into()
        } else {
            format!("{} is not a directory", out_dir.display())
        },
    }))
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
    with_backend!(config.backend, B => {
        let device = open_device::<B>(config.backend)?;
        train_on::<B>(config, options, device)
    })
}

/// What `sae eval` evaluates on.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalData {
    /// The held-out split of the run's own data.
    HeldOut,
    /// Every row of other activation files (any `data.path` a run accepts), read with the
    /// run's normaliser.
    Files {
        /// A file, a directory or a glob.
        path: PathBuf,
        /// The tensor to read.
        tensor: String,
    },
}

/// Evaluates the newest checkpoint of the run `config` describes on `data`, up to
/// `config.train.eval_tokens` tokens, each row once.
pub fn evaluate_run(
    config: &RunConfig,
    registry: &Registry,
    data: &EvalData,
) -> Result<EvalReport, TrainError> {
    with_backend!(config.backend, B => {
        let device = open_device::<B>(config.backend)?;
        evaluate_checkpoint::<B>(config, registry, data, device)
    })
}

/// The backend's default device, after one tiny operation on it: burn's GPU runtimes panic
/// when they find no adapter or device, and that becomes an error saying what to do.
fn open_device<B: AutodiffBackend>(kind: BackendKind) -> Result<B::Device, TrainError> {
    // The runtime may fail on one of its own threads; the first panic message, from whichever
    // thread, is the cause worth reporting.
    let first_panic = Arc::new(std::sync::Mutex::new(None::<String>));
    let hook = std::panic::take_hook();
    let record = first_panic.clone();
    std::panic::set_hook(Box::new(move |info| {
        let mut first = record.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            let payload = info.payload();
            *first = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
        }
    }));
    let probed = std::panic::catch_unwind(|| {
        let device = B::Device::default();
        burn::tensor::Tensor::<B, 1>::zeros([1], &device).into_data();
        device
    });
    std::panic::set_hook(hook);
    probed.map_err(|_| {
        let advice = match kind {
            BackendKind::Wgpu => {
                "no usable wgpu adapter: install a Vulkan driver (on Debian / Ubuntu: \
                 `apt-get install mesa-vulkan-drivers libvulkan1`) or use backend = \"flex\""
            }
            BackendKind::Cuda => {
                "no usable CUDA device: check the driver with `nvidia-smi`, or use \
                 backend = \"wgpu\" or \"flex\""
            }
            BackendKind::Flex | BackendKind::Ndarray => "the CPU backend failed to start",
        };
        let cause = first_panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .and_then(|m| m.lines().next().map(str::to_string))
            .map_or(String::new(), |m| format!(" (the runtime said: {m})"));
        TrainError::BackendFailed {
            backend: kind.name(),
            reason: format!("{advice}{cause}"),
        }
    })
}

fn evaluate_checkpoint<B: AutodiffBackend>(
    config: &RunConfig,
    registry: &Registry,
    data: &EvalData,
    device: B::Device,
) -> Result<EvalReport, TrainError> {
    let sparsifier = registry.build(&config.sparsifier)?;
    let checkpoints = Checkpoints::new(&config.out_dir, 1);
    let ckpt = Checkpoint::latest(&checkpoints, OnCorrupt::Fail, None)?.checkpoint;
    let step = TrainStep::<B>::from_state(
        &ckpt.train_state(),
        sparsifier,
        config.step.clone(),
        &device,
    )?;
    let normalizer = &ckpt.run.normalizer;
    match data {
        EvalData::HeldOut => {
            let mut acts = Activations::open(config)?.normalized(normalizer)?;
            run_eval(&step, &mut acts, config)?.ok_or_else(|| TrainError::Config {
                origin: config.out_dir.join("config.toml").display().to_string(),
                reason: "data.heldout_fraction = 0: the run holds no rows out to evaluate \
                             on (evaluate on other files with `sae eval --data PATH`)"
                    .into(),
            })
        }
        EvalData::Files { path, tensor } => {
            let mut rows =
                EvalRows::open_files(path, tensor, step.sae().d_model())?.normalized(normalizer)?;
            eval_on(&step, &mut rows, None, config)
        }
    }
}

fn crossed(tokens: u64, batch: u64, every: u64) -> bool {
    every > 0 && tokens / every > (tokens - batch) / every
}

/// This machine's view of the machines of a run: present exactly when `distributed.nodes` > 1,
/// refused when `--node` and the settings do not fit together.
fn machines(config: &RunConfig, node: Option<&NodeLaunch>) -> Result<Option<Machines>, TrainError> {
    let nodes = config.distributed.nodes;
    let refuse = |reason: String| TrainError::Config {
        origin: "the run".into(),
        reason,
    };
    match node {
        None if nodes > 1 => Err(refuse(format!(
            "distributed.nodes = {nodes} needs this machine's --node, --node-address and \
             --orchestrator (see docs/distributed.md)"
        ))),
        None => Ok(None),
        Some(_) if nodes == 1 => Err(refuse(
            "--node is given but distributed.nodes = 1: set distributed.nodes to the number of \
             machines"
                .into(),
        )),
        Some(launch) => launch
            .machines(
                nodes,
                Duration::from_secs_f64(config.distributed.join_timeout_seconds),
            )
            .map(Some)
            .map_err(refuse),
    }
}

/// Trains on backend `B`.
pub fn train_on<B: AutodiffBackend>(
    config: RunConfig,
    options: &TrainOptions,
    device: B::Device,
) -> Result<TrainSummary, TrainError> {
    // Everything that can be refused is refused before any compute: the sparsifier's
    // parameters, the run directory, the data and its held-out split.
    let sparsifier = options.registry.build(&config.sparsifier)?;
    let machines = machines(&config, options.node.as_ref())?;
    let out_dir = config.out_dir.clone();
    let claim = match (options.resume, options.overwrite) {
        (true, _) => Claim::Resume,
        (false, true) => Claim::Overwrite,
        (false, false) => Claim::Fresh,
    };
    let _run_dir = RunDir::claim(&out_dir, claim)?;
    let mut acts = Activations::open(&config)?;
    let d = acts.d;
    let features = config.model.features(d);
    let largest_buffer = sae_model::largest_buffer::<B>(&device);
    check_shape(&config, sparsifier.k(), d, features, largest_buffer)?;
    let peers_total = config.distributed.peers();
    if peers_total > 1
        && sparsifier
            .builtin(
                config.train.batch_size,
                &FeatureStats::new(features, config.step.stats.clone()),
            )?
            .is_none()
    {
        return Err(TrainError::Config {
            origin: "the run".into(),
            reason: format!(
                "{peers_total} peers (distributed.devices times distributed.nodes): sparsifier \
                 {:?} has no built-in selection rule, which training over several peers needs \
                 (TopK, Mutual Choice, Feature Choice have one)",
                sparsifier.name()
            ),
        });
    }
    if acts.eval_rows()?.is_none() {
        (options.notice)(
            "data.heldout_fraction = 0: no rows are held out, so the run is not evaluated",
        );
    }
    let checkpoints = Checkpoints::new(&out_dir, config.train.keep_checkpoints);
    // The data as it is now: a run resumed with `allow_data_change` records the new files.
    let fingerprint = acts.fingerprint.clone();
    // The peers of a run over several devices or machines meet before anything is loaded:
    // the machines resume from a checkpoint they all hold.
    let timeout = Duration::from_secs_f64(config.distributed.timeout_seconds);
    let mut joined = match peers_total {
        1 => None,
        _ => Some(Peers::<B>::join(
            Group {
                devices: config.distributed.devices,
                machines,
                timeout,
            },
            &device,
        )?),
    };
    let resume_at = match joined.as_mut() {
        Some(joined) => {
            let held: Vec<u64> = checkpoints.list()?.into_iter().map(|(s, _)| s).collect();
            joined.agree_on_start(options.resume, &held)?
        }
        None => None,
    };
    let (mut step, normalizer, mut tokens, mut window, metrics_at) = if options.resume {
        let latest = Checkpoint::latest(&checkpoints, options.on_corrupt, resume_at)?;
        for (dir, why) in &latest.passed_over {
            let aside = checkpoints.set_aside(dir)?;
            (options.notice)(&format!(
                "passed over a checkpoint that fails verification ({why}); kept as {}",
                aside.display()
            ));
        }
        if !latest.passed_over.is_empty() {
            (options.notice)(&format!("resuming from {}", latest.dir.display()));
        }
        let ckpt = latest.checkpoint;
        if let (Some(then), Some(now)) = (&ckpt.run.data, &fingerprint)
            && let Some(reason) = then.mismatch(now)
        {
            if !options.allow_data_change {
                return Err(TrainError::DataChanged {
                    dir: out_dir.clone(),
                    reason,
                });
            }
            (options.notice)(&format!(
                "the training data changed ({reason}); resuming anyway as asked"
            ));
        }
        acts.train.restore(&ckpt.run.cursor)?;
        let step = TrainStep::<B>::from_state(
            &ckpt.train_state(),
            sparsifier,
            config.step.clone(),
            &device,
        )?;
        let at = ResumePoint {
            step: ckpt.run.step,
            len: ckpt.run.metrics_len,
        };
        (
            step,
            ckpt.run.normalizer,
            ckpt.run.tokens,
            ckpt.run.log_window,
            Some(at),
        )
    } else {
        let normalizer = acts.normalizer(&config)?;
        let mut sample = acts.sample.clone();
        normalizer.apply(&mut sample);
        let sae_config = SaeConfig {
            d_model: d,
            features,
            seed: config.seed,
        };
        let sae =
            Sae::<B::InnerBackend>::init(&sae_config, Some(&sample_mean(&sample, d)?), &device)?;
        write_atomic(&out_dir.join("config.toml"), config.to_toml().as_bytes())?;
        (
            TrainStep::<B>::new(&sae, sparsifier, config.step.clone(), &device)?,
            normalizer,
            0,
            LogWindow::default(),
            None,
        )
    };
    // The other peers start from this state, as this loop's peer.
    let mut peers = match joined {
        Some(joined) => {
            let state = step.state();
            let agreed = agreed(
                &config,
                fingerprint.as_ref(),
                &state,
                tokens,
                &acts.train.cursor(),
                &normalizer,
            );
            let rule = || options.registry.build(&config.sparsifier);
            Some(joined.start(&state, rule, &config.step, &agreed)?)
        }
        None => None,
    };
    // From here on every batch and evaluation row comes out normalised.
    let mut acts = acts.normalized(&normalizer)?;
    let mut metrics = MetricsLog::open(&out_dir.join("metrics.jsonl"), metrics_at)?;
    let batch = config.train.batch_size;
    let total_steps = config.train.total_tokens / batch as u64;
    let peak_lr = step.lr();
    let bar = progress_bar(options.progress, total_steps, step.step_count());
    let started = Instant::now();
    let first_step = step.step_count();
    let mut x = Vec::new();
    let save = |step: &TrainStep<B>,
                tokens: u64,
                cursor,
                window: &LogWindow,
                metrics: &MetricsLog,
                fingerprint: &Option<DataFingerprint>| {
        let ckpt = Checkpoint::new(
            step.state(),
            LoopState {
                tokens,
                cursor,
                normalizer: normalizer.clone(),
                config: config.clone(),
                log_window: window.clone(),
                data: fingerprint.clone(),
                metrics_len: metrics.len(),
            },
        );
        checkpoints.save(step.step_count(), |dir| ckpt.write(dir))
    };
    let mut interrupted = false;
    while step.step_count() < total_steps {
        let asked = options.stop.load(Ordering::SeqCst);
        let stop = match peers.as_mut() {
            Some(peers) => peers.stop_requested(asked)?,
            None => asked,
        };
        if stop {
            interrupted = true;
            break;
        }
        acts.train.next_batch(batch, &mut x)?;
        step.set_lr(peak_lr * lr_factor(&config.schedule, tokens, config.train.total_tokens));
        let out = match peers.as_mut() {
            Some(peers) => peers.step(&mut step, &x),
            None => step.train_step(to_device::<B>(&x, batch, d, &device)),
        }
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
            let line = TrainRecord {
                step: n,
                tokens,
                loss: Some(w.loss / k),
                fvu: Some(w.fvu / k),
                aux: Some(w.aux / k),
                l0: Some(w.l0 / k),
                dead_fraction: Some(f64::from(out.dead_fraction)),
                lr: Some(step.lr()),
                tokens_per_second: Some(rate),
            };
            bar.set_position(n);
            bar.set_message(format!(
                "{rate:>7.0} tok/s  loss {:.4}  fvu {:.4}  L0 {:.1}  dead {:.1}%",
                w.loss / k,
                w.fvu / k,
                w.l0 / k,
                100.0 * out.dead_fraction
            ));
            metrics.write(&Record::Train(line))?;
        }
        if crossed(tokens, batch as u64, config.train.eval_every_tokens)
            && n < total_steps
            && let Some(report) = run_eval(&step, &mut acts, &config)?
        {
            metrics.write(&eval_record(n, tokens, report))?;
        }
        if crossed(tokens, batch as u64, config.train.checkpoint_every_tokens) && n < total_steps {
            save(
                &step,
                tokens,
                acts.train.cursor(),
                &window,
                &metrics,
                &fingerprint,
            )?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    drop(peers);
    save(
        &step,
        tokens,
        acts.train.cursor(),
        &window,
        &metrics,
        &fingerprint,
    )?;
    let eval = if interrupted {
        None
    } else {
        let eval = run_eval(&step, &mut acts, &config)?;
        if let Some(report) = &eval {
            metrics.write(&eval_record(step.step_count(), tokens, report.clone()))?;
        }
        eval
    };
    let model_dir = out_dir.join("model");
    let partial = interrupted.then_some(Interrupted {
        step: step.step_count(),
        total_steps,
    });
    write_native(
        &model_dir,
        &step.state(),
        &normalizer,
        &config,
        SelectionSpec::of(step.sparsifier()),
        partial,
    )?;
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

/// Checks what needs the data's width: the sparsifier's `k` against the dictionary, the
/// dictionary against the feature ids, a GPU batch against the kernels' indices, the largest
/// tensors against one buffer of a device that has a limit (`largest_buffer`), and a CPU step
/// against this machine's memory.
fn check_shape(
    config: &RunConfig,
    k: usize,
    d: usize,
    features: usize,
    largest_buffer: Option<u64>,
) -> Result<(), TrainError> {
    let bad = |reason: String| {
        Err(TrainError::Config {
            origin: "the run".into(),
            reason,
        })
    };
    if features == 0 {
        return bad(format!(
            "model: the dictionary has no features (d_sae = {:?}, expansion = {}, d = {d})",
            config.model.d_sae, config.model.expansion
        ));
    }
    if k > features {
        return bad(format!(
            "sparsifier.k = {k} exceeds the {features} features of the dictionary"
        ));
    }
    if u32::try_from(features).is_err() {
        return bad(format!(
            "model: {features} features (d_sae = {:?}, expansion = {}, d = {d}) are more than \
             the {} that 32-bit feature ids can name",
            config.model.d_sae,
            config.model.expansion,
            u32::MAX
        ));
    }
    crate::sizes::check_device_scores(config, features).or_else(bad)?;
    if let Some(largest) = largest_buffer {
        crate::sizes::check_buffers(config, d, features, largest).or_else(bad)?;
    }
    match crate::sizes::machine_memory() {
        Some(available) => crate::sizes::check_fits(config, d, features, available).or_else(bad),
        None => Ok(()),
    }
}

/// Evaluates on the held-out rows; `None` when the run holds none out.
fn run_eval<B: AutodiffBackend>(
    step: &TrainStep<B>,
    acts: &mut Activations,
    config: &RunConfig,
) -> Result<Option<EvalReport>, TrainError> {
    let truth = acts.truth.clone();
    let Some(rows) = acts.eval_rows()? else {
        return Ok(None);
    };
    eval_on(step, rows, truth.as_ref(), config).map(Some)
}

/// Evaluates on `rows` (normalised as the run's) with the run's evaluation settings.
fn eval_on<B: AutodiffBackend>(
    step: &TrainStep<B>,
    rows: &mut EvalRows,
    truth: Option<&GroundTruth>,
    config: &RunConfig,
) -> Result<EvalReport, TrainError> {
    evaluate(
        step,
        rows,
        config.train.eval_tokens,
        config.train.batch_size,
        truth,
    )
}

fn eval_record(step: u64, tokens: u64, report: EvalReport) -> Record {
    Record::Eval(Box::new(EvalRecord {
        step,
        tokens,
        report,
    }))
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
