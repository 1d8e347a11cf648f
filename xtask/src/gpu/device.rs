//! The GPU machine: the device as `nvidia-smi` names it, its nominal memory bandwidth, and
//! the CUDA toolkit the bundled binaries need at run time.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// The GPU as `nvidia-smi` names it, with its nominal memory bandwidth where known.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub name: String,
    pub driver: String,
    pub memory: String,
    /// Nominal memory bandwidth, bytes per second.
    pub peak_bytes_per_s: Option<f64>,
}

/// Nominal memory bandwidth (bytes/s) of the data-centre GPUs this project is run on, from
/// the vendor's data sheets; `None` for others.
pub fn nominal_bandwidth(name: &str) -> Option<f64> {
    let name = name.to_ascii_uppercase();
    let tbs = if name.contains("H200") {
        4.8
    } else if name.contains("H100") && name.contains("PCIE") {
        2.0
    } else if name.contains("H100") && name.contains("NVL") {
        3.9
    } else if name.contains("H100") {
        3.35
    } else if name.contains("A100") && name.contains("80GB") {
        2.039
    } else if name.contains("A100") {
        1.555
    } else {
        return None;
    };
    Some(tbs * 1e12)
}

pub fn query_device(peak_gbs: Option<f64>) -> Result<Device> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
        ])
        .output()
        .context("cannot run nvidia-smi: is this a machine with an NVIDIA GPU?")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    let fields: Vec<&str> = first.split(',').map(str::trim).collect();
    if !out.status.success() || fields.len() < 3 {
        bail!("nvidia-smi found no GPU: {}", text.trim());
    }
    Ok(Device {
        name: fields[0].to_string(),
        driver: fields[1].to_string(),
        memory: fields[2].to_string(),
        peak_bytes_per_s: peak_gbs
            .map(|g| g * 1e9)
            .or_else(|| nominal_bandwidth(fields[0])),
    })
}

/// Points cubecl at the CUDA toolkit (headers for NVRTC) and the loader at its libraries.
pub fn cuda_environment(cmd: &mut Command) {
    // `CUDA_PATH`, the usual install folders, or the folder above the `nvcc` on `PATH`.
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|dir| dir.join("nvcc").is_file())
        .filter_map(|dir| dir.parent().map(Path::to_path_buf));
    let cuda = std::env::var_os("CUDA_PATH")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/local/cuda", "/opt/cuda"]
                .iter()
                .map(PathBuf::from)
                .chain(on_path)
                .find(|p| p.join("include").is_dir())
        });
    let mut libs: Vec<PathBuf> = ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(cuda) = cuda {
        libs.push(cuda.join("lib64"));
        cmd.env("CUDA_PATH", cuda);
    }
    let existing = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    libs.extend(std::env::split_paths(&existing));
    if let Ok(joined) = std::env::join_paths(libs.iter().filter(|p| p.is_dir())) {
        cmd.env("LD_LIBRARY_PATH", joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_bandwidth_knows_the_lent_gpus() {
        assert_eq!(nominal_bandwidth("NVIDIA H100 80GB HBM3"), Some(3.35e12));
        assert_eq!(nominal_bandwidth("NVIDIA H200"), Some(4.8e12));
        assert_eq!(nominal_bandwidth("NVIDIA H100 PCIe"), Some(2.0e12));
        assert_eq!(nominal_bandwidth("NVIDIA GeForce RTX 4090"), None);
    }
}
