//! The peers of a run on several devices of this machine (`distributed.devices`).
//!
//! The training loop is peer 0: it reads every global batch, keeps the run's bookkeeping
//! (metrics, evaluation, checkpoints, export) and trains on the first rows. Peers `1..P` are
//! threads that each hold a copy of the training state and train on their rows of the batch the
//! loop hands them. The peers sum their counts and gradients through burn-collective
//! ([`BurnPeer`]), so every peer applies the same update and holds the same state: peer 0's
//! is the run's.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;

use burn::tensor::backend::AutodiffBackend;
use sae_model::{BurnPeer, SaeError, Sparsifier, StepOutput, TrainConfig, TrainState, TrainStep};

use crate::tensor::to_device;

/// Rows of peer `p` of `peers` in a batch of `n` rows: consecutive, balanced, in peer order.
pub fn shard(n: usize, peers: usize, p: usize) -> std::ops::Range<usize> {
    p * n / peers..(p + 1) * n / peers
}

/// What the loop asks of a peer thread.
enum Job {
    /// Register with the other peers (every peer's state is ready).
    Register,
    /// Train on these rows (row-major, `d` wide) at this learning rate.
    Step { rows: Vec<f32>, lr: f64 },
}

/// A peer thread: its job queue, its answers, and its handle.
struct Worker {
    jobs: Sender<Job>,
    answers: Receiver<Result<(), SaeError>>,
    handle: JoinHandle<()>,
}

/// burn-collective keeps one group of peers per process: one run over several peers at a
/// time.
static ONE_GROUP: Mutex<()> = Mutex::new(());

/// Peers `1..P` of a run, and peer 0's own handle on the collective. Dropping it stops the
/// peer threads.
pub struct Peers<B: AutodiffBackend> {
    workers: Vec<Worker>,
    own: Option<BurnPeer<B::InnerBackend>>,
    d: usize,
    _group: MutexGuard<'static, ()>,
}

impl<B: AutodiffBackend> std::fmt::Debug for Peers<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("peers", &(self.workers.len() + 1))
            .finish_non_exhaustive()
    }
}

fn stopped(peer: usize) -> SaeError {
    SaeError::Collective {
        peer,
        reason: "the peer's thread stopped".into(),
    }
}

impl<B: AutodiffBackend> Peers<B> {
    /// Starts peers `1..devices`, each from `state` with a sparsifier from `sparsifier`, and
    /// registers all of them (peer 0 being the caller) with burn-collective on `device`; a
    /// sum that waits longer than `timeout` for the others fails (see [`BurnPeer`]).
    pub fn start(
        devices: usize,
        state: &TrainState,
        mut sparsifier: impl FnMut() -> Result<Box<dyn Sparsifier>, SaeError>,
        config: &TrainConfig,
        device: &B::Device,
        timeout: Duration,
    ) -> Result<Self, SaeError> {
        let group = match ONE_GROUP.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(SaeError::Config(
                    "another run over several peers is running in this process".into(),
                ));
            }
        };
        let d = state.params.d_model;
        let mut workers = Vec::with_capacity(devices - 1);
        for peer in 1..devices {
            let (jobs, inbox) = channel::<Job>();
            let (outbox, answers) = channel();
            let (state, config, device) = (state.clone(), config.clone(), device.clone());
            let rule = sparsifier()?;
            let handle = std::thread::Builder::new()
                .name(format!("sae-peer-{peer}"))
                .spawn(move || {
                    let ready = TrainStep::<B>::from_state(&state, rule, config, &device);
                    drop(state);
                    let group = Group {
                        peer,
                        peers: devices,
                        timeout,
                    };
                    serve(group, d, ready, &device, &inbox, &outbox);
                })
                .map_err(|e| SaeError::Collective {
                    peer,
                    reason: format!("cannot start its thread: {e}"),
                })?;
            workers.push(Worker {
                jobs,
                answers,
                handle,
            });
        }
        // Every peer has its state before any registers: a peer that fails here must not
        // leave the others waiting for it.
        for (i, w) in workers.iter().enumerate() {
            w.answers.recv().map_err(|_| stopped(i + 1))??;
        }
        for (i, w) in workers.iter().enumerate() {
            w.jobs.send(Job::Register).map_err(|_| stopped(i + 1))?;
        }
        let own = BurnPeer::register(0, devices, device, timeout)?;
        for (i, w) in workers.iter().enumerate() {
            w.answers.recv().map_err(|_| stopped(i + 1))??;
        }
        Ok(Self {
            workers,
            own: Some(own),
            d,
            _group: group,
        })
    }

    /// One step of every peer on the global batch `x` (row-major), peer 0 being `step`.
    /// Returns peer 0's output: the batch's losses, its own rows' selection.
    pub fn step(&mut self, step: &mut TrainStep<B>, x: &[f32]) -> Result<StepOutput, SaeError> {
        let d = self.d;
        let n = x.len() / d;
        let peers = self.workers.len() + 1;
        let lr = step.lr();
        for (i, w) in self.workers.iter().enumerate() {
            let rows = shard(n, peers, i + 1);
            let rows = x[rows.start * d..rows.end * d].to_vec();
            w.jobs
                .send(Job::Step { rows, lr })
                .map_err(|_| stopped(i + 1))?;
        }
        let own = shard(n, peers, 0);
        let device = step.device().clone();
        let batch = to_device::<B>(&x[own.start * d..own.end * d], own.len(), d, &device);
        let own = self
            .own
            .as_mut()
            .expect("peer 0 is registered while the peers live");
        let out = step.train_step_sharded(batch, own);
        // Every peer answers, so none is left mid-step; their errors are those of peer 0.
        let mut first_other = None;
        for (i, w) in self.workers.iter().enumerate() {
            let answer = w.answers.recv().map_err(|_| stopped(i + 1));
            if let (None, Err(e) | Ok(Err(e))) = (&first_other, answer) {
                first_other = Some(e);
            }
        }
        match (out, first_other) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(e)) => Err(e),
            (Ok(out), None) => Ok(out),
        }
    }
}

impl<B: AutodiffBackend> Drop for Peers<B> {
    /// Stops the peer threads: each unregisters as its queue closes.
    fn drop(&mut self) {
        drop(self.own.take());
        let unwinding = std::thread::panicking();
        for w in self.workers.drain(..) {
            drop(w.jobs);
            // Unwinding, a thread may wait in a sum this one will never join: leave it.
            if !unwinding {
                // A thread that panicked has nothing more to say.
                let _ = w.handle.join();
            }
        }
    }
}

/// A peer thread's place in the group.
struct Group {
    peer: usize,
    peers: usize,
    timeout: Duration,
}

/// The life of a peer thread: report whether its state is ready, register when asked, then
/// train on the rows it is given until the loop closes its queue.
fn serve<B: AutodiffBackend>(
    Group {
        peer,
        peers,
        timeout,
    }: Group,
    d: usize,
    ready: Result<TrainStep<B>, SaeError>,
    device: &B::Device,
    inbox: &Receiver<Job>,
    outbox: &Sender<Result<(), SaeError>>,
) {
    let mut step = match ready {
        Ok(step) => step,
        Err(e) => {
            let _ = outbox.send(Err(e));
            return;
        }
    };
    if outbox.send(Ok(())).is_err() || !matches!(inbox.recv(), Ok(Job::Register)) {
        return;
    }
    let mut collective = match BurnPeer::<B::InnerBackend>::register(peer, peers, device, timeout) {
        Ok(c) => c,
        Err(e) => {
            let _ = outbox.send(Err(e));
            return;
        }
    };
    if outbox.send(Ok(())).is_err() {
        return;
    }
    while let Ok(Job::Step { rows, lr }) = inbox.recv() {
        step.set_lr(lr);
        let n = rows.len() / d;
        let batch = to_device::<B>(&rows, n, d, device);
        let result = step.train_step_sharded(batch, &mut collective).map(|_| ());
        if outbox.send(result).is_err() {
            return;
        }
    }
}
