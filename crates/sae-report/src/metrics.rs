use std::io::{BufRead, BufReader};
use std::path::Path;

pub use sae_metrics::{EvalRecord, EvalReport, Record, SelectionMetrics, TrainRecord};

use crate::ReportError;

/// Reads a `metrics.jsonl` file; blank lines are skipped.
///
/// The records are `sae-metrics`' ([`Record`]), the schema the trainer writes.
///
/// # Errors
/// [`ReportError::Io`] if the file cannot be read, [`ReportError::Parse`] naming the 1-based
/// line of the first record that is not a valid train or eval line.
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Vec<Record>, ReportError> {
    let path = path.as_ref();
    let io = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut records = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let record = Record::parse(&line).map_err(|source| ReportError::Parse {
            path: path.to_path_buf(),
            line: index + 1,
            source,
        })?;
        records.push(record);
    }
    Ok(records)
}

/// The train lines of `records`, in file order.
pub fn train_records(records: &[Record]) -> impl Iterator<Item = &TrainRecord> {
    records.iter().filter_map(|r| match r {
        Record::Train(t) => Some(t),
        Record::Eval(_) => None,
    })
}

/// The eval lines of `records`, in file order.
pub fn eval_records(records: &[Record]) -> impl Iterator<Item = &EvalRecord> {
    records.iter().filter_map(|r| match r {
        Record::Eval(e) => Some(e.as_ref()),
        Record::Train(_) => None,
    })
}
