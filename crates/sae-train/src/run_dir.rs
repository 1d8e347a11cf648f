//! A run directory held by one process: an OS lock, and the rule that a run is never
//! overwritten without being asked.
//!
//! `<out_dir>/run.lock` is locked exclusively (`flock` on Unix, `LockFileEx` on Windows) for as
//! long as a [`RunDir`] lives, and holds the PID of its owner. The operating system releases the
//! lock when the process exits or crashes, so a stale lock file never blocks a later run.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::TrainError;

/// The lock file of a run directory.
pub const LOCK_FILE: &str = "run.lock";

/// What a training run writes into its directory. `--overwrite` removes exactly these (and
/// nothing else a user may keep beside them).
pub const RUN_ARTEFACTS: [&str; 5] = [
    "config.toml",
    "metrics.jsonl",
    "checkpoints",
    "model",
    "report",
];

/// How a run takes its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A new run: refused when the directory already holds a run.
    Fresh,
    /// A new run that first removes the run the directory holds.
    Overwrite,
    /// Continue the run the directory holds.
    Resume,
}

/// A locked run directory.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// Held open for the lock; the OS releases it with the file.
    _lock: File,
}

impl RunDir {
    /// Creates (if needed) and locks `path`, then applies `claim`: a fresh run is refused when
    /// `path` already holds a run, an overwrite removes that run first.
    pub fn claim(path: &Path, claim: Claim) -> Result<Self, TrainError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TrainError::Io { path, source }
        };
        fs::create_dir_all(path).map_err(io(path))?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                return Err(TrainError::RunDirInUse {
                    dir: path.to_path_buf(),
                    holder: holder.trim().parse().ok(),
                });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(TrainError::Io {
                    path: lock_path,
                    source,
                });
            }
        }
        lock.set_len(0)
            .and_then(|()| lock.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(lock, "{}", std::process::id()))
            .and_then(|()| lock.flush())
            .map_err(io(&lock_path))?;
        let found = existing_artefacts(path);
        match claim {
            Claim::Fresh if !found.is_empty() => {
                return Err(TrainError::RunDirTaken {
                    dir: path.to_path_buf(),
                    found,
                });
            }
            Claim::Overwrite => {
                for name in found {
                    let p = path.join(name);
                    if p.is_dir() {
                        fs::remove_dir_all(&p).map_err(io(&p))?;
                    } else {
                        fs::remove_file(&p).map_err(io(&p))?;
                    }
                }
            }
            Claim::Fresh | Claim::Resume => {}
        }
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The run artefacts present in `dir`.
fn existing_artefacts(dir: &Path) -> Vec<&'static str> {
    RUN_ARTEFACTS
        .into_iter()
        .filter(|name| dir.join(name).exists())
        .collect()
}
