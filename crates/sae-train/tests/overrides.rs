//! `--set` overrides on a TOML document.

use sae_train::overrides::apply_overrides;

#[test]
fn sets_nested_values_with_types() {
    let mut doc: toml::Table = "[sparsifier]\nname = \"topk\"\nk = 32\n".parse().unwrap();
    apply_overrides(
        &mut doc,
        &[
            "sparsifier.k=64".into(),
            "data.path=/tmp/x y".into(),
            "step.lr=1e-3".into(),
        ],
    )
    .unwrap();
    assert_eq!(doc["sparsifier"]["k"].as_integer(), Some(64));
    assert_eq!(doc["data"]["path"].as_str(), Some("/tmp/x y"));
    assert_eq!(doc["step"]["lr"].as_float(), Some(1e-3));
}

#[test]
fn rejects_malformed_assignments() {
    let mut doc: toml::Table = "seed = 1\n".parse().unwrap();
    let err = apply_overrides(&mut doc, &["seed".into()]).unwrap_err();
    assert!(err.to_string().contains("KEY=VALUE"), "{err}");
    let err = apply_overrides(&mut doc, &["seed.x=1".into()]).unwrap_err();
    assert!(err.to_string().contains("`seed` is a value"), "{err}");
    let err = apply_overrides(&mut doc, &["a..b=1".into()]).unwrap_err();
    assert!(err.to_string().contains("not a dotted key path"), "{err}");
}
