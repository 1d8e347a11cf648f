//! The training step on a batch whose rows are split over several peers ([`Collective`]):
//! the host path's step or the device path's, with the selection made by `sae_alloc::sharded`
//! and every sum taken over the peers, so that every peer applies the update one device would
//! apply to the whole batch.

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use sae_alloc::sharded::{
    ShardSelection, ShardedError, column_topm_sharded, global_topk_sharded, row_topk_sharded,
};
use sae_alloc::{ScoreMatrix, Selection};

use super::{StepOutput, StepPath, TrainStep};
use crate::collective::{Collective, PeerSums, gather_counts};
use crate::device::is_cubecl;
use crate::error::{Result, SaeError, nan_is_bad_input};
use crate::rule::BuiltinRule;

impl<B: AutodiffBackend> TrainStep<B> {
    /// One optimizer step on a batch split over `peers`: `x` (`[n_p, d]`) is this peer's part,
    /// the peers holding consecutive rows of the batch in peer order.
    ///
    /// Every peer calls this with its rows; together they take the step one device takes on
    /// the whole batch ([`TrainStep::train_step`]): the same selection (the built-in rules,
    /// bit for bit), the loss of the whole batch, the sum of the peers' gradients, and the same
    /// statistics and thresholds on every peer. The returned losses are the batch's, the
    /// selection this peer's rows. An error (a NaN on any peer, a non-finite loss or gradient)
    /// is returned by every peer and leaves every state unchanged.
    ///
    /// Runs on the host path (CPU backends) or the device path (cubecl backends; the device
    /// selects this peer's candidates, the host runs the rule's rounds, and the gradients are
    /// summed on the host), and needs a sparsifier with a built-in rule.
    pub fn train_step_sharded(
        &mut self,
        x: Tensor<B, 2>,
        peers: &mut dyn Collective,
    ) -> Result<StepOutput> {
        let path = self.config.path.resolve::<B::InnerBackend>(&self.device);
        let on_device = path == StepPath::Device && is_cubecl::<B::InnerBackend>();
        if !self.on_host() && !on_device {
            return Err(SaeError::Config(format!(
                "training over several peers runs the host step (CPU backends) or the device \
                 step (cubecl backends), not step.path = {path:?} on this backend"
            )));
        }
        let x = x.inner();
        let rows = self.check_width(&x).and_then(|()| match x.dims()[0] {
            0 => Err(SaeError::Shape {
                what: "this peer's rows of the batch",
                expected: vec![1, self.params.b_dec.dims()[0]],
                actual: x.dims().to_vec(),
            }),
            _ => Ok(()),
        });
        let batch_rows = agree(rows.map(|()| x.dims()[0]), peers)?;
        match on_device {
            true => self.device_train_step_sharded(x, batch_rows, peers),
            false => self.host_train_step(x, batch_rows, peers),
        }
    }

    /// The built-in rule of a batch of `batch_rows` rows over all peers: a sharded step needs
    /// one (plug-ins choose pairs on their own terms, which cannot be split by rows).
    pub(super) fn sharded_rule(&self, batch_rows: usize) -> Result<BuiltinRule> {
        self.sharded(self.sparsifier.builtin(batch_rows, &self.stats)?)
    }

    /// The sparsifier's built-in `rule`, or the error of a sharded step without one.
    pub(super) fn sharded<R>(&self, rule: Option<R>) -> Result<R> {
        rule.ok_or_else(|| {
            SaeError::Config(format!(
                "sparsifier {:?} has no built-in rule; training over several peers needs one",
                self.sparsifier.name()
            ))
        })
    }

    /// The selection of this peer's `n` rows by `rule`, the training rule of the whole batch
    /// over all peers. (Every peer has rows: `train_step_sharded` agreed on that.)
    pub(super) fn sharded_select(
        &self,
        affinities: &[f32],
        n: usize,
        f: usize,
        rule: &BuiltinRule,
        peers: &mut dyn Collective,
    ) -> Result<Selection> {
        let scores = ScoreMatrix::new(affinities, n, f)?;
        let exchange = &mut PeerSums(peers);
        selection_of(match rule {
            BuiltinRule::RowTopK { k } => row_topk_sharded(&scores, *k, exchange),
            BuiltinRule::GlobalTopK { budget } => global_topk_sharded(&scores, *budget, exchange),
            BuiltinRule::ColumnTopM { capacities } => {
                column_topm_sharded(&scores, capacities, exchange)
            }
        })
    }
}

/// This peer's rows of a sharded rule's selection, or the step's error: a NaN score as the
/// non-finite input it comes from, a failed exchange as it is, another peer's failure
/// naming that peer.
pub(super) fn selection_of(
    sharded: std::result::Result<ShardSelection, ShardedError<SaeError>>,
) -> Result<Selection> {
    match sharded {
        Ok(s) => Ok(s.selection),
        Err(ShardedError::Alloc(e)) => Err(nan_is_bad_input(e.into())),
        Err(ShardedError::Exchange(e)) => Err(e),
        Err(ShardedError::PeerFailed { peer }) => Err(SaeError::Collective {
            peer,
            reason: "its selection failed".into(),
        }),
    }
}

/// Every peer learns whether every peer's own check of its rows passed, so that all go on or
/// all stop, and how many rows the batch has in all: the batch's rows, a peer's own error, or
/// an error naming the first peer that failed.
fn agree(local: Result<usize>, peers: &mut dyn Collective) -> Result<usize> {
    // Per peer: whether it failed, and its rows.
    let mine = match &local {
        Ok(rows) => [0, *rows as u64],
        Err(_) => [1, 0],
    };
    let slots = gather_counts(peers, &mine)?;
    local?;
    match slots.chunks_exact(2).position(|slot| slot[0] > 0) {
        Some(peer) => Err(SaeError::Collective {
            peer,
            reason: "its rows of the batch were rejected".into(),
        }),
        None => Ok(slots.chunks_exact(2).map(|slot| slot[1] as usize).sum()),
    }
}
