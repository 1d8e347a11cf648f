//! The paper's sparsifiers: budgets, per-token and per-feature limits, Zipf warm-up.

use crate::common;

use sae_model::sae_alloc::{
    ScoreMatrix, column_topm, column_topm_transposed, global_topk, row_topk,
};
use sae_model::{
    BuiltinRule, FeatureChoice, FeatureStats, MutualChoice, Sparsifier, StatsConfig, TopK,
};

const N: usize = 16;
const F: usize = 8;

fn scores() -> Vec<f32> {
    (0..N * F)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0)
        .collect()
}

/// A built-in sparsifier's `select` is its `builtin()` rule's selection, scores included, bit
/// for bit: the steps run the rule in its place (the CPU step runs Feature Choice on the
/// feature-major matrix) and take the scores as the affinities of the pairs.
#[test]
fn select_is_the_builtin_rules_selection_with_the_affinities_as_scores() {
    let mut z = common::random(N * F, 4);
    z[5] = -0.0;
    z[9] = 0.0;
    let m = ScoreMatrix::new(&z, N, F).unwrap();
    let by_feature = m.transposed();
    let stats = FeatureStats::new(F, StatsConfig::default());
    for sparsifier in common::builtin_sparsifiers(2) {
        let name = sparsifier.name().to_owned();
        let got = sparsifier.select(&m, &stats).unwrap();
        let rule = sparsifier
            .builtin(N, &stats)
            .unwrap()
            .expect("a built-in rule");
        let want = match &rule {
            BuiltinRule::RowTopK { k } => row_topk(&m, *k).unwrap(),
            BuiltinRule::GlobalTopK { budget } => global_topk(&m, *budget).unwrap(),
            BuiltinRule::ColumnTopM { capacities } => {
                let transposed = ScoreMatrix::new(&by_feature, F, N).unwrap();
                let on_transpose = column_topm_transposed(&transposed, capacities).unwrap();
                assert_eq!(on_transpose, column_topm(&m, capacities).unwrap(), "{name}");
                on_transpose
            }
        };
        assert_eq!(got, want, "{name}");
        for t in 0..N {
            let (features, scores) = got.row(t);
            for (&f, &score) in features.iter().zip(scores) {
                assert_eq!(
                    score.to_bits(),
                    z[t * F + f as usize].to_bits(),
                    "{name} ({t}, {f})"
                );
            }
        }
    }
}

#[test]
fn topk_and_mutual_choice_budgets() {
    let z = scores();
    let m = ScoreMatrix::new(&z, N, F).unwrap();
    let stats = FeatureStats::new(F, StatsConfig::default());
    let t = TopK { k: 2 }.select(&m, &stats).unwrap();
    assert!(t.l0_per_token().iter().all(|&l| l == 2));
    let mc = MutualChoice { k: 2 }.select(&m, &stats).unwrap();
    assert_eq!(mc.nnz(), 2 * N);
    // The kept entries are the 2N largest of the matrix.
    let mut sorted = z.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let min_kept = mc.scores().iter().copied().fold(f32::INFINITY, f32::min);
    assert!(min_kept >= sorted[2 * N - 1]);
}

#[test]
fn feature_choice_uniform_then_zipf_after_warmup() {
    let z = scores();
    let m = ScoreMatrix::new(&z, N, F).unwrap();
    let mut stats = FeatureStats::new(F, StatsConfig::default());
    let mut fc = FeatureChoice::zipf(2);
    fc.zipf_warmup_tokens = N as u64;
    let before = fc.select(&m, &stats).unwrap();
    assert!(
        before
            .counts_per_feature()
            .iter()
            .all(|&c| c == 2 * N as u32 / F as u32)
    );
    stats
        .update(&TopK { k: 2 }.select(&m, &stats).unwrap(), |s| s > 0.0)
        .unwrap();
    let after = fc.select(&m, &stats).unwrap();
    assert_eq!(after.nnz(), 2 * N);
    let caps = fc.capacities(N, &stats).unwrap();
    assert_eq!(after.counts_per_feature(), caps.as_slice());
    // Rank 1 (most used) gets the largest capacity.
    let top = stats.usage_order()[0] as usize;
    assert_eq!(caps.as_slice()[top], *caps.as_slice().iter().max().unwrap());
    assert!(caps.as_slice().iter().any(|&c| c != caps.as_slice()[0]));

    // The capacities follow the statistics' Zipf exponent, the one every Zipf rule reads.
    let steep_config = StatsConfig {
        zipf_exponent: 2.5,
        ..StatsConfig::default()
    };
    let mut steep = FeatureStats::new(F, steep_config);
    steep
        .update(&TopK { k: 2 }.select(&m, &steep).unwrap(), |s| s > 0.0)
        .unwrap();
    let order = steep.usage_order();
    let want = sae_model::sae_alloc::Capacities::zipf(2 * N, N as u32, 2.5, &order).unwrap();
    let steep_caps = fc.capacities(N, &steep).unwrap();
    assert_eq!(steep_caps, want);
    assert_ne!(steep_caps, caps);
}

#[test]
fn builtin_rules_describe_the_selection() {
    let stats = FeatureStats::new(F, StatsConfig::default());
    use sae_model::BuiltinRule;
    assert_eq!(
        TopK { k: 3 }.builtin(N, &stats).unwrap(),
        Some(BuiltinRule::RowTopK { k: 3 })
    );
    assert_eq!(
        MutualChoice { k: 3 }.builtin(N, &stats).unwrap(),
        Some(BuiltinRule::GlobalTopK { budget: 3 * N })
    );
    match FeatureChoice::uniform(3).builtin(N, &stats).unwrap() {
        Some(BuiltinRule::ColumnTopM { capacities }) => {
            assert_eq!(capacities.as_slice().iter().sum::<u32>(), 3 * N as u32)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn feature_choice_uniform_deals_the_remainder_round_robin_over_the_run() {
    // k * N = 2 * 16 = 32 slots over F = 5 features per batch: 6 each and 2 extra. Batch rows
    // vary (16, 16, 7, 16, ...) as the last batch of an epoch would; after every batch, the
    // capacities each feature has received add up to within one of each other, and the
    // extra slots continue where the previous batch's stopped.
    const FEATURES: usize = 5;
    let fc = FeatureChoice::uniform(2);
    let mut stats = FeatureStats::new(FEATURES, StatsConfig::default());
    let mut received = [0u64; FEATURES];
    let mut next = 0usize;
    for (batch, rows) in [16usize, 16, 7, 16, 3, 16, 16, 16, 1, 16]
        .into_iter()
        .enumerate()
    {
        let caps = fc.capacities(rows, &stats).unwrap();
        let caps = caps.as_slice();
        assert_eq!(caps.iter().map(|&c| c as usize).sum::<usize>(), 2 * rows);
        let (base, extra) = ((2 * rows / FEATURES) as u32, 2 * rows % FEATURES);
        let raised: Vec<usize> = (0..FEATURES).filter(|&f| caps[f] == base + 1).collect();
        let mut want: Vec<usize> = (0..extra).map(|j| (next + j) % FEATURES).collect();
        want.sort_unstable();
        assert_eq!(raised, want, "batch {batch}");
        next = (next + extra) % FEATURES;
        for (total, &c) in received.iter_mut().zip(caps) {
            *total += u64::from(c);
        }
        let (lo, hi) = (
            received.iter().min().unwrap(),
            received.iter().max().unwrap(),
        );
        assert!(hi - lo <= 1, "batch {batch}: {received:?}");
        // Advance the statistics by `rows` tokens.
        let z: Vec<f32> = (0..rows * FEATURES).map(|i| (i % 7) as f32).collect();
        let m = ScoreMatrix::new(&z, rows, FEATURES).unwrap();
        stats
            .update(&TopK { k: 1 }.select(&m, &stats).unwrap(), |s| s > 0.0)
            .unwrap();
    }
}
