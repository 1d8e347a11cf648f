//! Inference without a batch: thresholds estimated from training selections.
//!
//! Feature Choice and Mutual Choice select by comparing a token with the rest of its batch, so
//! a single token has no selection of its own. As BatchTopK does, we estimate during training
//! the score a pair must beat to be selected, and at inference keep every pair above it.
//!
//! The rules these thresholds stand in for feed ReLU codes, so what a batch teaches is the
//! smallest *positive* score its selection accepted:
//!
//! - a batch whose kept scores are all positive accepted scores down to the smallest of them;
//! - a batch that kept some score `<= 0` accepted every positive score: its level is 0 (a
//!   ReLU code of a score `<= 0` is 0, so such pairs never fire);
//! - a batch that kept nothing says nothing.
//!
//! The estimate is an EMA over batches of that level: one for all features (global, Mutual
//! Choice / BatchTopK), or one per feature over the batches in which the feature kept
//! something (Feature Choice, whose level is the feature's `m_f`-th largest affinity). A
//! feature never seen selected has threshold `+inf` (never fires). Every threshold is
//! therefore `>= 0`, and inference (`score > threshold`) keeps only pairs with non-zero codes.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{AllocError, ScoreMatrix, Selection};

/// Thresholds for batch-free selection: a pair is kept when its score is strictly above.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Thresholds {
    /// One threshold for every feature.
    Global(f32),
    /// One threshold per feature.
    PerFeature(Vec<f32>),
}

impl Thresholds {
    /// The threshold of `feature`.
    #[inline]
    pub fn of(&self, feature: usize) -> f32 {
        match self {
            Self::Global(t) => *t,
            Self::PerFeature(t) => t[feature],
        }
    }
}

/// Keeps every pair whose score is strictly above its feature's threshold.
pub fn apply_thresholds(
    scores: &ScoreMatrix,
    thresholds: &Thresholds,
) -> Result<Selection, AllocError> {
    let (rows, cols) = (scores.rows(), scores.cols());
    if let Thresholds::PerFeature(t) = thresholds
        && t.len() != cols
    {
        return Err(AllocError::ThresholdCount {
            got: t.len(),
            expected: cols,
        });
    }
    let per_row: Vec<Vec<u32>> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let row = scores.row(r);
            scores.check_no_nan(row, r * cols)?;
            Ok(match thresholds {
                Thresholds::Global(t) => keep_above(row, |_| *t),
                Thresholds::PerFeature(t) => keep_above(row, |f| t[f]),
            })
        })
        .collect::<Result<_, AllocError>>()?;
    let mut offsets = Vec::with_capacity(rows + 1);
    offsets.push(0);
    for ids in &per_row {
        offsets.push(offsets.last().unwrap() + ids.len());
    }
    let features: Vec<u32> = per_row.into_iter().flatten().collect();
    let token_ids = offsets
        .windows(2)
        .enumerate()
        .flat_map(|(r, w)| std::iter::repeat_n(r, w[1] - w[0]));
    let values = token_ids
        .zip(&features)
        .map(|(r, &f)| scores.row(r)[f as usize])
        .collect();
    Ok(Selection::from_parts_unchecked(
        rows, cols, offsets, features, values,
    ))
}

fn keep_above(row: &[f32], threshold: impl Fn(usize) -> f32) -> Vec<u32> {
    (0..row.len())
        .filter(|&f| row[f] > threshold(f))
        .map(|f| f as u32)
        .collect()
}

/// Running estimate of inference thresholds from the selections of training batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdEstimator {
    decay: f32,
    state: EstimatorState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum EstimatorState {
    Global(Option<f32>),
    PerFeature(Vec<Option<f32>>),
}

impl ThresholdEstimator {
    /// A global estimator (Mutual Choice / BatchTopK). `decay` weighs the old estimate:
    /// `t <- decay * t + (1 - decay) * observed`.
    pub fn global(decay: f32) -> Result<Self, AllocError> {
        check_decay(decay)?;
        Ok(Self {
            decay,
            state: EstimatorState::Global(None),
        })
    }

    /// A per-feature estimator (Feature Choice) over `features` features.
    pub fn per_feature(features: usize, decay: f32) -> Result<Self, AllocError> {
        check_decay(decay)?;
        Ok(Self {
            decay,
            state: EstimatorState::PerFeature(vec![None; features]),
        })
    }

    /// Folds one training selection into the estimate (see the module documentation).
    pub fn update(&mut self, selection: &Selection) -> Result<(), AllocError> {
        let smallest = self.smallest_kept(selection)?;
        self.fold(&smallest)
    }

    /// The smallest score `selection` kept: one value for a global estimator, one per feature
    /// otherwise, `+inf` where nothing was kept. The minima of a batch split over several
    /// peers are the element-wise minima of the peers' values; [`fold`](Self::fold) takes
    /// them in, and `update` is the two together.
    pub fn smallest_kept(&self, selection: &Selection) -> Result<Vec<f32>, AllocError> {
        match &self.state {
            EstimatorState::Global(_) => Ok(vec![
                selection
                    .scores()
                    .iter()
                    .copied()
                    .fold(f32::INFINITY, f32::min),
            ]),
            EstimatorState::PerFeature(t) => {
                if t.len() != selection.cols() {
                    return Err(AllocError::InvalidSelection {
                        reason: format!(
                            "selection has {} features, the estimator {}",
                            selection.cols(),
                            t.len()
                        ),
                    });
                }
                let mut smallest = vec![f32::INFINITY; t.len()];
                for (&f, &s) in selection.features().iter().zip(selection.scores()) {
                    smallest[f as usize] = smallest[f as usize].min(s);
                }
                Ok(smallest)
            }
        }
    }

    /// Folds a batch's smallest kept scores (as [`smallest_kept`](Self::smallest_kept) gives
    /// them; `+inf`: nothing kept, the estimate stays) into the estimate.
    pub fn fold(&mut self, smallest: &[f32]) -> Result<(), AllocError> {
        let decay = self.decay;
        let blend = |old: &mut Option<f32>, smallest_kept: f32| {
            if smallest_kept == f32::INFINITY {
                return;
            }
            let level = smallest_kept.max(0.0);
            *old = Some(old.map_or(level, |t| decay * t + (1.0 - decay) * level));
        };
        let expected = match &self.state {
            EstimatorState::Global(_) => 1,
            EstimatorState::PerFeature(t) => t.len(),
        };
        if smallest.len() != expected {
            return Err(AllocError::ThresholdCount {
                got: smallest.len(),
                expected,
            });
        }
        match &mut self.state {
            EstimatorState::Global(t) => blend(t, smallest[0]),
            EstimatorState::PerFeature(t) => {
                for (old, &seen) in t.iter_mut().zip(smallest) {
                    blend(old, seen);
                }
            }
        }
        Ok(())
    }

    /// The current thresholds; `None` before any update has seen a selected score.
    pub fn thresholds(&self) -> Option<Thresholds> {
        match &self.state {
            EstimatorState::Global(t) => t.map(Thresholds::Global),
            EstimatorState::PerFeature(t) if t.iter().all(Option::is_none) => None,
            EstimatorState::PerFeature(t) => Some(Thresholds::PerFeature(
                t.iter().map(|x| x.unwrap_or(f32::INFINITY)).collect(),
            )),
        }
    }
}

fn check_decay(decay: f32) -> Result<(), AllocError> {
    if (0.0..1.0).contains(&decay) {
        Ok(())
    } else {
        Err(AllocError::InvalidDecay { decay })
    }
}
