//! Data fingerprints: equal for the same files, different (naming the file) after an edit.

mod common;

use std::path::{Path, PathBuf};

use common::{TempDir, noise};
use sae_data::{
    DataFingerprint, Dtype, FINGERPRINT_ROWS, ShardSet, TensorRef, write_npy, write_safetensors,
};

const D: usize = 8;

fn write(dir: &TempDir, name: &str, values: &[f32]) -> PathBuf {
    let path = dir.join(name);
    if name.ends_with(".npy") {
        write_npy(&path, &[values.len() / D, D], values, Dtype::F32).unwrap();
    } else {
        write_safetensors(
            &path,
            &[TensorRef::matrix("activations", D, values)],
            Dtype::F32,
        )
        .unwrap();
    }
    path
}

fn fingerprint(source: &Path) -> DataFingerprint {
    ShardSet::open(source, "activations")
        .unwrap()
        .fingerprint()
        .unwrap()
}

/// Three shards; returns the directory and each file's values.
fn dataset(dir: &TempDir) -> Vec<(String, Vec<f32>)> {
    let files = vec![
        ("a.safetensors".to_owned(), noise(1000 * D, 1)),
        ("b.npy".to_owned(), noise(300 * D, 2)),
        ("c.safetensors".to_owned(), noise(5 * D, 3)),
    ];
    for (name, values) in &files {
        write(dir, name, values);
    }
    files
}

#[test]
fn the_same_files_give_the_same_fingerprint() {
    let dir = TempDir::new("fp-same");
    dataset(&dir);
    let a = fingerprint(dir.path());
    let b = fingerprint(dir.path());
    assert_eq!(a, b);
    assert_eq!(a.mismatch(&b), None);
    assert_eq!(a.files.len(), 3);
    assert!(a.files[1].path.ends_with("b.npy"));
    assert_eq!(
        a.files[0].size,
        std::fs::metadata(dir.join("a.safetensors")).unwrap().len()
    );

    // Serialises and compares equal after a round trip.
    let json = serde_json::to_string(&a).unwrap();
    let back: DataFingerprint = serde_json::from_str(&json).unwrap();
    assert_eq!(back.mismatch(&a), None);

    // The same files in another directory agree.
    let other = TempDir::new("fp-same-moved");
    dataset(&other);
    assert_eq!(a.mismatch(&fingerprint(other.path())), None);
}

#[test]
fn a_changed_sampled_value_is_named() {
    let dir = TempDir::new("fp-value");
    let files = dataset(&dir);
    let before = fingerprint(dir.path());
    // Row 1000 * 5 / 64 = 78 of a.safetensors is sampled, and so is the last row of b.npy.
    for (name, row) in [
        ("a.safetensors", 1000 * 5 / FINGERPRINT_ROWS as usize),
        ("b.npy", 299),
    ] {
        let (_, values) = files.iter().find(|(n, _)| n == name).unwrap();
        let mut edited = values.clone();
        edited[row * D + 3] += 0.5;
        write(&dir, name, &edited);
        let reason = before
            .mismatch(&fingerprint(dir.path()))
            .expect("an edit of a sampled row is seen");
        assert!(
            reason.contains(name) && reason.contains("sampled rows"),
            "{reason}"
        );
        write(&dir, name, values);
        assert_eq!(before.mismatch(&fingerprint(dir.path())), None);
    }
}

#[test]
fn header_size_and_file_changes_are_named() {
    let dir = TempDir::new("fp-files");
    let files = dataset(&dir);
    let before = fingerprint(dir.path());

    // Fewer rows: the size changes.
    write(&dir, "b.npy", &files[1].1[..299 * D]);
    let reason = before.mismatch(&fingerprint(dir.path())).unwrap();
    assert!(
        reason.contains("b.npy") && reason.contains("size"),
        "{reason}"
    );
    write(&dir, "b.npy", &files[1].1);

    // A removed file.
    std::fs::remove_file(dir.join("b.npy")).unwrap();
    let now = fingerprint(dir.path());
    let reason = before.mismatch(&now).unwrap();
    assert!(
        reason.contains("b.npy") && reason.contains("removed"),
        "{reason}"
    );
    // And the other way round: an added file.
    let reason = now.mismatch(&before).unwrap();
    assert!(
        reason.contains("b.npy") && reason.contains("added"),
        "{reason}"
    );

    // A file added at the end.
    write(&dir, "b.npy", &files[1].1);
    write(&dir, "d.npy", &noise(4 * D, 4));
    let reason = before.mismatch(&fingerprint(dir.path())).unwrap();
    assert!(
        reason.contains("d.npy") && reason.contains("added"),
        "{reason}"
    );
    std::fs::remove_file(dir.join("d.npy")).unwrap();

    // A renamed file.
    std::fs::rename(dir.join("c.safetensors"), dir.join("e.safetensors")).unwrap();
    let reason = before.mismatch(&fingerprint(dir.path())).unwrap();
    assert!(
        reason.contains("c.safetensors") && reason.contains("e.safetensors"),
        "{reason}"
    );
}

#[test]
fn a_changed_header_of_the_same_size_is_named() {
    let dir = TempDir::new("fp-header");
    let values = noise(20 * D, 5);
    let path = dir.join("h.safetensors");
    write_safetensors(
        &path,
        &[
            TensorRef::matrix("activations", D, &values),
            TensorRef::matrix("zz", D, &values[..D]),
        ],
        Dtype::F32,
    )
    .unwrap();
    let before = fingerprint(&path);
    // Rename the other tensor: same header length, same rows.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"\"zz\"")
        .expect("tensor name in header");
    bytes[at + 1..at + 3].copy_from_slice(b"yy");
    std::fs::write(&path, &bytes).unwrap();
    let reason = before.mismatch(&fingerprint(&path)).unwrap();
    assert!(
        reason.contains("h.safetensors") && reason.contains("header"),
        "{reason}"
    );
}
