//! Shard readers never panic, whatever the bytes: they open and read, or return an error.

mod common;

use common::{TempDir, noise};
use proptest::prelude::*;
use sae_data::{Dtype, ShardSet, TensorRef, write_npy, write_safetensors};

/// Opens `bytes` as a shard and reads every row; must not panic.
fn open_and_read(dir: &TempDir, bytes: &[u8]) {
    let path = dir.join("case.bin");
    std::fs::write(&path, bytes).unwrap();
    if let Ok(set) = ShardSet::open(&path, "activations") {
        for shard in set.shards() {
            let rows = shard.rows().min(64) as usize;
            let mut out = vec![0.0; rows * shard.d()];
            let _ = shard.read_rows(0, &mut out);
        }
    }
}

fn valid_files() -> Vec<Vec<u8>> {
    let dir = TempDir::new("fuzz-valid");
    let data = noise(6 * 5, 1);
    let mut files = Vec::new();
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        let path = dir.join("v.safetensors");
        write_safetensors(&path, &[TensorRef::matrix("activations", 5, &data)], dtype).unwrap();
        files.push(std::fs::read(&path).unwrap());
    }
    for dtype in [Dtype::F32, Dtype::F16] {
        let path = dir.join("v.npy");
        write_npy(&path, &[6, 5], &data, dtype).unwrap();
        files.push(std::fs::read(&path).unwrap());
    }
    files
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        prefix in prop::sample::select(vec![
            Vec::new(),
            b"\x93NUMPY\x01\x00".to_vec(),
            b"\x93NUMPY\x02\x00".to_vec(),
            b"\x40\x00\x00\x00\x00\x00\x00\x00{\"activations\":".to_vec(),
        ]),
        tail in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let dir = TempDir::new("fuzz-random");
        let mut bytes = prefix;
        bytes.extend(tail);
        open_and_read(&dir, &bytes);
    }

    #[test]
    fn corrupted_valid_files_never_panic(
        which in 0usize..5,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let dir = TempDir::new("fuzz-corrupt");
        let mut bytes = valid_files().swap_remove(which);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        open_and_read(&dir, &bytes);
    }
}

#[test]
fn header_fields_of_the_wrong_type_are_errors() {
    let dir = TempDir::new("fuzz-fields");
    for header in [
        r#"{"activations":{"dtype":7,"shape":[1,1],"data_offsets":[0,4]}}"#,
        r#"{"activations":{"dtype":"F32","shape":[1,-1],"data_offsets":[0,4]}}"#,
        r#"{"activations":{"dtype":"F32","shape":[1,1],"data_offsets":[4,0]}}"#,
        r#"{"activations":{"dtype":"F32","shape":[1,1],"data_offsets":[0]}}"#,
        r#"{"activations":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
        r#"{"activations":3}"#,
        r#"[1,2]"#,
    ] {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let path = dir.join("h.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let err = ShardSet::open(&path, "activations").unwrap_err();
        assert!(err.to_string().contains("h.safetensors"), "{err}");
    }
}
