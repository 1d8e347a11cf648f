//! The integration tests of `sae-kernels`, in one test binary: every kernel against its
//! `sae-alloc` twin, on every runtime compiled in (wgpu; CUDA with the `cuda` feature).
//!
//! A runtime without a device is skipped with a notice, unless `SAE_REQUIRE_WGPU=1` /
//! `SAE_REQUIRE_CUDA=1` asks for it.

#[macro_use]
mod common;

mod column_topm;
mod errors;
mod global_topk;
mod key;
mod row_topk;
mod thresholds;
