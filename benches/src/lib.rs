//! Shared inputs of the workspace benchmarks (`cargo bench -p sae-benches`).
#![deny(missing_docs)]

pub use sae_train::BackendKind;

/// The backend named by `SAE_BENCH_BACKEND` (`flex`, the default, `ndarray`, `wgpu`, `cuda`).
///
/// # Panics
///
/// On any other name, naming the variable.
pub fn backend_from_env() -> BackendKind {
    match std::env::var("SAE_BENCH_BACKEND").as_deref() {
        Err(_) | Ok("flex") => BackendKind::Flex,
        Ok("ndarray") => BackendKind::Ndarray,
        Ok("wgpu") => BackendKind::Wgpu,
        Ok("cuda") => BackendKind::Cuda,
        Ok(other) => panic!("SAE_BENCH_BACKEND={other:?}: expected flex, ndarray, wgpu or cuda"),
    }
}

/// Runs `$body` with `$B` bound to the (non-autodiff) burn backend `$kind` names.
/// `cuda` needs this crate's `cuda` feature.
#[macro_export]
macro_rules! on_backend {
    ($kind:expr, $B:ident => $body:expr) => {{
        match $kind {
            $crate::BackendKind::Flex => {
                type $B = burn::backend::Flex;
                $body
            }
            $crate::BackendKind::Ndarray => {
                type $B = burn::backend::NdArray;
                $body
            }
            $crate::BackendKind::Wgpu => {
                type $B = burn::backend::Wgpu;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::BackendKind::Cuda => {
                type $B = burn::backend::Cuda;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::BackendKind::Cuda => {
                panic!("SAE_BENCH_BACKEND=cuda needs `--features sae-benches/cuda`")
            }
        }
    }};
}

/// The lower-case name of a backend, as `SAE_BENCH_BACKEND` and run configs spell it.
pub fn backend_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Flex => "flex",
        BackendKind::Ndarray => "ndarray",
        BackendKind::Wgpu => "wgpu",
        BackendKind::Cuda => "cuda",
    }
}

/// Deterministic pseudo-random values in `[-1, 1)` (SplitMix64), cheap to generate at bench sizes.
pub fn uniform_values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A `usize` from the environment variable `name`, or `default` when unset or unparsable.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `values` (the upper one for an even count); `NaN` when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The training step's own CPU encoder GEMM (`sae_model::fused::HostEncoder`) on fixed
/// operands: `[N, d] x [d, F]` with zero biases, the baseline of the step, train and gemm
/// benches on the CPU backends.
#[derive(Debug)]
pub struct StepEncoderGemm {
    w: Vec<f32>,
    zeros_f: Vec<f32>,
    zeros_d: Vec<f32>,
    encoder: sae_model::fused::HostEncoder,
}

impl StepEncoderGemm {
    /// An `[F, d]` encoder of [`uniform_values`] from `seed`.
    pub fn new(f: usize, d: usize, seed: u64) -> Self {
        Self {
            w: uniform_values(f * d, seed),
            zeros_f: vec![0.0; f],
            zeros_d: vec![0.0; d],
            encoder: sae_model::fused::HostEncoder::default(),
        }
    }

    /// The affinities of the `n` rows of `x` (`[n, d]`), in the encoder's reused buffer.
    pub fn run(&mut self, x: &[f32], n: usize) -> &[f32] {
        self.run_in(sae_model::fused::AffinityLayout::TokenMajor, x, n)
    }

    /// [`run`](Self::run) with the affinities in `layout` (feature-major: the GEMM the step
    /// runs for Feature Choice).
    pub fn run_in(
        &mut self,
        layout: sae_model::fused::AffinityLayout,
        x: &[f32],
        n: usize,
    ) -> &[f32] {
        let params = sae_model::fused::HostParams {
            w_enc: &self.w,
            b_enc: &self.zeros_f,
            w_dec: &self.w,
            b_dec: &self.zeros_d,
        };
        self.encoder.affinities_in(layout, &params, x, n)
    }
}
