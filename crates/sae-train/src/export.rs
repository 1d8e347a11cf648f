//! Trained models on disk: the native format, and SAELens' (v6) layout both ways.
//!
//! Native (`<run>/model/`): `sae.safetensors` (`w_enc` and `w_dec` as `[F, d]`, `b_enc`,
//! `b_dec`, `density`, and `threshold` when the sparsifier infers with thresholds) plus
//! `sae.json` (sparsifier, normaliser, format version). Parameters stay in normalised units;
//! the normaliser is applied to inputs and inverted on outputs.
//!
//! SAELens: `cfg.json`, `sae_weights.safetensors` (`W_enc [d_in, d_sae]`, `b_enc`,
//! `W_dec [d_sae, d_in]`, `b_dec`, and `threshold` for JumpReLU) and `sparsity.safetensors`
//! (log10 firing fraction + 1e-10), in the model's raw units: with normalised input
//! `x_n = (x - mu) * s`, the exported weights are `W_enc' = s W_enc`, `W_dec' = W_dec / s`,
//! `b_dec' = mu + b_dec / s`, so pre-activations (and thresholds) are unchanged.
//! TopK exports as `topk` with its `k`; Mutual Choice and Feature Choice export as `jumprelu`
//! with their inference thresholds, as SAELens does for BatchTopK.

use std::path::{Path, PathBuf};

use sae_data::{Dtype, Normalizer, TensorRef, read_safetensors, write_safetensors};
use sae_model::sae_alloc::Thresholds;
use sae_model::{Activation, InferenceRule, SaeParams, Sparsifier, TrainState};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::write_atomic;
use crate::config::RunConfig;

const NATIVE_FORMAT: u32 = 1;
const NATIVE_WEIGHTS: &str = "sae.safetensors";
const NATIVE_META: &str = "sae.json";

/// The SAELens release whose `cfg.json` layout the export follows, written as
/// `metadata.sae_lens_version`. SAELens loads a config without a version of at least 6.0
/// there through its pre-6.0 conversion, which rebuilds `metadata` from a fixed list of keys
/// and so drops the project's (sparsifier, folded normalisation scale).
pub const SAELENS_CONFIG_VERSION: &str = "6.0.0";

/// The metadata file of a native model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NativeMeta {
    /// Layout version.
    pub format: u32,
    /// Activation width.
    pub d_model: usize,
    /// Number of features.
    pub features: usize,
    /// The sparsifier specification it was trained with (name and parameters).
    pub sparsifier: serde_json::Value,
    /// Input normalisation the parameters expect.
    pub normalizer: Normalizer,
    /// Whether `threshold` is stored.
    pub has_thresholds: bool,
    /// Set when the run was stopped before its end: the model is a partial one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interrupted>,
    /// How the model selects features for one token, taken from the built sparsifier when
    /// the model was written (absent in models written before it was recorded, and in
    /// imported JumpReLU models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<SelectionSpec>,
}

/// The typed selection rule of a model: what exports and readers go by, never the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionSpec {
    /// How a single token is encoded at inference.
    pub inference: InferenceRule,
    /// The function applied to the selected affinities.
    pub activation: Activation,
    /// Target features per token.
    pub k: usize,
}

impl SelectionSpec {
    /// The rule of a built sparsifier.
    pub fn of(sparsifier: &dyn Sparsifier) -> Self {
        Self {
            inference: sparsifier.inference_rule(),
            activation: sparsifier.activation(),
            k: sparsifier.k(),
        }
    }
}

/// Where an interrupted run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interrupted {
    /// Optimizer steps taken.
    pub step: u64,
    /// Optimizer steps the run was configured for.
    pub total_steps: u64,
}

impl NativeMeta {
    /// Checks the sizes the metadata announces before any tensor is read.
    fn check(&self, path: &Path) -> Result<(), TrainError> {
        let bad = |reason: String| {
            Err(TrainError::Checkpoint {
                path: path.to_path_buf(),
                reason,
            })
        };
        if self.d_model == 0 || self.features == 0 {
            return bad(format!(
                "a model needs d_model >= 1 and features >= 1, found d_model = {} and features = {}",
                self.d_model, self.features
            ));
        }
        if let Some(mean) = &self.normalizer.mean
            && mean.len() != self.d_model
        {
            return bad(format!(
                "normalizer mean has {} entries for d_model = {}",
                mean.len(),
                self.d_model
            ));
        }
        if !(self.normalizer.scale.is_finite() && self.normalizer.scale > 0.0) {
            return bad(format!(
                "normalizer scale {} is not a positive finite number",
                self.normalizer.scale
            ));
        }
        Ok(())
    }
}

/// A trained model as stored on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeModel {
    /// Metadata.
    pub meta: NativeMeta,
    /// Parameters (normalised units).
    pub params: SaeParams,
    /// Firing density of each feature.
    pub density: Vec<f32>,
    /// Per-feature inference thresholds (a global threshold is stored expanded).
    pub thresholds: Option<Vec<f32>>,
}

/// Writes the native model of a training state into `dir` (atomically, file by file).
pub fn write_native(
    dir: &Path,
    state: &TrainState,
    normalizer: &Normalizer,
    config: &RunConfig,
    selection: SelectionSpec,
    interrupted: Option<Interrupted>,
) -> Result<(), TrainError> {
    let features = state.params.features;
    let thresholds = state
        .thresholds
        .as_ref()
        .and_then(|t| t.thresholds())
        .map(|t| match t {
            Thresholds::Global(v) => vec![v; features],
            Thresholds::PerFeature(v) => v,
        });
    let model = NativeModel {
        meta: NativeMeta {
            format: NATIVE_FORMAT,
            d_model: state.params.d_model,
            features,
            sparsifier: config.sparsifier.clone(),
            normalizer: normalizer.clone(),
            has_thresholds: thresholds.is_some(),
            interrupted,
            selection: Some(selection),
        },
        params: state.params.clone(),
        density: state.stats.density(),
        thresholds,
    };
    model.write(dir)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension("safetensors.partial")
}

/// Writes safetensors atomically: a temporary file, then a rename.
fn write_tensors_atomic(path: &Path, tensors: &[TensorRef<'_>]) -> Result<(), TrainError> {
    let tmp = tmp_path(path);
    write_safetensors(&tmp, tensors, Dtype::F32)?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Reads tensor `name` of the safetensors file `path` as f32, checking its shape.
pub(crate) fn read_tensor(path: &Path, name: &str, want: &[usize]) -> Result<Vec<f32>, TrainError> {
    let (shape, data) = read_safetensors(path, name)?;
    if shape != want {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("tensor `{name}` has shape {shape:?}, expected {want:?}"),
        });
    }
    Ok(data)
}

impl NativeModel {
    /// Writes `sae.safetensors` and `sae.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (d, f) = (self.meta.d_model, self.meta.features);
        let p = &self.params;
        let mut tensors = vec![
            TensorRef {
                name: "w_enc",
                shape: vec![f, d],
                data: &p.w_enc,
            },
            TensorRef {
                name: "b_enc",
                shape: vec![f],
                data: &p.b_enc,
            },
            TensorRef {
                name: "w_dec",
                shape: vec![f, d],
                data: &p.w_dec,
            },
            TensorRef {
                name: "b_dec",
                shape: vec![d],
                data: &p.b_dec,
            },
            TensorRef {
                name: "density",
                shape: vec![f],
                data: &self.density,
            },
        ];
        if let Some(t) = &self.thresholds {
            tensors.push(TensorRef {
                name: "threshold",
                shape: vec![f],
                data: t,
            });
        }
        write_tensors_atomic(&dir.join(NATIVE_WEIGHTS), &tensors)?;
        let json = serde_json::to_vec_pretty(&self.meta).expect("metadata serialises");
        write_atomic(&dir.join(NATIVE_META), &json)
    }

    /// Reads a model written by [`NativeModel::write`].
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let meta_path = dir.join(NATIVE_META);
        let bytes = std::fs::read(&meta_path).map_err(io(&meta_path))?;
        let error = |e: serde_json::Error| TrainError::Checkpoint {
            path: meta_path.clone(),
            reason: e.to_string(),
        };
        let mut meta: serde_json::Value = serde_json::from_slice(&bytes).map_err(error)?;
        if let Some(spec) = meta.get_mut("sparsifier") {
            crate::migrate::sparsifier_spec(spec);
        }
        let meta: NativeMeta = serde_json::from_value(meta).map_err(error)?;
        if meta.format != NATIVE_FORMAT {
            return Err(TrainError::Checkpoint {
                path: meta_path,
                reason: format!(
                    "format {} is not the supported {NATIVE_FORMAT}",
                    meta.format
                ),
            });
        }
        meta.check(&meta_path)?;
        let w = dir.join(NATIVE_WEIGHTS);
        let (d, f) = (meta.d_model, meta.features);
        let params = SaeParams {
            d_model: d,
            features: f,
            w_enc: read_tensor(&w, "w_enc", &[f, d])?,
            b_enc: read_tensor(&w, "b_enc", &[f])?,
            w_dec: read_tensor(&w, "w_dec", &[f, d])?,
            b_dec: read_tensor(&w, "b_dec", &[d])?,
        };
        let density = read_tensor(&w, "density", &[f])?;
        let thresholds = if meta.has_thresholds {
            Some(read_tensor(&w, "threshold", &[f])?)
        } else {
            None
        };
        Ok(Self {
            meta,
            params,
            density,
            thresholds,
        })
    }

    /// Writes the SAELens (v6) layout into `dir`, normalisation folded into the weights.
    pub fn write_saelens(&self, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (d, f) = (self.meta.d_model, self.meta.features);
        let raw = fold_normalizer(&self.params, &self.meta.normalizer);
        let name = self
            .meta
            .sparsifier
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("");
        let refuse = |reason: String| TrainError::Export {
            sparsifier: name.to_string(),
            reason,
        };
        let (architecture, k) = match self.meta.selection {
            Some(s) if s.activation != Activation::Relu => {
                return Err(refuse(format!(
                    "its codes are {:?}-activated (signed); SAELens' topk and jumprelu \
                     architectures keep only positive codes, so no SAELens architecture \
                     computes this model (keep the native format: `--format native`)",
                    s.activation
                )));
            }
            Some(SelectionSpec {
                inference: InferenceRule::PerToken,
                k,
                ..
            }) => ("topk", Some(k as u64)),
            Some(_) => ("jumprelu", None),
            // Models written before the rule was recorded: the built-in names.
            None if name == "topk" => (
                "topk",
                self.meta.sparsifier.get("k").and_then(|k| k.as_u64()),
            ),
            None => ("jumprelu", None),
        };
        if architecture == "jumprelu" && self.thresholds.is_none() {
            return Err(refuse(
                "its inference thresholds were never estimated (the run stopped before its \
                 first step?), and SAELens' jumprelu architecture needs them"
                    .into(),
            ));
        }
        let w_enc_t = transpose(&raw.w_enc, f, d);
        let mut tensors = vec![
            TensorRef {
                name: "W_enc",
                shape: vec![d, f],
                data: &w_enc_t,
            },
            TensorRef {
                name: "b_enc",
                shape: vec![f],
                data: &raw.b_enc,
            },
            TensorRef {
                name: "W_dec",
                shape: vec![f, d],
                data: &raw.w_dec,
            },
            TensorRef {
                name: "b_dec",
                shape: vec![d],
                data: &raw.b_dec,
            },
        ];
        let thresholds = self.thresholds.clone().unwrap_or_default();
        if architecture == "jumprelu" {
            tensors.push(TensorRef {
                name: "threshold",
                shape: vec![f],
                data: &thresholds,
            });
        }
        write_tensors_atomic(&dir.join("sae_weights.safetensors"), &tensors)?;
        let sparsity: Vec<f32> = self.density.iter().map(|&p| (p + 1e-10).log10()).collect();
        write_tensors_atomic(
            &dir.join("sparsity.safetensors"),
            &[TensorRef {
                name: "sparsity",
                shape: vec![f],
                data: &sparsity,
            }],
        )?;
        let mut cfg = serde_json::json!({
            "architecture": architecture,
            "d_in": d,
            "d_sae": f,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": true,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {
                "sae_lens_version": SAELENS_CONFIG_VERSION,
                "sae_lens_training_version": null,
                "trained_with": concat!("sae-train ", env!("CARGO_PKG_VERSION")),
                "sparsifier": self.meta.sparsifier,
                "normalization_scale_folded": self.meta.normalizer.scale,
            },
        });
        if architecture == "topk" {
            cfg["k"] = serde_json::json!(k);
            cfg["rescale_acts_by_decoder_norm"] = serde_json::json!(false);
        }
        write_atomic(
            &dir.join("cfg.json"),
            &serde_json::to_vec_pretty(&cfg).expect("serialises"),
        )
    }

    /// Reads a SAELens (v6) `topk` or `jumprelu` SAE directory into a native model in raw units.
    pub fn read_saelens(dir: &Path) -> Result<Self, TrainError> {
        let cfg_path = dir.join("cfg.json");
        let bytes = std::fs::read(&cfg_path).map_err(io(&cfg_path))?;
        let cfg: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
                path: cfg_path.clone(),
                reason: e.to_string(),
            })?;
        let field = |name: &str| {
            cfg.get(name)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| TrainError::Checkpoint {
                    path: cfg_path.clone(),
                    reason: format!("missing or non-integer `{name}`"),
                })
        };
        let (d, f) = (field("d_in")?, field("d_sae")?);
        if d == 0 || f == 0 {
            return Err(TrainError::Checkpoint {
                path: cfg_path,
                reason: format!("`d_in` = {d} and `d_sae` = {f} must both be at least 1"),
            });
        }
        let architecture = cfg
            .get("architecture")
            .and_then(|a| a.as_str())
            .unwrap_or("standard");
        let (sparsifier, selection) = match architecture {
            "topk" => {
                let k = field("k")?;
                let selection = SelectionSpec {
                    inference: InferenceRule::PerToken,
                    activation: Activation::Relu,
                    k,
                };
                (
                    serde_json::json!({ "name": "topk", "k": k }),
                    Some(selection),
                )
            }
            "jumprelu" => (serde_json::json!({ "name": "jumprelu" }), None),
            other => {
                return Err(TrainError::Checkpoint {
                    path: cfg_path,
                    reason: format!("architecture `{other}` is not supported (topk or jumprelu)"),
                });
            }
        };
        let w = dir.join("sae_weights.safetensors");
        let params = SaeParams {
            d_model: d,
            features: f,
            w_enc: transpose(&read_tensor(&w, "W_enc", &[d, f])?, d, f),
            b_enc: read_tensor(&w, "b_enc", &[f])?,
            w_dec: read_tensor(&w, "W_dec", &[f, d])?,
            b_dec: read_tensor(&w, "b_dec", &[d])?,
        };
        let thresholds = (architecture == "jumprelu")
            .then(|| read_tensor(&w, "threshold", &[f]))
            .transpose()?;
        let sparsity_path = dir.join("sparsity.safetensors");
        let density = if sparsity_path.exists() {
            read_tensor(&sparsity_path, "sparsity", &[f])?
                .iter()
                .map(|l| (10f32.powf(*l) - 1e-10).max(0.0))
                .collect()
        } else {
            vec![0.0; f]
        };
        Ok(Self {
            meta: NativeMeta {
                format: NATIVE_FORMAT,
                d_model: d,
                features: f,
                sparsifier,
                normalizer: Normalizer::identity(),
                has_thresholds: thresholds.is_some(),
                interrupted: None,
                selection,
            },
            params,
            density,
            thresholds,
        })
    }
}

/// Parameters in raw input units (see the module docs).
pub fn fold_normalizer(p: &SaeParams, n: &Normalizer) -> SaeParams {
    let s = n.scale;
    let mean = n.mean.clone().unwrap_or_else(|| vec![0.0; p.d_model]);
    SaeParams {
        d_model: p.d_model,
        features: p.features,
        w_enc: p.w_enc.iter().map(|w| w * s).collect(),
        b_enc: p.b_enc.clone(),
        w_dec: p.w_dec.iter().map(|w| w / s).collect(),
        b_dec: p.b_dec.iter().zip(&mean).map(|(b, m)| m + b / s).collect(),
    }
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}
