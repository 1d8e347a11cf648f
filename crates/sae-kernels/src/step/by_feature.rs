//! The feature-major (CSC) view of the step's pairs, built on the device in a fixed order.
//!
//! Pairs are numbered row by row (rows `0..N` main, `N..2N` auxiliary, each feature at most
//! once per row). Within a feature the view lists its pairs in row order, the order the host
//! path sums them in, so every weight gradient is the same sum on every run: a deterministic
//! counting sort. The rows are cut into at most [`MAX_BLOCKS`] blocks; integer atomics count
//! each block's pairs per feature (exact whatever their order), a scan over features and one
//! over blocks give every (block, feature) its first slot, and one cube per block places its
//! pairs row after row.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::compact::exclusive_offsets;
use crate::key::{CUBE, cube_index};
use crate::launch::{array, grid, reported_plane_ops, uninit, unit_dim, zeros};

/// Most row blocks of the counting sort (its scratch holds `blocks * F` counters).
const MAX_BLOCKS: usize = 64;
/// Fewest rows per block.
const MIN_ROWS_PER_BLOCK: usize = 64;

/// Counts the pairs of every (block, feature): `counts[b * cols + f]`.
#[cube(launch)]
fn block_counts(
    offsets: &Array<u32>,
    features: &Array<u32>,
    counts: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    rows_per_block: u32,
) {
    let b = cube_index();
    let first = b * rows_per_block as usize;
    if first < rows as usize {
        let end_row = min(first + rows_per_block as usize, rows as usize);
        let mut p = offsets[first] as usize + UNIT_POS as usize;
        let end = offsets[end_row] as usize;
        while p < end {
            counts[b * cols as usize + features[p] as usize].fetch_add(1u32);
            p += CUBE as usize;
        }
    }
}

/// Pairs of every feature over all blocks.
#[cube(launch)]
fn feature_totals(counts: &Array<u32>, totals: &mut Array<u32>, cols: u32, blocks: u32) {
    let f = cube_index() * CUBE as usize + UNIT_POS as usize;
    let n = cols as usize;
    if f < n {
        let mut total = 0u32;
        for b in 0..blocks as usize {
            total += counts[b * n + f];
        }
        totals[f] = total;
    }
}

/// Turns the counts into each (block, feature)'s first slot: the feature's offset plus the
/// pairs of that feature in earlier blocks.
#[cube(launch)]
fn block_slots(feature_offsets: &Array<u32>, counts: &mut Array<u32>, cols: u32, blocks: u32) {
    let f = cube_index() * CUBE as usize + UNIT_POS as usize;
    let n = cols as usize;
    if f < n {
        let mut at = feature_offsets[f];
        for b in 0..blocks as usize {
            let count = counts[b * n + f];
            counts[b * n + f] = at;
            at += count;
        }
    }
}

/// Places every pair of a block at its feature's next slot, row after row (a feature has at
/// most one pair per row, so the units of one row never share a slot).
#[cube(launch)]
fn place_pairs(
    offsets: &Array<u32>,
    features: &Array<u32>,
    slots: &mut Array<u32>,
    ids: &mut Array<u32>,
    rows: u32,
    cols: u32,
    rows_per_block: u32,
) {
    let b = cube_index();
    let first = b * rows_per_block as usize;
    // The whole cube takes the same branch: the barriers below stay uniform.
    if first < rows as usize {
        let end_row = min(first + rows_per_block as usize, rows as usize);
        for r in first..end_row {
            let mut p = offsets[r] as usize + UNIT_POS as usize;
            let end = offsets[r + 1] as usize;
            while p < end {
                let slot = b * cols as usize + features[p] as usize;
                let at = slots[slot];
                ids[at as usize] = p as u32;
                slots[slot] = at + 1u32;
                p += CUBE as usize;
            }
            // The next row reads the slots this one advanced.
            sync_storage();
            sync_cube();
        }
    }
}

/// The pairs of every feature in row order: `offsets` (`cols + 1` u32) and pair `ids`.
pub(crate) struct ByFeature {
    pub(crate) offsets: Handle,
    pub(crate) ids: Handle,
}

/// Builds the feature-major view of `pairs` pairs in CSR rows (`row_offsets`: `rows + 1`,
/// `features`: the pairs' features).
pub(crate) fn by_feature<R: Runtime>(
    client: &ComputeClient<R>,
    row_offsets: &Handle,
    features: &Handle,
    rows: usize,
    cols: usize,
    pairs: usize,
) -> ByFeature {
    let blocks = rows.div_ceil(MIN_ROWS_PER_BLOCK).clamp(1, MAX_BLOCKS);
    let rows_per_block = rows.div_ceil(blocks).max(1);
    let blocks = rows.div_ceil(rows_per_block).max(1);
    let counts = zeros(client, blocks * cols);
    block_counts::launch::<R>(
        client,
        grid(blocks),
        unit_dim(),
        array(row_offsets, rows + 1),
        array(features, pairs),
        array(&counts, blocks * cols),
        rows as u32,
        cols as u32,
        rows_per_block as u32,
    );
    let feature_groups = grid(cols.div_ceil(CUBE as usize));
    let totals = uninit(client, cols);
    feature_totals::launch::<R>(
        client,
        feature_groups.clone(),
        unit_dim(),
        array(&counts, blocks * cols),
        array(&totals, cols),
        cols as u32,
        blocks as u32,
    );
    let offsets = uninit(client, cols + 1);
    exclusive_offsets::launch::<R>(
        client,
        CubeCount::Static(1, 1, 1),
        unit_dim(),
        array(&totals, cols),
        array(&offsets, cols + 1),
        cols as u32,
        reported_plane_ops(client),
    );
    block_slots::launch::<R>(
        client,
        feature_groups,
        unit_dim(),
        array(&offsets, cols + 1),
        array(&counts, blocks * cols),
        cols as u32,
        blocks as u32,
    );
    let ids = uninit(client, pairs);
    place_pairs::launch::<R>(
        client,
        grid(blocks),
        unit_dim(),
        array(row_offsets, rows + 1),
        array(features, pairs),
        array(&counts, blocks * cols),
        array(&ids, pairs),
        rows as u32,
        cols as u32,
        rows_per_block as u32,
    );
    ByFeature { offsets, ids }
}

/// Row offsets of the joined pair space: main rows `0..N` as they are, auxiliary rows
/// `N..2N` shifted past the `main_pairs` main pairs (`2N + 1` offsets).
#[cube(launch)]
pub(crate) fn join_offsets(
    main: &Array<u32>,
    aux: &Array<u32>,
    joined: &mut Array<u32>,
    tokens: u32,
    main_pairs: u32,
) {
    let i = cube_index() * CUBE as usize + UNIT_POS as usize;
    let n = tokens as usize;
    if i < n {
        joined[i] = main[i];
    }
    if i <= n {
        joined[n + i] = main_pairs + aux[i];
    }
}
