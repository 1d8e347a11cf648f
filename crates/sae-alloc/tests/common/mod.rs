//! Brute-force oracles: full sorts by (score desc, index asc), the definition of each rule.

#![allow(dead_code)]

use proptest::prelude::*;
use sae_alloc::Selection;

/// Ranking order of the rules: larger score first (both zeros equal), then lower index.
pub fn by_rank(a: &(f32, usize), b: &(f32, usize)) -> std::cmp::Ordering {
    b.0.partial_cmp(&a.0)
        .expect("no NaN in oracle input")
        .then(a.1.cmp(&b.1))
}

/// Builds a selection from a row-major mask.
pub fn from_mask(data: &[f32], rows: usize, cols: usize, mask: &[bool]) -> Selection {
    let mut offsets = vec![0];
    let (mut features, mut scores) = (Vec::new(), Vec::new());
    for r in 0..rows {
        for c in 0..cols {
            if mask[r * cols + c] {
                features.push(c as u32);
                scores.push(data[r * cols + c]);
            }
        }
        offsets.push(features.len());
    }
    Selection::from_parts(rows, cols, offsets, features, scores).unwrap()
}

pub fn oracle_rows(data: &[f32], rows: usize, cols: usize, k: usize) -> Selection {
    let mut mask = vec![false; rows * cols];
    for r in 0..rows {
        let mut row: Vec<(f32, usize)> = (0..cols).map(|c| (data[r * cols + c], c)).collect();
        row.sort_by(by_rank);
        for &(_, c) in &row[..k] {
            mask[r * cols + c] = true;
        }
    }
    from_mask(data, rows, cols, &mask)
}

pub fn oracle_global(data: &[f32], rows: usize, cols: usize, budget: usize) -> Selection {
    let mut all: Vec<(f32, usize)> = data.iter().copied().zip(0..).collect();
    all.sort_by(by_rank);
    let mut mask = vec![false; rows * cols];
    for &(_, i) in &all[..budget] {
        mask[i] = true;
    }
    from_mask(data, rows, cols, &mask)
}

pub fn oracle_columns(data: &[f32], rows: usize, cols: usize, caps: &[u32]) -> Selection {
    let mut mask = vec![false; rows * cols];
    for c in 0..cols {
        let mut column: Vec<(f32, usize)> = (0..rows).map(|r| (data[r * cols + c], r)).collect();
        column.sort_by(by_rank);
        for &(_, r) in &column[..caps[c] as usize] {
            mask[r * cols + c] = true;
        }
    }
    from_mask(data, rows, cols, &mask)
}

/// Scores drawn from a small set (many ties), with signed zeros, infinities and occasional
/// arbitrary values.
pub fn score() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => (-3i8..=3).prop_map(f32::from),
        1 => Just(-0.0f32),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        3 => -1e6f32..1e6,
    ]
}

/// A random matrix with odd shapes: (data, rows, cols).
pub fn matrix(max_rows: usize, max_cols: usize) -> impl Strategy<Value = (Vec<f32>, usize, usize)> {
    (1..=max_rows, 1..=max_cols).prop_flat_map(|(rows, cols)| {
        (
            prop::collection::vec(score(), rows * cols),
            Just(rows),
            Just(cols),
        )
    })
}

/// Sum of the selected scores, for the optimality statement: (+inf count, -inf count,
/// sum of the finite scores), since inf + -inf has no value.
pub fn total(selection: &Selection) -> (usize, usize, f64) {
    let s = selection.scores();
    let finite = s
        .iter()
        .filter(|x| x.is_finite())
        .map(|&x| f64::from(x))
        .sum();
    (
        s.iter().filter(|&&x| x == f32::INFINITY).count(),
        s.iter().filter(|&&x| x == f32::NEG_INFINITY).count(),
        finite,
    )
}
