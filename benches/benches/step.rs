//! One full training step (forward, losses, backward, Adam, decoder constraint) against the
//! plain N x d x F GEMM measured in the same run, and selection against burn's `topk`.
//!
//! Backend from `SAE_BENCH_BACKEND` (`flex`, the default, `ndarray`, `wgpu`, `cuda` with the
//! `cuda` feature). Shape from `SAE_BENCH_N`, `SAE_BENCH_D`, `SAE_BENCH_F`, `SAE_BENCH_K`
//! (default 4096, 384, 16384, 32).
//!
//! After criterion's benches, `SAE_BENCH_ROUNDS` paired rounds (default 10; 0 skips them)
//! time each sparsifier's step between two runs of the GEMM and print the median, least and
//! largest ratio: the ratio measured with both under the same load.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use criterion::{Criterion, black_box};
use sae_benches::{
    StepEncoderGemm, backend_from_env, backend_name, env_or, median, on_backend, uniform_values,
};
use sae_model::fused::AffinityLayout;
use sae_model::sae_alloc::{ScoreMatrix, column_topm_transposed};
use sae_model::{
    AuxLoss, BuiltinRule, FeatureChoice, FeatureStats, MutualChoice, Sae, SaeConfig, Sparsifier,
    StatsConfig, StepPath, TopK, TrainConfig, TrainStep, select_on_backend,
};
use sae_train::peers::{Group, Peers};
use sae_train::tensor::to_device;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

static TIMES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Per step variant, its ratio to the GEMM in each paired round ([`paired_rounds`]).
static PAIRED: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

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

    // The encoder GEMM the step runs: on the CPU backends the host path's own (the `gemm`
    // crate, bias folded in, output buffer reused), beside burn's `matmul` of the same
    // operands; on the others burn's `matmul`.
    let on_host = StepPath::Auto.resolve::<Inner>(&device) == StepPath::Fused;
    let mut encoder = StepEncoderGemm::new(f, d, 2);
    let burn_matmul = || {
        let y = x.clone().matmul(w.clone().transpose());
        Inner::sync(&device).unwrap();
        black_box(y);
    };
    // The step's GEMM, kept for the paired rounds after the steps' benches.
    let mut gemm: Box<dyn FnMut() + '_> = if on_host {
        timed(c, "train_step", "gemm_encoder", || {
            black_box(encoder.run(&x_host, n));
        });
        // The same GEMM writing the affinities feature-major, as the step does for Feature
        // Choice.
        timed(c, "train_step", "gemm_encoder_feature_major", || {
            black_box(encoder.run_in(AffinityLayout::FeatureMajor, &x_host, n));
        });
        timed(c, "train_step", "burn_matmul", burn_matmul);
        Box::new(|| {
            black_box(encoder.run(&x_host, n));
        })
    } else {
        timed(c, "train_step", "gemm_encoder", burn_matmul);
        Box::new(burn_matmul)
    };

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
    let mut paired: Vec<Timed<'_>> = Vec::new();
    for (id, sparsifier, path) in step_variants(k, on_host) {
        let config = TrainConfig {
            path,
            aux: AuxLoss::AuxK,
            ..TrainConfig::default()
        };
        let mut step =
            TrainStep::<Autodiff<Inner>>::new(&sae, sparsifier, config, &device).unwrap();
        // The batch reaches the step as in training: the host batch moved into a tensor of its
        // own (one copy), which the host path takes back without another.
        let (x_host, device) = (&x_host, &device);
        let mut run = move || {
            let xb = to_device::<Autodiff<Inner>>(x_host, n, d, device);
            let out = step.train_step(xb).unwrap();
            black_box(out.loss);
        };
        timed(c, "train_step", id, &mut run);
        if path == StepPath::Auto && was_timed(id) {
            paired.push((id, Box::new(run)));
        }
    }
    if was_timed("gemm_encoder") {
        paired_rounds(env_or("SAE_BENCH_ROUNDS", 10), &mut *gemm, &mut paired);
    }
    drop(paired);
    drop(gemm);

    // The same steps over two peers of this machine (threads summing through
    // burn-collective), each on half of the batch's rows: the collective's cost per step,
    // against the one-device step measured just above. On a GPU backend each step's gradients
    // travel through the host, and the peers share the device unless CUDA has two.
    for (id, rule) in [
        ("step_topk_2_peers", SelectRule::Row),
        ("step_mutual_choice_2_peers", SelectRule::Global),
        ("step_feature_choice_2_peers", SelectRule::Column),
    ] {
        let config = TrainConfig {
            aux: AuxLoss::AuxK,
            ..TrainConfig::default()
        };
        let mut step =
            TrainStep::<Autodiff<Inner>>::new(&sae, rule.sparsifier(k), config.clone(), &device)
                .unwrap();
        let state = step.state();
        let group = Group {
            devices: 2,
            machines: None,
            timeout: Duration::from_secs(600),
        };
        let mut peers = Peers::<Autodiff<Inner>>::join(group, &device)
            .and_then(|joined| {
                joined.start(&state, || Ok(rule.sparsifier(k)), &config, &Vec::new())
            })
            .unwrap();
        timed(c, "train_step", id, || {
            black_box(peers.step(&mut step, &x_host).unwrap().loss);
        });
        drop(peers);
    }

    // Each rule of ours against burn's `topk` doing the same job on the same affinities. On
    // the CPU backends ours is sae-alloc on the host values (the copy to the host is not timed;
    // the step makes it once either way), on the layout the step holds them in: Feature
    // Choice's on the transpose (`column_topm_transposed`), which the step's GEMM writes
    // directly, the others token-major. On cubecl backends it is the step's own
    // `select_on_backend`: the sae-kernels kernel on the device buffer, with the selection read
    // back (burn's result stays on the device).
    let scores = sae.affinities(x);
    let host = on_host.then(|| scores.clone().into_data().into_vec::<f32>().unwrap());
    let by_feature = host
        .as_deref()
        .map(|h| ScoreMatrix::new(h, n, f).unwrap().transposed());
    let stats = FeatureStats::new(f, StatsConfig::default());
    for rule in SelectRule::ALL {
        let sparsifier = rule.sparsifier(k);
        let builtin = sparsifier.builtin(n, &stats).unwrap();
        timed(c, "select_k", rule.ours(), || {
            match (&host, &by_feature, &builtin) {
                (_, Some(by_feature), Some(BuiltinRule::ColumnTopM { capacities })) => {
                    let m = ScoreMatrix::new(by_feature, f, n).unwrap();
                    black_box(column_topm_transposed(&m, capacities).unwrap());
                }
                (Some(host), ..) => {
                    let m = ScoreMatrix::new(host, n, f).unwrap();
                    black_box(sparsifier.select(&m, &stats).unwrap());
                }
                (None, ..) => {
                    black_box(select_on_backend(scores.clone(), &*sparsifier, &stats).unwrap());
                }
            }
        });
        timed(c, "select_k", rule.burn(), || {
            let (v, i) = match rule {
                SelectRule::Row => burn_top(scores.clone(), k, 1, on_host),
                // burn's device top-k unrolls `k` at compile time (cubek-reduce), so for k N
                // of the flattened matrix its only route is `topk_with_indices`, a full sort
                // (on the host, for burn 0.21's cubecl backends).
                SelectRule::Global => scores
                    .clone()
                    .reshape([1, n * f])
                    .topk_with_indices(k * n, 1),
                SelectRule::Column => burn_top(scores.clone(), (k * n / f).max(1), 0, on_host),
            };
            Inner::sync(&device).unwrap();
            black_box((v, i));
        });
    }
}

/// A bench's id and one run of it.
type Timed<'a> = (&'static str, Box<dyn FnMut() + 'a>);

/// Whether criterion ran the bench `id` (a filter may leave it out).
fn was_timed(id: &str) -> bool {
    TIMES.lock().unwrap().contains_key(id)
}

/// Paired rounds: each step variant timed once per round between two runs of the GEMM, its
/// ratio taken to the mean of those two, the variants' order rotated from round to round.
/// Criterion times each bench for seconds on end, so a change of the machine's load between
/// the GEMM's bench and a step's moves their ratio; within a round the load is nearly the
/// same for both.
fn paired_rounds(rounds: usize, gemm: &mut dyn FnMut(), steps: &mut [Timed<'_>]) {
    let once = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let mut paired = PAIRED.lock().unwrap();
    for round in 0..rounds {
        let mut before = once(gemm);
        for j in 0..steps.len() {
            let (id, step) = &mut steps[(round + j) % steps.len()];
            let time = once(step);
            let after = once(gemm);
            let ratio = time / ((before + after) / 2.0);
            paired.entry((*id).to_owned()).or_default().push(ratio);
            before = after;
        }
    }
}

/// burn's top-`k` along `dim` with its indices. On cubecl backends (`on_host` false) that is
/// `argtopk`, a device reduction, and a gather of the values; `topk_with_indices` would sort
/// the whole tensor, on the host. CPU backends sort (`topk_with_indices`): Flex has no
/// `argtopk`.
fn burn_top<B: Backend>(
    scores: Tensor<B, 2>,
    k: usize,
    dim: usize,
    on_host: bool,
) -> (Tensor<B, 2>, Tensor<B, 2, burn::tensor::Int>) {
    if on_host {
        return scores.topk_with_indices(k, dim);
    }
    let indices = scores.clone().argtopk(k, dim);
    (scores.gather(dim, indices.clone()), indices)
}

/// The selection rules compared with burn's `topk`.
#[derive(Debug, Clone, Copy)]
enum SelectRule {
    /// TopK: each row's `k` largest; burn: top-k along the features ([`burn_top`]).
    Row,
    /// Mutual Choice: the `k N` largest of the matrix; burn: `topk_with_indices` of the
    /// flattened matrix.
    Global,
    /// Feature Choice, uniform: each column's `k N / F` largest; burn: top-k along the tokens
    /// ([`burn_top`]).
    Column,
}

impl SelectRule {
    const ALL: [SelectRule; 3] = [SelectRule::Row, SelectRule::Global, SelectRule::Column];

    fn sparsifier(self, k: usize) -> Box<dyn Sparsifier> {
        match self {
            SelectRule::Row => Box::new(TopK { k }),
            SelectRule::Global => Box::new(MutualChoice { k }),
            SelectRule::Column => Box::new(FeatureChoice::uniform(k)),
        }
    }

    /// Our bench id (its first word pairs it with [`SelectRule::burn`] in `xtask bench`).
    fn ours(self) -> &'static str {
        match self {
            SelectRule::Row => "row_topk",
            SelectRule::Global => "global_topk",
            SelectRule::Column => "column_topm",
        }
    }

    /// burn's bench id.
    fn burn(self) -> &'static str {
        match self {
            SelectRule::Row => "burn_topk_row",
            SelectRule::Global => "burn_topk_global",
            SelectRule::Column => "burn_topk_column",
        }
    }
}

/// The step variants: the three sparsifiers on the backend's training path, then TopK on the
/// gather path and on the dense oracle; on device backends also Mutual Choice and Feature
/// Choice on the gather path, the device path's predecessor.
fn step_variants(k: usize, on_host: bool) -> Vec<(&'static str, Box<dyn Sparsifier>, StepPath)> {
    let mut variants: Vec<(&'static str, Box<dyn Sparsifier>, StepPath)> = vec![
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
    if !on_host {
        variants.push((
            "step_mutual_choice_gather",
            Box::new(MutualChoice { k }),
            StepPath::Sparse,
        ));
        variants.push((
            "step_feature_choice_gather",
            Box::new(FeatureChoice::uniform(k)),
            StepPath::Sparse,
        ));
    }
    variants
}

fn print_summary(Shape { n, d, f, k }: Shape, backend: &str) {
    let times = TIMES.lock().unwrap();
    // NaN for a bench that a criterion filter left out.
    let med = |id: &str| times.get(id).map_or(f64::NAN, |t| median(t));
    let gemm = med("gemm_encoder");
    println!("\nshape N={n} d={d} F={f} k={k}, backend {backend}");
    println!("{:<26} {:>10} {:>8}", "bench", "median s", "ratio");
    println!("{:<26} {:>10.4} {:>8}", "gemm_encoder", gemm, "1.00");
    let by_feature = med("gemm_encoder_feature_major");
    if !by_feature.is_nan() {
        println!(
            "{:<26} {:>10.4} {:>8.2}",
            "gemm_encoder_feature_major",
            by_feature,
            by_feature / gemm
        );
    }
    let burn = med("burn_matmul");
    if !burn.is_nan() {
        println!("{:<26} {:>10.4} {:>8.2}", "burn_matmul", burn, burn / gemm);
    }
    // The device-only variants print only where they ran.
    for (id, _, _) in step_variants(k, false) {
        if times.contains_key(id) || !id.ends_with("choice_gather") {
            println!("{:<26} {:>10.4} {:>8.2}", id, med(id), med(id) / gemm);
        }
    }
    let paired = PAIRED.lock().unwrap();
    if let Some(rounds) = paired.values().next().map(Vec::len) {
        println!("\npaired rounds ({rounds}): step / GEMM of the same round");
        println!("{:<26} {:>8} {:>8} {:>8}", "bench", "median", "min", "max");
        for (id, ratios) in paired.iter() {
            let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            println!(
                "{:<26} {:>8.3} {:>8.3} {:>8.3}",
                id,
                median(ratios),
                min,
                max
            );
        }
        println!();
    }
    // Over two peers: the ratio is to the same rule's one-device step.
    for (id, one) in [
        ("step_topk_2_peers", "step_topk"),
        ("step_mutual_choice_2_peers", "step_mutual_choice"),
        ("step_feature_choice_2_peers", "step_feature_choice"),
    ] {
        if times.contains_key(id) {
            println!(
                "{:<26} {:>10.4} {:>8.2} (/ {one})",
                id,
                med(id),
                med(id) / med(one)
            );
        }
    }
    for rule in SelectRule::ALL {
        let (ours, burn) = (med(rule.ours()), med(rule.burn()));
        println!("{:<26} {:>10.4}", rule.ours(), ours);
        println!(
            "{:<26} {:>10.4} {:>8.2} (burn / ours)",
            rule.burn(),
            burn,
            burn / ours
        );
    }
}
