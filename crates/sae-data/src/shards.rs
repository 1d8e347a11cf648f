//! Memory-mapped activation shards and sets of them.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dtype::{self, Dtype};
use crate::error::DataError;
use crate::layout::Layout;
use crate::{npy, safetensors};

/// The tensor name read from safetensors shards unless told otherwise.
pub const DEFAULT_TENSOR: &str = "activations";

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
/// The file is memory-mapped: it must not be modified while the shard is open. A file cut
/// short while open is noticed before rows are read (one `fstat` a read) and reported as
/// [`DataError::Shrunk`] instead of faulting on the vanished pages; a cut racing that check
/// cannot be ruled out.
pub struct Shard {
    path: PathBuf,
    layout: Layout,
    map: Mmap,
    /// The mapped file, kept open to measure its length before reads.
    file: File,
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
fn map_file(path: &Path) -> Result<(File, Mmap), DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    // SAFETY: the map is read-only and shards are documented as immutable while open; a file
    // truncated underneath us is the one hazard mmap readers cannot rule out, and reads check
    // the file's length first (`Shard::ensure_rows`) to narrow it to a race.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
    Ok((file, map))
}

impl Shard {
    /// Opens a `.safetensors` (tensor `tensor`) or `.npy` file and checks its header.
    ///
    /// The format is recognised by content, not by extension.
    pub fn open(path: impl AsRef<Path>, tensor: &str) -> Result<Self, DataError> {
        let path = path.as_ref().to_path_buf();
        let (file, map) = map_file(&path)?;
        let layout = parse_layout(&path, &map, tensor)?;
        Ok(Self {
            path,
            layout,
            map,
            file,
        })
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
    /// Fails with [`DataError::Shrunk`] if the file has been cut short since it was opened.
    ///
    /// # Panics
    /// If `out.len()` is not a multiple of `d` or the rows run past the end of the shard.
    pub fn read_rows(&self, start: u64, out: &mut [f32]) -> Result<(), DataError> {
        let d = self.layout.d;
        let count = (out.len() / d) as u64;
        assert!(
            out.len().is_multiple_of(d)
                && start
                    .checked_add(count)
                    .is_some_and(|end| end <= self.layout.rows),
            "rows {start}..{} out of range for {} rows of width {d}",
            start.saturating_add(count),
            self.layout.rows
        );
        if count == 0 {
            return Ok(());
        }
        self.ensure_rows(start, start + count)?;
        let size = self.layout.dtype.size();
        let begin = self.layout.data_start + start as usize * d * size;
        let bytes = &self.map[begin..begin + out.len() * size];
        self.decode_checked(start, bytes, out)
    }

    /// Bytes of one row on disk.
    #[inline]
    fn row_bytes(&self) -> u64 {
        (self.layout.d * self.layout.dtype.size()) as u64
    }

    /// Checks that the file still holds rows `first..end` (`first < end <= rows`): one `fstat`.
    ///
    /// The rows lie in memory-mapped pages, and touching a page that a truncation removed
    /// raises SIGBUS; this turns the common case (a file cut before the read) into an error.
    pub(crate) fn ensure_rows(&self, first: u64, end: u64) -> Result<(), DataError> {
        let needed = self.layout.data_start as u64 + end * self.row_bytes();
        self.ensure_len(needed, first)
    }

    /// Checks that the file still holds at least `needed` bytes; `row` is the first row the
    /// caller is about to read, reported (or the first row past the end, if later) on failure.
    fn ensure_len(&self, needed: u64, row: u64) -> Result<(), DataError> {
        let actual = self
            .file
            .metadata()
            .map_err(|e| DataError::io(&self.path, e))?
            .len();
        if actual >= needed {
            return Ok(());
        }
        let whole_rows = actual.saturating_sub(self.layout.data_start as u64) / self.row_bytes();
        Err(DataError::Shrunk {
            path: self.path.clone(),
            tensor: self.layout.tensor.clone(),
            row: row.max(whole_rows),
            needed,
            actual,
        })
    }

    /// Size of the file as it was mapped.
    pub(crate) fn mapped_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// The file's header bytes (everything before the data section), after checking that the
    /// file still holds them.
    pub(crate) fn header_bytes(&self) -> Result<&[u8], DataError> {
        self.ensure_len(self.layout.header_len as u64, 0)?;
        Ok(&self.map[..self.layout.header_len])
    }

    /// The stored bytes of row `row`, unchecked: call [`Shard::ensure_rows`] first.
    pub(crate) fn raw_row(&self, row: u64) -> &[u8] {
        let row_bytes = self.row_bytes() as usize;
        let begin = self.layout.data_start + row as usize * row_bytes;
        &self.map[begin..begin + row_bytes]
    }

    /// Decodes row `row` into `out` (`out.len() == d`), rejecting NaN and infinities.
    ///
    /// Does not check the file's length: callers check a batch's rows first with
    /// [`Shard::ensure_rows`].
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
        sae_simd::prefetch(&self.map[begin..begin + row_bytes]);
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
    ///
    /// Fails with [`DataError::ZeroNorm`], naming the file, if every sampled row is zero: no
    /// statistic can be estimated from such a sample, and the file is most likely broken.
    pub fn sample_rows(&self, count: usize) -> Result<Vec<f32>, DataError> {
        let total = self.rows();
        let count = (count as u64).min(total) as usize;
        let mut ids = Vec::with_capacity(count);
        let mut shard = 0;
        let mut shard_start = 0u64;
        for i in 0..count {
            let global = (i as u128 * total as u128 / count as u128) as u64;
            while global >= shard_start + self.shards[shard].rows() {
                shard_start += self.shards[shard].rows();
                shard += 1;
            }
            ids.push((shard as u32, global - shard_start));
        }
        let mut out = vec![0.0; count * self.d];
        for (row, &(s, r)) in out.chunks_exact_mut(self.d).zip(&ids) {
            self.shards[s as usize].read_rows(r, row)?;
        }
        check_spread(self, &ids, &out, false)?;
        Ok(out)
    }
}

/// Fails with [`DataError::ZeroNorm`] when the rows `ids` of `set`, decoded into `sample`, are
/// all zero (with `center`: all equal, so zero after centring), naming the first file they
/// come from. An empty sample passes: there is nothing to blame a file for.
pub(crate) fn check_spread(
    set: &ShardSet,
    ids: &[(u32, u64)],
    sample: &[f32],
    center: bool,
) -> Result<(), DataError> {
    let d = set.d;
    let Some(first) = sample.get(..d) else {
        return Ok(());
    };
    let degenerate = if center {
        sample.chunks_exact(d).all(|row| row == first)
    } else {
        sample.iter().all(|&x| x == 0.0)
    };
    if !degenerate {
        return Ok(());
    }
    let (s, first_row) = ids[0];
    let rows = ids.iter().filter(|&&(t, _)| t == s).count() as u64;
    let mut files: Vec<u32> = ids.iter().map(|&(t, _)| t).collect();
    files.sort_unstable();
    files.dedup();
    let what = if center { "all equal" } else { "all zero" };
    let detail = match files.len() - 1 {
        0 => what.to_owned(),
        1 => format!("{what}, as are those sampled from 1 other file"),
        n => format!("{what}, as are those sampled from {n} other files"),
    };
    let shard = &set.shards[s as usize];
    Err(DataError::ZeroNorm {
        path: shard.path.clone(),
        tensor: shard.layout.tensor.clone(),
        rows,
        first_row,
        detail,
    })
}

/// Checks, with one `fstat` per shard touched, that the files still hold the rows `ids`
/// (shard, row) about to be read from their memory maps. `extent` is scratch space, reused
/// between calls to spare an allocation.
pub(crate) fn ensure_mapped(
    set: &ShardSet,
    ids: &[(u32, u64)],
    extent: &mut Vec<(u64, u64)>,
) -> Result<(), DataError> {
    // Per shard: (first row read, one past the last row read); (u64::MAX, 0) if untouched.
    extent.clear();
    extent.resize(set.shards.len(), (u64::MAX, 0));
    for &(s, r) in ids {
        let e = &mut extent[s as usize];
        e.0 = e.0.min(r);
        e.1 = e.1.max(r + 1);
    }
    for (shard, &(first, end)) in set.shards.iter().zip(extent.iter()) {
        if end > 0 {
            shard.ensure_rows(first, end)?;
        }
    }
    Ok(())
}
