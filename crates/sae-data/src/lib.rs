//! Activation sources for sparse-autoencoder training.
//!
//! Turns activations stored in shard files (safetensors f32 / f16 / bf16, npy f32 / f16) into
//! shuffled, normalised `f32` batches, and generates synthetic activations with a known
//! dictionary so feature recovery can be measured. No tensor library: batches are row-major
//! `Vec<f32>` (`rows x d`) that the trainer moves to its device.
//!
//! - [`BatchSource`]: what the trainer consumes. `next_batch` fills a batch, `cursor` /
//!   `restore` give exact resumption through a serde-serialisable [`Cursor`]. Implemented by
//!   [`ShardStream`] (shuffled shards), [`HeldOutRows`] (evaluation rows) and
//!   [`SyntheticSource`] (ground truth).
//! - [`ShardSet`]: memory-mapped, validated shards from a file, a directory or a glob.
//!   Problems (wrong rank, `d` mismatch, truncation, overlapping tensors, bad dtype, NaN / Inf
//!   rows, empty sources, a file cut short while open, an all-zero sample) are [`DataError`]s
//!   naming the file, tensor and row.
//! - [`DataFingerprint`]: sizes, header digests and sampled-row digests of a set's files
//!   ([`ShardSet::fingerprint`]), so a resumed run can tell that its data changed.
//! - [`Normalizer`]: optional centring plus a scale giving mean squared norm `d`; invertible.
//!   [`Normalized`] wraps any [`BatchSource`] so its batches come out normalised.
//! - [`write_safetensors`], [`write_npy`], [`read_safetensors`], [`read_npy`]: small writers
//!   and readers for tests, users and weight export.
//! - [`mmcs`], [`recovery_fraction`]: learned dictionary against the true one.
//!
//! ```
//! use sae_data::{
//!     BatchSource, Dtype, Normalized, ShardSet, ShardStream, StreamConfig, SyntheticConfig,
//!     SyntheticSource, TensorRef, write_safetensors,
//! };
//!
//! # fn main() -> Result<(), sae_data::DataError> {
//! // Store some synthetic activations as an f16 shard.
//! let mut synthetic = SyntheticSource::new(SyntheticConfig::default())?;
//! let mut rows = Vec::new();
//! synthetic.next_batch(1000, &mut rows)?;
//! let path = std::env::temp_dir().join(format!("sae-data-doc-{}.safetensors", std::process::id()));
//! write_safetensors(&path, &[TensorRef::matrix("activations", 64, &rows)], Dtype::F16)?;
//!
//! // Stream it back shuffled and normalised, and resume from a cursor.
//! let set = ShardSet::open(&path, "activations")?;
//! let stream = ShardStream::new(set, StreamConfig { shuffle_rows: 256, ..Default::default() })?;
//! let normalizer = stream.estimate_normalizer(500, false)?;
//! let mut stream = Normalized::new(stream, normalizer)?;
//! let mut batch = Vec::new();
//! stream.next_batch(128, &mut batch)?;
//! let cursor = serde_json::to_string(&stream.cursor()).expect("cursor serialises");
//! stream.next_batch(128, &mut batch)?;
//! stream.restore(&serde_json::from_str(&cursor).expect("cursor parses"))?;
//! let mut again = Vec::new();
//! stream.next_batch(128, &mut again)?;
//! assert_eq!(batch, again);
//!
//! // Compare a dictionary with the truth.
//! let truth = synthetic.dictionary();
//! assert!((sae_data::mmcs(truth, truth, 64) - 1.0).abs() < 1e-5);
//! # std::fs::remove_file(&path).ok();
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod dtype;
mod error;
mod fingerprint;
mod layout;
mod metrics;
mod normalize;
mod npy;
mod safetensors;
mod shards;
mod source;
mod stream;
mod synthetic;

pub use dtype::Dtype;
pub use error::DataError;
pub use fingerprint::{DataFingerprint, FINGERPRINT_ROWS, FileFingerprint};
pub use metrics::{FrequencyBand, max_cosines, mmcs, recovery_by_frequency, recovery_fraction};
pub use normalize::{Normalized, Normalizer};
pub use npy::{NPY_TENSOR, read_npy, write_npy};
pub use safetensors::{TensorRef, read_safetensors, write_safetensors};
pub use shards::{DEFAULT_TENSOR, Shard, ShardSet};
pub use source::{BatchSource, Cursor, ShardCursor};
pub use stream::{HeldOutRows, HoldOut, ShardStream, StreamConfig};
pub use synthetic::{EVAL_START, SyntheticConfig, SyntheticSource};
