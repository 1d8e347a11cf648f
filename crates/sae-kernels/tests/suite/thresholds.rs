//! Inference thresholds against `sae_alloc::apply_thresholds`.

use crate::common;

use cubecl::prelude::*;
use sae_alloc::{ScoreMatrix, Thresholds, apply_thresholds as host_apply};
use sae_kernels::{DeviceScores, apply_thresholds, upload_scores};

fn suite<R: Runtime>(client: &ComputeClient<R>) {
    for (i, &(rows, cols)) in common::SHAPES.iter().enumerate() {
        let data = common::matrix(i as u64 * 5, rows, cols, 7);
        let handle = upload_scores(client, &data);
        let scores = DeviceScores::new(client, &handle, rows, cols).unwrap();
        let host = ScoreMatrix::new(&data, rows, cols).unwrap();
        let mut per_feature = common::matrix(i as u64 * 5 + 1, 1, cols, 7);
        per_feature[0] = f32::NAN;
        if cols > 2 {
            per_feature[1] = f32::NEG_INFINITY;
            per_feature[2] = -0.0;
        }
        let all = [
            Thresholds::Global(0.0),
            Thresholds::Global(-0.0),
            Thresholds::Global(0.25),
            Thresholds::Global(f32::NEG_INFINITY),
            Thresholds::Global(f32::INFINITY),
            Thresholds::Global(f32::NAN),
            Thresholds::PerFeature(per_feature),
        ];
        for t in &all {
            let expected = host_apply(&host, t).unwrap();
            for planes in [false, true] {
                let scores = scores.with_plane_ops(planes);
                let got = apply_thresholds(&scores, t).unwrap();
                let what = format!("{rows}x{cols} {t:?} planes={planes}");
                common::assert_same(&got, &expected, &what);
            }
        }
    }
}

on_every_runtime!(suite);
