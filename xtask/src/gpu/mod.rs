//! `cargo xtask gpu-bundle` and `xtask gpu-run`: the CUDA tests and benches, for a machine
//! with an NVIDIA GPU but no Rust toolchain.
//!
//! `gpu-bundle` runs here. It builds the integration tests of `sae-kernels` and `sae-model` and
//! the `kernels` and `step` benches with every CUDA feature, then strips and xz-compresses them
//! into `gpu-bundle/` with a manifest and a copy of this program. The binaries link no CUDA
//! library: cudarc loads the driver and NVRTC when they start.
//!
//! `gpu-run` runs on the GPU machine (`gpu-bundle/xtask gpu-run --out DIR`). It unpacks the
//! binaries and runs the CUDA cases of every test binary with `SAE_REQUIRE_CUDA=1`, so a
//! missing GPU fails instead of skipping. Then it runs the benches (kernels at the paper-scale
//! shapes, the training step on burn's CUDA backend) and writes `DIR/gpu-report.md`:
//! - every kernel's bytes/s, against the device's nominal memory bandwidth and against a copy
//!   of the same bytes;
//! - every rule against burn's own top-k on the same input;
//! - the step time against the encoder GEMM;
//! - with Nsight Compute, every kernel of the kernels bench and of one training step.
//!
//! By job: [`bundle`] (building, packing and unpacking the bundle, its manifest), [`device`]
//! (the GPU and the CUDA toolkit of the machine), [`run`] (the tests and benches on the
//! device within the time budget), [`ncu`] (the kernels under Nsight Compute) and [`report`]
//! (`gpu-report.md`).

mod bundle;
mod device;
mod ncu;
mod report;
mod run;

pub use bundle::{BundleOptions, bundle};
pub use run::{RunOptions, run};
