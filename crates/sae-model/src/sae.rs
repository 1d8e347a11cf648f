//! The SAE module: parameters, initialisation, the dense encoder and the decoder constraint.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SaeError};

/// Shape and initialisation of an SAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeConfig {
    /// Width d of the activations.
    pub d_model: usize,
    /// Number F of dictionary features.
    pub features: usize,
    /// Seed of the decoder initialisation.
    #[serde(default)]
    pub seed: u64,
}

impl SaeConfig {
    /// Paper default learning rate: 2e-4 scaled by 1/sqrt(F/16384) (Gao et al. 2024).
    pub fn default_lr(&self) -> f64 {
        2e-4 / (self.features as f64 / 16384.0).sqrt()
    }
}

/// A sparse autoencoder.
///
/// Layout: `w_enc` and `w_dec` are both `[F, d]` (one row per feature), so the selected pairs
/// gather whole rows of either. Affinities are `z' = (x - b_dec) w_enc^T + b_enc` and the
/// reconstruction is `x_hat = z w_dec + b_dec`. Decoder rows have unit norm.
#[derive(Module, Debug)]
pub struct Sae<B: Backend> {
    /// Encoder weights `[F, d]`, one row per feature.
    pub w_enc: Param<Tensor<B, 2>>,
    /// Encoder bias `[F]`.
    pub b_enc: Param<Tensor<B, 1>>,
    /// Decoder weights `[F, d]`, unit-norm rows.
    pub w_dec: Param<Tensor<B, 2>>,
    /// Decoder (and pre-encoder) bias `[d]`.
    pub b_dec: Param<Tensor<B, 1>>,
}

/// The four parameter tensors of an SAE, as plain tensors (no `Param` wrapper).
///
/// The training step builds these as autodiff leaves; the forward functions take them.
#[derive(Debug, Clone)]
pub struct SaeTensors<B: Backend> {
    /// Encoder weights `[F, d]`.
    pub w_enc: Tensor<B, 2>,
    /// Encoder bias `[F]`.
    pub b_enc: Tensor<B, 1>,
    /// Decoder weights `[F, d]`.
    pub w_dec: Tensor<B, 2>,
    /// Decoder bias `[d]`.
    pub b_dec: Tensor<B, 1>,
}

/// The parameters as raw host `f32` vectors: exact (bit-identical) save and restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeParams {
    /// Width d.
    pub d_model: usize,
    /// Number of features F.
    pub features: usize,
    /// Encoder weights, row-major `[F, d]`.
    pub w_enc: Vec<f32>,
    /// Encoder bias `[F]`.
    pub b_enc: Vec<f32>,
    /// Decoder weights, row-major `[F, d]`.
    pub w_dec: Vec<f32>,
    /// Decoder bias `[d]`.
    pub b_dec: Vec<f32>,
}

impl SaeParams {
    /// Paper initialisation on the host: decoder rows are random unit vectors (seeded),
    /// `w_enc = w_dec` (the transpose in the paper's layout), `b_enc = 0`, `b_dec = 0`.
    pub fn init(config: &SaeConfig) -> Result<Self> {
        if config.d_model == 0 || config.features == 0 {
            return Err(SaeError::Config(format!(
                "d_model and features must be positive, got {} and {}",
                config.d_model, config.features
            )));
        }
        let (d, f) = (config.d_model, config.features);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut w_dec = vec![0f32; f * d];
        for row in w_dec.chunks_mut(d) {
            loop {
                for v in row.iter_mut() {
                    *v = standard_normal(&mut rng) as f32;
                }
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                if norm > 1e-6 {
                    row.iter_mut().for_each(|v| *v /= norm);
                    break;
                }
            }
        }
        Ok(Self {
            d_model: d,
            features: f,
            w_enc: w_dec.clone(),
            b_enc: vec![0.0; f],
            w_dec,
            b_dec: vec![0.0; d],
        })
    }

    /// Checks that every vector has the length its shape implies.
    pub fn validate(&self) -> Result<()> {
        let (d, f) = (self.d_model, self.features);
        for (what, len, want) in [
            ("w_enc", self.w_enc.len(), f * d),
            ("b_enc", self.b_enc.len(), f),
            ("w_dec", self.w_dec.len(), f * d),
            ("b_dec", self.b_dec.len(), d),
        ] {
            if len != want {
                return Err(SaeError::State(format!(
                    "{what} has {len} values, expected {want}"
                )));
            }
        }
        Ok(())
    }
}

/// Mean of a sample of activations (rows of `sample`, each of width `d`), the paper's `b_dec` init.
pub fn sample_mean(sample: &[f32], d: usize) -> Result<Vec<f32>> {
    if d == 0 || sample.is_empty() || !sample.len().is_multiple_of(d) {
        return Err(SaeError::Shape {
            what: "b_dec init sample",
            expected: vec![0, d],
            actual: vec![sample.len()],
        });
    }
    let n = sample.len() / d;
    let mut mean = vec![0f64; d];
    for row in sample.chunks(d) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += *v as f64);
    }
    Ok(mean.into_iter().map(|m| (m / n as f64) as f32).collect())
}

fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller: deterministic across platforms given the seed.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl<B: Backend> Sae<B> {
    /// A freshly initialised SAE (see [`SaeParams::init`]); `b_dec` from `b_dec_init` if given
    /// (e.g. [`sample_mean`] of a data sample).
    pub fn init(
        config: &SaeConfig,
        b_dec_init: Option<&[f32]>,
        device: &B::Device,
    ) -> Result<Self> {
        let mut params = SaeParams::init(config)?;
        if let Some(b) = b_dec_init {
            if b.len() != config.d_model {
                return Err(SaeError::Shape {
                    what: "b_dec init",
                    expected: vec![config.d_model],
                    actual: vec![b.len()],
                });
            }
            params.b_dec = b.to_vec();
        }
        Self::from_params(&params, device)
    }

    /// Builds the module from raw host parameters (exact).
    pub fn from_params(params: &SaeParams, device: &B::Device) -> Result<Self> {
        params.validate()?;
        Ok(Self::from_tensors(SaeTensors::from_host(
            params.clone(),
            device,
        )))
    }

    /// Wraps plain tensors as the module's parameters.
    pub fn from_tensors(t: SaeTensors<B>) -> Self {
        Self {
            w_enc: Param::from_tensor(t.w_enc),
            b_enc: Param::from_tensor(t.b_enc),
            w_dec: Param::from_tensor(t.w_dec),
            b_dec: Param::from_tensor(t.b_dec),
        }
    }

    /// The parameter values as plain tensors.
    pub fn tensors(&self) -> SaeTensors<B> {
        SaeTensors {
            w_enc: self.w_enc.val(),
            b_enc: self.b_enc.val(),
            w_dec: self.w_dec.val(),
            b_dec: self.b_dec.val(),
        }
    }

    /// Copies the parameters to raw host vectors (exact).
    pub fn to_params(&self) -> SaeParams {
        self.tensors().to_params()
    }

    /// Width d.
    pub fn d_model(&self) -> usize {
        self.b_dec.val().dims()[0]
    }

    /// Number of features F.
    pub fn features(&self) -> usize {
        self.b_enc.val().dims()[0]
    }

    /// Dense affinities `z' = (x - b_dec) w_enc^T + b_enc`, `[N, F]`.
    pub fn affinities(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.tensors().affinities(x)
    }
}

impl<B: Backend> SaeTensors<B> {
    /// Moves raw host values (shapes taken from `d_model` and `features`, not validated) onto
    /// `device`.
    pub fn from_host(params: SaeParams, device: &B::Device) -> Self {
        let (d, f) = (params.d_model, params.features);
        Self {
            w_enc: Tensor::from_data(TensorData::new(params.w_enc, [f, d]), device),
            b_enc: Tensor::from_data(TensorData::new(params.b_enc, [f]), device),
            w_dec: Tensor::from_data(TensorData::new(params.w_dec, [f, d]), device),
            b_dec: Tensor::from_data(TensorData::new(params.b_dec, [d]), device),
        }
    }

    /// Dense affinities `z' = (x - b_dec) w_enc^T + b_enc`, `[N, F]`.
    pub fn affinities(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let centred = x - self.b_dec.clone().unsqueeze_dim(0);
        centred.matmul(self.w_enc.clone().transpose()) + self.b_enc.clone().unsqueeze_dim(0)
    }

    /// Moves the parameters to raw host vectors (exact; without a copy on CPU backends when
    /// no other tensor shares their buffers).
    pub fn into_params(self) -> SaeParams {
        let [f, d] = self.w_enc.dims();
        SaeParams {
            d_model: d,
            features: f,
            w_enc: host_vec(self.w_enc),
            b_enc: host_vec(self.b_enc),
            w_dec: host_vec(self.w_dec),
            b_dec: host_vec(self.b_dec),
        }
    }

    /// Copies the parameters to raw host vectors (exact).
    pub fn to_params(&self) -> SaeParams {
        let [f, d] = self.w_enc.dims();
        SaeParams {
            d_model: d,
            features: f,
            w_enc: host_vec(self.w_enc.clone()),
            b_enc: host_vec(self.b_enc.clone()),
            w_dec: host_vec(self.w_dec.clone()),
            b_dec: host_vec(self.b_dec.clone()),
        }
    }
}

/// Removes from each decoder-gradient row its component parallel to the (unit-norm) decoder row,
/// so the step does not fight the norm constraint.
pub fn remove_parallel_gradient<B: Backend>(
    w_dec: Tensor<B, 2>,
    grad: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let parallel = (grad.clone() * w_dec.clone()).sum_dim(1);
    grad - w_dec * parallel
}

/// Rescales every row to unit Euclidean norm (rows of zero norm are left unchanged).
pub fn normalize_rows<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = w
        .clone()
        .square()
        .sum_dim(1)
        .sqrt()
        .clamp_min(f32::MIN_POSITIVE);
    w / norm
}

/// Copies a float tensor to a host `Vec<f32>`.
pub fn host_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("float tensor converts to f32")
}
