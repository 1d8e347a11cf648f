//! Errors: NaN scores reported (never selected) by every kernel, bad arguments rejected as
//! `sae-alloc` rejects them, buffers too small for the declared shape.

use crate::common;

use cubecl::prelude::*;
use sae_alloc::{AllocError, Capacities, Thresholds};
use sae_kernels::{
    DeviceScores, KernelError, apply_thresholds, apply_thresholds_on_device, column_topm,
    column_topm_on_device, global_topk, global_topk_with, row_topk, upload_scores,
};

fn nan_is_reported<R: Runtime>(client: &ComputeClient<R>) {
    let (rows, cols) = (19, 300);
    for (row, col) in [(0, 0), (7, 123), (18, 299)] {
        let mut data = common::matrix(3, rows, cols, 0);
        data[row * cols + col] = f32::NAN;
        // A second NaN later in row-major order: the first one is reported.
        data[rows * cols - 1] = f32::from_bits(0xFFC0_0001);
        let handle = upload_scores(client, &data);
        let scores = DeviceScores::new(client, &handle, rows, cols).unwrap();
        let expected = AllocError::NanScore { row, col };
        let caps = Capacities::uniform(rows * 2, cols, rows as u32).unwrap();
        // A cut that about 100 scores pass: the radix passes run on the candidates, whose
        // slots are not the scores' indices.
        let mut finite: Vec<f32> = data.iter().copied().filter(|v| !v.is_nan()).collect();
        finite.sort_by(|a, b| b.total_cmp(a));
        let cut = finite[100];
        let results = [
            ("row_topk k=0", row_topk(&scores, 0)),
            ("row_topk k=5", row_topk(&scores, 5)),
            ("global_topk", global_topk(&scores, 40)),
            ("global_topk cut", global_topk_with(&scores, 40, Some(cut))),
            ("column_topm", column_topm(&scores, &caps)),
            (
                "thresholds",
                apply_thresholds(&scores, &Thresholds::Global(0.5)),
            ),
        ];
        for (what, result) in results {
            let selection = result.unwrap_or_else(|e| panic!("{what}: launch failed: {e}"));
            let err = selection.to_selection().expect_err(what);
            assert_eq!(common::alloc_error(err), expected, "{what}");
            assert!(selection.check().is_err(), "{what}");
            assert!(selection.counts_per_feature().is_err(), "{what}");
        }
    }
}

fn bad_arguments<R: Runtime>(client: &ComputeClient<R>) {
    let data = common::matrix(1, 4, 6, 0);
    let handle = upload_scores(client, &data);
    let scores = DeviceScores::new(client, &handle, 4, 6).unwrap();
    let err = |r: Result<_, KernelError>| {
        common::alloc_error(r.map(|_: sae_kernels::DeviceSelection<R>| ()).unwrap_err())
    };
    assert_eq!(
        err(row_topk(&scores, 7)),
        AllocError::KTooLarge { k: 7, cols: 6 }
    );
    assert_eq!(
        err(global_topk(&scores, 25)),
        AllocError::BudgetTooLarge {
            budget: 25,
            available: 24
        }
    );
    let five = Capacities::uniform(5, 5, 4).unwrap();
    assert_eq!(
        err(column_topm(&scores, &five)),
        AllocError::CapacityCount {
            got: 5,
            expected: 6
        }
    );
    let big = Capacities::from_vec(vec![5, 0, 0, 0, 0, 0], 5).unwrap();
    assert_eq!(
        err(column_topm(&scores, &big)),
        AllocError::CapacityTooLarge {
            feature: 0,
            capacity: 5,
            rows: 4
        }
    );
    assert_eq!(
        err(apply_thresholds(
            &scores,
            &Thresholds::PerFeature(vec![0.0; 4])
        )),
        AllocError::ThresholdCount {
            got: 4,
            expected: 6
        }
    );
    assert_eq!(
        DeviceScores::new(client, &handle, 0, 6).unwrap_err(),
        KernelError::Alloc(AllocError::EmptyMatrix { rows: 0, cols: 6 })
    );
    assert!(matches!(
        DeviceScores::new(client, &handle, 5, 6).unwrap_err(),
        KernelError::BufferTooSmall { what: "scores", .. }
    ));
    assert!(matches!(
        DeviceScores::new(client, &handle, 1 << 20, 1 << 13).unwrap_err(),
        KernelError::TooManyScores { .. }
    ));
    let short = client.create_from_slice(u32::as_bytes(&[1, 1, 1, 1, 1]));
    assert!(matches!(
        column_topm_on_device(&scores, &short, 5).unwrap_err(),
        KernelError::BufferTooSmall {
            what: "capacities",
            ..
        }
    ));
    assert!(matches!(
        apply_thresholds_on_device(&scores, &short, true).unwrap_err(),
        KernelError::BufferTooSmall {
            what: "thresholds",
            ..
        }
    ));
}

fn suite<R: Runtime>(client: &ComputeClient<R>) {
    nan_is_reported(client);
    bad_arguments(client);
}

on_every_runtime!(suite);
