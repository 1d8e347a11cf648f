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
        err.contains("train.batch_size: must be at least 1"),
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
