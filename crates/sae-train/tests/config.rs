//! Configuration parsing: defaults, overrides, and errors that name the field at fault.

use sae_train::{RunConfig, TrainError};

fn load(toml: &str, sets: &[&str]) -> Result<RunConfig, TrainError> {
    let doc: toml::Table = toml.parse().unwrap();
    let mut doc = doc;
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    sae_train::overrides::apply_overrides(&mut doc, &sets)?;
    RunConfig::from_table(doc, "test.toml")
}

#[test]
fn defaults_round_trip_through_toml() {
    let config = RunConfig::default();
    let back = RunConfig::from_table(config.to_toml().parse().unwrap(), "round trip").unwrap();
    assert_eq!(back, config);
}

#[test]
fn overrides_reach_nested_fields_and_the_sparsifier() {
    let c = load(
        "[sparsifier]\nname = \"topk\"\nk = 32\n",
        &["sparsifier.k=64", "train.batch_size=256"],
    )
    .unwrap();
    assert_eq!(c.sparsifier["k"], 64);
    assert_eq!(c.sparsifier["name"], "topk");
    assert_eq!(c.train.batch_size, 256);
}

#[test]
fn unknown_fields_are_named() {
    let err = load("[train]\nbatch_sise = 3\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("train") && err.contains("batch_sise"), "{err}");
    let err = load("", &["step.lrr=0.1"]).unwrap_err().to_string();
    assert!(err.contains("step") && err.contains("lrr"), "{err}");
    let err = load("", &["colour=3"]).unwrap_err().to_string();
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn invalid_values_are_named() {
    let err = load("", &["train.batch_size=\"many\""])
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.batch_size"), "{err}");
    let err = load("", &["train.batch_size=0"]).unwrap_err().to_string();
    assert!(
        err.contains("train.batch_size = 0 is out of range: must be at least 1"),
        "{err}"
    );
    let err = load("", &["data.source=\"files\""])
        .unwrap_err()
        .to_string();
    assert!(err.contains("data.path"), "{err}");
    let err = load("", &["backend=\"tpu\""]).unwrap_err().to_string();
    assert!(err.contains("backend") && err.contains("tpu"), "{err}");
    let err = load("[sparsifier]\nk = 3\n", &[]).unwrap_err().to_string();
    assert!(err.contains("sparsifier.name"), "{err}");
}

#[test]
fn a_missing_config_file_is_named() {
    let err =
        RunConfig::load(Some(std::path::Path::new("/nonexistent/run.toml")), &[]).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/run.toml"), "{err}");
}

#[test]
fn every_numeric_field_has_its_range_checked_at_load() {
    // (override, the field the error must name, the range it must state)
    let cases = [
        ("step.lr=-0.001", "step.lr", "(0, infinity)"),
        ("step.lr=0.0", "step.lr", "(0, infinity)"),
        ("step.lr=nan", "step.lr = NaN", "(0, infinity)"),
        ("step.lr=inf", "step.lr", "(0, infinity)"),
        ("step.beta1=1.0", "step.beta1", "[0, 1)"),
        ("step.beta1=-0.1", "step.beta1", "[0, 1)"),
        ("step.beta2=1.0", "step.beta2", "[0, 1)"),
        ("step.eps=0.0", "step.eps", "(0, infinity)"),
        ("step.aux_coef=-1.0", "step.aux_coef", "[0, infinity)"),
        ("step.k_aux=0", "step.k_aux", "at least 1"),
        (
            "step.stats.zipf_exponent=0.0",
            "step.stats.zipf_exponent",
            "(0, infinity)",
        ),
        (
            "step.stats.density_horizon_tokens=0.5",
            "step.stats.density_horizon_tokens",
            "[1, infinity)",
        ),
        (
            "step.stats.dead_window=0",
            "step.stats.dead_window",
            "at least 1",
        ),
        ("step.threshold_decay=1.0", "step.threshold_decay", "[0, 1)"),
        (
            "schedule.decay_fraction=1.5",
            "schedule.decay_fraction",
            "[0, 1]",
        ),
        (
            "schedule.final_fraction=-0.5",
            "schedule.final_fraction",
            "[0, 1]",
        ),
        ("train.eval_tokens=0", "train.eval_tokens", "at least 1"),
        (
            "train.keep_checkpoints=0",
            "train.keep_checkpoints",
            "at least 1",
        ),
        (
            "train.log_every_steps=0",
            "train.log_every_steps",
            "at least 1",
        ),
        (
            "data.heldout_fraction=1.0",
            "data.heldout_fraction",
            "[0, 1)",
        ),
        (
            "data.heldout_fraction=nan",
            "data.heldout_fraction",
            "[0, 1)",
        ),
        ("data.shuffle_rows=0", "data.shuffle_rows", "at least 1"),
        ("data.sample_rows=0", "data.sample_rows", "at least 1"),
        ("model.d_sae=0", "model.d_sae", "at least 1"),
        ("model.expansion=0", "model.expansion", "at least 1"),
        ("distributed.devices=0", "distributed.devices", "1..=256"),
        ("distributed.devices=257", "distributed.devices", "1..=256"),
        ("distributed.nodes=0", "distributed.nodes", "1..=256"),
        ("distributed.nodes=257", "distributed.nodes", "1..=256"),
        (
            "distributed.timeout_seconds=0.0",
            "distributed.timeout_seconds",
            "(0, 32000000]",
        ),
        (
            "distributed.join_timeout_seconds=-1.0",
            "distributed.join_timeout_seconds",
            "(0, 32000000]",
        ),
        (
            "distributed.join_timeout_seconds=4e7",
            "distributed.join_timeout_seconds",
            "(0, 32000000]",
        ),
    ];
    for (set, field, range) in cases {
        let err = load("", &[set]).unwrap_err().to_string();
        assert!(err.contains(field), "{set}: {err}");
        assert!(err.contains(range), "{set}: {err}");
    }
    // The edges that are valid.
    for set in [
        "step.beta1=0.0",
        "step.aux_coef=0.0",
        "schedule.final_fraction=1.0",
        "data.heldout_fraction=0.0",
        "step.threshold_decay=0.0",
        "distributed.devices=256",
        "distributed.nodes=256",
        "distributed.join_timeout_seconds=3.2e7",
    ] {
        load("", &[set]).unwrap_or_else(|e| panic!("{set}: {e}"));
    }
    // Peers are the devices of every machine: 16 on each of 17 machines is too many.
    let err = load("", &["distributed.devices=16", "distributed.nodes=17"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("is 272 peers: at most 256"), "{err}");
    load("", &["distributed.devices=16", "distributed.nodes=16"]).unwrap();
}

#[test]
fn setting_one_sparsifier_field_keeps_the_default_sparsifiers_other_fields() {
    let c = RunConfig::load(None, &["sparsifier.k=5".into()]).unwrap();
    assert_eq!(
        c.sparsifier,
        serde_json::json!({"name": "mutual_choice", "k": 5})
    );
    let c = RunConfig::load(None, &["sparsifier.name=\"topk\"".into()]).unwrap();
    assert_eq!(c.sparsifier, serde_json::json!({"name": "topk", "k": 8}));
    // A file's own sparsifier table is taken as written.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("run.toml");
    std::fs::write(&path, "[sparsifier]\nname = \"topk\"\nk = 3\n").unwrap();
    let c = RunConfig::load(Some(&path), &["sparsifier.k=4".into()]).unwrap();
    assert_eq!(c.sparsifier, serde_json::json!({"name": "topk", "k": 4}));
}

#[test]
fn the_shipped_configurations_load() {
    let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&configs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            RunConfig::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 1, "no configuration in {}", configs.display());
    let demo = RunConfig::load(Some(&configs.join("ground-truth.toml")), &[]).unwrap();
    assert_eq!(demo.step.lr, Some(4e-3));
    assert_eq!(demo.step.stats.dead_window, 20_000);
    assert_eq!(demo.sparsifier, RunConfig::default().sparsifier);
}
