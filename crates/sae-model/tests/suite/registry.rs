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
        .build_str(r#"{"name": "feature_choice", "k": 32, "capacities": "zipf"}"#)
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
        Err(SaeError::UnknownSparsifier {
            name,
            known,
            suggestion,
        }) => {
            assert_eq!(name, "nope");
            assert!(known.contains(&"topk".to_owned()));
            assert_eq!(suggestion, None, "nothing registered is close to `nope`");
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

#[test]
fn an_unknown_name_suggests_the_closest_registered_one() {
    let r = Registry::with_builtins();
    for (typo, meant) in [
        ("mutualchoice", "mutual_choice"),
        ("Feature-Choice", "feature_choice"),
        ("topK", "topk"),
        ("batch_topp", "batch_topk"),
        ("featur_choise", "feature_choice"),
    ] {
        let spec = format!(r#"{{"name": "{typo}", "k": 1}}"#);
        let err = r.build_str(&spec).unwrap_err();
        assert!(
            matches!(&err, SaeError::UnknownSparsifier { suggestion: Some(s), .. } if s == meant),
            "{typo}: {err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("did you mean \"{meant}\"")),
            "{err}"
        );
    }
}

#[test]
fn k_zero_is_refused_for_every_sparsifier() {
    let r = Registry::with_builtins();
    for name in r.names() {
        let err = r
            .build_str(&format!(r#"{{"name": "{name}", "k": 0}}"#))
            .unwrap_err();
        assert!(
            matches!(&err, SaeError::Config(m) if m.contains("sparsifier.k = 0")),
            "{name}: {err}"
        );
    }
    // The Zipf exponent is the statistics' (`StatsConfig::zipf_exponent`), not a parameter
    // of the sparsifier: a specification giving one is refused rather than ignored.
    let err = r
        .build_str(r#"{"name": "feature_choice", "k": 4, "capacities": "zipf", "exponent": 2.0}"#)
        .unwrap_err();
    assert!(err.to_string().contains("exponent"), "{err}");
}

#[test]
fn feature_choice_reads_its_zipf_warmup_under_the_new_and_the_old_name() {
    let r = Registry::with_builtins();
    for key in ["zipf_warmup_tokens", "warmup_tokens"] {
        let spec =
            format!(r#"{{"name": "feature_choice", "k": 4, "capacities": "zipf", "{key}": 5}}"#);
        let s = r.build_str(&spec).unwrap();
        assert!(
            format!("{s:?}").contains("zipf_warmup_tokens: 5"),
            "{key}: {s:?}"
        );
    }
}
