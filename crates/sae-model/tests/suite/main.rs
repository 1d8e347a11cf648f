//! The integration tests of `sae-model`, in one test binary: burn's backends are
//! monomorphised and linked once for all of them, not once per file.
//!
//! Tests on wgpu skip without an adapter unless `SAE_REQUIRE_WGPU=1`; tests on CUDA (with the
//! `cuda` feature) skip without a GPU unless `SAE_REQUIRE_CUDA=1`.

mod common;

mod device;
mod device_step;
mod gradients;
mod losses;
mod registry;
mod sharded;
mod sparsifiers;
mod stats;
mod step;
