//! Statistics over seeds: each configuration's final numbers as mean ± sample standard
//! deviation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sae_report::FinalEval;

use super::grid::{Arm, Aux, DataSet};
use super::runs::RunResult;

/// Mean and sample standard deviation over seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stat {
    /// Over the finite values present; `None` when there are none.
    pub fn of(values: impl Iterator<Item = Option<f64>>) -> Option<Self> {
        let v: Vec<f64> = values.flatten().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Self { mean, std, n })
    }
}

/// One (data set, arm, auxiliary loss) over its seeds.
#[derive(Debug, Clone)]
pub struct Aggregate {
    pub data: DataSet,
    pub arm: Arm,
    pub aux: Aux,
    pub seeds: usize,
    pub fvu: Option<Stat>,
    pub l0_mean: Option<Stat>,
    /// The spread of L0 across tokens (each run's L0 std), averaged over seeds.
    pub l0_spread: Option<Stat>,
    pub dead: Option<Stat>,
    /// The largest dead fraction of any seed: "zero dead" must hold for every seed.
    pub dead_max: Option<f64>,
    pub underused: Option<Stat>,
    pub mmcs: Option<Stat>,
    pub recovered: Option<Stat>,
    pub tokens_per_second: Option<Stat>,
    /// The first seed's run directory, for links to its plots.
    pub first_dir: PathBuf,
}

/// Groups runs by configuration, in the grid's order (data, arm, auxiliary loss).
pub fn aggregate(runs: &[RunResult]) -> Vec<Aggregate> {
    let mut groups: BTreeMap<(DataSet, Arm, Aux), Vec<&RunResult>> = BTreeMap::new();
    for r in runs {
        groups
            .entry((r.spec.data, r.spec.arm, r.spec.aux))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((data, arm, aux), mut rs)| {
            rs.sort_by_key(|r| r.spec.seed);
            let stat =
                |f: fn(&FinalEval) -> Option<f64>| Stat::of(rs.iter().map(|r| f(&r.final_eval)));
            Aggregate {
                data,
                arm,
                aux,
                seeds: rs.len(),
                fvu: stat(|e| e.fvu),
                l0_mean: stat(|e| e.l0_mean),
                l0_spread: stat(|e| e.l0_std),
                dead: stat(|e| e.dead_in_training_fraction),
                dead_max: rs
                    .iter()
                    .filter_map(|r| r.final_eval.dead_in_training_fraction)
                    .reduce(f64::max),
                underused: stat(|e| e.underused_fraction),
                mmcs: stat(|e| e.mmcs),
                recovered: stat(|e| e.recovered),
                tokens_per_second: Stat::of(rs.iter().map(|r| r.tokens_per_second)),
                first_dir: rs[0].dir.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_mean_and_sample_std() {
        let s = Stat::of([Some(1.0), None, Some(3.0), Some(f64::NAN)].into_iter()).unwrap();
        assert_eq!((s.mean, s.std, s.n), (2.0, 2f64.sqrt(), 2));
        assert_eq!(Stat::of([Some(5.0)].into_iter()).unwrap().std, 0.0);
        assert!(Stat::of([None].into_iter()).is_none());
    }
}
