//! Every validation error, provoked, with a message that names the culprit.

mod common;

use common::{TempDir, noise};
use sae_data::{
    BatchSource, DataError, Dtype, HoldOut, ShardSet, ShardStream, StreamConfig, TensorRef,
    write_npy, write_safetensors,
};

fn shard(dir: &TempDir, name: &str, rows: usize, d: usize) -> std::path::PathBuf {
    let path = dir.join(name);
    write_safetensors(
        &path,
        &[TensorRef::matrix(
            "activations",
            d,
            &noise(rows * d, rows as u64),
        )],
        Dtype::F16,
    )
    .expect("write");
    path
}

/// Replaces the first occurrence of `from` by `to` (same length) in a file.
fn patch(path: &std::path::Path, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    bytes[at..at + to.len()].copy_from_slice(to);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn wrong_rank_names_file_and_tensor() {
    let dir = TempDir::new("rank");
    let path = dir.join("flat.safetensors");
    let data = noise(12, 1);
    write_safetensors(
        &path,
        &[TensorRef {
            name: "activations",
            shape: vec![12],
            data: &data,
        }],
        Dtype::F32,
    )
    .unwrap();
    let err = ShardSet::open(&path, "activations").unwrap_err();
    assert!(matches!(err, DataError::WrongShape { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("flat.safetensors") && msg.contains("`activations`") && msg.contains("[12]"),
        "{msg}"
    );

    let path = dir.join("cube.npy");
    write_npy(&path, &[2, 3, 2], &data, Dtype::F32).unwrap();
    let msg = ShardSet::open(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cube.npy") && msg.contains("[2, 3, 2]"),
        "{msg}"
    );

    let path = dir.join("zero-width.npy");
    write_npy(&path, &[4, 0], &[], Dtype::F32).unwrap();
    let msg = ShardSet::open(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("zero-width.npy") && msg.contains("d > 0"),
        "{msg}"
    );
}

#[test]
fn fortran_order_npy_is_rejected() {
    let dir = TempDir::new("fortran");
    let path = dir.join("f.npy");
    write_npy(&path, &[3, 4], &noise(12, 2), Dtype::F32).unwrap();
    patch(&path, b"False", b"True ");
    let msg = ShardSet::open(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("f.npy") && msg.contains("Fortran"), "{msg}");
}

#[test]
fn d_mismatch_names_the_odd_shard() {
    let dir = TempDir::new("dmismatch");
    shard(&dir, "a.safetensors", 10, 8);
    shard(&dir, "b.safetensors", 10, 9);
    let err = ShardSet::open(dir.path(), "activations").unwrap_err();
    assert!(
        matches!(
            err,
            DataError::DimMismatch {
                expected: 8,
                found: 9,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("b.safetensors") && msg.contains("d = 9") && msg.contains("d = 8"),
        "{msg}"
    );
}

#[test]
fn truncated_files_are_reported_with_sizes() {
    let dir = TempDir::new("truncated");
    let path = shard(&dir, "cut.safetensors", 10, 8);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let err = ShardSet::open(&path, "activations").unwrap_err();
    assert!(matches!(err, DataError::Truncated { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("cut.safetensors")
            && msg.contains("`activations`")
            && msg.contains("truncated"),
        "{msg}"
    );

    let path = dir.join("cut.npy");
    write_npy(&path, &[10, 8], &noise(80, 3), Dtype::F16).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let msg = ShardSet::open(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cut.npy") && msg.contains("truncated"),
        "{msg}"
    );

    // Cut inside the header.
    let path = shard(&dir, "stub.safetensors", 10, 8);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(20)
        .unwrap();
    let msg = ShardSet::open(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("stub.safetensors") && msg.contains("header length"),
        "{msg}"
    );
}

#[test]
fn corrupt_headers_are_reported() {
    let dir = TempDir::new("corrupt");
    let path = shard(&dir, "junk.safetensors", 4, 4);
    patch(&path, b"{", b"!");
    let err = ShardSet::open(&path, "activations").unwrap_err();
    assert!(matches!(err, DataError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains("junk.safetensors") && err.to_string().contains("JSON"),
        "{err}"
    );

    let path = dir.join("tiny.safetensors");
    std::fs::write(&path, b"abc").unwrap();
    let msg = ShardSet::open(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("tiny.safetensors") && msg.contains("corrupt"),
        "{msg}"
    );

    let path = shard(&dir, "offsets.safetensors", 4, 4);
    patch(&path, b"\"data_offsets\":[0,", b"\"data_offsets\":[2,");
    let msg = ShardSet::open(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("offsets.safetensors") && msg.contains("data_offsets"),
        "{msg}"
    );
}

#[test]
fn unsupported_dtypes_are_named() {
    let dir = TempDir::new("dtype");
    let path = dir.join("ints.safetensors");
    write_safetensors(
        &path,
        &[TensorRef::matrix("activations", 2, &[1.0; 4])],
        Dtype::F32,
    )
    .unwrap();
    patch(&path, b"\"F32\"", b"\"I32\"");
    let err = ShardSet::open(&path, "activations").unwrap_err();
    assert!(matches!(err, DataError::UnsupportedDtype { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("ints.safetensors") && msg.contains("`activations`") && msg.contains("I32"),
        "{msg}"
    );

    let path = dir.join("doubles.npy");
    write_npy(&path, &[2, 2], &[1.0; 4], Dtype::F32).unwrap();
    patch(&path, b"<f4", b"<f8");
    let msg = ShardSet::open(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("doubles.npy") && msg.contains("<f8"), "{msg}");

    let path = dir.join("big.npy");
    write_npy(&path, &[2, 2], &[1.0; 4], Dtype::F32).unwrap();
    patch(&path, b"<f4", b">f4");
    let msg = ShardSet::open(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("big.npy") && msg.contains("big endian"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_lists_what_is_there() {
    let dir = TempDir::new("missing");
    let path = dir.join("other.safetensors");
    write_safetensors(
        &path,
        &[TensorRef::matrix("resid_post", 2, &[1.0; 4])],
        Dtype::F32,
    )
    .unwrap();
    let msg = ShardSet::open(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("other.safetensors")
            && msg.contains("`activations`")
            && msg.contains("resid_post"),
        "{msg}"
    );
}

#[test]
fn non_finite_values_name_file_row_and_column() {
    let dir = TempDir::new("nan");
    let d = 6;
    shard(&dir, "a.safetensors", 20, d);
    for (name, bad) in [
        ("b.safetensors", f32::NAN),
        ("c.safetensors", f32::INFINITY),
    ] {
        let mut data = noise(30 * d, 9);
        data[17 * d + 4] = bad;
        write_safetensors(
            dir.join(name),
            &[TensorRef::matrix("activations", d, &data)],
            Dtype::Bf16,
        )
        .unwrap();
    }
    let set = ShardSet::open(dir.path().join("b.safetensors"), "activations").unwrap();
    let mut rows = vec![0.0; 30 * d];
    let msg = set.shards()[0]
        .read_rows(0, &mut rows)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("b.safetensors")
            && msg.contains("row 17")
            && msg.contains("column 4")
            && msg.contains("NaN"),
        "{msg}"
    );

    // Streaming finds it too, whichever shuffled batch holds it.
    let set = ShardSet::open(dir.path(), "activations").unwrap();
    let mut stream = ShardStream::new(
        set,
        StreamConfig {
            shuffle_rows: 32,
            block_rows: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let mut batch = Vec::new();
    let err = (0..100)
        .find_map(|_| stream.next_batch(16, &mut batch).err())
        .expect("a bad row is met");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            DataError::NonFinite {
                row: 17,
                column: 4,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("b.safetensors") || msg.contains("c.safetensors"),
        "{msg}"
    );
}

#[test]
fn empty_sources_are_errors() {
    let dir = TempDir::new("empty");
    let msg = ShardSet::open(dir.path(), "activations")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("empty source") && msg.contains(&*dir.path().to_string_lossy()),
        "{msg}"
    );

    let msg = ShardSet::open(dir.path().join("*.npy"), "activations")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("empty source"), "{msg}");

    let path = dir.join("zero.npy");
    write_npy(&path, &[0, 8], &[], Dtype::F32).unwrap();
    let msg = ShardSet::open(&path, "activations")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("zero rows") && msg.contains("zero.npy"),
        "{msg}"
    );

    let msg = ShardSet::open(dir.join("absent.safetensors"), "activations")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent.safetensors"), "{msg}");

    shard(&dir, "only.safetensors", 10, 8);
    let set = ShardSet::open(dir.join("only.safetensors"), "activations").unwrap();
    let config = StreamConfig {
        hold_out: HoldOut::LastShards { count: 1 },
        ..Default::default()
    };
    let msg = ShardStream::new(set, config).unwrap_err().to_string();
    assert!(msg.contains("held out"), "{msg}");
}
