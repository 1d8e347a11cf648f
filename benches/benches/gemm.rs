//! The encoder GEMM `[N, d] x [d, F]` by each CPU candidate, in one run: the training step's
//! own (`sae_model::fused::HostEncoder`, the `gemm` crate), `gemm` with other settings,
//! `matrixmultiply`, burn's Flex `matmul`, and OpenBLAS with the `openblas` feature (links the
//! system library: `apt-get install libopenblas-dev`).
//!
//! Shapes: the step bench's (4096 x 384 x 16384) and the paper's GPT-2 shape (4096 x 768 x
//! 24576); `SAE_BENCH_N`, `SAE_BENCH_D`, `SAE_BENCH_F` replace the first.
#![allow(unsafe_code)]

use std::time::Duration;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, black_box};
use sae_benches::{StepEncoderGemm, env_or, uniform_values};
use sae_model::fused::gemm_abt;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "openblas")]
#[link(name = "openblas")]
unsafe extern "C" {}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let step_shape = (
        env_or("SAE_BENCH_N", 4096),
        env_or("SAE_BENCH_D", 384),
        env_or("SAE_BENCH_F", 16384),
    );
    for (n, d, f) in [step_shape, (4096, 768, 24576)] {
        bench_shape(&mut c, n, d, f);
    }
    c.final_summary();
}

fn bench_shape(c: &mut Criterion, n: usize, d: usize, f: usize) {
    let x = uniform_values(n * d, 1);
    let w = uniform_values(f * d, 2);
    let mut group = c.benchmark_group(format!("encoder_gemm_{n}x{d}x{f}"));
    group.throughput(Throughput::Elements((2 * n * d * f) as u64));
    let id = |name: &str| BenchmarkId::from_parameter(name);

    let mut encoder = StepEncoderGemm::new(f, d, 2);
    group.bench_function(id("step_encoder_baseline"), |b| {
        b.iter(|| black_box(encoder.run(&x, n).len()))
    });

    let mut out = vec![0.0f32; n * f];
    for (name, parallelism) in [
        ("crate_gemm_all_threads", gemm::Parallelism::Rayon(0)),
        ("crate_gemm_one_thread", gemm::Parallelism::None),
    ] {
        group.bench_function(id(name), |b| {
            b.iter(|| gemm_abt(&mut out, &x, &w, n, f, d, parallelism))
        });
    }
    group.bench_function(id("matrixmultiply"), |b| {
        // SAFETY: `out` is [n, f], `x` [n, d] and `w` [f, d], all row-major; in
        // matrixmultiply's (rows, cols) stride convention the strides address exactly those
        // elements.
        b.iter(|| unsafe {
            matrixmultiply::sgemm(
                n,
                d,
                f,
                1.0,
                x.as_ptr(),
                d as isize,
                1,
                w.as_ptr(),
                1,
                d as isize,
                0.0,
                out.as_mut_ptr(),
                f as isize,
                1,
            )
        })
    });
    #[cfg(feature = "openblas")]
    group.bench_function(id("openblas"), |b| {
        use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE, cblas_sgemm};
        let dims = |v: usize| i32::try_from(v).expect("dimension fits in i32");
        // SAFETY: row-major x [n, d] times w^T ([f, d] transposed), into out [n, f].
        b.iter(|| unsafe {
            cblas_sgemm(
                CBLAS_LAYOUT::CblasRowMajor,
                CBLAS_TRANSPOSE::CblasNoTrans,
                CBLAS_TRANSPOSE::CblasTrans,
                dims(n),
                dims(f),
                dims(d),
                1.0,
                x.as_ptr(),
                dims(d),
                w.as_ptr(),
                dims(d),
                0.0,
                out.as_mut_ptr(),
                dims(f),
            )
        })
    });
    let device = Default::default();
    let xt = Tensor::<Flex, 2>::from_data(TensorData::new(x.clone(), [n, d]), &device);
    let wt = Tensor::<Flex, 2>::from_data(TensorData::new(w.clone(), [f, d]), &device);
    group.bench_function(id("burn_flex_matmul"), |b| {
        b.iter(|| black_box(xt.clone().matmul(wt.clone().transpose())))
    });
    group.finish();
}
