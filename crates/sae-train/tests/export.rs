//! SAELens export folds the input normalisation into the weights: the exported SAE applied to
//! raw activations computes what the native one computes on normalised activations.

use sae_data::Normalizer;
use sae_model::SaeParams;
use sae_train::NativeModel;
use sae_train::export::NativeMeta;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

fn model(d: usize, f: usize) -> NativeModel {
    let mut s = 42;
    let mut v = |n: usize| (0..n).map(|_| lcg(&mut s)).collect::<Vec<f32>>();
    NativeModel {
        meta: NativeMeta {
            format: 1,
            d_model: d,
            features: f,
            sparsifier: serde_json::json!({"name": "mutual_choice", "k": 2}),
            normalizer: Normalizer {
                scale: 2.5,
                mean: Some(v(d)),
            },
            has_thresholds: true,
            interrupted: None,
            selection: None,
        },
        params: SaeParams {
            d_model: d,
            features: f,
            w_enc: v(f * d),
            b_enc: v(f),
            w_dec: v(f * d),
            b_dec: v(d),
        },
        density: v(f).iter().map(|x| x.abs()).collect(),
        thresholds: Some(v(f)),
    }
}

fn pre(p: &SaeParams, x: &[f32]) -> Vec<f32> {
    (0..p.features)
        .map(|j| {
            let w = &p.w_enc[j * p.d_model..(j + 1) * p.d_model];
            p.b_enc[j]
                + w.iter()
                    .zip(x)
                    .zip(&p.b_dec)
                    .map(|((w, x), b)| w * (x - b))
                    .sum::<f32>()
        })
        .collect()
}

fn decode(p: &SaeParams, z: &[f32]) -> Vec<f32> {
    (0..p.d_model)
        .map(|i| {
            p.b_dec[i]
                + z.iter()
                    .enumerate()
                    .map(|(j, zj)| zj * p.w_dec[j * p.d_model + i])
                    .sum::<f32>()
        })
        .collect()
}

#[test]
fn saelens_round_trip_preserves_the_function_in_raw_units() {
    let (d, f) = (6, 10);
    let native = model(d, f);
    let tmp = tempfile::tempdir().unwrap();
    native.write_saelens(tmp.path()).unwrap();
    let lens = NativeModel::read_saelens(tmp.path()).unwrap();
    assert_eq!(lens.thresholds, native.thresholds);
    let mut seed = 7;
    let x: Vec<f32> = (0..d).map(|_| 4.0 * lcg(&mut seed)).collect();
    let mut x_n = x.clone();
    native.meta.normalizer.apply(&mut x_n);
    let (a, b) = (pre(&native.params, &x_n), pre(&lens.params, &x));
    for (a, b) in a.iter().zip(&b) {
        assert!((a - b).abs() < 1e-4, "pre-activations {a} vs {b}");
    }
    let z: Vec<f32> = a.iter().map(|v| v.max(0.0)).collect();
    let mut native_out = decode(&native.params, &z);
    native.meta.normalizer.invert(&mut native_out);
    for (a, b) in native_out.iter().zip(decode(&lens.params, &z)) {
        assert!((a - b).abs() < 1e-4, "reconstructions {a} vs {b}");
    }
    for (p, q) in native.density.iter().zip(&lens.density) {
        assert!((p - q).abs() < 1e-5 * p.max(1e-3), "density {p} vs {q}");
    }
}

#[test]
fn native_round_trip_is_exact() {
    let native = model(5, 7);
    let tmp = tempfile::tempdir().unwrap();
    native.write(tmp.path()).unwrap();
    assert_eq!(NativeModel::read(tmp.path()).unwrap(), native);
}

#[test]
fn a_topk_model_exports_k_and_no_threshold() {
    let mut native = model(4, 8);
    native.meta.sparsifier = serde_json::json!({"name": "topk", "k": 3});
    native.thresholds = None;
    native.meta.has_thresholds = false;
    let tmp = tempfile::tempdir().unwrap();
    native.write_saelens(tmp.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "topk");
    assert_eq!(cfg["k"], 3);
    assert_eq!(cfg["rescale_acts_by_decoder_norm"], false);
    let back = NativeModel::read_saelens(tmp.path()).unwrap();
    assert_eq!(
        back.meta.sparsifier,
        serde_json::json!({"name": "topk", "k": 3})
    );
    assert!(back.thresholds.is_none());
}

/// Byte-level mutations of `bytes`: flips, truncation, insertion.
fn mutate(bytes: &mut Vec<u8>, edits: &[(usize, u8, u8)]) {
    for &(at, kind, value) in edits {
        if bytes.is_empty() {
            bytes.push(value);
            continue;
        }
        let i = at % bytes.len();
        match kind % 4 {
            0 => bytes[i] ^= value | 1,
            1 => bytes.truncate(i),
            2 => bytes.insert(i, value),
            _ => bytes[i] = value,
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 200, ..Default::default() })]

    /// Damaged model directories (native and SAELens, metadata and weights) are errors, never
    /// panics: what `sae inspect`, `sae export` and `sae import` read.
    #[test]
    fn damaged_models_are_errors_not_panics(
        which in 0usize..5,
        edits in proptest::collection::vec((0usize..1 << 20, 0u8..4, proptest::num::u8::ANY), 1..6),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let native = tmp.path().join("native");
        let lens = tmp.path().join("lens");
        let m = model(6, 10);
        m.write(&native).unwrap();
        m.write_saelens(&lens).unwrap();
        let file = [
            native.join("sae.json"),
            native.join("sae.safetensors"),
            lens.join("cfg.json"),
            lens.join("sae_weights.safetensors"),
            lens.join("sparsity.safetensors"),
        ][which].clone();
        let mut bytes = std::fs::read(&file).unwrap();
        mutate(&mut bytes, &edits);
        std::fs::write(&file, &bytes).unwrap();
        // Either outcome is fine; a panic fails the test.
        if which < 2 {
            let _ = NativeModel::read(&native);
        } else if let Ok(back) = NativeModel::read_saelens(&lens) {
            let _ = back.write(&tmp.path().join("imported"));
        }
    }

    /// Arbitrary bytes as a model's files.
    #[test]
    fn arbitrary_bytes_are_errors_not_panics(
        meta in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        weights in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        for (json, tensors) in [("sae.json", "sae.safetensors"), ("cfg.json", "sae_weights.safetensors")] {
            std::fs::write(tmp.path().join(json), &meta).unwrap();
            std::fs::write(tmp.path().join(tensors), &weights).unwrap();
        }
        let _ = NativeModel::read(tmp.path());
        let _ = NativeModel::read_saelens(tmp.path());
    }
}

#[test]
fn the_saelens_config_is_read_as_current_and_keeps_the_metadata() {
    // SAELens converts a config whose `metadata.sae_lens_version` is missing or below 6.0
    // through its pre-6.0 path, which keeps only its own metadata keys.
    let native = model(4, 8);
    let tmp = tempfile::tempdir().unwrap();
    native.write_saelens(tmp.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("cfg.json")).unwrap()).unwrap();
    let version = cfg["metadata"]["sae_lens_version"].as_str().unwrap();
    let major: u32 = version.split('.').next().unwrap().parse().unwrap();
    assert!(major >= 6, "{version}");
    assert_eq!(cfg["metadata"]["sparsifier"], native.meta.sparsifier);
    assert!(cfg["metadata"]["normalization_scale_folded"].is_number());
    // Top-level keys are SAELens config fields (it drops any other silently).
    for key in cfg.as_object().unwrap().keys() {
        assert!(
            [
                "architecture",
                "d_in",
                "d_sae",
                "dtype",
                "device",
                "apply_b_dec_to_input",
                "normalize_activations",
                "reshape_activations",
                "metadata",
                "k",
                "rescale_acts_by_decoder_norm",
            ]
            .contains(&key.as_str()),
            "{key}"
        );
    }
}

#[test]
fn the_export_goes_by_the_recorded_rule_not_the_name() {
    use sae_model::{Activation, InferenceRule};
    use sae_train::export::SelectionSpec;
    // A per-token ReLU rule under another name exports as topk with its k.
    let mut native = model(4, 8);
    native.meta.sparsifier = serde_json::json!({"name": "my_topk", "k": 3});
    native.meta.selection = Some(SelectionSpec {
        inference: InferenceRule::PerToken,
        activation: Activation::Relu,
        k: 3,
    });
    let tmp = tempfile::tempdir().unwrap();
    native.write_saelens(tmp.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("cfg.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg["architecture"].as_str(), cfg["k"].as_u64()),
        (Some("topk"), Some(3))
    );
    // Signed codes have no SAELens architecture: refused, saying why and what to do.
    native.meta.sparsifier = serde_json::json!({"name": "abs_topk", "k": 3});
    native.meta.selection = Some(SelectionSpec {
        inference: InferenceRule::PerToken,
        activation: Activation::Identity,
        k: 3,
    });
    let err = native
        .write_saelens(&tmp.path().join("abs"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("abs_topk") && err.contains("signed"), "{err}");
    assert!(err.contains("--format native"), "{err}");
    // The recorded rule survives the native round trip.
    let dir = tmp.path().join("native");
    native.write(&dir).unwrap();
    assert_eq!(
        NativeModel::read(&dir).unwrap().meta.selection,
        native.meta.selection
    );
}
