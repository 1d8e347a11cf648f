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
fn re_saving_a_step_replaces_it_and_a_failed_re_save_keeps_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpts = Checkpoints::new(tmp.path(), 2);
    ckpts.save(10, write_file("state", "first")).unwrap();
    let again = ckpts.save(10, write_file("state", "second")).unwrap();
    assert_eq!(fs::read_to_string(again.join("state")).unwrap(), "second");
    let err = ckpts.save(10, |dir| {
        Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason: "simulated crash".into(),
        })
    });
    assert!(err.is_err());
    assert_eq!(fs::read_to_string(again.join("state")).unwrap(), "second");
    let names: Vec<_> = fs::read_dir(ckpts.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["step-000000000010"], "left behind: {names:?}");
}

#[test]
fn leftovers_of_a_killed_write_go_at_the_next_save_and_corrupt_ones_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpts = Checkpoints::new(tmp.path(), 2);
    let first = ckpts.save(10, write_file("state", "ten")).unwrap();
    // What a process killed mid-write or mid-replacement leaves.
    for name in ["step-000000000015.partial", "step-000000000010.replaced"] {
        fs::create_dir(ckpts.root().join(name)).unwrap();
        fs::write(ckpts.root().join(name).join("state"), "half").unwrap();
    }
    let corrupt = ckpts.set_aside(&first).unwrap();
    ckpts.save(20, write_file("state", "twenty")).unwrap();
    let mut names: Vec<_> = fs::read_dir(ckpts.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["step-000000000010.corrupt", "step-000000000020"],
        "left behind or lost"
    );
    assert!(corrupt.exists());
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
    use sae_train::metrics::{MetricsLog, read_records};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("metrics.jsonl");
    let rec = |step| record("train", step);
    let mut log = MetricsLog::open(&path, None).unwrap();
    for step in 1..=5 {
        log.write(&rec(step)).unwrap();
    }
    drop(log);
    let mut log = MetricsLog::open(
        &path,
        Some(sae_train::metrics::ResumePoint { step: 3, len: None }),
    )
    .unwrap();
    log.write(&rec(4)).unwrap();
    let steps: Vec<u64> = read_records(&path)
        .unwrap()
        .iter()
        .map(|r| r.step())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
}

/// A train or eval line at `step`, with made-up values.
fn record(kind: &str, step: u64) -> sae_train::metrics::Record {
    let values = match kind {
        "train" => r#""loss": 0.5"#,
        _ => {
            r#""batch": {"fvu": 0.5, "mse": 0.1, "l0_mean": 4.0, "l0_std": 1.0},
               "dead_in_training_fraction": 0.0"#
        }
    };
    let line = format!(
        r#"{{"kind": "{kind}", "step": {step}, "tokens": {}, {values}}}"#,
        step * 10
    );
    sae_train::metrics::Record::parse(&line).unwrap()
}

#[test]
fn a_flipped_bit_or_a_cut_file_fails_verification_naming_the_file() {
    use sae_train::checksum::Manifest;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("a.bin"), vec![7u8; 3000]).unwrap();
    fs::write(dir.join("b.json"), b"{\"x\": 1}").unwrap();
    let manifest = Manifest::write(dir, &["a.bin", "b.json"]).unwrap();
    assert_eq!(Manifest::read(dir).unwrap(), Some(manifest.clone()));
    manifest.verify(dir).unwrap();

    let mut bytes = fs::read(dir.join("a.bin")).unwrap();
    bytes[1234] ^= 0x10;
    fs::write(dir.join("a.bin"), &bytes).unwrap();
    let err = manifest.verify(dir).unwrap_err().to_string();
    assert!(err.contains("a.bin") && err.contains("checksum"), "{err}");

    bytes[1234] ^= 0x10;
    fs::write(dir.join("a.bin"), &bytes[..2999]).unwrap();
    let err = manifest.verify(dir).unwrap_err().to_string();
    assert!(err.contains("a.bin") && err.contains("2999 bytes"), "{err}");

    fs::write(dir.join("a.bin"), &bytes).unwrap();
    manifest.verify(dir).unwrap();
    assert_eq!(Manifest::read(&dir.join("elsewhere")).unwrap(), None);
}

#[test]
fn resumed_metrics_are_cut_back_to_the_recorded_length_and_a_torn_tail_is_dropped() {
    use sae_train::metrics::{MetricsLog, Record, ResumePoint, read_records};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("metrics.jsonl");
    let rec = record;
    let mut log = MetricsLog::open(&path, None).unwrap();
    log.write(&rec("train", 1)).unwrap();
    log.write(&rec("train", 2)).unwrap();
    let at_checkpoint = log.len();
    // Written after the checkpoint, at the checkpoint's own step (e.g. a final evaluation).
    log.write(&rec("eval", 2)).unwrap();
    drop(log);
    let kinds = |path| {
        read_records(path)
            .unwrap()
            .iter()
            .map(|r| match r {
                Record::Train(t) => format!("train{}", t.step),
                Record::Eval(e) => format!("eval{}", e.step),
            })
            .collect::<Vec<_>>()
    };
    let mut log = MetricsLog::open(
        &path,
        Some(ResumePoint {
            step: 2,
            len: Some(at_checkpoint),
        }),
    )
    .unwrap();
    assert_eq!(log.len(), at_checkpoint);
    log.write(&rec("train", 3)).unwrap();
    drop(log);
    assert_eq!(kinds(&path), ["train1", "train2", "train3"]);

    // A checkpoint without a recorded length: lines up to its step, the torn tail dropped.
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str(r#"{"kind":"train","st"#);
    fs::write(&path, text).unwrap();
    assert!(read_records(&path).is_err(), "the torn line is there");
    MetricsLog::open(&path, Some(ResumePoint { step: 3, len: None })).unwrap();
    assert_eq!(kinds(&path), ["train1", "train2", "train3"]);
}
