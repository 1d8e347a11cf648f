//! Shard readers never panic, whatever the bytes: they open and read, or return an error.
//! Every row of a file that opens is read, through every reader.

mod common;

use common::{TempDir, noise};
use proptest::prelude::*;
use std::sync::OnceLock;

use sae_data::{
    BatchSource, Dtype, ShardSet, ShardStream, StreamConfig, TensorRef, read_npy, read_safetensors,
    write_npy, write_safetensors,
};

/// Opens `bytes` as a shard and, if that succeeds, reads every row (singly and all at once),
/// samples it, fingerprints it and streams a few batches from it: nothing may panic.
fn open_and_read(dir: &TempDir, bytes: &[u8]) {
    let path = dir.join("case.bin");
    std::fs::write(&path, bytes).unwrap();
    let Ok(set) = ShardSet::open(&path, "activations") else {
        return;
    };
    for shard in set.shards() {
        let d = shard.d();
        let mut row = vec![0.0; d];
        for r in 0..shard.rows() {
            let _ = shard.read_rows(r, &mut row);
        }
        let mut all = vec![0.0; shard.rows() as usize * d];
        let _ = shard.read_rows(0, &mut all);
    }
    let _ = set.sample_rows(16);
    let _ = set.fingerprint();
    if let Ok(mut stream) = ShardStream::new(
        set,
        StreamConfig {
            shuffle_rows: 8,
            block_rows: 2,
            ..Default::default()
        },
    ) {
        let _ = stream.estimate_normalizer(8, true);
        let mut batch = Vec::new();
        for _ in 0..3 {
            let _ = stream.next_batch(5, &mut batch);
        }
    }
    let _ = read_safetensors(&path, "activations");
    let _ = read_npy(&path);
}

/// Valid shards of every format and dtype, and a safetensors file of several tensors.
fn valid_files() -> &'static [Vec<u8>] {
    static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(|| {
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
        let path = dir.join("several.safetensors");
        write_safetensors(
            &path,
            &[
                TensorRef::matrix("a_bias", 5, &data[..5]),
                TensorRef::matrix("activations", 5, &data),
                TensorRef {
                    name: "scale",
                    shape: vec![2, 1, 2],
                    data: &data[..4],
                },
            ],
            Dtype::F32,
        )
        .unwrap();
        files.push(std::fs::read(&path).unwrap());
        files
    })
}

/// Where a file's header ends: the JSON of safetensors, the dictionary of npy.
fn header_end(bytes: &[u8]) -> usize {
    if bytes.starts_with(b"\x93NUMPY") {
        10 + usize::from(u16::from_le_bytes([bytes[8], bytes[9]]))
    } else {
        8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

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
        which in 0usize..6,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let dir = TempDir::new("fuzz-corrupt");
        let mut bytes = valid_files()[which].clone();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        open_and_read(&dir, &bytes);
    }

    /// Edits aimed at the header's text: digits of shapes and offsets replaced, characters
    /// swapped for structural ones, the header cut or extended.
    #[test]
    fn header_edits_never_panic(
        which in 0usize..6,
        edits in prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                prop::sample::select(b"0123456789,[]{}:\"-e. ".to_vec()),
            ),
            1..6,
        ),
        cut in prop::option::of(any::<prop::sample::Index>()),
        extra in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let dir = TempDir::new("fuzz-header");
        let mut bytes = valid_files()[which].clone();
        let end = header_end(&bytes);
        let digits: Vec<usize> = (0..end).filter(|&i| bytes[i].is_ascii_digit()).collect();
        for (at, value) in edits {
            // Half the edits land on a digit, the others anywhere in the header.
            let i = if value.is_ascii_digit() && !digits.is_empty() {
                digits[at.index(digits.len())]
            } else {
                at.index(end)
            };
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        bytes.extend(extra);
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
