//! Fingerprints of shard files, to tell whether a resumed run reads the data it started on.

use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::error::DataError;
use crate::shards::{Shard, ShardSet};

/// Rows at evenly spaced positions whose bytes enter a file's sample digest (the last row is
/// added to them).
pub const FINGERPRINT_ROWS: u64 = 64;

/// What identifies the files of a [`ShardSet`] cheaply: per file, its size, its header and a
/// sample of its rows.
///
/// Taking one reads the headers and [`FINGERPRINT_ROWS`] + 1 rows of each file, not the data
/// as a whole: an edit of a sampled row, of a header or of a file's length is always caught,
/// an edit of other values only when it touches a sampled row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// The shard files, in the set's order.
    pub files: Vec<FileFingerprint>,
}

/// The fingerprint of one shard file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFingerprint {
    /// The file's path as the set was opened with it.
    pub path: String,
    /// The file's length in bytes when the set was opened.
    pub size: u64,
    /// XXH3-64 of the header bytes (safetensors length prefix and JSON; npy preamble and
    /// dictionary), 16 hex digits.
    pub header_digest: String,
    /// XXH3-64 of the sampled rows' indices and stored bytes, 16 hex digits.
    pub sample_digest: String,
}

fn hex(digest: u64) -> String {
    format!("{digest:016x}")
}

/// The rows whose bytes enter the sample digest of a shard of `rows` rows: evenly spaced from
/// the first, plus the last; ascending, without repeats.
fn sampled_rows(rows: u64) -> Vec<u64> {
    if rows == 0 {
        return Vec::new();
    }
    let mut picked: Vec<u64> = (0..FINGERPRINT_ROWS)
        .map(|i| (u128::from(i) * u128::from(rows) / u128::from(FINGERPRINT_ROWS)) as u64)
        .chain([rows - 1])
        .collect();
    picked.sort_unstable();
    picked.dedup();
    picked
}

impl FileFingerprint {
    /// Fingerprints one open shard.
    pub(crate) fn of(shard: &Shard) -> Result<Self, DataError> {
        let header_digest = hex(xxh3_64(shard.header_bytes()?));
        let rows = sampled_rows(shard.rows());
        let mut hasher = Xxh3::new();
        hasher.update(&shard.rows().to_le_bytes());
        if let (Some(&first), Some(&last)) = (rows.first(), rows.last()) {
            shard.ensure_rows(first, last + 1)?;
            for &row in &rows {
                hasher.update(&row.to_le_bytes());
                hasher.update(shard.raw_row(row));
            }
        }
        Ok(Self {
            path: shard.path().to_string_lossy().into_owned(),
            size: shard.mapped_len(),
            header_digest,
            sample_digest: hex(hasher.digest()),
        })
    }

    /// The last component of the path: what files are matched by, so that moving the whole
    /// set elsewhere is not a change.
    fn name(&self) -> &str {
        Path::new(&self.path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(&self.path)
    }
}

impl DataFingerprint {
    /// Describes the first difference between `self` (taken earlier) and `current`, naming the
    /// file: one added, removed or renamed, or one whose size, header or sampled rows changed.
    /// `None` when they agree.
    ///
    /// Files are matched by position and file name (the last path component), so the same
    /// files reached through another directory agree.
    pub fn mismatch(&self, current: &DataFingerprint) -> Option<String> {
        let (then, now) = (&self.files, &current.files);
        for i in 0..then.len().max(now.len()) {
            let (a, b) = match (then.get(i), now.get(i)) {
                (Some(a), Some(b)) => (a, b),
                (Some(a), None) => {
                    return Some(format!(
                        "{}: file removed ({} files now, {} before)",
                        a.path,
                        now.len(),
                        then.len()
                    ));
                }
                (None, Some(b)) => {
                    return Some(format!(
                        "{}: file added ({} files now, {} before)",
                        b.path,
                        now.len(),
                        then.len()
                    ));
                }
                (None, None) => unreachable!("i is below the longer length"),
            };
            if a.name() != b.name() {
                let later = |files: &[FileFingerprint], name: &str| {
                    files[i..].iter().any(|f| f.name() == name)
                };
                return Some(if later(now, a.name()) {
                    format!("{}: file added (before {})", b.path, a.path)
                } else if later(then, b.name()) {
                    format!("{}: file removed", a.path)
                } else {
                    format!("{}: file replaced by {}", a.path, b.path)
                });
            }
            if a.size != b.size {
                return Some(format!(
                    "{}: size changed from {} to {} bytes",
                    b.path, a.size, b.size
                ));
            }
            if a.header_digest != b.header_digest {
                return Some(format!(
                    "{}: header changed (digest {} before, {} now)",
                    b.path, a.header_digest, b.header_digest
                ));
            }
            if a.sample_digest != b.sample_digest {
                return Some(format!(
                    "{}: sampled rows changed (digest {} before, {} now)",
                    b.path, a.sample_digest, b.sample_digest
                ));
            }
        }
        None
    }
}

impl ShardSet {
    /// The fingerprint of every file of the set, in order; see [`DataFingerprint`].
    ///
    /// Reads each file's header and [`FINGERPRINT_ROWS`] + 1 of its rows.
    pub fn fingerprint(&self) -> Result<DataFingerprint, DataError> {
        let files = self
            .shards()
            .iter()
            .map(FileFingerprint::of)
            .collect::<Result<_, _>>()?;
        Ok(DataFingerprint { files })
    }
}
