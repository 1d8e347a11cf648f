//! The `Sparsifier` extension point and the paper's sparsifiers.
//!
//! The types a sparsifier describes itself with ([`Activation`], [`BuiltinRule`],
//! [`InferenceRule`]) live in `rule.rs` and are re-exported here; how a batch's selection runs
//! on a backend is `dispatch.rs`.

use std::fmt::Debug;

use sae_alloc::{Capacities, ScoreMatrix, Selection, column_topm, global_topk, row_topk};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SaeError};
pub use crate::rule::{Activation, BuiltinRule, InferenceRule};
use crate::stats::FeatureStats;

/// The extension point: chooses the (token, feature) pairs of a batch.
///
/// Implementations see the detached affinities on the host and the running feature statistics,
/// and return the chosen pairs. Object safe: registries hand out `Box<dyn Sparsifier>`.
pub trait Sparsifier: Debug + Send + Sync {
    /// Registry name of the rule (e.g. `"topk"`).
    fn name(&self) -> &str;

    /// Target mean number of active features per token (the budget is `k * N`).
    fn k(&self) -> usize;

    /// Chooses the pairs of a batch from its affinities `[N, F]`.
    fn select(&self, scores: &ScoreMatrix<'_>, stats: &FeatureStats) -> Result<Selection>;

    /// The activation applied to the selected affinities.
    fn activation(&self) -> Activation {
        Activation::Relu
    }

    /// The built-in rule this sparsifier computes for a batch of `rows` tokens, if any, so
    /// device paths and the CPU step can run it natively; `None` means only
    /// [`Sparsifier::select`] is available. Where it is `Some`, `select` must return exactly
    /// that rule's selection: the steps may run the rule instead of calling `select` (the CPU
    /// step does for Feature Choice, on feature-major affinities), and they take the
    /// selection's scores as the affinities of its pairs.
    fn builtin(&self, _rows: usize, _stats: &FeatureStats) -> Result<Option<BuiltinRule>> {
        Ok(None)
    }

    /// How single tokens are encoded after training.
    fn inference_rule(&self) -> InferenceRule;

    /// Selection for single tokens under [`InferenceRule::PerToken`] (default: the batch rule,
    /// which for per-token rules does not depend on the rest of the batch).
    fn select_per_token(
        &self,
        scores: &ScoreMatrix<'_>,
        stats: &FeatureStats,
    ) -> Result<Selection> {
        self.select(scores, stats)
    }
}

/// TopK (Gao et al. 2024): each token keeps its `k` largest affinities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopK {
    /// Features per token.
    pub k: usize,
}

impl Sparsifier for TopK {
    fn name(&self) -> &str {
        "topk"
    }
    fn k(&self) -> usize {
        self.k
    }
    fn select(&self, scores: &ScoreMatrix<'_>, _stats: &FeatureStats) -> Result<Selection> {
        Ok(row_topk(scores, self.k)?)
    }
    fn builtin(&self, _rows: usize, _stats: &FeatureStats) -> Result<Option<BuiltinRule>> {
        Ok(Some(BuiltinRule::RowTopK { k: self.k }))
    }
    fn inference_rule(&self) -> InferenceRule {
        InferenceRule::PerToken
    }
}

/// Mutual Choice, identical to BatchTopK: the `k * N` largest affinities of the batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutualChoice {
    /// Target mean features per token.
    pub k: usize,
}

impl Sparsifier for MutualChoice {
    fn name(&self) -> &str {
        "mutual_choice"
    }
    fn k(&self) -> usize {
        self.k
    }
    fn select(&self, scores: &ScoreMatrix<'_>, _stats: &FeatureStats) -> Result<Selection> {
        Ok(global_topk(scores, self.k * scores.rows())?)
    }
    fn builtin(&self, rows: usize, _stats: &FeatureStats) -> Result<Option<BuiltinRule>> {
        Ok(Some(BuiltinRule::GlobalTopK {
            budget: self.k * rows,
        }))
    }
    fn inference_rule(&self) -> InferenceRule {
        InferenceRule::GlobalThreshold
    }
}

/// How Feature Choice sets each feature's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityRule {
    /// `m_j = kN / F`.
    #[default]
    Uniform,
    /// `m_(r)` proportional to `r^-alpha`, ranks by running density; alpha is the
    /// statistics' [`StatsConfig::zipf_exponent`](crate::StatsConfig::zipf_exponent).
    Zipf,
}

fn default_warmup() -> u64 {
    1_000_000
}

/// Feature Choice: each feature keeps its `m_j` largest affinities, `sum m_j = kN`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureChoice {
    /// Target mean features per token.
    pub k: usize,
    /// Capacity rule.
    #[serde(default)]
    pub capacities: CapacityRule,
    /// Zipf capacities stay uniform until the statistics have seen this many tokens (the
    /// learning-rate warm-up is `schedule.warmup_tokens`, another thing). Configurations
    /// written before the rename say `warmup_tokens`, and still load.
    #[serde(default = "default_warmup", alias = "warmup_tokens")]
    pub zipf_warmup_tokens: u64,
}

impl FeatureChoice {
    /// Uniform capacities.
    pub fn uniform(k: usize) -> Self {
        Self {
            k,
            capacities: CapacityRule::Uniform,
            zipf_warmup_tokens: default_warmup(),
        }
    }

    /// Zipf capacities with the default warm-up (the exponent is the statistics').
    pub fn zipf(k: usize) -> Self {
        Self {
            k,
            capacities: CapacityRule::Zipf,
            zipf_warmup_tokens: default_warmup(),
        }
    }

    /// The capacities for a batch of `rows` tokens given the statistics so far.
    ///
    /// Uniform capacities deal the budget round-robin over the whole run: each batch's
    /// `k * rows mod F` extra slots start at the feature after the last one the previous
    /// batches dealt to, i.e. at `k * tokens_seen mod F`. So no feature is favoured: after any
    /// number of batches, the capacities every feature has received add up to within one of
    /// each other. The offset comes from the statistics, so a resumed run deals the same.
    pub fn capacities(&self, rows: usize, stats: &FeatureStats) -> Result<Capacities> {
        let features = stats.features();
        let budget = self.k * rows;
        let warm = stats.tokens_seen() >= self.zipf_warmup_tokens;
        Ok(match self.capacities {
            CapacityRule::Zipf if warm => Capacities::zipf(
                budget,
                rows as u32,
                stats.config().zipf_exponent,
                &stats.usage_order(),
            )?,
            _ => {
                let dealt = u128::from(stats.tokens_seen()) * self.k as u128;
                let offset = (dealt % features.max(1) as u128) as usize;
                Capacities::uniform_rotated(budget, features, rows as u32, offset)?
            }
        })
    }
}

impl Sparsifier for FeatureChoice {
    fn name(&self) -> &str {
        "feature_choice"
    }
    fn k(&self) -> usize {
        self.k
    }
    fn select(&self, scores: &ScoreMatrix<'_>, stats: &FeatureStats) -> Result<Selection> {
        if stats.features() != scores.cols() {
            return Err(SaeError::Shape {
                what: "feature statistics",
                expected: vec![scores.cols()],
                actual: vec![stats.features()],
            });
        }
        let caps = self.capacities(scores.rows(), stats)?;
        Ok(column_topm(scores, &caps)?)
    }
    fn builtin(&self, rows: usize, stats: &FeatureStats) -> Result<Option<BuiltinRule>> {
        Ok(Some(BuiltinRule::ColumnTopM {
            capacities: self.capacities(rows, stats)?,
        }))
    }
    fn inference_rule(&self) -> InferenceRule {
        InferenceRule::PerFeatureThreshold
    }
}
