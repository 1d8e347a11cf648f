//! What a run's sizes demand, known before anything is allocated: a dictionary or a batch
//! too large for the machine's memory or for the GPU kernels' indices is refused naming the
//! settings, instead of failing (or paging for hours) once allocation starts.

use crate::RunConfig;
use crate::config::BackendKind;

/// The least a CPU step holds on one machine, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMemory {
    /// Parameters, their two Adam moments and their gradients, for every peer of the machine
    /// (each peer holds its own copy of the state).
    pub state: u64,
    /// The `[rows, features]` affinities of every peer's rows of a batch.
    pub affinities: u64,
}

impl StepMemory {
    /// The step of `config` on data of width `d` with `features` features; `None` when the
    /// byte count does not fit in 64 bits.
    pub fn of(config: &RunConfig, d: usize, features: usize) -> Option<Self> {
        let (d, f) = (d as u64, features as u64);
        let devices = config.distributed.devices as u64;
        let params = f.checked_mul(d)?.checked_mul(2)?.checked_add(f + d)?;
        // Parameters, first and second moments, gradients: four f32 copies per peer.
        let state = params.checked_mul(4 * 4)?.checked_mul(devices)?;
        // The machine's share of a batch: its peers' rows together.
        let rows = (config.train.batch_size as u64).div_ceil(config.distributed.nodes as u64);
        let affinities = rows.checked_mul(f)?.checked_mul(4)?;
        Some(Self { state, affinities })
    }

    /// Their sum.
    pub fn total(&self) -> u64 {
        self.state.saturating_add(self.affinities)
    }
}

/// The memory this machine can give this process at most, physical memory and swap
/// (`/proc/meminfo`), each capped by the process's cgroup limits where it has any (a container
/// sees the host's `MemTotal`); `None` where `/proc/meminfo` cannot be read.
pub fn machine_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let read = |path: &str| std::fs::read_to_string(path).ok();
    memory_limit(
        &meminfo,
        // cgroup v2, else v1 (whose "no limit" is a huge number, harmless as a cap).
        read("/sys/fs/cgroup/memory.max")
            .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
            .as_deref(),
        read("/sys/fs/cgroup/memory.swap.max").as_deref(),
    )
}

/// [`machine_memory`] from the texts of `/proc/meminfo` and the cgroup's memory and swap
/// limits (a number of bytes, or `max` for none).
fn memory_limit(
    meminfo: &str,
    cgroup_memory: Option<&str>,
    cgroup_swap: Option<&str>,
) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    };
    let cap =
        |value: u64, limit: Option<&str>| match limit.and_then(|l| l.trim().parse::<u64>().ok()) {
            Some(limit) => value.min(limit),
            None => value, // absent, or "max"
        };
    let memory = cap(field("MemTotal:")?, cgroup_memory);
    let swap = cap(field("SwapTotal:").unwrap_or(0), cgroup_swap);
    Some(memory.saturating_add(swap))
}

/// Refuses a run on a CPU backend whose step cannot fit in `available` bytes; the reason
/// names the settings that size it.
pub fn check_fits(
    config: &RunConfig,
    d: usize,
    features: usize,
    available: u64,
) -> Result<(), String> {
    if !matches!(config.backend, BackendKind::Flex | BackendKind::Ndarray) {
        return Ok(()); // a GPU's own memory is not known here
    }
    let sizes = format!(
        "{features} features (model.d_sae / model.expansion) of width d = {d}, \
         train.batch_size = {}, distributed.devices = {}",
        config.train.batch_size, config.distributed.devices
    );
    let Some(need) = StepMemory::of(config, d, features) else {
        return Err(format!("{sizes}: the step would need more than 2^64 bytes"));
    };
    if need.total() <= available {
        return Ok(());
    }
    Err(format!(
        "{sizes}: the step needs at least {} (parameters, Adam moments and gradients {}, \
         a batch's affinities {}), more than this machine's {} of memory and swap",
        bytes(need.total()),
        bytes(need.state),
        bytes(need.affinities),
        bytes(available)
    ))
}

/// Rows of a batch the peer with the most holds (peers hold consecutive, balanced shards):
/// the rows a device's selection and affinities cover.
fn rows_per_peer(config: &RunConfig) -> usize {
    config
        .train
        .batch_size
        .div_ceil(config.distributed.peers().max(1))
}

/// `train.batch_size = B`, and over several peers how many rows each holds.
fn batch_setting(config: &RunConfig) -> String {
    let (batch, peers) = (config.train.batch_size, config.distributed.peers());
    match peers {
        1 => format!("train.batch_size = {batch}"),
        _ => format!(
            "train.batch_size = {batch} over {peers} peers (up to {} rows each)",
            rows_per_peer(config)
        ),
    }
}

/// Refuses a run on a GPU backend whose batch has more scores on one peer (its rows x
/// features) than the selection kernels' 32-bit indices address, naming the largest batch
/// that fits.
pub fn check_device_scores(config: &RunConfig, features: usize) -> Result<(), String> {
    if !matches!(config.backend, BackendKind::Wgpu | BackendKind::Cuda) {
        return Ok(());
    }
    let limit = u32::MAX as usize;
    if rows_per_peer(config)
        .checked_mul(features)
        .is_some_and(|scores| scores <= limit)
    {
        return Ok(());
    }
    let peers = config.distributed.peers();
    Err(format!(
        "{} with {features} features is more scores than the GPU kernels' 32-bit indices \
         address ({limit}): at most {} tokens per batch at this width{}",
        batch_setting(config),
        (limit / features.max(1)).saturating_mul(peers),
        if peers > 1 { " over these peers" } else { "" }
    ))
}

/// Refuses a run whose largest tensors do not fit in one buffer of a device that holds at
/// most `largest` bytes per buffer (wgpu adapters often allow 128 MiB): the encoder and
/// decoder weights `[features, d]` and one peer's affinities `[rows, features]`.
pub fn check_buffers(
    config: &RunConfig,
    d: usize,
    features: usize,
    largest: u64,
) -> Result<(), String> {
    let (batch, peers) = (rows_per_peer(config), config.distributed.peers());
    let affinities = match peers {
        1 => "a batch's affinities",
        _ => "a peer's affinities",
    };
    // (what, shape, the setting that lowers it, how many of its buffers a batch spreads over)
    let tensors = [
        (
            "the encoder and decoder weights",
            [features, d],
            "model.d_sae",
            1,
        ),
        (affinities, [batch, features], "train.batch_size", peers),
    ];
    let too_large: Vec<String> = tensors
        .iter()
        .filter_map(|(what, [rows, cols], option, spread)| {
            let size = (*rows as u64)
                .saturating_mul(*cols as u64)
                .saturating_mul(4);
            (size > largest).then(|| {
                let fit = largest / 4 / (*cols as u64).max(1);
                let over = match *spread {
                    1 => String::new(),
                    p => format!(", {} in a batch over these peers", fit.saturating_mul(p as u64)),
                };
                format!(
                    "{what} [{rows}, {cols}] take {} (at most {fit} rows fit{over}: lower {option})",
                    bytes(size)
                )
            })
        })
        .collect();
    if too_large.is_empty() {
        return Ok(());
    }
    Err(format!(
        "backend = {:?}: this device holds at most {} in one buffer, and {}",
        config.backend.name(),
        bytes(largest),
        too_large.join("; ")
    ))
}

/// `n` bytes in the largest binary unit that keeps a number of at least 1.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(batch: usize, devices: usize, nodes: usize) -> RunConfig {
        let mut c = RunConfig::default();
        c.train.batch_size = batch;
        c.distributed.devices = devices;
        c.distributed.nodes = nodes;
        c
    }

    #[test]
    fn counts_every_copy_of_the_state_and_the_machines_share_of_a_batch() {
        // d = 3, F = 5: 2 * 15 + 5 + 3 = 38 values, four f32 copies per peer.
        let one = StepMemory::of(&config(10, 1, 1), 3, 5).unwrap();
        assert_eq!(one.state, 38 * 16);
        assert_eq!(one.affinities, 10 * 5 * 4);
        // Two peers on this machine: two states, the same rows in all.
        let two = StepMemory::of(&config(10, 2, 1), 3, 5).unwrap();
        assert_eq!(two.state, 2 * 38 * 16);
        assert_eq!(two.affinities, 10 * 5 * 4);
        // Three machines: this one holds at most ceil(10 / 3) = 4 rows.
        let nodes = StepMemory::of(&config(10, 1, 3), 3, 5).unwrap();
        assert_eq!(nodes.affinities, 4 * 5 * 4);
        assert!(StepMemory::of(&config(10, 1, 1), usize::MAX, 5).is_none());
    }

    #[test]
    fn a_step_larger_than_the_machine_is_refused_naming_the_settings() {
        let c = config(4096, 1, 1);
        let need = StepMemory::of(&c, 768, 1 << 20).unwrap().total();
        assert!(check_fits(&c, 768, 1 << 20, need).is_ok(), "exactly enough");
        let message = check_fits(&c, 768, 1 << 20, need - 1).unwrap_err();
        for part in ["model.d_sae", "train.batch_size = 4096", "d = 768", "GiB"] {
            assert!(message.contains(part), "{part}: {message}");
        }
        let overflow = check_fits(&c, usize::MAX, 1 << 20, u64::MAX).unwrap_err();
        assert!(overflow.contains("2^64"), "{overflow}");
        // A GPU's memory is its own: not judged by the host's.
        let mut gpu = c.clone();
        gpu.backend = BackendKind::Wgpu;
        assert!(check_fits(&gpu, 768, 1 << 20, 1).is_ok());
    }

    #[test]
    fn a_gpu_batch_beyond_the_kernels_indices_is_refused_with_the_largest_that_fits() {
        let mut c = config(4096, 1, 1);
        c.backend = BackendKind::Cuda;
        // 4096 x 2^20 = 2^32 scores: one more than u32 indices reach.
        let message = check_device_scores(&c, 1 << 20).unwrap_err();
        assert!(message.contains("train.batch_size = 4096"), "{message}");
        assert!(message.contains("at most 4095 tokens"), "{message}");
        c.train.batch_size = 4095;
        assert!(check_device_scores(&c, 1 << 20).is_ok());
        // The CPU path indexes with usize.
        c.backend = BackendKind::Flex;
        c.train.batch_size = 4096;
        assert!(check_device_scores(&c, 1 << 20).is_ok());
        // Over peers each device selects on its own rows: two peers of 4095 rows fit, and
        // the error names the peers' rows.
        let mut peers = config(8190, 2, 1);
        peers.backend = BackendKind::Cuda;
        assert!(check_device_scores(&peers, 1 << 20).is_ok());
        peers.train.batch_size = 8191;
        let message = check_device_scores(&peers, 1 << 20).unwrap_err();
        for part in [
            "train.batch_size = 8191 over 2 peers (up to 4096 rows each)",
            "at most 8190 tokens per batch at this width over these peers",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
    }

    #[test]
    fn tensors_larger_than_a_device_buffer_are_refused_naming_what_fits() {
        let mut c = config(1024, 1, 1);
        c.backend = BackendKind::Wgpu;
        let largest = 128 << 20;
        // [F, d] = [600000, 64] is 146.5 MiB; [1024, 600000] affinities 2.3 GiB.
        let message = check_buffers(&c, 64, 600_000, largest).unwrap_err();
        for part in [
            "backend = \"wgpu\"",
            "at most 128.0 MiB in one buffer",
            "weights [600000, 64] take 146.5 MiB (at most 524288 rows fit: lower model.d_sae",
            "affinities [1024, 600000] take 2.3 GiB (at most 55 rows fit: lower train.batch_size)",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        // Exactly one buffer's worth fits.
        assert!(check_buffers(&c, 64, 524_288, largest).is_err()); // the affinities still
        c.train.batch_size = 64;
        assert!(check_buffers(&c, 64, 524_288, largest).is_ok());
        assert!(check_buffers(&c, 64, 524_289, largest).is_err());
        // Each of two peers holds 64 of 128 rows: their affinities fit one buffer each.
        c.train.batch_size = 128;
        assert!(check_buffers(&c, 64, 524_288, largest).is_err());
        c.distributed.devices = 2;
        assert!(check_buffers(&c, 64, 524_288, largest).is_ok());
        c.train.batch_size = 130;
        let message = check_buffers(&c, 64, 524_288, largest).unwrap_err();
        let part = "a peer's affinities [65, 524288] take 130.0 MiB \
                    (at most 64 rows fit, 128 in a batch over these peers: lower train.batch_size)";
        assert!(message.contains(part), "{message}");
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(512), "512.0 B");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn memory_is_physical_and_swap_each_capped_by_the_cgroup() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree: 1 kB\nSwapTotal:       1000 kB\n";
        let (mem, swap) = (24_000_000 * 1024, 1000 * 1024);
        assert_eq!(memory_limit(meminfo, None, None), Some(mem + swap));
        assert_eq!(
            memory_limit(meminfo, Some("max\n"), Some("max")),
            Some(mem + swap)
        );
        assert_eq!(
            memory_limit(meminfo, Some("4096\n"), None),
            Some(4096 + swap)
        );
        assert_eq!(memory_limit(meminfo, Some("4096"), Some("0\n")), Some(4096));
        // cgroup v1's "no limit" is a number larger than the machine.
        assert_eq!(
            memory_limit(meminfo, Some("9223372036854771712"), None),
            Some(mem + swap)
        );
        assert_eq!(memory_limit("MemTotal: 2 kB\n", None, None), Some(2048));
        assert_eq!(memory_limit("SwapTotal: 2 kB\n", None, None), None);
    }

    #[test]
    fn this_machine_reports_its_memory() {
        if cfg!(target_os = "linux") {
            assert!(machine_memory().is_some_and(|m| m > 1 << 20));
        }
    }
}
