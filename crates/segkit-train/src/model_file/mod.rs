//! Model files: everything that reads or writes a trained model, in one place.
//!
//! - [`open_model`] takes any of them: a run directory (its best checkpoint), a checkpoint, a
//!   safetensors export, or a PyTorch state dict (`.pth`, or `.safetensors` without segkit
//!   metadata) under the reference layer names.
//! - Writers beside it: [`checkpoint`] (training state, resumable), [`export`] (safetensors under
//!   PyTorch names), [`onnx`] (a standard ONNX graph); readers of others' files: [`torchfile`]
//!   (`.pth`) and [`import`] (torchvision VGG16, pytorch-fcn).
//!
//! Invariants: every file is written through `write_atomic` (a kill leaves the old file or the
//! new one); every reader checks sizes before it allocates and names the file in its errors.

pub mod checkpoint;
pub mod export;
pub mod import;
pub mod onnx;
pub mod onnx_proto;
pub mod torchfile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use segkit_data::Normalize;
use segkit_models::{ModelConfig, ModelKind, SegModel};

use crate::TrainError;
use crate::config::RunConfig;
use crate::params::{self, HostTensor};
use checkpoint::{Checkpoint, ClassInfo};

/// What kind of file a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A segkit checkpoint (from a run directory or named directly).
    Checkpoint,
    /// A file written by `segkit export`.
    Export,
    /// A state dict under the reference names, without segkit metadata; its architecture was
    /// inferred from the tensor names and shapes (see [`Loaded::notes`]).
    StateDict,
}

/// A trained model with everything needed to run it.
pub struct Loaded {
    pub config: RunConfig,
    pub classes: ClassInfo,
    pub model: SegModel,
    /// The file the weights came from.
    pub checkpoint: PathBuf,
    pub step: usize,
    /// Training state at the checkpoint: step, time, metric history (default for other files).
    pub state: checkpoint::TrainState,
    pub source: Source,
    /// What had to be assumed (a state dict says nothing about normalisation, say), as sentences
    /// for the CLI to show.
    pub notes: Vec<String>,
}

/// The checkpoint file of `run`: the file itself, or `best.safetensors` (else `last`) in a run
/// directory.
pub fn checkpoint_path(run: &Path) -> Result<PathBuf, TrainError> {
    if run.is_file() {
        return Ok(run.to_path_buf());
    }
    if !run.exists() {
        return Err(TrainError::checkpoint(run, "no such file or directory"));
    }
    for name in ["best.safetensors", "last.safetensors"] {
        let p = run.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(TrainError::checkpoint(
        run,
        "no checkpoint here (expected best.safetensors or last.safetensors in a run directory)",
    ))
}

/// The model kind a model file (or a run directory's checkpoint) holds, read from its header's
/// config alone, without loading the weights: what the device check needs to know before the
/// model is opened. `None` when the header does not say (a state dict, an unreadable file: the
/// open that follows reports what is wrong).
pub fn model_kind_of(path: &Path) -> Option<segkit_models::ModelKind> {
    let file = checkpoint_path(path).ok()?;
    let config = checkpoint::read_header_metadata(&file).ok()?.remove("config")?;
    let v: toml::Value = toml::from_str(&config).ok()?;
    segkit_models::ModelKind::parse(v.get("model")?.get("model")?.as_str()?)
}

/// Opens any model file (see the module docs) onto `device` (no autodiff).
pub fn open_model(path: &Path, device: &Device) -> Result<Loaded, TrainError> {
    let file = checkpoint_path(path)?;
    let is_pth = file.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "pth" | "pt" | "bin"));
    let format = if is_pth { None } else { checkpoint::read_header_metadata(&file)?.remove("format") };
    match format.as_deref() {
        Some(f) if export::FORMATS.contains(&f) => {
            let (config, classes, model) = export::load(&file, device)?;
            Ok(Loaded {
                config,
                classes,
                model,
                checkpoint: file,
                step: 0,
                state: Default::default(),
                source: Source::Export,
                notes: Vec::new(),
            })
        }
        Some(f) if f.starts_with("segkit-backbone-") => Err(TrainError::checkpoint(
            &file,
            "an FCN trunk (conv1_1 ... fc7) written by `segkit import vgg16`, not a whole model: \
             train from it with `--set train.backbone_weights=...`",
        )),
        Some(f) if checkpoint::FORMATS.contains(&f) => open_checkpoint(&file, device),
        Some(f) if f.starts_with("segkit-") => Err(TrainError::checkpoint(
            &file,
            format!(
                "format `{f}` is not one this segkit ({}) reads ({}, {}, or a state dict): written by a newer segkit?",
                env!("CARGO_PKG_VERSION"),
                checkpoint::FORMATS.join(", "),
                export::FORMATS.join(", ")
            ),
        )),
        // Anything else (no metadata, or another tool's, such as Hugging Face's `format: pt`) is
        // a state dict by name.
        _ => open_state_dict(&file, device),
    }
}

fn open_checkpoint(path: &Path, device: &Device) -> Result<Loaded, TrainError> {
    let ck = Checkpoint::load(path)?;
    let config = RunConfig::parse_stored(&ck.config, &format!("{} (config)", path.display()), &[])?;
    let model = SegModel::new(&config.model, device)?;
    let (model, report) = params::load(model, &ck.model);
    if !report.missing.is_empty() || !report.mismatched.is_empty() {
        return Err(TrainError::checkpoint(
            path,
            format!("weights do not fit the model: missing {:?}, mismatched {:?}", report.missing, report.mismatched),
        ));
    }
    Ok(Loaded {
        config,
        classes: ck.classes,
        model,
        checkpoint: path.to_path_buf(),
        step: ck.state.step,
        state: ck.state,
        source: Source::Checkpoint,
        notes: Vec::new(),
    })
}

fn open_state_dict(path: &Path, device: &Device) -> Result<Loaded, TrainError> {
    let sd = torchfile::read_state_dict(path)?;
    let (config, classes, notes) = infer_run_config(&sd).map_err(|m| TrainError::checkpoint(path, m))?;
    let model = SegModel::new(&config.model, device)?;
    let (model, report, _unused) = export::from_torch_names(model, sd);
    if let Some((p, want, got)) = report.mismatched.first() {
        return Err(TrainError::checkpoint(
            path,
            format!("{}: shape {got:?} in the file, {want:?} in the model", export::torch_name(p)),
        ));
    }
    if !report.missing.is_empty() {
        let names: Vec<String> = report.missing.iter().map(|p| export::torch_name(p)).collect();
        return Err(TrainError::checkpoint(
            path,
            format!("tensors missing for a {}: {}", config.model.model, names.join(", ")),
        ));
    }
    Ok(Loaded {
        config,
        classes,
        model,
        checkpoint: path.to_path_buf(),
        step: 0,
        state: Default::default(),
        source: Source::StateDict,
        notes,
    })
}

/// An FCN's architecture read off a reference-named state dict (pytorch-fcn, Caffe-converted):
/// the variant from its upsamplers, widths and classes from the shapes. FCN-8s and the at-once
/// FCN-8s have the same tensors; `kind` decides, else FCN-8s.
pub fn fcn_config_from_state_dict(
    sd: &BTreeMap<String, HostTensor>,
    kind: Option<ModelKind>,
) -> Result<ModelConfig, String> {
    let score = sd.get("score_fr.weight").ok_or("`score_fr.weight` missing: not an FCN state dict")?;
    let kind = kind.unwrap_or(if sd.contains_key("upscore8.weight") || sd.contains_key("score_pool3.weight") {
        ModelKind::Fcn8s
    } else if sd.contains_key("upscore16.weight") || sd.contains_key("score_pool4.weight") {
        ModelKind::Fcn16s
    } else {
        ModelKind::Fcn32s
    });
    let mut m = ModelConfig::paper(kind, score.shape[0]);
    let conv1 = sd.get("conv1_1.weight");
    m.base_width = conv1.map_or(64, |t| t.shape[0]);
    m.in_channels = conv1.map_or(3, |t| t.shape[1]);
    m.fc_width = *score.shape.get(1).ok_or("score_fr.weight is not a convolution weight")?;
    m.batch_norm = sd.contains_key("bn1_1.weight");
    Ok(m)
}

/// The U-Net architecture read off a `tiny_unet`-named state dict: depth from the levels,
/// widths, classes and batch norm from the tensors. Whether the convolutions were padded is not
/// in the weights: the paper's unpadded U-Net is assumed.
fn unet_config_from_state_dict(sd: &BTreeMap<String, HostTensor>) -> Result<ModelConfig, String> {
    let first = sd.get("down.0.conv1.weight").ok_or("`down.0.conv1.weight` missing")?;
    let last = sd.get("final.weight").ok_or("`final.weight` missing: not a U-Net state dict")?;
    let depth = (0..).take_while(|i| sd.contains_key(&format!("down.{i}.conv1.weight"))).count();
    let mut m = ModelConfig::paper(ModelKind::Unet, last.shape[0]);
    m.depth = depth;
    m.base_width = first.shape[0];
    m.in_channels = *first.shape.get(1).ok_or("down.0.conv1.weight is not a convolution weight")?;
    m.batch_norm = sd.contains_key("down.0.bn1.weight");
    Ok(m)
}

/// A run config for a bare state dict, with the assumptions it had to make.
fn infer_run_config(sd: &BTreeMap<String, HostTensor>) -> Result<(RunConfig, ClassInfo, Vec<String>), String> {
    let mut notes = Vec::new();
    let (model, normalize) = if sd.contains_key("score_fr.weight") {
        let m = fcn_config_from_state_dict(sd, None)?;
        if m.model == ModelKind::Fcn8s {
            notes.push(
                "FCN-8s and the at-once FCN-8s have the same tensors: read as FCN-8s (for the at-once one, \
                 `segkit import fcn8s-atonce FILE -o OUT.safetensors` first)"
                    .to_string(),
            );
        }
        notes.push("no normalisation stored: assumed Caffe BGR (the FCN reference's)".to_string());
        (m, Normalize::CaffeBgr)
    } else if sd.contains_key("final.weight") {
        let m = unet_config_from_state_dict(sd)?;
        notes.push(
            "no normalisation stored: assumed pixel values scaled to [0, 1]; unpadded convolutions (the paper's) assumed"
                .to_string(),
        );
        (m, Normalize::Unit)
    } else {
        return Err(
            "a state dict segkit cannot place: neither FCN (`score_fr.weight`) nor U-Net (`final.weight`) names"
                .to_string(),
        );
    };
    let (cfg, classes) = state_dict_run_config(model, normalize, None).map_err(|e| e.to_string())?;
    Ok((cfg, classes, notes))
}

/// The run config and classes that go with weights from outside segkit: `model`, inputs
/// normalised as `normalize`, whole images; class names given, else VOC's for a 21-class FCN,
/// else `class0`, `class1`, ...; VOC colours; void 255.
pub(crate) fn state_dict_run_config(
    model: ModelConfig,
    normalize: Normalize,
    class_names: Option<Vec<String>>,
) -> Result<(RunConfig, ClassInfo), TrainError> {
    let n = model.classes;
    let names: Vec<String> = match class_names {
        Some(v) => v,
        None if n == 21 && model.model.is_fcn() => {
            segkit_data::layout::VOC_CLASSES.iter().map(|s| s.to_string()).collect()
        }
        None => (0..n).map(|i| format!("class{i}")).collect(),
    };
    if names.len() != n {
        return Err(TrainError::Config(format!("{} class names given, the model has {n} classes", names.len())));
    }
    let mut cfg = RunConfig::quickstart(&[])?;
    cfg.name = format!("imported-{}", model.model);
    cfg.model = model;
    cfg.augment.normalize = normalize;
    cfg.augment.crop = 0;
    cfg.data.class_names = names.clone();
    let colors = (0..n).map(|i| segkit_data::classes::voc_color(i as u8)).collect();
    Ok((cfg, ClassInfo { names, colors, ignore_index: 255 }))
}
