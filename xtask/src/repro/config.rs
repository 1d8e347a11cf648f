//! The training configuration written for each run of the grid: the part of `sae train`'s
//! schema (`crates/sae-train/src/config.rs`) that the grid sets, typed and serialised to TOML.
//! Every field left out keeps the trainer's default; `out_dir` and `backend` are set on the
//! command line.

use std::path::Path;

use serde::Serialize;

use super::grid::{Aux, DataSet, RunSpec};

/// Held-out tokens evaluated on the real activations (their held-out split is ~2600 rows).
pub const REAL_EVAL_TOKENS: u64 = 2_048;

/// One run's configuration file.
#[derive(Debug, Serialize)]
pub struct TrainingConfig {
    seed: u64,
    data: DataTable,
    model: ModelTable,
    sparsifier: SparsifierTable,
    step: StepTable,
    schedule: ScheduleTable,
    train: TrainTable,
}

/// `[data]`: the synthetic default or a file of activations.
#[derive(Debug, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
enum DataTable {
    Synthetic,
    Files { path: String },
}

/// `[model]`.
#[derive(Debug, Serialize)]
struct ModelTable {
    d_sae: u64,
}

/// `[sparsifier]`: the trainer's sparsifier by registered name and parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum SparsifierTable {
    Topk {
        k: u64,
    },
    FeatureChoice {
        k: u64,
        capacities: CapacityRule,
        /// Zipf capacities stay uniform until the statistics have seen this many tokens.
        zipf_warmup_tokens: u64,
    },
    MutualChoice {
        k: u64,
    },
}

/// How Feature Choice shares the budget among features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityRule {
    Uniform,
    Zipf,
}

/// `[step]`: the auxiliary loss and the dead-feature window.
#[derive(Debug, Serialize)]
struct StepTable {
    aux_coef: f64,
    aux: AuxTable,
    stats: StatsTable,
}

/// `[step.aux]`.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum AuxTable {
    None,
    AuxK,
    AuxZipf,
}

impl From<Aux> for AuxTable {
    fn from(aux: Aux) -> Self {
        match aux {
            Aux::None => Self::None,
            Aux::K => Self::AuxK,
            Aux::Zipf => Self::AuxZipf,
        }
    }
}

/// `[step.stats]`.
#[derive(Debug, Serialize)]
struct StatsTable {
    dead_window: u64,
    /// The Zipf law's exponent (Feature Choice's Zipf capacities, aux_zipf's targets).
    zipf_exponent: f64,
}

/// `[schedule]`: the learning-rate warm-up.
#[derive(Debug, Serialize)]
struct ScheduleTable {
    warmup_tokens: u64,
}

/// `[train]`: batch size, length and intervals.
#[derive(Debug, Serialize)]
struct TrainTable {
    batch_size: u64,
    total_tokens: u64,
    eval_every_tokens: u64,
    eval_tokens: u64,
    checkpoint_every_tokens: u64,
    keep_checkpoints: u64,
    log_every_steps: u64,
}

impl TrainingConfig {
    /// The configuration of `spec`; `real_data` is the file of real activations.
    pub fn for_run(spec: &RunSpec, real_data: &Path) -> Self {
        let s = &spec.scale;
        let (data, eval_tokens) = match spec.data {
            DataSet::Synthetic => (DataTable::Synthetic, s.eval_tokens),
            // The real activations hold out 2% of 131072 rows: evaluate no more than that.
            DataSet::Real => (
                DataTable::Files {
                    path: real_data.display().to_string(),
                },
                s.eval_tokens.min(REAL_EVAL_TOKENS),
            ),
        };
        Self {
            seed: spec.seed,
            data,
            model: ModelTable { d_sae: s.d_sae },
            sparsifier: spec.arm.sparsifier(s),
            step: StepTable {
                aux_coef: 1.0 / 32.0,
                aux: spec.aux.into(),
                stats: StatsTable {
                    dead_window: s.dead_window,
                    zipf_exponent: 1.0,
                },
            },
            schedule: ScheduleTable {
                warmup_tokens: s.lr_warmup_tokens,
            },
            train: TrainTable {
                batch_size: s.batch_size,
                total_tokens: s.total_tokens,
                eval_every_tokens: s.eval_every_tokens,
                eval_tokens,
                // One checkpoint, at the end.
                checkpoint_every_tokens: s.total_tokens,
                keep_checkpoints: 1,
                log_every_steps: s.log_every_steps,
            },
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a training configuration of strings and numbers is TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::super::grid::{Arm, Scale};
    use super::*;

    /// What the configuration was before it was typed: the same keys and values.
    const QUICK_SYNTHETIC_TOPK: &str = r#"seed = 0

[data]
source = "synthetic"

[model]
d_sae = 256

[sparsifier]
name = "topk"
k = 8

[step]
aux_coef = 0.03125

[step.aux]
kind = "none"

[step.stats]
dead_window = 16384
zipf_exponent = 1.0

[schedule]
warmup_tokens = 4096

[train]
batch_size = 256
total_tokens = 65536
eval_every_tokens = 32768
eval_tokens = 4096
checkpoint_every_tokens = 65536
keep_checkpoints = 1
log_every_steps = 16
"#;

    const QUICK_REAL_FC_UNIFORM_AUX_ZIPF: &str = r#"seed = 1

[data]
source = "files"
path = "/data/minilm-l3-train.safetensors"

[model]
d_sae = 256

[sparsifier]
name = "feature_choice"
k = 8
capacities = "uniform"
zipf_warmup_tokens = 8192

[step]
aux_coef = 0.03125

[step.aux]
kind = "aux_zipf"

[step.stats]
dead_window = 16384
zipf_exponent = 1.0

[schedule]
warmup_tokens = 4096

[train]
batch_size = 256
total_tokens = 65536
eval_every_tokens = 32768
eval_tokens = 2048
checkpoint_every_tokens = 65536
keep_checkpoints = 1
log_every_steps = 16
"#;

    const FULL_SYNTHETIC_FC_ZIPF_AUX_K: &str = r#"seed = 2

[data]
source = "synthetic"

[model]
d_sae = 6144

[sparsifier]
name = "feature_choice"
k = 32
capacities = "zipf"
zipf_warmup_tokens = 1000000

[step]
aux_coef = 0.03125

[step.aux]
kind = "aux_k"

[step.stats]
dead_window = 2000000
zipf_exponent = 1.0

[schedule]
warmup_tokens = 500000

[train]
batch_size = 4096
total_tokens = 20000000
eval_every_tokens = 2000000
eval_tokens = 65536
checkpoint_every_tokens = 20000000
keep_checkpoints = 1
log_every_steps = 50
"#;

    fn toml_of(data: DataSet, arm: Arm, aux: Aux, seed: u64, scale: Scale) -> String {
        let spec = RunSpec {
            data,
            arm,
            aux,
            seed,
            scale,
        };
        TrainingConfig::for_run(&spec, Path::new("/data/minilm-l3-train.safetensors")).to_toml()
    }

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn configurations_keep_the_keys_and_values_of_the_hand_written_ones() {
        let cells = [
            (
                toml_of(DataSet::Synthetic, Arm::TopK, Aux::None, 0, Scale::quick()),
                QUICK_SYNTHETIC_TOPK,
            ),
            (
                toml_of(DataSet::Real, Arm::FcUniform, Aux::Zipf, 1, Scale::quick()),
                QUICK_REAL_FC_UNIFORM_AUX_ZIPF,
            ),
            (
                toml_of(DataSet::Synthetic, Arm::FcZipf, Aux::K, 2, Scale::full()),
                FULL_SYNTHETIC_FC_ZIPF_AUX_K,
            ),
        ];
        for (new, old) in cells {
            assert_eq!(table(&new), table(old), "{new}");
        }
    }

    #[test]
    fn every_arm_names_its_trainer_sparsifier() {
        let names: Vec<String> = Arm::ALL
            .iter()
            .map(|&arm| {
                let t = table(&toml_of(DataSet::Real, arm, Aux::Zipf, 3, Scale::quick()));
                let sparsifier = t["sparsifier"].as_table().unwrap();
                assert_eq!(sparsifier["k"].as_integer(), Some(8));
                let capacities = sparsifier.get("capacities").and_then(|c| c.as_str());
                format!("{} {capacities:?}", sparsifier["name"].as_str().unwrap())
            })
            .collect();
        assert_eq!(
            names,
            [
                "topk None",
                "feature_choice Some(\"uniform\")",
                "feature_choice Some(\"zipf\")",
                "mutual_choice None",
            ]
        );
    }
}
