//! Global top-K (Mutual Choice / BatchTopK) against `sae_alloc::global_topk`, on the whole
//! matrix and on the candidates of a cut.

use crate::common;

use cubecl::prelude::*;
use sae_alloc::{ScoreMatrix, Selection, global_topk as host_global_topk};
use sae_kernels::{DeviceScores, global_topk, global_topk_with, upload_scores};

fn suite<R: Runtime>(client: &ComputeClient<R>) {
    let mut shapes = common::SHAPES.to_vec();
    // More than one 4096-score tile, with a ragged last one.
    shapes.push((37, 301));
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        for levels in [0, 2, 9] {
            let data = common::matrix(i as u64 * 17 + u64::from(levels), rows, cols, levels);
            let handle = upload_scores(client, &data);
            let scores = DeviceScores::new(client, &handle, rows, cols).unwrap();
            let host = ScoreMatrix::new(&data, rows, cols).unwrap();
            let total = rows * cols;
            for budget in [0, 1, total / 3, total - 1, total] {
                let expected = host_global_topk(&host, budget).unwrap();
                let what = format!("{rows}x{cols} budget={budget} l={levels}");
                let got = global_topk(&scores, budget).unwrap();
                common::assert_same(&got, &expected, &what);
                for cut in cuts(&data, &expected) {
                    let got = global_topk_with(&scores, budget, Some(cut)).unwrap();
                    common::assert_same(&got, &expected, &format!("{what} cut={cut}"));
                }
                for planes in [false, true] {
                    let scores = scores.with_plane_ops(planes);
                    let got = global_topk(&scores, budget).unwrap();
                    common::assert_same(&got, &expected, &format!("{what} planes={planes}"));
                }
            }
        }
    }
}

/// Cuts that take each way through the kernels: below every score (every score a candidate,
/// more than the buffer holds once the budget is small), at and just below the threshold (the
/// fewest candidates that still hold the selection, ties at the threshold included), just
/// above it and above every score (too few candidates: the whole matrix), and NaN.
fn cuts(data: &[f32], expected: &Selection) -> Vec<f32> {
    let mut cuts = vec![f32::NEG_INFINITY, f32::INFINITY, f32::NAN];
    if let Some(threshold) = expected.scores().iter().copied().reduce(f32::min) {
        cuts.extend([
            threshold,
            threshold.next_down(),
            threshold.next_up(),
            threshold - 0.25 * threshold.abs(),
        ]);
    }
    if let Some(lowest) = data.iter().copied().reduce(f32::min) {
        cuts.push(lowest);
    }
    cuts
}

on_every_runtime!(suite);
