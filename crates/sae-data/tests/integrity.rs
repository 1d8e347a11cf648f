//! Files that lie about themselves: overlapping tensors, all-zero data, and files cut short
//! after they were opened. Each is an error naming the file, never a crash.

mod common;

use std::path::{Path, PathBuf};

use common::{TempDir, noise};
use sae_data::{
    BatchSource, DataError, Dtype, HoldOut, ShardSet, ShardStream, StreamConfig, TensorRef,
    read_safetensors, write_npy, write_safetensors,
};

/// Writes a safetensors file with a hand-made `header` followed by `data_len` bytes of small
/// finite f32 values.
fn raw_safetensors(dir: &TempDir, name: &str, header: &str, data_len: usize) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for i in 0..data_len {
        // Byte pattern of 1.0f32 (0x3f800000) with the low bytes varying: always finite.
        bytes.push(match i % 4 {
            3 => 0x3f,
            2 => 0x80,
            _ => i as u8,
        });
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn tensor(name: &str, dtype: &str, shape: &[u64], begin: u64, end: u64) -> String {
    format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{begin},{end}]}}"#)
}

fn header(tensors: &[String]) -> String {
    format!("{{{}}}", tensors.join(","))
}

fn open_err(path: &Path) -> DataError {
    ShardSet::open(path, "activations").unwrap_err()
}

#[test]
fn overlapping_tensors_are_refused_naming_both() {
    let dir = TempDir::new("overlap");
    let path = raw_safetensors(
        &dir,
        "overlap.safetensors",
        &header(&[
            tensor("activations", "F32", &[2, 4], 0, 32),
            tensor("other", "F32", &[2, 4], 16, 48),
        ]),
        48,
    );
    let err = open_err(&path);
    assert!(matches!(err, DataError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("overlap.safetensors")
            && msg.contains("`activations`")
            && msg.contains("`other`")
            && msg.contains("overlap"),
        "{msg}"
    );
    let msg = read_safetensors(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("overlap.safetensors") && msg.contains("overlap"),
        "{msg}"
    );

    // One span inside another, listed in the other order.
    let path = raw_safetensors(
        &dir,
        "inside.safetensors",
        &header(&[
            tensor("activations", "F32", &[1, 2], 8, 16),
            tensor("big", "F32", &[2, 4], 0, 32),
        ]),
        32,
    );
    let msg = open_err(&path).to_string();
    assert!(
        msg.contains("inside.safetensors")
            && msg.contains("`activations`")
            && msg.contains("`big`"),
        "{msg}"
    );
}

#[test]
fn other_tensors_outside_the_data_or_of_the_wrong_length_are_refused() {
    let dir = TempDir::new("others");
    let act = tensor("activations", "F32", &[2, 4], 0, 32);

    // Beyond the end of the file.
    let path = raw_safetensors(
        &dir,
        "beyond.safetensors",
        &header(&[act.clone(), tensor("bias", "F32", &[8], 32, 64)]),
        32,
    );
    let err = open_err(&path);
    assert!(matches!(err, DataError::Truncated { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("beyond.safetensors") && msg.contains("`bias`"),
        "{msg}"
    );

    // Span not dtype x shape.
    let path = raw_safetensors(
        &dir,
        "length.safetensors",
        &header(&[act.clone(), tensor("bias", "I64", &[3], 32, 48)]),
        48,
    );
    let msg = open_err(&path).to_string();
    assert!(
        msg.contains("length.safetensors") && msg.contains("`bias`") && msg.contains("I64"),
        "{msg}"
    );

    // Begin after end.
    let path = raw_safetensors(
        &dir,
        "reversed.safetensors",
        &header(&[act.clone(), tensor("bias", "F32", &[2], 40, 32)]),
        40,
    );
    let msg = open_err(&path).to_string();
    assert!(
        msg.contains("reversed.safetensors") && msg.contains("`bias`"),
        "{msg}"
    );

    // A malformed entry of another tensor.
    let path = raw_safetensors(
        &dir,
        "malformed.safetensors",
        &format!(r#"{{{act},"bias":{{"dtype":"F32","shape":[2]}}}}"#),
        32,
    );
    let msg = open_err(&path).to_string();
    assert!(
        msg.contains("malformed.safetensors") && msg.contains("`bias`"),
        "{msg}"
    );
}

#[test]
fn well_formed_headers_with_several_tensors_still_open() {
    let dir = TempDir::new("fine");
    // Offsets in another order than the names, an empty tensor at a boundary, an unknown
    // dtype (length not checked) and metadata.
    let path = raw_safetensors(
        &dir,
        "fine.safetensors",
        &format!(
            r#"{{"__metadata__":{{"k":"v"}},{},{},{},{}}}"#,
            tensor("z_first", "U8", &[8], 0, 8),
            tensor("activations", "F32", &[2, 4], 8, 40),
            tensor("empty", "F32", &[0, 4], 8, 8),
            tensor("future", "F2_NEW", &[3], 40, 41),
        ),
        41,
    );
    let set = ShardSet::open(&path, "activations").unwrap();
    let mut rows = vec![0.0; 8];
    set.shards()[0].read_rows(0, &mut rows).unwrap();
    assert!(rows.iter().all(|x| (1.0..1.01).contains(x)), "{rows:?}");
}

fn constant_shard(dir: &TempDir, name: &str, rows: usize, d: usize, value: f32) -> PathBuf {
    let path = dir.join(name);
    write_safetensors(
        &path,
        &[TensorRef::matrix("activations", d, &vec![value; rows * d])],
        Dtype::F16,
    )
    .unwrap();
    path
}

#[test]
fn an_all_zero_shard_is_named_when_sampled() {
    let dir = TempDir::new("zeros");
    let path = constant_shard(&dir, "zeros.safetensors", 50, 8, 0.0);
    let set = ShardSet::open(&path, "activations").unwrap();
    let err = set.sample_rows(20).unwrap_err();
    assert!(
        matches!(err, DataError::ZeroNorm { rows: 20, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("zeros.safetensors") && msg.contains("`activations`") && msg.contains("zero"),
        "{msg}"
    );

    let stream = ShardStream::new(set, StreamConfig::default()).unwrap();
    for center in [false, true] {
        let msg = stream
            .estimate_normalizer(20, center)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("zeros.safetensors"), "{msg}");
    }

    // Constant rows only fail with centring.
    let path = constant_shard(&dir, "flat.safetensors", 50, 8, 1.5);
    let stream = ShardStream::open(&path, "activations", StreamConfig::default()).unwrap();
    stream.estimate_normalizer(20, false).unwrap();
    let msg = stream
        .estimate_normalizer(20, true)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("flat.safetensors") && msg.contains("all equal"),
        "{msg}"
    );

    // Several zero files: the first is named, the others counted.
    constant_shard(&dir, "zeros2.safetensors", 30, 8, 0.0);
    std::fs::remove_file(dir.join("flat.safetensors")).unwrap();
    let set = ShardSet::open(dir.path(), "activations").unwrap();
    let msg = set.sample_rows(40).unwrap_err().to_string();
    assert!(
        msg.contains("zeros.safetensors") && msg.contains("1 other file"),
        "{msg}"
    );

    // A zero file among others is no failure of the sample.
    write_safetensors(
        dir.join("real.safetensors"),
        &[TensorRef::matrix("activations", 8, &noise(40 * 8, 3))],
        Dtype::F16,
    )
    .unwrap();
    let set = ShardSet::open(dir.path(), "activations").unwrap();
    assert_eq!(set.sample_rows(40).unwrap().len(), 40 * 8);
}

/// Cuts `path` down to `len` bytes.
fn cut(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

const ROWS: usize = 1000;
const D: usize = 64;

/// A shard of several memory pages (ROWS x D f32), in safetensors or npy form.
fn big_shard(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.join(name);
    let data = noise(ROWS * D, 11);
    if name.ends_with(".npy") {
        write_npy(&path, &[ROWS, D], &data, Dtype::F32).unwrap();
    } else {
        write_safetensors(
            &path,
            &[TensorRef::matrix("activations", D, &data)],
            Dtype::F32,
        )
        .unwrap();
    }
    path
}

fn assert_shrunk(err: &DataError, name: &str) {
    assert!(matches!(err, DataError::Shrunk { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(name) && msg.contains("shrank"), "{msg}");
}

#[test]
fn a_file_cut_short_after_opening_is_an_error_not_a_crash() {
    let dir = TempDir::new("shrunk");
    for name in ["cut.safetensors", "cut.npy"] {
        let path = big_shard(&dir, name);
        let set = ShardSet::open(&path, "activations").unwrap();
        cut(&path, 4096);
        let shard = &set.shards()[0];

        let mut all = vec![0.0; ROWS * D];
        let err = shard.read_rows(0, &mut all).unwrap_err();
        assert_shrunk(&err, name);
        // The first row missing is named: rows are 256 bytes, so fewer than 16 are left.
        assert!(
            matches!(err, DataError::Shrunk { row, actual: 4096, .. } if row < 16),
            "{err:?}"
        );

        let mut last = vec![0.0; D];
        let err = shard.read_rows(ROWS as u64 - 1, &mut last).unwrap_err();
        assert!(
            matches!(err, DataError::Shrunk { row, .. } if row == ROWS as u64 - 1),
            "{err:?}"
        );

        // Rows still wholly in the file can be read.
        shard.read_rows(0, &mut last).unwrap();

        let err = set.sample_rows(100).unwrap_err();
        assert_shrunk(&err, name);
        let err = set.fingerprint().unwrap_err();
        assert_shrunk(&err, name);
    }
}

#[test]
fn a_stream_over_a_file_cut_short_fails_naming_it() {
    let dir = TempDir::new("shrunk-stream");
    for name in ["cut.safetensors", "cut.npy"] {
        let path = big_shard(&dir, name);
        let config = StreamConfig {
            shuffle_rows: 256,
            block_rows: 16,
            hold_out: HoldOut::Fraction {
                fraction: 0.2,
                seed: 1,
            },
            ..Default::default()
        };
        let mut stream = ShardStream::open(&path, "activations", config).unwrap();
        let mut held = stream.held_out();
        let mut batch = Vec::new();
        stream.next_batch(100, &mut batch).unwrap();
        cut(&path, 4096);

        let err = (0..20)
            .find_map(|_| stream.next_batch(100, &mut batch).err())
            .expect("a batch reaches past the cut");
        assert_shrunk(&err, name);
        let err = held.next_batch(ROWS, &mut batch).unwrap_err();
        assert_shrunk(&err, name);
        let err = stream.estimate_normalizer(500, false).unwrap_err();
        assert_shrunk(&err, name);
    }
}
