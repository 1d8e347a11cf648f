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
