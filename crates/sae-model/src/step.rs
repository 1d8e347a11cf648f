//! One training step: forward, losses, backward, decoder constraint, Adam, statistics.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use sae_alloc::{ScoreMatrix, Selection, ThresholdEstimator, Thresholds, apply_thresholds};
use serde::{Deserialize, Serialize};

use crate::dense::dense_decode;
use crate::error::{Result, SaeError};
use crate::fused::{HostLossSpec, HostParams, host_loss_and_grads, total_variance};
use crate::loss::{AuxLoss, aux_normalised, fvu, mse};
use crate::sae::{Sae, SaeParams, SaeTensors, host_vec, normalize_rows, remove_parallel_gradient};
use crate::sparse::{Pairs, sparse_decode};
use crate::sparsifier::{Activation, BatchSelection, InferenceRule, Sparsifier, select_on_backend};
use crate::stats::{FeatureStats, StatsConfig};

/// How codes and reconstructions are computed in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPath {
    /// The backend's training path: [`StepPath::Fused`] on the CPU backends (Flex, NdArray),
    /// [`StepPath::Sparse`] on the others.
    #[default]
    Auto,
    /// Hand-written forward and backward over the selected pairs on the host, O(N k d) with no
    /// `[P, d]` intermediate ([`crate::fused`]; the CPU training path).
    Fused,
    /// Differentiable gathers at the selected pairs on the backend, O(N k d) forward and
    /// backward (the device training path).
    Sparse,
    /// Dense masked codes `[N, F]` (the mask written on the device) and a dense decoder GEMM:
    /// the oracle, and a GPU path with no per-pair loops (see the crate README).
    Dense,
}

/// The reconstruction term of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconLoss {
    /// Fraction of variance unexplained (normalised MSE).
    #[default]
    Fvu,
    /// Mean squared error over all elements.
    Mse,
}

/// Hyper-parameters of the training step (paper defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Adam learning rate; `None`: 2e-4 / sqrt(F / 16384).
    pub lr: Option<f64>,
    /// Adam beta 1.
    pub beta1: f64,
    /// Adam beta 2.
    pub beta2: f64,
    /// Adam epsilon.
    pub eps: f64,
    /// Reconstruction term.
    pub recon_loss: ReconLoss,
    /// Auxiliary loss.
    pub aux: AuxLoss,
    /// Coefficient of the auxiliary loss.
    pub aux_coef: f32,
    /// Features per token of the auxiliary selection; `None`: d / 2.
    pub k_aux: Option<usize>,
    /// Windows of the feature statistics.
    pub stats: StatsConfig,
    /// Decay of the inference-threshold EMA.
    pub threshold_decay: f32,
    /// How the loss and gradients are computed.
    pub path: StepPath,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: None,
            beta1: 0.9,
            beta2: 0.999,
            eps: 6.25e-10,
            recon_loss: ReconLoss::Fvu,
            aux: AuxLoss::AuxK,
            aux_coef: 1.0 / 32.0,
            k_aux: None,
            stats: StatsConfig::default(),
            threshold_decay: 0.99,
            path: StepPath::Auto,
        }
    }
}

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

/// Loss values and parameter gradients of one batch, without any update.
#[derive(Debug, Clone)]
pub struct LossAndGrads<B: Backend> {
    /// Total loss.
    pub loss: f32,
    /// Mean squared error.
    pub mse: f32,
    /// Fraction of variance unexplained.
    pub fvu: f32,
    /// Auxiliary loss before its coefficient.
    pub aux: f32,
    /// Gradients of the total loss, one per parameter.
    pub grads: SaeTensors<B>,
}

/// What a loss needs besides the parameters and the batch.
#[derive(Debug, Clone, Copy)]
pub struct LossSpec<'a> {
    /// The batch's selection.
    pub selection: &'a Selection,
    /// The auxiliary selection, if any.
    pub aux_selection: Option<&'a Selection>,
    /// Activation of the selected affinities.
    pub activation: Activation,
    /// Reconstruction term.
    pub recon_loss: ReconLoss,
    /// Coefficient of the auxiliary loss.
    pub aux_coef: f32,
    /// How the loss and gradients are computed.
    pub path: StepPath,
}

fn decode<B: Backend>(
    path: StepPath,
    params: &SaeTensors<B>,
    x: Tensor<B, 2>,
    selection: &Selection,
    activation: Activation,
) -> Tensor<B, 2> {
    match path {
        StepPath::Dense => dense_decode(params, x, selection, activation),
        _ => {
            let pairs = Pairs::from_selection(selection, &x.device());
            sparse_decode(params, x, &pairs, activation)
        }
    }
}

impl StepPath {
    /// The concrete path on backend `B` (or `Autodiff<B>`): resolves [`StepPath::Auto`].
    pub fn resolve<B: Backend>(self, device: &B::Device) -> StepPath {
        let name = B::name(device);
        let on_cpu = ["flex", "ndarray"].iter().any(|cpu| name.contains(cpu));
        match self {
            StepPath::Auto if on_cpu => StepPath::Fused,
            StepPath::Auto => StepPath::Sparse,
            path => path,
        }
    }
}

/// [`loss_and_grads`] on the fused host path.
fn fused_loss_and_grads<B: Backend>(
    params: &SaeTensors<B>,
    x: Tensor<B, 2>,
    spec: &LossSpec<'_>,
) -> LossAndGrads<B> {
    let device = x.device();
    let [n, d] = x.dims();
    let x = host_vec(x);
    let p = params.to_params();
    let total = total_variance(&x, d);
    let recon_scale = match spec.recon_loss {
        ReconLoss::Fvu => 1.0 / total,
        ReconLoss::Mse => 1.0 / (n * d) as f64,
    };
    let out = host_loss_and_grads(
        &HostParams {
            w_enc: &p.w_enc,
            b_enc: &p.b_enc,
            w_dec: &p.w_dec,
            b_dec: &p.b_dec,
        },
        &x,
        &HostLossSpec {
            selection: spec.selection,
            aux_selection: spec.aux_selection,
            activation: spec.activation,
            recon_scale,
            aux_coef: spec.aux_coef,
        },
    );
    let recon = out.sse * recon_scale;
    let f = p.features;
    let grads = SaeParams {
        d_model: d,
        features: f,
        w_enc: out.w_enc,
        b_enc: out.b_enc,
        w_dec: out.w_dec,
        b_dec: out.b_dec,
    };
    LossAndGrads {
        loss: (recon + f64::from(spec.aux_coef) * out.aux) as f32,
        mse: (out.sse / (n * d) as f64) as f32,
        fvu: (out.sse / total) as f32,
        aux: out.aux as f32,
        grads: SaeTensors::from_host(grads, &device),
    }
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f32 {
    t.into_scalar().elem::<f32>()
}

fn is_finite<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    scalar(t.clone().sum()).is_finite()
}

/// Loss and gradients of all parameters for a batch and a given selection.
///
/// Both paths compute the same function; the dense one is the oracle of the sparse one.
pub fn loss_and_grads<B: AutodiffBackend>(
    params: &SaeTensors<B::InnerBackend>,
    x: Tensor<B::InnerBackend, 2>,
    spec: &LossSpec<'_>,
) -> Result<LossAndGrads<B::InnerBackend>> {
    match spec.path.resolve::<B::InnerBackend>(&x.device()) {
        StepPath::Fused => Ok(fused_loss_and_grads(params, x, spec)),
        path => autodiff_loss_and_grads::<B>(params, x, spec, path),
    }
}

/// [`loss_and_grads`] by autodiff through the sparse or the dense decoder.
fn autodiff_loss_and_grads<B: AutodiffBackend>(
    params: &SaeTensors<B::InnerBackend>,
    x: Tensor<B::InnerBackend, 2>,
    spec: &LossSpec<'_>,
    path: StepPath,
) -> Result<LossAndGrads<B::InnerBackend>> {
    let leaves = SaeTensors::<B> {
        w_enc: Tensor::from_inner(params.w_enc.clone()).require_grad(),
        b_enc: Tensor::from_inner(params.b_enc.clone()).require_grad(),
        w_dec: Tensor::from_inner(params.w_dec.clone()).require_grad(),
        b_dec: Tensor::from_inner(params.b_dec.clone()).require_grad(),
    };
    let x = Tensor::<B, 2>::from_inner(x);
    let decoded = decode(path, &leaves, x.clone(), spec.selection, spec.activation);
    let recon = decoded + leaves.b_dec.clone().unsqueeze_dim(0);
    let mse_t = mse(x.clone(), recon.clone());
    let fvu_t = fvu(x.clone(), recon.clone());
    let mut loss = match spec.recon_loss {
        ReconLoss::Fvu => fvu_t.clone(),
        ReconLoss::Mse => mse_t.clone(),
    };
    let mut aux = 0.0;
    if let Some(aux_sel) = spec.aux_selection.filter(|s| s.nnz() > 0) {
        let residual = x.clone() - recon.detach();
        let e_hat = decode(path, &leaves, x, aux_sel, spec.activation);
        let aux_t = aux_normalised(residual, e_hat);
        aux = scalar(aux_t.clone().detach());
        loss = loss + aux_t.mul_scalar(spec.aux_coef);
    }
    let loss_value = scalar(loss.clone().detach());
    let grads = loss.backward();
    let grad_of = |leaf: &Tensor<B, 2>| {
        leaf.grad(&grads)
            .unwrap_or_else(|| Tensor::zeros(leaf.dims(), &leaf.device()))
    };
    let grad_of_1 = |leaf: &Tensor<B, 1>| {
        leaf.grad(&grads)
            .unwrap_or_else(|| Tensor::zeros(leaf.dims(), &leaf.device()))
    };
    Ok(LossAndGrads {
        loss: loss_value,
        mse: scalar(mse_t.detach()),
        fvu: scalar(fvu_t.detach()),
        aux,
        grads: SaeTensors {
            w_enc: grad_of(&leaves.w_enc),
            b_enc: grad_of_1(&leaves.b_enc),
            w_dec: grad_of(&leaves.w_dec),
            b_dec: grad_of_1(&leaves.b_dec),
        },
    })
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
        let affinities = self.params.affinities(x.inner());
        let [n, f] = affinities.dims();
        let host = host_vec(affinities);
        let scores = ScoreMatrix::new(&host, n, f)?;
        match (self.sparsifier.inference_rule(), self.thresholds()) {
            (InferenceRule::PerToken, _) => self.sparsifier.select_per_token(&scores, &self.stats),
            (_, Some(t)) => Ok(apply_thresholds(&scores, &t)?),
            (_, None) => Err(SaeError::Config("no thresholds estimated yet".into())),
        }
    }

    /// One optimizer step on the batch `x` (`[N, d]`).
    ///
    /// On a non-finite loss or gradient the state is left unchanged and an error is returned.
    pub fn train_step(&mut self, x: Tensor<B, 2>) -> Result<StepOutput> {
        let x = x.inner();
        let [n, d] = x.dims();
        if d != self.params.b_dec.dims()[0] {
            return Err(SaeError::Shape {
                what: "batch",
                expected: vec![n, self.params.b_dec.dims()[0]],
                actual: vec![n, d],
            });
        }
        let activation = self.sparsifier.activation();
        let affinities = self.params.affinities(x.clone());
        let batch =
            select_on_backend(affinities, self.sparsifier.as_ref(), &self.stats).map_err(|e| {
                match e {
                    SaeError::Alloc(sae_alloc::AllocError::NanScore { .. }) => {
                        SaeError::NonFiniteInput
                    }
                    e => e,
                }
            })?;
        let aux_selection = match self.config.aux {
            AuxLoss::None => None,
            aux => {
                let weights = match aux {
                    AuxLoss::AuxZipf { exponent } => self
                        .stats
                        .underused_weights(self.sparsifier.k() as f64, exponent),
                    _ => self.stats.dead_weights(),
                };
                if weights.iter().any(|&w| w > 0.0) {
                    let k_aux = self.config.k_aux.unwrap_or(d / 2);
                    Some(batch.aux_selection(&weights, k_aux, activation)?)
                } else {
                    None
                }
            }
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
        for (name, ok) in [
            ("w_enc", is_finite(&g.w_enc)),
            ("b_enc", is_finite(&g.b_enc)),
            ("w_dec", is_finite(&g.w_dec)),
            ("b_dec", is_finite(&g.b_dec)),
        ] {
            if !ok {
                return Err(SaeError::NonFiniteGradient {
                    step: self.step,
                    param: name,
                });
            }
        }
        let g_w_dec = remove_parallel_gradient(self.params.w_dec.clone(), g.w_dec);
        self.step += 1;
        let adam = Adam::new(&self.config, self.lr(), self.step);
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
        self.stats.update(&selection, |z| activation.fires(z))?;
        if let Some(t) = self.thresholds.as_mut() {
            t.update(&selection)?;
        }
        Ok(StepOutput {
            loss: out.loss,
            mse: out.mse,
            fvu: out.fvu,
            aux: out.aux,
            l0_mean: self.stats.last_l0_mean(),
            dead_fraction: self.stats.dead_fraction(),
            selection,
        })
    }
}

/// Adam (Kingma & Ba) with bias correction, on plain tensors.
#[derive(Debug, Clone, Copy)]
struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    correction1: f64,
    correction2: f64,
}

impl Adam {
    fn new(config: &TrainConfig, lr: f64, step: u64) -> Self {
        let t = step as i32;
        Self {
            lr,
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            correction1: 1.0 - config.beta1.powi(t),
            correction2: 1.0 - config.beta2.powi(t),
        }
    }

    fn update<B: Backend, const D: usize>(
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
}
