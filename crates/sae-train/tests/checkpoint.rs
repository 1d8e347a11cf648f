//! Checkpoints are atomic, rotate, and a failed write (including a full disk) leaves the
//! previous checkpoint intact.

use std::fs;

use sae_train::TrainError;
use sae_train::checkpoint::Checkpoints;

fn write_file(
    name: &'static str,
    body: &'static str,
) -> impl FnOnce(&std::path::Path) -> Result<(), TrainError> {
    move |dir| {
        fs::write(dir.join(name), body).map_err(|source| TrainError::Io {
            path: dir.join(name),
            source,
        })
    }
}

#[test]
fn keeps_the_newest_and_lists_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpts = Checkpoints::new(tmp.path(), 2);
    for step in [10, 20, 30] {
        ckpts.save(step, write_file("a", "x")).unwrap();
    }
    let steps: Vec<u64> = ckpts.list().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![20, 30]);
    assert_eq!(ckpts.latest().unwrap().unwrap().0, 30);
}

#[test]
fn a_failed_write_leaves_the_previous_checkpoint_and_no_debris() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpts = Checkpoints::new(tmp.path(), 3);
    let good = ckpts.save(1, write_file("state", "good")).unwrap();
    let err = ckpts
        .save(2, |dir| {
            fs::write(dir.join("state"), "half").unwrap();
            Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: "simulated crash".into(),
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("simulated crash"));
    assert_eq!(fs::read_to_string(good.join("state")).unwrap(), "good");
    let names: Vec<_> = fs::read_dir(ckpts.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "left behind: {names:?}");
}

#[test]
fn a_full_disk_is_an_error_and_the_old_checkpoint_survives() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("skipped: /dev/full is not available");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ckpts = Checkpoints::new(tmp.path(), 3);
    let good = ckpts.save(1, write_file("state", "good")).unwrap();
    // Writing through a link to /dev/full fails with ENOSPC, as a full disk does.
    let err = ckpts
        .save(2, |dir| {
            std::os::unix::fs::symlink("/dev/full", dir.join("state")).unwrap();
            fs::write(dir.join("state"), vec![0u8; 1 << 16]).map_err(|source| TrainError::Io {
                path: dir.join("state"),
                source,
            })
        })
        .unwrap_err();
    let TrainError::Io { source, .. } = &err else {
        panic!("unexpected {err}")
    };
    assert_eq!(
        source.raw_os_error(),
        Some(28),
        "ENOSPC expected, got {source}"
    );
    assert_eq!(fs::read_to_string(good.join("state")).unwrap(), "good");
    assert_eq!(ckpts.latest().unwrap().unwrap().0, 1);
}

#[test]
fn resumed_metrics_drop_lines_written_after_the_checkpoint() {
    use sae_train::metrics::{MetricsLog, MetricsRecord, read_records};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("metrics.jsonl");
    let rec = |step| MetricsRecord {
        kind: "train".into(),
        step,
        tokens: step * 10,
        values: Default::default(),
    };
    let mut log = MetricsLog::open(&path, None).unwrap();
    for step in 1..=5 {
        log.write(&rec(step)).unwrap();
    }
    drop(log);
    let mut log = MetricsLog::open(&path, Some(3)).unwrap();
    log.write(&rec(4)).unwrap();
    let steps: Vec<u64> = read_records(&path)
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
}
