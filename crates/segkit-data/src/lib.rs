//! segkit's data: dataset layouts (paired folders, PASCAL VOC, YOLO polygons, synthetic),
//! mask decoding, augmentation and batching.
//!
//! Invariants: nothing here prints; every failure is a [`DataError`] naming the file (and line);
//! decoders never panic on any input; every random choice is seeded.

pub mod check;
pub mod classes;
pub mod error;
pub mod image_io;
pub mod layout;
pub mod loader;
pub mod mask;
pub mod regions;
pub mod synth;
pub mod transform;
pub mod yolo;

pub use classes::ClassSet;
pub use error::DataError;
pub use image_io::ImageBuf;
pub use layout::{DataConfig, DataFormat, Dataset, MaskSource, SampleRef};
pub use loader::{BorderSpec, HostBatch, LoaderSpec};
pub use mask::MaskEncoding;
pub use transform::{AugmentConfig, NormParams, Normalize, Window};
