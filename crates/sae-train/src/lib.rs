//! Training, evaluation, checkpoints and export of sparse autoencoders.
//!
//! A run is described by one [`RunConfig`] (TOML, every field overridable with
//! `--set key=value`) and driven by [`train`]: batches from `sae-data`, steps from
//! `sae-model`, a learning-rate schedule, JSON-lines metrics, held-out evaluation
//! ([`EvalReport`]), atomic rotating checkpoints with exact resume, and a final model in the
//! native format ([`NativeModel`]), exportable to SAELens' layout.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod checksum;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod metrics;
mod migrate;
pub mod overrides;
pub mod peers;
pub mod run_dir;
pub mod schedule;
pub mod sizes;
pub mod state;
pub mod tensor;
pub mod trainer;

pub use config::{BackendKind, DistributedConfig, RunConfig};
pub use error::TrainError;
pub use eval::{EvalReport, SelectionMetrics};
pub use export::NativeModel;
pub use trainer::{EvalData, TrainOptions, TrainSummary, resume_config, train, train_on};
