//! The JSON-lines metrics file of a run.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// `"train"` (a logging interval) or `"eval"` (held-out evaluation).
    pub kind: String,
    /// Optimizer steps taken.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Named values (loss, fvu, l0, dead fraction, ...).
    #[serde(flatten)]
    pub values: serde_json::Map<String, serde_json::Value>,
}

/// Appends records to a run's `metrics.jsonl`, one flushed line each.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending. When resuming from `step`, lines of later steps (written
    /// after that checkpoint by the interrupted run) are dropped first, so the file reads as
    /// one uninterrupted run.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self, TrainError> {
        let io = |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        match resume_step {
            Some(step) if path.exists() => {
                let kept: Vec<String> = read_records(path)?
                    .into_iter()
                    .filter(|r| r.step <= step)
                    .map(|r| serde_json::to_string(&r).expect("records serialise"))
                    .collect();
                let text = kept.iter().map(|l| format!("{l}\n")).collect::<String>();
                crate::checkpoint::write_atomic(path, text.as_bytes())?;
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
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &MetricsRecord) -> Result<(), TrainError> {
        let line = serde_json::to_string(record).expect("records serialise");
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

/// Reads every record of a metrics file.
pub fn read_records(path: &Path) -> Result<Vec<MetricsRecord>, TrainError> {
    let file = File::open(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut records = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        records.push(
            serde_json::from_str(&line).map_err(|e| TrainError::Metrics {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })?,
        );
    }
    Ok(records)
}
