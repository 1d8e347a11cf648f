//! Adam (Kingma & Ba, 2015) with bias correction, on plain backend tensors.
//!
//! The training step owns its parameters and moments as inner-backend tensors (no autodiff
//! graph), so it updates them with this small optimizer rather than burn's module optimizers:
//! [`Adam::update`] on tensors (the autodiff paths), [`Adam::update_slice`] on host slices
//! (the fused path) and [`Adam::constants`] for the device step's kernels, the same
//! operations in the same order.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use sae_kernels::step::AdamConstants;

/// Adam with bias correction, for one step number (the corrections depend on it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    correction1: f64,
    correction2: f64,
}

impl Adam {
    /// The optimizer for step `step` (1-based: the first update is step 1).
    pub(crate) fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, step: u64) -> Self {
        let t = i32::try_from(step).unwrap_or(i32::MAX);
        Self {
            lr,
            beta1,
            beta2,
            eps,
            correction1: 1.0 - beta1.powi(t),
            correction2: 1.0 - beta2.powi(t),
        }
    }

    /// One update of `param` with gradient `grad` and moments `m`, `v`:
    /// `m <- b1 m + (1 - b1) g`, `v <- b2 v + (1 - b2) g^2`,
    /// `param <- param - lr (m / c1) / (sqrt(v / c2) + eps)` with `c_i = 1 - b_i^step`.
    /// Returns the new parameter and moments.
    pub(crate) fn update<B: Backend, const D: usize>(
        &self,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        m: Tensor<B, D>,
        v: Tensor<B, D>,
    ) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
        // Ordered so that each operation's left operand is uniquely owned where possible
        // (CPU backends then work in place): v first, while `grad` is still shared.
        let v = v.mul_scalar(self.beta2 as f32)
            + grad.clone().square().mul_scalar((1.0 - self.beta2) as f32);
        let m = m.mul_scalar(self.beta1 as f32) + grad.mul_scalar((1.0 - self.beta1) as f32);
        let step = (v.clone().mul_scalar((1.0 / self.correction2) as f32))
            .sqrt()
            .add_scalar(self.eps as f32)
            .recip()
            .mul(m.clone())
            .mul_scalar((self.lr / self.correction1) as f32);
        (param - step, m, v)
    }

    /// [`Adam::update`] in place on host slices of equal length, element by element with the
    /// same `f32` operations in the same order. Each is rounded exactly, where the backends'
    /// SIMD reciprocal is an approximation (to about 1e-5 relative on NdArray).
    #[inline(always)]
    pub(crate) fn update_slice(
        &self,
        param: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) {
        assert!(param.len() == grad.len() && m.len() == grad.len() && v.len() == grad.len());
        let c = self.constants();
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m).zip(v) {
            update_element(&c, p, g, m, v);
        }
    }

    /// The `f32` constants of [`Adam::update_slice`], which the device step's kernels use in
    /// the same operations.
    pub(crate) fn constants(&self) -> AdamConstants {
        AdamConstants {
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            inv_correction2: (1.0 / self.correction2) as f32,
            step_scale: (self.lr / self.correction1) as f32,
            eps: self.eps as f32,
        }
    }
}

/// One element of [`Adam::update_slice`]: the moments and the parameter moved by gradient
/// `g`, with the same `f32` operations in the same order.
#[inline(always)]
pub(crate) fn update_element(c: &AdamConstants, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
    *v = *v * c.beta2 + g * g * c.one_minus_beta2;
    *m = *m * c.beta1 + g * c.one_minus_beta1;
    let step = 1.0 / ((*v * c.inv_correction2).sqrt() + c.eps) * *m * c.step_scale;
    *p -= step;
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::{Tensor, TensorData};

    use super::Adam;

    type B = NdArray;

    /// Adam on scalars in f64, written from the paper's algorithm.
    fn reference(grads: &[f64], lr: f64, b1: f64, b2: f64, eps: f64, start: f64) -> f64 {
        let (mut p, mut m, mut v) = (start, 0.0, 0.0);
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let m_hat = m / (1.0 - b1.powi(t));
            let v_hat = v / (1.0 - b2.powi(t));
            p -= lr * m_hat / (v_hat.sqrt() + eps);
        }
        p
    }

    fn tensor(values: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Default::default(),
        )
    }

    fn values(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    /// Learning rate, beta1, beta2, eps of the comparisons with the scalar algorithm.
    const HYPER: (f64, f64, f64, f64) = (1e-2, 0.9, 0.999, 1e-8);

    /// Fifty steps of gradients for two coordinates with different sequences (sign changes,
    /// scale changes).
    fn two_gradient_sequences() -> Vec<[f64; 2]> {
        (0..50)
            .map(|i| {
                let i = f64::from(i);
                [(i * 0.7).sin() * 3.0, 1e-3 * (1.0 + (i * 0.3).cos())]
            })
            .collect()
    }

    #[test]
    fn matches_the_scalar_algorithm_over_many_steps() {
        let (grads, (lr, b1, b2, eps)) = (two_gradient_sequences(), HYPER);
        let mut p = tensor(&[0.5, -2.0]);
        let (mut m, mut v) = (tensor(&[0.0, 0.0]), tensor(&[0.0, 0.0]));
        for (t, g) in grads.iter().enumerate() {
            let adam = Adam::new(lr, b1, b2, eps, t as u64 + 1);
            let g = tensor(&[g[0] as f32, g[1] as f32]);
            (p, m, v) = adam.update(p, g, m, v);
        }
        let got = values(p);
        for (c, start) in [(0, 0.5), (1, -2.0)] {
            let g: Vec<f64> = grads.iter().map(|g| g[c]).collect();
            let want = reference(&g, lr, b1, b2, eps, start);
            assert!(
                (f64::from(got[c]) - want).abs() < 1e-5,
                "coordinate {c}: {} vs {want}",
                got[c]
            );
        }
    }

    #[test]
    fn the_slice_update_follows_the_scalar_algorithm_more_closely_than_tensors() {
        let (grads, (lr, b1, b2, eps)) = (two_gradient_sequences(), HYPER);
        let mut p = vec![0.5f32, -2.0];
        let (mut m, mut v) = (vec![0.0f32; 2], vec![0.0f32; 2]);
        for (t, g) in grads.iter().enumerate() {
            let adam = Adam::new(lr, b1, b2, eps, t as u64 + 1);
            adam.update_slice(&mut p, &[g[0] as f32, g[1] as f32], &mut m, &mut v);
        }
        for (c, start) in [(0, 0.5), (1, -2.0)] {
            let g: Vec<f64> = grads.iter().map(|g| g[c]).collect();
            let want = reference(&g, lr, b1, b2, eps, start);
            // Exact f32 operations: only rounding, no approximate reciprocal.
            assert!(
                (f64::from(p[c]) - want).abs() < 2e-6,
                "coordinate {c}: {} vs {want}",
                p[c]
            );
        }
    }

    #[test]
    fn the_first_step_moves_each_coordinate_by_about_lr_against_its_gradient() {
        // Bias correction: after one step m_hat = g and v_hat = g^2, so the move is
        // lr * g / (|g| + eps), whatever the gradient's scale.
        let adam = Adam::new(0.1, 0.9, 0.999, 1e-12, 1);
        let zeros = tensor(&[0.0; 3]);
        let (p, m, v) = adam.update(
            zeros.clone(),
            tensor(&[1e-4, -50.0, 0.0]),
            zeros.clone(),
            zeros,
        );
        let p = values(p);
        assert!(
            (p[0] + 0.1).abs() < 1e-6 && (p[1] - 0.1).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(p[2], 0.0, "no gradient, no move");
        let (m, v) = (values(m), values(v));
        assert!(
            (m[1] + 5.0).abs() < 1e-5 && (v[1] - 2.5).abs() < 1e-4,
            "{m:?} {v:?}"
        );
    }
}
