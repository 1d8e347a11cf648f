//! Opens the activation source a configuration names: training stream, held-out rows, and the
//! ground truth when there is one.

use sae_data::{
    BatchSource, Cursor, DataFingerprint, HoldOut, Normalizer, ShardSet, ShardStream, StreamConfig,
    SyntheticSource,
};

use crate::TrainError;
use crate::config::{RunConfig, SourceKind};

/// The activations of a run.
pub struct Activations {
    /// Training batches (raw; the trainer applies the normaliser).
    pub train: Box<dyn BatchSource>,
    /// Held-out rows and where they start; `None` when the configuration holds none out.
    eval: Option<(Box<dyn BatchSource>, Cursor)>,
    /// The true dictionary (`[F_true, d]`, row-major) of synthetic data.
    pub truth: Option<Vec<f32>>,
    /// Activation width.
    pub d: usize,
    /// Raw rows for estimating the normaliser and the decoder bias.
    pub sample: Vec<f32>,
    /// The files' fingerprint (`None` for synthetic data, which the configuration determines).
    pub fingerprint: Option<DataFingerprint>,
}

impl std::fmt::Debug for Activations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activations")
            .field("d", &self.d)
            .field("synthetic", &self.truth.is_some())
            .finish()
    }
}

impl Activations {
    /// Opens the source of `config.data`. A held-out fraction that holds out no rows is an
    /// error here, before any training.
    pub fn open(config: &RunConfig) -> Result<Self, TrainError> {
        let data = &config.data;
        match data.source {
            SourceKind::Synthetic => {
                let source = SyntheticSource::new(data.synthetic.clone())?;
                let d = source.config().d;
                let mut sampler = source.held_out();
                let mut sample = Vec::new();
                sampler.next_batch(data.sample_rows, &mut sample)?;
                let eval = source.held_out();
                let start = eval.cursor();
                Ok(Self {
                    truth: Some(source.dictionary().to_vec()),
                    train: Box::new(source),
                    eval: Some((Box::new(eval), start)),
                    d,
                    sample,
                    fingerprint: None,
                })
            }
            SourceKind::Files => {
                let path = data.path.as_ref().expect("validated: files need a path");
                let set = ShardSet::open(path, &data.tensor)?;
                let fingerprint = set.fingerprint()?;
                let d = set.d();
                let sample = set.sample_rows(data.sample_rows.min(set.rows() as usize))?;
                let hold_out = if data.heldout_fraction > 0.0 {
                    HoldOut::Fraction {
                        fraction: data.heldout_fraction,
                        seed: config.seed,
                    }
                } else {
                    HoldOut::None
                };
                let stream = ShardStream::new(
                    set,
                    StreamConfig {
                        seed: config.seed,
                        shuffle_rows: data.shuffle_rows,
                        hold_out,
                        ..Default::default()
                    },
                )?;
                let eval = if data.heldout_fraction > 0.0 {
                    let held_out = stream.held_out();
                    if held_out.rows() == 0 {
                        return Err(TrainError::NoHeldOutRows {
                            fraction: data.heldout_fraction,
                            source_rows: stream.shard_set().rows(),
                        });
                    }
                    let start = held_out.cursor();
                    Some((Box::new(held_out) as Box<dyn BatchSource>, start))
                } else {
                    None
                };
                Ok(Self {
                    truth: None,
                    train: Box::new(stream),
                    eval,
                    d,
                    sample,
                    fingerprint: Some(fingerprint),
                })
            }
        }
    }

    /// The held-out rows, rewound (every evaluation sees the same rows); `None` when the
    /// configuration holds no rows out.
    pub fn eval_source(&mut self) -> Result<Option<&mut dyn BatchSource>, TrainError> {
        match &mut self.eval {
            Some((source, start)) => {
                source.restore(start)?;
                Ok(Some(source.as_mut()))
            }
            None => Ok(None),
        }
    }

    /// The normaliser a configuration asks for, estimated on the sample.
    pub fn normalizer(&self, config: &RunConfig) -> Result<Normalizer, TrainError> {
        if config.data.normalize || config.data.center {
            let mut n = Normalizer::estimate(&self.sample, self.d, config.data.center)?;
            if !config.data.normalize {
                n.scale = 1.0;
            }
            Ok(n)
        } else {
            Ok(Normalizer::identity())
        }
    }
}
