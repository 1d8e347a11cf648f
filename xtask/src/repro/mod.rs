//! `cargo xtask repro`: the paper's comparison at equal sparsity.
//!
//! TopK, Feature Choice (uniform and Zipf capacities) and Mutual Choice, each without an
//! auxiliary loss and with `aux_k` / `aux_zipf`, several seeds, on the real activations and
//! on the synthetic default. Every configuration is one `sae train` run under
//! `target/repro/<data>/<variant>/seed-<n>/`; `docs/results.md` aggregates their final evals
//! (mean ± std over seeds) and checks the paper's claims against the numbers.
//!
//! By job: [`options`] (what was asked for), [`grid`] (the data sets, arms, auxiliary losses,
//! sizes and the runs they make), [`config`] (each run's training configuration, as TOML),
//! [`runs`] (launching `sae train`, reading a finished run back, publishing its plots),
//! [`stats`] (mean ± std over seeds), [`claims`] (the paper's claims checked on those numbers)
//! and [`markdown`] (`results.md`).

mod claims;
mod config;
#[cfg(test)]
mod fabricated;
mod grid;
mod markdown;
mod options;
mod runs;
mod stats;

use anyhow::{Context, Result};

pub use config::TrainingConfig;
pub use grid::{Arm, Aux, DataSet, RunSpec, Scale, real_data_path};
pub use options::{DataChoice, Options};
pub use runs::out_dir_override;

use crate::shell::{root, step};
use grid::grid;
use markdown::results_markdown;
use runs::{load_run, publish_reports, sae_binary, train_command};

pub fn run(options: &Options) -> Result<()> {
    let root = root();
    let base = options
        .out
        .as_ref()
        .map_or_else(|| root.join("target/repro"), |out| out.join("runs"));
    let real = real_data_path(&root);
    let data = options.data.data_sets(&real)?;
    let sae = sae_binary(options)?;
    let specs = grid(&data, options.seeds, options.scale());
    let configs = base.join("configs");
    std::fs::create_dir_all(&configs).with_context(|| configs.display().to_string())?;
    let real = real.canonicalize().unwrap_or(real);
    let mut results = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let dir = spec.dir(&base);
        let config = configs.join(format!(
            "{}-{}-seed-{}.toml",
            spec.data.name(),
            spec.variant(),
            spec.seed
        ));
        std::fs::write(&config, TrainingConfig::for_run(spec, &real).to_toml())
            .with_context(|| config.display().to_string())?;
        let mut cmd = train_command(&sae, &config, &dir, options.backend.as_deref());
        if options.dry_run {
            println!("{}", crate::shell::describe(&cmd));
            continue;
        }
        // A stale run would be resumed or mixed into this one's metrics.
        let _ = std::fs::remove_dir_all(&dir);
        step(
            &format!(
                "[{}/{}] {} {} seed {}",
                i + 1,
                specs.len(),
                spec.data.name(),
                spec.variant(),
                spec.seed
            ),
            &mut cmd,
        )?;
        results.push(load_run(*spec, dir)?);
    }
    if options.dry_run {
        return Ok(());
    }
    let docs = options.out.clone().unwrap_or_else(|| root.join("docs"));
    publish_reports(&mut results, &docs.join("results"))?;
    let md = results_markdown(&results, &docs, options);
    let path = docs.join("results.md");
    std::fs::write(&path, md).with_context(|| path.display().to_string())?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
