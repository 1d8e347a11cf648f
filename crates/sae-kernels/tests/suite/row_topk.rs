//! Row top-k (TopK SAE) against `sae_alloc::row_topk`.

use crate::common;

use cubecl::prelude::*;
use sae_alloc::{ScoreMatrix, row_topk as host_row_topk};
use sae_kernels::{DeviceScores, RowKernel, row_topk, row_topk_with, upload_scores};

/// Rows that fill several chunks of the resident kernel (a padded last chunk, a chunk count
/// rounded up to a power of two), the longest row it holds, and one just too long for it.
const WIDE: [(usize, usize); 4] = [(3, 4097), (2, 9000), (2, 32768), (2, 32769)];

fn suite<R: Runtime>(client: &ComputeClient<R>) {
    let shapes = common::SHAPES.iter().chain(&WIDE);
    for (i, &(rows, cols)) in shapes.enumerate() {
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
                let what = format!("{rows}x{cols} k={k} l={levels}");
                common::assert_same(&row_topk(&scores, k).unwrap(), &expected, &what);
                // Both kernels, whichever the default picks for this width, each with both
                // prefix sums.
                for kernel in [RowKernel::Resident, RowKernel::Streaming] {
                    for planes in [false, true] {
                        let scores = scores.with_plane_ops(planes);
                        let got = row_topk_with(&scores, k, kernel).unwrap();
                        let what = format!("{what} {kernel:?} planes={planes}");
                        common::assert_same(&got, &expected, &what);
                    }
                }
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
