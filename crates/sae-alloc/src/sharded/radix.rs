//! The cut of a sharded rule: per group (the whole batch, or one feature), the score key of
//! its `need`-th largest entry over all peers, found by a radix select whose histograms are
//! summed across peers, and each peer's share of the entries tied at the cut.

use super::{Exchange, ShardLayout};
use crate::Selection;
use crate::key::score_key;

/// A shard's candidate score keys in groups, each group's keys in global index order (row
/// major for the one group of the global rule, row order for a feature's).
pub(super) struct GroupedKeys {
    offsets: Vec<usize>,
    keys: Vec<u32>,
}

impl GroupedKeys {
    /// All pairs of `candidates` as one group, row-major.
    pub(super) fn one_group(candidates: &Selection) -> Self {
        Self {
            offsets: vec![0, candidates.nnz()],
            keys: candidates.scores().iter().map(|&s| score_key(s)).collect(),
        }
    }

    /// The pairs of `candidates` grouped by feature, rows ascending within a feature (a
    /// counting sort of the row-major pairs).
    pub(super) fn by_column(candidates: &Selection) -> Self {
        let (offsets, pairs) = candidates.feature_major();
        let scores = candidates.scores();
        Self {
            offsets,
            keys: pairs
                .iter()
                .map(|&p| score_key(scores[p as usize]))
                .collect(),
        }
    }

    fn groups(&self) -> usize {
        self.offsets.len() - 1
    }

    fn group(&self, g: usize) -> &[u32] {
        &self.keys[self.offsets[g]..self.offsets[g + 1]]
    }
}

/// Per group, the key at the cut and how many entries equal to it the peers keep together.
/// Every entry above the cut is kept.
pub(super) struct Cuts {
    keys: Vec<u32>,
    equal_kept: Vec<u64>,
}

impl Cuts {
    /// The cuts that keep `needs[g]` entries of each group `g` over all peers, by a radix
    /// select with `digit_bits`-bit digits (one summed histogram per digit). Every peer's
    /// candidates must together hold at least `needs[g]` entries of each group.
    pub(super) fn find<X: Exchange>(
        keys: &GroupedKeys,
        needs: &[u64],
        digit_bits: u32,
        exchange: &mut X,
    ) -> Result<Self, X::Error> {
        debug_assert!(32 % digit_bits == 0 && needs.len() == keys.groups());
        let buckets = 1usize << digit_bits;
        let digit_mask = (buckets - 1) as u32;
        let mut prefix = vec![0u32; needs.len()];
        // Entries still to take at or below the known prefix.
        let mut remaining = needs.to_vec();
        let mut histograms = vec![0u64; needs.len() * buckets];
        for round in 0..32 / digit_bits {
            let shift = 32 - digit_bits * (round + 1);
            // The bits above this digit, fixed by the earlier rounds.
            let known = if round == 0 {
                0
            } else {
                u32::MAX << (shift + digit_bits)
            };
            histograms.fill(0);
            for (g, histogram) in histograms.chunks_exact_mut(buckets).enumerate() {
                if remaining[g] == 0 {
                    continue;
                }
                for &key in keys.group(g) {
                    if (key ^ prefix[g]) & known == 0 {
                        histogram[((key >> shift) & digit_mask) as usize] += 1;
                    }
                }
            }
            exchange.sum(&mut histograms)?;
            for (g, histogram) in histograms.chunks_exact(buckets).enumerate() {
                if remaining[g] == 0 {
                    continue;
                }
                // Walk the digits from the largest: the cut's digit is where the count of
                // entries at or above it first reaches what is still needed.
                for digit in (0..buckets).rev() {
                    let count = histogram[digit];
                    if count >= remaining[g] {
                        prefix[g] |= (digit as u32) << shift;
                        break;
                    }
                    remaining[g] -= count;
                }
            }
        }
        // A group that keeps nothing cuts above every key.
        for (g, &need) in needs.iter().enumerate() {
            if need == 0 {
                prefix[g] = u32::MAX;
            }
        }
        Ok(Self {
            keys: prefix,
            equal_kept: remaining,
        })
    }

    /// How many of this peer's entries at each group's cut it keeps: the tied entries go to
    /// the lower global index, i.e. to the lower peers first (one summed count per peer and
    /// group).
    pub(super) fn ties_taken<X: Exchange>(
        &self,
        keys: &GroupedKeys,
        layout: &ShardLayout,
        exchange: &mut X,
    ) -> Result<Vec<u64>, X::Error> {
        let groups = self.keys.len();
        let mut equal = vec![0u64; layout.peers * groups];
        let own = &mut equal[layout.peer * groups..(layout.peer + 1) * groups];
        for (g, count) in own.iter_mut().enumerate() {
            if self.equal_kept[g] > 0 {
                *count = keys.group(g).iter().filter(|&&k| k == self.keys[g]).count() as u64;
            }
        }
        exchange.sum(&mut equal)?;
        Ok((0..groups)
            .map(|g| {
                let before: u64 = (0..layout.peer).map(|q| equal[q * groups + g]).sum();
                let left = self.equal_kept[g].saturating_sub(before);
                left.min(equal[layout.peer * groups + g])
            })
            .collect())
    }

    /// Whether an entry of group `g` with `key` is kept, visiting the group's entries in
    /// index order: all above the cut, and the first `take` at it (`seen` counts those met).
    pub(super) fn keeps(&self, g: usize, key: u32, seen: &mut u64, take: u64) -> bool {
        if key != self.keys[g] {
            return key > self.keys[g];
        }
        *seen += 1;
        *seen <= take
    }
}
