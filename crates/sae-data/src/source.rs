//! The batch-source interface the trainer consumes, and its resumable cursor.

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// A stream of `f32` training batches with an exact, serialisable position.
///
/// A source restored from [`BatchSource::cursor`] yields exactly the batches the original would
/// have yielded next, whatever batch sizes were used before.
pub trait BatchSource: Send {
    /// Activation width `d`.
    fn d(&self) -> usize;

    /// Replaces the contents of `out` with the next `rows` rows, row-major (`rows x d`).
    fn next_batch(&mut self, rows: usize, out: &mut Vec<f32>) -> Result<(), DataError>;

    /// The current position.
    fn cursor(&self) -> Cursor;

    /// Moves to a position taken from a source built the same way.
    fn restore(&mut self, cursor: &Cursor) -> Result<(), DataError>;
}

impl<S: BatchSource + ?Sized> BatchSource for Box<S> {
    fn d(&self) -> usize {
        (**self).d()
    }

    fn next_batch(&mut self, rows: usize, out: &mut Vec<f32>) -> Result<(), DataError> {
        (**self).next_batch(rows, out)
    }

    fn cursor(&self) -> Cursor {
        (**self).cursor()
    }

    fn restore(&mut self, cursor: &Cursor) -> Result<(), DataError> {
        (**self).restore(cursor)
    }
}

/// A position in a [`BatchSource`]; serialise it into checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cursor {
    /// A position in a [`crate::ShardStream`].
    Shards(ShardCursor),
    /// A position in [`crate::HeldOutRows`]: the next held-out row.
    HeldOut {
        /// Index of the next row among the held-out rows.
        position: u64,
    },
    /// A position in a [`crate::SyntheticSource`]: the next sample index.
    Synthetic {
        /// Index of the next sample.
        index: u64,
    },
}

/// A position in a shuffled shard stream.
///
/// The block order of an epoch and the row order of a window are pure functions of
/// `(seed, epoch, window)`, so these indices are the whole state: nothing of the shuffle
/// buffer needs saving.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCursor {
    /// The stream's shuffle seed.
    pub seed: u64,
    /// Passes completed over the training rows.
    pub epoch: u64,
    /// Shuffle window within the epoch.
    pub window: u64,
    /// Rows already yielded from that window.
    pub offset: u64,
    /// Number of shards the stream was built on (checked on restore).
    pub shards: u64,
    /// Number of training rows the stream was built on (checked on restore).
    pub train_rows: u64,
}
