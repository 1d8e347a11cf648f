//! Element types on disk and their conversion to and from `f32`.

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use serde::{Deserialize, Serialize};

/// An element type of stored activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dtype {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16 (the upper half of an `f32`).
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// The name safetensors uses (`F32`, `F16`, `BF16`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
        }
    }

    pub(crate) fn from_safetensors_name(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::Bf16),
            _ => None,
        }
    }
}

/// Converts half-precision bits to `f32` without branches, so loops over rows vectorise.
///
/// The exponent/mantissa bits shifted into `f32` position are off by a factor 2^112 for normal
/// and subnormal halves alike; one multiply fixes both. Infinities and NaNs get the all-ones
/// exponent directly.
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let magnitude = h & 0x7fff;
    let scaled = f32::from_bits(magnitude << 13) * f32::from_bits(0x7780_0000);
    let bits = if magnitude >= 0x7c00 {
        (magnitude << 13) | 0x7f80_0000
    } else {
        scaled.to_bits()
    };
    f32::from_bits(bits | sign)
}

/// Decodes little-endian `bytes` of `dtype` into `out` (`bytes.len() == out.len() * size`).
#[inline]
pub(crate) fn decode(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    match dtype {
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*c);
            }
        }
        Dtype::F16 => match bytemuck::try_cast_slice::<u8, u16>(bytes) {
            // Aligned little-endian data: half converts with F16C where the CPU has it.
            Ok(bits) if cfg!(target_endian = "little") => {
                bits.reinterpret_cast::<half::f16>()
                    .convert_to_f32_slice(out);
            }
            _ => {
                for (o, c) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                    *o = f16_bits_to_f32(u16::from_le_bytes(*c));
                }
            }
        },
        Dtype::Bf16 => {
            for (o, c) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes(*c)) << 16);
            }
        }
    }
}

/// Whether encoded values hold a NaN or an infinity (an all-ones exponent), tested on the
/// stored bits: for 16-bit types that scans half the bytes of the decoded values.
#[inline]
pub(crate) fn has_non_finite(dtype: Dtype, bytes: &[u8]) -> bool {
    fn any_exponent_all_ones_16(bytes: &[u8], exponent: u16) -> bool {
        let hits = bytes.as_chunks::<2>().0.iter().fold(0u16, |acc, c| {
            acc | u16::from(u16::from_le_bytes(*c) & exponent == exponent)
        });
        hits != 0
    }
    match dtype {
        Dtype::F32 => {
            let hits = bytes.as_chunks::<4>().0.iter().fold(0u32, |acc, c| {
                acc | u32::from(u32::from_le_bytes(*c) & 0x7f80_0000 == 0x7f80_0000)
            });
            hits != 0
        }
        Dtype::F16 => any_exponent_all_ones_16(bytes, 0x7c00),
        Dtype::Bf16 => any_exponent_all_ones_16(bytes, 0x7f80),
    }
}

/// Index of the first NaN or infinite value, if any; the common all-finite case is one
/// vectorised pass.
#[inline]
pub(crate) fn first_non_finite(values: &[f32]) -> Option<usize> {
    let any_bad = values.iter().fold(false, |acc, v| {
        acc | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
    });
    if any_bad {
        values.iter().position(|v| !v.is_finite())
    } else {
        None
    }
}

/// Appends `values` encoded as little-endian `dtype` (round to nearest even) to `out`.
pub(crate) fn encode(dtype: Dtype, values: &[f32], out: &mut Vec<u8>) {
    out.reserve(values.len() * dtype.size());
    match dtype {
        Dtype::F32 => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::F16 => {
            for v in values {
                out.extend_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        Dtype::Bf16 => {
            for v in values {
                out.extend_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_decode_matches_half_for_every_bit_pattern() {
        for bits in 0..=u16::MAX {
            let ours = f16_bits_to_f32(bits);
            let reference = half::f16::from_bits(bits).to_f32();
            if reference.is_nan() {
                assert!(ours.is_nan(), "bits {bits:#06x}");
            } else {
                assert_eq!(ours.to_bits(), reference.to_bits(), "bits {bits:#06x}");
            }
        }
    }

    #[test]
    fn f16_decode_agrees_aligned_and_misaligned() {
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let n = bits.len();
        let mut buffer = vec![0u8; 2 * n + 1];
        let mut decoded = [vec![0.0; n], vec![0.0; n]];
        // One of the two offsets is 2-byte aligned, the other is not.
        for (offset, out) in decoded.iter_mut().enumerate() {
            for (i, b) in bits.iter().enumerate() {
                buffer[offset + 2 * i..offset + 2 * i + 2].copy_from_slice(&b.to_le_bytes());
            }
            decode(Dtype::F16, &buffer[offset..offset + 2 * n], out);
        }
        let [aligned, misaligned] = decoded;
        for ((a, m), b) in aligned.iter().zip(&misaligned).zip(&bits) {
            let reference = half::f16::from_bits(*b).to_f32();
            for x in [a, m] {
                assert!(x.to_bits() == reference.to_bits() || (x.is_nan() && reference.is_nan()));
            }
        }
    }

    #[test]
    fn non_finite_bits_are_detected_for_every_dtype() {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut values = vec![1.0, -2.5, 65504.0, 1e-7, 0.0];
                let mut bytes = Vec::new();
                encode(dtype, &values, &mut bytes);
                assert!(!has_non_finite(dtype, &bytes), "{dtype:?}");
                values[3] = bad;
                bytes.clear();
                encode(dtype, &values, &mut bytes);
                assert!(has_non_finite(dtype, &bytes), "{dtype:?} {bad}");
            }
        }
    }

    #[test]
    fn non_finite_is_located() {
        assert_eq!(first_non_finite(&[1.0, 2.0, 3.0]), None);
        assert_eq!(first_non_finite(&[1.0, f32::NAN, f32::INFINITY]), Some(1));
        assert_eq!(first_non_finite(&[1.0, 2.0, f32::NEG_INFINITY]), Some(2));
    }
}
