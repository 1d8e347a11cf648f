//! The experiment grid: the data sets, the four allocation arms, the auxiliary losses, the
//! run sizes, and one [`RunSpec`] per cell of data set × arm × auxiliary loss × seed.

use std::path::{Path, PathBuf};

use super::config::{CapacityRule, SparsifierTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DataSet {
    Real,
    Synthetic,
}

impl DataSet {
    pub fn name(self) -> &'static str {
        match self {
            Self::Real => "real",
            Self::Synthetic => "synthetic",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Self::Real => "MiniLM-L3 activations",
            Self::Synthetic => "synthetic (known dictionary)",
        }
    }
}

/// The real activations: `$SAE_SHARED_DATA` or `../shared/data` beside the workspace.
pub fn real_data_path(root: &Path) -> PathBuf {
    let dir = std::env::var_os("SAE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"));
    dir.join("minilm-l3-train.safetensors")
}

/// The allocation rules compared at equal sparsity, each an arm of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arm {
    TopK,
    FcUniform,
    FcZipf,
    MutualChoice,
}

impl Arm {
    pub const ALL: [Self; 4] = [
        Self::TopK,
        Self::FcUniform,
        Self::FcZipf,
        Self::MutualChoice,
    ];

    /// The arm in run directory and configuration names.
    pub fn name(self) -> &'static str {
        match self {
            Self::TopK => "topk",
            Self::FcUniform => "fc_uniform",
            Self::FcZipf => "fc_zipf",
            Self::MutualChoice => "mc",
        }
    }
    /// The arm in tables and claims.
    pub fn label(self) -> &'static str {
        match self {
            Self::TopK => "TopK",
            Self::FcUniform => "FC (uniform)",
            Self::FcZipf => "FC (Zipf)",
            Self::MutualChoice => "MC",
        }
    }
    pub fn is_feature_choice(self) -> bool {
        matches!(self, Self::FcUniform | Self::FcZipf)
    }

    /// The trainer's `[sparsifier]` table for this arm at `scale`: every arm keeps `k`
    /// features per token on average, Feature Choice with uniform or Zipf capacities.
    pub fn sparsifier(self, scale: &Scale) -> SparsifierTable {
        let k = scale.k;
        let feature_choice = |capacities| SparsifierTable::FeatureChoice {
            k,
            capacities,
            zipf_warmup_tokens: scale.zipf_warmup_tokens,
        };
        match self {
            Self::TopK => SparsifierTable::Topk { k },
            Self::FcUniform => feature_choice(CapacityRule::Uniform),
            Self::FcZipf => feature_choice(CapacityRule::Zipf),
            Self::MutualChoice => SparsifierTable::MutualChoice { k },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Aux {
    None,
    K,
    Zipf,
}

impl Aux {
    pub const ALL: [Self; 3] = [Self::None, Self::K, Self::Zipf];
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::K => "aux_k",
            Self::Zipf => "aux_zipf",
        }
    }
}

/// Model and training sizes of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub d_sae: u64,
    pub k: u64,
    pub batch_size: u64,
    pub total_tokens: u64,
    pub eval_every_tokens: u64,
    pub eval_tokens: u64,
    pub dead_window: u64,
    pub log_every_steps: u64,
    /// Learning-rate warm-up.
    pub lr_warmup_tokens: u64,
    /// Zipf capacities stay uniform until the feature statistics have seen this many tokens.
    pub zipf_warmup_tokens: u64,
}

impl Scale {
    /// Minutes for the whole grid on two CPU cores.
    pub fn quick() -> Self {
        Self {
            d_sae: 256,
            k: 8,
            batch_size: 256,
            total_tokens: 65_536,
            eval_every_tokens: 32_768,
            eval_tokens: 4_096,
            dead_window: 16_384,
            log_every_steps: 16,
            lr_warmup_tokens: 4_096,
            zipf_warmup_tokens: 8_192,
        }
    }
    /// Sized for a GPU: a 16x dictionary of the 384-wide activations, 20M tokens a run.
    pub fn full() -> Self {
        Self {
            d_sae: 6_144,
            k: 32,
            batch_size: 4_096,
            total_tokens: 20_000_000,
            eval_every_tokens: 2_000_000,
            eval_tokens: 65_536,
            dead_window: 2_000_000,
            log_every_steps: 50,
            lr_warmup_tokens: 500_000,
            zipf_warmup_tokens: 1_000_000,
        }
    }
    /// A wide dictionary trained long enough for features to die without help (the setting
    /// where "aux_zipf reduces dead and under-used features" and "Feature Choice has no dead
    /// features" can fail): 16x the 384-wide activations, k = 8, 1.5M tokens, a dead window
    /// of 100k tokens; minutes a run on two CPU cores.
    pub fn wide() -> Self {
        Self {
            d_sae: 6_144,
            k: 8,
            batch_size: 4_096,
            total_tokens: 1_499_136,
            eval_every_tokens: 499_712,
            eval_tokens: 65_536,
            dead_window: 100_000,
            log_every_steps: 20,
            lr_warmup_tokens: 40_960,
            zipf_warmup_tokens: 204_800,
        }
    }
    /// One tiny run, seconds on a CPU: the CI smoke test.
    pub fn smoke() -> Self {
        Self {
            d_sae: 64,
            k: 4,
            batch_size: 128,
            total_tokens: 4_096,
            eval_every_tokens: 2_048,
            eval_tokens: 1_024,
            dead_window: 2_048,
            log_every_steps: 8,
            lr_warmup_tokens: 512,
            zipf_warmup_tokens: 1_024,
        }
    }
}

/// One configuration of the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSpec {
    pub data: DataSet,
    pub arm: Arm,
    pub aux: Aux,
    pub seed: u64,
    pub scale: Scale,
}

impl RunSpec {
    /// `fc_zipf+aux_k`; the auxiliary part is left out when there is none.
    pub fn variant(&self) -> String {
        match self.aux {
            Aux::None => self.arm.name().to_string(),
            aux => format!("{}+{}", self.arm.name(), aux.name()),
        }
    }

    /// The run's directory under `base`: `<data>/<variant>/seed-<n>`.
    pub fn dir(&self, base: &Path) -> PathBuf {
        base.join(self.data.name())
            .join(self.variant())
            .join(format!("seed-{}", self.seed))
    }
}

/// The grid: every data set × arm × auxiliary loss × seed.
pub fn grid(data: &[DataSet], seeds: u64, scale: Scale) -> Vec<RunSpec> {
    let mut specs = Vec::new();
    for &data in data {
        for arm in Arm::ALL {
            for aux in Aux::ALL {
                for seed in 0..seeds {
                    specs.push(RunSpec {
                        data,
                        arm,
                        aux,
                        seed,
                        scale,
                    });
                }
            }
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_name_the_arm_and_aux_and_the_grid_covers_every_cell() {
        let spec = RunSpec {
            data: DataSet::Real,
            arm: Arm::FcZipf,
            aux: Aux::Zipf,
            seed: 3,
            scale: Scale::quick(),
        };
        assert_eq!(spec.variant(), "fc_zipf+aux_zipf");
        assert_eq!(
            spec.dir(Path::new("b")),
            Path::new("b/real/fc_zipf+aux_zipf/seed-3")
        );
        let none = RunSpec {
            aux: Aux::None,
            ..spec
        };
        assert_eq!(none.variant(), "fc_zipf");
        assert_eq!(grid(&[DataSet::Synthetic], 2, Scale::quick()).len(), 24);
    }
}
