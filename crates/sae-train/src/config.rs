//! The run configuration: one TOML file, every field overridable with `--set key=value`.

use std::path::{Path, PathBuf};

use sae_data::SyntheticConfig;
use sae_model::{StepPath, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::overrides::apply_overrides;

/// Everything a training run needs; serialised into every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Seed of the initialisation and of the data order.
    pub seed: u64,
    /// Tensor backend the model trains on.
    pub backend: BackendKind,
    /// Directory of checkpoints, metrics and the final model.
    pub out_dir: PathBuf,
    /// Where activations come from.
    pub data: DataConfig,
    /// Dictionary size.
    pub model: ModelConfig,
    /// The sparsifier, by registered name and parameters, e.g. `name = "topk"`, `k = 32`.
    pub sparsifier: serde_json::Value,
    /// Step hyper-parameters: Adam, losses, auxiliary loss, feature statistics.
    pub step: TrainConfig,
    /// Learning-rate warm-up and decay.
    pub schedule: ScheduleConfig,
    /// Batch size, length and intervals.
    pub train: LoopConfig,
    /// Training over several peers, each on its share of every batch.
    pub distributed: DistributedConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            backend: BackendKind::Flex,
            out_dir: PathBuf::from("runs/default"),
            data: DataConfig::default(),
            model: ModelConfig::default(),
            sparsifier: serde_json::json!({ "name": "mutual_choice", "k": 8 }),
            step: TrainConfig::default(),
            schedule: ScheduleConfig::default(),
            train: LoopConfig::default(),
            distributed: DistributedConfig::default(),
        }
    }
}

/// Tensor backends a run can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// burn's Flex CPU backend (default; fastest CPU GEMM here).
    #[default]
    Flex,
    /// burn's ndarray CPU backend.
    Ndarray,
    /// burn's wgpu backend (Vulkan / Metal / DX12; Mesa lavapipe on CPU-only machines).
    Wgpu,
    /// burn's CUDA backend (needs the `cuda` feature).
    Cuda,
}

impl BackendKind {
    /// The name used in configurations.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }
}

/// Kinds of activation source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The built-in generator with a known dictionary.
    #[default]
    Synthetic,
    /// safetensors / npy shards: a file, a directory or a glob.
    Files,
}

/// Where activations come from and how they are prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Synthetic ground truth or files.
    pub source: SourceKind,
    /// File, directory or glob of shards (for `source = "files"`).
    pub path: Option<PathBuf>,
    /// Name of the activation tensor inside safetensors shards.
    pub tensor: String,
    /// The synthetic generator (for `source = "synthetic"`).
    pub synthetic: SyntheticConfig,
    /// Rows of the shuffle window.
    pub shuffle_rows: usize,
    /// Share of the rows (by blocks) held out for evaluation.
    pub heldout_fraction: f64,
    /// Scale inputs to mean squared norm d (the scale is kept and folded into exports).
    pub normalize: bool,
    /// Subtract the mean activation before scaling.
    pub center: bool,
    /// Rows sampled to estimate the normalisation and the decoder bias.
    pub sample_rows: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::Synthetic,
            path: None,
            tensor: sae_data::DEFAULT_TENSOR.to_string(),
            synthetic: SyntheticConfig::default(),
            shuffle_rows: 1 << 16,
            heldout_fraction: 0.02,
            normalize: true,
            center: false,
            sample_rows: 16384,
        }
    }
}

/// Dictionary size: an explicit `d_sae`, or `expansion * d`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Number of features; overrides `expansion` when set.
    pub d_sae: Option<usize>,
    /// Features per input dimension when `d_sae` is unset.
    pub expansion: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            d_sae: None,
            expansion: 16,
        }
    }
}

impl ModelConfig {
    /// The number of features for inputs of width `d`.
    pub fn features(&self, d: usize) -> usize {
        self.d_sae.unwrap_or(self.expansion * d)
    }
}

/// Shapes of the learning-rate decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// Constant after warm-up.
    Constant,
    /// Linear to `final_fraction` over the decay window.
    #[default]
    Linear,
    /// Half cosine to `final_fraction` over the decay window.
    Cosine,
}

/// Learning rate as a function of tokens seen: linear warm-up, then constant, then a decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Tokens of linear warm-up from 0.
    pub warmup_tokens: u64,
    /// Decay shape.
    pub decay: Decay,
    /// Share of the run, at its end, over which the rate decays.
    pub decay_fraction: f64,
    /// Rate at the end, as a fraction of the peak.
    pub final_fraction: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            warmup_tokens: 50_000,
            decay: Decay::Linear,
            decay_fraction: 0.2,
            final_fraction: 0.0,
        }
    }
}

/// Training over several peers (devices of this machine, and machines): one global batch, its
/// rows split over the peers in order, the model the one device would train on the whole batch
/// (see `docs/distributed.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// Peers on this machine, one thread each (1: no distribution). Each takes consecutive
    /// rows of every batch; they sum their selection counts and gradients through
    /// burn-collective. The CPU backends run every peer on the machine's cores; wgpu and CUDA
    /// run the device step on each peer, CUDA peer `i` on GPU `i` where there are as many
    /// (otherwise the peers share the device).
    pub devices: usize,
    /// Machines of the run (1: this one only). Each runs `sae train` with the same settings and
    /// data, `devices` peers each, and `--node`, `--node-address` and `--orchestrator` of its
    /// own; machine `i` holds peers `i * devices..(i + 1) * devices`.
    pub nodes: usize,
    /// How long a peer waits in a sum for the others before the run stops with an error
    /// naming the peers that did not come (stopped, or too slow).
    pub timeout_seconds: f64,
    /// Over several machines: how long a machine waits for the others to join at the start
    /// of a launch (a run or a resume) before it stops, asking whether all are started.
    /// Machines that a scheduler starts minutes apart need longer than a sum does.
    pub join_timeout_seconds: f64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self {
            devices: 1,
            nodes: 1,
            timeout_seconds: 600.0,
            join_timeout_seconds: 600.0,
        }
    }
}

impl DistributedConfig {
    /// Every peer of the run: the devices of all machines.
    pub fn peers(&self) -> usize {
        self.devices.saturating_mul(self.nodes)
    }
}

/// Batch size, run length and the intervals of evaluation, logging and checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoopConfig {
    /// Tokens per batch.
    pub batch_size: usize,
    /// Tokens of the whole run.
    pub total_tokens: u64,
    /// Evaluate on held-out data every this many tokens (0: only at the end).
    pub eval_every_tokens: u64,
    /// Held-out tokens per evaluation.
    pub eval_tokens: u64,
    /// Write a checkpoint every this many tokens (0: only at the end).
    pub checkpoint_every_tokens: u64,
    /// Checkpoints kept on disk (older ones are deleted).
    pub keep_checkpoints: usize,
    /// Append a metrics line every this many steps.
    pub log_every_steps: u64,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            batch_size: 1024,
            total_tokens: 3_000_000,
            eval_every_tokens: 1_000_000,
            eval_tokens: 32_768,
            checkpoint_every_tokens: 1_000_000,
            keep_checkpoints: 2,
            log_every_steps: 10,
        }
    }
}

impl RunConfig {
    /// Reads `path` (or the defaults when `None`), applies `--set` overrides and checks the result.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, TrainError> {
        let mut doc = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| TrainError::Config {
                        origin: path.display().to_string(),
                        reason: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        // `--set sparsifier.k=5` changes the default sparsifier's k rather than replacing the
        // whole `{ name, k }` table with one that lacks a name.
        if !doc.contains_key("sparsifier") {
            let default = toml::Value::try_from(Self::default().sparsifier)
                .expect("the default sparsifier is a TOML table");
            doc.insert("sparsifier".into(), default);
        }
        apply_overrides(&mut doc, overrides)?;
        let origin = path.map_or_else(|| "defaults".to_string(), |p| p.display().to_string());
        Self::from_table(doc, &origin)
    }

    /// Types a TOML table, naming the field at fault on error.
    /// Keys written by earlier versions are moved to where they live now.
    pub fn from_table(mut doc: toml::Table, origin: &str) -> Result<Self, TrainError> {
        let error = |reason| TrainError::Config {
            origin: origin.to_string(),
            reason,
        };
        crate::migrate::zipf_exponent_toml(&mut doc).map_err(error)?;
        let config: Self = serde_path_to_error::deserialize(toml::Value::Table(doc))
            .map_err(|e| error(format!("{}: {}", e.path(), e.inner())))?;
        config.validate(origin)?;
        Ok(config)
    }

    /// The configuration as TOML text (what `sae train` writes beside its checkpoints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a run configuration always serialises")
    }

    fn validate(&self, origin: &str) -> Result<(), TrainError> {
        self.check().map_err(|reason| TrainError::Config {
            origin: origin.to_string(),
            reason,
        })
    }

    /// Every field's valid range; the error names the field, its value and the range.
    fn check(&self) -> Result<(), String> {
        let t = &self.train;
        at_least("train.batch_size", t.batch_size as u64, 1)?;
        if t.total_tokens < t.batch_size as u64 {
            return Err(format!(
                "train.total_tokens: {} is less than one batch ({})",
                t.total_tokens, t.batch_size
            ));
        }
        at_least("train.eval_tokens", t.eval_tokens, 1)?;
        at_least("train.keep_checkpoints", t.keep_checkpoints as u64, 1)?;
        at_least("train.log_every_steps", t.log_every_steps, 1)?;

        let data = &self.data;
        if data.source == SourceKind::Files && data.path.is_none() {
            return Err("data.path: required when data.source = \"files\"".into());
        }
        in_range(
            "data.heldout_fraction",
            data.heldout_fraction,
            0.0,
            true,
            1.0,
            false,
        )?;
        at_least("data.shuffle_rows", data.shuffle_rows as u64, 1)?;
        at_least("data.sample_rows", data.sample_rows as u64, 1)?;

        match self.model.d_sae {
            Some(f) => at_least("model.d_sae", f as u64, 1)?,
            None => at_least("model.expansion", self.model.expansion as u64, 1)?,
        }

        let step = &self.step;
        if let Some(lr) = step.lr {
            positive("step.lr", lr)?;
        }
        in_range("step.beta1", step.beta1, 0.0, true, 1.0, false)?;
        in_range("step.beta2", step.beta2, 0.0, true, 1.0, false)?;
        positive("step.eps", step.eps)?;
        in_range(
            "step.aux_coef",
            f64::from(step.aux_coef),
            0.0,
            true,
            f64::INFINITY,
            false,
        )?;
        if let Some(k_aux) = step.k_aux {
            at_least("step.k_aux", k_aux as u64, 1)?;
        }
        in_range(
            "step.stats.zipf_exponent",
            step.stats.zipf_exponent,
            0.0,
            false,
            f64::INFINITY,
            false,
        )?;
        in_range(
            "step.stats.density_horizon_tokens",
            step.stats.density_horizon_tokens,
            1.0,
            true,
            f64::INFINITY,
            false,
        )?;
        at_least("step.stats.dead_window", step.stats.dead_window, 1)?;
        in_range(
            "step.threshold_decay",
            f64::from(step.threshold_decay),
            0.0,
            true,
            1.0,
            false,
        )?;

        let schedule = &self.schedule;
        in_range(
            "schedule.decay_fraction",
            schedule.decay_fraction,
            0.0,
            true,
            1.0,
            true,
        )?;
        in_range(
            "schedule.final_fraction",
            schedule.final_fraction,
            0.0,
            true,
            1.0,
            true,
        )?;

        let max = sae_model::collective::MAX_PEERS;
        let DistributedConfig { devices, nodes, .. } = self.distributed;
        for (option, value) in [("devices", devices), ("nodes", nodes)] {
            if !(1..=max).contains(&value) {
                return Err(format!(
                    "distributed.{option} = {value} is out of range: must be in 1..={max}"
                ));
            }
        }
        let peers = self.distributed.peers();
        if peers > max {
            return Err(format!(
                "distributed.devices = {devices} times distributed.nodes = {nodes} is {peers} \
                 peers: at most {max}"
            ));
        }
        // Finite and at most a year: `Duration` takes them as they are.
        for (option, seconds) in [
            (
                "distributed.timeout_seconds",
                self.distributed.timeout_seconds,
            ),
            (
                "distributed.join_timeout_seconds",
                self.distributed.join_timeout_seconds,
            ),
        ] {
            in_range(option, seconds, 0.0, false, 3.2e7, true)?;
        }
        if peers > 1 {
            let what = if nodes > 1 {
                format!("distributed.devices = {devices} on distributed.nodes = {nodes}")
            } else {
                format!("distributed.devices = {devices}")
            };
            if self.train.batch_size < peers {
                return Err(format!(
                    "train.batch_size = {} is less than the {peers} peers of {what}: \
                     every peer needs rows of each batch",
                    self.train.batch_size
                ));
            }
            let on_cpu = matches!(self.backend, BackendKind::Flex | BackendKind::Ndarray);
            let (step, paths) = match on_cpu {
                true => (StepPath::Fused, "\"auto\" or \"fused\""),
                false => (StepPath::Device, "\"auto\" or \"device\""),
            };
            if self.step.path != StepPath::Auto && self.step.path != step {
                return Err(format!(
                    "{what} on backend = {:?} needs step.path = {paths}, \
                     the step that trains over several peers there (got {:?})",
                    self.backend.name(),
                    self.step.path
                ));
            }
        }
        if !self.sparsifier.get("name").is_some_and(|n| n.is_string()) {
            return Err("sparsifier.name: missing: name a registered sparsifier".into());
        }
        Ok(())
    }
}

fn at_least(field: &str, value: u64, min: u64) -> Result<(), String> {
    if value < min {
        return Err(format!(
            "{field} = {value} is out of range: must be at least {min}"
        ));
    }
    Ok(())
}

fn positive(field: &str, value: f64) -> Result<(), String> {
    in_range(field, value, 0.0, false, f64::INFINITY, false)
}

/// `value` in the interval from `lo` to `hi` (each end included or not); NaN never is.
fn in_range(
    field: &str,
    value: f64,
    lo: f64,
    lo_in: bool,
    hi: f64,
    hi_in: bool,
) -> Result<(), String> {
    let above = if lo_in { value >= lo } else { value > lo };
    let below = if hi_in { value <= hi } else { value < hi };
    if above && below {
        return Ok(());
    }
    let interval = format!(
        "{}{lo}, {hi}{}",
        if lo_in { "[" } else { "(" },
        if hi_in { "]" } else { ")" }
    );
    Err(format!(
        "{field} = {value} is out of range: must be in {}",
        interval.replace("inf", "infinity")
    ))
}
