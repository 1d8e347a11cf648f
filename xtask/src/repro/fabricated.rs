//! Finished runs made up for the tests: a `metrics.jsonl` per cell of a two-seed grid whose
//! numbers follow known trends, read back like real runs.

use std::path::{Path, PathBuf};

use super::grid::{DataSet, Scale, grid};
use super::runs::{RunResult, load_run};

/// A directory of this test process under the system's temporary directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()))
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

/// The quick grid on both data sets with two seeds, under `base`: FVU falls with the arm's
/// index, Feature Choice has no dead features, and each auxiliary loss lowers dead and
/// under-used features.
pub fn fabricated_runs(base: &Path) -> Vec<RunResult> {
    let _ = std::fs::remove_dir_all(base);
    grid(&[DataSet::Real, DataSet::Synthetic], 2, Scale::quick())
        .into_iter()
        .map(|spec| {
            let dir = spec.dir(base);
            let s = spec.arm as usize as f64;
            let a = spec.aux as usize as f64;
            let fc = spec.arm.is_feature_choice();
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
