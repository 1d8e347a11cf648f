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
    let back = NativeModel::read_saelens(tmp.path()).unwrap();
    assert_eq!(
        back.meta.sparsifier,
        serde_json::json!({"name": "topk", "k": 3})
    );
    assert!(back.thresholds.is_none());
}
