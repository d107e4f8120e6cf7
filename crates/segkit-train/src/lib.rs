//! segkit's training library: loss, metrics, optimisers, checkpoints, the training loop and
//! evaluation.
//!
//! Invariants: nothing here prints (progress goes to an [`trainer::Observer`]); every file this
//! crate writes is written to a temporary name and renamed, so a kill never leaves a half file;
//! metrics come from one confusion matrix over a whole split.

pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod device;
pub mod eval;
pub mod export;
pub mod import;
pub mod lock;
pub mod loss;
pub mod metrics;
pub mod objects;
pub mod optim;
pub mod params;
pub mod plot;
pub mod predict;
pub mod selftest;
pub mod torchfile;
pub mod trainer;

use std::path::{Path, PathBuf};

pub use config::{RunConfig, TrainConfig};
pub use metrics::{ConfusionMatrix, Scores};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] segkit_data::DataError),
    #[error(transparent)]
    Model(#[from] segkit_models::ModelError),
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("device: {0}")]
    Device(String),
    #[error(
        "the loss became {value} at step {step}; the last good checkpoint is kept in {run_dir}. Try a lower train.lr, \
         train.loss = \"mean\" instead of \"sum\", a warm-up (train.warmup_steps), or check the labels with `segkit data check`"
    )]
    NonFinite { step: usize, value: f32, run_dir: PathBuf },
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), source }
    }
    pub fn checkpoint(path: &Path, message: impl Into<String>) -> Self {
        TrainError::Checkpoint { path: path.to_path_buf(), message: message.into() }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}
