//! Round trips through the crate's own writers and readers, for every format and dtype.

mod common;

use common::{TempDir, noise};
use sae_data::{
    Dtype, ShardSet, TensorRef, read_npy, read_safetensors, write_npy, write_safetensors,
};

/// The value `dtype` stores for `x` (round to nearest even).
fn stored(dtype: Dtype, x: f32) -> f32 {
    match dtype {
        Dtype::F32 => x,
        Dtype::F16 => half::f16::from_f32(x).to_f32(),
        Dtype::Bf16 => half::bf16::from_f32(x).to_f32(),
    }
}

fn read_all(set: &ShardSet) -> Vec<f32> {
    let mut all = Vec::new();
    for shard in set.shards() {
        let mut rows = vec![0.0; shard.rows() as usize * shard.d()];
        shard.read_rows(0, &mut rows).expect("read rows");
        all.extend(rows);
    }
    all
}

#[test]
fn safetensors_round_trips_every_dtype() {
    let dir = TempDir::new("st-round-trip");
    let (rows, d) = (37, 19);
    let data = noise(rows * d, 1);
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        let path = dir.join(&format!("{dtype:?}.safetensors"));
        write_safetensors(&path, &[TensorRef::matrix("activations", d, &data)], dtype)
            .expect("write");
        let set = ShardSet::open(&path, "activations").expect("open");
        assert_eq!((set.rows(), set.d()), (rows as u64, d));
        assert_eq!(set.shards()[0].dtype(), dtype);
        let expected: Vec<f32> = data.iter().map(|&x| stored(dtype, x)).collect();
        assert_eq!(read_all(&set), expected, "{dtype:?}");
    }
}

#[test]
fn npy_round_trips_f32_and_f16() {
    let dir = TempDir::new("npy-round-trip");
    let (rows, d) = (23, 31);
    let data = noise(rows * d, 2);
    for dtype in [Dtype::F32, Dtype::F16] {
        let path = dir.join(&format!("{dtype:?}.npy"));
        write_npy(&path, &[rows, d], &data, dtype).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0, "numpy aligns data to 64 bytes");
        let set = ShardSet::open(&path, "ignored for npy").expect("open");
        assert_eq!((set.rows(), set.d()), (rows as u64, d));
        let expected: Vec<f32> = data.iter().map(|&x| stored(dtype, x)).collect();
        assert_eq!(read_all(&set), expected, "{dtype:?}");
        let (shape, values) = read_npy(&path).expect("read_npy");
        assert_eq!(shape, vec![rows, d]);
        assert_eq!(values, expected);
    }
}

#[test]
fn npy_header_is_what_numpy_writes() {
    let dir = TempDir::new("npy-header");
    let path = dir.join("a.npy");
    write_npy(&path, &[2, 3], &[0.0; 6], Dtype::F32).expect("write");
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).expect("ascii");
    assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
    assert!(header.ends_with('\n'));
}

#[test]
fn safetensors_holds_several_tensors_of_any_rank() {
    let dir = TempDir::new("st-multi");
    let path = dir.join("sae.safetensors");
    let w = noise(12, 3);
    let b = noise(4, 4);
    write_safetensors(
        &path,
        &[
            TensorRef {
                name: "W_dec",
                shape: vec![3, 4],
                data: &w,
            },
            TensorRef {
                name: "b_dec",
                shape: vec![4],
                data: &b,
            },
        ],
        Dtype::F32,
    )
    .expect("write");
    assert_eq!(
        read_safetensors(&path, "W_dec").expect("W"),
        (vec![3, 4], w.clone())
    );
    assert_eq!(read_safetensors(&path, "b_dec").expect("b"), (vec![4], b));
    let bytes = std::fs::read(&path).expect("read");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(header_len % 8, 0, "data region is 8-byte aligned");
    // The matrix can be streamed as a shard too.
    let set = ShardSet::open(&path, "W_dec").expect("open");
    assert_eq!(read_all(&set), w);
}

#[test]
fn writers_reject_data_that_does_not_fit_the_shape() {
    let dir = TempDir::new("writer-shape");
    let err = write_npy(dir.join("a.npy"), &[2, 3], &[0.0; 5], Dtype::F32).unwrap_err();
    assert!(err.to_string().contains("a.npy"), "{err}");
    let err = write_safetensors(
        dir.join("a.safetensors"),
        &[TensorRef {
            name: "x",
            shape: vec![2, 2],
            data: &[0.0; 3],
        }],
        Dtype::F16,
    )
    .unwrap_err();
    assert!(err.to_string().contains("`x`"), "{err}");
    let err = write_npy(dir.join("b.npy"), &[1, 1], &[0.0], Dtype::Bf16).unwrap_err();
    assert!(err.to_string().contains("bf16"), "{err}");
}

#[test]
fn directory_and_glob_sources_find_every_shard_sorted() {
    let dir = TempDir::new("dir-glob");
    let d = 8;
    write_safetensors(
        dir.join("b.safetensors"),
        &[TensorRef::matrix("activations", d, &noise(5 * d, 5))],
        Dtype::F16,
    )
    .unwrap();
    write_safetensors(
        dir.join("a.safetensors"),
        &[TensorRef::matrix("activations", d, &noise(3 * d, 6))],
        Dtype::Bf16,
    )
    .unwrap();
    write_npy(dir.join("c.npy"), &[7, d], &noise(7 * d, 7), Dtype::F32).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a shard").unwrap();

    let set = ShardSet::open(dir.path(), "activations").expect("directory");
    let names: Vec<_> = set
        .shards()
        .iter()
        .map(|s| s.path().file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["a.safetensors", "b.safetensors", "c.npy"]);
    assert_eq!(set.rows(), 15);

    let pattern = dir.path().join("*.safetensors");
    let set = ShardSet::open(&pattern, "activations").expect("glob");
    assert_eq!(set.shards().len(), 2);
    assert_eq!(set.rows(), 8);
}
