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
    /// the first `budget % features` features one more. The same as
    /// [`uniform_rotated`](Self::uniform_rotated) with offset 0.
    pub fn uniform(
        budget: usize,
        features: usize,
        max_per_feature: u32,
    ) -> Result<Self, AllocError> {
        Self::uniform_rotated(budget, features, max_per_feature, 0)
    }

    /// The budget spread as evenly as possible, the remainder starting at feature `offset`:
    /// every feature gets `base = budget / features`, and the `R = budget % features`
    /// features `offset, offset + 1, ..., offset + R - 1` (all mod `features`) get `base + 1`.
    ///
    /// [`uniform`](Self::uniform) always hands the remainder to features `0..R`, a fixed bias
    /// toward low feature ids. Passing a counter that advances by one per batch (e.g. the step
    /// number) as `offset` removes it: over any `features` consecutive offsets every feature
    /// gets the extra slot exactly `R` times. Errors unless `features > 0` and
    /// `budget <= features * max_per_feature`.
    pub fn uniform_rotated(
        budget: usize,
        features: usize,
        max_per_feature: u32,
        offset: usize,
    ) -> Result<Self, AllocError> {
        check_reachable(budget, features, 0, max_per_feature)?;
        let (base, extra) = (budget / features, budget % features);
        let start = offset % features;
        let per_feature = (0..features)
            // Position of feature f in the cyclic order that starts at `start`.
            .map(|f| (base + usize::from((f + features - start) % features < extra)) as u32)
            .collect();
        Ok(Self {
            per_feature,
            budget,
        })
    }

    /// Zipf capacities: the feature of rank `r` (1-based; `order[r - 1]` is its id, e.g. from
    /// [`usage_order`] of firing densities) gets about `budget * r^-exponent / H`.
    ///
    /// With `F = order.len()`, `lo = 1` if `budget >= F` (every feature keeps a token) and
    /// `lo = 0` otherwise, and `hi = max_per_feature`, the capacities are defined exactly by:
    ///
    /// 1. **Real shares (water-filling).** `s_r = clamp(c * r^-exponent, lo, hi)`, where the
    ///    scale `c` is the one at which the shares sum to `budget`. Shares above `hi` are cut
    ///    and the excess flows to the other ranks in proportion to their weights (and shares
    ///    below `lo` are raised, at their expense). The shares are unique and non-increasing
    ///    in rank; the ranks at `hi` are a prefix, those at `lo` a suffix.
    /// 2. **Rounding (largest remainder, Hamilton's method).** Every rank first gets
    ///    `floor(s_r)`; the `budget - sum_r floor(s_r)` slots left go, one each, to the ranks
    ///    with the largest fractional parts `s_r - floor(s_r)`, ties to the lower (better) rank.
    ///
    /// Hence the capacities sum to exactly `budget`, each is `floor(s_r)` or `ceil(s_r)`
    /// (within 1 of its share) and in `[lo, hi]`, and they are non-increasing in rank. With
    /// exponent 0 they are [`uniform`](Self::uniform) capacities over the ranks (the first
    /// `budget % F` ranks get one more).
    ///
    /// The shares are computed in `f64` (weights in log space, so no exponent underflows):
    /// exactly, up to rounding error, by locating the segment of the piecewise-linear sum
    /// `c -> sum_r s_r` that contains `budget` and solving it in closed form. A share within
    /// a relative `1e-12` of an integer counts as that integer (no fractional part). Errors
    /// on a negative or non-finite exponent, an `order` that is not a permutation of
    /// `0..F`, a budget outside `[F * lo, F * hi]`, and ([`AllocError::ZipfRounding`]) the
    /// case where rounding error in `f64` is too large for the rounding to hit the budget
    /// exactly (sums beyond about `1e13`).
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
            &zipf_log_weights(features, exponent),
            budget,
            lo,
            max_per_feature,
        )
        .ok_or(AllocError::ZipfRounding {
            budget,
            features,
            exponent,
        })?;
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

/// `ln(r^-exponent)` for ranks `r = 1..=n`: the unnormalised Zipf weights in log space, so
/// that no weight underflows whatever the exponent. Non-increasing in rank.
fn zipf_log_weights(n: usize, exponent: f64) -> Vec<f64> {
    (1..=n).map(|r| -exponent * (r as f64).ln()).collect()
}

/// A share closer than this (relative) to an integer is that integer: it has no fractional
/// part to compete for a remainder slot. Float error in a share is about `1e-14` relative.
const INTEGRAL_TOLERANCE: f64 = 1e-12;

/// The capacities of [`Capacities::zipf`] by rank: largest-remainder rounding of the
/// water-filling shares of `exp(log_weights)` (see there). `log_weights` must be
/// non-increasing and `budget` in `[n * lo, n * hi]`. `None` when `f64` rounding error was
/// too large for the remainders to make up the budget exactly.
fn round_to_budget(log_weights: &[f64], budget: usize, lo: u32, hi: u32) -> Option<Vec<u32>> {
    let n = log_weights.len();
    if n.checked_mul(lo as usize) == Some(budget) {
        return Some(vec![lo; n]);
    }
    if n.checked_mul(hi as usize) == Some(budget) {
        return Some(vec![hi; n]);
    }
    let shares = water_fill(log_weights, budget, lo, hi)?;
    let mut caps = Vec::with_capacity(n);
    // (fractional part, rank) of every share that is not an integer.
    let mut fractional: Vec<(f64, usize)> = Vec::new();
    let mut floors: usize = 0;
    for (rank, &share) in shares.iter().enumerate() {
        let nearest = share.round();
        let share = if (share - nearest).abs() <= INTEGRAL_TOLERANCE * share.max(1.0) {
            nearest
        } else {
            share
        };
        let floor = share.floor();
        if share > floor {
            fractional.push((share - floor, rank));
        }
        // Shares lie in [lo, hi], so floors fit u32 and stay in [lo, hi]; a share with a
        // fractional part is below hi, so its ceiling does too.
        caps.push(floor as u32);
        floors += floor as usize;
    }
    // The exact shares sum to `budget`, so the deficit equals the sum of the fractional
    // parts: an integer in [0, fractional.len()) (0 when there are none). The computed shares
    // are off by far less than 1 in total, which keeps the deficit in [0, fractional.len()];
    // outside it the rounding cannot be exact, and that is reported rather than patched.
    let deficit = budget.checked_sub(floors)?;
    if deficit > fractional.len() {
        return None;
    }
    let larger_first = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if deficit > 0 && deficit < fractional.len() {
        fractional.select_nth_unstable_by(deficit - 1, larger_first);
    }
    for &(_, rank) in &fractional[..deficit] {
        caps[rank] += 1;
    }
    debug_assert_eq!(caps.iter().map(|&c| c as usize).sum::<usize>(), budget);
    Some(caps)
}

/// Water-filling: the shares `clamp(c * exp(log_weights[r]), lo, hi)` at the scale `c` where
/// they sum to `budget`, for non-increasing `log_weights` and `n * lo < budget < n * hi`.
///
/// In `t = ln c` the sum is continuous and non-decreasing, and linear in `c` between its
/// breakpoints (rank `r` reaches `hi` at `t = ln hi - log_weights[r]` and leaves `lo` at
/// `t = ln lo - log_weights[r]`). A binary search over the sorted breakpoints finds the
/// segment holding `budget`; there the ranks at `hi` (a prefix) and at `lo` (a suffix) are
/// known, and the middle ranks share the rest in proportion to their weights. `None` if
/// rounding error made the segment inconsistent.
fn water_fill(log_weights: &[f64], budget: usize, lo: u32, hi: u32) -> Option<Vec<f64>> {
    debug_assert!(log_weights.windows(2).all(|w| w[0] >= w[1]));
    let n = log_weights.len();
    let (lo_f, hi_f) = (f64::from(lo), f64::from(hi));
    let (ln_lo, ln_hi) = (lo_f.ln(), hi_f.ln());
    // Breakpoints; both non-decreasing in rank. With lo = 0 no rank is ever held at lo
    // (every weight is positive), so there are no lower breakpoints.
    let at_hi: Vec<f64> = log_weights.iter().map(|w| ln_hi - w).collect();
    let leaves_lo: Vec<f64> = if lo > 0 {
        log_weights.iter().map(|w| ln_lo - w).collect()
    } else {
        Vec::new()
    };
    // Each breakpoint is kept as (t, ln bound, log weight of its rank): at it, rank r's
    // share is `exp(ln bound + (log_weights[r] - that weight))`. Taking the difference of
    // log weights first keeps the share exact where `t + log_weights[r]` would cancel
    // catastrophically (log weights near -1e308 under huge exponents). Infinite
    // breakpoints (weights that underflowed to 0) are never crossed.
    let mut breakpoints: Vec<(f64, f64, f64)> = log_weights
        .iter()
        .map(|&w| (ln_hi - w, ln_hi, w))
        .chain(
            log_weights
                .iter()
                .filter(|_| lo > 0)
                .map(|&w| (ln_lo - w, ln_lo, w)),
        )
        .filter(|(t, _, _)| t.is_finite())
        .collect();
    breakpoints.sort_by(|a, b| a.0.total_cmp(&b.0));
    breakpoints.dedup_by(|a, b| a.0 == b.0);
    // The sum of the shares at a breakpoint. Weights relative to the first are precomputed
    // when none of them can underflow (a spread of at most e^600 also keeps the scale finite
    // at every breakpoint); otherwise every term takes its own `exp`.
    let top = log_weights[0];
    let relative: Option<Vec<f64>> = (top - log_weights[n - 1] <= 600.0)
        .then(|| log_weights.iter().map(|w| (w - top).exp()).collect());
    let total = |&(_, ln_bound, anchor): &(f64, f64, f64)| -> f64 {
        match &relative {
            Some(relative) => {
                let scale = (ln_bound + (top - anchor)).exp();
                relative.iter().map(|r| (scale * r).clamp(lo_f, hi_f)).sum()
            }
            None => log_weights
                .iter()
                .map(|w| (ln_bound + (w - anchor)).exp().clamp(lo_f, hi_f))
                .sum(),
        }
    };
    let above = breakpoints.partition_point(|b| total(b) <= budget as f64);
    let below_t = above
        .checked_sub(1)
        .map_or(f64::NEG_INFINITY, |i| breakpoints[i].0);
    let above_t = breakpoints.get(above).map_or(f64::INFINITY, |b| b.0);
    // Inside (below_t, above_t): ranks with `at_hi <= below_t` are held at hi, those with
    // `leaves_lo >= above_t` at lo, the rest strictly between. Past the last finite
    // breakpoint every rank with a finite weight is at hi, and the ranks whose weights
    // underflowed (all equal in `f64`) share the rest equally rather than stay at lo.
    let held_hi = at_hi.partition_point(|&t| t <= below_t);
    let held_lo = if lo > 0 && above < breakpoints.len() {
        n - leaves_lo.partition_point(|&t| t < above_t)
    } else {
        0
    };
    let rest = budget as i128 - held_hi as i128 * i128::from(hi) - held_lo as i128 * i128::from(lo);
    if rest < 0 || held_hi + held_lo > n {
        return None;
    }
    let middle = held_hi..n - held_lo;
    let mut shares = vec![hi_f; held_hi];
    if middle.is_empty() {
        if rest != 0 {
            return None;
        }
    } else {
        // Relative weights against the largest middle one, so the first term is 1 and the
        // sum cannot underflow. Equal log weights (also two -inf) give equal shares.
        let top = log_weights[middle.start];
        let weights: Vec<f64> = log_weights[middle]
            .iter()
            .map(|&w| if w == top { 1.0 } else { (w - top).exp() })
            .collect();
        let sum = neumaier_sum(weights.iter().copied());
        let rest = rest as f64;
        shares.extend(weights.iter().map(|w| (rest * w / sum).clamp(lo_f, hi_f)));
    }
    shares.resize(n, lo_f);
    Some(shares)
}

/// Compensated (Kahan-Babuska-Neumaier) sum: error about one rounding, whatever the length.
fn neumaier_sum(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut compensation) = (0.0f64, 0.0f64);
    for v in values {
        let t = sum + v;
        compensation += if sum.abs() >= v.abs() {
            (sum - t) + v
        } else {
            (v - t) + sum
        };
        sum = t;
    }
    sum + compensation
}
