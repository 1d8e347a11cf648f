//! One training step: forward, losses, backward, decoder constraint, Adam, statistics.

use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use sae_alloc::{ScoreMatrix, Selection, ThresholdEstimator, Thresholds, apply_thresholds};
use serde::{Deserialize, Serialize};

mod config;
mod device;
mod grads;
mod host;
mod sharded;

pub use config::{ReconLoss, StepPath, TrainConfig};
pub use grads::{LossAndGrads, LossSpec, loss_and_grads};

use crate::adam::Adam;
use crate::collective::{Collective, SinglePeer, gather};
use crate::dispatch::{BatchAffinities, BatchSelection, select_on_backend};
use crate::error::{Result, SaeError, nan_is_bad_input};
use crate::fused::grads::first_flagged;
use crate::loss::AuxLoss;
use crate::rule::InferenceRule;
use crate::sae::{Sae, SaeParams, SaeTensors, host_vec, normalize_rows, remove_parallel_gradient};
use crate::sparsifier::Sparsifier;
use crate::stats::FeatureStats;
use grads::is_finite;
use host::HostBuffers;

/// Scalar metrics of one step, plus its selection.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// Total loss (reconstruction + aux_coef * aux).
    pub loss: f32,
    /// Mean squared error over all elements.
    pub mse: f32,
    /// Fraction of variance unexplained.
    pub fvu: f32,
    /// Auxiliary loss before its coefficient (0 without candidates).
    pub aux: f32,
    /// Mean number of non-zero codes per token.
    pub l0_mean: f32,
    /// Fraction of dead features after the update.
    pub dead_fraction: f32,
    /// The batch's selection.
    pub selection: Selection,
}

/// Everything a checkpoint needs to resume training bit-identically, as raw host values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Model parameters.
    pub params: SaeParams,
    /// Adam first moments, shaped like the parameters.
    pub adam_m: SaeParams,
    /// Adam second moments, shaped like the parameters.
    pub adam_v: SaeParams,
    /// Optimizer steps taken.
    pub step: u64,
    /// Feature statistics.
    pub stats: FeatureStats,
    /// Inference-threshold estimator (MC / FC).
    pub thresholds: Option<ThresholdEstimator>,
}

/// The SAE under training with its optimizer state, statistics and sparsifier.
#[derive(Debug)]
pub struct TrainStep<B: AutodiffBackend> {
    params: SaeTensors<B::InnerBackend>,
    adam_m: SaeTensors<B::InnerBackend>,
    adam_v: SaeTensors<B::InnerBackend>,
    step: u64,
    stats: FeatureStats,
    thresholds: Option<ThresholdEstimator>,
    sparsifier: Box<dyn Sparsifier>,
    config: TrainConfig,
    device: B::Device,
    /// The host path's buffers, reused from step to step.
    host: HostBuffers,
    /// The device path's candidate cut for Mutual Choice, from the previous batch's threshold
    /// (`None` before the first step and after a resume); it changes the time, never the bits.
    global_cut: Option<f32>,
}

fn zeros_like<B: Backend>(p: &SaeTensors<B>) -> SaeTensors<B> {
    SaeTensors {
        w_enc: p.w_enc.zeros_like(),
        b_enc: p.b_enc.zeros_like(),
        w_dec: p.w_dec.zeros_like(),
        b_dec: p.b_dec.zeros_like(),
    }
}

fn tensors_from<B: Backend>(p: &SaeParams, device: &B::Device) -> Result<SaeTensors<B>> {
    Ok(Sae::<B>::from_params(p, device)?.tensors())
}

impl<B: AutodiffBackend> TrainStep<B> {
    /// Starts training `sae` (the decoder rows are renormalised) with a fresh optimizer.
    pub fn new(
        sae: &Sae<B::InnerBackend>,
        sparsifier: Box<dyn Sparsifier>,
        config: TrainConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let mut params = sae.tensors();
        params.w_dec = normalize_rows(params.w_dec);
        let features = params.b_enc.dims()[0];
        let thresholds = match sparsifier.inference_rule() {
            InferenceRule::PerToken => None,
            InferenceRule::GlobalThreshold => {
                Some(ThresholdEstimator::global(config.threshold_decay)?)
            }
            InferenceRule::PerFeatureThreshold => Some(ThresholdEstimator::per_feature(
                features,
                config.threshold_decay,
            )?),
        };
        Ok(Self {
            adam_m: zeros_like(&params),
            adam_v: zeros_like(&params),
            params,
            step: 0,
            stats: FeatureStats::new(features, config.stats.clone()),
            thresholds,
            sparsifier,
            config,
            device: device.clone(),
            host: HostBuffers::default(),
            global_cut: None,
        })
    }

    /// Restores a training state saved by [`TrainStep::state`] (exact).
    pub fn from_state(
        state: &TrainState,
        sparsifier: Box<dyn Sparsifier>,
        config: TrainConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let inner = device.clone();
        let params = tensors_from(&state.params, &inner)?;
        let adam_m = tensors_from(&state.adam_m, &inner)?;
        let adam_v = tensors_from(&state.adam_v, &inner)?;
        if state.stats.features() != state.params.features {
            return Err(SaeError::State(
                "statistics and parameters disagree on F".into(),
            ));
        }
        Ok(Self {
            params,
            adam_m,
            adam_v,
            step: state.step,
            stats: state.stats.clone(),
            thresholds: state.thresholds.clone(),
            sparsifier,
            config,
            device: device.clone(),
            host: HostBuffers::default(),
            global_cut: None,
        })
    }

    /// The full training state as raw host values (exact).
    pub fn state(&self) -> TrainState {
        TrainState {
            params: self.params.to_params(),
            adam_m: self.adam_m.to_params(),
            adam_v: self.adam_v.to_params(),
            step: self.step,
            stats: self.stats.clone(),
            thresholds: self.thresholds.clone(),
        }
    }

    /// The current model.
    pub fn sae(&self) -> Sae<B::InnerBackend> {
        Sae::from_tensors(self.params.clone())
    }

    /// The current parameters.
    pub fn params(&self) -> &SaeTensors<B::InnerBackend> {
        &self.params
    }

    /// The feature statistics.
    pub fn stats(&self) -> &FeatureStats {
        &self.stats
    }

    /// The sparsifier.
    pub fn sparsifier(&self) -> &dyn Sparsifier {
        self.sparsifier.as_ref()
    }

    /// Sets the Adam learning rate of the following steps (the trainer's schedule drives it).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = Some(lr);
    }

    /// The device the batches are expected on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Moves the parameters and Adam moments out, leaving one-element placeholders, so the
    /// update owns the only reference to each buffer and CPU backends update it in place.
    /// The caller puts the updated tensors back.
    fn take_optimizer_state(&mut self) -> [SaeTensors<B::InnerBackend>; 3] {
        let placeholder = || SaeTensors {
            w_enc: Tensor::zeros([1, 1], &self.device),
            b_enc: Tensor::zeros([1], &self.device),
            w_dec: Tensor::zeros([1, 1], &self.device),
            b_dec: Tensor::zeros([1], &self.device),
        };
        [
            std::mem::replace(&mut self.params, placeholder()),
            std::mem::replace(&mut self.adam_m, placeholder()),
            std::mem::replace(&mut self.adam_v, placeholder()),
        ]
    }

    /// Learning rate in use.
    pub fn lr(&self) -> f64 {
        let f = self.params.b_enc.dims()[0] as f64;
        self.config.lr.unwrap_or(2e-4 / (f / 16384.0).sqrt())
    }

    /// Current inference thresholds (MC: global, FC: per feature); `None` for per-token rules
    /// or before the first step.
    pub fn thresholds(&self) -> Option<Thresholds> {
        self.thresholds
            .as_ref()
            .and_then(ThresholdEstimator::thresholds)
    }

    /// Selection for tokens encoded one at a time: the sparsifier's per-token rule, or the
    /// estimated thresholds (`z' > theta`).
    pub fn infer(&self, x: Tensor<B, 2>) -> Result<Selection> {
        let x = x.inner();
        let (n, f) = (x.dims()[0], self.params.b_enc.dims()[0]);
        self.check_width(&x)?;
        let host = if self.on_host() {
            self.host_affinities(&host_vec(x), n)
        } else {
            host_vec(self.params.affinities(x))
        };
        let scores = ScoreMatrix::new(&host, n, f)?;
        match (self.sparsifier.inference_rule(), self.thresholds()) {
            (InferenceRule::PerToken, _) => self.sparsifier.select_per_token(&scores, &self.stats),
            (_, Some(t)) => Ok(apply_thresholds(&scores, &t)?),
            (_, None) => Err(SaeError::Config("no thresholds estimated yet".into())),
        }
    }

    /// The training rule's selection for the batch `x` (`[N, d]`), through the dispatch
    /// training uses ([`select_on_backend`]); nothing is updated.
    pub fn select(&self, x: Tensor<B, 2>) -> Result<Selection> {
        Ok(self.select_inner(x.inner())?.selection)
    }

    /// The reconstruction `b_dec + sum_p act(u_p) w_dec[f]` of the batch `x` (`[N, d]`) from
    /// the pairs of `selection`, computed by the sparse path's code (the codes recomputed
    /// from the parameters at the selected pairs), without gradients.
    pub fn reconstruct(
        &self,
        x: Tensor<B, 2>,
        selection: &Selection,
    ) -> Result<Tensor<B::InnerBackend, 2>> {
        let x = x.inner();
        let [n, d] = x.dims();
        let [features, width] = self.params.w_dec.dims();
        if (n, d, features) != (selection.rows(), width, selection.cols()) {
            return Err(SaeError::Shape {
                what: "batch and selection [tokens, width, features]",
                expected: vec![selection.rows(), width, features],
                actual: vec![n, d, selection.cols()],
            });
        }
        let decoded = grads::decode(
            StepPath::Sparse,
            &self.params,
            x,
            selection,
            self.sparsifier.activation(),
        );
        Ok(decoded + self.params.b_dec.clone().unsqueeze_dim(0))
    }

    /// An error unless `x` is `[N, d]` for this model's width `d`.
    fn check_width(&self, x: &Tensor<B::InnerBackend, 2>) -> Result<()> {
        let [n, d] = x.dims();
        let width = self.params.b_dec.dims()[0];
        if d != width {
            return Err(SaeError::Shape {
                what: "batch",
                expected: vec![n, width],
                actual: vec![n, d],
            });
        }
        Ok(())
    }

    /// The training rule's selection on the affinities of `x` after checking its width,
    /// computed where the training step computes them (the host path's encoder, or the
    /// backend and [`select_on_backend`]); a NaN affinity is reported as the non-finite input
    /// it comes from.
    fn select_inner(
        &self,
        x: Tensor<B::InnerBackend, 2>,
    ) -> Result<BatchSelection<B::InnerBackend>> {
        self.check_width(&x)?;
        if self.on_host() {
            let [n, _] = x.dims();
            let host = self.host_affinities(&host_vec(x), n);
            let selection = self.host_select(&host, n, self.params.b_enc.dims()[0])?;
            return Ok(BatchSelection {
                selection,
                affinities: BatchAffinities::Host(host),
            });
        }
        let affinities = self.params.affinities(x);
        select_on_backend(affinities, self.sparsifier.as_ref(), &self.stats)
            .map_err(nan_is_bad_input)
    }

    /// The auxiliary loss's candidate weights and `k_aux` for the next step, if the loss is
    /// on and has candidates.
    fn aux_candidates(&self) -> Option<(Vec<f32>, usize)> {
        let weights = match self.config.aux {
            AuxLoss::None => return None,
            AuxLoss::AuxZipf => self.stats.underused_weights(self.sparsifier.k() as f64),
            _ => self.stats.dead_weights(),
        };
        let d = self.params.b_dec.dims()[0];
        weights
            .iter()
            .any(|&w| w > 0.0)
            .then(|| (weights, self.config.k_aux.unwrap_or(d / 2)))
    }

    /// One optimizer step on the batch `x` (`[N, d]`).
    ///
    /// On a non-finite loss or gradient the state is left unchanged and an error is returned.
    pub fn train_step(&mut self, x: Tensor<B, 2>) -> Result<StepOutput> {
        let x = x.inner();
        self.check_width(&x)?;
        if self.on_host() {
            let n = x.dims()[0];
            return self.host_train_step(x, n, &mut SinglePeer);
        }
        if let Some(rule) = self.device_rule(x.dims()[0])? {
            return self.device_train_step(x, &rule);
        }
        let activation = self.sparsifier.activation();
        let batch = self.select_inner(x.clone())?;
        let aux_selection = match self.aux_candidates() {
            Some((weights, k_aux)) => Some(batch.aux_selection(&weights, k_aux, activation)?),
            None => None,
        };
        let BatchSelection {
            selection,
            affinities,
        } = batch;
        // The [N, F] affinities are not needed past selection: free them before backward.
        drop(affinities);
        let out = loss_and_grads::<B>(
            &self.params,
            x,
            &LossSpec {
                selection: &selection,
                aux_selection: aux_selection.as_ref(),
                activation,
                recon_loss: self.config.recon_loss,
                aux_coef: self.config.aux_coef,
                path: self.config.path,
            },
        )?;
        if !out.loss.is_finite() {
            return Err(SaeError::NonFiniteLoss {
                step: self.step,
                loss: out.loss,
            });
        }
        let g = out.grads;
        if let Some(param) = first_flagged([
            !is_finite(&g.w_enc),
            !is_finite(&g.b_enc),
            !is_finite(&g.w_dec),
            !is_finite(&g.b_dec),
        ]) {
            return Err(SaeError::NonFiniteGradient {
                step: self.step,
                param,
            });
        }
        let g_w_dec = remove_parallel_gradient(self.params.w_dec.clone(), g.w_dec);
        self.step += 1;
        let c = &self.config;
        let adam = Adam::new(self.lr(), c.beta1, c.beta2, c.eps, self.step);
        let [p, m, v] = self.take_optimizer_state();
        let (w_enc, m_w_enc, v_w_enc) = adam.update(p.w_enc, g.w_enc, m.w_enc, v.w_enc);
        let (b_enc, m_b_enc, v_b_enc) = adam.update(p.b_enc, g.b_enc, m.b_enc, v.b_enc);
        let (w_dec, m_w_dec, v_w_dec) = adam.update(p.w_dec, g_w_dec, m.w_dec, v.w_dec);
        let (b_dec, m_b_dec, v_b_dec) = adam.update(p.b_dec, g.b_dec, m.b_dec, v.b_dec);
        self.params = SaeTensors {
            w_enc,
            b_enc,
            w_dec: normalize_rows(w_dec),
            b_dec,
        };
        self.adam_m = SaeTensors {
            w_enc: m_w_enc,
            b_enc: m_b_enc,
            w_dec: m_w_dec,
            b_dec: m_b_dec,
        };
        self.adam_v = SaeTensors {
            w_enc: v_w_enc,
            b_enc: v_b_enc,
            w_dec: v_w_dec,
            b_dec: v_b_dec,
        };
        self.record(
            selection,
            [out.loss, out.mse, out.fvu, out.aux],
            &mut SinglePeer,
        )
    }

    /// After an applied update: the statistics and thresholds take in the step's selection
    /// (summed over the peers: every peer keeps the same statistics), and the step's output
    /// (`losses`: loss, MSE, FVU, auxiliary loss).
    fn record(
        &mut self,
        selection: Selection,
        losses: [f32; 4],
        peers: &mut dyn Collective,
    ) -> Result<StepOutput> {
        let [loss, mse, fvu, aux] = losses;
        let activation = self.sparsifier.activation();
        let mut fired = self
            .stats
            .fired_counts(&selection, |z| activation.fires(z))?;
        // One sum for the fires and, in the last slot, the tokens.
        fired.per_feature.push(fired.tokens);
        peers.sum_counts(&mut fired.per_feature)?;
        fired.tokens = fired.per_feature.pop().unwrap_or_default();
        self.stats.update_counts(&fired)?;
        if let Some(t) = self.thresholds.as_mut() {
            let local = t.smallest_kept(&selection)?;
            let smallest = if peers.peers() == 1 {
                local
            } else {
                let all = gather(peers, &local)?;
                (0..local.len())
                    .map(|i| {
                        all.chunks_exact(local.len())
                            .map(|slot| slot[i])
                            .fold(f32::INFINITY, f32::min)
                    })
                    .collect()
            };
            t.fold(&smallest)?;
        }
        Ok(StepOutput {
            loss,
            mse,
            fvu,
            aux,
            l0_mean: self.stats.last_l0_mean(),
            dead_fraction: self.stats.dead_fraction(),
            selection,
        })
    }
}
