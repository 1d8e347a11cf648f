//! `cargo xtask repro`: the paper's comparison at equal sparsity.
//!
//! TopK, Feature Choice (uniform and Zipf capacities) and Mutual Choice, each without an
//! auxiliary loss and with `aux_k` / `aux_zipf`, several seeds, on the real activations and
//! on the synthetic default. Every configuration is one `sae train` run under
//! `target/repro/<data>/<variant>/seed-<n>/`; `docs/results.md` aggregates their final evals
//! (mean ± std over seeds) and checks the paper's claims against the numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use sae_report::FinalEval;

use crate::shell::{cargo, root, step};

/// Held-out tokens evaluated on the real activations (their held-out split is ~2600 rows).
pub const REAL_EVAL_TOKENS: u64 = 2_048;

/// Mean L0s within this relative distance count as "equal sparsity".
pub const EQUAL_L0_TOLERANCE: f64 = 0.05;

#[derive(Debug)]
pub struct Options {
    pub quick: bool,
    /// The smallest grid (a pipeline check for tests), overriding `quick`.
    pub smoke: bool,
    /// Where runs (`OUT/runs`) and results (`OUT/results.md`, `OUT/results/`) go instead of
    /// `target/repro` and `docs/`.
    pub out: Option<PathBuf>,
    pub seeds: u64,
    pub data: DataChoice,
    pub sae_bin: Option<PathBuf>,
    /// Write the configurations and print the commands, run nothing.
    pub dry_run: bool,
    /// The tensor backend of every run (`flex`, `wgpu`, `cuda`, ...); the trainer's default
    /// when absent.
    pub backend: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataChoice {
    Synthetic,
    Real,
    Both,
}

impl FromStr for DataChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "synthetic" => Self::Synthetic,
            "real" => Self::Real,
            "both" => Self::Both,
            _ => bail!("--data must be synthetic, real or both, not `{s}`"),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DataSet {
    Real,
    Synthetic,
}

impl DataSet {
    pub fn name(self) -> &'static str {
        match self {
            Self::Real => "real",
            Self::Synthetic => "synthetic",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Self::Real => "MiniLM-L3 activations",
            Self::Synthetic => "synthetic (known dictionary)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sparsifier {
    TopK,
    FcUniform,
    FcZipf,
    MutualChoice,
}

impl Sparsifier {
    pub const ALL: [Self; 4] = [
        Self::TopK,
        Self::FcUniform,
        Self::FcZipf,
        Self::MutualChoice,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Self::TopK => "topk",
            Self::FcUniform => "fc_uniform",
            Self::FcZipf => "fc_zipf",
            Self::MutualChoice => "mc",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Self::TopK => "TopK",
            Self::FcUniform => "FC (uniform)",
            Self::FcZipf => "FC (Zipf)",
            Self::MutualChoice => "MC",
        }
    }
    fn is_feature_choice(self) -> bool {
        matches!(self, Self::FcUniform | Self::FcZipf)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Aux {
    None,
    K,
    Zipf,
}

impl Aux {
    pub const ALL: [Self; 3] = [Self::None, Self::K, Self::Zipf];
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::K => "aux_k",
            Self::Zipf => "aux_zipf",
        }
    }
}

/// Model and training sizes of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub d_sae: u64,
    pub k: u64,
    pub batch_size: u64,
    pub total_tokens: u64,
    pub eval_every_tokens: u64,
    pub eval_tokens: u64,
    pub dead_window: u64,
    pub log_every_steps: u64,
    /// Learning-rate warm-up.
    pub lr_warmup_tokens: u64,
    /// Zipf capacities stay uniform until the feature statistics have seen this many tokens.
    pub zipf_warmup_tokens: u64,
}

impl Scale {
    /// Minutes for the whole grid on two CPU cores.
    pub fn quick() -> Self {
        Self {
            d_sae: 256,
            k: 8,
            batch_size: 256,
            total_tokens: 65_536,
            eval_every_tokens: 32_768,
            eval_tokens: 4_096,
            dead_window: 16_384,
            log_every_steps: 16,
            lr_warmup_tokens: 4_096,
            zipf_warmup_tokens: 8_192,
        }
    }
    /// Sized for a GPU: a 16x dictionary of the 384-wide activations, 20M tokens a run.
    pub fn full() -> Self {
        Self {
            d_sae: 6_144,
            k: 32,
            batch_size: 4_096,
            total_tokens: 20_000_000,
            eval_every_tokens: 2_000_000,
            eval_tokens: 65_536,
            dead_window: 2_000_000,
            log_every_steps: 50,
            lr_warmup_tokens: 500_000,
            zipf_warmup_tokens: 1_000_000,
        }
    }
    /// One tiny run, seconds on a CPU: the CI smoke test.
    pub fn smoke() -> Self {
        Self {
            d_sae: 64,
            k: 4,
            batch_size: 128,
            total_tokens: 4_096,
            eval_every_tokens: 2_048,
            eval_tokens: 1_024,
            dead_window: 2_048,
            log_every_steps: 8,
            lr_warmup_tokens: 512,
            zipf_warmup_tokens: 1_024,
        }
    }
}

/// One configuration of the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSpec {
    pub data: DataSet,
    pub sparsifier: Sparsifier,
    pub aux: Aux,
    pub seed: u64,
    pub scale: Scale,
}

/// The real activations: `$SAE_SHARED_DATA` or `../shared/data` beside the workspace.
pub fn real_data_path(root: &Path) -> PathBuf {
    let dir = std::env::var_os("SAE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"));
    dir.join("minilm-l3-train.safetensors")
}

impl RunSpec {
    /// `fc_zipf+aux_k`; the auxiliary part is left out when there is none.
    pub fn variant(&self) -> String {
        match self.aux {
            Aux::None => self.sparsifier.name().to_string(),
            aux => format!("{}+{}", self.sparsifier.name(), aux.name()),
        }
    }

    pub fn dir(&self, base: &Path) -> PathBuf {
        base.join(self.data.name())
            .join(self.variant())
            .join(format!("seed-{}", self.seed))
    }

    /// The run's configuration file; `out_dir` is set on the command line.
    pub fn config_toml(&self, root: &Path) -> String {
        let s = &self.scale;
        let mut t = format!("seed = {}\n\n[data]\n", self.seed);
        match self.data {
            DataSet::Synthetic => t.push_str("source = \"synthetic\"\n"),
            DataSet::Real => {
                let path = real_data_path(root);
                let path = path.canonicalize().unwrap_or(path);
                let _ = writeln!(
                    t,
                    "source = \"files\"\npath = {:?}",
                    path.display().to_string()
                );
            }
        }
        let _ = writeln!(t, "\n[model]\nd_sae = {}\n", s.d_sae);
        let (name, capacities) = match self.sparsifier {
            Sparsifier::TopK => ("topk", None),
            Sparsifier::FcUniform => ("feature_choice", Some("uniform")),
            Sparsifier::FcZipf => ("feature_choice", Some("zipf")),
            Sparsifier::MutualChoice => ("mutual_choice", None),
        };
        let _ = writeln!(t, "[sparsifier]\nname = \"{name}\"\nk = {}", s.k);
        if let Some(capacities) = capacities {
            let _ = writeln!(
                t,
                "capacities = \"{capacities}\"\nexponent = 1.0\nzipf_warmup_tokens = {}",
                s.zipf_warmup_tokens
            );
        }
        let _ = writeln!(t, "\n[step]\naux_coef = 0.03125\n\n[step.aux]");
        match self.aux {
            Aux::None => t.push_str("kind = \"none\"\n"),
            Aux::K => t.push_str("kind = \"aux_k\"\n"),
            Aux::Zipf => t.push_str("kind = \"aux_zipf\"\nexponent = 1.0\n"),
        }
        let _ = writeln!(t, "\n[step.stats]\ndead_window = {}\n", s.dead_window);
        let _ = writeln!(t, "[schedule]\nwarmup_tokens = {}\n", s.lr_warmup_tokens);
        // The real activations hold out 2% of 131072 rows: evaluate no more than that.
        let eval_tokens = match self.data {
            DataSet::Real => s.eval_tokens.min(REAL_EVAL_TOKENS),
            DataSet::Synthetic => s.eval_tokens,
        };
        let _ = writeln!(
            t,
            "[train]\nbatch_size = {}\ntotal_tokens = {}\neval_every_tokens = {}\n\
             eval_tokens = {}\ncheckpoint_every_tokens = {}\nkeep_checkpoints = 1\n\
             log_every_steps = {}",
            s.batch_size,
            s.total_tokens,
            s.eval_every_tokens,
            eval_tokens,
            s.total_tokens,
            s.log_every_steps
        );
        t
    }
}

/// `--set out_dir="..."`: override values are TOML, so the path is a quoted string.
pub fn out_dir_override(dir: &Path) -> String {
    let path = dir.display().to_string();
    format!(
        "out_dir=\"{}\"",
        path.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

/// The grid: every data set × sparsifier × auxiliary loss × seed.
pub fn grid(data: &[DataSet], seeds: u64, scale: Scale) -> Vec<RunSpec> {
    let mut specs = Vec::new();
    for &data in data {
        for sparsifier in Sparsifier::ALL {
            for aux in Aux::ALL {
                for seed in 0..seeds {
                    specs.push(RunSpec {
                        data,
                        sparsifier,
                        aux,
                        seed,
                        scale,
                    });
                }
            }
        }
    }
    specs
}

/// A finished run: its configuration, final numbers and directory.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub spec: RunSpec,
    pub dir: PathBuf,
    pub final_eval: FinalEval,
    /// Training throughput at the end of the run.
    pub tokens_per_second: Option<f64>,
}

pub fn run(options: &Options) -> Result<()> {
    let root = root();
    let base = options
        .out
        .as_ref()
        .map_or_else(|| root.join("target/repro"), |out| out.join("runs"));
    let real = real_data_path(&root);
    let data: Vec<DataSet> = match options.data {
        DataChoice::Synthetic => vec![DataSet::Synthetic],
        DataChoice::Real | DataChoice::Both if !real.exists() => {
            if options.data == DataChoice::Real {
                bail!("real activations not found at {}", real.display());
            }
            eprintln!("note: {} absent, synthetic data only", real.display());
            vec![DataSet::Synthetic]
        }
        DataChoice::Real => vec![DataSet::Real],
        DataChoice::Both => vec![DataSet::Real, DataSet::Synthetic],
    };
    let scale = if options.smoke {
        Scale::smoke()
    } else if options.quick {
        Scale::quick()
    } else {
        Scale::full()
    };
    let sae = match &options.sae_bin {
        Some(bin) => bin.clone(),
        None if options.dry_run => PathBuf::from("sae"),
        None => {
            step(
                "build sae",
                cargo().args(["build", "--release", "-p", "sae-cli"]),
            )?;
            crate::shell::target_dir().join("release/sae")
        }
    };
    let specs = grid(&data, options.seeds, scale);
    let configs = base.join("configs");
    std::fs::create_dir_all(&configs).with_context(|| configs.display().to_string())?;
    let mut results = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let dir = spec.dir(&base);
        let config = configs.join(format!(
            "{}-{}-seed-{}.toml",
            spec.data.name(),
            spec.variant(),
            spec.seed
        ));
        std::fs::write(&config, spec.config_toml(&root))
            .with_context(|| config.display().to_string())?;
        let mut cmd = Command::new(&sae);
        cmd.args(["train", "--quiet", "--config"])
            .arg(&config)
            .arg("--set")
            .arg(out_dir_override(&dir));
        if let Some(backend) = &options.backend {
            cmd.arg("--set").arg(format!("backend=\"{backend}\""));
        }
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

/// Copies the report (plots and summary) of each configuration's first seed to
/// `dest/<data>-<variant>/report/` and points that run there, so the links of `results.md`
/// hold in a clone without `target/`.
fn publish_reports(results: &mut [RunResult], dest: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dest);
    let mut seen = std::collections::BTreeSet::new();
    for r in results.iter_mut() {
        let name = format!("{}-{}", r.spec.data.name(), r.spec.variant());
        if !seen.insert(name.clone()) {
            continue;
        }
        let to = dest.join(&name);
        let report = to.join("report");
        std::fs::create_dir_all(&report).with_context(|| report.display().to_string())?;
        let from = r.dir.join("report");
        for entry in std::fs::read_dir(&from).with_context(|| from.display().to_string())? {
            let path = entry?.path();
            if path.is_file() {
                let file = report.join(path.file_name().expect("a file has a name"));
                std::fs::copy(&path, &file).with_context(|| file.display().to_string())?;
            }
        }
        r.dir = to;
    }
    Ok(())
}

/// Writes the plots and `report.md` of a finished run and reads its final numbers.
pub fn load_run(spec: RunSpec, dir: PathBuf) -> Result<RunResult> {
    let report = sae_report::write_report(&dir, &dir.join("report"))?;
    let final_eval = report
        .final_eval
        .with_context(|| format!("{}: no eval record", dir.display()))?;
    Ok(RunResult {
        spec,
        dir,
        final_eval,
        tokens_per_second: report.tokens_per_second,
    })
}

/// Mean and sample standard deviation over seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stat {
    /// Over the finite values present; `None` when there are none.
    pub fn of(values: impl Iterator<Item = Option<f64>>) -> Option<Self> {
        let v: Vec<f64> = values.flatten().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Self { mean, std, n })
    }
}

fn fmt_stat(s: Option<Stat>, digits: usize) -> String {
    match s {
        Some(s) => format!("{:.digits$} ± {:.digits$}", s.mean, s.std),
        None => "—".into(),
    }
}

fn fmt_stat_percent(s: Option<Stat>) -> String {
    match s {
        Some(s) => format!("{:.1} ± {:.1}%", 100.0 * s.mean, 100.0 * s.std),
        None => "—".into(),
    }
}

/// One (data set, sparsifier, auxiliary loss) over its seeds.
#[derive(Debug, Clone)]
pub struct Aggregate {
    pub data: DataSet,
    pub sparsifier: Sparsifier,
    pub aux: Aux,
    pub seeds: usize,
    pub fvu: Option<Stat>,
    pub l0_mean: Option<Stat>,
    /// The spread of L0 across tokens (each run's L0 std), averaged over seeds.
    pub l0_spread: Option<Stat>,
    pub dead: Option<Stat>,
    /// The largest dead fraction of any seed: "zero dead" must hold for every seed.
    pub dead_max: Option<f64>,
    pub underused: Option<Stat>,
    pub mmcs: Option<Stat>,
    pub recovered: Option<Stat>,
    pub tokens_per_second: Option<Stat>,
    /// The first seed's run directory, for links to its plots.
    pub first_dir: PathBuf,
}

/// Groups runs by configuration, in the grid's order (data, sparsifier, auxiliary loss).
pub fn aggregate(runs: &[RunResult]) -> Vec<Aggregate> {
    let mut groups: BTreeMap<(DataSet, Sparsifier, Aux), Vec<&RunResult>> = BTreeMap::new();
    for r in runs {
        groups
            .entry((r.spec.data, r.spec.sparsifier, r.spec.aux))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((data, sparsifier, aux), mut rs)| {
            rs.sort_by_key(|r| r.spec.seed);
            let stat =
                |f: fn(&FinalEval) -> Option<f64>| Stat::of(rs.iter().map(|r| f(&r.final_eval)));
            Aggregate {
                data,
                sparsifier,
                aux,
                seeds: rs.len(),
                fvu: stat(|e| e.fvu),
                l0_mean: stat(|e| e.l0_mean),
                l0_spread: stat(|e| e.l0_std),
                dead: stat(|e| e.dead_in_training_fraction),
                dead_max: rs
                    .iter()
                    .filter_map(|r| r.final_eval.dead_in_training_fraction)
                    .reduce(f64::max),
                underused: stat(|e| e.underused_fraction),
                mmcs: stat(|e| e.mmcs),
                recovered: stat(|e| e.recovered),
                tokens_per_second: Stat::of(rs.iter().map(|r| r.tokens_per_second)),
                first_dir: rs[0].dir.clone(),
            }
        })
        .collect()
}

/// The outcome of checking one claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Held,
    Partly,
    NotHeld,
    Untested,
}

impl Verdict {
    fn from_counts(held: usize, tested: usize) -> Self {
        match (held, tested) {
            (_, 0) => Self::Untested,
            (h, t) if h == t => Self::Held,
            (0, _) => Self::NotHeld,
            _ => Self::Partly,
        }
    }
    fn text(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Partly => "held in part",
            Self::NotHeld => "did not hold",
            Self::Untested => "not tested (runs missing)",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Claim {
    pub statement: &'static str,
    pub verdict: Verdict,
    /// One line per comparison made.
    pub evidence: Vec<String>,
}

fn find(aggs: &[Aggregate], data: DataSet, sparsifier: Sparsifier, aux: Aux) -> Option<&Aggregate> {
    aggs.iter()
        .find(|a| a.data == data && a.sparsifier == sparsifier && a.aux == aux)
}

fn data_sets(aggs: &[Aggregate]) -> Vec<DataSet> {
    let mut d: Vec<DataSet> = aggs.iter().map(|a| a.data).collect();
    d.dedup();
    d
}

/// The paper's claims, each checked on every comparison the runs allow.
pub fn evaluate_claims(aggs: &[Aggregate]) -> Vec<Claim> {
    vec![
        lower_fvu_than_topk(aggs),
        feature_choice_no_dead(aggs),
        aux_zipf_reduces_dead_and_underused(aggs),
    ]
}

fn lower_fvu_than_topk(aggs: &[Aggregate]) -> Claim {
    let (mut held, mut tested, mut evidence) = (0, 0, Vec::new());
    for data in data_sets(aggs) {
        for aux in Aux::ALL {
            let Some(topk) = find(aggs, data, Sparsifier::TopK, aux) else {
                continue;
            };
            for s in [
                Sparsifier::FcUniform,
                Sparsifier::FcZipf,
                Sparsifier::MutualChoice,
            ] {
                let Some(other) = find(aggs, data, s, aux) else {
                    continue;
                };
                let (Some(f_t), Some(f_o), Some(l_t), Some(l_o)) =
                    (topk.fvu, other.fvu, topk.l0_mean, other.l0_mean)
                else {
                    continue;
                };
                let prefix = format!("{} / {} / {}:", data.name(), s.label(), aux.name());
                if (l_o.mean - l_t.mean).abs() > EQUAL_L0_TOLERANCE * l_t.mean.abs().max(1e-9) {
                    evidence.push(format!(
                        "{prefix} not compared, L0 {:.2} vs TopK {:.2} differ by more than {:.0}%",
                        l_o.mean,
                        l_t.mean,
                        100.0 * EQUAL_L0_TOLERANCE
                    ));
                    continue;
                }
                tested += 1;
                let ok = f_o.mean < f_t.mean;
                held += usize::from(ok);
                evidence.push(format!(
                    "{prefix} FVU {:.4} vs TopK {:.4} ({}) at L0 {:.2} vs {:.2}",
                    f_o.mean,
                    f_t.mean,
                    if ok { "lower" } else { "not lower" },
                    l_o.mean,
                    l_t.mean
                ));
            }
        }
    }
    Claim {
        statement: "Feature Choice and Mutual Choice reach lower FVU than TopK at equal mean L0",
        verdict: Verdict::from_counts(held, tested),
        evidence,
    }
}

fn feature_choice_no_dead(aggs: &[Aggregate]) -> Claim {
    let (mut held, mut tested, mut evidence) = (0, 0, Vec::new());
    for a in aggs.iter().filter(|a| a.sparsifier.is_feature_choice()) {
        let Some(max) = a.dead_max else { continue };
        tested += 1;
        held += usize::from(max == 0.0);
        evidence.push(format!(
            "{} / {} / {}: largest dead fraction over {} seed(s) {:.2}%",
            a.data.name(),
            a.sparsifier.label(),
            a.aux.name(),
            a.seeds,
            100.0 * max
        ));
    }
    Claim {
        statement: "Feature Choice has zero dead features",
        verdict: Verdict::from_counts(held, tested),
        evidence,
    }
}

fn aux_zipf_reduces_dead_and_underused(aggs: &[Aggregate]) -> Claim {
    let (mut held, mut tested, mut evidence) = (0, 0, Vec::new());
    for data in data_sets(aggs) {
        for s in Sparsifier::ALL {
            let (Some(none), Some(zipf)) = (
                find(aggs, data, s, Aux::None),
                find(aggs, data, s, Aux::Zipf),
            ) else {
                continue;
            };
            let (Some(dn), Some(dz), Some(un), Some(uz)) =
                (none.dead, zipf.dead, none.underused, zipf.underused)
            else {
                continue;
            };
            tested += 1;
            // Nothing to reduce counts as no worse; at least one of the two must fall.
            let ok = dz.mean <= dn.mean
                && uz.mean <= un.mean
                && (dz.mean < dn.mean || uz.mean < un.mean);
            held += usize::from(ok);
            evidence.push(format!(
                "{} / {}: dead {:.2}% → {:.2}%, under-used {:.2}% → {:.2}% ({})",
                data.name(),
                s.label(),
                100.0 * dn.mean,
                100.0 * dz.mean,
                100.0 * un.mean,
                100.0 * uz.mean,
                if ok { "reduced" } else { "not reduced" }
            ));
        }
    }
    Claim {
        statement: "aux_zipf reduces dead and under-used features (against no auxiliary loss)",
        verdict: Verdict::from_counts(held, tested),
        evidence,
    }
}

/// Path of `target` as seen from `from` (both absolute), for markdown links.
fn relative(target: &Path, from: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

/// `docs/results.md`: the table over seeds, links to each configuration's plots, the claims.
pub fn results_markdown(runs: &[RunResult], docs_dir: &Path, options: &Options) -> String {
    let aggs = aggregate(runs);
    let mut md = String::from("# Reproduction: adaptive sparse allocation (arXiv 2411.02124)\n\n");
    let scale = runs.first().map(|r| r.spec.scale);
    let _ = writeln!(
        md,
        "Generated by `cargo xtask repro{}` ({} seed(s) per configuration, {} runs).",
        match (options.smoke, options.quick) {
            (true, _) => " --smoke",
            (false, true) => " --quick",
            (false, false) => "",
        },
        options.seeds,
        runs.len()
    );
    if let Some(s) = scale {
        let _ = writeln!(
            md,
            "Each run: {} features, k = {}, batch {}, {} training tokens, {} eval tokens.",
            s.d_sae, s.k, s.batch_size, s.total_tokens, s.eval_tokens
        );
    }
    if options.quick || options.smoke {
        md.push_str(
            "The quick scale is a smoke test of the whole pipeline that fits a few minutes on two \
             CPU cores. Its dictionaries are small and short-trained, far from the regime the \
             paper measures (GPT-2 small, wide dictionaries, many more training tokens), so the \
             verdicts below say what happened at this scale only. `cargo xtask repro` without \
             `--quick` runs the GPU-sized grid.\n\n",
        );
    }
    md.push_str(
        "Numbers are the final evaluation (batch selection), mean ± standard deviation over \
         seeds; \"L0 spread\" is the standard deviation of L0 across tokens. MMCS and recovery \
         exist on synthetic data only; tokens/s is the training throughput at the end of each run \
         (the compute cost of each rule).\n\n",
    );
    for data in data_sets(&aggs) {
        let _ = writeln!(md, "## {}\n", data.label());
        md.push_str(
            "| sparsifier | aux | seeds | FVU | L0 mean | L0 spread | dead | under-used | MMCS | recovered | tokens/s | plots |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for a in aggs.iter().filter(|a| a.data == data) {
            let report = relative(&a.first_dir.join("report/report.md"), docs_dir);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | [seed {}]({}) |",
                a.sparsifier.label(),
                a.aux.name(),
                a.seeds,
                fmt_stat(a.fvu, 4),
                fmt_stat(a.l0_mean, 2),
                fmt_stat(a.l0_spread, 2),
                fmt_stat_percent(a.dead),
                fmt_stat_percent(a.underused),
                fmt_stat(a.mmcs, 3),
                fmt_stat_percent(a.recovered),
                fmt_stat(a.tokens_per_second, 0),
                runs.iter()
                    .filter(|r| r.dir == a.first_dir)
                    .map(|r| r.spec.seed)
                    .next()
                    .unwrap_or(0),
                report.display()
            );
        }
        md.push('\n');
    }
    md.push_str("## Paper claims\n\n");
    let _ = writeln!(
        md,
        "Checked on the numbers above; equal sparsity means mean L0 within {:.0}%.\n",
        100.0 * EQUAL_L0_TOLERANCE
    );
    for claim in evaluate_claims(&aggs) {
        let _ = writeln!(md, "- **{}**: {}.", claim.statement, claim.verdict.text());
        for line in &claim.evidence {
            let _ = writeln!(md, "  - {line}");
        }
    }
    md.push_str("\n## Every run\n\n");
    let per_run: Vec<(String, FinalEval)> = runs
        .iter()
        .map(|r| {
            (
                format!(
                    "{} {} seed {}",
                    r.spec.data.name(),
                    r.spec.variant(),
                    r.spec.seed
                ),
                r.final_eval.clone(),
            )
        })
        .collect();
    md.push_str(&sae_report::comparison_table(&per_run));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()))
    }

    fn options() -> Options {
        Options {
            quick: true,
            smoke: false,
            out: None,
            seeds: 2,
            data: DataChoice::Both,
            sae_bin: None,
            dry_run: false,
            backend: None,
        }
    }

    /// A run directory whose last eval has the given numbers.
    fn fabricate(dir: &Path, fvu: f64, l0: f64, dead: f64, underused: f64, synthetic: bool) {
        std::fs::create_dir_all(dir).unwrap();
        let (mmcs, recovered) = if synthetic {
            ("0.8", "0.5")
        } else {
            ("null", "null")
        };
        let lines = [
            format!(
                r#"{{"kind":"train","step":8,"tokens":2048,"loss":1.0,"fvu":{},"aux":0.0,"l0":{l0},"dead_fraction":{dead},"lr":0.0002,"tokens_per_second":1000.0}}"#,
                fvu * 2.0
            ),
            format!(
                r#"{{"kind":"eval","step":16,"tokens":4096,"batch":{{"fvu":{fvu},"mse":0.1,"l0_mean":{l0},"l0_std":1.5,"l0_histogram":[0,1,4,9,4,1]}},"inference":null,"dead_fraction":{dead},"underused_fraction":{underused},"density_histogram":[1,0,0,0,0,0,0,0,0,0,0,0,0,0,2,5,9,4,1,0],"mmcs":{mmcs},"recovered":{recovered}}}"#
            ),
        ];
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    }

    fn fabricated_runs(base: &Path) -> Vec<RunResult> {
        let _ = std::fs::remove_dir_all(base);
        grid(&[DataSet::Real, DataSet::Synthetic], 2, Scale::quick())
            .into_iter()
            .map(|spec| {
                let dir = spec.dir(base);
                let s = spec.sparsifier as usize as f64;
                let a = spec.aux as usize as f64;
                let fc = spec.sparsifier.is_feature_choice();
                fabricate(
                    &dir,
                    0.3 - 0.02 * s - 0.001 * spec.seed as f64,
                    8.0 + 0.01 * spec.seed as f64,
                    if fc { 0.0 } else { 0.1 - 0.03 * a },
                    0.3 - 0.05 * a,
                    spec.data == DataSet::Synthetic,
                );
                load_run(spec, dir).unwrap()
            })
            .collect()
    }

    /// Every table is a header, a separator and rows, all with the header's column count.
    fn assert_tables_well_formed(md: &str) {
        let mut tables = 0;
        let mut columns = None;
        for line in md.lines() {
            if line.starts_with('|') {
                assert!(line.ends_with('|'), "{line}");
                let cells = line.replace("\\|", "").matches('|').count();
                match columns {
                    None => {
                        columns = Some(cells);
                        tables += 1;
                    }
                    Some(c) => assert_eq!(c, cells, "{line}"),
                }
            } else {
                columns = None;
            }
        }
        assert_eq!(tables, 3, "{md}");
    }

    #[test]
    fn results_markdown_is_well_formed_on_fabricated_runs() {
        let base = scratch("repro_fabricated");
        let runs = fabricated_runs(&base);
        let md = results_markdown(&runs, &base.join("docs"), &options());
        assert_tables_well_formed(&md);
        // 12 configurations per data set, and one row per run.
        let rows = |heading: &str| {
            md.split(heading)
                .nth(1)
                .unwrap()
                .lines()
                .skip(4)
                .take_while(|l| l.starts_with('|'))
                .count()
        };
        assert_eq!(rows("## MiniLM-L3 activations"), 12);
        assert_eq!(rows("## synthetic (known dictionary)"), 12);
        assert_eq!(rows("## Every run"), 48);
        assert!(
            md.contains("](../real/topk/seed-0/report/report.md)"),
            "{md}"
        );
        let claims = md.split("## Paper claims").nth(1).unwrap();
        assert_eq!(claims.matches("\n- **").count(), 3);
        for verdict in claims.lines().filter(|l| l.starts_with("- **")) {
            assert!(
                [
                    "held.",
                    "held in part.",
                    "did not hold.",
                    "not tested (runs missing)."
                ]
                .iter()
                .any(|v| verdict.ends_with(v)),
                "{verdict}"
            );
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn claims_follow_the_numbers() {
        let base = scratch("repro_claims");
        let runs = fabricated_runs(&base);
        let claims = evaluate_claims(&aggregate(&runs));
        // Fabricated: FVU falls with the sparsifier index, FC has no dead features, aux_zipf
        // lowers under-use everywhere and dead features where there are any.
        assert_eq!(claims[0].verdict, Verdict::Held, "{:?}", claims[0]);
        assert_eq!(claims[0].evidence.len(), 2 * 3 * 3);
        assert_eq!(claims[1].verdict, Verdict::Held);
        assert_eq!(claims[2].verdict, Verdict::Held, "{:?}", claims[2]);

        // TopK better than MC on one comparison: only in part.
        let mut aggs = aggregate(&runs);
        for a in aggs.iter_mut().filter(|a| a.sparsifier == Sparsifier::TopK) {
            a.fvu = Some(Stat {
                mean: 0.25,
                std: 0.0,
                n: 2,
            });
        }
        assert_eq!(lower_fvu_than_topk(&aggs).verdict, Verdict::Partly);
        // Unequal L0: nothing is comparable.
        for a in aggs.iter_mut().filter(|a| a.sparsifier == Sparsifier::TopK) {
            a.l0_mean = Some(Stat {
                mean: 16.0,
                std: 0.0,
                n: 2,
            });
        }
        assert_eq!(lower_fvu_than_topk(&aggs).verdict, Verdict::Untested);
        // One seed of one FC configuration with a dead feature.
        aggs[3].dead_max = Some(0.001);
        assert!(aggs[3].sparsifier.is_feature_choice());
        assert_eq!(feature_choice_no_dead(&aggs).verdict, Verdict::Partly);
        assert_eq!(evaluate_claims(&[])[0].verdict, Verdict::Untested);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn stat_is_mean_and_sample_std() {
        let s = Stat::of([Some(1.0), None, Some(3.0), Some(f64::NAN)].into_iter()).unwrap();
        assert_eq!((s.mean, s.std, s.n), (2.0, 2f64.sqrt(), 2));
        assert_eq!(Stat::of([Some(5.0)].into_iter()).unwrap().std, 0.0);
        assert!(Stat::of([None].into_iter()).is_none());
    }

    #[test]
    fn config_names_the_sparsifier_aux_and_data() {
        let spec = RunSpec {
            data: DataSet::Real,
            sparsifier: Sparsifier::FcZipf,
            aux: Aux::Zipf,
            seed: 3,
            scale: Scale::quick(),
        };
        let t = spec.config_toml(Path::new("/ws"));
        for needle in [
            "seed = 3\n",
            "source = \"files\"\npath = \"",
            "minilm-l3-train.safetensors\"",
            "name = \"feature_choice\"\nk = 8\ncapacities = \"zipf\"",
            "[step.aux]\nkind = \"aux_zipf\"",
            "dead_window = 16384",
            "total_tokens = 65536",
            "eval_tokens = 2048\n",
            "zipf_warmup_tokens = 8192\n",
            "[schedule]\nwarmup_tokens = 4096\n",
        ] {
            assert!(t.contains(needle), "{needle:?} in\n{t}");
        }
        assert_eq!(spec.variant(), "fc_zipf+aux_zipf");
        assert_eq!(
            spec.dir(Path::new("b")),
            Path::new("b/real/fc_zipf+aux_zipf/seed-3")
        );
        assert_eq!(grid(&[DataSet::Synthetic], 2, Scale::quick()).len(), 24);
        assert!("bogus".parse::<DataChoice>().is_err());
        assert_eq!(
            out_dir_override(Path::new("/a \"b\"/c")),
            r#"out_dir="/a \"b\"/c""#
        );
    }

    #[test]
    fn relative_links() {
        assert_eq!(
            relative(
                Path::new("/ws/target/repro/x/report.md"),
                Path::new("/ws/docs")
            ),
            Path::new("../target/repro/x/report.md")
        );
    }
}
