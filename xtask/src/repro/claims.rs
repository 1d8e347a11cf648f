//! The paper's claims, each checked on every comparison the aggregated runs allow.

use super::grid::{Arm, Aux, DataSet};
use super::stats::Aggregate;

/// Mean L0s within this relative distance count as "equal sparsity".
pub const EQUAL_L0_TOLERANCE: f64 = 0.05;

/// The outcome of checking one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Held,
    Partly,
    NotHeld,
    Untested,
}

impl Verdict {
    fn from_counts(held: usize, tested: usize) -> Self {
        match (held, tested) {
            (_, 0) => Self::Untested,
            (h, t) if h == t => Self::Held,
            (0, _) => Self::NotHeld,
            _ => Self::Partly,
        }
    }
    pub fn text(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Partly => "held in part",
            Self::NotHeld => "did not hold",
            Self::Untested => "not tested (runs missing)",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Claim {
    pub statement: &'static str,
    pub verdict: Verdict,
    /// One line per comparison made.
    pub evidence: Vec<String>,
}

fn find(aggs: &[Aggregate], data: DataSet, arm: Arm, aux: Aux) -> Option<&Aggregate> {
    aggs.iter()
        .find(|a| a.data == data && a.arm == arm && a.aux == aux)
}

/// The data sets of `aggs`, in their order.
pub fn data_sets(aggs: &[Aggregate]) -> Vec<DataSet> {
    let mut d: Vec<DataSet> = aggs.iter().map(|a| a.data).collect();
    d.dedup();
    d
}

/// The paper's claims, each checked on every comparison the runs allow.
pub fn evaluate_claims(aggs: &[Aggregate]) -> Vec<Claim> {
    vec![
        lower_fvu_than_topk(aggs),
        feature_choice_no_dead(aggs),
        aux_zipf_reduces_dead_and_underused(aggs),
    ]
}

fn lower_fvu_than_topk(aggs: &[Aggregate]) -> Claim {
    let (mut held, mut tested, mut evidence) = (0, 0, Vec::new());
    for data in data_sets(aggs) {
        for aux in Aux::ALL {
            let Some(topk) = find(aggs, data, Arm::TopK, aux) else {
                continue;
            };
            for arm in [Arm::FcUniform, Arm::FcZipf, Arm::MutualChoice] {
                let Some(other) = find(aggs, data, arm, aux) else {
                    continue;
                };
                let (Some(f_t), Some(f_o), Some(l_t), Some(l_o)) =
                    (topk.fvu, other.fvu, topk.l0_mean, other.l0_mean)
                else {
                    continue;
                };
                let prefix = format!("{} / {} / {}:", data.name(), arm.label(), aux.name());
                if (l_o.mean - l_t.mean).abs() > EQUAL_L0_TOLERANCE * l_t.mean.abs().max(1e-9) {
                    evidence.push(format!(
                        "{prefix} not compared, L0 {:.2} vs TopK {:.2} differ by more than {:.0}%",
                        l_o.mean,
                        l_t.mean,
                        100.0 * EQUAL_L0_TOLERANCE
                    ));
                    continue;
                }
                tested += 1;
                let ok = f_o.mean < f_t.mean;
                held += usize::from(ok);
                evidence.push(format!(
                    "{prefix} FVU {:.4} vs TopK {:.4} ({}) at L0 {:.2} vs {:.2}",
                    f_o.mean,
                    f_t.mean,
                    if ok { "lower" } else { "not lower" },
                    l_o.mean,
                    l_t.mean
                ));
            }
        }
    }
    Claim {
        statement: "Feature Choice and Mutual Choice reach lower FVU than TopK at equal mean L0",
        verdict: Verdict::from_counts(held, tested),
        evidence,
    }
}

fn feature_choice_no_dead(aggs: &[Aggregate]) -> Claim {
    let (mut held, mut tested, mut evidence) = (0, 0, Vec::new());
    for a in aggs.iter().filter(|a| a.arm.is_feature_choice()) {
        let Some(max) = a.dead_max else { continue };
        tested += 1;
        held += usize::from(max == 0.0);
        evidence.push(format!(
            "{} / {} / {}: largest dead fraction over {} seed(s) {:.2}%",
            a.data.name(),
            a.arm.label(),
            a.aux.name(),
            a.seeds,
            100.0 * max
        ));
    }
    Claim {
        statement: "Feature Choice has zero dead features",
        verdict: Verdict::from_counts(held, tested),
        evidence,
    }
}

fn aux_zipf_reduces_dead_and_underused(aggs: &[Aggregate]) -> Claim {
    let (mut held, mut tested, mut evidence) = (0, 0, Vec::new());
    for data in data_sets(aggs) {
        for arm in Arm::ALL {
            let (Some(none), Some(zipf)) = (
                find(aggs, data, arm, Aux::None),
                find(aggs, data, arm, Aux::Zipf),
            ) else {
                continue;
            };
            let (Some(dn), Some(dz), Some(un), Some(uz)) =
                (none.dead, zipf.dead, none.underused, zipf.underused)
            else {
                continue;
            };
            tested += 1;
            // Nothing to reduce counts as no worse; at least one of the two must fall.
            let ok = dz.mean <= dn.mean
                && uz.mean <= un.mean
                && (dz.mean < dn.mean || uz.mean < un.mean);
            held += usize::from(ok);
            evidence.push(format!(
                "{} / {}: dead {:.2}% → {:.2}%, under-used {:.2}% → {:.2}% ({})",
                data.name(),
                arm.label(),
                100.0 * dn.mean,
                100.0 * dz.mean,
                100.0 * un.mean,
                100.0 * uz.mean,
                if ok { "reduced" } else { "not reduced" }
            ));
        }
    }
    Claim {
        statement: "aux_zipf reduces dead and under-used features (against no auxiliary loss)",
        verdict: Verdict::from_counts(held, tested),
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fabricated::{fabricated_runs, scratch_dir};
    use super::super::stats::{Stat, aggregate};
    use super::*;

    #[test]
    fn claims_follow_the_numbers() {
        let base = scratch_dir("repro_claims");
        let runs = fabricated_runs(&base);
        let claims = evaluate_claims(&aggregate(&runs));
        // Fabricated: FVU falls with the arm's index, FC has no dead features, aux_zipf
        // lowers under-use everywhere and dead features where there are any.
        assert_eq!(claims[0].verdict, Verdict::Held, "{:?}", claims[0]);
        assert_eq!(claims[0].evidence.len(), 2 * 3 * 3);
        assert_eq!(claims[1].verdict, Verdict::Held);
        assert_eq!(claims[2].verdict, Verdict::Held, "{:?}", claims[2]);

        // TopK better than MC on one comparison: only in part.
        let mut aggs = aggregate(&runs);
        for a in aggs.iter_mut().filter(|a| a.arm == Arm::TopK) {
            a.fvu = Some(Stat {
                mean: 0.25,
                std: 0.0,
                n: 2,
            });
        }
        assert_eq!(lower_fvu_than_topk(&aggs).verdict, Verdict::Partly);
        // Unequal L0: nothing is comparable.
        for a in aggs.iter_mut().filter(|a| a.arm == Arm::TopK) {
            a.l0_mean = Some(Stat {
                mean: 16.0,
                std: 0.0,
                n: 2,
            });
        }
        assert_eq!(lower_fvu_than_topk(&aggs).verdict, Verdict::Untested);
        // One seed of one FC configuration with a dead feature.
        aggs[3].dead_max = Some(0.001);
        assert!(aggs[3].arm.is_feature_choice());
        assert_eq!(feature_choice_no_dead(&aggs).verdict, Verdict::Partly);
        assert_eq!(evaluate_claims(&[])[0].verdict, Verdict::Untested);
        let _ = std::fs::remove_dir_all(&base);
    }
}
