//! Checksums of the files of a checkpoint: `checksums.json` records each file's size and
//! XXH3-64 digest when the checkpoint is written, and every read verifies them first, so a
//! flipped bit or a truncated file is an error naming the file, never a silently different run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::write_atomic;

/// Name of the checksum file inside a checkpoint directory.
pub const CHECKSUM_FILE: &str = "checksums.json";

/// Size and digest of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Length in bytes.
    pub bytes: u64,
    /// XXH3-64 of the contents, as 16 hex digits.
    pub xxh3: String,
}

/// The checksums of a directory's files, by file name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// File name -> size and digest.
    pub files: BTreeMap<String, FileSum>,
}

impl Manifest {
    /// Computes the checksums of `names` in `dir` and writes them to `dir/checksums.json`.
    pub fn write(dir: &Path, names: &[&str]) -> Result<Self, TrainError> {
        let mut files = BTreeMap::new();
        for name in names {
            files.insert((*name).to_string(), file_sum(&dir.join(name))?);
        }
        let manifest = Self { files };
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        write_atomic(&dir.join(CHECKSUM_FILE), &json)?;
        Ok(manifest)
    }

    /// Reads `dir/checksums.json`; `None` when the directory has none.
    pub fn read(dir: &Path) -> Result<Option<Self>, TrainError> {
        let path = dir.join(CHECKSUM_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(TrainError::Io { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| TrainError::Checkpoint {
                path,
                reason: format!("unreadable checksum file: {e}"),
            })
    }

    /// Checks every recorded file of `dir` against its size and digest.
    pub fn verify(&self, dir: &Path) -> Result<(), TrainError> {
        for (name, want) in &self.files {
            let path = dir.join(name);
            let got = file_sum(&path)?;
            if got.bytes != want.bytes {
                return Err(TrainError::Checkpoint {
                    path,
                    reason: format!(
                        "corrupt: {} bytes on disk, {} recorded when it was written",
                        got.bytes, want.bytes
                    ),
                });
            }
            if got.xxh3 != want.xxh3 {
                return Err(TrainError::Checkpoint {
                    path,
                    reason: format!(
                        "corrupt: checksum {} does not match the {} recorded when it was written",
                        got.xxh3, want.xxh3
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Size and XXH3-64 digest of a file, read in 1 MiB blocks.
pub fn file_sum(path: &Path) -> Result<FileSum, TrainError> {
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileSum {
        bytes,
        xxh3: format!("{:016x}", hasher.digest()),
    })
}
