//! The paper's sparsifiers: budgets, per-token and per-feature limits, Zipf warm-up.

use sae_model::sae_alloc::ScoreMatrix;
use sae_model::{FeatureChoice, FeatureStats, MutualChoice, Sparsifier, StatsConfig, TopK};

const N: usize = 16;
const F: usize = 8;

fn scores() -> Vec<f32> {
    (0..N * F)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0)
        .collect()
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
    let mut fc = FeatureChoice::zipf(2, 1.0);
    fc.warmup_tokens = N as u64;
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
