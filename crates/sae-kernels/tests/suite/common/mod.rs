//! Shared test harness: runtimes, random score matrices with ties, and exact comparison.

#![allow(dead_code)]

use cubecl::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sae_alloc::Selection;
use sae_kernels::{DeviceSelection, KernelError};

/// The wgpu client, or `None` (with a notice) when no adapter exists. With
/// `SAE_REQUIRE_WGPU=1` a missing adapter fails the test instead.
pub fn wgpu_client() -> Option<ComputeClient<cubecl::wgpu::WgpuRuntime>> {
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
    client_or_skip("wgpu", "SAE_REQUIRE_WGPU", || {
        WgpuRuntime::client(&WgpuDevice::default())
    })
}

/// The CUDA client, or `None` (with a notice) when no GPU exists. With
/// `SAE_REQUIRE_CUDA=1` a missing GPU fails the test instead.
#[cfg(feature = "cuda")]
pub fn cuda_client() -> Option<ComputeClient<cubecl::cuda::CudaRuntime>> {
    use cubecl::cuda::{CudaDevice, CudaRuntime};
    client_or_skip("cuda", "SAE_REQUIRE_CUDA", || {
        CudaRuntime::client(&CudaDevice::default())
    })
}

fn client_or_skip<C>(name: &str, require: &str, make: impl FnOnce() -> C) -> Option<C>
where
    C: Send,
{
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(make));
    std::panic::set_hook(hook);
    match made {
        Ok(client) => Some(client),
        Err(_) if std::env::var(require).as_deref() == Ok("1") => {
            panic!("no {name} device, and {require}=1 requires one")
        }
        Err(_) => {
            // Written to stderr directly: the test harness would swallow `eprintln!`.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: no {name} device available (set {require}=1 to fail instead)"
            );
            None
        }
    }
}

/// Runs `suite` on every runtime compiled in and present.
#[macro_export]
macro_rules! on_every_runtime {
    ($suite:ident) => {
        #[test]
        fn wgpu() {
            if let Some(client) = common::wgpu_client() {
                $suite(&client);
            }
        }

        #[cfg(feature = "cuda")]
        #[test]
        fn cuda() {
            if let Some(client) = common::cuda_client() {
                $suite(&client);
            }
        }
    };
}

/// A random `rows x cols` matrix. `levels > 0` draws from that many distinct values (heavy
/// ties, both signs, and both zeros); `levels == 0` draws continuous values in [-2, 2).
pub fn matrix(seed: u64, rows: usize, cols: usize, levels: u32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..rows * cols)
        .map(|_| {
            if levels == 0 {
                rng.random_range(-2.0f32..2.0)
            } else {
                let v = rng.random_range(0..levels) as f32 - (levels / 2) as f32;
                if v == 0.0 && rng.random_bool(0.5) {
                    -0.0
                } else {
                    v * 0.25
                }
            }
        })
        .collect()
}

/// Shapes that stress the kernels: single elements, sizes not multiple of the 256-unit cube,
/// rows and columns longer than a cube.
pub const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (3, 5),
    (2, 300),
    (17, 257),
    (300, 9),
    (64, 700),
    (5, 2051),
];

/// Asserts that the device selection equals the host one bit for bit, counts included.
pub fn assert_same<R: Runtime>(device: &DeviceSelection<R>, host: &Selection, what: &str) {
    let got = device
        .to_selection()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got.offsets(), host.offsets(), "{what}: offsets");
    assert_eq!(got.features(), host.features(), "{what}: features");
    let bits = |s: &[f32]| s.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(got.scores()),
        bits(host.scores()),
        "{what}: score bits"
    );
    let tokens = device.read_token_ids().unwrap();
    assert_eq!(tokens, host.token_ids(), "{what}: token ids");
    assert_eq!(
        device.counts_per_feature().unwrap(),
        host.counts_per_feature(),
        "{what}: counts per feature"
    );
}

/// The error as `sae-alloc` would report it, or a panic if it is of another kind.
pub fn alloc_error(e: KernelError) -> sae_alloc::AllocError {
    match e {
        KernelError::Alloc(e) => e,
        other => panic!("expected a rule error, got {other}"),
    }
}
