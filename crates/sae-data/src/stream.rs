//! Shuffled, resumable streaming over shards, and the held-out evaluation rows.
//!
//! Rows are grouped into contiguous blocks (`block_rows`, good for reading). Each epoch the
//! training blocks of all shards are permuted together; consecutive runs of permuted blocks
//! form shuffle windows of about `shuffle_rows` rows, and the rows of a window are permuted
//! again. Both permutations derive from `(seed, epoch, window)`, so a [`ShardCursor`] of a few
//! integers restores the stream exactly, and a window costs only its row indices in memory:
//! rows are decoded straight from the mapped files into the batch.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::normalize::Normalizer;
use crate::shards::{ShardSet, check_spread, ensure_mapped};
use crate::source::{BatchSource, Cursor, ShardCursor};

/// Which rows are reserved for evaluation and never streamed for training.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldOut {
    /// Train on everything.
    #[default]
    None,
    /// Each block is held out with probability `fraction`, decided by a hash of
    /// `(seed, shard index, block index)`: deterministic, and independent of the shuffle seed.
    Fraction {
        /// Expected share of rows held out, in `[0, 1]`.
        fraction: f64,
        /// Seed of the split.
        seed: u64,
    },
    /// The last `count` shards (in the set's sorted order) are held out whole.
    LastShards {
        /// Number of shards held out.
        count: usize,
    },
}

/// How a [`ShardStream`] shuffles and splits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamConfig {
    /// Shuffle seed.
    pub seed: u64,
    /// Rows per shuffle window: rows within a window are fully permuted. Costs 16 bytes a row.
    pub shuffle_rows: usize,
    /// Rows per contiguous block, the unit of the cross-shard permutation and of the hold-out.
    pub block_rows: usize,
    /// Rows reserved for evaluation.
    pub hold_out: HoldOut,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            shuffle_rows: 1 << 18,
            block_rows: 64,
            hold_out: HoldOut::None,
        }
    }
}

/// A contiguous run of rows of one shard.
#[derive(Clone, Copy, Debug)]
struct Block {
    shard: u32,
    start: u64,
    rows: u32,
}

/// SplitMix64 finaliser folded over `parts`: independent seeds for every `(purpose, indices)`.
pub(crate) fn mix(parts: &[u64]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for &p in parts {
        h ^= p;
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h
}

const EPOCH_ORDER: u64 = 1;
const WINDOW_ORDER: u64 = 2;
const HOLD_OUT: u64 = 3;

/// In-place Fisher-Yates shuffle, portable across platforms (64-bit draws).
fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.random_range(0..=i as u64) as usize;
        items.swap(i, j);
    }
}

/// Splits the set into blocks: (training, held out).
fn split_blocks(
    set: &ShardSet,
    config: &StreamConfig,
) -> Result<(Vec<Block>, Vec<Block>), DataError> {
    if config.block_rows == 0 || config.block_rows > u32::MAX as usize {
        return Err(DataError::config("block_rows must be in 1..=u32::MAX"));
    }
    if config.shuffle_rows == 0 {
        return Err(DataError::config("shuffle_rows must be at least 1"));
    }
    match config.hold_out {
        HoldOut::Fraction { fraction, .. } if !(0.0..=1.0).contains(&fraction) => {
            return Err(DataError::config(format!(
                "hold-out fraction {fraction} is not in [0, 1]"
            )));
        }
        HoldOut::LastShards { count } if count > set.shards().len() => {
            return Err(DataError::config(format!(
                "cannot hold out {count} of {} shards",
                set.shards().len()
            )));
        }
        _ => {}
    }
    let n_shards = set.shards().len();
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (s, shard) in set.shards().iter().enumerate() {
        let step = config.block_rows as u64;
        for (b, start) in (0..shard.rows()).step_by(config.block_rows).enumerate() {
            let block = Block {
                shard: s as u32,
                start,
                rows: step.min(shard.rows() - start) as u32,
            };
            let held_out = match config.hold_out {
                HoldOut::None => false,
                HoldOut::Fraction { fraction, seed } => {
                    let h = mix(&[seed, HOLD_OUT, s as u64, b as u64]);
                    ((h >> 11) as f64 / (1u64 << 53) as f64) < fraction
                }
                HoldOut::LastShards { count } => s + count >= n_shards,
            };
            if held_out { &mut held } else { &mut train }.push(block);
        }
    }
    Ok((train, held))
}

/// Rows of a piece of a batch decoded in parallel.
const CHUNK_ROWS: usize = 64;

/// Output values below which a batch is decoded on the calling thread alone. Decoding is bound
/// by memory bandwidth: on a small batch (4096 x 384 is 1.5 M values) handing pieces to other
/// threads and waiting for the slowest costs more than it saves, and a helper thread that is
/// descheduled stalls the whole batch.
pub(crate) const PARALLEL_MIN_VALUES: usize = 1 << 22;

/// Decodes the rows `ids` (shard, row) into `out`, checking finiteness.
///
/// First checks, one `fstat` per shard touched, that no file was cut short under its memory
/// map (`extent` is scratch space for that). Batches of at least [`PARALLEL_MIN_VALUES`]
/// values are split over the rayon threads. Every row lands at the same place whichever way
/// the work is split, so the result is identical for any thread count.
fn decode_rows(
    set: &ShardSet,
    ids: &[(u32, u64)],
    out: &mut [f32],
    extent: &mut Vec<(u64, u64)>,
) -> Result<(), DataError> {
    ensure_mapped(set, ids, extent)?;
    let threads = rayon::current_num_threads();
    if threads <= 1 || out.len() < PARALLEL_MIN_VALUES {
        return decode_serial(set, ids, out);
    }
    decode_parallel(set, ids, out, CHUNK_ROWS)
}

/// [`decode_rows`] in pieces of `piece` rows spread over the rayon threads. Small pieces let
/// one thread take over the work of another that was delayed, instead of waiting for it.
fn decode_parallel(
    set: &ShardSet,
    ids: &[(u32, u64)],
    out: &mut [f32],
    piece: usize,
) -> Result<(), DataError> {
    let d = set.d();
    out.par_chunks_mut(d * piece)
        .zip(ids.par_chunks(piece))
        .try_for_each(|(out, ids)| decode_serial(set, ids, out))
}

/// [`decode_rows`] on the calling thread, prefetching a few rows ahead.
fn decode_serial(set: &ShardSet, ids: &[(u32, u64)], out: &mut [f32]) -> Result<(), DataError> {
    const AHEAD: usize = 4;
    let d = set.d();
    let shards = set.shards();
    for &(s, r) in ids.iter().take(AHEAD) {
        shards[s as usize].prefetch_row(r);
    }
    for (i, (row, &(s, r))) in out.chunks_exact_mut(d).zip(ids).enumerate() {
        if let Some(&(s, r)) = ids.get(i + AHEAD) {
            shards[s as usize].prefetch_row(r);
        }
        shards[s as usize].decode_row(r, row)?;
    }
    Ok(())
}

/// Shuffled training batches from a [`ShardSet`], resumable through its [`Cursor`].
#[derive(Debug)]
pub struct ShardStream {
    set: Arc<ShardSet>,
    config: StreamConfig,
    train: Vec<Block>,
    held: Vec<Block>,
    train_rows: u64,
    blocks_per_window: usize,
    epoch: u64,
    window: u64,
    offset: usize,
    /// Training blocks (indices into `train`) in this epoch's order.
    order: Vec<u32>,
    /// Rows of the current window in their shuffled order.
    rows: Vec<(u32, u64)>,
    /// Scratch space of the per-batch file length check.
    extent: Vec<(u64, u64)>,
}

impl ShardStream {
    /// Opens the shards at `source` (a file, a directory or a glob, see [`ShardSet::open`]) and
    /// builds a stream over them.
    pub fn open(
        source: impl AsRef<std::path::Path>,
        tensor: &str,
        config: StreamConfig,
    ) -> Result<Self, DataError> {
        Self::new(ShardSet::open(source, tensor)?, config)
    }

    /// Builds a stream over `set` positioned at the start of epoch 0.
    ///
    /// Fails if the configuration is out of range or every row is held out.
    pub fn new(set: ShardSet, config: StreamConfig) -> Result<Self, DataError> {
        let (train, held) = split_blocks(&set, &config)?;
        let train_rows: u64 = train.iter().map(|b| u64::from(b.rows)).sum();
        if train_rows == 0 {
            return Err(DataError::Empty {
                what: format!(
                    "every one of the {} rows is held out; nothing left to train on",
                    set.rows()
                ),
            });
        }
        let blocks_per_window = config.shuffle_rows.div_ceil(config.block_rows).max(1);
        let mut stream = Self {
            set: Arc::new(set),
            config,
            train,
            held,
            train_rows,
            blocks_per_window,
            epoch: 0,
            window: 0,
            offset: 0,
            order: Vec::new(),
            rows: Vec::new(),
            extent: Vec::new(),
        };
        stream.load(0, 0);
        Ok(stream)
    }

    /// Estimates a [`Normalizer`] from `sample_rows` training rows spread evenly over the
    /// shards (held-out rows are not looked at).
    ///
    /// Fails with [`DataError::ZeroNorm`], naming the file, if the sampled rows are all zero
    /// (with `center`: all equal).
    pub fn estimate_normalizer(
        &self,
        sample_rows: usize,
        center: bool,
    ) -> Result<Normalizer, DataError> {
        let count = (sample_rows as u64).min(self.train_rows) as usize;
        // Training blocks in file order; row k of the training rows lies in the block whose
        // prefix sum first exceeds k.
        let mut ends = Vec::with_capacity(self.train.len());
        let mut total = 0u64;
        for b in &self.train {
            total += u64::from(b.rows);
            ends.push(total);
        }
        let ids: Vec<(u32, u64)> = (0..count as u64)
            .map(|i| {
                let k = (u128::from(i) * u128::from(total) / count as u128) as u64;
                let at = ends.partition_point(|&end| end <= k);
                let block = self.train[at];
                let first = ends[at] - u64::from(block.rows);
                (block.shard, block.start + (k - first))
            })
            .collect();
        let mut sample = vec![0.0; count * self.set.d()];
        decode_rows(&self.set, &ids, &mut sample, &mut Vec::new())?;
        check_spread(&self.set, &ids, &sample, center)?;
        Normalizer::estimate(&sample, self.set.d(), center)
    }

    /// The shards streamed.
    pub fn shard_set(&self) -> &ShardSet {
        &self.set
    }

    /// The configuration.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Rows in one epoch (all rows not held out).
    pub fn train_rows(&self) -> u64 {
        self.train_rows
    }

    /// The held-out rows, in file order.
    pub fn held_out(&self) -> HeldOutRows {
        HeldOutRows::new(Arc::clone(&self.set), self.held.clone())
    }

    fn windows_per_epoch(&self) -> u64 {
        self.train.len().div_ceil(self.blocks_per_window) as u64
    }

    /// Positions the stream at the start of `(epoch, window)`, rebuilding its orders.
    fn load(&mut self, epoch: u64, window: u64) {
        if self.order.is_empty() || epoch != self.epoch {
            self.order = (0..self.train.len() as u32).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(mix(&[self.config.seed, EPOCH_ORDER, epoch]));
            shuffle(&mut self.order, &mut rng);
        }
        self.epoch = epoch;
        self.window = window;
        self.offset = 0;
        let first = window as usize * self.blocks_per_window;
        let last = (first + self.blocks_per_window).min(self.order.len());
        self.rows.clear();
        for &b in &self.order[first..last] {
            let block = self.train[b as usize];
            self.rows.extend(
                (block.start..block.start + u64::from(block.rows)).map(|r| (block.shard, r)),
            );
        }
        let mut rng =
            ChaCha8Rng::seed_from_u64(mix(&[self.config.seed, WINDOW_ORDER, epoch, window]));
        shuffle(&mut self.rows, &mut rng);
    }

    fn advance_window(&mut self) {
        if self.window + 1 < self.windows_per_epoch() {
            self.load(self.epoch, self.window + 1);
        } else {
            self.load(self.epoch + 1, 0);
        }
    }
}

impl BatchSource for ShardStream {
    fn d(&self) -> usize {
        self.set.d()
    }

    fn next_batch(&mut self, rows: usize, out: &mut Vec<f32>) -> Result<(), DataError> {
        let d = self.set.d();
        // Every value is overwritten; resizing without clearing skips a memset per batch.
        out.resize(rows * d, 0.0);
        let mut filled = 0;
        while filled < rows {
            if self.offset == self.rows.len() {
                self.advance_window();
            }
            let take = (rows - filled).min(self.rows.len() - self.offset);
            decode_rows(
                &self.set,
                &self.rows[self.offset..self.offset + take],
                &mut out[filled * d..(filled + take) * d],
                &mut self.extent,
            )?;
            self.offset += take;
            filled += take;
        }
        Ok(())
    }

    fn cursor(&self) -> Cursor {
        Cursor::Shards(ShardCursor {
            seed: self.config.seed,
            epoch: self.epoch,
            window: self.window,
            offset: self.offset as u64,
            shards: self.set.shards().len() as u64,
            train_rows: self.train_rows,
        })
    }

    fn restore(&mut self, cursor: &Cursor) -> Result<(), DataError> {
        let Cursor::Shards(c) = cursor else {
            return Err(DataError::CursorMismatch {
                reason: format!("{cursor:?} is not a shard-stream cursor"),
            });
        };
        let mismatch = |reason: String| Err(DataError::CursorMismatch { reason });
        if c.seed != self.config.seed {
            return mismatch(format!(
                "cursor seed {} but stream seed {}",
                c.seed, self.config.seed
            ));
        }
        if c.shards != self.set.shards().len() as u64 || c.train_rows != self.train_rows {
            return mismatch(format!(
                "cursor was taken on {} shards / {} training rows, this stream has {} / {}",
                c.shards,
                c.train_rows,
                self.set.shards().len(),
                self.train_rows
            ));
        }
        if c.window >= self.windows_per_epoch() {
            return mismatch(format!(
                "window {} but an epoch has {} windows",
                c.window,
                self.windows_per_epoch()
            ));
        }
        self.order.clear();
        self.load(c.epoch, c.window);
        if c.offset > self.rows.len() as u64 {
            return mismatch(format!(
                "offset {} but window {} holds {} rows",
                c.offset,
                c.window,
                self.rows.len()
            ));
        }
        self.offset = c.offset as usize;
        Ok(())
    }
}

/// The held-out rows of a [`ShardStream`], in file order, for evaluation.
///
/// As a [`BatchSource`] it cycles through the rows in order; [`HeldOutRows::batches`] makes one
/// pass.
#[derive(Debug)]
pub struct HeldOutRows {
    set: Arc<ShardSet>,
    /// Every held-out row as (shard, row), in file order.
    ids: Vec<(u32, u64)>,
    position: u64,
}

impl HeldOutRows {
    fn new(set: Arc<ShardSet>, blocks: Vec<Block>) -> Self {
        let ids = blocks
            .iter()
            .flat_map(|b| (b.start..b.start + u64::from(b.rows)).map(move |r| (b.shard, r)))
            .collect();
        Self {
            set,
            ids,
            position: 0,
        }
    }

    /// Number of held-out rows.
    pub fn rows(&self) -> u64 {
        self.ids.len() as u64
    }

    /// Decodes held-out rows `start..start + out.len() / d` into `out`.
    pub fn read(&self, start: u64, out: &mut [f32]) -> Result<(), DataError> {
        let count = out.len() / self.set.d();
        let start = start as usize;
        if start + count > self.ids.len() {
            return Err(DataError::config(format!(
                "held-out rows {start}..{} requested, only {} exist",
                start + count,
                self.ids.len()
            )));
        }
        decode_rows(
            &self.set,
            &self.ids[start..start + count],
            out,
            &mut Vec::new(),
        )
    }

    /// One pass over the held-out rows in batches of `batch_rows` (the last may be shorter).
    pub fn batches(
        &self,
        batch_rows: usize,
    ) -> impl Iterator<Item = Result<Vec<f32>, DataError>> + '_ {
        let d = self.set.d();
        let batch_rows = batch_rows.max(1);
        (0..self.ids.len()).step_by(batch_rows).map(move |start| {
            let count = batch_rows.min(self.ids.len() - start);
            let mut out = vec![0.0; count * d];
            self.read(start as u64, &mut out).map(|()| out)
        })
    }
}

impl BatchSource for HeldOutRows {
    fn d(&self) -> usize {
        self.set.d()
    }

    fn next_batch(&mut self, rows: usize, out: &mut Vec<f32>) -> Result<(), DataError> {
        if self.ids.is_empty() {
            return Err(DataError::Empty {
                what: "no rows are held out".into(),
            });
        }
        let d = self.set.d();
        // Every value is overwritten; resizing without clearing skips a memset per batch.
        out.resize(rows * d, 0.0);
        let mut filled = 0;
        while filled < rows {
            let take = (rows - filled).min(self.ids.len() - self.position as usize);
            self.read(self.position, &mut out[filled * d..(filled + take) * d])?;
            filled += take;
            self.position = (self.position + take as u64) % self.ids.len() as u64;
        }
        Ok(())
    }

    fn cursor(&self) -> Cursor {
        Cursor::HeldOut {
            position: self.position,
        }
    }

    fn restore(&mut self, cursor: &Cursor) -> Result<(), DataError> {
        match *cursor {
            Cursor::HeldOut { position } if position < self.rows().max(1) => {
                self.position = position;
                Ok(())
            }
            _ => Err(DataError::CursorMismatch {
                reason: format!(
                    "{cursor:?} is not a position among {} held-out rows",
                    self.rows()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dtype, TensorRef, write_safetensors};

    /// Serial decoding and the parallel path, with any piece size, write the same bits.
    #[test]
    fn parallel_split_matches_serial_decoding() {
        let (rows, d) = (1000usize, 24usize);
        let values: Vec<f32> = (0..rows * d)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect();
        let path =
            std::env::temp_dir().join(format!("sae-data-split-{}.safetensors", std::process::id()));
        write_safetensors(
            &path,
            &[TensorRef::matrix("activations", d, &values)],
            Dtype::F16,
        )
        .unwrap();
        let set = ShardSet::open(&path, "activations").unwrap();
        let mut ids: Vec<(u32, u64)> = (0..rows as u64).map(|r| (0, r)).collect();
        shuffle(&mut ids, &mut ChaCha8Rng::seed_from_u64(5));
        let mut serial = vec![0.0; rows * d];
        decode_serial(&set, &ids, &mut serial).unwrap();
        for piece in [1, 63, CHUNK_ROWS, 250, rows] {
            let mut split = vec![f32::NAN; rows * d];
            decode_parallel(&set, &ids, &mut split, piece).unwrap();
            let same = serial
                .iter()
                .zip(&split)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "pieces of {piece} rows");
        }
        std::fs::remove_file(&path).ok();
    }
}
