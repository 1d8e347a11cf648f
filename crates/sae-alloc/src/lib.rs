//! Allocation rules of sparse autoencoders on plain `f32` score matrices.
//!
//! An SAE scores every (token, feature) pair of a batch; an allocation rule decides which pairs
//! fire. This crate implements the rules of "Adaptive Sparse Allocation with Mutual Choice &
//! Feature Choice Sparse Autoencoders" (arXiv 2411.02124) with no tensor library, on a
//! row-major `N x F` slice:
//!
//! | rule | SAE | keeps |
//! |---|---|---|
//! | [`row_topk`] | TopK | each row's `k` largest scores |
//! | [`global_topk`] | Mutual Choice / BatchTopK | the `budget` largest scores anywhere |
//! | [`column_topm`] | Feature Choice | each feature's `m_f` largest tokens ([`Capacities`]) |
//!
//! Every rule returns the same [`Selection`] (CSR by token), breaks ties the same way (larger
//! score first, then lower index: column for rows, row for columns, row-major for global) and
//! gives identical results for any number of threads. NaN scores are errors, never selected.
//! [`ThresholdEstimator`] and [`apply_thresholds`] serve batch-free inference. The
//! [`sharded`] module runs the same rules on a batch whose rows are split over several peers.
//!
//! ```
//! use sae_alloc::{global_topk, row_topk, ScoreMatrix};
//!
//! let scores = [0.9, 0.1, 0.5,
//!               0.2, 0.8, 0.7];
//! let matrix = ScoreMatrix::new(&scores, 2, 3)?;
//! let topk = row_topk(&matrix, 1)?;
//! assert_eq!(topk.features(), &[0, 1]);
//! let mutual = global_topk(&matrix, 2)?; // 0.9 and 0.8
//! assert_eq!(mutual.l0_per_token(), vec![1, 1]);
//! # Ok::<(), sae_alloc::AllocError>(())
//! ```
#![deny(missing_docs)]

mod capacity;
mod column;
mod error;
mod global;
pub mod key;
mod matrix;
mod row;
mod selection;
pub mod sharded;
mod threshold;

pub use capacity::{Capacities, usage_order, zipf_weights};
pub use column::{column_topm, column_topm_transposed};
pub use error::AllocError;
pub use global::global_topk;
pub use matrix::ScoreMatrix;
pub use row::row_topk;
pub use selection::Selection;
pub use threshold::{ThresholdEstimator, Thresholds, apply_thresholds};
