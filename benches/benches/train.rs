//! End-to-end training throughput: `sae_train::train` over f16 safetensors shards (reading,
//! shuffling, normalising, the step, metrics), against the encoder GEMM floor measured in the
//! same run on the same backend (`SAE_BENCH_BACKEND`: `flex`, the default, `ndarray`, `wgpu`,
//! `cuda` with the `cuda` feature).
//!
//! Each iteration trains `SAE_BENCH_STEPS` steps (default 6) and counts only the training loop
//! (`TrainSummary::seconds`); the GEMM baseline runs the same number of `[N, d] x [d, F]`
//! products, by the encoder GEMM the step itself runs (on the CPU backends the host path's), so the ratio of the two is the step-time / GEMM-time ratio. Shape from
//! `SAE_BENCH_N`, `SAE_BENCH_D`, `SAE_BENCH_F`, `SAE_BENCH_K` (default 4096, 384, 16384, 32).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use criterion::{Criterion, Throughput, black_box};
use sae_benches::{
    BackendKind, StepEncoderGemm, backend_from_env, backend_name, env_or, median, on_backend,
    uniform_values,
};
use sae_data::{Dtype, TensorRef, write_safetensors};
use sae_model::StepPath;
use sae_train::{RunConfig, TrainOptions, train};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rows per shard file.
const SHARD_ROWS: usize = 16_384;

fn write_shards(dir: &Path, d: usize, rows: usize) {
    for (i, start) in (0..rows).step_by(SHARD_ROWS).enumerate() {
        let n = SHARD_ROWS.min(rows - start);
        let data = uniform_values(n * d, 100 + i as u64);
        let tensor = TensorRef::matrix(sae_data::DEFAULT_TENSOR, d, &data);
        write_safetensors(
            dir.join(format!("shard-{i:03}.safetensors")),
            &[tensor],
            Dtype::F16,
        )
        .expect("bench shards are writable");
    }
}

fn run_config(
    data: &Path,
    out: &Path,
    (n, f, k, steps): (usize, usize, usize, usize),
    backend: BackendKind,
) -> RunConfig {
    let tokens = (n * steps) as u64;
    let sets = [
        format!("backend=\"{}\"", backend_name(backend)),
        "data.source=\"files\"".to_string(),
        format!("data.path=\"{}\"", data.display()),
        "data.sample_rows=4096".into(),
        format!("out_dir=\"{}\"", out.display()),
        format!("model.d_sae={f}"),
        "sparsifier.name=\"topk\"".into(),
        format!("sparsifier.k={k}"),
        format!("train.batch_size={n}"),
        format!("train.total_tokens={tokens}"),
        "train.eval_every_tokens=0".into(),
        "train.checkpoint_every_tokens=0".into(),
        format!("train.eval_tokens={n}"),
        "schedule.warmup_tokens=0".into(),
    ];
    RunConfig::load(None, &sets).expect("bench configuration is valid")
}

fn main() {
    let (n, d, f, k) = (
        env_or("SAE_BENCH_N", 4096),
        env_or("SAE_BENCH_D", 384),
        env_or("SAE_BENCH_F", 16384),
        env_or("SAE_BENCH_K", 32),
    );
    let steps = env_or("SAE_BENCH_STEPS", 6);
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data directory");
    // Enough rows that the held-out split and the shuffle window leave every batch full.
    write_shards(&data, d, 4 * n * steps.max(4));
    let kind = backend_from_env();
    let config = run_config(&data, &dir.path().join("run"), (n, f, k, steps), kind);

    let gemm_times = Mutex::new(Vec::new());
    let train_times = Mutex::new(Vec::new());
    let mut group = c.benchmark_group("train_e2e");
    group.throughput(Throughput::Elements((n * steps) as u64));
    on_backend!(kind, Inner => group.bench_function("gemm_encoder", |b| {
        let device = Default::default();
        let x = Tensor::<Inner, 2>::from_data(
            TensorData::new(uniform_values(n * d, 1), [n, d]),
            &device,
        );
        let w = Tensor::<Inner, 2>::from_data(
            TensorData::new(uniform_values(f * d, 2), [f, d]),
            &device,
        );
        // The GEMM the step runs: on the CPU backends the host path's own, else burn's.
        let x_host = uniform_values(n * d, 1);
        let mut host = (StepPath::Auto.resolve::<Inner>(&device) == StepPath::Fused)
            .then(|| StepEncoderGemm::new(f, d, 2));
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters * steps as u64 {
                if let Some(host) = host.as_mut() {
                    black_box(host.run(&x_host, n));
                    continue;
                }
                let y = x.clone().matmul(w.clone().transpose());
                Inner::sync(&device).expect("the backend syncs");
                black_box(y);
            }
            let elapsed = start.elapsed();
            gemm_times
                .lock()
                .unwrap()
                .push(elapsed.as_secs_f64() / iters as f64);
            elapsed
        })
    }));
    group.bench_function(format!("train_topk_{}", backend_name(kind)), |b| {
        b.iter_custom(|iters| {
            let mut total = 0.0;
            for _ in 0..iters {
                // Each run starts afresh in the same directory.
                let options = TrainOptions {
                    overwrite: true,
                    ..TrainOptions::default()
                };
                let summary = train(config.clone(), &options).expect("bench run trains");
                assert_eq!(summary.tokens, (n * steps) as u64, "every step ran");
                total += summary.seconds;
            }
            train_times.lock().unwrap().push(total / iters as f64);
            Duration::from_secs_f64(total)
        })
    });
    group.finish();
    c.final_summary();

    let gemm = median(&gemm_times.lock().unwrap()) / steps as f64;
    let step = median(&train_times.lock().unwrap()) / steps as f64;
    println!(
        "\nshape N={n} d={d} F={f} k={k}, {steps} steps per run, backend {}, f16 shards",
        backend_name(kind)
    );
    println!("encoder GEMM        {gemm:>8.4} s");
    println!(
        "training step       {step:>8.4} s   {:>8.0} tokens/s",
        n as f64 / step
    );
    println!("step / GEMM         {:>8.2}", step / gemm);
}
