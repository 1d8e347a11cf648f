//! Feature Choice capacities: Zipf capacities against an independent water-filling and
//! largest-remainder oracle, and the rotation of the uniform remainder.

use proptest::prelude::*;
use sae_alloc::Capacities;

/// Capacities in rank order (rank 1 first) for the identity order.
fn zipf_by_rank(budget: usize, hi: u32, exponent: f64, features: usize) -> Vec<u32> {
    let order: Vec<u32> = (0..features as u32).collect();
    Capacities::zipf(budget, hi, exponent, &order)
        .unwrap()
        .as_slice()
        .to_vec()
}

/// The real shares `clamp(c * r^-exponent, lo, hi)` summing to `budget`, by plain bisection
/// on `c` (unnormalised weights, many iterations): slow, but independent of the crate.
fn oracle_shares(features: usize, budget: usize, lo: u32, hi: u32, exponent: f64) -> Vec<f64> {
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    let weights: Vec<f64> = (1..=features).map(|r| (r as f64).powf(-exponent)).collect();
    let shares = |c: f64| -> Vec<f64> { weights.iter().map(|w| (c * w).clamp(lo, hi)).collect() };
    let smallest = weights.iter().copied().fold(f64::INFINITY, f64::min);
    let (mut below, mut above) = (0.0f64, 2.0 * hi / smallest);
    for _ in 0..2000 {
        let mid = 0.5 * (below + above);
        if mid == below || mid == above {
            break;
        }
        if shares(mid).iter().sum::<f64>() < budget as f64 {
            below = mid;
        } else {
            above = mid;
        }
    }
    shares(above)
}

#[test]
fn issue_example_n4096_k16_f3072() {
    // N = 4096 tokens, k = 16: budget 65,536 over F = 3072 features, at most 4096 each.
    let (rows, k, features) = (4096usize, 16usize, 3072usize);
    let caps = zipf_by_rank(rows * k, rows as u32, 1.0, features);
    assert_eq!(caps.iter().map(|&c| c as usize).sum::<usize>(), rows * k);
    // Shares: 4096 (clamped; c = 4096 * 0.98588.. puts rank 1 above the cap), 4038.140,
    // 2692.093, 2019.070, 1615.256, 1346.047, 1154.038, 1009.535, ... down to 2.629 at rank
    // 3072. Flooring leaves 1571 slots, which go to the 1571 largest fractional parts (the
    // cut lies between 0.51441 and 0.51402, far from float noise). Computed in 50-digit
    // arithmetic: ranks 2299..=3072 (774 of them, shares 2.63 to 3.0) end at 3, the ranks
    // from 1 to 2298 at 4 or more, and only rank 1 reaches the cap.
    assert_eq!(caps[..8], [4096, 4038, 2692, 2019, 1615, 1346, 1154, 1010]);
    assert_eq!(caps[2297], 4);
    assert!(caps[2298..].iter().all(|&c| c == 3), "{:?}", &caps[2290..]);
    assert_eq!(caps.iter().filter(|&&c| c == 4096).count(), 1);
    assert!(caps.windows(2).all(|w| w[0] >= w[1]));
}

#[test]
fn zipf_is_exact_where_shares_are_integers() {
    // Exponent 0, budget divisible: every share is exactly 5, so no rank gets a remainder.
    assert_eq!(zipf_by_rank(40, 8, 0.0, 8), vec![5; 8]);
    // Budget F * lo and F * hi: everything at a bound.
    assert_eq!(zipf_by_rank(6, 9, 2.0, 6), vec![1; 6]);
    assert_eq!(zipf_by_rank(54, 9, 2.0, 6), vec![9; 6]);
    assert_eq!(zipf_by_rank(0, 9, 1.0, 6), vec![0; 6]);
    // Exponent 1, shares 12, 6, 4, 3 (sum 25, c = 12): all integers.
    assert_eq!(zipf_by_rank(25, 20, 1.0, 4), vec![12, 6, 4, 3]);
}

#[test]
fn zipf_budget_below_features_lets_tail_drop_to_zero() {
    // lo = 0: shares 3 * r^-1 / H(5) = 1.31, 0.66, 0.44, 0.33, 0.26; floors 1, 0, 0, 0, 0;
    // the 2 slots left go to ranks 2 and 3.
    assert_eq!(zipf_by_rank(3, 4, 1.0, 5), vec![1, 1, 1, 0, 0]);
    // A huge exponent: rank 1 at the cap, rank 2 takes the rest, no weight underflows to NaN.
    assert_eq!(zipf_by_rank(3, 2, 1e6, 5), vec![2, 1, 0, 0, 0]);
    assert_eq!(zipf_by_rank(8, 2, 1e6, 5), vec![2, 2, 2, 1, 1]);
    // The largest exponent: log weights of ranks >= 3 overflow to -inf, and still no NaN.
    for (budget, hi, want) in [
        (3, 2, vec![2, 1, 0, 0, 0]),
        (4, 1, vec![1, 1, 1, 1, 0]),
        (8, 2, vec![2, 2, 2, 1, 1]),
        (9, 3, vec![3, 3, 1, 1, 1]),
    ] {
        assert_eq!(
            zipf_by_rank(budget, hi, f64::MAX, 5),
            want,
            "budget {budget}"
        );
    }
}

fn check_zipf_against_oracle(
    features: usize,
    hi: u32,
    budget: usize,
    exponent: f64,
    order: &[u32],
) -> Result<(), TestCaseError> {
    let lo = u32::from(budget >= features);
    let caps = Capacities::zipf(budget, hi, exponent, order).unwrap();
    let by_rank: Vec<u32> = order.iter().map(|&f| caps.as_slice()[f as usize]).collect();
    let shares = oracle_shares(features, budget, lo, hi, exponent);
    let weights: Vec<f64> = (1..=features).map(|r| (r as f64).powf(-exponent)).collect();
    const EPS: f64 = 1e-9;

    prop_assert_eq!(caps.budget(), budget);
    prop_assert_eq!(by_rank.iter().map(|&c| c as usize).sum::<usize>(), budget);
    for (r, (&cap, &share)) in by_rank.iter().zip(&shares).enumerate() {
        prop_assert!(
            (lo..=hi).contains(&cap),
            "rank {}: {} not in [{}, {}]",
            r,
            cap,
            lo,
            hi
        );
        prop_assert!(
            (f64::from(cap) - share).abs() < 1.0 + EPS,
            "rank {}: capacity {} vs share {}",
            r,
            cap,
            share
        );
    }
    // The remainder slots went to the largest fractional parts, ties to the lower rank.
    let frac = |s: f64| s - s.floor();
    let up: Vec<usize> = (0..features)
        .filter(|&r| f64::from(by_rank[r]) > shares[r] + EPS)
        .collect();
    let down: Vec<usize> = (0..features)
        .filter(|&r| f64::from(by_rank[r]) < shares[r] - EPS)
        .collect();
    for &i in &up {
        for &j in &down {
            prop_assert!(
                frac(shares[i]) >= frac(shares[j]) - EPS,
                "rank {} (frac {}) rounded up, rank {} (frac {}) down",
                i,
                frac(shares[i]),
                j,
                frac(shares[j])
            );
            if weights[i] == weights[j] {
                prop_assert!(
                    i < j,
                    "tie between ranks {} and {} went to the higher",
                    i,
                    j
                );
            }
        }
    }
    prop_assert!(
        by_rank.windows(2).all(|w| w[0] >= w[1]),
        "not monotone: {:?}",
        by_rank
    );
    Ok(())
}

/// (features, rows = the per-feature cap, a reachable budget).
fn shape() -> impl Strategy<Value = (usize, u32, usize)> {
    (1..40usize, 1..64u32)
        .prop_flat_map(|(features, hi)| (Just(features), Just(hi), 0..=features * hi as usize))
}

fn exponent() -> impl Strategy<Value = f64> {
    prop_oneof![1 => Just(0.0), 1 => Just(1.0), 6 => 0.0..3.0f64]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn zipf_is_largest_remainder_of_water_filling(
        (features, hi, budget) in shape(),
        exponent in exponent(),
    ) {
        let order: Vec<u32> = (0..features as u32).collect();
        check_zipf_against_oracle(features, hi, budget, exponent, &order)?;
    }

    #[test]
    fn zipf_follows_the_rank_order(
        ((_, hi, budget), order) in shape().prop_flat_map(|(features, hi, budget)| {
            let ids: Vec<u32> = (0..features as u32).collect();
            (Just((features, hi, budget)), Just(ids).prop_shuffle())
        }),
        exponent in exponent(),
    ) {
        check_zipf_against_oracle(order.len(), hi, budget, exponent, &order)?;
    }

    #[test]
    fn zipf_with_exponent_zero_equals_uniform((features, hi, budget) in shape()) {
        let order: Vec<u32> = (0..features as u32).collect();
        prop_assert_eq!(
            Capacities::zipf(budget, hi, 0.0, &order).unwrap(),
            Capacities::uniform(budget, features, hi).unwrap()
        );
    }

    #[test]
    fn uniform_rotated_puts_the_remainder_at_the_offset(
        (features, hi, budget) in shape(),
        offset in any::<usize>(),
    ) {
        let caps = Capacities::uniform_rotated(budget, features, hi, offset).unwrap();
        let caps = caps.as_slice();
        let (base, extra) = ((budget / features) as u32, budget % features);
        prop_assert_eq!(caps.iter().map(|&c| c as usize).sum::<usize>(), budget);
        prop_assert!(caps.iter().all(|&c| c == base || c == base + 1));
        let raised: Vec<usize> = (0..features).filter(|&f| caps[f] == base + 1).collect();
        prop_assert_eq!(raised.len(), extra);
        let mut want: Vec<usize> = (0..extra).map(|j| (offset % features + j) % features).collect();
        want.sort_unstable();
        prop_assert_eq!(raised, want);
    }

    #[test]
    fn uniform_rotated_favours_no_feature_over_a_cycle((features, hi, budget) in shape(), start in 0..1000usize) {
        let (base, extra) = ((budget / features) as u32, budget % features);
        let mut raised = vec![0usize; features];
        for offset in start..start + features {
            let caps = Capacities::uniform_rotated(budget, features, hi, offset).unwrap();
            for (count, &c) in raised.iter_mut().zip(caps.as_slice()) {
                *count += usize::from(c == base + 1);
            }
        }
        prop_assert!(raised.iter().all(|&n| n == extra), "{:?}", raised);
    }
}

#[test]
fn uniform_rotated_examples() {
    // 10 over 4 features: base 2, R = 2.
    let at = |offset| {
        Capacities::uniform_rotated(10, 4, 5, offset)
            .unwrap()
            .as_slice()
            .to_vec()
    };
    assert_eq!(at(0), [3, 3, 2, 2]);
    assert_eq!(at(1), [2, 3, 3, 2]);
    assert_eq!(at(3), [3, 2, 2, 3]);
    assert_eq!(at(6), at(2));
    assert_eq!(at(usize::MAX), at(usize::MAX % 4));
    assert_eq!(
        Capacities::uniform(10, 4, 5).unwrap(),
        Capacities::uniform_rotated(10, 4, 5, 0).unwrap()
    );
    // No remainder: the offset changes nothing.
    assert_eq!(
        Capacities::uniform_rotated(12, 4, 5, 3).unwrap().as_slice(),
        &[3; 4]
    );
    assert!(Capacities::uniform_rotated(21, 4, 5, 1).is_err());
    assert!(Capacities::uniform_rotated(0, 0, 5, 1).is_err());
}
