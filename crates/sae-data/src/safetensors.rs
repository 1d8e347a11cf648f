//! The safetensors format: an 8-byte little-endian header length, a JSON header, then the data.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::dtype::{self, Dtype};
use crate::error::DataError;
use crate::layout::{Layout, write_file};

/// One tensor to write: a name, a shape and its values in row-major order.
#[derive(Clone, Debug)]
pub struct TensorRef<'a> {
    /// Tensor name in the file.
    pub name: &'a str,
    /// Shape; the product must equal `data.len()`.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: &'a [f32],
}

impl<'a> TensorRef<'a> {
    /// A `[rows, d]` matrix named `name`, with `rows = data.len() / d`.
    pub fn matrix(name: &'a str, d: usize, data: &'a [f32]) -> Self {
        let rows = data.len().checked_div(d).unwrap_or(0);
        Self {
            name,
            shape: vec![rows, d],
            data,
        }
    }
}

/// A tensor's entry in the header.
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    begin: u64,
    end: u64,
}

/// Parses the header; returns it and the offset where the data region starts.
fn header(path: &Path, bytes: &[u8]) -> Result<(serde_json::Map<String, Value>, u64), DataError> {
    if bytes.len() < 8 {
        return Err(DataError::corrupt(
            path,
            format!(
                "{} bytes; a safetensors file starts with an 8-byte header length",
                bytes.len()
            ),
        ));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let available = bytes.len() as u64 - 8;
    if header_len > available {
        return Err(DataError::corrupt(
            path,
            format!("header length {header_len} exceeds the {available} bytes that follow it"),
        ));
    }
    let json = &bytes[8..8 + header_len as usize];
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| DataError::corrupt(path, format!("header is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok((map, 8 + header_len)),
        _ => Err(DataError::corrupt(path, "header is not a JSON object")),
    }
}

fn entry(
    path: &Path,
    map: &serde_json::Map<String, Value>,
    tensor: &str,
) -> Result<Entry, DataError> {
    let Some(value) = map.get(tensor).filter(|_| tensor != "__metadata__") else {
        return Err(DataError::MissingTensor {
            path: path.into(),
            tensor: tensor.into(),
            available: map
                .keys()
                .filter(|k| *k != "__metadata__")
                .cloned()
                .collect(),
        });
    };
    let bad = |what: &str| DataError::corrupt(path, format!("tensor `{tensor}`: {what}"));
    let dtype = value
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing or non-string `dtype`"))?
        .to_owned();
    let shape = value
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing or non-array `shape`"))?
        .iter()
        .map(Value::as_u64)
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| bad("`shape` holds a non-integer"))?;
    let offsets = value
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing or non-array `data_offsets`"))?;
    let (begin, end) = match offsets.as_slice() {
        [b, e] => (
            b.as_u64()
                .ok_or_else(|| bad("`data_offsets` holds a non-integer"))?,
            e.as_u64()
                .ok_or_else(|| bad("`data_offsets` holds a non-integer"))?,
        ),
        _ => return Err(bad("`data_offsets` must hold two integers")),
    };
    if begin > end {
        return Err(bad("`data_offsets` begin exceeds end"));
    }
    Ok(Entry {
        dtype,
        shape,
        begin,
        end,
    })
}

/// Checks an entry against the file and returns where its data lies: (dtype, absolute start).
fn locate(
    path: &Path,
    bytes: &[u8],
    data_start: u64,
    tensor: &str,
    entry: &Entry,
) -> Result<(Dtype, u64), DataError> {
    let dtype =
        Dtype::from_safetensors_name(&entry.dtype).ok_or_else(|| DataError::UnsupportedDtype {
            path: path.into(),
            tensor: tensor.into(),
            dtype: entry.dtype.clone(),
        })?;
    let needed = entry
        .shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| DataError::corrupt(path, format!("tensor `{tensor}`: shape overflows")))?;
    if entry.end - entry.begin != needed {
        return Err(DataError::corrupt(
            path,
            format!(
                "tensor `{tensor}`: data_offsets span {} bytes but shape {:?} of {} needs {needed}",
                entry.end - entry.begin,
                entry.shape,
                entry.dtype
            ),
        ));
    }
    let expected = data_start.checked_add(entry.end).ok_or_else(|| {
        DataError::corrupt(path, format!("tensor `{tensor}`: data_offsets overflow"))
    })?;
    if expected > bytes.len() as u64 {
        return Err(DataError::Truncated {
            path: path.into(),
            tensor: tensor.into(),
            expected,
            actual: bytes.len() as u64,
        });
    }
    Ok((dtype, data_start + entry.begin))
}

/// Bits per element of every dtype the safetensors format names; `None` for names it does not
/// (newer formats), whose byte lengths are then not checked.
fn element_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// Checks every tensor of the header, not only the one read: each entry is well formed, its
/// byte span fits its dtype and shape, lies inside the data section, and overlaps no other
/// tensor's span.
fn check_all(
    path: &Path,
    file_len: u64,
    data_start: u64,
    map: &serde_json::Map<String, Value>,
) -> Result<(), DataError> {
    let mut spans = Vec::with_capacity(map.len());
    for name in map.keys().filter(|k| *k != "__metadata__") {
        let entry = entry(path, map, name)?;
        let span = entry.end - entry.begin;
        if let Some(bits) = element_bits(&entry.dtype) {
            let needed = entry
                .shape
                .iter()
                .try_fold(bits, |acc, &n| acc.checked_mul(n))
                .ok_or_else(|| {
                    DataError::corrupt(path, format!("tensor `{name}`: shape overflows"))
                })?;
            if span.checked_mul(8) != Some(needed) {
                return Err(DataError::corrupt(
                    path,
                    format!(
                        "tensor `{name}`: data_offsets span {span} bytes but shape {:?} of {} needs {} bits",
                        entry.shape, entry.dtype, needed
                    ),
                ));
            }
        }
        let expected = data_start.checked_add(entry.end).ok_or_else(|| {
            DataError::corrupt(path, format!("tensor `{name}`: data_offsets overflow"))
        })?;
        if expected > file_len {
            return Err(DataError::Truncated {
                path: path.into(),
                tensor: name.clone(),
                expected,
                actual: file_len,
            });
        }
        if span > 0 {
            spans.push((entry.begin, entry.end, name));
        }
    }
    spans.sort_unstable();
    // The span reaching furthest so far; any later span starting before its end overlaps it.
    let mut furthest: Option<(u64, u64, &String)> = None;
    for (begin, end, name) in spans {
        if let Some((b, e, other)) = furthest
            && begin < e
        {
            return Err(DataError::corrupt(
                path,
                format!(
                    "tensor `{name}`: data_offsets [{begin}, {end}) overlap those of tensor `{other}` [{b}, {e})"
                ),
            ));
        }
        if furthest.is_none_or(|(_, e, _)| end > e) {
            furthest = Some((begin, end, name));
        }
    }
    Ok(())
}

/// Finds the `[n, d]` tensor `tensor` in the safetensors file `bytes` and checks it.
pub(crate) fn parse_layout(path: &Path, bytes: &[u8], tensor: &str) -> Result<Layout, DataError> {
    let (map, data_start) = header(path, bytes)?;
    let entry = entry(path, &map, tensor)?;
    let (dtype, start) = locate(path, bytes, data_start, tensor, &entry)?;
    check_all(path, bytes.len() as u64, data_start, &map)?;
    let (rows, d) = match entry.shape.as_slice() {
        &[rows, d] if d > 0 && usize::try_from(d).is_ok() => (rows, d as usize),
        _ => {
            return Err(DataError::WrongShape {
                path: path.into(),
                tensor: tensor.into(),
                shape: entry.shape,
                detail: String::new(),
            });
        }
    };
    Ok(Layout {
        tensor: tensor.into(),
        dtype,
        rows,
        d,
        header_len: data_start as usize,
        data_start: start as usize,
    })
}

/// Reads one tensor of any rank from a safetensors file, converted to `f32`.
///
/// Returns its shape and row-major values. Meant for small tensors such as exported weights;
/// activation shards are read through [`crate::ShardSet`], which maps them instead.
pub fn read_safetensors(
    path: impl AsRef<Path>,
    tensor: &str,
) -> Result<(Vec<usize>, Vec<f32>), DataError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let (map, data_start) = header(path, &bytes)?;
    let entry = entry(path, &map, tensor)?;
    let (dtype, start) = locate(path, &bytes, data_start, tensor, &entry)?;
    check_all(path, bytes.len() as u64, data_start, &map)?;
    let len = (entry.end - entry.begin) as usize / dtype.size();
    let mut out = vec![0.0; len];
    let start = start as usize;
    dtype::decode(dtype, &bytes[start..start + len * dtype.size()], &mut out);
    let shape = entry.shape.iter().map(|&n| n as usize).collect();
    Ok((shape, out))
}

/// Writes `tensors` to a safetensors file, every tensor stored as `dtype`.
///
/// Values are rounded to nearest even when `dtype` is narrower than `f32`. The header is
/// padded with spaces to a multiple of 8 bytes so the data region is aligned.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[TensorRef<'_>],
    dtype: Dtype,
) -> Result<(), DataError> {
    let path = path.as_ref();
    let mut header = BTreeMap::new();
    let mut offset = 0usize;
    for t in tensors {
        let numel: usize = t.shape.iter().product();
        if numel != t.data.len() {
            return Err(DataError::ShapeMismatch {
                path: path.into(),
                tensor: t.name.into(),
                shape: t.shape.clone(),
                len: t.data.len(),
            });
        }
        if t.name == "__metadata__" {
            return Err(DataError::config("`__metadata__` is not a tensor name"));
        }
        let size = numel * dtype.size();
        let previous = header.insert(
            t.name.to_owned(),
            serde_json::json!({
                "dtype": dtype.safetensors_name(),
                "shape": t.shape,
                "data_offsets": [offset, offset + size],
            }),
        );
        if previous.is_some() {
            return Err(DataError::config(format!(
                "tensor name `{}` given twice",
                t.name
            )));
        }
        offset += size;
    }
    let mut json = serde_json::to_vec(&header).expect("a map of JSON values serialises");
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + json.len() + offset);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    for t in tensors {
        dtype::encode(dtype, t.data, &mut bytes);
    }
    write_file(path, &bytes)
}
