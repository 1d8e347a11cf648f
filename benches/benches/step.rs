//! One full training step (forward, losses, backward, Adam, decoder constraint) against the
//! plain N x d x F GEMM measured in the same run, on the default CPU backend (Flex).
//!
//! Shape from the environment: `SAE_BENCH_N`, `SAE_BENCH_D`, `SAE_BENCH_F`, `SAE_BENCH_K`
//! (default 4096, 384, 16384, 32).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use criterion::{Criterion, black_box};
use sae_benches::{env_or, median, uniform_values};
use sae_model::sae_alloc::{ScoreMatrix, row_topk};
use sae_model::{
    AuxLoss, FeatureChoice, MutualChoice, Sae, SaeConfig, Sparsifier, StepPath, TopK, TrainConfig,
    TrainStep,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Inner = Flex;
type B = Autodiff<Flex>;

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
    let (n, d, f, k) = (
        env_or("SAE_BENCH_N", 4096),
        env_or("SAE_BENCH_D", 384),
        env_or("SAE_BENCH_F", 16384),
        env_or("SAE_BENCH_K", 32),
    );
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let device = Default::default();
    let x_host = uniform_values(n * d, 1);
    let x = Tensor::<Inner, 2>::from_data(TensorData::new(x_host.clone(), [n, d]), &device);
    let w =
        Tensor::<Inner, 2>::from_data(TensorData::new(uniform_values(f * d, 2), [f, d]), &device);

    timed(&mut c, "train_step", "gemm_encoder", || {
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
    let rules: Vec<(&str, Box<dyn Sparsifier>, StepPath)> = vec![
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
    ];
    for (id, sparsifier, path) in rules {
        let config = TrainConfig {
            path,
            aux: AuxLoss::AuxK,
            ..TrainConfig::default()
        };
        let mut step = TrainStep::<B>::new(&sae, sparsifier, config, &device).unwrap();
        let xb = Tensor::<B, 2>::from_data(TensorData::new(x_host.clone(), [n, d]), &device);
        timed(&mut c, "train_step", id, || {
            let out = step.train_step(xb.clone()).unwrap();
            black_box(out.loss);
        });
    }

    let scores = sae.affinities(x.clone());
    let host = scores.clone().into_data().into_vec::<f32>().unwrap();
    timed(&mut c, "select_k", "sae_alloc_row_topk", || {
        let m = ScoreMatrix::new(&host, n, f).unwrap();
        black_box(row_topk(&m, k).unwrap());
    });
    timed(&mut c, "select_k", "burn_topk_with_indices", || {
        let (v, i) = scores.clone().topk_with_indices(k, 1);
        Inner::sync(&device).unwrap();
        black_box((v, i));
    });

    c.final_summary();
    let times = TIMES.lock().unwrap();
    let med = |id: &str| median(&times[id]);
    let gemm = med("gemm_encoder");
    println!("\nshape N={n} d={d} F={f} k={k}, backend Flex");
    println!("{:<26} {:>10} {:>8}", "bench", "median s", "ratio");
    println!("{:<26} {:>10.4} {:>8}", "gemm_encoder", gemm, "1.00");
    for id in [
        "step_topk",
        "step_mutual_choice",
        "step_feature_choice",
        "step_topk_gather",
        "step_topk_dense",
    ] {
        println!("{:<26} {:>10.4} {:>8.2}", id, med(id), med(id) / gemm);
    }
    let ours = med("sae_alloc_row_topk");
    let burn = med("burn_topk_with_indices");
    println!("{:<26} {:>10.4}", "sae_alloc_row_topk", ours);
    println!(
        "{:<26} {:>10.4} {:>8.2} (burn / ours)",
        "burn_topk_with_indices",
        burn,
        burn / ours
    );
}
