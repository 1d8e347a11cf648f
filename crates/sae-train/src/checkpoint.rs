//! Atomic, rotating checkpoint directories.
//!
//! A checkpoint is a directory `step-<n>` under `<out_dir>/checkpoints`. It is written into a
//! temporary sibling, every file is synced, and only then renamed into place, so a crash or a
//! full disk leaves either the complete new checkpoint or none of it, and the older ones
//! untouched.

use std::fs;
use std::path::{Path, PathBuf};

use crate::TrainError;

const PREFIX: &str = "step-";
const TMP_SUFFIX: &str = ".partial";
const CORRUPT_SUFFIX: &str = ".corrupt";
const REPLACED_SUFFIX: &str = ".replaced";

/// The checkpoint directory of a run.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    root: PathBuf,
    keep: usize,
}

impl Checkpoints {
    /// Checkpoints under `out_dir/checkpoints`, keeping the newest `keep` (at least 1).
    pub fn new(out_dir: &Path, keep: usize) -> Self {
        Self {
            root: out_dir.join("checkpoints"),
            keep: keep.max(1),
        }
    }

    /// Where checkpoints live.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes checkpoint `step`: `write` fills a fresh temporary directory, which is then
    /// synced and renamed into place; older checkpoints beyond `keep` are removed afterwards.
    /// On error the temporary directory is removed and existing checkpoints are untouched.
    pub fn save(
        &self,
        step: u64,
        write: impl FnOnce(&Path) -> Result<(), TrainError>,
    ) -> Result<PathBuf, TrainError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TrainError::Io { path, source }
        };
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let name = format!("{PREFIX}{step:012}");
        let final_dir = self.root.join(&name);
        let tmp = self.root.join(format!("{name}{TMP_SUFFIX}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        fs::create_dir(&tmp).map_err(io(&tmp))?;
        let written = write(&tmp).and_then(|()| sync_dir_contents(&tmp));
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // Re-saving a step (after a resume, or a stop right after a periodic checkpoint)
        // replaces it without a moment where no checkpoint of that step exists: the old one is
        // renamed aside first (out of the list) and removed once the new one is in place.
        let replaced = self.root.join(format!("{name}{REPLACED_SUFFIX}"));
        let replacing = final_dir.exists();
        if replacing {
            if replaced.exists() {
                fs::remove_dir_all(&replaced).map_err(io(&replaced))?;
            }
            fs::rename(&final_dir, &replaced).map_err(io(&final_dir))?;
        }
        fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        sync_dir(&self.root)?;
        if replacing {
            fs::remove_dir_all(&replaced).map_err(io(&replaced))?;
        }
        self.prune()?;
        Ok(final_dir)
    }

    /// Completed checkpoints, oldest first, as (step, directory).
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, TrainError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(TrainError::Io {
                    path: self.root.clone(),
                    source,
                });
            }
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| TrainError::Io {
                path: self.root.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(step) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|n| n.parse().ok())
            else {
                continue; // temporary or foreign entries
            };
            found.push((step, entry.path()));
        }
        found.sort();
        Ok(found)
    }

    /// Renames a checkpoint that failed verification to `<name>.corrupt`, out of the list (it
    /// is kept for inspection, never read again nor pruned).
    pub fn set_aside(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(CORRUPT_SUFFIX);
        let to = dir.with_file_name(name);
        fs::rename(dir, &to).map_err(|source| TrainError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(to)
    }

    /// The newest completed checkpoint, if any.
    pub fn latest(&self) -> Result<Option<(u64, PathBuf)>, TrainError> {
        Ok(self.list()?.pop())
    }

    /// Removes checkpoints beyond the newest `keep`, and leftovers of writes and
    /// replacements a killed process left behind (the run directory's lock guarantees no
    /// other process is writing one). Checkpoints set aside as corrupt are kept.
    fn prune(&self) -> Result<(), TrainError> {
        let all = self.list()?;
        let old = all[..all.len().saturating_sub(self.keep)]
            .iter()
            .map(|(_, dir)| dir.clone());
        let leftovers = fs::read_dir(&self.root)
            .map_err(|source| TrainError::Io {
                path: self.root.clone(),
                source,
            })?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(PREFIX)
                        && (n.ends_with(TMP_SUFFIX) || n.ends_with(REPLACED_SUFFIX))
                })
            })
            .collect::<Vec<_>>();
        for dir in old.chain(leftovers) {
            fs::remove_dir_all(&dir).map_err(|source| TrainError::Io { path: dir, source })?;
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically: a temporary sibling, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!(
        "{}{TMP_SUFFIX}",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let result = (|| {
        use std::io::Write;
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn sync_dir_contents(dir: &Path) -> Result<(), TrainError> {
    let io = |source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() {
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|source| TrainError::Io {
                    path: path.clone(),
                    source,
                })?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), TrainError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| TrainError::Io {
            path: dir.to_path_buf(),
            source,
        })
}
