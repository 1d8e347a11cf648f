//! Selection kernels per rule and shape, against a plain copy kernel of the same bytes on the
//! same runtime (the bandwidth floor of one pass over the score matrix).
//!
//! Shapes: `SAE_BENCH_SHAPES=full` runs the paper-scale N=4096 / N=16384 x F=16384, k=32;
//! the default is a small set that finishes on a CPU-emulated device (Mesa lavapipe).
//! Runtimes: every one compiled in and present, or only the one `SAE_BENCH_BACKEND` names
//! (`wgpu`, `cuda`; the CPU backends it may name for the workspace benches select all).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sae_alloc::{Capacities, Thresholds, usage_order};
use sae_kernels::{
    ColumnKernel, DeviceScores, RowKernel, apply_thresholds, column_topm, column_topm_with,
    global_topk, global_topk_with, grid, row_topk, row_topk_with, upload_scores,
};

/// Copies `input` to `output`: one read and one write of every score.
#[cube(launch)]
fn copy(input: &Array<f32>, output: &mut Array<f32>, len: u32) {
    let i = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize * 256 + UNIT_POS as usize;
    if i < len as usize {
        output[i] = input[i];
    }
}

fn shapes() -> Vec<(usize, usize, usize)> {
    if std::env::var("SAE_BENCH_SHAPES").as_deref() == Ok("full") {
        vec![(4096, 16384, 32), (16384, 16384, 32)]
    } else {
        vec![(256, 4096, 32), (2048, 4096, 32)]
    }
}

fn sync<R: Runtime>(client: &ComputeClient<R>) {
    cubecl::future::block_on(client.sync()).expect("device sync");
}

#[allow(unsafe_code)]
fn bench_runtime<R: Runtime>(c: &mut Criterion, client: &ComputeClient<R>, name: &str) {
    let mut group = c.benchmark_group(format!("select/{name}"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for (rows, cols, k) in shapes() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let handle = upload_scores(client, &data);
        let scores = DeviceScores::new(client, &handle, rows, cols).expect("scores");
        let shape = format!("{rows}x{cols}_k{k}");
        group.throughput(Throughput::Elements((rows * cols) as u64));

        let out = client.empty(rows * cols * 4);
        group.bench_function(BenchmarkId::new("copy_baseline", &shape), |b| {
            b.iter(|| {
                // SAFETY: both buffers hold rows * cols f32.
                unsafe {
                    copy::launch::<R>(
                        client,
                        grid((rows * cols).div_ceil(256)),
                        CubeDim::new_1d(256),
                        ArrayArg::from_raw_parts(handle.clone(), rows * cols),
                        ArrayArg::from_raw_parts(out.clone(), rows * cols),
                        (rows * cols) as u32,
                    );
                }
                sync(client);
            })
        });
        group.bench_function(BenchmarkId::new("row_topk", &shape), |b| {
            b.iter(|| {
                black_box(row_topk(&scores, k).expect("row_topk"));
                sync(client);
            })
        });
        // The prefix sums by plane operations and in shared memory, whichever the runtime
        // reports (lavapipe runs plane operations without reporting them).
        for (name, planes) in [
            ("row_topk_plane_scan", true),
            ("row_topk_shared_scan", false),
        ] {
            let scores = scores.with_plane_ops(planes);
            group.bench_function(BenchmarkId::new(name, &shape), |b| {
                b.iter(|| {
                    black_box(row_topk(&scores, k).expect("row_topk"));
                    sync(client);
                })
            });
        }
        // The streaming kernels the resident one replaces where a row fits.
        group.bench_function(BenchmarkId::new("row_topk_streaming", &shape), |b| {
            b.iter(|| {
                let s = row_topk_with(&scores, k, RowKernel::Streaming).expect("row_topk");
                black_box(s);
                sync(client);
            })
        });
        group.bench_function(BenchmarkId::new("global_topk", &shape), |b| {
            b.iter(|| {
                black_box(global_topk(&scores, rows * k).expect("global_topk"));
                sync(client);
            })
        });
        // With a candidate cut that passes four times the budget (the (1 - 4k/F) quantile of
        // U(-1, 1)), as the training step's cut from the previous batch's threshold does.
        let cut = 1.0 - 8.0 * k as f32 / cols as f32;
        group.bench_function(BenchmarkId::new("global_topk_cut", &shape), |b| {
            b.iter(|| {
                let s = global_topk_with(&scores, rows * k, Some(cut)).expect("global_topk");
                black_box(s);
                sync(client);
            })
        });
        let order = usage_order(&vec![0.0; cols]);
        let zipf = Capacities::zipf(rows * k, rows as u32, 1.0, &order).expect("zipf");
        group.bench_function(BenchmarkId::new("column_topm_zipf", &shape), |b| {
            b.iter(|| {
                black_box(column_topm(&scores, &zipf).expect("column_topm"));
                sync(client);
            })
        });
        // The streaming kernel the strip-resident one replaces where a column fits.
        group.bench_function(
            BenchmarkId::new("column_topm_zipf_streaming", &shape),
            |b| {
                b.iter(|| {
                    let s = column_topm_with(&scores, &zipf, ColumnKernel::Streaming);
                    black_box(s.expect("column_topm"));
                    sync(client);
                })
            },
        );
        // About k per row survive a threshold at the (1 - k/F) quantile of U(-1, 1).
        let t = Thresholds::Global(1.0 - 2.0 * k as f32 / cols as f32);
        group.bench_function(BenchmarkId::new("thresholds", &shape), |b| {
            b.iter(|| {
                black_box(apply_thresholds(&scores, &t).expect("thresholds"));
                sync(client);
            })
        });
    }
    group.finish();
}

/// Whether to bench runtime `name`: `SAE_BENCH_BACKEND` (as in the workspace benches) picks
/// `wgpu` or `cuda`; unset or naming a CPU backend, every runtime compiled in and present runs.
fn wanted(name: &str) -> bool {
    match std::env::var("SAE_BENCH_BACKEND").as_deref() {
        Ok(runtime @ ("wgpu" | "cuda")) => runtime == name,
        _ => true,
    }
}

fn benches(c: &mut Criterion) {
    if wanted("wgpu") {
        let wgpu = std::panic::catch_unwind(|| WgpuRuntime::client(&WgpuDevice::default()));
        match wgpu {
            Ok(client) => bench_runtime(c, &client, "wgpu"),
            Err(_) => eprintln!("skipped: no wgpu adapter"),
        }
    }
    #[cfg(feature = "cuda")]
    if wanted("cuda") {
        use cubecl::cuda::{CudaDevice, CudaRuntime};
        match std::panic::catch_unwind(|| CudaRuntime::client(&CudaDevice::default())) {
            Ok(client) => bench_runtime(c, &client, "cuda"),
            Err(_) => eprintln!("skipped: no CUDA device"),
        }
    }
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
