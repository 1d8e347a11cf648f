//! Every rule equals its brute-force oracle (same pairs, same tie order) and respects its
//! limits, on random matrices with ties, signed zeros, infinities and odd shapes.

mod common;

use common::*;
use proptest::prelude::*;
use sae_alloc::{
    Capacities, ScoreMatrix, column_topm, column_topm_transposed, global_topk, row_topk,
    usage_order,
};

fn capacities(rows: usize, cols: usize) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0..=rows as u32, cols)
}

/// A long row whose `k`-th largest block maximum is -inf (one finite score): the lower bound
/// bounds nothing and the row takes the running threshold; the -inf scores tie by index.
#[test]
fn long_row_with_a_bound_of_minus_infinity() {
    // 17 blocks of 64 scores and a tail: enough blocks for k = 3.
    let (rows, cols, k) = (2, 1100, 3);
    let mut data = vec![f32::NEG_INFINITY; rows * cols];
    data[300] = 1.0;
    data[cols + 7] = -0.0;
    let matrix = ScoreMatrix::new(&data, rows, cols).unwrap();
    assert_eq!(
        row_topk(&matrix, k).unwrap(),
        oracle_rows(&data, rows, cols, k)
    );
}

/// Scores for long rows. Those of `score()` would fill every top `k` of a long row with
/// +inf; these have a top of distinct values, so the `k`-th largest is often a block's
/// maximum and equals the bound, with some ties and -inf below.
fn long_row_score() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -1e6f32..1e6,
        2 => (-3i8..=3).prop_map(f32::from),
        1 => Just(-0.0f32),
        1 => Just(f32::NEG_INFINITY),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn row_topk_matches_oracle(((data, rows, cols), frac) in (matrix(12, 70), 0.0..=1.0f64)) {
        let k = (frac * cols as f64).round() as usize;
        let matrix = ScoreMatrix::new(&data, rows, cols).unwrap();
        let got = row_topk(&matrix, k).unwrap();
        let want = oracle_rows(&data, rows, cols, k);
        prop_assert!(got.l0_per_token().iter().all(|&l| l as usize == k));
        prop_assert_eq!(total(&got), total(&want));
        prop_assert_eq!(got, want);
    }

    /// Rows long enough for the block-maxima lower bound (at least 4 blocks of 64 scores per
    /// selected one), with a ragged tail after the last full block, and `k` on both sides of
    /// the rows' switch to it.
    #[test]
    fn long_row_topk_matches_oracle(
        ((data, rows, cols), k) in (1..=3usize, 256..=2200usize).prop_flat_map(|(rows, cols)| (
            (prop::collection::vec(long_row_score(), rows * cols), Just(rows), Just(cols)),
            1..=cols / 128,
        )),
    ) {
        let matrix = ScoreMatrix::new(&data, rows, cols).unwrap();
        let got = row_topk(&matrix, k).unwrap();
        prop_assert_eq!(got, oracle_rows(&data, rows, cols, k));
    }

    #[test]
    fn global_topk_matches_oracle(((data, rows, cols), frac) in (matrix(20, 40), 0.0..=1.0f64)) {
        let budget = (frac * (rows * cols) as f64).round() as usize;
        let matrix = ScoreMatrix::new(&data, rows, cols).unwrap();
        let got = global_topk(&matrix, budget).unwrap();
        let want = oracle_global(&data, rows, cols, budget);
        prop_assert_eq!(got.nnz(), budget);
        prop_assert_eq!(total(&got), total(&want));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn column_topm_matches_oracle(
        (data, rows, cols, caps) in matrix(40, 20)
            .prop_flat_map(|(d, r, c)| (Just(d), Just(r), Just(c), capacities(r, c)))
    ) {
        let budget = caps.iter().map(|&c| c as usize).sum();
        let capacities = Capacities::from_vec(caps.clone(), budget).unwrap();
        let matrix = ScoreMatrix::new(&data, rows, cols).unwrap();
        let got = column_topm(&matrix, &capacities).unwrap();
        let want = oracle_columns(&data, rows, cols, &caps);
        prop_assert_eq!(got.counts_per_feature(), caps);
        prop_assert_eq!(total(&got), total(&want));
        let by_feature = matrix.transposed();
        let transposed = ScoreMatrix::new(&by_feature, cols, rows).unwrap();
        prop_assert_eq!(&column_topm_transposed(&transposed, &capacities).unwrap(), &want);
        prop_assert_eq!(got, want);
    }

    /// Feature-major columns long enough for the block-maxima bound (a block per 64 tokens,
    /// at least 4 per kept token), with a ragged tail, capacities on both sides of the switch
    /// to it, and capacity 0.
    #[test]
    fn column_topm_transposed_matches_oracle_on_long_columns(
        (data, rows, cols) in (256..=2200usize, 1..4usize).prop_flat_map(|(r, c)| {
            (prop::collection::vec(long_row_score(), r * c), Just(r), Just(c))
        }),
        cap in 0..24u32,
    ) {
        let caps: Vec<u32> = (0..cols as u32).map(|c| (cap + 5 * c) % 25).collect();
        let budget = caps.iter().map(|&c| c as usize).sum();
        let capacities = Capacities::from_vec(caps.clone(), budget).unwrap();
        let by_feature = ScoreMatrix::new(&data, rows, cols).unwrap().transposed();
        let transposed = ScoreMatrix::new(&by_feature, cols, rows).unwrap();
        prop_assert_eq!(
            column_topm_transposed(&transposed, &capacities).unwrap(),
            oracle_columns(&data, rows, cols, &caps)
        );
    }

    /// Larger matrices exercise the pruning paths (buffers refilled many times) and, for the
    /// global rule, parts of the radix passes.
    #[test]
    fn rules_match_oracles_on_wide_rows(
        (data, rows, cols) in (1..4usize, 200..1500usize).prop_flat_map(|(r, c)| {
            (prop::collection::vec(score(), r * c), Just(r), Just(c))
        }),
        k in 1..24usize,
    ) {
        let matrix = ScoreMatrix::new(&data, rows, cols).unwrap();
        prop_assert_eq!(row_topk(&matrix, k).unwrap(), oracle_rows(&data, rows, cols, k));
        prop_assert_eq!(
            global_topk(&matrix, k * rows).unwrap(),
            oracle_global(&data, rows, cols, k * rows)
        );
    }

    /// Tall matrices exercise the column rule's pruning (buffers refilled many times).
    #[test]
    fn column_topm_matches_oracle_on_tall_columns(
        (data, rows, cols) in (200..1500usize, 1..4usize).prop_flat_map(|(r, c)| {
            (prop::collection::vec(score(), r * c), Just(r), Just(c))
        }),
        cap in 0..40u32,
    ) {
        let caps: Vec<u32> = (0..cols as u32).map(|c| (cap + 7 * c) % 41).collect();
        let budget = caps.iter().map(|&c| c as usize).sum();
        let capacities = Capacities::from_vec(caps.clone(), budget).unwrap();
        let matrix = ScoreMatrix::new(&data, rows, cols).unwrap();
        prop_assert_eq!(column_topm(&matrix, &capacities).unwrap(), oracle_columns(&data, rows, cols, &caps));
    }

    #[test]
    fn zipf_capacities_sum_to_budget_and_follow_rank(
        features in 1..300usize,
        max in 1..64u32,
        fill in 0.0..=1.0f64,
        exponent in 0.0..3.0f64,
        seed in any::<u64>(),
    ) {
        let budget = (fill * (features * max as usize) as f64) as usize;
        // A rank order from pseudo-random densities.
        let density: Vec<f32> = (0..features)
            .map(|f| ((seed ^ (f as u64 * 0x9E37_79B9)) % 1000) as f32)
            .collect();
        let order = usage_order(&density);
        let caps = Capacities::zipf(budget, max, exponent, &order).unwrap();
        let lo = u32::from(budget >= features);
        prop_assert_eq!(caps.as_slice().iter().map(|&c| c as usize).sum::<usize>(), budget);
        let by_rank: Vec<u32> = order.iter().map(|&f| caps.as_slice()[f as usize]).collect();
        prop_assert!(by_rank.iter().all(|&c| (lo..=max).contains(&c)));
        prop_assert!(by_rank.windows(2).all(|w| w[0] >= w[1]), "not monotone: {:?}", by_rank);
    }

    /// `feature_major` lists every pair once, under its own feature, rows ascending.
    #[test]
    fn feature_major_groups_every_pair_by_feature_in_row_order(
        ((data, rows, cols), frac) in (matrix(20, 30), 0.0..=1.0f64)
    ) {
        let budget = (frac * (rows * cols) as f64).round() as usize;
        let selection = oracle_global(&data, rows, cols, budget);
        let (offsets, pairs) = selection.feature_major();
        let tokens = selection.token_ids();
        prop_assert_eq!(offsets.len(), cols + 1);
        let mut seen = vec![false; selection.nnz()];
        for f in 0..cols {
            let group = &pairs[offsets[f]..offsets[f + 1]];
            prop_assert!(group.iter().all(|&p| selection.features()[p as usize] as usize == f));
            prop_assert!(group.windows(2).all(|w| tokens[w[0] as usize] < tokens[w[1] as usize]));
            for &p in group {
                prop_assert!(!seen[p as usize]);
                seen[p as usize] = true;
            }
        }
        prop_assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn uniform_capacities_are_even(features in 1..500usize, max in 1..100u32, fill in 0.0..=1.0f64) {
        let budget = (fill * (features * max as usize) as f64) as usize;
        let caps = Capacities::uniform(budget, features, max).unwrap();
        let (lo, hi) = (budget / features, budget.div_ceil(features));
        prop_assert_eq!(caps.budget(), budget);
        prop_assert_eq!(caps.as_slice().iter().map(|&c| c as usize).sum::<usize>(), budget);
        prop_assert!(caps.as_slice().iter().all(|&c| (lo..=hi).contains(&(c as usize))));
    }
}

#[test]
fn zipf_with_exponent_zero_is_uniform() {
    let order: Vec<u32> = (0..10).rev().collect();
    let zipf = Capacities::zipf(35, 8, 0.0, &order).unwrap();
    // Equal weights: ranks 1..=5 (features 9..=5) get the 5 extra units.
    assert_eq!(zipf.as_slice(), &[3, 3, 3, 3, 3, 4, 4, 4, 4, 4]);
}

#[test]
fn zipf_clamps_to_max_and_redistributes() {
    let order: Vec<u32> = (0..4).collect();
    // Ideal shares of 100 with exponent 2: 70, 17.5, 7.8, 4.4; the cap of 40 moves the excess.
    let zipf = Capacities::zipf(100, 40, 2.0, &order).unwrap();
    assert_eq!(zipf.as_slice().iter().sum::<u32>(), 100);
    assert_eq!(zipf.as_slice()[0], 40);
    assert!(zipf.as_slice()[1] > 17 && zipf.as_slice()[1] <= 40);
}

#[test]
fn worked_example() {
    #[rustfmt::skip]
    let data = [
        5.0, 1.0, 1.0, 0.0,
        1.0, 1.0, 9.0, 3.0,
        2.0, 2.0, 2.0, 2.0,
    ];
    let m = ScoreMatrix::new(&data, 3, 4).unwrap();
    let topk = row_topk(&m, 2).unwrap();
    assert_eq!(topk.features(), &[0, 1, 2, 3, 0, 1]);
    let mc = global_topk(&m, 5).unwrap();
    // 9, 5, 3, then the first two 2.0s in row-major order.
    assert_eq!(mc.l0_per_token(), vec![1, 2, 2]);
    assert_eq!(mc.features(), &[0, 2, 3, 0, 1]);
    let fc = column_topm(&m, &Capacities::from_vec(vec![1, 2, 0, 1], 4).unwrap()).unwrap();
    // Feature 1 takes 2.0 (row 2) and the first of its tied 1.0s (row 0).
    assert_eq!(fc.token_ids(), vec![0, 0, 1, 2]);
    assert_eq!(fc.features(), &[0, 1, 3, 1]);
}
