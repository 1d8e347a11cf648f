//! One full training step (forward, losses, backward, Adam, decoder constraint) against the
//! plain N x d x F GEMM measured in the same run, and selection against burn's `topk`.
//!
//! Backend from `SAE_BENCH_BACKEND` (`flex`, the default, `ndarray`, `wgpu`, `cuda` with the
//! `cuda` feature). Shape from `SAE_BENCH_N`, `SAE_BENCH_D`, `SAE_BENCH_F`, `SAE_BENCH_K`
//! (default 4096, 384, 16384, 32).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use criterion::{Criterion, black_box};
use sae_benches::{backend_from_env, backend_name, env_or, median, on_backend, uniform_values};
use sae_model::sae_alloc::{ScoreMatrix, row_topk};
use sae_model::{
    AuxLoss, FeatureChoice, FeatureStats, MutualChoice, Sae, SaeConfig, Sparsifier, StatsConfig,
    StepPath, TopK, TrainConfig, TrainStep, select_on_backend,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

static TIMES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Benchmarks `f` as `group/id`, keeping each sample's time per iteration under `id`.
fn timed(c: &mut Criterion, group: &str, id: &str, mut f: impl FnMut()) {
    let mut g = c.benchmark_group(group);
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            let elapsed = start.elapsed();
            TIMES
                .lock()
                .unwrap()
                .entry(id.to_owned())
                .or_default()
                .push(elapsed.as_secs_f64() / iters as f64);
            elapsed
        })
    });
    g.finish();
}

fn main() {
    let shape = Shape {
        n: env_or("SAE_BENCH_N", 4096),
        d: env_or("SAE_BENCH_D", 384),
        f: env_or("SAE_BENCH_F", 16384),
        k: env_or("SAE_BENCH_K", 32),
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let kind = backend_from_env();
    on_backend!(kind, Inner => bench_on::<Inner>(&mut c, shape));
    c.final_summary();
    print_summary(shape, backend_name(kind));
}

/// The bench shape: tokens, model width, features, features per token.
#[derive(Debug, Clone, Copy)]
struct Shape {
    n: usize,
    d: usize,
    f: usize,
    k: usize,
}

/// The encoder GEMM, every step variant, and selection against burn's `topk`, on `Inner`.
fn bench_on<Inner: Backend>(c: &mut Criterion, Shape { n, d, f, k }: Shape) {
    let device = Default::default();
    let x_host = uniform_values(n * d, 1);
    let x = Tensor::<Inner, 2>::from_data(TensorData::new(x_host.clone(), [n, d]), &device);
    let w =
        Tensor::<Inner, 2>::from_data(TensorData::new(uniform_values(f * d, 2), [f, d]), &device);

    timed(c, "train_step", "gemm_encoder", || {
        let y = x.clone().matmul(w.clone().transpose());
        Inner::sync(&device).unwrap();
        black_box(y);
    });

    let sae = Sae::<Inner>::init(
        &SaeConfig {
            d_model: d,
            features: f,
            seed: 0,
        },
        None,
        &device,
    )
    .unwrap();
    for (id, sparsifier, path) in step_variants(k) {
        let config = TrainConfig {
            path,
            aux: AuxLoss::AuxK,
            ..TrainConfig::default()
        };
        let mut step =
            TrainStep::<Autodiff<Inner>>::new(&sae, sparsifier, config, &device).unwrap();
        let xb = Tensor::<Autodiff<Inner>, 2>::from_data(
            TensorData::new(x_host.clone(), [n, d]),
            &device,
        );
        timed(c, "train_step", id, || {
            let out = step.train_step(xb.clone()).unwrap();
            black_box(out.loss);
        });
    }

    // Our row top-k against burn's on the same affinities. On the CPU backends ours is
    // sae-alloc on the host values (the copy to the host is not timed; the step makes it once
    // either way); on cubecl backends it is the step's own `select_on_backend`, the sae-kernels
    // kernel on the device buffer with the selection read back.
    let scores = sae.affinities(x);
    if StepPath::Auto.resolve::<Inner>(&device) == StepPath::Fused {
        let host = scores.clone().into_data().into_vec::<f32>().unwrap();
        timed(c, "select_k", SELECT_OURS, || {
            let m = ScoreMatrix::new(&host, n, f).unwrap();
            black_box(row_topk(&m, k).unwrap());
        });
    } else {
        let stats = FeatureStats::new(f, StatsConfig::default());
        timed(c, "select_k", SELECT_OURS, || {
            black_box(select_on_backend(scores.clone(), &TopK { k }, &stats).unwrap());
        });
    }
    timed(c, "select_k", "burn_topk_with_indices", || {
        let (v, i) = scores.clone().topk_with_indices(k, 1);
        Inner::sync(&device).unwrap();
        black_box((v, i));
    });
}

/// The id of our selection in the `select_k` group.
const SELECT_OURS: &str = "select_row_topk";

/// The step variants: the three sparsifiers on the backend's training path, then TopK on the
/// gather path and on the dense oracle.
fn step_variants(k: usize) -> Vec<(&'static str, Box<dyn Sparsifier>, StepPath)> {
    vec![
        ("step_topk", Box::new(TopK { k }), StepPath::Auto),
        (
            "step_mutual_choice",
            Box::new(MutualChoice { k }),
            StepPath::Auto,
        ),
        (
            "step_feature_choice",
            Box::new(FeatureChoice::uniform(k)),
            StepPath::Auto,
        ),
        ("step_topk_gather", Box::new(TopK { k }), StepPath::Sparse),
        ("step_topk_dense", Box::new(TopK { k }), StepPath::Dense),
    ]
}

fn print_summary(Shape { n, d, f, k }: Shape, backend: &str) {
    let times = TIMES.lock().unwrap();
    let med = |id: &str| median(&times[id]);
    let gemm = med("gemm_encoder");
    println!("\nshape N={n} d={d} F={f} k={k}, backend {backend}");
    println!("{:<26} {:>10} {:>8}", "bench", "median s", "ratio");
    println!("{:<26} {:>10.4} {:>8}", "gemm_encoder", gemm, "1.00");
    for (id, _, _) in step_variants(k) {
        println!("{:<26} {:>10.4} {:>8.2}", id, med(id), med(id) / gemm);
    }
    let ours = med(SELECT_OURS);
    let burn = med("burn_topk_with_indices");
    println!("{:<26} {:>10.4}", SELECT_OURS, ours);
    println!(
        "{:<26} {:>10.4} {:>8.2} (burn / ours)",
        "burn_topk_with_indices",
        burn,
        burn / ours
    );
}
