//! Feature Choice allocation: each feature keeps its `m_f` largest tokens.

use rayon::prelude::*;

use crate::key::{keep_largest, rank_index, rank_key, rank_score};
use crate::{AllocError, Capacities, ScoreMatrix, Selection};

/// Columns scanned together by one task: each row contributes one contiguous run of this
/// many scores, which keeps the strided column walk cache- and prefetch-friendly.
const BLOCK: usize = 128;

/// Per-column scan state: a candidate buffer and the running admission threshold.
struct Column {
    capacity: usize,
    threshold: f32,
    buf: Vec<u64>,
}

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

/// Top rank keys (index = row) of columns `first..first + caps.len()`, one list per column.
fn scan_block(scores: &ScoreMatrix, first: usize, caps: &[u32]) -> Vec<Vec<u64>> {
    let mut columns: Vec<Column> = caps
        .iter()
        .map(|&c| Column {
            capacity: c as usize,
            // Capacity 0 admits nothing; otherwise the first `capacity` rows fill the buffer.
            threshold: f32::INFINITY,
            buf: Vec::with_capacity(2 * (c as usize).max(8)),
        })
        .collect();
    let width = caps.len();
    for row in 0..scores.rows() {
        let run = &scores.row(row)[first..first + width];
        for (col, &x) in columns.iter_mut().zip(run) {
            if row < col.capacity {
                col.buf.push(rank_key(x, row as u32));
                if row + 1 == col.capacity {
                    col.threshold = min_score(&col.buf);
                }
            } else if x > col.threshold {
                // Rows arrive in order: an equal score from a later row loses its tie.
                col.buf.push(rank_key(x, row as u32));
                if col.buf.len() >= 2 * col.capacity.max(8) {
                    keep_largest(&mut col.buf, col.capacity);
                    col.threshold = min_score(&col.buf);
                }
            }
        }
    }
    columns
        .into_iter()
        .map(|mut col| {
            keep_largest(&mut col.buf, col.capacity);
            col.buf
        })
        .collect()
}

fn min_score(buf: &[u64]) -> f32 {
    rank_score(*buf.iter().min().expect("non-empty buffer"))
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
