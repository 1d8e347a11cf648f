//! Row top-k (TopK SAE) against `sae_alloc::row_topk`.

use crate::common;

use cubecl::prelude::*;
use sae_alloc::{ScoreMatrix, row_topk as host_row_topk};
use sae_kernels::{DeviceScores, row_topk, upload_scores};

fn suite<R: Runtime>(client: &ComputeClient<R>) {
    for (i, &(rows, cols)) in common::SHAPES.iter().enumerate() {
        for levels in [0, 3, 9] {
            let data = common::matrix(i as u64 * 31 + u64::from(levels), rows, cols, levels);
            let handle = upload_scores(client, &data);
            let scores = DeviceScores::new(client, &handle, rows, cols).unwrap();
            let host = ScoreMatrix::new(&data, rows, cols).unwrap();
            let mut ks = vec![0, 1, cols / 2, cols];
            if cols > 300 {
                ks.push(300);
            }
            for k in ks {
                let expected = host_row_topk(&host, k).unwrap();
                let got = row_topk(&scores, k).unwrap();
                common::assert_same(&got, &expected, &format!("{rows}x{cols} k={k} l={levels}"));
            }
        }
    }
}

/// More rows than one grid dimension holds (65535 cubes): the grid is split in two.
fn many_rows<R: Runtime>(client: &ComputeClient<R>) {
    let (rows, cols) = (66_000, 3);
    let data = common::matrix(99, rows, cols, 3);
    let handle = upload_scores(client, &data);
    let scores = DeviceScores::new(client, &handle, rows, cols).unwrap();
    let host = ScoreMatrix::new(&data, rows, cols).unwrap();
    let expected = host_row_topk(&host, 1).unwrap();
    common::assert_same(&row_topk(&scores, 1).unwrap(), &expected, "66000x3 k=1");
}

on_every_runtime!(suite);

/// 66000 cubes take ~40 s on a CPU-emulated device, so this one runs on request
/// (`cargo test -p sae-kernels -- --ignored`).
#[test]
#[ignore = "slow on CPU-emulated devices"]
fn wgpu_grid_beyond_one_dimension() {
    if let Some(client) = common::wgpu_client() {
        many_rows(&client);
    }
}
