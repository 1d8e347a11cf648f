//! The peers of a run on several devices (`distributed.devices`) and machines
//! (`distributed.nodes`).
//!
//! On each machine the training loop is the machine's first peer: it reads every global batch,
//! keeps the run's bookkeeping (metrics, evaluation, checkpoints, export, in the machine's own
//! run directory) and trains on its rows. The machine's other peers are threads that each hold
//! a copy of the training state and train on their rows of the batch the loop hands them. The
//! peers sum their counts and gradients through burn-collective ([`BurnPeer`]), so every peer
//! of every machine applies the same update and holds the same state.

use std::marker::PhantomData;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;

use burn::tensor::backend::{AutodiffBackend, Backend, Device as _, DeviceId};
use sae_model::{
    BurnPeer, Collective, Machines, SaeError, Sparsifier, StepOutput, TrainConfig, TrainState,
    TrainStep, disagreement, gather_counts, machine_peers,
};

use sae_data::{Cursor, DataFingerprint, Normalizer};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::config::DataConfig;
use crate::tensor::to_device;
use crate::{RunConfig, TrainError};

/// The backend the peers' sums run on, whatever the training backend: the CPU's. The step
/// sums host values (counts, loss terms, gradients read back from a GPU), and burn-fusion's
/// GPU tensors cannot move between the threads of burn-collective's all-reduce.
type Sums = burn::backend::Flex;

/// Rows of peer `p` of `peers` in a batch of `n` rows: consecutive, balanced, in peer order.
pub fn shard(n: usize, peers: usize, p: usize) -> std::ops::Range<usize> {
    p * n / peers..(p + 1) * n / peers
}

/// This machine's part in a run over several machines (`distributed.nodes`). It is given on
/// each machine's command line rather than in the run's settings, which every machine shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLaunch {
    /// This machine's position, `0..distributed.nodes`: machine `i` trains on the `i`-th share
    /// of every batch's rows.
    pub node: usize,
    /// Where the other machines reach this one, `ws://HOST:PORT`; this machine serves its
    /// tensors on that port.
    pub address: String,
    /// Where the machines meet: the address of `sae orchestrator`, `ws://HOST:PORT`.
    pub orchestrator: String,
}

/// Whether this machine can listen on `port` on every interface, as burn-collective's servers
/// (the orchestrator, a machine's tensors) do: they only log a port they cannot take, so a
/// launch finds out first. The port is free again when this returns.
pub fn can_listen(port: u16) -> std::io::Result<()> {
    std::net::TcpListener::bind(("0.0.0.0", port)).map(drop)
}

impl NodeLaunch {
    /// The machines of a run of `nodes` machines, as this one sees them, waiting at most
    /// `join_timeout` for each other to join; an error names the address at fault.
    pub fn machines(&self, nodes: usize, join_timeout: Duration) -> Result<Machines, String> {
        if self.node >= nodes {
            return Err(format!(
                "--node {} is not a machine of distributed.nodes = {nodes}: must be in 0..{nodes}",
                self.node
            ));
        }
        let port = |option: &str, address: &str| {
            let (scheme, rest) = address.split_once("://").unwrap_or(("", address));
            let host_port = rest.split('/').next().unwrap_or_default();
            match (scheme, host_port.rsplit_once(':')) {
                ("ws", Some((host, port))) if !host.is_empty() => {
                    port.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
                        format!("{option} {address:?}: the port {port:?} is not 1..=65535")
                    })
                }
                _ => Err(format!("{option} {address:?}: expected ws://HOST:PORT")),
            }
        };
        port("--orchestrator", &self.orchestrator)?;
        let data_port = port("--node-address", &self.address)?;
        // Otherwise the other machines' transfers from this one would fail mid-run.
        can_listen(data_port).map_err(|e| {
            format!(
                "--node-address {:?}: this machine cannot serve on that port ({e}): is another \
                 process using it?",
                self.address
            )
        })?;
        Ok(Machines {
            nodes,
            node: self.node,
            orchestrator: self.orchestrator.clone(),
            address: self.address.clone(),
            data_port,
            join_timeout,
        })
    }
}

/// The peers of a run as one machine holds them.
#[derive(Debug, Clone)]
pub struct Group {
    /// Peers on this machine.
    pub devices: usize,
    /// The machines of the run; `None`: this one only.
    pub machines: Option<Machines>,
    /// How long a sum waits for the other peers.
    pub timeout: Duration,
}

impl Group {
    /// Every peer of the run.
    fn peers(&self) -> usize {
        self.devices * self.machines.as_ref().map_or(1, |m| m.nodes)
    }
    /// This machine's first peer: the training loop.
    fn first(&self) -> usize {
        machine_peers(self.machines.as_ref().map_or(0, |m| m.node), self.devices).start
    }
}

/// What the machines of a run must hold alike, each named and digested (see
/// [`Peers::start`]).
pub type Agreed = Vec<(&'static str, u64)>;

/// Digests what the machines of a run must hold alike: each section of the settings (but
/// where each machine keeps its data and its run directory), the data's content (sizes and
/// sampled bytes of every file, in order), and the point the run starts from.
pub fn agreed(
    config: &RunConfig,
    data: Option<&DataFingerprint>,
    start: &TrainState,
    tokens: u64,
    cursor: &Cursor,
    normalizer: &Normalizer,
) -> Agreed {
    fn json(value: &impl serde::Serialize) -> u64 {
        xxh3_64(&serde_json::to_vec(value).unwrap_or_default())
    }
    let data_settings = DataConfig {
        path: None,
        ..config.data.clone()
    };
    let content: Vec<(u64, &str, &str)> = data.map_or(Vec::new(), |d| {
        d.files
            .iter()
            .map(|f| (f.size, f.header_digest.as_str(), f.sample_digest.as_str()))
            .collect()
    });
    let mut model = Xxh3::new();
    for params in [&start.params, &start.adam_m, &start.adam_v] {
        for values in [&params.w_enc, &params.b_enc, &params.w_dec, &params.b_dec] {
            for v in values.iter() {
                model.update(&v.to_bits().to_le_bytes());
            }
        }
    }
    model.update(&serde_json::to_vec(&(&start.stats, &start.thresholds)).unwrap_or_default());
    vec![
        ("the setting seed", json(&config.seed)),
        ("the setting backend", json(&config.backend)),
        (
            "the settings [data] (data.path aside)",
            json(&data_settings),
        ),
        ("the settings [model]", json(&config.model)),
        ("the settings [sparsifier]", json(&config.sparsifier)),
        ("the settings [step]", json(&config.step)),
        ("the settings [schedule]", json(&config.schedule)),
        ("the settings [train]", json(&config.train)),
        ("the settings [distributed]", json(&config.distributed)),
        ("the data (file sizes and sampled contents)", json(&content)),
        (
            "the starting step, tokens and data position",
            json(&(start.step, tokens, cursor, normalizer)),
        ),
        ("the model's starting state", model.digest()),
    ]
}

/// The most checkpoints of each machine that [`Joined::agree_on_start`] compares.
const COMPARED_CHECKPOINTS: usize = 64;

/// What the loop asks of a peer thread.
enum Job {
    /// Take part in a sum of counts of this length (adding zeros).
    Sum(usize),
    /// Build the training state and compare `digests` with the other machines'.
    Start {
        state: Box<TrainState>,
        rule: Box<dyn Sparsifier>,
        config: TrainConfig,
        digests: Vec<u64>,
    },
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

/// This machine's peers, registered: its first peer's handle on the collective (the loop's)
/// and the threads of the others. Dropping it stops the threads.
struct Members {
    workers: Vec<Worker>,
    own: Option<BurnPeer<Sums>>,
    group: Group,
    _one: MutexGuard<'static, ()>,
}

impl Members {
    fn stopped(&self, i: usize) -> SaeError {
        SaeError::Collective {
            peer: self.group.first() + 1 + i,
            reason: "the peer's thread stopped".into(),
        }
    }

    fn own(&mut self) -> &mut BurnPeer<Sums> {
        self.own
            .as_mut()
            .expect("the first peer is registered while the peers live")
    }

    /// Hands every thread its job, made from its position.
    fn send(&self, mut job: impl FnMut(usize) -> Job) -> Result<(), SaeError> {
        for (i, w) in self.workers.iter().enumerate() {
            w.jobs.send(job(i)).map_err(|_| self.stopped(i))?;
        }
        Ok(())
    }

    /// A sum of counts `len` long that every peer of this machine joins: the threads add
    /// zeros, the first peer runs `own` (which sums, or gathers, its counts).
    fn together<T>(
        &mut self,
        len: usize,
        own: impl FnOnce(&mut BurnPeer<Sums>) -> Result<T, SaeError>,
    ) -> Result<T, SaeError> {
        self.send(|_| Job::Sum(len))?;
        let own = own(self.own());
        self.answers(own)
    }

    /// Every thread's answer (so none is left mid-job), then the first error among `own` and
    /// theirs.
    fn answers<T>(&self, own: Result<T, SaeError>) -> Result<T, SaeError> {
        let mut first_other = Ok(());
        for (i, w) in self.workers.iter().enumerate() {
            let answer = w
                .answers
                .recv()
                .map_err(|_| self.stopped(i))
                .and_then(|a| a);
            if first_other.is_ok() {
                first_other = answer;
            }
        }
        let own = own?;
        first_other.map(|()| own)
    }
}

impl Drop for Members {
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

/// The peers of this machine, registered with every other peer of the run and ready to agree
/// on where the run starts ([`Joined::agree_on_start`], over several machines) and then to
/// start ([`Joined::start`]).
pub struct Joined<B: AutodiffBackend> {
    members: Members,
    _backend: PhantomData<fn() -> B>,
}

/// This machine's peers, training: every step runs on all of them ([`Peers::step`]).
pub struct Peers<B: AutodiffBackend> {
    members: Members,
    _backend: PhantomData<fn() -> B>,
    d: usize,
}

impl<B: AutodiffBackend> std::fmt::Debug for Peers<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("group", &self.members.group)
            .finish_non_exhaustive()
    }
}

impl<B: AutodiffBackend> std::fmt::Debug for Joined<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("group", &self.members.group)
            .finish_non_exhaustive()
    }
}

impl<B: AutodiffBackend> Peers<B> {
    /// Starts threads for this machine's peers after its first, each training on its device
    /// ([`peer_devices`] from `device`, the first peer's), and
    /// registers all of them (the first being the caller) with burn-collective ([`Sums`]), and
    /// with the other machines' peers. A registration or sum that waits longer than the group's timeout for
    /// the others fails (see [`BurnPeer`]).
    pub fn join(group: Group, device: &B::Device) -> Result<Joined<B>, TrainError> {
        let one = match ONE_GROUP.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(SaeError::Config(
                    "another run over several peers is running in this process".into(),
                )
                .into());
            }
        };
        let mut workers = Vec::with_capacity(group.devices - 1);
        let devices = peer_devices::<B>(device, group.devices);
        for (peer, device) in (group.first()..).zip(devices).skip(1) {
            let (jobs, inbox) = channel::<Job>();
            let (outbox, answers) = channel();
            let group = group.clone();
            let handle = std::thread::Builder::new()
                .name(format!("sae-peer-{peer}"))
                .spawn(move || serve::<B>(peer, &group, &device, &inbox, &outbox))
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
        let own = register(group.first(), &group);
        let mut members = Members {
            workers,
            own: None,
            group,
            _one: one,
        };
        members.own = Some(members.answers(own)?);
        Ok(Joined {
            members,
            _backend: PhantomData,
        })
    }

    /// One step of every peer on the global batch `x` (row-major), this machine's first peer
    /// being `step`. Returns the first peer's output: the batch's losses, its own rows'
    /// selection.
    pub fn step(&mut self, step: &mut TrainStep<B>, x: &[f32]) -> Result<StepOutput, SaeError> {
        let d = self.d;
        let n = x.len() / d;
        let m = &mut self.members;
        let (peers, first) = (m.group.peers(), m.group.first());
        let lr = step.lr();
        m.send(|i| {
            let rows = shard(n, peers, first + 1 + i);
            Job::Step {
                rows: x[rows.start * d..rows.end * d].to_vec(),
                lr,
            }
        })?;
        let own = shard(n, peers, first);
        let device = step.device().clone();
        let batch = to_device::<B>(&x[own.start * d..own.end * d], own.len(), d, &device);
        let out = step.train_step_sharded(batch, m.own());
        m.answers(out)
    }

    /// Whether the run stops before the next step, given whether this machine was asked to
    /// (Ctrl-C, SIGTERM): over several machines, when any machine was, every machine stops at
    /// the same step, each with its checkpoint of the same state.
    pub fn stop_requested(&mut self, here: bool) -> Result<bool, SaeError> {
        if self.members.group.machines.is_none() {
            return Ok(here);
        }
        self.members.together(1, |own| {
            let mut asked = [u64::from(here)];
            own.sum_counts(&mut asked).map(|()| asked[0] > 0)
        })
    }
}

impl<B: AutodiffBackend> Joined<B> {
    /// Over several machines, agrees with the other machines on where the run starts: afresh
    /// (`checkpoints` empty, `resume` false), or from the newest checkpoint every machine
    /// holds, given this machine's checkpoint steps (oldest first): a machine that stopped
    /// while writing a checkpoint resumes, with the others, from the one before. `Some(step)`
    /// when resuming over several machines; `None` otherwise.
    pub fn agree_on_start(
        &mut self,
        resume: bool,
        checkpoints: &[u64],
    ) -> Result<Option<u64>, TrainError> {
        let Some(machines) = self.members.group.machines.clone() else {
            return Ok(None);
        };
        let m = &mut self.members;
        let devices = m.group.devices;
        // Per machine: whether it resumes, then its newest checkpoints' steps, each + 1.
        let width = 1 + COMPARED_CHECKPOINTS;
        let mut mine = vec![0u64; width];
        mine[0] = 1 + u64::from(resume);
        let newest = &checkpoints[checkpoints.len().saturating_sub(COMPARED_CHECKPOINTS)..];
        for (slot, &step) in mine[1..].iter_mut().zip(newest) {
            *slot = step.saturating_add(1).min((1 << 48) - 1);
        }
        let slots = m.together(m.group.peers() * width, |own| gather_counts(own, &mine))?;
        let machine = |node: usize| {
            let first = machine_peers(node, devices).start;
            &slots[first * width..(first + 1) * width]
        };
        let resuming: Vec<usize> = (0..machines.nodes)
            .filter(|&node| machine(node)[0] == 2)
            .collect();
        if !(resuming.is_empty() || resuming.len() == machines.nodes) {
            return Err(TrainError::MachinesDiffer {
                what: format!("whether they resume (machines {resuming:?} resume)"),
                nodes: (0..machines.nodes)
                    .filter(|n| !resuming.contains(n))
                    .collect(),
            });
        }
        if resuming.is_empty() {
            return Ok(None);
        }
        let held = |node: usize| -> Vec<u64> {
            machine(node)[1..]
                .iter()
                .filter(|&&s| s > 0)
                .map(|s| s - 1)
                .collect()
        };
        let common = held(0)
            .into_iter()
            .filter(|step| (1..machines.nodes).all(|node| held(node).contains(step)))
            .max();
        match common {
            Some(step) => Ok(Some(step)),
            None => Err(TrainError::MachinesDiffer {
                what: format!(
                    "their checkpoints: no step is held by every machine ({})",
                    (0..machines.nodes)
                        .map(|node| format!("machine {node}: {:?}", held(node)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                nodes: (1..machines.nodes).collect(),
            }),
        }
    }

    /// Gives every peer of this machine `state` and a sparsifier from `sparsifier`; over
    /// several machines, the machines then compare `agreed` (their settings, data and starting
    /// state): when one differs, every machine stops with an error naming what differs and on
    /// which machines.
    pub fn start(
        self,
        state: &TrainState,
        mut sparsifier: impl FnMut() -> Result<Box<dyn Sparsifier>, SaeError>,
        config: &TrainConfig,
        agreed: &Agreed,
    ) -> Result<Peers<B>, TrainError> {
        let mut m = self.members;
        let digests: Vec<u64> = agreed.iter().map(|&(_, digest)| digest).collect();
        let rules = (0..m.workers.len())
            .map(|_| sparsifier())
            .collect::<Result<Vec<_>, _>>()?;
        let mut rules = rules.into_iter();
        m.send(|_| Job::Start {
            state: Box::new(state.clone()),
            rule: rules.next().expect("one sparsifier per thread"),
            config: config.clone(),
            digests: digests.clone(),
        })?;
        let group = m.group.clone();
        let own = compare(&group, m.own(), &digests);
        if let Some(differ) = m.answers(own)? {
            let (what, _) = agreed[differ.item];
            let mut nodes: Vec<usize> = differ.peers.iter().map(|p| p / group.devices).collect();
            nodes.dedup();
            return Err(TrainError::MachinesDiffer {
                what: what.to_string(),
                nodes,
            });
        }
        Ok(Peers {
            members: m,
            _backend: PhantomData,
            d: state.params.d_model,
        })
    }
}

/// The device of each of this machine's `devices` peers, the first being `opened` (the device
/// the run opened): where the backend has enough devices of the opened one's kind after it
/// (CUDA's GPUs, wgpu's adapters of one type), peer `i` of the machine takes the `i`-th from
/// `opened`; otherwise every peer shares `opened` (the CPU backends; wgpu's default adapter).
pub fn peer_devices<B: Backend>(opened: &B::Device, devices: usize) -> Vec<B::Device> {
    let id = opened.to_id();
    let first = usize::from(id.index_id);
    let at = |i: usize| {
        u16::try_from(first + i)
            .ok()
            .map(|index| B::Device::from_id(DeviceId::new(id.type_id, index)))
    };
    let distinct = devices > 1
        && B::device_count(id.type_id) >= first + devices
        && at(1).is_some_and(|second| second != *opened)
        && at(devices - 1).is_some();
    (0..devices)
        .map(|i| match distinct {
            true => at(i).unwrap_or_else(|| opened.clone()),
            false => opened.clone(),
        })
        .collect()
}

/// Registers peer `peer` of `group`.
fn register(peer: usize, group: &Group) -> Result<BurnPeer<Sums>, SaeError> {
    BurnPeer::<Sums>::register(
        peer,
        group.peers(),
        &Default::default(),
        group.timeout,
        group.machines.as_ref(),
    )
}

/// Over several machines, compares `digests` with every other peer's: the first thing that
/// differs, if any.
fn compare<B: burn::tensor::backend::Backend>(
    group: &Group,
    collective: &mut BurnPeer<B>,
    digests: &[u64],
) -> Result<Option<sae_model::Disagreement>, SaeError> {
    match group.machines {
        Some(_) => disagreement(collective, digests),
        None => Ok(None),
    }
}

/// The life of a peer thread: register, answer, then do the jobs the loop hands it until the
/// loop closes its queue.
fn serve<B: AutodiffBackend>(
    peer: usize,
    group: &Group,
    device: &B::Device,
    inbox: &Receiver<Job>,
    outbox: &Sender<Result<(), SaeError>>,
) {
    let mut collective = match register(peer, group) {
        Ok(c) => c,
        Err(e) => {
            let _ = outbox.send(Err(e));
            return;
        }
    };
    if outbox.send(Ok(())).is_err() {
        return;
    }
    // The training state once started, and its width.
    let mut step: Option<(TrainStep<B>, usize)> = None;
    while let Ok(job) = inbox.recv() {
        let result = match job {
            Job::Sum(len) => collective.sum_counts(&mut vec![0; len]),
            Job::Start {
                state,
                rule,
                config,
                mut digests,
            } => {
                let d = state.params.d_model;
                let ready = TrainStep::<B>::from_state(&state, rule, config, device);
                drop(state);
                // A thread without a state still compares, with a digest no machine holds,
                // so no peer is left waiting for it; its own error is the one reported. A
                // disagreement is the first peer's to report: every peer finds the same.
                if ready.is_err()
                    && let Some(last) = digests.last_mut()
                {
                    *last = !*last;
                }
                let compared = compare(group, &mut collective, &digests);
                ready.and_then(|ready| {
                    step = Some((ready, d));
                    compared.map(|_| ())
                })
            }
            Job::Step { rows, lr } => match step.as_mut() {
                Some((step, d)) => {
                    step.set_lr(lr);
                    let d = *d;
                    let batch = to_device::<B>(&rows, rows.len() / d, d, device);
                    step.train_step_sharded(batch, &mut collective).map(|_| ())
                }
                None => Err(SaeError::Config("a step before the peer's state".into())),
            },
        };
        if outbox.send(result).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::wgpu::WgpuDevice;
    use burn::backend::{Flex, Wgpu};

    use super::*;

    #[test]
    fn peers_share_a_device_the_backend_has_one_of() {
        let cpu = Default::default();
        assert_eq!(peer_devices::<Flex>(&cpu, 3), vec![cpu; 3]);
        // wgpu's default adapter stands for any adapter: its peers share it.
        let gpu = WgpuDevice::DefaultDevice;
        assert_eq!(peer_devices::<Wgpu>(&gpu, 2), vec![gpu.clone(); 2]);
        assert_eq!(peer_devices::<Wgpu>(&gpu, 1), vec![gpu]);
    }
}
