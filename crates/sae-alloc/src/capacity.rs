//! Feature Choice capacities: how many tokens each feature may take from a batch.

use serde::{Deserialize, Serialize};

use crate::AllocError;

/// Per-feature token capacities `m_f` whose sum is exactly the batch budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacities {
    per_feature: Vec<u32>,
    budget: usize,
}

impl Capacities {
    /// Explicit capacities; errors unless they sum to `budget`.
    pub fn from_vec(per_feature: Vec<u32>, budget: usize) -> Result<Self, AllocError> {
        let sum = per_feature.iter().map(|&c| c as usize).sum();
        if sum != budget {
            return Err(AllocError::CapacitySum { sum, budget });
        }
        Ok(Self {
            per_feature,
            budget,
        })
    }

    /// The budget spread as evenly as possible: every feature gets `budget / features`, and
    /// the first `budget % features` features one more.
    pub fn uniform(
        budget: usize,
        features: usize,
        max_per_feature: u32,
    ) -> Result<Self, AllocError> {
        check_reachable(budget, features, 0, max_per_feature)?;
        let (base, extra) = (budget / features, budget % features);
        let per_feature = (0..features)
            .map(|f| (base + usize::from(f < extra)) as u32)
            .collect();
        Ok(Self {
            per_feature,
            budget,
        })
    }

    /// Zipf capacities: the feature of rank r (1-based) gets about `budget * r^-exponent / H`,
    /// where `order[r - 1]` is that feature's id (e.g. [`usage_order`] of firing densities).
    ///
    /// Capacities are clamped to `[1, max_per_feature]` (to `[0, ..]` when the budget is
    /// smaller than the number of features), the excess is redistributed, and rounding keeps
    /// the sum exactly `budget` with capacities non-increasing in rank.
    pub fn zipf(
        budget: usize,
        max_per_feature: u32,
        exponent: f64,
        order: &[u32],
    ) -> Result<Self, AllocError> {
        if !exponent.is_finite() || exponent < 0.0 {
            return Err(AllocError::InvalidExponent { exponent });
        }
        check_permutation(order)?;
        let features = order.len();
        let lo = u32::from(budget >= features);
        check_reachable(budget, features, lo, max_per_feature)?;
        let by_rank = round_to_budget(
            &zipf_weights(features, exponent),
            budget,
            lo,
            max_per_feature,
        );
        let mut per_feature = vec![0u32; features];
        for (&feature, capacity) in order.iter().zip(by_rank) {
            per_feature[feature as usize] = capacity;
        }
        Ok(Self {
            per_feature,
            budget,
        })
    }

    /// Capacity of each feature.
    pub fn as_slice(&self) -> &[u32] {
        &self.per_feature
    }

    /// The capacities for a `rows x cols` score matrix: errors unless there is one per column
    /// and none exceeds `rows` (a column has no more tokens to give).
    pub fn for_shape(&self, rows: usize, cols: usize) -> Result<&[u32], AllocError> {
        let caps = self.as_slice();
        if caps.len() != cols {
            return Err(AllocError::CapacityCount {
                got: caps.len(),
                expected: cols,
            });
        }
        if let Some((feature, &capacity)) =
            caps.iter().enumerate().find(|(_, c)| **c as usize > rows)
        {
            return Err(AllocError::CapacityTooLarge {
                feature,
                capacity,
                rows,
            });
        }
        Ok(caps)
    }

    /// Their sum: the number of pairs a Feature Choice selection keeps.
    pub fn budget(&self) -> usize {
        self.budget
    }
}

/// Zipf weights `r^-exponent / H(n, exponent)` for ranks `r = 1..=n`; they sum to 1.
pub fn zipf_weights(n: usize, exponent: f64) -> Vec<f64> {
    let raw: Vec<f64> = (1..=n).map(|r| (r as f64).powf(-exponent)).collect();
    let harmonic: f64 = raw.iter().sum();
    raw.into_iter().map(|w| w / harmonic).collect()
}

/// Feature ids ordered by descending density (most used first; ties: lower id first).
pub fn usage_order(density: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..density.len() as u32).collect();
    order.sort_by(|&a, &b| {
        density[b as usize]
            .total_cmp(&density[a as usize])
            .then(a.cmp(&b))
    });
    order
}

fn check_reachable(budget: usize, features: usize, lo: u32, hi: u32) -> Result<(), AllocError> {
    let reachable = features > 0
        && budget >= features * lo as usize
        && budget <= features.saturating_mul(hi as usize);
    if reachable {
        Ok(())
    } else {
        Err(AllocError::BudgetUnreachable {
            budget,
            features,
            min_per_feature: lo,
            max_per_feature: hi,
        })
    }
}

fn check_permutation(order: &[u32]) -> Result<(), AllocError> {
    let mut seen = vec![false; order.len()];
    for (rank, &f) in order.iter().enumerate() {
        let bad = |reason: String| AllocError::InvalidOrder {
            features: order.len(),
            reason,
        };
        let slot = seen
            .get_mut(f as usize)
            .ok_or_else(|| bad(format!("rank {} names feature {f}", rank + 1)))?;
        if std::mem::replace(slot, true) {
            return Err(bad(format!("feature {f} appears twice")));
        }
    }
    Ok(())
}

/// Integer capacities in `[lo, hi]`, non-increasing, summing to `budget`, closest to
/// `clamp(c * weight, lo, hi)` for the scale `c` at which the real-valued targets sum to it.
fn round_to_budget(weights: &[f64], budget: usize, lo: u32, hi: u32) -> Vec<u32> {
    let (lo_f, hi_f) = (f64::from(lo), f64::from(hi));
    let total = |c: f64| -> f64 { weights.iter().map(|w| (c * w).clamp(lo_f, hi_f)).sum() };
    let smallest = weights
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(f64::MIN_POSITIVE);
    let (mut below, mut above) = (0.0, hi_f / smallest * 2.0);
    for _ in 0..200 {
        let mid = 0.5 * (below + above);
        if total(mid) < budget as f64 {
            below = mid
        } else {
            above = mid
        }
    }
    let mut caps: Vec<u32> = weights
        .iter()
        .map(|w| (above * w).clamp(lo_f, hi_f).floor() as u32)
        .collect();
    let mut sum: usize = caps.iter().map(|&c| c as usize).sum();
    // Targets are non-increasing in rank, so the floors are too; handing the remainder to the
    // first ranks below the cap keeps that order. Floating error can leave the sum a unit or
    // so off in either direction, hence the loops.
    while sum < budget {
        let rank = caps
            .iter()
            .position(|&c| c < hi)
            .expect("budget is reachable");
        let run_end = caps[rank..]
            .iter()
            .position(|&c| c != caps[rank])
            .map_or(caps.len(), |p| rank + p);
        let give = (budget - sum).min(run_end - rank);
        caps[rank..rank + give].iter_mut().for_each(|c| *c += 1);
        sum += give;
    }
    while sum > budget {
        let rank = caps
            .iter()
            .rposition(|&c| c > lo)
            .expect("budget is reachable");
        caps[rank] -= 1;
        sum -= 1;
    }
    caps
}
