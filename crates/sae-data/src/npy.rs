//! NumPy `.npy` files: magic, version, a Python-literal header dictionary, then the data.

use std::path::Path;

use crate::dtype::{self, Dtype};
use crate::error::DataError;
use crate::layout::{Layout, write_file};

const MAGIC: &[u8] = b"\x93NUMPY";

/// The tensor name `.npy` files are reported under (they hold one unnamed array).
pub const NPY_TENSOR: &str = "array";

/// Whether `bytes` start like an `.npy` file.
pub(crate) fn is_npy(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Parsed header: dtype, shape, offset of the data.
struct Header {
    dtype: Dtype,
    shape: Vec<u64>,
    data_start: u64,
}

/// The text after `'key':` in a header dictionary.
fn value_of<'h>(dict: &'h str, key: &str) -> Option<&'h str> {
    let at = dict
        .find(&format!("'{key}'"))
        .or_else(|| dict.find(&format!("\"{key}\"")))?;
    let rest = dict[at + key.len() + 2..].trim_start();
    Some(rest.strip_prefix(':')?.trim_start())
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header, DataError> {
    let bad = |reason: String| DataError::corrupt(path, reason);
    if !is_npy(bytes) {
        return Err(bad("missing the \\x93NUMPY magic".into()));
    }
    if bytes.len() < 10 {
        return Err(bad(format!(
            "{} bytes, shorter than an npy preamble",
            bytes.len()
        )));
    }
    let (header_len, dict_start) = match bytes[6] {
        1 => (u64::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10u64),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad(format!(
                    "{} bytes, shorter than an npy preamble",
                    bytes.len()
                )));
            }
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (u64::from(len), 12u64)
        }
        v => return Err(bad(format!("unknown npy format version {v}"))),
    };
    let data_start = dict_start + header_len;
    if data_start > bytes.len() as u64 {
        return Err(bad(format!(
            "header length {header_len} exceeds the file's {} bytes",
            bytes.len()
        )));
    }
    let dict = std::str::from_utf8(&bytes[dict_start as usize..data_start as usize])
        .map_err(|_| bad("header is not text".into()))?;

    let descr = value_of(dict, "descr").ok_or_else(|| bad("header has no 'descr'".into()))?;
    let quote = descr
        .chars()
        .next()
        .filter(|c| *c == '\'' || *c == '"')
        .ok_or_else(|| bad("'descr' is not a string".into()))?;
    let descr = &descr[1..];
    let descr = &descr[..descr
        .find(quote)
        .ok_or_else(|| bad("'descr' string is not closed".into()))?];
    let dtype = match descr {
        "<f4" => Dtype::F32,
        "<f2" => Dtype::F16,
        other => {
            let note = if other.starts_with('>') {
                " (big endian)"
            } else {
                ""
            };
            return Err(DataError::UnsupportedDtype {
                path: path.into(),
                tensor: NPY_TENSOR.into(),
                dtype: format!("{other}{note}"),
            });
        }
    };

    let fortran = value_of(dict, "fortran_order")
        .ok_or_else(|| bad("header has no 'fortran_order'".into()))?;
    let fortran = if fortran.starts_with("False") {
        false
    } else if fortran.starts_with("True") {
        true
    } else {
        return Err(bad("'fortran_order' is neither True nor False".into()));
    };

    let shape = value_of(dict, "shape").ok_or_else(|| bad("header has no 'shape'".into()))?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(inside, _)| inside)
        .ok_or_else(|| bad("'shape' is not a tuple".into()))?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<u64>())
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| bad("'shape' holds a non-integer".into()))?;

    if fortran && shape.len() > 1 {
        return Err(DataError::WrongShape {
            path: path.into(),
            tensor: NPY_TENSOR.into(),
            shape,
            detail: " in C order (this array is in Fortran order)".into(),
        });
    }
    let needed = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &n| acc.checked_mul(n))
        .and_then(|n| n.checked_add(data_start))
        .ok_or_else(|| bad("shape overflows".into()))?;
    if needed > bytes.len() as u64 {
        return Err(DataError::Truncated {
            path: path.into(),
            tensor: NPY_TENSOR.into(),
            expected: needed,
            actual: bytes.len() as u64,
        });
    }
    if needed < bytes.len() as u64 {
        return Err(bad(format!(
            "{} bytes after the data that shape {shape:?} describes",
            bytes.len() as u64 - needed
        )));
    }
    Ok(Header {
        dtype,
        shape,
        data_start,
    })
}

/// Parses an `.npy` file holding an `[n, d]` array and checks it.
pub(crate) fn parse_layout(path: &Path, bytes: &[u8]) -> Result<Layout, DataError> {
    let header = parse_header(path, bytes)?;
    let (rows, d) = match header.shape.as_slice() {
        &[rows, d] if d > 0 && usize::try_from(d).is_ok() => (rows, d as usize),
        _ => {
            return Err(DataError::WrongShape {
                path: path.into(),
                tensor: NPY_TENSOR.into(),
                shape: header.shape,
                detail: String::new(),
            });
        }
    };
    Ok(Layout {
        tensor: NPY_TENSOR.into(),
        dtype: header.dtype,
        rows,
        d,
        header_len: header.data_start as usize,
        data_start: header.data_start as usize,
    })
}

/// Reads an `.npy` array of any rank, converted to `f32`; returns its shape and values.
pub fn read_npy(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f32>), DataError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let header = parse_header(path, &bytes)?;
    let start = header.data_start as usize;
    let len = (bytes.len() - start) / header.dtype.size();
    let mut out = vec![0.0; len];
    dtype::decode(header.dtype, &bytes[start..], &mut out);
    Ok((header.shape.iter().map(|&n| n as usize).collect(), out))
}

/// Writes `data` (row-major, of `shape`) as a version 1.0 `.npy` file of `dtype`.
///
/// `dtype` must be [`Dtype::F32`] or [`Dtype::F16`]; NumPy has no bfloat16.
pub fn write_npy(
    path: impl AsRef<Path>,
    shape: &[usize],
    data: &[f32],
    dtype: Dtype,
) -> Result<(), DataError> {
    let path = path.as_ref();
    if shape.iter().product::<usize>() != data.len() {
        return Err(DataError::ShapeMismatch {
            path: path.into(),
            tensor: NPY_TENSOR.into(),
            shape: shape.to_vec(),
            len: data.len(),
        });
    }
    let descr = match dtype {
        Dtype::F32 => "<f4",
        Dtype::F16 => "<f2",
        Dtype::Bf16 => {
            return Err(DataError::UnsupportedDtype {
                path: path.into(),
                tensor: NPY_TENSOR.into(),
                dtype: "bf16 (NumPy has no bfloat16)".into(),
            });
        }
    };
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // NumPy aligns the data to 64 bytes: preamble (10) + dictionary + '\n'.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let header_len = u16::try_from(dict.len())
        .map_err(|_| DataError::config("npy header longer than 65535 bytes"))?;
    let mut bytes = Vec::with_capacity(10 + dict.len() + data.len() * dtype.size());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&header_len.to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    dtype::encode(dtype, data, &mut bytes);
    write_file(path, &bytes)
}
