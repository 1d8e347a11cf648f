//! The peers of a sharded batch: several devices (or machines) each hold consecutive rows of
//! one global batch and train one model together.
//!
//! [`Collective`] is what a step needs from the peers: exact sums of counts (selection
//! histograms, fire counts) and sums of values (gradients). [`SinglePeer`] is the one-device
//! case, where every sum is the identity; [`BurnPeer`] runs the sums through
//! `burn-collective`'s all-reduce: one thread per device of a machine and, across machines
//! ([`Machines`]), one process per machine meeting at burn-collective's global orchestrator.
//!
//! Everything built on these two sums is the same on every peer: the selection is the one the
//! single-device rule makes on the whole batch (`sae_alloc::sharded`), loss terms are summed in
//! peer order in `f64` (`PeerSums`), and the gradients are one all-reduced tensor that every
//! peer receives, so every peer applies the same update and keeps the same parameters.

use std::fmt;
use std::ops::Range;
use std::sync::mpsc::sync_channel;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{
    CollectiveConfig, CollectiveError, GlobalCollectiveError, PeerId, ReduceOperation,
};
use sae_alloc::sharded::Exchange;

use crate::error::{Result, SaeError};
use crate::fused::grads::BatchSums;
use crate::sae::host_vec;

/// The sums a training step makes across the peers of a sharded batch.
///
/// Every peer makes the same calls in the same order with slices of the same lengths; a call
/// returns once every peer made it, each slice replaced by its element-wise sum over the peers.
pub trait Collective {
    /// This peer's position, `0..peers()`; peers hold the batch's rows in this order.
    fn peer(&self) -> usize;
    /// The number of peers.
    fn peers(&self) -> usize;
    /// Sums integer counts over the peers, exactly.
    fn sum_counts(&mut self, counts: &mut [u64]) -> Result<()>;
    /// Sums values over the peers, several slices in one exchange; every peer receives the
    /// same bits.
    fn sum_values(&mut self, parts: &mut [&mut [f32]]) -> Result<()>;
}

/// One device holds the whole batch: every sum is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinglePeer;

impl Collective for SinglePeer {
    fn peer(&self) -> usize {
        0
    }
    fn peers(&self) -> usize {
        1
    }
    fn sum_counts(&mut self, _counts: &mut [u64]) -> Result<()> {
        Ok(())
    }
    fn sum_values(&mut self, _parts: &mut [&mut [f32]]) -> Result<()> {
        Ok(())
    }
}

/// Each peer's `values` in its own slot of a zeroed `[peers, values.len()]` buffer, summed:
/// every peer receives all peers' values unchanged (adding zeros is exact), row `p` peer `p`'s.
pub(crate) fn gather(peers: &mut dyn Collective, values: &[f32]) -> Result<Vec<f32>> {
    let (peer, len) = (peers.peer(), values.len());
    let mut slots = vec![0.0f32; peers.peers() * len];
    slots[peer * len..(peer + 1) * len].copy_from_slice(values);
    peers.sum_values(&mut [&mut slots])?;
    Ok(slots)
}

/// Each peer's `counts` in its own slot of a zeroed `[peers, counts.len()]` buffer, summed:
/// every peer receives all peers' counts unchanged, row `p` peer `p`'s (the count twin of
/// `gather`).
pub fn gather_counts(peers: &mut dyn Collective, counts: &[u64]) -> Result<Vec<u64>> {
    let (peer, len) = (peers.peer(), counts.len());
    let mut slots = vec![0u64; peers.peers() * len];
    slots[peer * len..(peer + 1) * len].copy_from_slice(counts);
    peers.sum_counts(&mut slots)?;
    Ok(slots)
}

/// Bits of a digest that [`disagreement`] compares: a count the sums carry exactly.
const DIGEST_BITS: u32 = LIMB_BITS * LIMBS as u32;

/// The first of several things every peer must hold alike that some peer holds otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// The position of the thing in the list every peer passed.
    pub item: usize,
    /// The peers whose digest of it differs from peer 0's, ascending.
    pub peers: Vec<usize>,
}

/// Compares `digests` (one per thing every peer must hold alike: settings, data, state) across
/// the peers; every peer passes the same number and receives the same answer. Digests are
/// compared on their low 48 bits.
pub fn disagreement(peers: &mut dyn Collective, digests: &[u64]) -> Result<Option<Disagreement>> {
    let len = digests.len();
    let compared: Vec<u64> = digests
        .iter()
        .map(|digest| digest & ((1u64 << DIGEST_BITS) - 1))
        .collect();
    let slots = gather_counts(peers, &compared)?;
    let (first, rest) = slots.split_at(len);
    Ok((0..len).find_map(|item| {
        let differ: Vec<usize> = rest
            .chunks_exact(len)
            .enumerate()
            .filter(|(_, slot)| slot[item] != first[item])
            .map(|(p, _)| p + 1)
            .collect();
        (!differ.is_empty()).then_some(Disagreement {
            item,
            peers: differ,
        })
    }))
}

/// The [`Collective`] seen as the sums the step's parts take: `f64` loss terms (gathered as two
/// `f32` halves and added in peer order, so every peer gets the same bits whatever order the
/// transport sums in) and the selection rules' counts.
pub(crate) struct PeerSums<'a>(pub(crate) &'a mut dyn Collective);

impl PeerSums<'_> {
    /// Every peer's `values`, row `p` peer `p`'s, each value as the sum of the two `f32`
    /// halves it travelled as (every `f64` within the `f32` range whose low half is also an
    /// `f32`, integers below `2^48` among them, comes back exactly).
    pub(crate) fn gather(&mut self, values: &[f64]) -> Result<Vec<Vec<f64>>> {
        let halves: Vec<f32> = values
            .iter()
            .flat_map(|&v| {
                let high = v as f32;
                [high, (v - f64::from(high)) as f32]
            })
            .collect();
        let all = gather(self.0, &halves)?;
        Ok(all
            .chunks_exact(halves.len().max(1))
            .map(|slot| {
                slot.chunks_exact(2)
                    .map(|h| f64::from(h[0]) + f64::from(h[1]))
                    .collect()
            })
            .collect())
    }
}

impl BatchSums for PeerSums<'_> {
    fn sum(&mut self, values: &mut [f64]) -> Result<()> {
        if self.0.peers() == 1 {
            return Ok(());
        }
        let all = self.gather(values)?;
        for (i, v) in values.iter_mut().enumerate() {
            *v = all.iter().map(|slot| slot[i]).sum();
        }
        Ok(())
    }
}

impl Exchange for PeerSums<'_> {
    type Error = SaeError;
    fn peer(&self) -> usize {
        self.0.peer()
    }
    fn peers(&self) -> usize {
        self.0.peers()
    }
    fn sum(&mut self, counts: &mut [u64]) -> Result<()> {
        self.0.sum_counts(counts)
    }
}

/// Bits of a count per `f32` limb: a sum of at most [`MAX_PEERS`] limbs stays below `2^24`,
/// where every integer is an `f32`, so limb sums are exact in any order.
const LIMB_BITS: u32 = 16;
/// Limbs per count: counts below `2^48`.
const LIMBS: usize = 3;
/// The most peers whose limb sums stay exact.
pub const MAX_PEERS: usize = 1 << (24 - LIMB_BITS);

/// The peers machine `node` holds when every machine holds `devices`: machine `node` holds
/// peers `node * devices..(node + 1) * devices`, the one layout of a run over machines.
pub fn machine_peers(node: usize, devices: usize) -> Range<usize> {
    node * devices..(node + 1) * devices
}

/// The machines of a run, as one of them sees them: burn-collective's global level. Each
/// machine runs one process with the same number of peers (its devices), laid out by
/// [`machine_peers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machines {
    /// The number of machines.
    pub nodes: usize,
    /// This machine's position, `0..nodes`.
    pub node: usize,
    /// The global orchestrator's address, e.g. `ws://10.0.0.1:3000`.
    pub orchestrator: String,
    /// The address the other machines reach this one at, e.g. `ws://10.0.0.2:3001`.
    pub address: String,
    /// The port this machine serves its tensors on (the port of `address`).
    pub data_port: u16,
    /// How long registering waits for the other machines (they may start far apart);
    /// sums wait the peers' own timeout.
    pub join_timeout: Duration,
}

/// One peer of a machine's devices, summing through `burn-collective`'s all-reduce: one thread
/// per device, each registered with its position; the tree strategy of `burn-collective`
/// reduces and every peer receives the reduced tensor (across machines, the machines' sums meet
/// in burn-collective's ring all-reduce). Every sum also counts the peers that took part, so a
/// peer that has left fails the sum on every other peer. Unregisters when dropped.
/// burn-collective keeps one set of peers per process and backend: one group of `BurnPeer`s at
/// a time.
pub struct BurnPeer<B: Backend> {
    id: PeerId,
    peer: usize,
    peers: usize,
    /// The peers of this machine (all of them on one machine).
    local: Range<usize>,
    device: B::Device,
    /// How long a sum waits for the other peers.
    timeout: Duration,
    /// A sum timed out or failed: burn-collective still holds it, or its server stopped, so
    /// this peer can sum no more (nor unregister).
    stuck: bool,
}

/// How many sums each peer of this process's group has entered (one group per process, as
/// burn-collective keeps): a sum that times out names the peers of this machine that never
/// entered it (or, when all did, the peers of the other machines).
static ENTERED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn entered() -> MutexGuard<'static, Vec<u64>> {
    ENTERED.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B: Backend> fmt::Debug for BurnPeer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BurnPeer")
            .field("peer", &self.peer)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> BurnPeer<B> {
    /// Registers peer `peer` of `peers` on `device` (a device of this machine) and waits until
    /// all peers have registered; across `machines`, `peers` counts the peers of every machine
    /// and this machine holds its share of them (see [`Machines`]). A sum that waits longer
    /// than `timeout` for the other peers fails, naming the peers that never came; so does the
    /// registration, after `timeout` on one machine and after the machines' `join_timeout`
    /// across machines.
    pub fn register(
        peer: usize,
        peers: usize,
        device: &B::Device,
        timeout: Duration,
        machines: Option<&Machines>,
    ) -> Result<Self> {
        let nodes = machines.map_or(1, |m| m.nodes);
        let node = machines.map_or(0, |m| m.node);
        if peers == 0
            || peers > MAX_PEERS
            || peer >= peers
            || !peers.is_multiple_of(nodes)
            || node >= nodes
        {
            return Err(SaeError::Config(format!(
                "peer {peer} of {peers} on machine {node} of {nodes}: need 1 to {MAX_PEERS} peers, \
                 as many on every machine, and positions below their numbers"
            )));
        }
        let devices = peers / nodes;
        let local = machine_peers(node, devices);
        if !local.contains(&peer) {
            return Err(SaeError::Config(format!(
                "peer {peer} is not one of machine {node}'s peers {local:?}"
            )));
        }
        let id = PeerId(peer as u32);
        let mut config = CollectiveConfig::default().with_num_devices(devices);
        if let Some(m) = machines {
            let at = |address: &str| {
                address.parse().map_err(|e| {
                    SaeError::Config(format!("cannot read the address {address:?}: {e}"))
                })
            };
            config = config
                .with_num_nodes(nodes as u32)
                .with_global_address(at(&m.orchestrator)?)
                .with_node_address(at(&m.address)?)
                .with_data_service_port(m.data_port);
        }
        {
            let mut entered = entered();
            entered.resize(peers, 0);
            entered[peer] = 0;
        }
        let join_timeout = machines.map_or(timeout, |m| m.join_timeout);
        let registered = {
            let device = device.clone();
            within(join_timeout, move || {
                burn_collective::register::<B>(id, device, config)
            })
        };
        match registered {
            Some(done) => done.map_err(|e| collective_error(peer, "register", e))?,
            None => {
                return Err(SaeError::Collective {
                    peer,
                    reason: format!(
                        "the other peers did not register within {join_timeout:?}{}",
                        machines.map_or(String::new(), |m| format!(
                            ": are all {} machines started, and the orchestrator at {} \
                             reachable?",
                            m.nodes, m.orchestrator
                        ))
                    ),
                });
            }
        }
        Ok(Self {
            id,
            peer,
            peers,
            local,
            device: device.clone(),
            timeout,
            stuck: false,
        })
    }

    /// All-reduces `values` with two status slots appended: every peer adds 1 to the first
    /// (so a sum short of `peers` means a peer has left the collective, and burn-collective
    /// went on without it) and 1 to the second when its own input cannot travel. Every peer
    /// reads the same status, so all fail alike, or none.
    fn all_reduce(&mut self, mut values: Vec<f32>, unfit: bool) -> Result<Vec<f32>> {
        if self.stuck {
            return Err(SaeError::Collective {
                peer: self.peer,
                reason: "an earlier sum timed out or failed".into(),
            });
        }
        let len = values.len();
        values.extend([1.0, f32::from(u8::from(unfit))]);
        let tensor = Tensor::<B, 1>::from_data(TensorData::new(values, [len + 2]), &self.device);
        let sum = {
            let mut entered = entered();
            entered[self.peer] += 1;
            entered[self.peer]
        };
        // burn-collective's all-reduce waits without a limit: it runs on its own thread, and
        // this one waits for it at most `timeout`.
        let (id, primitive) = (self.id, tensor.into_primitive().tensor());
        let summed = within(self.timeout, move || {
            burn_collective::all_reduce::<B>(id, primitive, ReduceOperation::Sum)
        });
        let others = || -> Vec<usize> {
            (0..self.peers)
                .filter(|p| !self.local.contains(p))
                .collect()
        };
        let summed = match summed {
            Some(Ok(summed)) => summed,
            // A machine that stopped fails the engine's transfers: the sum fails, and the
            // engine's server on this machine has stopped with it.
            Some(Err(e)) => {
                if self.local.len() == self.peers {
                    return Err(collective_error(self.peer, "all-reduce", e));
                }
                self.stuck = true;
                let reason = match e {
                    // The transfer from one machine broke; it stopped, or (with more than two
                    // machines) it gave up on the loss of another one.
                    CollectiveError::Global(GlobalCollectiveError::PeerLost(node)) => {
                        let node = u32::from(node) as usize;
                        let peers = machine_peers(node, self.local.len());
                        format!(
                            "sum {sum} failed: the transfer from machine {node} (peers {:?}) broke: \
                             it stopped or is unreachable{}",
                            peers.collect::<Vec<_>>(),
                            if self.peers / self.local.len() > 2 {
                                ", or it stopped on the loss of another machine"
                            } else {
                                ""
                            }
                        )
                    }
                    e => format!(
                        "sum {sum} failed ({e:?}): peers {:?} of the other machines, or some of \
                         them, stopped or are unreachable",
                        others()
                    ),
                };
                return Err(SaeError::Collective {
                    peer: self.peer,
                    reason,
                });
            }
            None => {
                self.stuck = true;
                let missing: Vec<usize> = entered()
                    .iter()
                    .enumerate()
                    .filter(|&(p, &n)| self.local.contains(&p) && n < sum)
                    .map(|(p, _)| p)
                    .collect();
                let who = if missing.is_empty() {
                    format!(
                        "peers {:?} of the other machines, or some of them,",
                        others()
                    )
                } else {
                    format!("peers {missing:?}")
                };
                return Err(SaeError::Collective {
                    peer: self.peer,
                    reason: format!(
                        "{who} did not join sum {sum} within {:?}: stopped or unreachable",
                        self.timeout
                    ),
                });
            }
        };
        let mut summed = host_vec(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
            summed,
        )));
        let (present, unfit) = (summed[len], summed[len + 1]);
        if present != self.peers as f32 {
            return Err(SaeError::Collective {
                peer: self.peer,
                reason: format!(
                    "{present} of {} peers took part in a sum: a peer has stopped",
                    self.peers
                ),
            });
        }
        if unfit > 0.0 {
            return Err(SaeError::Collective {
                peer: self.peer,
                reason: "a peer's count is beyond the 2^48 a sum carries".into(),
            });
        }
        summed.truncate(len);
        Ok(summed)
    }
}

/// Runs `work` on a thread of its own and waits for it at most `timeout`: `None` when it has
/// not finished by then (it is left to finish, or not, on its own).
fn within<T: Send + 'static>(
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (done, result) = sync_channel(1);
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    result.recv_timeout(timeout).ok()
}

fn collective_error(peer: usize, what: &str, e: CollectiveError) -> SaeError {
    SaeError::Collective {
        peer,
        reason: format!("{what}: {e:?}"),
    }
}

impl<B: Backend> Collective for BurnPeer<B> {
    fn peer(&self) -> usize {
        self.peer
    }
    fn peers(&self) -> usize {
        self.peers
    }

    fn sum_counts(&mut self, counts: &mut [u64]) -> Result<()> {
        let unfit = counts.iter().any(|&c| c >> (LIMB_BITS * LIMBS as u32) != 0);
        let mask = (1u64 << LIMB_BITS) - 1;
        let limbs: Vec<f32> = counts
            .iter()
            .flat_map(|&c| (0..LIMBS).map(move |l| ((c >> (LIMB_BITS * l as u32)) & mask) as f32))
            .collect();
        let limbs = self.all_reduce(limbs, unfit)?;
        for (c, l) in counts.iter_mut().zip(limbs.chunks_exact(LIMBS)) {
            *c = l
                .iter()
                .enumerate()
                .map(|(i, &v)| (v as u64) << (LIMB_BITS * i as u32))
                .sum();
        }
        Ok(())
    }

    fn sum_values(&mut self, parts: &mut [&mut [f32]]) -> Result<()> {
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        let mut values = Vec::with_capacity(len + 2);
        for part in parts.iter() {
            values.extend_from_slice(part);
        }
        let summed = self.all_reduce(values, false)?;
        let mut rest = &summed[..];
        for part in parts.iter_mut() {
            let (head, tail) = rest.split_at(part.len());
            part.copy_from_slice(head);
            rest = tail;
        }
        Ok(())
    }
}

impl<B: Backend> Drop for BurnPeer<B> {
    fn drop(&mut self) {
        // A peer unwinding from a panic stays registered: the others' next sum then waits
        // for it instead of going on without it. Otherwise there is nothing to report to.
        // Unregistering asks the orchestrator (the last peer of a machine does); one that
        // stopped or cannot be reached is waited for at most the timeout.
        if !std::thread::panicking() && !self.stuck {
            let id = self.id;
            let _ = within(self.timeout, move || {
                burn_collective::finish_collective::<B>(id)
            });
        }
    }
}
