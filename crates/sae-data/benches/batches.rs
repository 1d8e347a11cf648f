//! Batches per second of 4096 x 384 `f32` decoded and shuffled from f16 shards, against a
//! plain copy of the same number of output bytes measured in the same run.

use std::hint::black_box;
use std::time::Duration;

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
    let _ = std::fs::remove_dir_all(&dir);
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
