//! The encoder GEMM of the host path: `z' = (x - b_dec) W_enc^T + b_enc` as one call of the
//! `gemm` crate.
//!
//! The bias is folded into the product: each centred row gets a trailing 1 and each encoder
//! row a trailing `b_enc[f]`, so the GEMM (inner dimension `d + 1`) writes the finished
//! affinities and no second pass over the `[N, F]` output is needed. The augmented operands
//! are small (`[N, d + 1]` and `[F, d + 1]`) and, like the output, live in buffers reused
//! from step to step: at N = 4096, F = 16384 the output is 256 MiB, and a fresh allocation
//! of it costs its page faults on every step.
//!
//! `gemm` splits the output into blocks across threads and never splits the inner
//! dimension, so each affinity is the same sum in the same order for any number of threads.

use std::fmt;

use rayon::prelude::*;

use super::grads::HostParams;

/// Multiply-adds below which the GEMM runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// How the host path holds a batch's `[N, F]` affinities in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityLayout {
    /// Token-major, `[N, F]` row-major: what every sparsifier reads.
    TokenMajor,
    /// Feature-major, `[F, N]` row-major (the transpose): each feature's scores contiguous,
    /// as Feature Choice's selection reads them
    /// ([`column_topm_transposed`](sae_alloc::column_topm_transposed)).
    FeatureMajor,
}

/// The encoder GEMM's operands and output, reused from call to call.
#[derive(Default, Clone)]
pub struct HostEncoder {
    /// `[N, d + 1]`: the centred batch with a trailing 1 per row.
    lhs: Vec<f32>,
    /// `[F, d + 1]`: the encoder rows with their bias appended.
    rhs: Vec<f32>,
    /// `[N, F]`: the affinities of the last call.
    out: Vec<f32>,
}

impl fmt::Debug for HostEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostEncoder")
            .field("affinities", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl HostEncoder {
    /// The affinities of the `n` rows of `x` (`[n, d]` row-major), `[n, F]` row-major, in
    /// the encoder's output buffer (reused when a call has the same shape as the last).
    ///
    /// # Panics
    ///
    /// If `x` is not `n` rows of the parameters' width.
    pub fn affinities(&mut self, params: &HostParams<'_>, x: &[f32], n: usize) -> &[f32] {
        self.affinities_in(AffinityLayout::TokenMajor, params, x, n)
    }

    /// [`affinities`](Self::affinities) in the given layout: the same values, the same GEMM
    /// with its operands swapped for [`AffinityLayout::FeatureMajor`].
    ///
    /// # Panics
    ///
    /// If `x` is not `n` rows of the parameters' width.
    pub fn affinities_in(
        &mut self,
        layout: AffinityLayout,
        params: &HostParams<'_>,
        x: &[f32],
        n: usize,
    ) -> &[f32] {
        let d = params.b_dec.len();
        let f = params.b_enc.len();
        assert_eq!(x.len(), n * d, "batch is not [{n}, {d}]");
        let k = d + 1;
        self.lhs.resize(n * k, 0.0);
        self.lhs
            .par_chunks_mut(k)
            .zip(x.par_chunks(d))
            .for_each(|(row, x_t)| {
                for ((c, xi), b) in row.iter_mut().zip(x_t).zip(params.b_dec) {
                    *c = xi - b;
                }
                row[d] = 1.0;
            });
        self.rhs.resize(f * k, 0.0);
        self.rhs
            .par_chunks_mut(k)
            .zip(params.w_enc.par_chunks(d))
            .zip(params.b_enc.par_iter())
            .for_each(|((row, w), &b)| {
                row[..d].copy_from_slice(w);
                row[d] = b;
            });
        // Only a buffer of another size is written before the GEMM overwrites it.
        let out = &mut self.out;
        if out.len() != n * f {
            out.clear();
            out.resize(n * f, 0.0);
        }
        if n == 0 || f == 0 {
            return out;
        }
        let parallelism = if n * f * k < PARALLEL_MIN_WORK {
            gemm::Parallelism::None
        } else {
            gemm::Parallelism::Rayon(0)
        };
        match layout {
            AffinityLayout::TokenMajor => gemm_abt(out, &self.lhs, &self.rhs, n, f, k, parallelism),
            AffinityLayout::FeatureMajor => {
                gemm_abt(out, &self.rhs, &self.lhs, f, n, k, parallelism);
            }
        }
        out
    }

    /// The output buffer of the last call, `[N, F]` in the layout of that call.
    pub fn into_affinities(self) -> Vec<f32> {
        self.out
    }
}

/// `out = a b^T` for row-major `a` `[m, k]`, `b` `[n, k]` and `out` `[m, n]`, by the `gemm`
/// crate with the given parallelism: the product [`HostEncoder`] runs (there with
/// `k = d + 1`).
///
/// # Panics
///
/// If a slice's length does not match its shape.
#[allow(unsafe_code)]
pub fn gemm_abt(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    parallelism: gemm::Parallelism,
) {
    assert!(a.len() == m * k && b.len() == n * k && out.len() == m * n);
    let stride = |x: usize| isize::try_from(x).expect("dimension fits in isize");
    // SAFETY: the lengths are checked above and every index `gemm` forms from these strides
    // is below them: `out[i * n + j]`, `a[i * k + l]`, `b[j * k + l]` for `i < m`, `j < n`,
    // `l < k`. `out` is borrowed mutably, so it aliases neither input; `read_dst` is false,
    // so its previous contents are never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            stride(n),
            false,
            a.as_ptr(),
            1,
            stride(k),
            b.as_ptr(),
            stride(k),
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_values as values;
    use super::super::{host_params, test_params};
    use super::*;

    /// Affinities in f64, written from the definition.
    fn oracle(p: &HostParams<'_>, x: &[f32], n: usize) -> Vec<f64> {
        let (d, f) = (p.b_dec.len(), p.b_enc.len());
        let mut z = vec![0.0; n * f];
        for t in 0..n {
            for j in 0..f {
                let dot: f64 = (0..d)
                    .map(|i| {
                        (f64::from(x[t * d + i]) - f64::from(p.b_dec[i]))
                            * f64::from(p.w_enc[j * d + i])
                    })
                    .sum();
                z[t * f + j] = dot + f64::from(p.b_enc[j]);
            }
        }
        z
    }

    #[test]
    fn matches_the_definition_on_odd_shapes_and_reuses_its_buffers() {
        let mut encoder = HostEncoder::default();
        // Odd widths, one token, one feature, and a shape large enough to run in parallel.
        for (n, d, f) in [
            (3, 5, 7),
            (1, 1, 1),
            (1, 13, 2),
            (37, 9, 130),
            (64, 67, 300),
        ] {
            let [w_enc, b_enc, w_dec, b_dec] = test_params(f, d, 1);
            let p = host_params([&w_enc, &b_enc, &w_dec, &b_dec]);
            let x = values(n * d, 5);
            let out = encoder.affinities(&p, &x, n);
            let want = oracle(&p, &x, n);
            assert_eq!(out.len(), n * f);
            for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "[{n}, {d}, {f}] element {i}: {got} vs {want}"
                );
            }
        }
    }

    /// The feature-major affinities are the transpose of the token-major ones, bit for bit
    /// (each is the same dot product over `d + 1` in the same order).
    #[test]
    fn feature_major_is_the_transpose_bit_for_bit() {
        let (n, d, f) = (37, 67, 300);
        let [w_enc, b_enc, w_dec, b_dec] = test_params(f, d, 1);
        let p = host_params([&w_enc, &b_enc, &w_dec, &b_dec]);
        let x = values(n * d, 5);
        let mut encoder = HostEncoder::default();
        let by_token = encoder.affinities(&p, &x, n).to_vec();
        let by_feature = encoder.affinities_in(AffinityLayout::FeatureMajor, &p, &x, n);
        for t in 0..n {
            for j in 0..f {
                assert_eq!(
                    by_feature[j * n + t].to_bits(),
                    by_token[t * f + j].to_bits(),
                    "token {t}, feature {j}"
                );
            }
        }
    }

    #[test]
    fn the_same_bits_for_any_number_of_threads() {
        let (n, d, f) = (96, 70, 513);
        let [w_enc, b_enc, w_dec, b_dec] = test_params(f, d, 6);
        let p = host_params([&w_enc, &b_enc, &w_dec, &b_dec]);
        let x = values(n * d, 10);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| HostEncoder::default().affinities(&p, &x, n).to_vec())
        };
        let one = run(1);
        for threads in [2, 3, 4] {
            assert!(
                run(threads)
                    .iter()
                    .zip(&one)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{threads} threads"
            );
        }
    }
}
