//! The JSON-lines metrics file of a run: appending [`Record`]s (their schema is `sae-metrics`'),
//! and cutting the file back to a checkpoint on resume.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use sae_metrics::{EvalRecord, Record, TrainRecord};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Sums over the steps of a logging window not yet written (kept in checkpoints, so a
/// resumed run's lines equal an uninterrupted run's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogWindow {
    /// Steps in the window.
    pub steps: u32,
    /// Sum of the steps' total losses.
    pub loss: f64,
    /// Sum of the steps' FVUs.
    pub fvu: f64,
    /// Sum of the steps' auxiliary losses.
    pub aux: f64,
    /// Sum of the steps' mean L0s.
    pub l0: f64,
}

/// Appends records to a run's `metrics.jsonl`, one flushed line each.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    len: u64,
}

/// Where a resumed run's metrics file continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// The checkpoint's step: lines of later steps were written after it.
    pub step: u64,
    /// The file's length in bytes when the checkpoint was written (`None` for checkpoints
    /// that predate this record).
    pub len: Option<u64>,
}

impl MetricsLog {
    /// Opens `path` for appending. A new run (`resume: None`) starts an empty file. When
    /// resuming, the file is cut back to what it held when the checkpoint was written (its
    /// recorded length, or else the lines up to the checkpoint's step), so it reads as one
    /// uninterrupted run; a torn last line (a write cut short by a kill) is dropped.
    pub fn open(path: &Path, resume: Option<ResumePoint>) -> Result<Self, TrainError> {
        let io = |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        match resume {
            Some(at) if path.exists() => {
                let on_disk = std::fs::metadata(path).map_err(io)?.len();
                match at.len {
                    Some(len) if len <= on_disk => {
                        let file = OpenOptions::new().write(true).open(path).map_err(io)?;
                        file.set_len(len)
                            .and_then(|()| file.sync_all())
                            .map_err(io)?;
                    }
                    _ => {
                        let kept: String = read_records_repairing(path)?
                            .into_iter()
                            .filter(|r| r.step() <= at.step)
                            .map(|r| r.to_line())
                            .collect();
                        crate::checkpoint::write_atomic(path, kept.as_bytes())?;
                    }
                }
            }
            Some(_) => {}
            None => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                File::create(path).map_err(io)?;
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &Record) -> Result<(), TrainError> {
        let line = record.to_line();
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Bytes written so far (what a checkpoint records).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reads every record, dropping a torn last line (no final newline and not valid JSON).
fn read_records_repairing(path: &Path) -> Result<Vec<Record>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let complete = match text.rfind('\n') {
        Some(i) if !text.ends_with('\n') => {
            let tail = &text[i + 1..];
            if Record::parse(tail).is_ok() {
                &text[..]
            } else {
                &text[..=i]
            }
        }
        None if !text.is_empty() && Record::parse(&text).is_err() => "",
        _ => &text[..],
    };
    parse_records(path, complete)
}

/// Reads every record of a metrics file.
pub fn read_records(path: &Path) -> Result<Vec<Record>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_records(path, &text)
}

fn parse_records(path: &Path, text: &str) -> Result<Vec<Record>, TrainError> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        records.push(Record::parse(line).map_err(|e| TrainError::Metrics {
            path: path.to_path_buf(),
            line: i + 1,
            reason: e.to_string(),
        })?);
    }
    Ok(records)
}
