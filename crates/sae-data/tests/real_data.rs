//! The real MiniLM activations in the shared data folder: shapes, statistics, streaming.
//!
//! The folder is `$SAE_SHARED_DATA`, else `<workspace root>/../shared/data`. Without it the
//! tests print a notice and pass, unless `SAE_REQUIRE_SHARED_DATA=1`.

use std::path::PathBuf;

use sae_data::{BatchSource, Dtype, HoldOut, Normalized, ShardSet, ShardStream, StreamConfig};

const FILE: &str = "minilm-l3-train.safetensors";

fn shared_file() -> Option<PathBuf> {
    let dir = match std::env::var_os("SAE_SHARED_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    let path = dir.join(FILE);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("SAE_REQUIRE_SHARED_DATA").as_deref() == Ok("1") {
        panic!(
            "SAE_REQUIRE_SHARED_DATA=1 but {} is missing; set SAE_SHARED_DATA to the folder holding {FILE}",
            path.display()
        );
    }
    eprintln!(
        "skipping: {} not found (set SAE_SHARED_DATA)",
        path.display()
    );
    None
}

fn mean_norm(rows: &[f32], d: usize) -> f64 {
    let n = rows.len() / d;
    rows.chunks_exact(d)
        .map(|r| f64::from(r.iter().map(|x| x * x).sum::<f32>()).sqrt())
        .sum::<f64>()
        / n as f64
}

#[test]
fn minilm_shard_has_the_documented_shape_and_statistics() {
    let Some(path) = shared_file() else { return };
    let set = ShardSet::open(&path, "activations").unwrap();
    let shard = &set.shards()[0];
    assert_eq!(
        (shard.rows(), shard.d(), shard.dtype()),
        (131_072, 384, Dtype::F16)
    );

    // Every row decodes finite; mean norm over all rows as documented (12.36).
    let chunk_rows = 8192;
    let mut rows = vec![0.0; chunk_rows * 384];
    let mut total = 0.0;
    let mut max_abs = 0.0f32;
    for start in (0..131_072).step_by(chunk_rows) {
        shard.read_rows(start, &mut rows).unwrap();
        total += mean_norm(&rows, 384) * chunk_rows as f64;
        max_abs = rows.iter().fold(max_abs, |m, x| m.max(x.abs()));
    }
    let mean = total / 131_072.0;
    assert!((mean - 12.36).abs() < 0.05, "mean norm {mean}");
    assert!((7.0..7.7).contains(&max_abs), "max |x| {max_abs}");

    let sample = set.sample_rows(4096).unwrap();
    let sampled = mean_norm(&sample, 384);
    assert!((sampled - 12.36).abs() < 0.2, "sampled mean norm {sampled}");
}

#[test]
fn minilm_streams_normalised_shuffled_batches() {
    let Some(path) = shared_file() else { return };
    let set = ShardSet::open(&path, "activations").unwrap();
    let config = StreamConfig {
        seed: 1,
        shuffle_rows: 1 << 16,
        block_rows: 64,
        hold_out: HoldOut::Fraction {
            fraction: 0.05,
            seed: 0,
        },
    };
    let stream = ShardStream::new(set, config).unwrap();
    let held = stream.held_out();
    assert_eq!(stream.train_rows() + held.rows(), 131_072);
    assert!(
        (held.rows() as f64 / 131_072.0 - 0.05).abs() < 0.01,
        "{}",
        held.rows()
    );

    let normalizer = stream.estimate_normalizer(8192, false).unwrap();
    // Mean squared norm d = 384 means scale close to sqrt(384) / 12.38.
    assert!(
        (f64::from(normalizer.scale) - 384f64.sqrt() / 12.38).abs() < 0.02,
        "{}",
        normalizer.scale
    );
    let mut stream = Normalized::new(stream, normalizer).unwrap();

    let mut batch = Vec::new();
    let mut squared = 0.0;
    for _ in 0..8 {
        stream.next_batch(4096, &mut batch).unwrap();
        assert_eq!(batch.len(), 4096 * 384);
        squared += batch
            .chunks_exact(384)
            .map(|r| f64::from(r.iter().map(|x| x * x).sum::<f32>()))
            .sum::<f64>();
    }
    let mean_squared = squared / (8.0 * 4096.0);
    assert!(
        (mean_squared - 384.0).abs() < 384.0 * 0.02,
        "{mean_squared}"
    );

    // Resumption is exact on real data too.
    let cursor = stream.cursor();
    stream.next_batch(4096, &mut batch).unwrap();
    let mut again = Vec::new();
    stream.restore(&cursor).unwrap();
    stream.next_batch(4096, &mut again).unwrap();
    assert_eq!(batch, again);
}
