//! The rules on a batch whose rows are split over several peers (devices or machines).
//!
//! Peer `p` holds rows `first_row(p)..first_row(p + 1)` of the global `N x F` score matrix,
//! the peers in row order. Each peer calls the same function with its shard and the global
//! parameters; together they select exactly what the single-matrix rule selects on the whole
//! matrix (the same pairs, ties broken by the same global index), and each peer returns the
//! rows of that selection it holds.
//!
//! Peers talk only through an [`Exchange`]: element-wise sums of `u64` counts, exact in any
//! order. Every rule first exchanges the shard layout and whether a shard met a NaN, so all
//! peers return the same error, or none (a peer never waits for one that gave up). Then:
//!
//! - [`row_topk_sharded`]: nothing more, rows are independent;
//! - [`global_topk_sharded`] (Mutual Choice): each peer's own top `budget` are its
//!   candidates; a radix select over all peers' candidate keys, one histogram sum per 8-bit
//!   digit, finds the global cut; one more sum of the per-peer counts at the cut gives each
//!   peer its share of the ties (lower global row-major index first);
//! - [`column_topm_sharded`] (Feature Choice): each peer's top `m_f` tokens per feature are
//!   its candidates; the same radix select runs per feature (4-bit digits keep each sum at
//!   `16 F` counts), ties going to lower global rows.
//!
//! Rounds and volume per call, P peers: TopK 1 sum of `4P`; MC 6 sums, at most `max(4P, 256)`
//! counts each; FC 10 sums, at most `max(16 F, P F)` counts each.

mod radix;

use crate::key::score_key;
use crate::{AllocError, Capacities, ScoreMatrix, Selection, column_topm, global_topk, row_topk};
use radix::{Cuts, GroupedKeys};

/// Element-wise sums of counts across the peers of a sharded batch.
///
/// Every peer makes the same sequence of calls with slices of the same lengths; each call
/// returns when all peers made it, with every slice replaced by the sum over the peers.
pub trait Exchange {
    /// Why a sum could not be made (a peer gone, a transport error).
    type Error;
    /// This peer's position in row order, `0..peers()`.
    fn peer(&self) -> usize;
    /// The number of peers.
    fn peers(&self) -> usize;
    /// Replaces `counts` by its element-wise sum over all peers. Exact: counts are integers.
    fn sum(&mut self, counts: &mut [u64]) -> Result<(), Self::Error>;
}

/// Why a sharded rule failed: the rule's own error (the same on every peer), or the exchange.
#[derive(Debug, thiserror::Error)]
pub enum ShardedError<E> {
    /// The rule rejected the global batch or its arguments.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// Another peer's rule failed where this one's did not (the peers were given different
    /// arguments); that peer returns its own error.
    #[error("peer {peer} could not select on its shard")]
    PeerFailed {
        /// The first peer that failed.
        peer: usize,
    },
    /// The peers could not exchange their counts.
    #[error("exchange between peers failed: {0}")]
    Exchange(E),
}

/// Where this peer's shard lies in the global batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLayout {
    /// This peer's position.
    pub peer: usize,
    /// Number of peers.
    pub peers: usize,
    /// Global index of this shard's first row.
    pub first_row: usize,
    /// Rows of the global batch.
    pub global_rows: usize,
}

/// One peer's part of a sharded selection.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSelection {
    /// The selected pairs of this peer's rows (local row indices).
    pub selection: Selection,
    /// Where the rows lie in the global batch.
    pub layout: ShardLayout,
}

/// A shard's candidates for a sharded rule, made on the shard alone: what the single-matrix
/// rule selects on the shard with the candidate parameters ([`global_candidates`],
/// [`column_candidates`]; the rule's own for row top-k), or its error. Whoever scores the
/// shard (the host, or a device kernel bit-exact with the host rule) selects them; the
/// sharded rule then needs only the exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    /// Rows of the shard.
    pub rows: usize,
    /// Columns (features) of the shard.
    pub cols: usize,
    /// The shard's candidates, or why the shard's rule failed (a NaN score, named by its row
    /// and column in the shard).
    pub local: Result<Selection, AllocError>,
}

impl Candidates {
    /// The candidates the rule `select` makes on `scores`.
    fn of(scores: &ScoreMatrix, select: impl FnOnce() -> Result<Selection, AllocError>) -> Self {
        Self {
            rows: scores.rows(),
            cols: scores.cols(),
            local: select(),
        }
    }
}

/// The local budget of a shard of `shard_len` scores under a global `budget`: no more than
/// the budget of the shard's entries can be among the global top.
pub fn global_candidates(budget: usize, shard_len: usize) -> usize {
    budget.min(shard_len)
}

/// The local capacities of a shard of `rows` rows under the batch's `capacities`: a
/// feature's global winners on the shard are among its local top `min(m_f, rows)`.
pub fn column_candidates(capacities: &Capacities, rows: usize) -> Result<Capacities, AllocError> {
    let rows = u32::try_from(rows).unwrap_or(u32::MAX);
    let local: Vec<u32> = capacities.as_slice().iter().map(|&c| c.min(rows)).collect();
    let budget = local.iter().map(|&c| c as usize).sum();
    Capacities::from_vec(local, budget)
}

/// Row top-k ([`row_topk`]) on a sharded batch.
pub fn row_topk_sharded<X: Exchange>(
    scores: &ScoreMatrix,
    k: usize,
    exchange: &mut X,
) -> Result<ShardSelection, ShardedError<X::Error>> {
    row_topk_of_candidates(Candidates::of(scores, || row_topk(scores, k)), exchange)
}

/// [`row_topk_sharded`] from the shard's own row top-k: rows are independent, so the
/// candidates are the selection once every peer knows that none failed.
pub fn row_topk_of_candidates<X: Exchange>(
    candidates: Candidates,
    exchange: &mut X,
) -> Result<ShardSelection, ShardedError<X::Error>> {
    let layout = agree(&candidates, |_| Ok(()), exchange)?;
    Ok(ShardSelection {
        selection: candidates.local?,
        layout,
    })
}

/// Global top-`budget` ([`global_topk`], Mutual Choice) on a sharded batch: `budget` counts
/// the pairs of the whole batch.
pub fn global_topk_sharded<X: Exchange>(
    scores: &ScoreMatrix,
    budget: usize,
    exchange: &mut X,
) -> Result<ShardSelection, ShardedError<X::Error>> {
    let local = global_candidates(budget, scores.data().len());
    let candidates = Candidates::of(scores, || global_topk(scores, local));
    global_topk_of_candidates(candidates, budget, exchange)
}

/// [`global_topk_sharded`] from the shard's candidates: its global top
/// [`global_candidates`]`(budget, rows * cols)`.
pub fn global_topk_of_candidates<X: Exchange>(
    candidates: Candidates,
    budget: usize,
    exchange: &mut X,
) -> Result<ShardSelection, ShardedError<X::Error>> {
    let cols = candidates.cols;
    let fits = |rows: usize| {
        let available = rows * cols;
        match budget > available {
            true => Err(AllocError::BudgetTooLarge { budget, available }),
            false => Ok(()),
        }
    };
    let layout = agree(&candidates, fits, exchange)?;
    let local = candidates.local?;
    let keys = GroupedKeys::one_group(&local);
    let cuts = Cuts::find(&keys, &[budget as u64], 8, exchange).map_err(ShardedError::Exchange)?;
    let take = cuts
        .ties_taken(&keys, &layout, exchange)
        .map_err(ShardedError::Exchange)?;
    let mut equal_seen = 0u64;
    let selection = filter(&local, |_, key| {
        cuts.keeps(0, key, &mut equal_seen, take[0])
    });
    Ok(ShardSelection { selection, layout })
}

/// Per-feature top-`m_f` ([`column_topm`], Feature Choice) on a sharded batch: `capacities`
/// are those of the whole batch (each at most its rows).
pub fn column_topm_sharded<X: Exchange>(
    scores: &ScoreMatrix,
    capacities: &Capacities,
    exchange: &mut X,
) -> Result<ShardSelection, ShardedError<X::Error>> {
    // `column_topm` rejects a capacity vector of the wrong length.
    let candidates = Candidates::of(scores, || {
        column_candidates(capacities, scores.rows()).and_then(|c| column_topm(scores, &c))
    });
    column_topm_of_candidates(candidates, capacities, exchange)
}

/// [`column_topm_sharded`] from the shard's candidates: its per-feature top
/// [`column_candidates`]`(capacities, rows)`.
pub fn column_topm_of_candidates<X: Exchange>(
    candidates: Candidates,
    capacities: &Capacities,
    exchange: &mut X,
) -> Result<ShardSelection, ShardedError<X::Error>> {
    let cols = candidates.cols;
    let fits = |rows: usize| capacities.for_shape(rows, cols).map(|_| ());
    let layout = agree(&candidates, fits, exchange)?;
    let local = candidates.local?;
    let caps = capacities.for_shape(layout.global_rows, cols)?;
    let needs: Vec<u64> = caps.iter().map(|&c| u64::from(c)).collect();
    let keys = GroupedKeys::by_column(&local);
    let cuts = Cuts::find(&keys, &needs, 4, exchange).map_err(ShardedError::Exchange)?;
    let take = cuts
        .ties_taken(&keys, &layout, exchange)
        .map_err(ShardedError::Exchange)?;
    let mut equal_seen = vec![0u64; cols];
    let selection = filter(&local, |f, key| {
        cuts.keeps(f, key, &mut equal_seen[f], take[f])
    });
    Ok(ShardSelection { selection, layout })
}

/// The first round of every rule: each peer's rows and columns, and the first NaN of its
/// shard. Every peer returns the same error, or the layout. The errors come in the order the
/// whole-matrix rules give them: shards of different widths, then the rule's arguments against
/// the whole batch (`fits`, given its rows), then a NaN (naming its global row), then this
/// peer's own failure or another's.
fn agree<X: Exchange>(
    candidates: &Candidates,
    fits: impl FnOnce(usize) -> Result<(), AllocError>,
    exchange: &mut X,
) -> Result<ShardLayout, ShardedError<X::Error>> {
    let (peer, peers) = (exchange.peer(), exchange.peers());
    let (cols, local) = (candidates.cols, &candidates.local);
    // Slots per peer: rows, columns, 1 + row-major index of its first NaN, other failure.
    let mut slots = vec![0u64; 4 * peers];
    slots[peer] = candidates.rows as u64;
    slots[peers + peer] = cols as u64;
    match local {
        Err(AllocError::NanScore { row, col }) => {
            slots[2 * peers + peer] = (row * cols + col) as u64 + 1;
        }
        Err(_) => slots[3 * peers + peer] = 1,
        Ok(_) => {}
    }
    exchange.sum(&mut slots).map_err(ShardedError::Exchange)?;
    let (rows, rest) = slots.split_at(peers);
    let (widths, rest) = rest.split_at(peers);
    let (nans, failed) = rest.split_at(peers);
    if let Some((other, &width)) = widths.iter().enumerate().find(|(_, w)| **w != cols as u64) {
        return Err(AllocError::ShardMismatch {
            peer: other,
            cols: width as usize,
            expected: cols,
        }
        .into());
    }
    let first_row = |p: usize| rows[..p].iter().sum::<u64>() as usize;
    fits(first_row(peers))?;
    if let Some((other, &nan)) = nans.iter().enumerate().find(|(_, n)| **n > 0) {
        let flat = (nan - 1) as usize;
        return Err(AllocError::NanScore {
            row: first_row(other) + flat / cols,
            col: flat % cols,
        }
        .into());
    }
    if let Err(e) = local {
        return Err(e.clone().into());
    }
    if let Some(other) = failed.iter().position(|&f| f > 0) {
        return Err(ShardedError::PeerFailed { peer: other });
    }
    Ok(ShardLayout {
        peer,
        peers,
        first_row: first_row(peer),
        global_rows: first_row(peers),
    })
}

/// The pairs of `local` that `keep(feature, key)` accepts, visited in row-major order.
fn filter(local: &Selection, mut keep: impl FnMut(usize, u32) -> bool) -> Selection {
    let mut offsets = Vec::with_capacity(local.rows() + 1);
    offsets.push(0);
    let (mut features, mut scores) = (Vec::new(), Vec::new());
    for row in 0..local.rows() {
        let (ids, values) = local.row(row);
        for (&f, &s) in ids.iter().zip(values) {
            if keep(f as usize, score_key(s)) {
                features.push(f);
                scores.push(s);
            }
        }
        offsets.push(features.len());
    }
    Selection::from_parts_unchecked(local.rows(), local.cols(), offsets, features, scores)
}
