//! Batches per second of 4096 x 384 `f32` decoded and shuffled from f16 shards, against a
//! plain copy of the same number of output bytes measured in the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sae_data::{
    BatchSource, Dtype, ShardSet, ShardStream, StreamConfig, SyntheticConfig, SyntheticSource,
    TensorRef, write_safetensors,
};

const ROWS: usize = 4096;
const D: usize = 384;
const SHARDS: usize = 4;
const SHARD_ROWS: usize = 32_768;

/// Four f16 shards of 32768 x 384 (96 MiB in all) in a temp folder.
fn shard_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sae-data-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for s in 0..SHARDS {
        let data: Vec<f32> = (0..SHARD_ROWS * D)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        let path = dir.join(format!("shard-{s}.safetensors"));
        write_safetensors(
            &path,
            &[TensorRef::matrix("activations", D, &data)],
            Dtype::F16,
        )
        .unwrap();
    }
    dir
}

fn batches(c: &mut Criterion) {
    let dir = shard_dir();
    let mut group = c.benchmark_group("batch_4096x384");
    group.throughput(Throughput::Elements((ROWS * D) as u64));

    let set = ShardSet::open(&dir, "activations").unwrap();
    let config = StreamConfig {
        seed: 0,
        shuffle_rows: 1 << 16,
        block_rows: 64,
        ..Default::default()
    };
    let mut stream = ShardStream::new(set, config).unwrap();
    let mut out = Vec::new();
    group.bench_function("shuffled_f16_stream", |b| {
        b.iter(|| {
            stream.next_batch(ROWS, &mut out).unwrap();
            black_box(&out);
        })
    });

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    group.bench_function("shuffled_f16_stream_one_thread", |b| {
        b.iter(|| {
            pool.install(|| stream.next_batch(ROWS, &mut out).unwrap());
            black_box(&out);
        })
    });

    let set = ShardSet::open(&dir, "activations").unwrap();
    let mut out = vec![0.0f32; ROWS * D];
    let mut start = 0u64;
    // A batch large enough (16384 x 384) to be split over the rayon threads.
    group.throughput(Throughput::Elements((4 * ROWS * D) as u64));
    let mut big = Vec::new();
    group.bench_function("shuffled_f16_stream_16384_rows", |b| {
        b.iter(|| {
            stream.next_batch(4 * ROWS, &mut big).unwrap();
            black_box(&big);
        })
    });
    group.bench_function("shuffled_f16_stream_16384_rows_one_thread", |b| {
        b.iter(|| {
            pool.install(|| stream.next_batch(4 * ROWS, &mut big).unwrap());
            black_box(&big);
        })
    });
    group.throughput(Throughput::Elements((ROWS * D) as u64));

    group.bench_function("sequential_f16_decode_one_thread", |b| {
        b.iter(|| {
            let shard = &set.shards()[0];
            if start + ROWS as u64 > shard.rows() {
                start = 0;
            }
            shard.read_rows(start, &mut out).unwrap();
            start += ROWS as u64;
            black_box(&out);
        })
    });

    // Baseline: copying the batch's bytes (f32 out) from a source as large as the shards.
    let source = vec![1.0f32; SHARDS * SHARD_ROWS * D / 2];
    let mut out = vec![0.0f32; ROWS * D];
    let mut at = 0;
    group.bench_function("memcpy_baseline", |b| {
        b.iter(|| {
            if at + ROWS * D > source.len() {
                at = 0;
            }
            out.copy_from_slice(&source[at..at + ROWS * D]);
            at += ROWS * D;
            black_box(&out);
        })
    });
    group.finish();

    ratio_summary(&dir, &pool);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Median seconds of `rounds` timed calls of each closure, taken in turn so that a change in
/// machine load hits all of them alike.
fn interleaved_medians(rounds: usize, runs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut times = vec![Vec::with_capacity(rounds); runs.len()];
    for _ in 0..rounds {
        for (run, times) in runs.iter_mut().zip(&mut times) {
            let start = Instant::now();
            run();
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

/// Prints the default stream, the one-thread stream and the copy baseline of 4096 x 384
/// batches, timed in alternation in this run, and the ratio of each stream to the copy.
fn ratio_summary(dir: &std::path::Path, pool: &rayon::ThreadPool) {
    let config = StreamConfig {
        seed: 0,
        shuffle_rows: 1 << 16,
        block_rows: 64,
        ..Default::default()
    };
    let open = || ShardStream::new(ShardSet::open(dir, "activations").unwrap(), config.clone());
    let (mut stream, mut stream_one) = (open().unwrap(), open().unwrap());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let source = vec![1.0f32; SHARDS * SHARD_ROWS * D / 2];
    let mut copy = vec![0.0f32; ROWS * D];
    let mut at = 0;
    let medians = interleaved_medians(
        400,
        &mut [
            &mut || {
                if at + ROWS * D > source.len() {
                    at = 0;
                }
                copy.copy_from_slice(&source[at..at + ROWS * D]);
                at += ROWS * D;
                black_box(&copy);
            },
            &mut || {
                stream.next_batch(ROWS, &mut a).unwrap();
                black_box(&a);
            },
            &mut || {
                pool.install(|| stream_one.next_batch(ROWS, &mut b).unwrap());
                black_box(&b);
            },
        ],
    );
    let rate = |t: f64| (ROWS * D) as f64 / t / 1e9;
    let copy = medians[0];
    println!(
        "4096 x 384, medians of 400 interleaved batches, {} rayon threads by default:",
        rayon::current_num_threads()
    );
    println!(
        "  memcpy baseline           {:.3} ms  {:.2} G values/s",
        copy * 1e3,
        rate(copy)
    );
    for (name, t) in [
        ("shuffled stream default", medians[1]),
        ("shuffled stream 1 thread", medians[2]),
    ] {
        println!(
            "  {name:<26}{:.3} ms  {:.2} G values/s  {:.2} x memcpy throughput",
            t * 1e3,
            rate(t),
            copy / t
        );
    }
}

/// Synthetic ground truth at the default size (d = 64, 512 features), 4096 rows a batch.
fn synthetic(c: &mut Criterion) {
    let mut group = c.benchmark_group("synthetic_4096x64");
    group.throughput(Throughput::Elements(4096 * 64));
    let mut source = SyntheticSource::new(SyntheticConfig::default()).unwrap();
    let mut out = Vec::new();
    group.bench_function("default_config", |b| {
        b.iter(|| {
            source.next_batch(4096, &mut out).unwrap();
            black_box(&out);
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = batches, synthetic
}
criterion_main!(benches);
