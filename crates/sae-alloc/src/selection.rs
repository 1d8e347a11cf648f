//! The output of every allocation rule: selected (token, feature) pairs, CSR by token.

use serde::{Deserialize, Serialize};

use crate::AllocError;

/// Selected (token, feature) pairs of a `rows` x `cols` score matrix, stored compressed by row:
/// row `i`'s pairs are `offsets[i]..offsets[i + 1]` of `features` / `scores`, with features in
/// ascending order inside a row. Every rule (CPU or GPU) produces this one layout, so results
/// compare bit for bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    rows: usize,
    cols: usize,
    offsets: Vec<usize>,
    features: Vec<u32>,
    scores: Vec<f32>,
}

impl Selection {
    /// Builds a selection from its parts, checking every invariant of the layout.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        offsets: Vec<usize>,
        features: Vec<u32>,
        scores: Vec<f32>,
    ) -> Result<Self, AllocError> {
        let bad = |reason: String| Err(AllocError::InvalidSelection { reason });
        if offsets.len() != rows + 1 {
            return bad(format!(
                "{} offsets for {rows} rows (need rows + 1)",
                offsets.len()
            ));
        }
        if offsets[0] != 0 || offsets[rows] != features.len() || features.len() != scores.len() {
            return bad(format!(
                "offsets span {}..{} but there are {} features and {} scores",
                offsets[0],
                offsets[rows],
                features.len(),
                scores.len()
            ));
        }
        if let Some(row) = offsets.windows(2).position(|w| w[0] > w[1]) {
            return bad(format!("offsets decrease at row {row}"));
        }
        for row in 0..rows {
            let ids = &features[offsets[row]..offsets[row + 1]];
            if let Some(&f) = ids.iter().find(|&&f| f as usize >= cols) {
                return bad(format!("row {row} selects feature {f} of only {cols}"));
            }
            if ids.windows(2).any(|w| w[0] >= w[1]) {
                return bad(format!("features of row {row} are not strictly ascending"));
            }
        }
        Ok(Self {
            rows,
            cols,
            offsets,
            features,
            scores,
        })
    }

    /// Builds from parts already known to be valid (used by the rules themselves).
    pub(crate) fn from_parts_unchecked(
        rows: usize,
        cols: usize,
        offsets: Vec<usize>,
        features: Vec<u32>,
        scores: Vec<f32>,
    ) -> Self {
        debug_assert!(
            Self::from_parts(
                rows,
                cols,
                offsets.clone(),
                features.clone(),
                scores.clone()
            )
            .is_ok()
        );
        Self {
            rows,
            cols,
            offsets,
            features,
            scores,
        }
    }

    /// A selection with no pairs.
    pub fn empty(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            offsets: vec![0; rows + 1],
            features: Vec::new(),
            scores: Vec::new(),
        }
    }

    /// The pairs grouped by feature: `(offsets, pairs)`, feature `f`'s pair indices (into
    /// [`features`](Self::features) and [`scores`](Self::scores)) being
    /// `pairs[offsets[f]..offsets[f + 1]]`, rows ascending (a counting sort of the row-major
    /// pairs).
    pub fn feature_major(&self) -> (Vec<usize>, Vec<u32>) {
        let mut offsets = vec![0usize; self.cols + 1];
        for &f in &self.features {
            offsets[f as usize + 1] += 1;
        }
        for f in 0..self.cols {
            offsets[f + 1] += offsets[f];
        }
        let mut next = offsets.clone();
        let mut pairs = vec![0u32; self.features.len()];
        for (p, &f) in self.features.iter().enumerate() {
            pairs[next[f as usize]] = p as u32;
            next[f as usize] += 1;
        }
        (offsets, pairs)
    }

    /// Number of rows (tokens) of the scored matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (features) of the scored matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of selected pairs.
    pub fn nnz(&self) -> usize {
        self.features.len()
    }

    /// Row offsets, `rows + 1` long.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Feature id of each pair, ascending within a row.
    pub fn features(&self) -> &[u32] {
        &self.features
    }

    /// Score of each pair, as it was in the score matrix.
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }

    /// The features and scores selected for row `i`.
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let range = self.offsets[i]..self.offsets[i + 1];
        (&self.features[range.clone()], &self.scores[range])
    }

    /// The row (token) of each pair, parallel to [`Self::features`].
    pub fn token_ids(&self) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.nnz());
        for (row, w) in self.offsets.windows(2).enumerate() {
            ids.extend(std::iter::repeat_n(row as u32, w[1] - w[0]));
        }
        ids
    }

    /// Number of features selected for each token (its L0).
    pub fn l0_per_token(&self) -> Vec<u32> {
        self.offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as u32)
            .collect()
    }

    /// Number of tokens each feature was selected for.
    pub fn counts_per_feature(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.cols];
        for &f in &self.features {
            counts[f as usize] += 1;
        }
        counts
    }

    /// Row-major `rows` x `cols` mask of the selected pairs (for tests and dense oracles).
    pub fn dense_mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.rows * self.cols];
        for (row, w) in self.offsets.windows(2).enumerate() {
            for &f in &self.features[w[0]..w[1]] {
                mask[row * self.cols + f as usize] = true;
            }
        }
        mask
    }

    /// Iterates over `(row, feature, score)` triples in row-major order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, u32, f32)> + '_ {
        self.offsets
            .windows(2)
            .enumerate()
            .flat_map(move |(row, w)| {
                (w[0]..w[1]).map(move |j| (row, self.features[j], self.scores[j]))
            })
    }

    /// Builds a selection from pairs sorted by flat (row-major) index.
    pub(crate) fn from_sorted_flat(data: &[f32], rows: usize, cols: usize, flat: &[u64]) -> Self {
        let mut offsets = vec![0usize; rows + 1];
        for &i in flat {
            offsets[i as usize / cols + 1] += 1;
        }
        for r in 0..rows {
            offsets[r + 1] += offsets[r];
        }
        let features = flat.iter().map(|&i| (i as usize % cols) as u32).collect();
        let scores = flat.iter().map(|&i| data[i as usize]).collect();
        Self::from_parts_unchecked(rows, cols, offsets, features, scores)
    }
}
