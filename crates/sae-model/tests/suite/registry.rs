//! Building sparsifiers by name from JSON specifications.

use sae_model::{Activation, InferenceRule, Registry, SaeError};

#[test]
fn builtins_by_name() {
    let r = Registry::with_builtins();
    assert_eq!(
        r.names(),
        vec!["batch_topk", "feature_choice", "mutual_choice", "topk"]
    );
    let s = r.build_str(r#"{"name": "topk", "k": 32}"#).unwrap();
    assert_eq!(
        (s.name(), s.k(), s.inference_rule()),
        ("topk", 32, InferenceRule::PerToken)
    );
    let s = r.build_str(r#"{"name": "batch_topk", "k": 8}"#).unwrap();
    assert_eq!(
        (s.name(), s.inference_rule()),
        ("mutual_choice", InferenceRule::GlobalThreshold)
    );
    let s = r
        .build_str(r#"{"name": "feature_choice", "k": 32, "capacities": "zipf", "exponent": 1.0}"#)
        .unwrap();
    assert_eq!((s.name(), s.k()), ("feature_choice", 32));
    assert_eq!(s.activation(), Activation::Relu);
    assert_eq!(s.inference_rule(), InferenceRule::PerFeatureThreshold);
    assert!(format!("{s:?}").contains("Zipf"));
}

#[test]
fn errors_are_typed() {
    let r = Registry::with_builtins();
    match r.build_str(r#"{"name": "nope", "k": 1}"#) {
        Err(SaeError::UnknownSparsifier { name, known }) => {
            assert_eq!(name, "nope");
            assert!(known.contains(&"topk".to_owned()));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        r.build_str(r#"{"name": "topk", "kk": 1}"#),
        Err(SaeError::Params(_))
    ));
    assert!(matches!(
        r.build_str(r#"{"k": 1}"#),
        Err(SaeError::Config(_))
    ));
    assert!(matches!(r.build_str("[1]"), Err(SaeError::Config(_))));
}
