//! Each bad input is a typed error naming the argument at fault, never a panic.

mod common;

use sae_alloc::*;

fn ok_matrix(data: &[f32]) -> ScoreMatrix<'_> {
    ScoreMatrix::new(data, 2, 3).unwrap()
}

#[test]
fn shape_errors() {
    assert_eq!(
        ScoreMatrix::new(&[], 0, 3).unwrap_err(),
        AllocError::EmptyMatrix { rows: 0, cols: 3 }
    );
    assert_eq!(
        ScoreMatrix::new(&[], 2, 0).unwrap_err(),
        AllocError::EmptyMatrix { rows: 2, cols: 0 }
    );
    let err = ScoreMatrix::new(&[1.0; 5], 2, 3).unwrap_err();
    assert_eq!(
        err,
        AllocError::ShapeMismatch {
            len: 5,
            rows: 2,
            cols: 3,
            expected: 6
        }
    );
    assert!(err.to_string().contains("5 values"));
}

/// Feature Choice on a feature-major matrix names the first NaN of the token-major matrix,
/// as `column_topm` does: several NaNs, in columns of any capacity (0 included), long columns
/// taking the block-maxima bound and short ones.
#[test]
fn column_topm_transposed_names_the_first_nan_in_row_major_order() {
    for (rows, cols) in [(5, 4), (1100, 3)] {
        let caps =
            Capacities::from_vec(vec![0, 1, 3, 2][..cols].to_vec(), 6 - 2 * (4 - cols)).unwrap();
        for nans in [
            vec![(3, 1)],
            vec![(4, 0), (2, 3 % cols)],
            vec![(rows - 1, cols - 1), (1, 2)],
        ] {
            let mut data: Vec<f32> = (0..rows * cols).map(|i| (i % 13) as f32).collect();
            for &(r, c) in &nans {
                data[r * cols + c] = f32::NAN;
            }
            let m = ScoreMatrix::new(&data, rows, cols).unwrap();
            let t = m.transposed();
            let want = column_topm(&m, &caps).unwrap_err();
            assert!(matches!(want, AllocError::NanScore { .. }));
            let got = column_topm_transposed(&ScoreMatrix::new(&t, cols, rows).unwrap(), &caps);
            assert_eq!(got.unwrap_err(), want, "{rows} x {cols}, NaNs at {nans:?}");
        }
    }
}

#[test]
fn nan_is_reported_with_its_position_by_every_rule() {
    let mut data = [0.5f32; 6];
    data[4] = f32::NAN;
    let m = ok_matrix(&data);
    let want = AllocError::NanScore { row: 1, col: 1 };
    assert_eq!(row_topk(&m, 1).unwrap_err(), want);
    assert_eq!(row_topk(&m, 0).unwrap_err(), want);
    assert_eq!(global_topk(&m, 2).unwrap_err(), want);
    assert_eq!(global_topk(&m, 0).unwrap_err(), want);
    let caps = Capacities::uniform(2, 3, 2).unwrap();
    assert_eq!(column_topm(&m, &caps).unwrap_err(), want);
    let t = m.transposed();
    let by_feature = ScoreMatrix::new(&t, 3, 2).unwrap();
    assert_eq!(
        column_topm_transposed(&by_feature, &caps).unwrap_err(),
        want
    );
    assert_eq!(
        apply_thresholds(&m, &Thresholds::Global(0.0)).unwrap_err(),
        want
    );
    // A negative NaN (sign bit set) too.
    data[4] = -f32::NAN;
    assert_eq!(global_topk(&ok_matrix(&data), 6).unwrap_err(), want);
    assert!(want.to_string().contains("row 1, column 1"));
}

/// Row top-k names a NaN wherever it is in a long row (at least 4 blocks of 64 scores per
/// selected one: the rows that take the block-maxima bound): in the first or a middle block,
/// in the tail after the last full block, as the row's first or last score; and so it does
/// with k = 9, where the same rows take the other path.
#[test]
fn nan_in_long_rows_is_reported_with_its_position() {
    let (rows, cols) = (3, 1024 * 2 + 5);
    for col in [0, 15, 1024 + 17 * 16 + 3, 1024 * 2, cols - 1] {
        for nan in [f32::NAN, -f32::NAN] {
            let mut data: Vec<f32> = (0..rows * cols).map(|i| (i % 97) as f32).collect();
            data[cols + col] = nan;
            let m = ScoreMatrix::new(&data, rows, cols).unwrap();
            for k in [1, 8, 9] {
                assert_eq!(
                    row_topk(&m, k).unwrap_err(),
                    AllocError::NanScore { row: 1, col },
                    "k {k}, column {col}"
                );
            }
        }
    }
}

#[test]
fn limits_beyond_the_matrix() {
    let data = [0.0f32; 6];
    let m = ok_matrix(&data);
    assert_eq!(
        row_topk(&m, 4).unwrap_err(),
        AllocError::KTooLarge { k: 4, cols: 3 }
    );
    assert_eq!(
        global_topk(&m, 7).unwrap_err(),
        AllocError::BudgetTooLarge {
            budget: 7,
            available: 6
        }
    );
    let caps = Capacities::from_vec(vec![1, 1], 2).unwrap();
    assert_eq!(
        column_topm(&m, &caps).unwrap_err(),
        AllocError::CapacityCount {
            got: 2,
            expected: 3
        }
    );
    let caps = Capacities::from_vec(vec![0, 3, 0], 3).unwrap();
    assert_eq!(
        column_topm(&m, &caps).unwrap_err(),
        AllocError::CapacityTooLarge {
            feature: 1,
            capacity: 3,
            rows: 2
        }
    );
    assert_eq!(
        apply_thresholds(&m, &Thresholds::PerFeature(vec![0.0; 2])).unwrap_err(),
        AllocError::ThresholdCount {
            got: 2,
            expected: 3
        }
    );
}

#[test]
fn capacity_errors() {
    assert_eq!(
        Capacities::from_vec(vec![1, 2], 4).unwrap_err(),
        AllocError::CapacitySum { sum: 3, budget: 4 }
    );
    assert!(matches!(
        Capacities::uniform(10, 3, 3),
        Err(AllocError::BudgetUnreachable { budget: 10, .. })
    ));
    assert!(matches!(
        Capacities::uniform(1, 0, 3),
        Err(AllocError::BudgetUnreachable { features: 0, .. })
    ));
    let order = [0, 1, 2];
    assert!(matches!(
        Capacities::zipf(10, 3, 1.0, &order),
        Err(AllocError::BudgetUnreachable { .. })
    ));
    assert_eq!(
        Capacities::zipf(3, 3, -1.0, &order).unwrap_err(),
        AllocError::InvalidExponent { exponent: -1.0 }
    );
    assert!(matches!(
        Capacities::zipf(3, 3, f64::NAN, &order),
        Err(AllocError::InvalidExponent { .. })
    ));
    let err = Capacities::zipf(3, 3, 1.0, &[0, 0, 2]).unwrap_err();
    assert!(err.to_string().contains("feature 0 appears twice"), "{err}");
    let err = Capacities::zipf(3, 3, 1.0, &[0, 5, 2]).unwrap_err();
    assert!(err.to_string().contains("rank 2 names feature 5"), "{err}");
}

#[test]
fn estimator_and_selection_errors() {
    assert_eq!(
        ThresholdEstimator::global(1.0).unwrap_err(),
        AllocError::InvalidDecay { decay: 1.0 }
    );
    assert!(ThresholdEstimator::per_feature(3, -0.1).is_err());
    let mut est = ThresholdEstimator::per_feature(4, 0.5).unwrap();
    assert!(matches!(
        est.update(&Selection::empty(2, 3)),
        Err(AllocError::InvalidSelection { .. })
    ));
    let bad =
        |o: Vec<usize>, f: Vec<u32>| Selection::from_parts(2, 3, o, f.clone(), vec![0.0; f.len()]);
    assert!(bad(vec![0, 1], vec![0]).is_err(), "too few offsets");
    assert!(bad(vec![0, 2, 1], vec![0]).is_err(), "decreasing");
    assert!(bad(vec![0, 1, 1], vec![3]).is_err(), "feature out of range");
    assert!(bad(vec![0, 2, 2], vec![1, 1]).is_err(), "duplicate feature");
    assert!(bad(vec![0, 2, 2], vec![0, 1]).is_ok());
}
