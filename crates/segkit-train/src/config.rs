//! Run configs: flat, complete TOML files (`configs/*.toml`).
//!
//! Every section denies unknown keys, so a typo is an error naming the key. `--set key=value`
//! overrides any key before the file is read into types, so overrides are checked the same way.
//! The resolved config (overrides applied, paths absolute) is written into every run directory.

use std::path::{Path, PathBuf};

use segkit_data::{AugmentConfig, DataConfig, DataFormat};
use segkit_models::{ModelConfig, ModelKind};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::loss::Reduction;
use crate::optim::{OptimSettings, OptimizerKind, Schedule};

/// The quick start: a small padded U-Net on the built-in synthetic shapes.
pub const QUICKSTART: &str = include_str!("../../../configs/quickstart.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run directory name under `train.out_dir`.
    pub name: String,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub augment: AugmentConfig,
    pub train: TrainConfig,
}

/// The `[train]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// auto | cpu | wgpu | vulkan
    pub device: String,
    pub epochs: usize,
    /// Stop after this many optimiser steps (0: run all epochs).
    pub max_steps: usize,
    pub batch_size: usize,
    /// Gradient accumulation: batches per optimiser step (the FCN reference's `iter_size`).
    pub accum_steps: usize,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub bias_lr_mult: f64,
    pub bias_decay: bool,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub poly_power: f64,
    pub step_size: usize,
    pub step_gamma: f64,
    pub loss: Reduction,
    /// Class weights of the loss; empty: none, unless `median_frequency`.
    pub class_weights: Vec<f64>,
    /// Compute median-frequency class weights from the training split.
    pub median_frequency: bool,
    /// Validate every this many epochs (0: not by epochs).
    pub val_every: usize,
    /// Also validate every this many optimiser steps (0: not by steps).
    pub val_every_steps: usize,
    /// Also write the last checkpoint every this many optimiser steps (0: at validations only).
    pub checkpoint_every: usize,
    /// Steps with a non-finite loss or gradient to skip (no update) before the run stops (0:
    /// stop at the first).
    pub skip_nonfinite: usize,
    /// Early stopping: end the run after this many validations without a better mean IoU (0: off).
    pub patience: usize,
    /// Loader threads.
    pub workers: usize,
    pub prefetch: usize,
    pub seed: u64,
    /// FCN: trunk weights to start from (`segkit import vgg16` output, or torchvision's VGG16
    /// `.pth`/`.safetensors` directly); augment.normalize must match what they were trained with.
    pub backbone_weights: String,
    /// A run directory or checkpoint to initialise from, matching layers by name (staged FCN).
    pub init_from: String,
    /// Validate on the first this many images of the split (0: the whole split, the default;
    /// a limit is for quick CPU experiments and is recorded in the run's config).
    pub val_limit: usize,
    /// Validation images in the `val_samples.png` grid.
    pub grid_images: usize,
    /// Where run directories go.
    pub out_dir: String,
}

impl RunConfig {
    /// A run directory's stored `config.toml` (see [`RunConfig::parse_stored`]).
    pub fn load_stored(path: &Path, overrides: &[String]) -> Result<RunConfig, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::parse_stored(&text, &path.display().to_string(), overrides)
    }

    /// Reads `path` with `overrides` (`key=value`, dotted keys) applied; relative dataset paths
    /// are resolved against the file's folder.
    pub fn load(path: &Path, overrides: &[String]) -> Result<RunConfig, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &path.display().to_string(), overrides, &base)
    }

    /// The default recipe for training `kind` on a user's own dataset (`segkit train --data DIR
    /// --model KIND`): the quick start's neutral values, the model and recipe below, then
    /// `overrides`. Classes, class names and the layout come from the data (`model.classes = 0`,
    /// `data.format = "auto"`); see [`recipe_overrides`] for each value and why.
    pub fn recipe(kind: ModelKind, overrides: &[String]) -> Result<RunConfig, TrainError> {
        let mut all: Vec<String> = recipe_overrides(kind).iter().map(|(k, v, _)| format!("{k}={v}")).collect();
        all.extend(overrides.iter().cloned());
        Self::parse(QUICKSTART, &format!("the built-in {} recipe", kind.name()), &all, Path::new("."))
    }

    /// The built-in quick start, with `overrides`.
    pub fn quickstart(overrides: &[String]) -> Result<RunConfig, TrainError> {
        Self::parse(QUICKSTART, "configs/quickstart.toml (built in)", overrides, Path::new("."))
    }

    pub fn parse(text: &str, origin: &str, overrides: &[String], base: &Path) -> Result<RunConfig, TrainError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| TrainError::Config(format!("{origin}: {e}")))?;
        Self::from_table(table, origin, overrides, base)
    }

    /// A config a run stored (its `config.toml`, a checkpoint's or an export's metadata). Keys
    /// added to segkit after the run was made are filled with their neutral values (those of the
    /// quick start, which turn new features off), so older runs stay readable and resumable.
    /// Unknown keys are still errors.
    pub fn parse_stored(text: &str, origin: &str, overrides: &[String]) -> Result<RunConfig, TrainError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| TrainError::Config(format!("{origin}: {e}")))?;
        let defaults: toml::Table = toml::from_str(QUICKSTART).expect("the built-in quick start parses");
        for (section, value) in defaults {
            match (table.get_mut(&section), value) {
                (Some(toml::Value::Table(have)), toml::Value::Table(neutral)) => {
                    for (k, v) in neutral {
                        have.entry(k).or_insert(v);
                    }
                }
                (None, v) => {
                    table.insert(section, v);
                }
                _ => {}
            }
        }
        Self::from_table(table, origin, overrides, Path::new("."))
    }

    fn from_table(
        mut table: toml::Table,
        origin: &str,
        overrides: &[String],
        base: &Path,
    ) -> Result<RunConfig, TrainError> {
        let bad = |m: String| TrainError::Config(format!("{origin}: {m}"));
        for o in overrides {
            apply_override(&mut table, o).map_err(|m| TrainError::Config(format!("--set {o}: {m}")))?;
        }
        let mut cfg: RunConfig =
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| bad(e.to_string()))?;
        if cfg.data.format != DataFormat::Synthetic && !cfg.data.root.is_empty() {
            let root = PathBuf::from(&cfg.data.root);
            // A root given on the command line is relative to where the user runs segkit.
            let from_cli = overrides.iter().any(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == "data.root"));
            if root.is_relative() {
                let joined = if from_cli { root.clone() } else { base.join(&root) };
                cfg.data.root = std::fs::canonicalize(&joined).unwrap_or(joined).display().to_string();
            }
        }
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        // `model.classes = 0` means "from the data": checked again once the data is open.
        let mut model = self.model.clone();
        if model.classes == 0 {
            model.classes = 1;
        }
        model.validate().map_err(|e| e.to_string())?;
        let t = &self.train;
        let plain = Path::new(&self.name).file_name().is_some_and(|f| f == self.name.as_str());
        if !plain || self.name == "." || self.name.contains('\\') {
            return Err(format!(
                "name = {:?}: the run's folder name under train.out_dir, a single name without / or ..",
                self.name
            ));
        }
        if t.batch_size == 0 || t.accum_steps == 0 {
            return Err("train.batch_size and train.accum_steps must be at least 1".into());
        }
        if t.epochs == 0 && t.max_steps == 0 {
            return Err("set train.epochs or train.max_steps".into());
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err("train.lr must be positive".into());
        }
        if !crate::device::NAMES.contains(&t.device.as_str()) {
            return Err(format!("train.device = {:?}: expected one of {}", t.device, crate::device::NAMES.join(", ")));
        }
        if self.augment.scale_min <= 0.0 || self.augment.scale_max < self.augment.scale_min {
            return Err("augment.scale_min must be positive and at most augment.scale_max".into());
        }
        if self.model.model == ModelKind::Unet && self.augment.crop == 0 {
            return Err("U-Net trains on crops: set augment.crop (the output tile size)".into());
        }
        if self.data.format != DataFormat::Synthetic && self.data.root.is_empty() {
            return Err("data.root is empty: set it to the dataset folder".into());
        }
        if !t.class_weights.is_empty() && t.class_weights.len() != self.model.classes {
            return Err(format!(
                "train.class_weights has {} entries but the model has {} classes",
                t.class_weights.len(),
                self.model.classes
            ));
        }
        Ok(())
    }

    pub fn optim_settings(&self) -> OptimSettings {
        let t = &self.train;
        OptimSettings {
            kind: t.optimizer,
            momentum: t.momentum,
            weight_decay: t.weight_decay,
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            bias_lr_mult: t.bias_lr_mult,
            bias_decay: t.bias_decay,
        }
    }

    /// The learning-rate schedule of a run of `total_steps` optimiser steps.
    pub fn lr_schedule(&self, total_steps: usize) -> crate::optim::LrSchedule {
        let t = &self.train;
        crate::optim::LrSchedule {
            base: t.lr,
            schedule: t.schedule,
            total_steps,
            warmup_steps: t.warmup_steps,
            power: t.poly_power,
            step_size: t.step_size,
            gamma: t.step_gamma,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunConfig serialises")
    }
}

/// The per-model recipe of [`RunConfig::recipe`], as `(key, value, why)`: tuned to give a usable
/// model on a small custom set (tens to hundreds of images) without a GPU, not to reproduce a
/// paper (the shipped configs do that).
pub fn recipe_overrides(kind: ModelKind) -> Vec<(&'static str, String, &'static str)> {
    let q = |v: &str| format!("{v:?}");
    let mut r: Vec<(&'static str, String, &'static str)> = vec![
        ("name", q(kind.name()), "the run folder: the model's name (numbered when taken)"),
        ("model.model", q(kind.name()), "--model"),
        ("model.classes", "0".into(), "from the data"),
        ("model.in_channels", "3".into(), "images are read as RGB (grey ones replicated)"),
        ("data.format", q("auto"), "the layout is detected, as `segkit data check` does"),
        ("data.class_names", "[]".into(), "from the data (data.yaml, class_names.txt, the masks)"),
        ("data.num_classes", "0".into(), "from the data"),
        ("data.mask_encoding", q("auto"), "detected per mask"),
        ("data.val_fraction", "0.2".into(), "a folder without a val split keeps its last 20% for validation"),
        ("augment.hflip", "true".into(), "flips and 90-degree turns: free data for most custom sets"),
        ("augment.vflip", "true".into(), ""),
        ("augment.rot90", "true".into(), ""),
        ("augment.scale_min", "0.75".into(), "scale jitter"),
        ("augment.scale_max", "1.25".into(), ""),
        ("augment.brightness", "0.1".into(), "photometric jitter"),
        ("augment.contrast", "0.1".into(), ""),
        ("augment.normalize", q("imagenet"), "the usual statistics for photographs"),
        ("train.epochs", "50".into(), "--epochs"),
        ("train.batch_size", "4".into(), "--batch"),
        ("train.optimizer", q("adam"), "Adam needs no per-dataset learning-rate search"),
        ("train.schedule", q("cosine"), ""),
        ("train.warmup_steps", "50".into(), ""),
        ("train.weight_decay", "0.0001".into(), ""),
        ("train.loss", q("mean"), ""),
        ("train.median_frequency", "true".into(), "custom sets are usually unbalanced (small objects)"),
        ("train.val_every", "1".into(), "validation every epoch"),
        ("train.patience", "10".into(), "early stop after 10 validations without a better mean IoU"),
        ("train.init_from", q(""), ""),
        ("train.backbone_weights", q(""), ""),
    ];
    if kind == ModelKind::Unet {
        r.extend([
            ("model.padded", "true".into(), "\"same\" convolutions: any multiple of 16 in, the same size out"),
            ("model.batch_norm", "true".into(), "trains in far fewer steps than the paper's plain U-Net"),
            ("model.depth", "4".into(), "the paper's depth"),
            ("model.base_width", "16".into(), "a quarter of the paper's width: CPU-sized"),
            ("augment.crop", "256".into(), "--size"),
            ("train.lr", "0.001".into(), ""),
        ]);
    } else {
        r.extend([
            ("model.base_width", "32".into(), "half of VGG16's width: CPU-sized"),
            ("model.fc_width", "1024".into(), "a quarter of fc6/fc7's 4096"),
            ("model.dropout", "0.5".into(), "the paper's"),
            ("model.learnable_upsampling", "true".into(), "the at-once recipe (PAMI 2016)"),
            ("augment.crop", "320".into(), "--size"),
            ("train.lr", "0.0003".into(), ""),
        ]);
    }
    r
}

/// Sets dotted `key` in `table` to `value`, read as a TOML value (a bare word is a string).
fn apply_override(table: &mut toml::Table, kv: &str) -> Result<(), String> {
    let (key, value) = kv.split_once('=').ok_or("expected key=value")?;
    let (key, value) = (key.trim(), value.trim());
    let raw = value;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").expect("parsed"),
        Err(_) => toml::Value::String(value.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let (last, sections) = parts.split_last().ok_or("empty key")?;
    let mut t = table;
    for s in sections {
        t = t
            .entry(s.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| format!("`{s}` is not a section"))?;
    }
    // A bare word for a key that holds a string is that string (`name=nan` is not a float).
    let value = match (t.get(*last), value) {
        (Some(toml::Value::String(_)), v) if !v.is_str() => toml::Value::String(raw.to_string()),
        (_, v) => v,
    };
    t.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quickstart_parses_and_overrides_apply() {
        let cfg = RunConfig::quickstart(&[]).unwrap();
        assert_eq!(cfg.data.format, DataFormat::Synthetic);
        let cfg =
            RunConfig::quickstart(&["train.lr=0.5".into(), "name=other".into(), "train.device=cpu".into()]).unwrap();
        assert_eq!(cfg.train.lr, 0.5);
        assert_eq!(cfg.name, "other");
        // Round trip through the resolved file.
        let again = RunConfig::parse(&cfg.to_toml(), "resolved", &[], Path::new(".")).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn stored_configs_from_older_versions_still_load() {
        let cfg = RunConfig::quickstart(&["name=old".into()]).unwrap();
        let old = cfg.to_toml().replace("backbone_weights = \"\"\n", "").replace("val_limit = 0\n", "");
        assert!(RunConfig::parse(&old, "old", &[], Path::new(".")).is_err(), "a hand-written config must be complete");
        assert_eq!(RunConfig::parse_stored(&old, "old", &[]).unwrap(), cfg);
        let typo = cfg.to_toml().replace("val_limit", "val_limt");
        assert!(RunConfig::parse_stored(&typo, "typo", &[]).unwrap_err().to_string().contains("val_limt"));
    }

    /// Every model's default recipe is a valid, complete config whose classes come from the
    /// data; overrides still apply on top.
    #[test]
    fn every_model_has_a_recipe() {
        for kind in [ModelKind::Unet, ModelKind::Fcn8s, ModelKind::Fcn16s, ModelKind::Fcn32s, ModelKind::Fcn8sAtonce] {
            let cfg = RunConfig::recipe(kind, &["train.epochs=3".into(), "data.root=\"/data\"".into()]).unwrap();
            assert_eq!((cfg.model.model, cfg.model.classes, cfg.train.epochs), (kind, 0, 3));
            assert_eq!(cfg.data.format, DataFormat::Auto);
            assert!(crate::eval::train_window(&cfg).is_ok(), "{kind:?}: the crop fits the model's size rule");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = RunConfig::quickstart(&["train.learning_rate=0.1".into()]).unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
        let err = RunConfig::quickstart(&["train.device=tpu".into()]).unwrap_err().to_string();
        assert!(err.contains("tpu"), "{err}");
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                RunConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 5, "expected the five shipped configs, found {n}");
    }
}
