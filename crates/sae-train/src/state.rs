//! What a checkpoint holds, and its files: `state.json` (step, tokens, data cursor,
//! normaliser, statistics, thresholds, configuration) and `tensors.safetensors` (parameters and
//! Adam moments, f32, bit-exact).

use std::path::Path;

use sae_data::{Cursor, Dtype, Normalizer, TensorRef, read_safetensors, write_safetensors};
use sae_model::sae_alloc::ThresholdEstimator;
use sae_model::{FeatureStats, SaeParams, TrainState};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::write_atomic;
use crate::config::RunConfig;
use crate::export::read_tensor;

/// Name of the JSON part of a checkpoint.
pub const STATE_FILE: &str = "state.json";
/// Name of the tensor part of a checkpoint.
pub const TENSORS_FILE: &str = "tensors.safetensors";
const FORMAT: u32 = 1;

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
    pub fn new(
        state: TrainState,
        tokens: u64,
        cursor: Cursor,
        normalizer: Normalizer,
        config: RunConfig,
    ) -> Self {
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
        Ok(())
    }

    /// Reads a checkpoint directory written by [`Checkpoint::write`].
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let state_path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&state_path).map_err(|source| TrainError::Io {
            path: state_path.clone(),
            source,
        })?;
        let run: RunState = serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
            path: state_path.clone(),
            reason: e.to_string(),
        })?;
        if run.format != FORMAT {
            return Err(TrainError::Checkpoint {
                path: state_path,
                reason: format!("format {} is not the supported {FORMAT}", run.format),
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

impl RunState {
    /// The activation width, read from the stored decoder bias.
    fn stats_d(&self, tensors: &Path) -> Result<usize, TrainError> {
        let (shape, _) = read_safetensors(tensors, "params.b_dec")?;
        Ok(shape[0])
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
