//! Every copy `widest!` picks computes the bits of the baseline's code.

use sae_simd::{Level, capped};

/// A dot product in eight explicit lanes, then their sum in order: the shape of the fused
/// step's reductions, which a wider copy may vectorise.
#[inline(always)]
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum()
}

/// `y += alpha x` then a running sum of `y`, a sequential float reduction no copy may reorder.
#[inline(always)]
fn axpy_then_sum(alpha: f32, x: &[f32], y: &mut [f32]) -> f32 {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
    y.iter().sum()
}

sae_simd::widest! {
    fn lane_dot_widest(a: &[f32], b: &[f32]) -> f32 = lane_dot;
}

sae_simd::widest! {
    fn axpy_then_sum_widest(alpha: f32, x: &[f32], y: &mut [f32]) -> f32 = axpy_then_sum;
}

/// Values of mixed magnitudes and signs, where any change of the order of a sum or of its
/// rounding shows in the last bits.
fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761);
            let mantissa = (h >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            mantissa * [1e-3, 1.0, 1e4][(h & 3) as usize % 3]
        })
        .collect()
}

/// A copy that reassociated the lane sums or contracted `x * y + acc` into an FMA would differ
/// from the baseline in the last bits on these values (lengths with and without a tail). Every
/// level this CPU runs is compared, through `capped`.
#[test]
fn every_copy_computes_the_baselines_bits() {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for level in Level::ALL {
        for len in [0, 7, 8, 384, 389, 4099] {
            let (a, b) = (values(len, 1), values(len, 2));
            let dot = capped(level, || lane_dot_widest(&a, &b));
            assert_eq!(
                dot.to_bits(),
                lane_dot(&a, &b).to_bits(),
                "dot, {level:?}, {len}"
            );
            let (mut y_widest, mut y_base) = (values(len, 3), values(len, 3));
            let sum_widest = capped(level, || axpy_then_sum_widest(0.37, &a, &mut y_widest));
            let sum_base = axpy_then_sum(0.37, &a, &mut y_base);
            assert_eq!(
                sum_widest.to_bits(),
                sum_base.to_bits(),
                "sum, {level:?}, {len}"
            );
            assert_eq!(bits(&y_widest), bits(&y_base), "axpy, {level:?}, {len}");
        }
    }
}

/// The level is the CPU's widest unless capped, the cap holds only inside `capped` (also when
/// its body panics), and a cap above the CPU's level changes nothing.
#[test]
fn a_cap_lowers_the_level_only_inside_its_body() {
    let detected = Level::detected();
    assert_eq!(sae_simd::level(), detected);
    for cap in Level::ALL {
        assert_eq!(capped(cap, sae_simd::level), cap.min(detected));
        assert_eq!(sae_simd::level(), detected);
    }
    let unwound = std::panic::catch_unwind(|| capped(Level::Baseline, || panic!("inside")));
    assert!(unwound.is_err());
    assert_eq!(sae_simd::level(), detected);
}
