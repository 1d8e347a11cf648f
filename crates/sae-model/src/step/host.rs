//! The training step of the fused path ([`StepPath::Fused`]): the whole step on the host.
//!
//! The parameters and moments leave their tensors for the step (without a copy on the CPU
//! backends, which hold them in host memory) and go back after it: the encoder GEMM writes
//! the affinities into a buffer kept from step to step ([`HostEncoder`]; feature-major for
//! Feature Choice on one peer, whose selection reads each feature's scores, token-major
//! otherwise), the sparsifier selects on them, the fused code takes the codes from the
//! selection's scores (a built-in rule's are the affinities; a plug-in's are read from the
//! matrix) and computes the loss in a token pass, into buffers also kept from step to step
//! ([`HostBuffers`]). On one peer, when the gradients are known to be finite before they are
//! summed (a bound from the token pass,
//! [`TokenPass::finite_by_bound`](crate::fused::TokenPass::finite_by_bound)), the feature
//! pass applies Adam and the decoder constraint to each block of weight rows as it sums
//! their gradients ([`update_in_pass`]): the weight gradients, the size of the weights, are
//! never stored. Otherwise (several peers, whose gradients are summed first, or a gradient that
//! may not be finite) the gradients go into buffers, are checked, and one pass per parameter
//! applies the update ([`crate::fused::update`]). Nothing is converted to a tensor until the
//! step is done. A non-finite loss or gradient leaves the state unchanged.

use std::fmt;

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use sae_alloc::{ScoreMatrix, Selection, column_topm_transposed};

use super::grads::{HostLoss, host_loss};
use super::{LossSpec, StepOutput, StepPath, TrainStep};
use crate::adam::Adam;
use crate::collective::{Collective, PeerSums};
use crate::error::{Result, SaeError, nan_is_bad_input};
use crate::fused::update::{first_non_finite, update, update_in_pass};
use crate::fused::{
    AffinityLayout, HostEncoder, HostLossAndGrads, HostParams, PairAffinities, Residuals,
};
use crate::loss::aux_selection_in;
use crate::rule::BuiltinRule;
use crate::sae::{SaeParams, SaeTensors, host_vec};

/// What the host path keeps from step to step: the encoder's operands and output, the
/// token pass's error rows and, where they are stored, the gradients (at N = 4096,
/// F = 16384, d = 384 about 300 MiB, whose fresh allocation would cost its page faults on
/// every step).
#[derive(Default)]
pub(super) struct HostBuffers {
    encoder: HostEncoder,
    residuals: Residuals,
    grads: HostLossAndGrads,
}

impl fmt::Debug for HostBuffers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostBuffers")
            .field("encoder", &self.encoder)
            .finish_non_exhaustive()
    }
}

impl<B: AutodiffBackend> TrainStep<B> {
    /// Whether this step runs on the host ([`StepPath::Fused`] for this backend).
    pub(super) fn on_host(&self) -> bool {
        self.config.path.resolve::<B::InnerBackend>(&self.device) == StepPath::Fused
    }

    /// The affinities of the host batch `x` (`[N, d]`) by the host path's encoder, into a
    /// fresh buffer (the training step reuses its own).
    pub(super) fn host_affinities(&self, x: &[f32], n: usize) -> Vec<f32> {
        let params = self.params.to_params();
        let mut encoder = HostEncoder::default();
        encoder.affinities(&HostParams::from(&params), x, n);
        encoder.into_affinities()
    }

    /// The training rule's selection on host affinities (`[n, f]`), a NaN affinity reported as
    /// the non-finite input it comes from. (`f` is passed: during a step the parameters are
    /// out of their tensors.)
    pub(super) fn host_select(&self, affinities: &[f32], n: usize, f: usize) -> Result<Selection> {
        let scores = ScoreMatrix::new(affinities, n, f)?;
        self.sparsifier
            .select(&scores, &self.stats)
            .map_err(nan_is_bad_input)
    }

    /// [`TrainStep::train_step`] on the host path, `x` being this peer's rows of the batch
    /// (all of it for [`SinglePeer`](crate::SinglePeer)) and `batch_rows` the batch's rows
    /// over all peers; the batch's width is checked.
    pub(super) fn host_train_step(
        &mut self,
        x: Tensor<B::InnerBackend, 2>,
        batch_rows: usize,
        peers: &mut dyn Collective,
    ) -> Result<StepOutput> {
        let [n, _] = x.dims();
        let x = host_vec(x);
        let aux = self.aux_candidates();
        let lr = self.lr();
        let [p, m, v] = self.take_optimizer_state();
        let mut state = [p.into_params(), m.into_params(), v.into_params()];
        let mut buffers = std::mem::take(&mut self.host);
        let rows = [n, batch_rows];
        let result = self.host_update(&x, rows, aux, lr, &mut state, &mut buffers, peers);
        self.host = buffers;
        let [p, m, v] = state;
        self.params = SaeTensors::from_host(p, &self.device);
        self.adam_m = SaeTensors::from_host(m, &self.device);
        self.adam_v = SaeTensors::from_host(v, &self.device);
        let (l, selection) = result?;
        self.record(selection, [l.loss, l.mse, l.fvu, l.aux], peers)
    }

    /// Selection, loss, gradients and update of `state` (parameters, first and second
    /// moments); `state` is changed only when everything is finite. Returns the step's
    /// losses and its selection (of this peer's rows).
    ///
    /// With several peers, every decision is made on sums over all of them, so all peers
    /// return the same error, or apply the same update.
    #[allow(clippy::too_many_arguments)]
    fn host_update(
        &mut self,
        x: &[f32],
        [n, batch_rows]: [usize; 2],
        aux: Option<(Vec<f32>, usize)>,
        lr: f64,
        [params, m, v]: &mut [SaeParams; 3],
        HostBuffers {
            encoder,
            residuals,
            grads,
        }: &mut HostBuffers,
        peers: &mut dyn Collective,
    ) -> Result<(HostLoss, Selection)> {
        let f = params.features;
        let activation = self.sparsifier.activation();
        let host = HostParams::from(&*params);
        let rule = self.sparsifier.builtin(batch_rows, &self.stats)?;
        // Over several peers the rule must be built in: known before any compute.
        let sharded = match peers.peers() {
            1 => None,
            _ => Some(self.sharded(rule.as_ref())?),
        };
        // Feature Choice on one peer selects each feature's tokens: it holds the affinities
        // feature-major, so that they are contiguous. Every other case holds them
        // token-major, as sparsifiers and the sharded rules read them.
        let capacities = match &rule {
            Some(BuiltinRule::ColumnTopM { capacities }) if sharded.is_none() => Some(capacities),
            _ => None,
        };
        let layout = match capacities {
            Some(_) => AffinityLayout::FeatureMajor,
            None => AffinityLayout::TokenMajor,
        };
        let affinities = encoder.affinities_in(layout, &host, x, n);
        let selection = match (capacities, sharded) {
            (Some(capacities), _) => {
                column_topm_transposed(&ScoreMatrix::new(affinities, f, n)?, capacities)
                    .map_err(|e| nan_is_bad_input(e.into()))?
            }
            (None, Some(rule)) => self.sharded_select(affinities, n, f, rule, peers)?,
            (None, None) => self.host_select(affinities, n, f)?,
        };
        let aux_selection = match aux {
            Some((weights, k_aux)) => Some(aux_selection_in(
                layout, affinities, n, f, &weights, k_aux, activation,
            )?),
            None => None,
        };
        // The auxiliary loss is on when the batch has auxiliary pairs on any peer.
        let mut aux_pairs = [aux_selection.as_ref().map_or(0, |a| a.nnz() as u64)];
        peers.sum_counts(&mut aux_pairs)?;
        let aux_selection = aux_selection.filter(|_| aux_pairs[0] > 0);
        // A built-in rule's selection holds the affinities of its pairs as its scores (so does
        // the auxiliary selection): the codes are read in pair order from them, not gathered
        // from the matrix. A plug-in's scores may be anything.
        let codes = match rule {
            Some(_) => PairAffinities::SelectionScores,
            None => PairAffinities::Matrix(affinities),
        };
        let (loss, pass) = host_loss(
            &host,
            x,
            &LossSpec {
                selection: &selection,
                aux_selection: aux_selection.as_ref(),
                activation,
                recon_loss: self.config.recon_loss,
                aux_coef: self.config.aux_coef,
                path: StepPath::Fused,
            },
            codes,
            residuals,
            &mut PeerSums(&mut *peers),
        )?;
        if !loss.loss.is_finite() {
            return Err(SaeError::NonFiniteLoss {
                step: self.step,
                loss: loss.loss,
            });
        }
        let c = &self.config;
        // On one peer, with gradients known to be finite before they are summed, each block
        // of weight rows is updated as its gradients are summed: they are never stored.
        if peers.peers() == 1 && pass.finite_by_bound() {
            self.step += 1;
            let adam = Adam::new(lr, c.beta1, c.beta2, c.eps, self.step);
            update_in_pass(&adam, &pass, x, params, m, v);
            return Ok((loss, selection));
        }
        pass.gradients_into(x, host.b_dec, grads);
        // The batch's gradients: the sum of every peer's part, in one exchange.
        peers.sum_values(&mut [
            &mut grads.w_enc,
            &mut grads.b_enc,
            &mut grads.w_dec,
            &mut grads.b_dec,
        ])?;
        // A sum over peers can make finite parts a non-finite whole, and one peer's
        // non-finite part spoils every peer's sum: summed gradients are checked again.
        let non_finite = match peers.peers() {
            1 => grads.non_finite,
            _ => first_non_finite(grads),
        };
        if let Some(param) = non_finite {
            return Err(SaeError::NonFiniteGradient {
                step: self.step,
                param,
            });
        }
        self.step += 1;
        let adam = Adam::new(lr, c.beta1, c.beta2, c.eps, self.step);
        update(&adam, params, grads, m, v);
        Ok((loss, selection))
    }
}
