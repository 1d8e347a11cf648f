//! Memory-mapped activation shards and sets of them.

use std::fmt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dtype::{self, Dtype};
use crate::error::DataError;
use crate::{npy, safetensors};

/// The tensor name read from safetensors shards unless told otherwise.
pub const DEFAULT_TENSOR: &str = "activations";

/// Where an `[n, d]` tensor lies in a file.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub tensor: String,
    pub dtype: Dtype,
    pub rows: u64,
    pub d: usize,
    pub data_start: usize,
}

/// Finds and checks the `[n, d]` activations in a file's bytes (npy by magic, else
/// safetensors).
pub(crate) fn parse_layout(path: &Path, bytes: &[u8], tensor: &str) -> Result<Layout, DataError> {
    if npy::is_npy(bytes) {
        npy::parse_layout(path, bytes)
    } else {
        safetensors::parse_layout(path, bytes, tensor)
    }
}

/// One file of activations, an `[n, d]` tensor mapped into memory.
///
/// The file is memory-mapped: it must not be modified while the shard is open.
pub struct Shard {
    path: PathBuf,
    layout: Layout,
    map: Mmap,
}

impl fmt::Debug for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("tensor", &self.layout.tensor)
            .field("dtype", &self.layout.dtype)
            .field("rows", &self.layout.rows)
            .field("d", &self.layout.d)
            .finish()
    }
}

#[allow(unsafe_code)]
fn map_file(path: &Path) -> Result<Mmap, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    // SAFETY: the map is read-only and shards are documented as immutable while open; a file
    // truncated underneath us is the one hazard mmap readers cannot rule out.
    unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))
}

#[inline(always)]
#[allow(unsafe_code)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is only a hint; it never faults, reads nothing into the program
        // and the pointer comes from a live slice anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

impl Shard {
    /// Opens a `.safetensors` (tensor `tensor`) or `.npy` file and checks its header.
    ///
    /// The format is recognised by content, not by extension.
    pub fn open(path: impl AsRef<Path>, tensor: &str) -> Result<Self, DataError> {
        let path = path.as_ref().to_path_buf();
        let map = map_file(&path)?;
        let layout = parse_layout(&path, &map, tensor)?;
        Ok(Self { path, layout, map })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor read (`"array"` for `.npy`).
    pub fn tensor(&self) -> &str {
        &self.layout.tensor
    }

    /// Element type on disk.
    pub fn dtype(&self) -> Dtype {
        self.layout.dtype
    }

    /// Number of rows `n`.
    pub fn rows(&self) -> u64 {
        self.layout.rows
    }

    /// Activation width `d`.
    pub fn d(&self) -> usize {
        self.layout.d
    }

    /// Decodes rows `start..start + out.len() / d` into `out`, rejecting NaN and infinities
    /// with an error naming the row.
    ///
    /// # Panics
    /// If `out.len()` is not a multiple of `d` or the rows run past the end of the shard.
    pub fn read_rows(&self, start: u64, out: &mut [f32]) -> Result<(), DataError> {
        let d = self.layout.d;
        let count = (out.len() / d) as u64;
        assert!(
            out.len().is_multiple_of(d) && start + count <= self.layout.rows,
            "rows {start}..{} out of range for {} rows of width {d}",
            start + count,
            self.layout.rows
        );
        let size = self.layout.dtype.size();
        let begin = self.layout.data_start + start as usize * d * size;
        let bytes = &self.map[begin..begin + out.len() * size];
        self.decode_checked(start, bytes, out)
    }

    /// Decodes row `row` into `out` (`out.len() == d`), rejecting NaN and infinities.
    #[inline]
    pub(crate) fn decode_row(&self, row: u64, out: &mut [f32]) -> Result<(), DataError> {
        let size = self.layout.dtype.size();
        let row_bytes = self.layout.d * size;
        let begin = self.layout.data_start + row as usize * row_bytes;
        self.decode_checked(row, &self.map[begin..begin + row_bytes], out)
    }

    /// Decodes `bytes`, the rows from `start` on, into `out`; on a non-finite value, names it.
    #[inline]
    fn decode_checked(&self, start: u64, bytes: &[u8], out: &mut [f32]) -> Result<(), DataError> {
        if dtype::decode_scan(self.layout.dtype, bytes, out) {
            self.check_finite(start, out)
        } else {
            Ok(())
        }
    }

    /// Hints the CPU to start loading row `row`, so a shuffled gather overlaps its cache
    /// misses (about twice as fast on random rows).
    #[inline]
    pub(crate) fn prefetch_row(&self, row: u64) {
        let row_bytes = self.layout.d * self.layout.dtype.size();
        let begin = self.layout.data_start + row as usize * row_bytes;
        prefetch(&self.map[begin..begin + row_bytes]);
    }

    /// Checks that `values`, the decoded rows from `start` on, are finite.
    #[cold]
    fn check_finite(&self, start: u64, values: &[f32]) -> Result<(), DataError> {
        match dtype::first_non_finite(values) {
            None => Ok(()),
            Some(i) => Err(DataError::NonFinite {
                path: self.path.clone(),
                tensor: self.layout.tensor.clone(),
                row: start + (i / self.layout.d) as u64,
                column: i % self.layout.d,
                value: values[i],
            }),
        }
    }
}

/// A set of shards that agree on `d`, in a fixed (sorted) order.
#[derive(Debug)]
pub struct ShardSet {
    shards: Vec<Shard>,
    d: usize,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl ShardSet {
    /// Opens a file, every `.safetensors` / `.npy` file of a directory, or every file matching
    /// a glob pattern (`shards/*.safetensors`), sorted by path.
    pub fn open(source: impl AsRef<Path>, tensor: &str) -> Result<Self, DataError> {
        let source = source.as_ref();
        let text = source.to_string_lossy();
        let mut paths = Vec::new();
        if source.is_dir() {
            let entries = std::fs::read_dir(source).map_err(|e| DataError::io(source, e))?;
            for entry in entries {
                let path = entry.map_err(|e| DataError::io(source, e))?.path();
                let shard_like = path
                    .extension()
                    .is_some_and(|e| e == "safetensors" || e == "npy");
                if shard_like && path.is_file() {
                    paths.push(path);
                }
            }
        } else if !source.exists() && is_glob(&text) {
            let pattern =
                glob::glob(&text).map_err(|e| DataError::config(format!("glob {text}: {e}")))?;
            for path in pattern {
                let path = path.map_err(|e| {
                    let at = e.path().to_path_buf();
                    DataError::io(at, e.into())
                })?;
                if path.is_file() {
                    paths.push(path);
                }
            }
        } else {
            paths.push(source.to_path_buf());
        }
        if paths.is_empty() {
            return Err(DataError::Empty {
                what: format!("no .safetensors or .npy files at {}", source.display()),
            });
        }
        paths.sort();
        Self::from_paths(paths, tensor)
    }

    /// Opens the given files in the given order.
    pub fn from_paths(
        paths: impl IntoIterator<Item = impl AsRef<Path>>,
        tensor: &str,
    ) -> Result<Self, DataError> {
        let mut shards = Vec::new();
        for path in paths {
            let shard = Shard::open(path, tensor)?;
            if let Some(first) = shards.first() {
                let first: &Shard = first;
                if shard.d() != first.d() {
                    return Err(DataError::DimMismatch {
                        path: shard.path.clone(),
                        tensor: shard.layout.tensor.clone(),
                        expected: first.d(),
                        found: shard.d(),
                    });
                }
            }
            shards.push(shard);
        }
        let Some(d) = shards.first().map(Shard::d) else {
            return Err(DataError::Empty {
                what: "no shard files given".into(),
            });
        };
        let set = Self { shards, d };
        if set.rows() == 0 {
            return Err(DataError::Empty {
                what: format!(
                    "all {} shards have zero rows (first: {})",
                    set.shards.len(),
                    set.shards[0].path.display()
                ),
            });
        }
        Ok(set)
    }

    /// The shards, in order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Activation width `d`.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Total rows over all shards.
    pub fn rows(&self) -> u64 {
        self.shards.iter().map(Shard::rows).sum()
    }

    /// Decodes `count` rows spread evenly over the whole set (row-major, `count x d`), for
    /// estimating statistics such as the [`crate::Normalizer`] without reading everything.
    pub fn sample_rows(&self, count: usize) -> Result<Vec<f32>, DataError> {
        let total = self.rows();
        let count = (count as u64).min(total) as usize;
        let mut out = vec![0.0; count * self.d];
        for (i, row) in out.chunks_exact_mut(self.d).enumerate() {
            let mut global = (i as u128 * total as u128 / count as u128) as u64;
            for shard in &self.shards {
                if global < shard.rows() {
                    shard.read_rows(global, row)?;
                    break;
                }
                global -= shard.rows();
            }
        }
        Ok(out)
    }
}
