//! Shuffled streaming: coverage, mixing, exact resumption, hold-out.

mod common;

use std::collections::HashSet;

use common::{TempDir, numbered_rows};
use sae_data::{
    BatchSource, Cursor, Dtype, HoldOut, Normalized, Normalizer, ShardSet, ShardStream,
    StreamConfig, TensorRef, write_npy, write_safetensors,
};

const D: usize = 4;

/// Three shards of different lengths and formats; row ids are globally unique (value of
/// column 0), exact in f32.
fn shards(dir: &TempDir) -> ShardSet {
    write_safetensors(
        dir.join("a.safetensors"),
        &[TensorRef::matrix(
            "activations",
            D,
            &numbered_rows(100, D, 0),
        )],
        Dtype::F32,
    )
    .unwrap();
    write_npy(
        dir.join("b.npy"),
        &[37, D],
        &numbered_rows(37, D, 1000),
        Dtype::F32,
    )
    .unwrap();
    write_safetensors(
        dir.join("c.safetensors"),
        &[TensorRef::matrix(
            "activations",
            D,
            &numbered_rows(250, D, 2000),
        )],
        Dtype::F32,
    )
    .unwrap();
    ShardSet::open(dir.path(), "activations").unwrap()
}

fn ids(batch: &[f32]) -> Vec<u32> {
    batch.chunks_exact(D).map(|r| r[0] as u32).collect()
}

fn config() -> StreamConfig {
    StreamConfig {
        seed: 7,
        shuffle_rows: 64,
        block_rows: 8,
        hold_out: HoldOut::None,
    }
}

#[test]
fn an_epoch_yields_every_row_once_and_mixes_shards() {
    let dir = TempDir::new("epoch");
    let mut stream = ShardStream::new(shards(&dir), config()).unwrap();
    assert_eq!(stream.train_rows(), 387);
    let mut batch = Vec::new();
    stream.next_batch(387, &mut batch).unwrap();
    assert_eq!(batch.len(), 387 * D);
    let rows = ids(&batch);
    let unique: HashSet<_> = rows.iter().copied().collect();
    assert_eq!(unique.len(), 387, "each row exactly once per epoch");
    // Rows keep their contents.
    for r in batch.chunks_exact(D) {
        assert_eq!(r[1], r[0] + 0.001);
    }
    // The first window already mixes shards and is not in file order.
    let first: Vec<u32> = rows[..64].to_vec();
    let shards_seen: HashSet<u32> = first.iter().map(|id| id / 1000).collect();
    assert!(shards_seen.len() >= 2, "first window {first:?}");
    assert!(first.windows(2).any(|w| w[1] != w[0] + 1));
    // The next epoch is another permutation of the same rows.
    let mut next = Vec::new();
    stream.next_batch(387, &mut next).unwrap();
    let next_rows = ids(&next);
    assert_eq!(next_rows.iter().copied().collect::<HashSet<_>>(), unique);
    assert_ne!(next_rows, rows);
}

#[test]
fn same_seed_same_batches_other_seed_other_batches() {
    let dir = TempDir::new("seed");
    let mut a = ShardStream::new(shards(&dir), config()).unwrap();
    let mut b = ShardStream::new(shards(&dir), config()).unwrap();
    let mut c = ShardStream::new(
        shards(&dir),
        StreamConfig {
            seed: 8,
            ..config()
        },
    )
    .unwrap();
    let (mut x, mut y, mut z) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        a.next_batch(50, &mut x).unwrap();
        b.next_batch(50, &mut y).unwrap();
        c.next_batch(50, &mut z).unwrap();
        assert_eq!(x, y);
        assert_ne!(x, z);
    }
}

#[test]
fn resumed_stream_yields_the_uninterrupted_batches() {
    let dir = TempDir::new("resume");
    let sizes = [13usize, 64, 1, 100, 29, 64, 200, 7, 64, 64, 300, 5];
    let mut reference = ShardStream::new(shards(&dir), config()).unwrap();
    let mut expected = Vec::new();
    for &n in &sizes {
        let mut batch = Vec::new();
        reference.next_batch(n, &mut batch).unwrap();
        expected.push(batch);
    }
    for stop in 0..sizes.len() {
        let mut first = ShardStream::new(shards(&dir), config()).unwrap();
        let mut batch = Vec::new();
        for &n in &sizes[..stop] {
            first.next_batch(n, &mut batch).unwrap();
        }
        let json = serde_json::to_string(&first.cursor()).unwrap();
        drop(first);
        let cursor: Cursor = serde_json::from_str(&json).unwrap();
        let mut resumed = ShardStream::new(shards(&dir), config()).unwrap();
        resumed.restore(&cursor).unwrap();
        assert_eq!(resumed.cursor(), cursor);
        for (i, &n) in sizes.iter().enumerate().skip(stop) {
            resumed.next_batch(n, &mut batch).unwrap();
            assert_eq!(
                batch, expected[i],
                "stopped at batch {stop}, batch {i} differs"
            );
        }
    }
}

#[test]
fn cursors_from_elsewhere_are_refused() {
    let dir = TempDir::new("refuse");
    let mut stream = ShardStream::new(shards(&dir), config()).unwrap();
    let mut other = ShardStream::new(
        shards(&dir),
        StreamConfig {
            seed: 1,
            ..config()
        },
    )
    .unwrap();
    assert!(
        stream
            .restore(&other.cursor())
            .unwrap_err()
            .to_string()
            .contains("seed")
    );
    assert!(stream.restore(&Cursor::Synthetic { index: 3 }).is_err());
    let Cursor::Shards(mut c) = stream.cursor() else {
        unreachable!()
    };
    c.window = 1000;
    assert!(
        stream
            .restore(&Cursor::Shards(c.clone()))
            .unwrap_err()
            .to_string()
            .contains("window")
    );
    c.window = 0;
    c.train_rows += 1;
    assert!(stream.restore(&Cursor::Shards(c)).is_err());
    let mut batch = Vec::new();
    other.next_batch(3, &mut batch).unwrap();
}

#[test]
fn held_out_rows_are_disjoint_deterministic_and_complete() {
    let dir = TempDir::new("holdout");
    let config = StreamConfig {
        hold_out: HoldOut::Fraction {
            fraction: 0.25,
            seed: 3,
        },
        ..config()
    };
    let stream = ShardStream::new(shards(&dir), config.clone()).unwrap();
    let mut held = stream.held_out();
    assert!(held.rows() > 0 && held.rows() < 387, "{}", held.rows());
    assert_eq!(stream.train_rows() + held.rows(), 387);

    let mut stream = stream;
    let mut train = Vec::new();
    stream
        .next_batch(stream.train_rows() as usize, &mut train)
        .unwrap();
    let train: HashSet<u32> = ids(&train).into_iter().collect();
    let eval: Vec<u32> = held.batches(10).flat_map(|b| ids(&b.unwrap())).collect();
    assert_eq!(eval.len() as u64, held.rows());
    assert!(
        eval.windows(2).all(|w| w[0] < w[1]),
        "held-out rows come in file order"
    );
    assert!(eval.iter().all(|id| !train.contains(id)));

    // Independent of the shuffle seed.
    let other = ShardStream::new(shards(&dir), StreamConfig { seed: 99, ..config }).unwrap();
    let again: Vec<u32> = other
        .held_out()
        .batches(1000)
        .flat_map(|b| ids(&b.unwrap()))
        .collect();
    assert_eq!(again, eval);

    // As a source it cycles and resumes.
    let mut batch = Vec::new();
    held.next_batch(held.rows() as usize + 3, &mut batch)
        .unwrap();
    assert_eq!(ids(&batch)[held.rows() as usize..], eval[..3]);
    let cursor = held.cursor();
    held.next_batch(5, &mut batch).unwrap();
    let mut again = Vec::new();
    held.restore(&cursor).unwrap();
    held.next_batch(5, &mut again).unwrap();
    assert_eq!(batch, again);
}

#[test]
fn whole_shards_can_be_held_out() {
    let dir = TempDir::new("holdshard");
    let config = StreamConfig {
        hold_out: HoldOut::LastShards { count: 1 },
        ..config()
    };
    let mut stream = ShardStream::new(shards(&dir), config).unwrap();
    assert_eq!(stream.train_rows(), 137);
    let held = stream.held_out();
    assert_eq!(held.rows(), 250);
    let mut batch = Vec::new();
    stream.next_batch(137, &mut batch).unwrap();
    assert!(ids(&batch).iter().all(|id| *id < 2000));
}

#[test]
fn normalized_sources_apply_the_normalizer_to_every_batch() {
    let dir = TempDir::new("norm-stream");
    let mut raw = ShardStream::new(shards(&dir), config()).unwrap();
    let stream = ShardStream::new(shards(&dir), config()).unwrap();
    let normalizer = stream.estimate_normalizer(387, true).unwrap();
    let wrong = Normalizer {
        scale: 1.0,
        mean: Some(vec![0.0; D + 1]),
    };
    let err = Normalized::new(ShardStream::new(shards(&dir), config()).unwrap(), wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains("d = 4"), "{err}");
    let mut scaled = Normalized::new(stream, normalizer.clone()).unwrap();
    assert_eq!(scaled.normalizer(), &normalizer);
    assert_eq!(scaled.inner().train_rows(), raw.train_rows());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    raw.next_batch(387, &mut a).unwrap();
    scaled.next_batch(387, &mut b).unwrap();
    let mean_sq = b
        .chunks_exact(D)
        .map(|r| r.iter().map(|x| x * x).sum::<f32>())
        .sum::<f32>()
        / 387.0;
    assert!((mean_sq - D as f32).abs() < 1e-2 * D as f32, "{mean_sq}");
    // Exactly `Normalizer::apply` on the raw rows, and invertible.
    let mut applied = a.clone();
    normalizer.apply(&mut applied);
    assert_eq!(applied, b);
    normalizer.invert(&mut b);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-3 * x.abs().max(1.0), "{x} vs {y}");
    }
    // The cursor is the raw stream's: a normalised stream resumes where it was.
    let cursor = scaled.cursor();
    let mut next = Vec::new();
    scaled.next_batch(50, &mut next).unwrap();
    scaled.restore(&cursor).unwrap();
    let mut again = Vec::new();
    scaled.next_batch(50, &mut again).unwrap();
    assert_eq!(next, again);
}

#[test]
fn normalizer_estimate_ignores_held_out_rows() {
    let dir = TempDir::new("norm-holdout");
    shards(&dir);
    // Hold out the big shard whose values are large; only shards a and b are measured.
    let config = StreamConfig {
        hold_out: HoldOut::LastShards { count: 1 },
        ..config()
    };
    let stream = ShardStream::open(dir.path(), "activations", config).unwrap();
    let n = stream.estimate_normalizer(10_000, false).unwrap();
    let mut rows = numbered_rows(100, D, 0);
    rows.extend(numbered_rows(37, D, 1000));
    assert_eq!(n, Normalizer::estimate(&rows, D, false).unwrap());
}

#[test]
fn config_reads_from_json_with_defaults() {
    let config: StreamConfig = serde_json::from_str(
        r#"{"seed": 3, "hold_out": {"fraction": {"fraction": 0.1, "seed": 2}}}"#,
    )
    .unwrap();
    assert_eq!(
        config,
        StreamConfig {
            seed: 3,
            hold_out: HoldOut::Fraction {
                fraction: 0.1,
                seed: 2
            },
            ..StreamConfig::default()
        }
    );
    let config: StreamConfig =
        serde_json::from_str(r#"{"hold_out": {"last_shards": {"count": 1}}}"#).unwrap();
    assert_eq!(config.hold_out, HoldOut::LastShards { count: 1 });
}

#[test]
fn batches_and_cursors_are_identical_for_any_thread_count() {
    // Batches of at least 2^22 values are split over the rayon threads; smaller ones are
    // decoded on the calling thread. Cover both, with a normalizer and a resume in between.
    let (d, rows) = (512usize, 8704usize);
    let dir = TempDir::new("threads");
    let values: Vec<f32> = (0..rows * d)
        .map(|i| ((i * 7919) % 2003) as f32 / 500.0 - 2.0)
        .collect();
    write_safetensors(
        dir.join("big.safetensors"),
        &[TensorRef::matrix("activations", d, &values)],
        Dtype::F16,
    )
    .unwrap();
    let config = StreamConfig {
        seed: 3,
        shuffle_rows: 4096,
        block_rows: 64,
        hold_out: HoldOut::None,
    };
    let sizes = [8200usize, 100, 8500, 1, 4096];
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let stream = ShardStream::open(dir.path(), "activations", config.clone()).unwrap();
            let normalizer = stream.estimate_normalizer(1000, true).unwrap();
            let mut stream = Normalized::new(stream, normalizer.clone()).unwrap();
            let mut out = Vec::new();
            for &n in &sizes {
                let cursor = stream.cursor();
                let mut batch = Vec::new();
                stream.next_batch(n, &mut batch).unwrap();
                let bits: Vec<u32> = batch.iter().map(|v| v.to_bits()).collect();
                out.push((cursor, bits));
            }
            let resumed = ShardStream::open(dir.path(), "activations", config.clone()).unwrap();
            let mut resumed = Normalized::new(resumed, normalizer).unwrap();
            resumed.restore(&out[2].0).unwrap();
            let mut batch = Vec::new();
            resumed.next_batch(sizes[2], &mut batch).unwrap();
            let bits: Vec<u32> = batch.iter().map(|v| v.to_bits()).collect();
            assert_eq!(bits, out[2].1, "resumed batch, {threads} threads");
            out
        })
    };
    let one = run(1);
    for threads in [2, 3] {
        let many = run(threads);
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            assert_eq!(a.0, b.0, "cursor before batch {i}, {threads} threads");
            assert!(a.1 == b.1, "batch {i} differs with {threads} threads");
        }
    }
}
