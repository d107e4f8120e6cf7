//! Data errors. Every variant names the file (and line, for text formats) it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot decode image: {msg}")]
    Image { path: PathBuf, msg: String },
    #[error("{path}: cannot decode mask: {msg}")]
    Mask { path: PathBuf, msg: String },
    #[error("{path}:{line}: {msg}")]
    Label { path: PathBuf, line: usize, msg: String },
    #[error("{path}: image is {image_w}x{image_h} but its mask is {mask_w}x{mask_h}")]
    SizeMismatch { path: PathBuf, image_w: u32, image_h: u32, mask_w: u32, mask_h: u32 },
    #[error("{path}: {msg}")]
    Layout { path: PathBuf, msg: String },
    #[error("{0}")]
    Config(String),
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
    pub fn layout(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Layout { path: path.into(), msg: msg.into() }
    }
    pub fn mask(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Mask { path: path.into(), msg: msg.into() }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
