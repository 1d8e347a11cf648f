//! What the file formats share: where a tensor lies in a file, and writing a file's bytes.
//!
//! `npy` and `safetensors` each parse their own header into a [`Layout`]; `shards` maps files
//! and picks the parser. Neither format module knows the other or the shard set.

use std::io::Write;
use std::path::Path;

use crate::dtype::Dtype;
use crate::error::DataError;

/// Where an `[n, d]` tensor lies in a file.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub tensor: String,
    pub dtype: Dtype,
    pub rows: u64,
    pub d: usize,
    /// Bytes before the data section (safetensors length prefix and JSON, npy preamble and
    /// dictionary).
    pub header_len: usize,
    /// Where the tensor's first row starts.
    pub data_start: usize,
}

/// Writes `bytes` to `path`, naming the file in any error.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let mut file = std::fs::File::create(path).map_err(|e| DataError::io(path, e))?;
    file.write_all(bytes).map_err(|e| DataError::io(path, e))
}
