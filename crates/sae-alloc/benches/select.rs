//! Throughput of the allocation rules against a naive full-sort baseline measured in the same
//! run. The baseline is the textbook implementation: sort every row / column / the whole
//! matrix by (score desc, index asc) on one thread and take the head.

use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sae_alloc::{
    Capacities, ScoreMatrix, column_topm, column_topm_transposed, global_topk, row_topk,
    usage_order,
};

const K: usize = 32;
const SHAPES: [(usize, usize); 2] = [(1024, 4096), (4096, 16384)];

fn scores(rows: usize, cols: usize) -> Vec<f32> {
    // Affinity-like: mostly small, some structure per feature, a few exact ties.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let bias: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..0.5)).collect();
    (0..rows * cols)
        .map(|i| {
            let x: f32 = rng.random_range(-2.0..2.0) + bias[i % cols];
            (x * 256.0).round() / 256.0
        })
        .collect()
}

fn by_rank(a: &(f32, usize), b: &(f32, usize)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

fn naive_rows(data: &[f32], cols: usize, k: usize) -> usize {
    let mut kept = 0;
    for row in data.chunks(cols) {
        let mut all: Vec<(f32, usize)> = row.iter().copied().zip(0..).collect();
        all.sort_unstable_by(by_rank);
        kept += all[..k].len();
    }
    kept
}

fn naive_global(data: &[f32], budget: usize) -> usize {
    let mut all: Vec<(f32, usize)> = data.iter().copied().zip(0..).collect();
    all.sort_unstable_by(by_rank);
    all[..budget].len()
}

fn naive_columns(data: &[f32], rows: usize, cols: usize, caps: &[u32]) -> usize {
    let mut kept = 0;
    let mut column = Vec::with_capacity(rows);
    for (c, &cap) in caps.iter().enumerate().take(cols) {
        column.clear();
        column.extend((0..rows).map(|r| (data[r * cols + c], r)));
        column.sort_unstable_by(by_rank);
        kept += column[..cap as usize].len();
    }
    kept
}

fn bench(c: &mut Criterion) {
    for (rows, cols) in SHAPES {
        let data = scores(rows, cols);
        let matrix = ScoreMatrix::new(&data, rows, cols).unwrap();
        let budget = rows * K;
        let uniform = Capacities::uniform(budget, cols, rows as u32).unwrap();
        // A realistic Zipf ranking: by mean score of each feature.
        let mean: Vec<f32> = (0..cols)
            .map(|f| (0..rows).map(|r| data[r * cols + f]).sum::<f32>() / rows as f32)
            .collect();
        let zipf = Capacities::zipf(budget, rows as u32, 1.0, &usage_order(&mean)).unwrap();

        let mut group = c.benchmark_group(format!("select_{rows}x{cols}_k{K}"));
        group.throughput(Throughput::Elements((rows * cols) as u64));
        group.sample_size(10);
        group.bench_function("row_topk", |b| b.iter(|| row_topk(&matrix, K).unwrap()));
        group.bench_function("global_topk", |b| {
            b.iter(|| global_topk(&matrix, budget).unwrap())
        });
        // The same matrix held feature-major, as the CPU training step holds it for Feature
        // Choice.
        let by_feature = matrix.transposed();
        let transposed = ScoreMatrix::new(&by_feature, cols, rows).unwrap();
        for (name, caps) in [("uniform", &uniform), ("zipf", &zipf)] {
            group.bench_function(BenchmarkId::new("column_topm", name), |b| {
                b.iter(|| column_topm(&matrix, caps).unwrap())
            });
            group.bench_function(BenchmarkId::new("column_topm_transposed", name), |b| {
                b.iter(|| column_topm_transposed(&transposed, caps).unwrap())
            });
        }
        group.finish();

        // The naive sorts take seconds per call at the large shape: one call per sample, the
        // fewest samples criterion accepts, no extra warm-up.
        let mut group = c.benchmark_group(format!("naive_{rows}x{cols}_k{K}"));
        group.throughput(Throughput::Elements((rows * cols) as u64));
        group.sample_size(10);
        group.sampling_mode(SamplingMode::Flat);
        group.warm_up_time(Duration::from_millis(1));
        group.measurement_time(Duration::from_millis(1));
        group.bench_function("naive_row_sort", |b| b.iter(|| naive_rows(&data, cols, K)));
        group.bench_function("naive_global_sort", |b| {
            b.iter(|| naive_global(&data, budget))
        });
        group.bench_function("naive_column_sort", |b| {
            b.iter(|| naive_columns(&data, rows, cols, uniform.as_slice()))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
