//! Feature Choice allocation: each feature keeps its `m_f` largest tokens.

use rayon::prelude::*;

use crate::key::{admission_threshold, keep_largest, rank_index, rank_key};
use crate::{AllocError, Capacities, ScoreMatrix, Selection};

/// Columns scanned together by one task: each row contributes one contiguous run of this
/// many scores, which keeps the strided column walk cache- and prefetch-friendly.
const BLOCK: usize = 128;

/// Keeps, for every feature `f`, its `capacities[f]` largest tokens (ties: lower row first).
///
/// Columns are processed in blocks; inside a block the rows are streamed once and each column
/// keeps a candidate buffer with a running threshold, pruned by selection when it fills.
pub fn column_topm(scores: &ScoreMatrix, capacities: &Capacities) -> Result<Selection, AllocError> {
    let (rows, cols) = (scores.rows(), scores.cols());
    let caps = capacities.as_slice();
    if caps.len() != cols {
        return Err(AllocError::CapacityCount {
            got: caps.len(),
            expected: cols,
        });
    }
    if let Some((feature, &capacity)) = caps.iter().enumerate().find(|(_, c)| **c as usize > rows) {
        return Err(AllocError::CapacityTooLarge {
            feature,
            capacity,
            rows,
        });
    }
    // NaN anywhere is an error, also in columns of capacity 0, so check whole rows first.
    scores
        .data()
        .par_chunks(cols * 64)
        .enumerate()
        .try_for_each(|(part, chunk)| scores.check_no_nan(chunk, part * cols * 64))?;

    let blocks: Vec<Vec<Vec<u64>>> = (0..cols.div_ceil(BLOCK))
        .into_par_iter()
        .map(|block| {
            let first = block * BLOCK;
            scan_block(scores, first, &caps[first..(first + BLOCK).min(cols)])
        })
        .collect();
    let picks: Vec<Vec<u64>> = blocks.into_iter().flatten().collect();
    Ok(to_rows(scores, &picks))
}

/// Columns compared per branch-free test.
const LANE: usize = 16;

/// Top rank keys (index = row) of columns `first..first + caps.len()`, one list per column.
///
/// Each column's admission threshold is NaN while its buffer fills (`!(x <= NaN)` admits
/// everything, `-inf` included) and then the smallest kept score; a later row with an equal
/// score loses its tie, so admission is `!(x <= threshold)`, i.e. strictly greater.
#[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN thresholds are the point
fn scan_block(scores: &ScoreMatrix, first: usize, caps: &[u32]) -> Vec<Vec<u64>> {
    let width = caps.len();
    let mut thresholds: Vec<f32> = caps
        .iter()
        .map(|&c| if c == 0 { f32::INFINITY } else { f32::NAN })
        .collect();
    let mut bufs: Vec<Vec<u64>> = caps
        .iter()
        .map(|&c| Vec::with_capacity(2 * (c as usize).max(8) + 1))
        .collect();
    let mut admit = |row: usize, col: usize, x: f32, thresholds: &mut [f32]| {
        let (buf, capacity) = (&mut bufs[col], caps[col] as usize);
        buf.push(rank_key(x, row as u32));
        if buf.len() == capacity && thresholds[col].is_nan() {
            thresholds[col] = admission_threshold(buf);
        } else if buf.len() >= 2 * capacity.max(8) {
            keep_largest(buf, capacity);
            thresholds[col] = admission_threshold(buf);
        }
    };
    let full = width - width % LANE;
    for row in 0..scores.rows() {
        let run = &scores.row(row)[first..first + width];
        for start in (0..full).step_by(LANE) {
            let x: &[f32; LANE] = run[start..start + LANE].try_into().expect("full lane");
            let t: &[f32; LANE] = thresholds[start..start + LANE]
                .try_into()
                .expect("full lane");
            if !x.iter().zip(t).fold(false, |any, (&x, &t)| any | !(x <= t)) {
                continue;
            }
            for (j, &x) in x.iter().enumerate() {
                if !(x <= thresholds[start + j]) {
                    admit(row, start + j, x, &mut thresholds);
                }
            }
        }
        for col in full..width {
            if !(run[col] <= thresholds[col]) {
                admit(row, col, run[col], &mut thresholds);
            }
        }
    }
    bufs.iter_mut()
        .zip(caps)
        .for_each(|(buf, &c)| keep_largest(buf, c as usize));
    bufs
}

/// Regroups per-column picks (in ascending column order) into the CSR-by-row layout.
fn to_rows(scores: &ScoreMatrix, columns: &[Vec<u64>]) -> Selection {
    let (rows, cols) = (scores.rows(), scores.cols());
    let mut offsets = vec![0usize; rows + 1];
    for &key in columns.iter().flatten() {
        offsets[rank_index(key) as usize + 1] += 1;
    }
    for r in 0..rows {
        offsets[r + 1] += offsets[r];
    }
    let nnz = offsets[rows];
    let mut next = offsets.clone();
    let mut features = vec![0u32; nnz];
    let mut values = vec![0f32; nnz];
    // Visiting columns in ascending order fills each row's slots in ascending feature order.
    for (col, picks) in columns.iter().enumerate() {
        for &key in picks {
            let row = rank_index(key) as usize;
            let slot = next[row];
            next[row] += 1;
            features[slot] = col as u32;
            values[slot] = scores.data()[row * cols + col];
        }
    }
    Selection::from_parts_unchecked(rows, cols, offsets, features, values)
}
