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

/// Decodes `bytes` of `dtype` into `out` like [`decode`] and reports whether any stored value is
/// a NaN or an infinity, like [`has_non_finite`].
///
/// For f16 on x86-64 CPUs with AVX2 and F16C, both happen in one pass of 16 values a step, on
/// any alignment; elsewhere this is [`decode`] followed by [`has_non_finite`].
#[inline]
pub(crate) fn decode_scan(dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if dtype == Dtype::F16
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        return x86::decode_scan_f16(bytes, out);
    }
    decode(dtype, bytes, out);
    has_non_finite(dtype, bytes)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::{
        __m256i, _mm256_and_si256, _mm256_castsi256_si128, _mm256_cmpeq_epi16, _mm256_cvtph_ps,
        _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_or_si256, _mm256_set1_epi16,
        _mm256_setzero_si256, _mm256_storeu_ps, _mm256_testz_si256,
    };

    /// Safe entry point: the caller has checked for AVX2 and F16C.
    #[inline]
    pub(super) fn decode_scan_f16(bytes: &[u8], out: &mut [f32]) -> bool {
        assert_eq!(bytes.len(), out.len() * 2);
        // SAFETY: `decode_scan` calls this only after detecting AVX2 and F16C; the lengths
        // were checked above.
        unsafe { decode_scan_f16_avx2(bytes, out) }
    }

    /// # Safety
    /// The CPU must support AVX2 and F16C, and `bytes.len() == 2 * out.len()`.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn decode_scan_f16_avx2(bytes: &[u8], out: &mut [f32]) -> bool {
        let n = out.len();
        let src = bytes.as_ptr();
        let dst = out.as_mut_ptr();
        let exponent = _mm256_set1_epi16(0x7c00);
        let mut bad = _mm256_setzero_si256();
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: values i..i + 16 are in bounds of both slices (checked by the loop
            // condition and the length precondition); unaligned loads and stores are allowed.
            unsafe {
                let h = _mm256_loadu_si256(src.add(2 * i).cast::<__m256i>());
                let e = _mm256_and_si256(h, exponent);
                bad = _mm256_or_si256(bad, _mm256_cmpeq_epi16(e, exponent));
                _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(_mm256_castsi256_si128(h)));
                _mm256_storeu_ps(
                    dst.add(i + 8),
                    _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(h)),
                );
            }
            i += 16;
        }
        let tail = &bytes[2 * i..];
        super::decode(super::Dtype::F16, tail, &mut out[i..]);
        _mm256_testz_si256(bad, bad) == 0 || super::has_non_finite(super::Dtype::F16, tail)
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
    fn fused_decode_scan_matches_decode_and_scan() {
        // Every f16 bit pattern, at both alignments and with lengths that leave a tail.
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let mut buffer = vec![0u8; 2 * bits.len() + 1];
        for offset in 0..2 {
            for (i, b) in bits.iter().enumerate() {
                buffer[offset + 2 * i..offset + 2 * i + 2].copy_from_slice(&b.to_le_bytes());
            }
            for (start, len) in [
                (0, bits.len()),
                (3, 37),
                (0x3c00, 16),
                (0x7bf0, 15),
                (0x7bf0, 16),
                (0x7bf1, 16),
            ] {
                let bytes = &buffer[offset + 2 * start..offset + 2 * (start + len)];
                let mut fused = vec![0.0; len];
                let mut plain = vec![0.0; len];
                let bad = decode_scan(Dtype::F16, bytes, &mut fused);
                decode(Dtype::F16, bytes, &mut plain);
                assert_eq!(bad, has_non_finite(Dtype::F16, bytes), "{start} {len}");
                for (f, p) in fused.iter().zip(&plain) {
                    assert!(f.to_bits() == p.to_bits() || (f.is_nan() && p.is_nan()));
                }
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
