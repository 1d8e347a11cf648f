//! What `cargo xtask repro` was asked for: the grid's size, seeds and data, where runs and
//! results go, the trainer binary and backend.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Result, bail};

use super::grid::{DataSet, Scale};

#[derive(Debug)]
pub struct Options {
    pub quick: bool,
    /// The wide-dictionary grid where features die ([`Scale::wide`]), overriding `quick`.
    pub wide: bool,
    /// The smallest grid (a pipeline check for tests), overriding `quick`.
    pub smoke: bool,
    /// Where runs (`OUT/runs`) and results (`OUT/results.md`, `OUT/results/`) go instead of
    /// `target/repro` and `docs/`.
    pub out: Option<PathBuf>,
    pub seeds: u64,
    pub data: DataChoice,
    pub sae_bin: Option<PathBuf>,
    /// Write the configurations and print the commands, run nothing.
    pub dry_run: bool,
    /// The tensor backend of every run (`flex`, `wgpu`, `cuda`, ...); the trainer's default
    /// when absent.
    pub backend: Option<String>,
}

impl Options {
    /// The run sizes: `--smoke`, else `--wide`, else `--quick`, else the full grid.
    pub fn scale(&self) -> Scale {
        if self.smoke {
            Scale::smoke()
        } else if self.wide {
            Scale::wide()
        } else if self.quick {
            Scale::quick()
        } else {
            Scale::full()
        }
    }
}

/// `--data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataChoice {
    Synthetic,
    Real,
    Both,
}

impl FromStr for DataChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "synthetic" => Self::Synthetic,
            "real" => Self::Real,
            "both" => Self::Both,
            _ => bail!("--data must be synthetic, real or both, not `{s}`"),
        })
    }
}

impl DataChoice {
    /// The data sets to run, given where the real activations should be: without them,
    /// `real` fails and `both` runs the synthetic data only.
    pub fn data_sets(self, real: &Path) -> Result<Vec<DataSet>> {
        Ok(match self {
            Self::Synthetic => vec![DataSet::Synthetic],
            Self::Real | Self::Both if !real.exists() => {
                if self == Self::Real {
                    bail!("real activations not found at {}", real.display());
                }
                eprintln!("note: {} absent, synthetic data only", real.display());
                vec![DataSet::Synthetic]
            }
            Self::Real => vec![DataSet::Real],
            Self::Both => vec![DataSet::Real, DataSet::Synthetic],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_choice_parses_and_falls_back_without_the_real_activations() {
        assert!("bogus".parse::<DataChoice>().is_err());
        assert_eq!("both".parse::<DataChoice>().unwrap(), DataChoice::Both);
        let missing = Path::new("/nonexistent/minilm-l3-train.safetensors");
        assert!(DataChoice::Real.data_sets(missing).is_err());
        assert_eq!(
            DataChoice::Both.data_sets(missing).unwrap(),
            [DataSet::Synthetic]
        );
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(
            DataChoice::Both.data_sets(here).unwrap(),
            [DataSet::Real, DataSet::Synthetic]
        );
    }
}
