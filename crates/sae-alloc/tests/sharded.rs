//! The sharded rules, run by 1 to 4 peers on threads over row shards of one matrix, select
//! exactly what the single-matrix rule selects on the whole matrix (itself equal to the
//! brute-force oracles), and every peer fails alike on bad input.

mod common;

use std::sync::{Arc, Barrier, Mutex};

use common::*;
use proptest::prelude::*;
use sae_alloc::sharded::{
    Exchange, ShardSelection, ShardedError, column_topm_sharded, global_topk_sharded,
    row_topk_sharded,
};
use sae_alloc::{
    AllocError, Capacities, ScoreMatrix, Selection, column_topm, global_topk, row_topk,
};

/// Peers on threads of one process: each sum is a barrier round over a shared board.
struct Board {
    slots: Mutex<Vec<Vec<u64>>>,
    barrier: Barrier,
}

struct ThreadExchange {
    peer: usize,
    board: Arc<Board>,
    rounds: usize,
}

impl Exchange for ThreadExchange {
    type Error = std::convert::Infallible;
    fn peer(&self) -> usize {
        self.peer
    }
    fn peers(&self) -> usize {
        self.board.slots.lock().unwrap().len()
    }
    fn sum(&mut self, counts: &mut [u64]) -> Result<(), Self::Error> {
        self.rounds += 1;
        self.board.slots.lock().unwrap()[self.peer] = counts.to_vec();
        self.board.barrier.wait();
        {
            let slots = self.board.slots.lock().unwrap();
            counts.fill(0);
            for slot in slots.iter() {
                assert_eq!(
                    slot.len(),
                    counts.len(),
                    "peers summed slices of different lengths"
                );
                for (c, s) in counts.iter_mut().zip(slot) {
                    *c += s;
                }
            }
        }
        self.board.barrier.wait();
        Ok(())
    }
}

type Outcome = Result<ShardSelection, ShardedError<std::convert::Infallible>>;

/// Runs `rule` on each shard (rows `cuts[p]..cuts[p + 1]`) on its own thread; returns each
/// peer's outcome and number of exchange rounds.
fn run_peers(
    data: &[f32],
    cols: usize,
    cuts: &[usize],
    rule: impl Fn(&ScoreMatrix, &mut ThreadExchange) -> Outcome + Sync,
) -> Vec<(Outcome, usize)> {
    let peers = cuts.len() - 1;
    let board = Arc::new(Board {
        slots: Mutex::new(vec![Vec::new(); peers]),
        barrier: Barrier::new(peers),
    });
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..peers)
            .map(|peer| {
                let board = board.clone();
                let rule = &rule;
                scope.spawn(move || {
                    let shard = &data[cuts[peer] * cols..cuts[peer + 1] * cols];
                    let matrix = ScoreMatrix::new(shard, cuts[peer + 1] - cuts[peer], cols)
                        .expect("non-empty shard");
                    let mut exchange = ThreadExchange {
                        peer,
                        board,
                        rounds: 0,
                    };
                    let outcome = rule(&matrix, &mut exchange);
                    (outcome, exchange.rounds)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The peers' selections stacked back into one selection of the whole matrix, after checking
/// each peer's layout.
fn stacked(outcomes: Vec<(Outcome, usize)>, cuts: &[usize]) -> Selection {
    let peers = cuts.len() - 1;
    let (mut offsets, mut features, mut scores) = (vec![0], Vec::new(), Vec::new());
    let mut cols = 0;
    for (peer, (outcome, _)) in outcomes.into_iter().enumerate() {
        let ShardSelection { selection, layout } = outcome.expect("every peer selects");
        assert_eq!(
            (
                layout.peer,
                layout.peers,
                layout.first_row,
                layout.global_rows
            ),
            (peer, peers, cuts[peer], cuts[peers])
        );
        cols = selection.cols();
        for row in 0..selection.rows() {
            let (f, s) = selection.row(row);
            features.extend_from_slice(f);
            scores.extend_from_slice(s);
            offsets.push(features.len());
        }
    }
    Selection::from_parts(cuts[peers], cols, offsets, features, scores).unwrap()
}

/// A matrix and the row boundaries of 1 to 4 non-empty shards.
fn sharded_matrix(
    max_rows: usize,
    max_cols: usize,
) -> impl Strategy<Value = (Vec<f32>, usize, usize, Vec<usize>)> {
    matrix(max_rows, max_cols).prop_flat_map(|(data, rows, cols)| {
        let most = rows.min(4);
        (1..=most).prop_flat_map(move |peers| {
            let data = data.clone();
            prop::sample::subsequence((1..rows).collect::<Vec<_>>(), peers - 1).prop_map(
                move |inner| {
                    let mut cuts = vec![0];
                    cuts.extend(inner);
                    cuts.push(rows);
                    (data.clone(), rows, cols, cuts)
                },
            )
        })
    })
}

fn rounds(outcomes: &[(Outcome, usize)]) -> Vec<usize> {
    outcomes.iter().map(|(_, r)| *r).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn sharded_row_topk_equals_the_whole_matrix_rule(
        ((data, rows, cols, cuts), frac) in (sharded_matrix(16, 30), 0.0..=1.0f64)
    ) {
        let k = (frac * cols as f64).round() as usize;
        let outcomes = run_peers(&data, cols, &cuts, |m, x| row_topk_sharded(m, k, x));
        prop_assert!(rounds(&outcomes).iter().all(|&r| r == 1));
        let whole = row_topk(&ScoreMatrix::new(&data, rows, cols).unwrap(), k).unwrap();
        prop_assert_eq!(stacked(outcomes, &cuts), whole);
    }

    #[test]
    fn sharded_global_topk_equals_the_whole_matrix_rule(
        ((data, rows, cols, cuts), frac) in (sharded_matrix(24, 30), 0.0..=1.0f64)
    ) {
        let budget = (frac * (rows * cols) as f64).round() as usize;
        let outcomes = run_peers(&data, cols, &cuts, |m, x| global_topk_sharded(m, budget, x));
        prop_assert!(rounds(&outcomes).iter().all(|&r| r == 6));
        let whole = global_topk(&ScoreMatrix::new(&data, rows, cols).unwrap(), budget).unwrap();
        prop_assert_eq!(&whole, &oracle_global(&data, rows, cols, budget));
        prop_assert_eq!(stacked(outcomes, &cuts), whole);
    }

    #[test]
    fn sharded_column_topm_equals_the_whole_matrix_rule(
        (data, rows, cols, cuts, caps) in sharded_matrix(40, 12).prop_flat_map(|(d, r, c, cuts)| {
            (Just(d), Just(r), Just(c), Just(cuts), prop::collection::vec(0..=r as u32, c))
        })
    ) {
        let budget = caps.iter().map(|&c| c as usize).sum();
        let capacities = Capacities::from_vec(caps.clone(), budget).unwrap();
        let outcomes =
            run_peers(&data, cols, &cuts, |m, x| column_topm_sharded(m, &capacities, x));
        prop_assert!(rounds(&outcomes).iter().all(|&r| r == 10));
        let whole = column_topm(&ScoreMatrix::new(&data, rows, cols).unwrap(), &capacities).unwrap();
        prop_assert_eq!(&whole, &oracle_columns(&data, rows, cols, &caps));
        prop_assert_eq!(stacked(outcomes, &cuts), whole);
    }
}

/// Many ties at one value across every shard boundary: the tied entries go to the lowest
/// global indices, whichever peer holds them.
#[test]
fn ties_at_the_cut_go_to_the_lowest_global_index() {
    let (rows, cols) = (12, 5);
    let data = vec![1.0f32; rows * cols];
    let cuts = [0, 3, 4, 9, 12];
    for budget in [0, 1, 14, 15, 16, 31, 59, 60] {
        let outcomes = run_peers(&data, cols, &cuts, |m, x| global_topk_sharded(m, budget, x));
        let got = stacked(outcomes, &cuts);
        let want = oracle_global(&data, rows, cols, budget);
        assert_eq!(got, want, "budget {budget}");
    }
    let caps = Capacities::from_vec(vec![0, 1, 3, 4, 12], 20).unwrap();
    let outcomes = run_peers(&data, cols, &cuts, |m, x| column_topm_sharded(m, &caps, x));
    assert_eq!(
        stacked(outcomes, &cuts),
        oracle_columns(&data, rows, cols, caps.as_slice())
    );
}

/// A NaN on one peer's shard fails every peer with the same error, naming its global row.
#[test]
fn a_nan_on_one_shard_fails_every_peer_alike() {
    let (rows, cols) = (9, 4);
    let mut data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    data[6 * cols + 2] = f32::NAN;
    data[8 * cols + 1] = f32::NAN;
    let cuts = [0, 2, 5, 9];
    let caps = Capacities::uniform(12, cols, rows as u32).unwrap();
    type Rule<'a> = Box<dyn Fn(&ScoreMatrix, &mut ThreadExchange) -> Outcome + Sync + 'a>;
    let rules: [Rule; 3] = [
        Box::new(|m, x| row_topk_sharded(m, 2, x)),
        Box::new(|m, x| global_topk_sharded(m, 10, x)),
        Box::new(|m, x| column_topm_sharded(m, &caps, x)),
    ];
    for rule in rules {
        for (outcome, rounds) in run_peers(&data, cols, &cuts, rule) {
            assert_eq!(rounds, 1);
            match outcome {
                Err(ShardedError::Alloc(AllocError::NanScore { row: 6, col: 2 })) => {}
                other => panic!("expected the NaN at row 6, column 2, got {other:?}"),
            }
        }
    }
}

/// Arguments that do not fit the global batch are rejected by every peer alike, after the
/// layout is known: a budget beyond all entries, a capacity beyond all rows.
#[test]
fn global_arguments_are_checked_against_the_whole_batch() {
    let (rows, cols) = (6, 3);
    let data: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32).collect();
    let cuts = [0, 2, 6];
    for (outcome, _) in run_peers(&data, cols, &cuts, |m, x| global_topk_sharded(m, 19, x)) {
        assert!(matches!(
            outcome,
            Err(ShardedError::Alloc(AllocError::BudgetTooLarge {
                budget: 19,
                available: 18
            }))
        ));
    }
    // 5 tokens fit the whole batch though not the first shard; 7 fit nowhere.
    let fits = Capacities::from_vec(vec![5, 0, 1], 6).unwrap();
    let outcomes = run_peers(&data, cols, &cuts, |m, x| column_topm_sharded(m, &fits, x));
    let whole = column_topm(&ScoreMatrix::new(&data, rows, cols).unwrap(), &fits).unwrap();
    assert_eq!(stacked(outcomes, &cuts), whole);
    let too_many = Capacities::from_vec(vec![7, 0, 0], 7).unwrap();
    for (outcome, _) in run_peers(&data, cols, &cuts, |m, x| {
        column_topm_sharded(m, &too_many, x)
    }) {
        assert!(matches!(
            outcome,
            Err(ShardedError::Alloc(AllocError::CapacityTooLarge {
                feature: 0,
                capacity: 7,
                rows: 6
            }))
        ));
    }
}

/// When a NaN and an argument that does not fit the batch come together, every peer gives
/// the error the whole-matrix rule gives: the argument's, checked first.
#[test]
fn arguments_are_checked_before_nans_as_on_the_whole_matrix() {
    let (rows, cols) = (6, 3);
    let mut data: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32).collect();
    data[4 * cols + 1] = f32::NAN;
    let cuts = [0, 2, 6];
    let whole = ScoreMatrix::new(&data, rows, cols).unwrap();
    let want = global_topk(&whole, 19).unwrap_err();
    assert!(
        matches!(want, AllocError::BudgetTooLarge { .. }),
        "{want:?}"
    );
    for (outcome, _) in run_peers(&data, cols, &cuts, |m, x| global_topk_sharded(m, 19, x)) {
        assert!(
            matches!(&outcome, Err(ShardedError::Alloc(e)) if *e == want),
            "{outcome:?}"
        );
    }
    let too_many = Capacities::from_vec(vec![7, 0, 0], 7).unwrap();
    let want = column_topm(&whole, &too_many).unwrap_err();
    assert!(
        matches!(want, AllocError::CapacityTooLarge { .. }),
        "{want:?}"
    );
    for (outcome, _) in run_peers(&data, cols, &cuts, |m, x| {
        column_topm_sharded(m, &too_many, x)
    }) {
        assert!(
            matches!(&outcome, Err(ShardedError::Alloc(e)) if *e == want),
            "{outcome:?}"
        );
    }
    // With arguments that fit, the NaN is named by every peer.
    for (outcome, _) in run_peers(&data, cols, &cuts, |m, x| global_topk_sharded(m, 5, x)) {
        assert!(
            matches!(
                outcome,
                Err(ShardedError::Alloc(AllocError::NanScore { row: 4, col: 1 }))
            ),
            "{outcome:?}"
        );
    }
}

/// Shards that disagree on the number of features are named.
#[test]
fn shards_of_different_widths_are_rejected() {
    let board = Arc::new(Board {
        slots: Mutex::new(vec![Vec::new(); 2]),
        barrier: Barrier::new(2),
    });
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = [(0usize, 3usize), (1, 4)]
            .into_iter()
            .map(|(peer, cols)| {
                let board = board.clone();
                scope.spawn(move || {
                    let data = vec![1.0f32; 2 * cols];
                    let matrix = ScoreMatrix::new(&data, 2, cols).unwrap();
                    let mut exchange = ThreadExchange {
                        peer,
                        board,
                        rounds: 0,
                    };
                    row_topk_sharded(&matrix, 1, &mut exchange)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(matches!(
        outcomes[0],
        Err(ShardedError::Alloc(AllocError::ShardMismatch {
            peer: 1,
            cols: 4,
            expected: 3
        }))
    ));
    assert!(matches!(
        outcomes[1],
        Err(ShardedError::Alloc(AllocError::ShardMismatch {
            peer: 0,
            cols: 3,
            expected: 4
        }))
    ));
}
