//! Global top-K (Mutual Choice / BatchTopK) against `sae_alloc::global_topk`.

use crate::common;

use cubecl::prelude::*;
use sae_alloc::{ScoreMatrix, global_topk as host_global_topk};
use sae_kernels::{DeviceScores, global_topk, upload_scores};

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
                let got = global_topk(&scores, budget).unwrap();
                common::assert_same(
                    &got,
                    &expected,
                    &format!("{rows}x{cols} budget={budget} l={levels}"),
                );
            }
        }
    }
}

on_every_runtime!(suite);
