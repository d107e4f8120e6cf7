//! Run configs: flat TOML files (`configs/*.toml`). A hand-written one lists what differs from
//! its model's defaults ([`recipe_overrides`] over the quick start); the resolved config, stored
//! in every run, is complete.
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
    /// f32, or f16-mixed on a GPU: f16 activations and weights in the forward and backward
    /// passes (tensor cores), f32 master weights, optimiser state, loss and batch-norm statistics,
    /// dynamic loss scaling (docs/GPU.md). The CPU trains in f32 either way.
    pub precision: crate::amp::Precision,
    /// Passes over the training split.
    pub epochs: usize,
    /// Stop after this many optimiser steps (0: run all epochs).
    pub max_steps: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// Gradient accumulation: batches per optimiser step (the FCN reference's `iter_size`).
    pub accum_steps: usize,
    /// sgd, adam or adamw.
    pub optimizer: OptimizerKind,
    /// Base learning rate (the schedule scales it).
    pub lr: f64,
    /// SGD momentum (PyTorch convention: v = mu v + g).
    pub momentum: f64,
    /// L2 weight decay (adamw: decoupled).
    pub weight_decay: f64,
    /// Adam: first-moment decay.
    pub beta1: f64,
    /// Adam: second-moment decay.
    pub beta2: f64,
    /// Adam: denominator epsilon.
    pub eps: f64,
    /// Learning-rate multiplier for biases (the FCN reference: 2).
    pub bias_lr_mult: f64,
    /// Whether biases get weight decay (the FCN reference: no).
    pub bias_decay: bool,
    /// constant, poly, step or cosine.
    pub schedule: Schedule,
    /// Linear warm-up from 0 over this many steps.
    pub warmup_steps: usize,
    /// poly: lr (1 - t/T)^power.
    pub poly_power: f64,
    /// step: multiply by step_gamma every this many steps.
    pub step_size: usize,
    /// step: the factor.
    pub step_gamma: f64,
    /// mean (over valid pixels) or sum (the FCN reference: per image).
    pub loss: Reduction,
    /// Class weights of the loss; empty: none, unless `median_frequency`.
    pub class_weights: Vec<f64>,
    /// Compute median-frequency class weights from the training split.
    pub median_frequency: bool,
    /// The U-Net paper's loss weight map (its equation 2), for two-class cell/membrane masks: pixels
    /// between cells get `border_w0 * exp(-(d1 + d2)^2 / (2 border_sigma^2))` added to their class
    /// weight (d1, d2: distances to the nearest and second-nearest cell), so that the net learns to
    /// separate touching cells. Computed on every augmented label tile.
    pub border_weights: bool,
    /// Border weights: w0, the largest added weight (the paper: 10).
    pub border_w0: f64,
    /// Border weights: sigma in pixels (the paper: about 5).
    pub border_sigma: f64,
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
    /// Batches prepared ahead of the device.
    pub prefetch: usize,
    /// Seed of everything random in training (shuffling, augmentation, dropout, init).
    pub seed: u64,
    /// FCN: trunk weights to start from (`segkit import vgg16` output, or torchvision's VGG16
    /// `.pth`/`.safetensors` directly); augment.normalize must match what they were trained with.
    pub backbone_weights: String,
    /// A run directory or checkpoint to initialise from, matching layers by name (staged FCN).
    pub init_from: String,
    /// Validate on the first this many images of the split (0: the whole split, the default;
    /// a limit is for quick CPU experiments and is recorded in the run's config).
    pub val_limit: usize,
    /// Precise batch-norm statistics: before each validation, every batch norm's running
    /// statistics become the mean of its statistics over this many whole training images (spread
    /// over the split) with the current weights, so that validation and the saved checkpoints
    /// normalise as whole images need; 0: training's running averages (momentum 0.1) as they are.
    /// Costs one forward pass per image per validation; models without batch norm ignore it.
    pub bn_recalibrate: usize,
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

    /// A hand-written config: it lists what differs from the defaults of its model (the model's
    /// recipe, [`recipe_overrides`], over the quick start's neutral values); missing keys come
    /// from there (`data.format = "auto"`, `model.classes = 0`: from the data). Unknown keys
    /// are errors, with the nearest valid key suggested.
    pub fn parse(text: &str, origin: &str, overrides: &[String], base: &Path) -> Result<RunConfig, TrainError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| TrainError::Config(format!("{origin}: {e}")))?;
        let named = |v: Option<&toml::Value>| v.and_then(|v| v.as_str()).and_then(ModelKind::parse);
        let from_override = overrides.iter().rev().find_map(|o| {
            let (k, v) = o.split_once('=')?;
            (k.trim() == "model.model").then(|| ModelKind::parse(v.trim().trim_matches('"'))).flatten()
        });
        let kind =
            from_override.or_else(|| named(table.get("model").and_then(|m| m.get("model")))).unwrap_or(ModelKind::Unet);
        merge_missing(&mut table, defaults_table(kind));
        Self::from_table(table, origin, overrides, base)
    }

    /// A config a run stored (its `config.toml`, a checkpoint's or an export's metadata). Keys
    /// added to segkit after the run was made are filled with their neutral values (those of the
    /// quick start, which turn new features off), so older runs stay readable and resumable.
    /// Unknown keys are still errors.
    pub fn parse_stored(text: &str, origin: &str, overrides: &[String]) -> Result<RunConfig, TrainError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| TrainError::Config(format!("{origin}: {e}")))?;
        merge_missing(&mut table, toml::from_str(QUICKSTART).expect("the built-in quick start parses"));
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
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| bad(with_suggestion(&e.to_string())))?;
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
        // `model.classes = 0` and `model.in_channels = 0` mean "from the data": checked again once
        // the data is open.
        let mut model = self.model.clone();
        if model.classes == 0 {
            model.classes = 1;
        }
        if model.in_channels == 0 {
            model.in_channels = 1;
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
        if !(t.border_w0 >= 0.0 && t.border_w0.is_finite() && t.border_sigma > 0.0 && t.border_sigma.is_finite()) {
            return Err(format!(
                "train.border_w0 = {} and train.border_sigma = {}: w0 must be 0 or more and sigma positive",
                t.border_w0, t.border_sigma
            ));
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

/// The doc comment of every config key, by `section.key` (`name` for the top level), read off
/// the config structs' sources: the comments in `segkit config show` are the code's own.
pub fn key_docs() -> std::collections::BTreeMap<String, String> {
    const SOURCES: [(&str, &str, &str); 5] = [
        ("", "RunConfig", include_str!("config.rs")),
        ("train", "TrainConfig", include_str!("config.rs")),
        ("model", "ModelConfig", include_str!("../../segkit-models/src/lib.rs")),
        ("data", "DataConfig", include_str!("../../segkit-data/src/layout.rs")),
        ("augment", "AugmentConfig", include_str!("../../segkit-data/src/transform.rs")),
    ];
    let mut out = std::collections::BTreeMap::new();
    for (section, name, src) in SOURCES {
        let Some(start) = src.find(&format!("pub struct {name} {{")) else { continue };
        let body = &src[start..];
        let body = &body[..body.find("\n}").unwrap_or(body.len())];
        let mut doc: Vec<&str> = Vec::new();
        for line in body.lines().skip(1) {
            let t = line.trim();
            if let Some(d) = t.strip_prefix("///") {
                doc.push(d.trim());
            } else if let Some((field, _)) = t.strip_prefix("pub ").and_then(|f| f.split_once(':')) {
                let key = if section.is_empty() { field.to_string() } else { format!("{section}.{field}") };
                if !doc.is_empty() {
                    out.insert(key, doc.join(" "));
                }
                doc.clear();
            } else if !t.starts_with("#[") {
                doc.clear();
            }
        }
    }
    out
}

impl RunConfig {
    /// The config as TOML with each key's documentation above it, and where a recipe chose the
    /// value, why.
    pub fn annotated_toml(&self) -> String {
        let docs = key_docs();
        let recipe = recipe_overrides(self.model.model);
        let why: std::collections::BTreeMap<&str, (&str, &str)> =
            recipe.iter().filter(|(_, _, w)| !w.is_empty()).map(|(k, v, w)| (*k, (v.as_str(), *w))).collect();
        let mut out = String::new();
        let mut section = String::new();
        for line in self.to_toml().lines() {
            let t = line.trim();
            if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some((k, value)) = t.split_once(" = ") {
                let key = if section.is_empty() { k.to_string() } else { format!("{section}.{k}") };
                if let Some(d) = docs.get(&key) {
                    out.push_str(&format!("# {d}\n"));
                }
                // The recipe's reason, where the value is still the recipe's.
                if let Some((_, w)) = why.get(key.as_str()).filter(|(v, _)| *v == value.trim()) {
                    out.push_str(&format!("# recipe: {w}\n"));
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Fills the keys `table` lacks from `defaults`, section by section.
fn merge_missing(table: &mut toml::Table, defaults: toml::Table) {
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
}

/// The defaults of a hand-written config for `kind`: the quick start's values with the model's
/// recipe applied.
fn defaults_table(kind: ModelKind) -> toml::Table {
    let mut t: toml::Table = toml::from_str(QUICKSTART).expect("the built-in quick start parses");
    for (k, v, _) in recipe_overrides(kind) {
        apply_override(&mut t, &format!("{k}={v}")).expect("the recipe's keys exist");
    }
    t
}

/// serde's "unknown field `x`, expected one of `a`, `b`, ..." with the nearest valid key named.
fn with_suggestion(msg: &str) -> String {
    let Some(rest) = msg.split("unknown field `").nth(1) else { return msg.to_string() };
    let Some((unknown, expected)) = rest.split_once('`') else { return msg.to_string() };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let nearest = candidates.iter().map(|c| (edit_distance(unknown, c), *c)).min();
    match nearest {
        Some((d, c)) if d <= (unknown.len() / 3).max(2) => format!("{msg} (did you mean `{c}`?)"),
        _ => msg.to_string(),
    }
}

/// Levenshtein distance between two keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j])).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
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
        ("model.in_channels", "0".into(), "from the data: 1 for grey images, 3 for colour ones"),
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
            (
                "augment.normalize",
                q("per-image"),
                "each image by its own mean and deviation: microscopy and medical images vary in exposure",
            ),
            (
                "train.bn_recalibrate",
                "16".into(),
                "batch-norm statistics from whole training images before each validation (ISBI 2012: pixel error 0.058 -> 0.056 on one checkpoint)",
            ),
        ]);
    } else {
        r.extend([
            ("model.batch_norm", "false".into(), "VGG16 as in the paper (true: vgg16_bn's layout)"),
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
        assert_eq!(RunConfig::parse_stored(&old, "old", &[]).unwrap(), cfg);
        let typo = cfg.to_toml().replace("val_limit", "val_limt");
        let err = RunConfig::parse_stored(&typo, "typo", &[]).unwrap_err().to_string();
        assert!(err.contains("val_limt") && err.contains("did you mean `val_limit`?"), "{err}");
    }

    /// Every model's default recipe is a valid, complete config whose classes come from the
    /// data; overrides still apply on top.
    #[test]
    fn every_model_has_a_recipe() {
        for kind in [ModelKind::Unet, ModelKind::Fcn8s, ModelKind::Fcn16s, ModelKind::Fcn32s, ModelKind::Fcn8sAtonce] {
            let cfg = RunConfig::recipe(kind, &["train.epochs=3".into(), "data.root=\"/data\"".into()]).unwrap();
            assert_eq!((cfg.model.model, cfg.model.classes, cfg.model.in_channels, cfg.train.epochs), (kind, 0, 0, 3));
            assert_eq!(cfg.data.format, DataFormat::Auto);
            assert!(crate::eval::train_window(&cfg).is_ok(), "{kind:?}: the crop fits the model's size rule");
        }
    }

    /// A hand-written config lists only what differs from its model's defaults: the rest comes
    /// from the recipe (layout and classes from the data), and the file's keys win.
    #[test]
    fn a_config_lists_only_what_differs() {
        let text =
            "[model]\nmodel = \"fcn8s\"\nbase_width = 8\n\n[data]\nroot = \"/data/cracks\"\n\n[train]\nlr = 0.01\n";
        let cfg = RunConfig::parse(text, "small.toml", &[], Path::new(".")).unwrap();
        assert_eq!((cfg.model.model, cfg.model.base_width, cfg.model.classes), (ModelKind::Fcn8s, 8, 0));
        assert_eq!((cfg.model.fc_width, cfg.augment.crop), (1024, 320), "the FCN recipe's values");
        assert_eq!((cfg.data.format, cfg.train.lr, cfg.name.as_str()), (DataFormat::Auto, 0.01, "fcn8s"));
        let unet = RunConfig::parse("[data]\nroot = \"/d\"\n", "u.toml", &[], Path::new(".")).unwrap();
        assert_eq!((unet.model.model, unet.augment.crop, unet.model.padded), (ModelKind::Unet, 256, true));
        assert_eq!(edit_distance("val_limt", "val_limit"), 1);
    }

    /// `config show` documents every key of the config.
    #[test]
    fn every_key_is_documented() {
        let cfg = RunConfig::quickstart(&[]).unwrap();
        let docs = key_docs();
        let flat = crate::trainer::flat_config_keys(&cfg.to_toml());
        let missing: Vec<&String> = flat.iter().filter(|k| !docs.contains_key(*k)).collect();
        assert!(missing.is_empty(), "keys without a doc comment: {missing:?}");
        let text = cfg.annotated_toml();
        assert!(text.contains("# Base learning rate") && text.contains("lr = "), "{text}");
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
