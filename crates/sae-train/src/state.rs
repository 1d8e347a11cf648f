//! What a checkpoint holds, and its files: `state.json` (step, tokens, data cursor,
//! normaliser, statistics, thresholds, configuration) and `tensors.safetensors` (parameters and
//! Adam moments, f32, bit-exact).

use std::path::{Path, PathBuf};

use sae_data::{
    Cursor, DataFingerprint, Dtype, Normalizer, TensorRef, read_safetensors, write_safetensors,
};
use sae_model::sae_alloc::ThresholdEstimator;
use sae_model::{FeatureStats, SaeParams, TrainState};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::{Checkpoints, write_atomic};
use crate::checksum::Manifest;
use crate::config::RunConfig;
use crate::export::read_tensor;
use crate::metrics::LogWindow;

/// Name of the JSON part of a checkpoint.
pub const STATE_FILE: &str = "state.json";
/// Name of the tensor part of a checkpoint.
pub const TENSORS_FILE: &str = "tensors.safetensors";
/// Layout version written. Version 2 added checksums, the open logging window and the data
/// fingerprint; version 1 checkpoints are still read (without verification).
const FORMAT: u32 = 2;
const OLDEST_READABLE: u32 = 1;

/// The JSON part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Layout version of the checkpoint.
    pub format: u32,
    /// Optimizer steps taken.
    pub step: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Position of the training data stream.
    pub cursor: Cursor,
    /// Input normalisation in use.
    pub normalizer: Normalizer,
    /// Feature statistics.
    pub stats: FeatureStats,
    /// Inference threshold estimator, if the sparsifier uses one.
    pub thresholds: Option<ThresholdEstimator>,
    /// The run's configuration.
    pub config: RunConfig,
    /// Sums of the metrics logging window still open at this step, so a resumed run logs
    /// exactly the lines an uninterrupted one does.
    #[serde(default)]
    pub log_window: LogWindow,
    /// The training data the run started on (`None` for synthetic data, which the
    /// configuration determines).
    #[serde(default)]
    pub data: Option<DataFingerprint>,
    /// Length of `metrics.jsonl` in bytes when this checkpoint was written: a resumed run cuts
    /// the file back to it.
    #[serde(default)]
    pub metrics_len: Option<u64>,
}

/// The training loop's part of a checkpoint (the model's is a `TrainState`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopState {
    /// Training tokens consumed.
    pub tokens: u64,
    /// Position of the training data stream.
    pub cursor: Cursor,
    /// Input normalisation in use.
    pub normalizer: Normalizer,
    /// The run's configuration.
    pub config: RunConfig,
    /// Sums of the metrics logging window still open.
    pub log_window: LogWindow,
    /// The training data the run started on (`None` for synthetic data).
    pub data: Option<DataFingerprint>,
    /// Length of `metrics.jsonl` in bytes.
    pub metrics_len: u64,
}

/// A checkpoint in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Everything but the tensors.
    pub run: RunState,
    /// Parameters.
    pub params: SaeParams,
    /// Adam first moments.
    pub adam_m: SaeParams,
    /// Adam second moments.
    pub adam_v: SaeParams,
}

impl Checkpoint {
    /// Assembles a checkpoint from the model's state and the loop's.
    pub fn new(state: TrainState, position: LoopState) -> Self {
        let LoopState {
            tokens,
            cursor,
            normalizer,
            config,
            log_window,
            data,
            metrics_len,
        } = position;
        Self {
            run: RunState {
                format: FORMAT,
                step: state.step,
                tokens,
                cursor,
                normalizer,
                stats: state.stats,
                thresholds: state.thresholds,
                config,
                log_window,
                data,
                metrics_len: Some(metrics_len),
            },
            params: state.params,
            adam_m: state.adam_m,
            adam_v: state.adam_v,
        }
    }

    /// The model's part, to restore a `TrainStep`.
    pub fn train_state(&self) -> TrainState {
        TrainState {
            params: self.params.clone(),
            adam_m: self.adam_m.clone(),
            adam_v: self.adam_v.clone(),
            step: self.run.step,
            stats: self.run.stats.clone(),
            thresholds: self.run.thresholds.clone(),
        }
    }

    /// Writes both files into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        let json = serde_json::to_vec(&self.run).expect("run state serialises");
        write_atomic(&dir.join(STATE_FILE), &json)?;
        let mut tensors = Vec::new();
        for (prefix, p) in [
            ("params", &self.params),
            ("adam_m", &self.adam_m),
            ("adam_v", &self.adam_v),
        ] {
            tensors.extend(param_tensors(prefix, p));
        }
        let names: Vec<String> = tensors.iter().map(|(n, _, _)| n.clone()).collect();
        let refs: Vec<TensorRef> = tensors
            .iter()
            .zip(&names)
            .map(|((_, shape, data), name)| TensorRef {
                name,
                shape: shape.clone(),
                data,
            })
            .collect();
        write_safetensors(dir.join(TENSORS_FILE), &refs, Dtype::F32)?;
        Manifest::write(dir, &[STATE_FILE, TENSORS_FILE])?;
        Ok(())
    }

    /// Reads a checkpoint directory written by [`Checkpoint::write`], verifying every file
    /// against its recorded checksum first.
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let state_path = dir.join(STATE_FILE);
        let manifest = Manifest::read(dir)?;
        if let Some(manifest) = &manifest {
            manifest.verify(dir)?;
        }
        let bytes = std::fs::read(&state_path).map_err(|source| TrainError::Io {
            path: state_path.clone(),
            source,
        })?;
        let run = RunState::from_json(&state_path, &bytes)?;
        if !(OLDEST_READABLE..=FORMAT).contains(&run.format) {
            return Err(TrainError::Checkpoint {
                path: state_path,
                reason: format!(
                    "format {} is not one of the supported {OLDEST_READABLE}..={FORMAT}",
                    run.format
                ),
            });
        }
        if run.format >= 2 && manifest.is_none() {
            return Err(TrainError::Checkpoint {
                path: dir.join(crate::checksum::CHECKSUM_FILE),
                reason: "missing: the checkpoint cannot be verified".into(),
            });
        }
        let tensors = dir.join(TENSORS_FILE);
        let (d, f) = (run.stats_d(&tensors)?, run.stats.features());
        let load = |prefix: &str| read_params(&tensors, prefix, d, f);
        Ok(Self {
            params: load("params")?,
            adam_m: load("adam_m")?,
            adam_v: load("adam_v")?,
            run,
        })
    }
}

/// The checkpoint a run continues from.
#[derive(Debug)]
pub struct Latest {
    /// Its step.
    pub step: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// Its contents, verified.
    pub checkpoint: Checkpoint,
    /// Newer checkpoints that failed verification and were passed over, with why.
    pub passed_over: Vec<(PathBuf, TrainError)>,
}

/// What to do when the newest checkpoint of a run fails verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCorrupt {
    /// Stop with the error (naming the file), and say whether older checkpoints exist.
    #[default]
    Fail,
    /// Continue from the newest checkpoint that verifies.
    FallBack,
}

impl Checkpoint {
    /// Reads the newest checkpoint of `checkpoints` (of those at step `up_to` or before, when
    /// given), verified; with [`OnCorrupt::FallBack`], the newest one that verifies.
    pub fn latest(
        checkpoints: &Checkpoints,
        on_corrupt: OnCorrupt,
        up_to: Option<u64>,
    ) -> Result<Latest, TrainError> {
        let mut all = checkpoints.list()?;
        all.retain(|&(step, _)| up_to.is_none_or(|last| step <= last));
        if all.is_empty() {
            return Err(TrainError::Checkpoint {
                path: checkpoints.root().to_path_buf(),
                reason: "no checkpoint found".into(),
            });
        }
        let mut passed_over = Vec::new();
        for (i, (step, dir)) in all.iter().enumerate().rev() {
            match Checkpoint::read(dir) {
                Ok(checkpoint) => {
                    return Ok(Latest {
                        step: *step,
                        dir: dir.clone(),
                        checkpoint,
                        passed_over,
                    });
                }
                Err(e) if on_corrupt == OnCorrupt::FallBack => passed_over.push((dir.clone(), e)),
                Err(e) => {
                    return Err(TrainError::CorruptCheckpoint {
                        source: Box::new(e),
                        older: (i > 0).then(|| all[i - 1].1.clone()),
                    });
                }
            }
        }
        let (_, newest) = passed_over.swap_remove(0);
        Err(TrainError::CorruptCheckpoint {
            source: Box::new(newest),
            older: None,
        })
    }
}

impl RunState {
    /// Reads the JSON part of a checkpoint, verified against its recorded checksum (the
    /// tensors are not read).
    pub fn read_verified(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(STATE_FILE);
        if let Some(manifest) = Manifest::read(dir)? {
            let mut only_state = manifest.clone();
            only_state.files.retain(|name, _| name == STATE_FILE);
            only_state.verify(dir)?;
        }
        let bytes = std::fs::read(&path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json(&path, &bytes)
    }

    /// Types the JSON part of a checkpoint read from `path`, moving keys written by earlier
    /// versions to where they live now.
    fn from_json(path: &Path, bytes: &[u8]) -> Result<Self, TrainError> {
        let error = |reason| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let mut state: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| error(e.to_string()))?;
        crate::migrate::run_state(&mut state).map_err(error)?;
        serde_json::from_value(state).map_err(|e| error(e.to_string()))
    }

    /// The activation width, read from the stored decoder bias.
    fn stats_d(&self, tensors: &Path) -> Result<usize, TrainError> {
        match read_safetensors(tensors, "params.b_dec")?.0[..] {
            [d] if d > 0 => Ok(d),
            ref shape => Err(TrainError::Checkpoint {
                path: tensors.to_path_buf(),
                reason: format!(
                    "tensor `params.b_dec` has shape {shape:?}, expected [d] with d >= 1"
                ),
            }),
        }
    }
}

/// The four tensors of a parameter set, named `<prefix>.<param>`, with their shapes.
pub fn param_tensors<'a>(prefix: &str, p: &'a SaeParams) -> Vec<(String, Vec<usize>, &'a [f32])> {
    let (d, f) = (p.d_model, p.features);
    vec![
        (format!("{prefix}.w_enc"), vec![f, d], &p.w_enc),
        (format!("{prefix}.b_enc"), vec![f], &p.b_enc),
        (format!("{prefix}.w_dec"), vec![f, d], &p.w_dec),
        (format!("{prefix}.b_dec"), vec![d], &p.b_dec),
    ]
}

/// Reads the parameter set `<prefix>.*` of a safetensors file, checking every shape.
pub fn read_params(path: &Path, prefix: &str, d: usize, f: usize) -> Result<SaeParams, TrainError> {
    let load = |name: &str, want: Vec<usize>| read_tensor(path, &format!("{prefix}.{name}"), &want);
    Ok(SaeParams {
        d_model: d,
        features: f,
        w_enc: load("w_enc", vec![f, d])?,
        b_enc: load("b_enc", vec![f])?,
        w_dec: load("w_dec", vec![f, d])?,
        b_dec: load("b_dec", vec![d])?,
    })
}
