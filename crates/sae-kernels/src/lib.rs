//! cubecl kernels for the allocation rules of sparse autoencoders, bit-exact with
//! [`sae_alloc`].
//!
//! Every rule of `sae-alloc` runs here on a score matrix that is already on the device (a
//! cubecl `Handle` of row-major f32, e.g. the buffer of a burn `CubeTensor`), on any cubecl
//! [`Runtime`](cubecl::Runtime), and leaves a [`DeviceSelection`] on the device: CSR offsets,
//! feature ids ascending within a row, the selected scores, and per-feature counts. The score
//! matrix never travels to the host; [`DeviceSelection::to_selection`] reads back only the
//! O(nnz) outputs as a [`sae_alloc::Selection`].
//!
//! | function | SAE | keeps | `sae-alloc` twin |
//! |---|---|---|---|
//! | [`row_topk`] | TopK | each row's `k` largest scores | [`sae_alloc::row_topk`] |
//! | [`global_topk`] | Mutual Choice / BatchTopK | the `budget` largest anywhere | [`sae_alloc::global_topk`] |
//! | [`column_topm`] | Feature Choice | each feature's `m_f` largest tokens | [`sae_alloc::column_topm`] |
//! | [`apply_thresholds`] | inference | scores above their threshold | [`sae_alloc::apply_thresholds`] |
//!
//! Ties follow `sae-alloc`: larger score first, then lower index (column in a row, row in a
//! column, row-major index globally), `-0.0 == +0.0`. NaN scores are flagged on the device
//! and reported as [`sae_alloc::AllocError::NanScore`] when the selection is read or checked.
//!
//! ```no_run
//! use cubecl::Runtime;
//! use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
//! use sae_kernels::{DeviceScores, row_topk, upload_scores};
//!
//! let client = WgpuRuntime::client(&WgpuDevice::default());
//! let handle = upload_scores(&client, &[0.9, 0.1, 0.5, 0.2, 0.8, 0.7]);
//! let scores = DeviceScores::new(&client, &handle, 2, 3)?;
//! let selection = row_topk(&scores, 1)?.to_selection()?;
//! assert_eq!(selection.features(), &[0, 1]);
//! # Ok::<(), sae_kernels::KernelError>(())
//! ```
#![deny(missing_docs)]

mod column;
mod column_resident;
mod compact;
mod error;
mod global;
pub mod key;
mod launch;
mod output;
mod row;
mod row_resident;
mod select;
pub mod step;
mod threshold;

pub use column::{ColumnKernel, column_topm, column_topm_on_device, column_topm_with};
pub use error::KernelError;
pub use global::{global_topk, global_topk_with};
pub use launch::grid;
pub use output::{DeviceScores, DeviceSelection, upload_scores};
pub use row::{RowKernel, row_topk, row_topk_with};
pub use threshold::{apply_thresholds, apply_thresholds_on_device};
