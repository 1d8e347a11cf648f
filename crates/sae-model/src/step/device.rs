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
use sae_alloc::sharded::{
    Candidates, ShardSelection, ShardedError, column_candidates, column_topm_of_candidates,
    global_candidates, global_topk_of_candidates, row_topk_of_candidates,
};
use sae_alloc::{AllocError, Selection};
use sae_kernels::step::{
    Activation as KernelActivation, DeviceStep, PairInputs, ParamBuffers, Reconstruction,
    ShardPass, ShardSums, StepInputs, train_step, update_from_gradients,
};
use sae_kernels::{DeviceSelection, KernelError};

use super::{ReconLoss, StepOutput, StepPath, TrainStep};
use crate::adam::Adam;
use crate::collective::{Collective, PeerSums, SinglePeer};
use crate::device::{
    aux_ranked, contiguous, contiguous_scores, from_cube, kernel_error, select_on_cube, to_cube,
};
use crate::error::{Result, SaeError, nan_is_bad_input};
use crate::fused::grads::{any_non_finite, batch_variance, first_flagged};
use crate::rule::{Activation, BuiltinRule};
use crate::sae::{SaeTensors, host_vec};

/// burn's cubecl backend without fusion, on which the step's few tensor operations run.
type Cube<R> = CubeBackend<R, f32, i32, u32>;

/// Returns `$step` with `$cube` the cubecl tensor behind the batch `$x`, on whichever runtime
/// holds it (wgpu; CUDA with the `cuda` feature), or the error of a backend that is not
/// cubecl's. `B` is the step's backend.
macro_rules! on_cube_runtime {
    ($x:expr, $cube:ident => $step:expr) => {{
        let x = $x;
        if let Some($cube) = to_cube::<_, cubecl::wgpu::WgpuRuntime, 2>(x.clone()) {
            return $step;
        }
        #[cfg(feature = "cuda")]
        if let Some($cube) = to_cube::<_, cubecl::cuda::CudaRuntime, 2>(x.clone()) {
            return $step;
        }
        drop(x);
        Err(SaeError::Config(format!(
            "the device step needs a cubecl backend (wgpu, cuda), not {}",
            std::any::type_name::<B::InnerBackend>()
        )))
    }};
}

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
        on_cube_runtime!(x, cube => self.cube_train_step(cube, rule))
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
        let (params, [p, m, v]) = self.cube_state::<R>()?;
        let batch = Tensor::<Cube<R>, 2>::from_primitive(TensorPrimitive::Float(x.clone()));
        let affinities = contiguous_scores(params.affinities(batch).into_primitive().tensor())?;
        let selection = select_on_cube(&affinities, rule, self.global_cut)?;
        let aux = self.cube_aux_selection(&affinities)?;
        let next = self.step + 1;
        let c = &self.config;
        let adam = Adam::new(self.lr(), c.beta1, c.beta2, c.eps, next);
        let inputs = StepInputs {
            pairs: PairInputs {
                x: &x.handle,
                affinities: &affinities.handle,
                width: d,
                selection: &selection,
                aux: aux.as_ref(),
                activation: kernel_activation(activation),
            },
            aux_coef: c.aux_coef,
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
        let (losses, _) = self.batch_losses(
            [report.sse, report.aux_sse, report.total_variance],
            report.aux_active,
            n * d,
        )?;
        if let Some(param) = report.non_finite {
            return Err(SaeError::NonFiniteGradient {
                step: self.step,
                param,
            });
        }
        let DeviceStep { params, m, v, .. } = step;
        self.adopt::<R>([params, m, v], &x)?;
        self.step = next;
        self.global_cut = match rule {
            BuiltinRule::GlobalTopK { .. } => global_cut(&report.selection),
            _ => None,
        };
        self.record(report.selection, losses, &mut SinglePeer)
    }

    /// Parameters and moments as tensors and buffers of runtime `R`: the parameters as
    /// tensors (for the encoder GEMM), and the buffers `[params, m, v]` the kernels read.
    fn cube_state<R: CubeRuntime>(&self) -> Result<(SaeTensors<Cube<R>>, [ParamBuffers; 3])> {
        let params = cube_tensors::<B, R>(&self.params)?;
        let state = [
            buffers(&params),
            buffers(&cube_tensors::<B, R>(&self.adam_m)?),
            buffers(&cube_tensors::<B, R>(&self.adam_v)?),
        ];
        Ok((params, state))
    }

    /// The step's `[loss, mse, fvu, aux]` from the batch's `[sse, aux_sse, total variance]`
    /// over its `elements` (rows times width), and the reconstruction term's scale; an error
    /// when the loss is not finite.
    fn batch_losses(
        &self,
        [sse, aux_sse, total_variance]: [f64; 3],
        aux_active: bool,
        elements: usize,
    ) -> Result<([f32; 4], f64)> {
        let c = &self.config;
        let recon_scale = match c.recon_loss {
            ReconLoss::Fvu => 1.0 / total_variance,
            ReconLoss::Mse => 1.0 / elements as f64,
        };
        let aux_loss = if aux_active { aux_sse / sse } else { 0.0 };
        let loss = (sse * recon_scale + f64::from(c.aux_coef) * aux_loss) as f32;
        if !loss.is_finite() {
            return Err(SaeError::NonFiniteLoss {
                step: self.step,
                loss,
            });
        }
        let mse = (sse / elements as f64) as f32;
        let fvu = (sse / total_variance) as f32;
        Ok(([loss, mse, fvu, aux_loss as f32], recon_scale))
    }

    /// The auxiliary loss's selection on the device: each token's top `k_aux` of the
    /// auxiliary candidates' ranked affinities, if the loss has candidates this step.
    fn cube_aux_selection<R: CubeRuntime>(
        &self,
        affinities: &CubeTensor<R>,
    ) -> Result<Option<DeviceSelection<R>>> {
        let Some((weights, k_aux)) = self.aux_candidates() else {
            return Ok(None);
        };
        let scores =
            Tensor::<Cube<R>, 2>::from_primitive(TensorPrimitive::Float(affinities.clone()));
        let ranked = aux_ranked(&scores, &weights, self.sparsifier.activation());
        let k = k_aux.min(weights.len());
        let ranked = contiguous(ranked.into_primitive().tensor());
        Ok(Some(select_on_cube(
            &ranked,
            &BuiltinRule::RowTopK { k },
            None,
        )?))
    }

    /// [`TrainStep::train_step_sharded`] on the device path: `x` is this peer's rows of a
    /// batch of `batch_rows` rows; the batch's width is checked.
    pub(super) fn device_train_step_sharded(
        &mut self,
        x: Tensor<B::InnerBackend, 2>,
        batch_rows: usize,
        peers: &mut dyn Collective,
    ) -> Result<StepOutput> {
        on_cube_runtime!(x, cube => self.cube_train_step_sharded(cube, batch_rows, peers))
    }

    /// The device step of one peer on runtime `R`. The kernels are the single-device step's,
    /// and every sum over the batch goes through `peers`, in the same order on every peer:
    /// the FVU denominator (from the batch's column means), the selection's rounds
    /// (`sae_alloc::sharded` on the candidates the device selects from this peer's rows), the
    /// loss terms, and the gradients, which come to the host, are summed, and go back for the
    /// update. Every peer applies the same update to the same state.
    fn cube_train_step_sharded<R: CubeRuntime>(
        &mut self,
        x: CubeTensor<R>,
        batch_rows: usize,
        peers: &mut dyn Collective,
    ) -> Result<StepOutput> {
        let x = contiguous(x);
        let client = x.client.clone();
        let d = x.meta.shape()[1];
        let f = self.params.b_enc.dims()[0];
        let batch = Tensor::<Cube<R>, 2>::from_primitive(TensorPrimitive::Float(x.clone()));
        // The FVU denominator, from the batch's column means ([n, d] comes to the host).
        let (total_variance, _) =
            batch_variance(&host_vec(batch.clone()), d, &mut PeerSums(peers))?;
        let rule = self.sharded_rule(batch_rows)?;
        let (params, [p, m, v]) = self.cube_state::<R>()?;
        let affinities = contiguous_scores(params.affinities(batch).into_primitive().tensor())?;
        let (selection, on_device) = sharded_cube_select(&affinities, &rule, peers)?;
        let aux = self.cube_aux_selection(&affinities)?;
        let pass = ShardPass::launch(
            &client,
            &PairInputs {
                x: &x.handle,
                affinities: &affinities.handle,
                width: d,
                selection: &on_device,
                aux: aux.as_ref(),
                activation: kernel_activation(self.sparsifier.activation()),
            },
            &p,
        )
        .map_err(kernel_error)?;
        // A peer whose device fails still takes part in each sum, saying so: every peer stops
        // at that sum, before any update, naming it.
        let (sums, failed) = match pass.sums() {
            Ok(sums) => (sums, None),
            Err(e) => (ShardSums::default(), Some(e)),
        };
        // [squared error, auxiliary numerator, has auxiliary pairs, failed] per peer, summed
        // in peer order.
        let terms = [
            sums.sse,
            sums.aux_sse,
            f64::from(u8::from(sums.aux_active)),
            f64::from(u8::from(failed.is_some())),
        ];
        let all = PeerSums(peers).gather(&terms)?;
        devices_failed(failed, all.iter().map(|t| t[3] > 0.0))?;
        let total = |i: usize| all.iter().map(|t| t[i]).sum::<f64>();
        let [sse, aux_sse, aux_peers] = [total(0), total(1), total(2)];
        let aux_active = aux_peers > 0.0;
        let (losses, recon_scale) =
            self.batch_losses([sse, aux_sse, total_variance], aux_active, batch_rows * d)?;
        let c = &self.config;
        let aux_scale = match aux_active {
            true => -2.0 * f64::from(c.aux_coef) / sse,
            false => 0.0,
        };
        let scales = [(-2.0 * recon_scale) as f32, aux_scale as f32];
        // This peer's part of every gradient, summed over the peers on the host.
        let (mut grads, failed) = match pass.gradients(&p, scales).read(&client, f, d) {
            Ok(grads) => (grads, None),
            Err(e) => ([f * d, f, f * d, d].map(|len| vec![0.0; len]), Some(e)),
        };
        // One slot per peer: which peers' devices failed.
        let mut failures = vec![0.0f32; peers.peers()];
        failures[peers.peer()] = f32::from(u8::from(failed.is_some()));
        {
            let [w_enc, b_enc, w_dec, b_dec] = &mut grads;
            peers.sum_values(&mut [w_enc, b_enc, w_dec, b_dec, &mut failures])?;
        }
        devices_failed(failed, failures.iter().map(|&flag| flag > 0.0))?;
        if let Some(param) = first_flagged(grads.each_ref().map(|g| any_non_finite(g))) {
            return Err(SaeError::NonFiniteGradient {
                step: self.step,
                param,
            });
        }
        let next = self.step + 1;
        let adam = Adam::new(self.lr(), c.beta1, c.beta2, c.eps, next);
        let summed = ParamBuffers::upload(&client, grads.each_ref().map(Vec::as_slice));
        let state =
            update_from_gradients(&client, &summed, [&p, &m, &v], &adam.constants(), [f, d])
                .map_err(kernel_error)?;
        self.adopt::<R>(state, &x)?;
        self.step = next;
        self.global_cut = None;
        self.record(selection, losses, peers)
    }

    /// Makes a step's new buffers the parameters and moments.
    fn adopt<R: CubeRuntime>(
        &mut self,
        [params, m, v]: [ParamBuffers; 3],
        like: &CubeTensor<R>,
    ) -> Result<()> {
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

fn kernel_activation(activation: Activation) -> KernelActivation {
    match activation {
        Activation::Relu => KernelActivation::Relu,
        Activation::Identity => KernelActivation::Identity,
    }
}

/// The step's error when this peer's device failed (`own`) or, in peer order, another's.
fn devices_failed(own: Option<KernelError>, failed: impl Iterator<Item = bool>) -> Result<()> {
    if let Some(e) = own {
        return Err(kernel_error(e));
    }
    match failed.enumerate().find(|&(_, failed)| failed) {
        Some((peer, _)) => Err(SaeError::Collective {
            peer,
            reason: "its device failed during the step".into(),
        }),
        None => Ok(()),
    }
}

/// The selection of this peer's rows made over the whole batch: the device selects this
/// peer's candidates (for TopK the selection itself), they come to the host, and the sharded
/// rule's rounds over `peers` keep those of the batch's selection, which go back to the
/// device. Returns them on the host and on the device.
fn sharded_cube_select<R: CubeRuntime>(
    affinities: &CubeTensor<R>,
    rule: &BuiltinRule,
    peers: &mut dyn Collective,
) -> Result<(Selection, DeviceSelection<R>)> {
    let [rows, cols] = [affinities.meta.shape()[0], affinities.meta.shape()[1]];
    let local_rule = match rule {
        BuiltinRule::RowTopK { k } => BuiltinRule::RowTopK { k: *k },
        BuiltinRule::GlobalTopK { budget } => BuiltinRule::GlobalTopK {
            budget: global_candidates(*budget, rows * cols),
        },
        BuiltinRule::ColumnTopM { capacities } => BuiltinRule::ColumnTopM {
            capacities: column_candidates(capacities, rows)?,
        },
    };
    let on_device = select_on_cube(affinities, &local_rule, None)?;
    // A device that fails to give its candidates fails this peer's rule: the others learn of
    // it in the rule's first round, and this peer returns the device's error.
    let (local, failed) = match on_device.to_selection() {
        Ok(selection) => (Ok(selection), None),
        Err(KernelError::Alloc(e)) => (Err(e), None),
        Err(e) => (
            Err(AllocError::InvalidSelection {
                reason: "the device's candidates could not be read".into(),
            }),
            Some(e),
        ),
    };
    let candidates = Candidates { rows, cols, local };
    let exchange = &mut PeerSums(peers);
    let sharded: std::result::Result<ShardSelection, ShardedError<SaeError>> = match rule {
        BuiltinRule::RowTopK { .. } => row_topk_of_candidates(candidates, exchange),
        BuiltinRule::GlobalTopK { budget } => {
            global_topk_of_candidates(candidates, *budget, exchange)
        }
        BuiltinRule::ColumnTopM { capacities } => {
            column_topm_of_candidates(candidates, capacities, exchange)
        }
    };
    if let Some(e) = failed {
        return Err(kernel_error(e));
    }
    let selection = super::sharded::selection_of(sharded)?;
    let on_device = match rule {
        // Rows are independent: the candidates are the selection.
        BuiltinRule::RowTopK { .. } => on_device,
        _ => DeviceSelection::upload(&affinities.client, &selection),
    };
    Ok((selection, on_device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_device_is_named_by_every_peer_and_its_own_error_kept() {
        assert!(devices_failed(None, [false, false].into_iter()).is_ok());
        match devices_failed(None, [false, true, true].into_iter()) {
            Err(SaeError::Collective { peer: 1, reason }) => {
                assert!(reason.contains("device failed"), "{reason}")
            }
            other => panic!("expected peer 1 named, got {other:?}"),
        }
        let own = KernelError::Read {
            reason: "lost".into(),
        };
        match devices_failed(Some(own), [true, false].into_iter()) {
            Err(SaeError::Device(reason)) => assert!(reason.contains("lost"), "{reason}"),
            other => panic!("expected this device's error, got {other:?}"),
        }
    }
}
