//! Results do not depend on the number of threads, and matrices large enough to be split
//! into many parallel parts still match the oracles.

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sae_alloc::*;

fn run_all(data: &[f32], rows: usize, cols: usize) -> Vec<Selection> {
    let m = ScoreMatrix::new(data, rows, cols).unwrap();
    let caps = Capacities::zipf(rows * 8, rows as u32, 1.1, &usage_order(&data[..cols])).unwrap();
    vec![
        row_topk(&m, 8).unwrap(),
        global_topk(&m, rows * 8).unwrap(),
        column_topm(&m, &caps).unwrap(),
        apply_thresholds(&m, &Thresholds::Global(1.5)).unwrap(),
    ]
}

#[test]
fn identical_for_any_thread_count() {
    let (rows, cols) = (257, 1031);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // Coarse values: ties everywhere, including across the parts of the parallel passes.
    let data: Vec<f32> = (0..rows * cols)
        .map(|_| f32::from(rng.random_range(-20i8..20)) / 4.0)
        .collect();
    let reference = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| run_all(&data, rows, cols));
    assert_eq!(reference[0], common::oracle_rows(&data, rows, cols, 8));
    assert_eq!(
        reference[1],
        common::oracle_global(&data, rows, cols, rows * 8)
    );
    let caps = Capacities::zipf(rows * 8, rows as u32, 1.1, &usage_order(&data[..cols])).unwrap();
    assert_eq!(
        reference[2],
        common::oracle_columns(&data, rows, cols, caps.as_slice())
    );
    for threads in [2, 3, 8] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert_eq!(
            pool.install(|| run_all(&data, rows, cols)),
            reference,
            "{threads} threads"
        );
    }
}
