//! Opens the activation source a configuration names: training stream, held-out rows, and the
//! ground truth when there is one.

use sae_data::{
    BatchSource, Cursor, DataFingerprint, HoldOut, Normalized, Normalizer, ShardSet, ShardStream,
    StreamConfig, SyntheticSource,
};

use std::path::Path;

use crate::TrainError;
use crate::config::{RunConfig, SourceKind};

/// The activations of a run.
pub struct Activations {
    /// Training batches (raw until [`Activations::normalized`]).
    pub train: Box<dyn BatchSource>,
    /// Held-out rows; `None` when the configuration holds none out.
    eval: Option<EvalRows>,
    /// The true dictionary of synthetic data.
    pub truth: Option<GroundTruth>,
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
                let eval = EvalRows::new(Box::new(source.held_out()), None);
                Ok(Self {
                    truth: Some(GroundTruth {
                        dictionary: source.dictionary().to_vec(),
                        probabilities: source.feature_probabilities().to_vec(),
                    }),
                    train: Box::new(source),
                    eval: Some(eval),
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
                    let rows = held_out.rows();
                    Some(EvalRows::new(Box::new(held_out), Some(rows)))
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
    pub fn eval_rows(&mut self) -> Result<Option<&mut EvalRows>, TrainError> {
        match &mut self.eval {
            Some(rows) => {
                rows.rewind()?;
                Ok(Some(rows))
            }
            None => Ok(None),
        }
    }

    /// The same activations with every training batch and evaluation row normalised by
    /// `normalizer` (the sample stays raw).
    pub fn normalized(self, normalizer: &Normalizer) -> Result<Self, TrainError> {
        Ok(Self {
            train: Box::new(Normalized::new(self.train, normalizer.clone())?),
            eval: self
                .eval
                .map(|rows| rows.normalized(normalizer))
                .transpose()?,
            ..self
        })
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

/// Rows to evaluate on: a source read from its start, and how many distinct rows it holds.
pub struct EvalRows {
    source: Box<dyn BatchSource>,
    start: Cursor,
    rows: Option<u64>,
}

impl std::fmt::Debug for EvalRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvalRows")
            .field("start", &self.start)
            .field("rows", &self.rows)
            .finish()
    }
}

impl EvalRows {
    /// `rows`: the distinct rows of `source` (`None`: unbounded, as synthetic data is).
    pub fn new(source: Box<dyn BatchSource>, rows: Option<u64>) -> Self {
        let start = source.cursor();
        Self {
            source,
            start,
            rows,
        }
    }

    /// Every row of the activation files at `path` (a file, a directory or a glob, as
    /// `data.path` takes), each once, in a fixed order. Errors name the path when it holds no
    /// rows or rows of another width than `d`.
    pub fn open_files(path: &Path, tensor: &str, d: usize) -> Result<Self, TrainError> {
        let set = ShardSet::open(path, tensor)?;
        let bad = |reason: String| TrainError::EvalData {
            path: path.to_path_buf(),
            reason,
        };
        if set.d() != d {
            return Err(bad(format!(
                "tensor `{tensor}` has rows of width {}, the model reads width {d}",
                set.d()
            )));
        }
        let rows = set.rows();
        if rows == 0 {
            return Err(bad(format!("tensor `{tensor}` has no rows")));
        }
        let stream = ShardStream::new(
            set,
            StreamConfig {
                shuffle_rows: 1,
                hold_out: HoldOut::None,
                ..Default::default()
            },
        )?;
        Ok(Self::new(Box::new(stream), Some(rows)))
    }

    /// The same rows normalised by `normalizer`.
    pub fn normalized(self, normalizer: &Normalizer) -> Result<Self, TrainError> {
        Ok(Self {
            source: Box::new(Normalized::new(self.source, normalizer.clone())?),
            ..self
        })
    }

    /// The distinct rows (`None`: unbounded).
    pub fn rows(&self) -> Option<u64> {
        self.rows
    }

    /// The source, to read from its current position.
    pub fn source(&mut self) -> &mut dyn BatchSource {
        self.source.as_mut()
    }

    /// Back to the first row.
    pub fn rewind(&mut self) -> Result<(), TrainError> {
        Ok(self.source.restore(&self.start)?)
    }
}

/// The known dictionary of synthetic data.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruth {
    /// `[F_true, d]`, row-major.
    pub dictionary: Vec<f32>,
    /// Firing probability of each true feature.
    pub probabilities: Vec<f64>,
}
