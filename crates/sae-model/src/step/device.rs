//! The training step of the device path ([`StepPath::Device`]): the whole step on the
//! device that holds the parameters.
//!
//! burn computes the encoder GEMM; the selection runs as a `sae-kernels` kernel on its
//! output, and the loss, the gradients and the update run as the kernels of
//! [`sae_kernels::step`], reading the parameters' and moments' own buffers and writing new
//! ones. The selection, the loss sums and the non-finite flags come back with one
//! synchronisation; the new buffers become the state only when everything was finite, so a
//! failed step leaves the state unchanged. Statistics and thresholds are then updated from
//! the selection as on every path.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime};
use cubecl::server::Handle;
use sae_alloc::Selection;
use sae_kernels::step::{
    Activation as KernelActivation, DeviceStep, ParamBuffers, Reconstruction, StepInputs,
    train_step,
};

use super::{ReconLoss, StepOutput, StepPath, TrainStep};
use crate::adam::Adam;
use crate::collective::SinglePeer;
use crate::device::{
    aux_ranked, contiguous, contiguous_scores, from_cube, kernel_error, select_on_cube, to_cube,
};
use crate::error::{Result, SaeError, nan_is_bad_input};
use crate::rule::{Activation, BuiltinRule};
use crate::sae::SaeTensors;

/// burn's cubecl backend without fusion, on which the step's few tensor operations run.
type Cube<R> = CubeBackend<R, f32, i32, u32>;

impl<B: AutodiffBackend> TrainStep<B> {
    /// The built-in rule of this batch of `n` tokens when the step runs on the device path
    /// ([`StepPath::Device`] for this backend, and a sparsifier with a built-in rule);
    /// `None` otherwise (the step then runs on the `sparse` path).
    pub(super) fn device_rule(&self, n: usize) -> Result<Option<BuiltinRule>> {
        let path = self.config.path.resolve::<B::InnerBackend>(&self.device);
        if path != StepPath::Device || !crate::device::is_cubecl::<B::InnerBackend>() {
            return Ok(None);
        }
        self.sparsifier.builtin(n, &self.stats)
    }

    /// [`TrainStep::train_step`] on the device path; the batch's width is checked.
    pub(super) fn device_train_step(
        &mut self,
        x: Tensor<B::InnerBackend, 2>,
        rule: &BuiltinRule,
    ) -> Result<StepOutput> {
        if let Some(x) = to_cube::<_, cubecl::wgpu::WgpuRuntime, 2>(x.clone()) {
            return self.cube_train_step(x, rule);
        }
        #[cfg(feature = "cuda")]
        if let Some(x) = to_cube::<_, cubecl::cuda::CudaRuntime, 2>(x.clone()) {
            return self.cube_train_step(x, rule);
        }
        drop(x);
        Err(SaeError::Config(format!(
            "the device step needs a cubecl backend (wgpu, cuda), not {}",
            std::any::type_name::<B::InnerBackend>()
        )))
    }

    /// The device step on runtime `R`.
    fn cube_train_step<R: CubeRuntime>(
        &mut self,
        x: CubeTensor<R>,
        rule: &BuiltinRule,
    ) -> Result<StepOutput> {
        let x = contiguous(x);
        let [n, d] = [x.meta.shape()[0], x.meta.shape()[1]];
        let activation = self.sparsifier.activation();
        let params = cube_tensors::<B, R>(&self.params)?;
        let [p, m, v] = [
            buffers(&params),
            buffers(&cube_tensors::<B, R>(&self.adam_m)?),
            buffers(&cube_tensors::<B, R>(&self.adam_v)?),
        ];
        let batch = Tensor::<Cube<R>, 2>::from_primitive(TensorPrimitive::Float(x.clone()));
        let affinities = contiguous_scores(params.affinities(batch).into_primitive().tensor())?;
        let selection = select_on_cube(&affinities, rule, self.global_cut)?;
        let aux = match self.aux_candidates() {
            Some((weights, k_aux)) => {
                let scores = Tensor::<Cube<R>, 2>::from_primitive(TensorPrimitive::Float(
                    affinities.clone(),
                ));
                let ranked = aux_ranked(&scores, &weights, activation);
                let k = k_aux.min(weights.len());
                let ranked = contiguous(ranked.into_primitive().tensor());
                Some(select_on_cube(&ranked, &BuiltinRule::RowTopK { k }, None)?)
            }
            None => None,
        };
        let next = self.step + 1;
        let c = &self.config;
        let adam = Adam::new(self.lr(), c.beta1, c.beta2, c.eps, next);
        let inputs = StepInputs {
            x: &x.handle,
            affinities: &affinities.handle,
            width: d,
            selection: &selection,
            aux: aux.as_ref(),
            aux_coef: c.aux_coef,
            activation: match activation {
                Activation::Relu => KernelActivation::Relu,
                Activation::Identity => KernelActivation::Identity,
            },
            reconstruction: match c.recon_loss {
                ReconLoss::Fvu => Reconstruction::Fvu,
                ReconLoss::Mse => Reconstruction::Mse,
            },
            adam: adam.constants(),
        };
        let step = train_step(&x.client, &inputs, [&p, &m, &v]).map_err(kernel_error)?;
        let report = step
            .finish(&selection)
            .map_err(kernel_error)
            .map_err(nan_is_bad_input)?;
        let recon_scale = match c.recon_loss {
            ReconLoss::Fvu => 1.0 / report.total_variance,
            ReconLoss::Mse => 1.0 / (n * d) as f64,
        };
        let aux_loss = if report.aux_active {
            report.aux_sse / report.sse
        } else {
            0.0
        };
        let loss = (report.sse * recon_scale + f64::from(c.aux_coef) * aux_loss) as f32;
        if !loss.is_finite() {
            return Err(SaeError::NonFiniteLoss {
                step: self.step,
                loss,
            });
        }
        if let Some(param) = report.non_finite {
            return Err(SaeError::NonFiniteGradient {
                step: self.step,
                param,
            });
        }
        self.adopt::<R>(step, &x)?;
        self.step = next;
        self.global_cut = match rule {
            BuiltinRule::GlobalTopK { .. } => global_cut(&report.selection),
            _ => None,
        };
        let mse = (report.sse / (n * d) as f64) as f32;
        let fvu = (report.sse / report.total_variance) as f32;
        self.record(
            report.selection,
            [loss, mse, fvu, aux_loss as f32],
            &mut SinglePeer,
        )
    }

    /// Makes the step's new buffers the parameters and moments.
    fn adopt<R: CubeRuntime>(&mut self, step: DeviceStep<R>, like: &CubeTensor<R>) -> Result<()> {
        let [features, d] = self.params.w_enc.dims();
        let tensors = |b: ParamBuffers| -> Option<SaeTensors<B::InnerBackend>> {
            let wrap = |handle, shape: Vec<usize>| {
                CubeTensor::new_contiguous(
                    like.client.clone(),
                    like.device.clone(),
                    Shape::from(shape),
                    handle,
                    DType::F32,
                )
            };
            Some(SaeTensors {
                w_enc: from_cube::<_, R, 2>(wrap(b.w_enc, vec![features, d]))?,
                b_enc: from_cube::<_, R, 1>(wrap(b.b_enc, vec![features]))?,
                w_dec: from_cube::<_, R, 2>(wrap(b.w_dec, vec![features, d]))?,
                b_dec: from_cube::<_, R, 1>(wrap(b.b_dec, vec![d]))?,
            })
        };
        let DeviceStep { params, m, v, .. } = step;
        match (tensors(params), tensors(m), tensors(v)) {
            (Some(p), Some(m), Some(v)) => {
                self.params = p;
                self.adam_m = m;
                self.adam_v = v;
                Ok(())
            }
            _ => Err(SaeError::Device(
                "the device step's buffers do not fit this backend".into(),
            )),
        }
    }
}

/// Parameters (or moments) held by a cubecl backend on `R`, as contiguous tensors of burn's
/// backend without fusion over the same buffers.
fn cube_tensors<B: AutodiffBackend, R: CubeRuntime>(
    p: &SaeTensors<B::InnerBackend>,
) -> Result<SaeTensors<Cube<R>>> {
    fn wrap<B: burn::tensor::backend::Backend, R: CubeRuntime, const D: usize>(
        t: &Tensor<B, D>,
    ) -> Result<Tensor<Cube<R>, D>> {
        let t = to_cube::<_, R, D>(t.clone())
            .ok_or_else(|| SaeError::Device("parameters are not on the batch's device".into()))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(contiguous(
            t,
        ))))
    }
    Ok(SaeTensors {
        w_enc: wrap(&p.w_enc)?,
        b_enc: wrap(&p.b_enc)?,
        w_dec: wrap(&p.w_dec)?,
        b_dec: wrap(&p.b_dec)?,
    })
}

/// The buffers of parameters (or moments) on `R`.
fn buffers<R: CubeRuntime>(p: &SaeTensors<Cube<R>>) -> ParamBuffers {
    fn handle<R: CubeRuntime, const D: usize>(t: &Tensor<Cube<R>, D>) -> Handle {
        t.clone().into_primitive().tensor().handle
    }
    ParamBuffers {
        w_enc: handle(&p.w_enc),
        b_enc: handle(&p.b_enc),
        w_dec: handle(&p.w_dec),
        b_dec: handle(&p.b_dec),
    }
}

/// Share of the smallest kept score's magnitude by which the next batch's candidate cut lies
/// below it. The threshold moves little from one batch to the next; on Gaussian affinities
/// (a fresh model's) with k/F = 32/16384, a cut 25% below the threshold passes about 8x the
/// budget, within the 16x the kernels collect, and heavier tails pass fewer. A cut that passes
/// too few or too many costs one read of the scores, never the result.
const GLOBAL_CUT_MARGIN: f32 = 0.25;

/// The candidate cut for the next batch's global selection: this batch's smallest kept score,
/// lowered by [`GLOBAL_CUT_MARGIN`] of its magnitude; `None` when nothing was kept.
fn global_cut(selection: &Selection) -> Option<f32> {
    let smallest = selection.scores().iter().copied().reduce(f32::min)?;
    Some(smallest - GLOBAL_CUT_MARGIN * smallest.abs())
}
