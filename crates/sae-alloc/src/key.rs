//! Order-preserving integer keys for f32 scores.
//!
//! Every rule ranks entries by score, larger first, and breaks ties by the lower index. Mapping
//! a score to a `u32` whose unsigned order equals the float order (with `-0.0 == +0.0`), and
//! packing `!index` into the low half of a `u64`, turns "score desc, index asc" into one
//! integer comparison and makes every candidate's rank unique.

/// Maps a non-NaN `f32` to a `u32` with the same order; `-0.0` and `+0.0` map to the same key.
#[inline(always)]
pub fn score_key(score: f32) -> u32 {
    // Adding +0.0 turns -0.0 into +0.0 (IEEE round-to-nearest), so both zeros tie.
    let bits = (score + 0.0).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`score_key`] (returns `+0.0` for either zero).
#[inline(always)]
pub fn key_score(key: u32) -> f32 {
    let bits = if key & 0x8000_0000 != 0 {
        key & 0x7FFF_FFFF
    } else {
        !key
    };
    f32::from_bits(bits)
}

/// A rank key: larger means "selected first" (larger score, then lower index).
#[inline(always)]
pub(crate) fn rank_key(score: f32, index: u32) -> u64 {
    (u64::from(score_key(score)) << 32) | u64::from(!index)
}

/// The index packed in a [`rank_key`].
#[inline(always)]
pub(crate) fn rank_index(key: u64) -> u32 {
    !(key as u32)
}

/// The score packed in a [`rank_key`].
#[inline(always)]
pub(crate) fn rank_score(key: u64) -> f32 {
    key_score((key >> 32) as u32)
}

/// Keeps the `k` largest keys of `buf` (unordered), dropping the rest.
#[inline]
pub(crate) fn keep_largest(buf: &mut Vec<u64>, k: usize) {
    if buf.len() > k {
        if k > 0 {
            buf.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        }
        buf.truncate(k);
    }
}

/// The smallest score among the keys of a buffer holding exactly the current top-k: any later
/// candidate (higher index) must beat it strictly.
#[inline]
pub(crate) fn admission_threshold(buf: &[u64]) -> f32 {
    rank_score(*buf.iter().min().expect("non-empty buffer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_matches_float_order() {
        let values = [
            f32::NEG_INFINITY,
            -3.3e38,
            -1.0,
            -1e-40,
            -0.0,
            0.0,
            1e-40,
            1.0,
            3.3e38,
            f32::INFINITY,
        ];
        for a in values {
            for b in values {
                assert_eq!(
                    a.partial_cmp(&b).unwrap(),
                    score_key(a).cmp(&score_key(b)),
                    "{a} vs {b}"
                );
            }
            assert_eq!(key_score(score_key(a)), a + 0.0);
        }
    }

    #[test]
    fn rank_key_breaks_ties_by_lower_index() {
        assert!(rank_key(1.0, 3) > rank_key(1.0, 4));
        assert!(rank_key(2.0, 9) > rank_key(1.0, 0));
        assert_eq!(rank_index(rank_key(-2.0, 77)), 77);
        assert_eq!(rank_score(rank_key(-2.0, 77)), -2.0);
    }
}
