//! AbsTopK (arXiv 2510.00404): each token keeps the `k` affinities of largest magnitude, signs
//! kept (bidirectional features).
//!
//! Built only on `sae-model`'s public [`Sparsifier`] trait and registered from outside it: the
//! worked example of extending the system with a crate.
//!
//! ```
//! let mut registry = sae_model::Registry::with_builtins();
//! sae_sparsifier_abstopk::register(&mut registry);
//! let s = registry.build_str(r#"{"name": "abs_topk", "k": 4}"#)?;
//! assert_eq!(s.name(), "abs_topk");
//! # Ok::<(), sae_model::SaeError>(())
//! ```
#![deny(missing_docs)]

use sae_model::sae_alloc::{ScoreMatrix, Selection, row_topk};
use sae_model::{
    Activation, FeatureStats, InferenceRule, Registry, Result, Sparsifier, parse_params,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Registry name of [`AbsTopK`].
pub const NAME: &str = "abs_topk";

/// Top-k by magnitude per token; codes are the signed affinities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbsTopK {
    /// Features per token.
    pub k: usize,
}

impl Sparsifier for AbsTopK {
    fn name(&self) -> &str {
        NAME
    }

    fn k(&self) -> usize {
        self.k
    }

    fn select(&self, scores: &ScoreMatrix<'_>, _stats: &FeatureStats) -> Result<Selection> {
        let magnitudes: Vec<f32> = scores.data().iter().map(|z| z.abs()).collect();
        let by_magnitude = row_topk(
            &ScoreMatrix::new(&magnitudes, scores.rows(), scores.cols())?,
            self.k,
        )?;
        // Same pairs, signed affinities as scores.
        let signed = by_magnitude
            .token_ids()
            .iter()
            .zip(by_magnitude.features())
            .map(|(&t, &f)| scores.row(t as usize)[f as usize])
            .collect();
        Ok(Selection::from_parts(
            by_magnitude.rows(),
            by_magnitude.cols(),
            by_magnitude.offsets().to_vec(),
            by_magnitude.features().to_vec(),
            signed,
        )?)
    }

    fn activation(&self) -> Activation {
        Activation::Identity
    }

    fn inference_rule(&self) -> InferenceRule {
        InferenceRule::PerToken
    }
}

fn build(params: &Value) -> Result<Box<dyn Sparsifier>> {
    Ok(Box::new(parse_params::<AbsTopK>(params)?))
}

/// Registers [`AbsTopK`] under [`NAME`].
pub fn register(registry: &mut Registry) {
    registry.register(NAME, build);
}
