//! A borrowed, shape-checked view of a row-major score matrix.

use crate::AllocError;

/// N tokens x F features of affinities, row-major, borrowed from the caller.
///
/// Construction checks the shape only; NaN is detected by the selection passes, which read
/// every value anyway.
#[derive(Debug, Clone, Copy)]
pub struct ScoreMatrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> ScoreMatrix<'a> {
    /// Wraps `data` as a `rows` x `cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, AllocError> {
        if rows == 0 || cols == 0 {
            return Err(AllocError::EmptyMatrix { rows, cols });
        }
        for (what, value) in [("rows", rows), ("cols", cols)] {
            if u32::try_from(value).is_err() {
                return Err(AllocError::DimensionTooLarge { what, value });
            }
        }
        let expected = rows
            .checked_mul(cols)
            .ok_or(AllocError::DimensionTooLarge {
                what: "rows x cols",
                value: usize::MAX,
            })?;
        if data.len() != expected {
            return Err(AllocError::ShapeMismatch {
                len: data.len(),
                rows,
                cols,
                expected,
            });
        }
        Ok(Self { data, rows, cols })
    }

    /// Number of rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The values, row-major.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Row `i` as a slice.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The values held the other way round, `[cols, rows]` row-major: a token-major matrix's
    /// feature-major copy, which [`column_topm_transposed`](crate::column_topm_transposed)
    /// reads. Copied in square tiles, so that reads and writes both stay in cache.
    pub fn transposed(&self) -> Vec<f32> {
        const TILE: usize = 64;
        let (rows, cols) = (self.rows, self.cols);
        let mut t = vec![0.0; self.data.len()];
        for r0 in (0..rows).step_by(TILE) {
            for c0 in (0..cols).step_by(TILE) {
                for r in r0..(r0 + TILE).min(rows) {
                    for c in c0..(c0 + TILE).min(cols) {
                        t[c * rows + r] = self.data[r * cols + c];
                    }
                }
            }
        }
        t
    }

    /// Error for the first NaN of `slice`, which starts at flat index `start`, if it has one.
    pub(crate) fn check_no_nan(&self, slice: &[f32], start: usize) -> Result<(), AllocError> {
        if !has_nan(slice) {
            return Ok(());
        }
        let offset = slice
            .iter()
            .position(|x| x.is_nan())
            .expect("a NaN was seen");
        let flat = start + offset;
        Err(AllocError::NanScore {
            row: flat / self.cols,
            col: flat % self.cols,
        })
    }
}

/// Whether `slice` holds a NaN (a `fold` without short-circuit, so the common clean case
/// vectorises).
#[inline(always)]
pub(crate) fn has_nan(slice: &[f32]) -> bool {
    slice.iter().fold(false, |nan, x| nan | x.is_nan())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value lands at its transposed place, on shapes that end inside a tile.
    #[test]
    fn transposed_moves_each_value_to_its_place() {
        for (rows, cols) in [(1, 1), (3, 200), (130, 70), (64, 128)] {
            let data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = ScoreMatrix::new(&data, rows, cols).unwrap().transposed();
            assert_eq!(t.len(), data.len());
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        data[r * cols + c],
                        "{rows} x {cols}: ({r}, {c})"
                    );
                }
            }
        }
    }
}
