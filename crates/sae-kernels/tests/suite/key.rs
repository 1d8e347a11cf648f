//! The device key order equals the host's on the floats that stress it: infinities, the
//! largest and smallest normals, subnormals and both zeros, each present several times.

use crate::common;

use cubecl::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sae_alloc::{Capacities, ScoreMatrix, Thresholds};
use sae_kernels::{DeviceScores, upload_scores};

const SPECIAL: &[f32] = &[
    f32::NEG_INFINITY,
    f32::MIN,
    -1.0,
    -f32::MIN_POSITIVE,
    -1e-40,
    -0.0,
    0.0,
    1e-45,
    1e-40,
    f32::MIN_POSITIVE,
    1.0,
    f32::MAX,
    f32::INFINITY,
];

fn suite<R: Runtime>(client: &ComputeClient<R>) {
    let (rows, cols) = (13, 39);
    let mut data: Vec<f32> = SPECIAL.iter().copied().cycle().take(rows * cols).collect();
    data.shuffle(&mut ChaCha8Rng::seed_from_u64(11));
    let handle = upload_scores(client, &data);
    let scores = DeviceScores::new(client, &handle, rows, cols).unwrap();
    let host = ScoreMatrix::new(&data, rows, cols).unwrap();
    for k in [1, 4, 20, 39] {
        let expected = sae_alloc::row_topk(&host, k).unwrap();
        let got = sae_kernels::row_topk(&scores, k).unwrap();
        common::assert_same(&got, &expected, &format!("row_topk k={k}"));
    }
    for budget in [7, 100, 300] {
        let expected = sae_alloc::global_topk(&host, budget).unwrap();
        let got = sae_kernels::global_topk(&scores, budget).unwrap();
        common::assert_same(&got, &expected, &format!("global_topk budget={budget}"));
    }
    let caps = Capacities::uniform(rows * cols / 2, cols, rows as u32).unwrap();
    let expected = sae_alloc::column_topm(&host, &caps).unwrap();
    common::assert_same(
        &sae_kernels::column_topm(&scores, &caps).unwrap(),
        &expected,
        "column",
    );
    for &t in SPECIAL {
        let t = Thresholds::Global(t);
        let expected = sae_alloc::apply_thresholds(&host, &t).unwrap();
        let got = sae_kernels::apply_thresholds(&scores, &t).unwrap();
        common::assert_same(&got, &expected, &format!("{t:?}"));
    }
}

on_every_runtime!(suite);

#[test]
fn host_key_is_sae_alloc_key() {
    for &x in SPECIAL {
        assert_eq!(sae_kernels::key::score_key(x), sae_alloc::key::score_key(x));
    }
}
