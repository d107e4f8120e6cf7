//! Importing published weights: torchvision's ImageNet VGG16 as the FCN trunk (with fc6/fc7
//! "convolutionalised" from the classifier's linear layers, as the FCN paper does), and
//! pytorch-fcn's FCN-32s/16s/8s state dicts (`fcn8s_from_caffe.pth` names) as whole models.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::prelude::*;
use safetensors::tensor::Dtype;
use segkit_data::Normalize;
use segkit_models::{ModelKind, SegModel};

use crate::TrainError;
use crate::checkpoint::{bytes_of, write_safetensors};
use crate::params::{self, HostTensor};
use crate::torchfile::read_state_dict;

/// Marks a file written by [`import_vgg16`].
pub const BACKBONE_FORMAT: &str = "segkit-backbone-1";

/// torchvision `vgg16().features` indices of the 13 convolutions, in order.
const VGG_FEATURES: [(usize, &str); 13] = [
    (0, "conv1_1"),
    (2, "conv1_2"),
    (5, "conv2_1"),
    (7, "conv2_2"),
    (10, "conv3_1"),
    (12, "conv3_2"),
    (14, "conv3_3"),
    (17, "conv4_1"),
    (19, "conv4_2"),
    (21, "conv4_3"),
    (24, "conv5_1"),
    (26, "conv5_2"),
    (28, "conv5_3"),
];

/// torchvision `vgg16_bn().features` indices of the 13 convolutions; each one's batch norm is
/// the next index.
const VGG_BN_FEATURES: [usize; 13] = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40];

/// torchvision VGG16 names -> FCN trunk names (`conv1_1.weight` ... `fc7.bias`), with the
/// classifier's `Linear(512*7*7, 4096)` and `Linear(4096, 4096)` reshaped into the 7x7 fc6 and
/// 1x1 fc7 convolutions. PyTorch flattens `[512, 7, 7]` channel-major, so the reshape is exact.
/// A `vgg16_bn` state dict (recognised by `features.1.running_var`) also gives the batch norms,
/// under segkit's names (`bn1_1.gamma`, `bn1_1.beta`, `bn1_1.running_mean`, `bn1_1.running_var`).
pub fn vgg16_to_fcn(sd: &BTreeMap<String, HostTensor>) -> Result<BTreeMap<String, HostTensor>, String> {
    let get = |k: &str| sd.get(k).ok_or_else(|| format!("`{k}` missing: not a torchvision VGG16 state dict"));
    let with_bn = sd.contains_key("features.1.running_var");
    let mut out = BTreeMap::new();
    for (k, (plain, name)) in VGG_FEATURES.into_iter().enumerate() {
        let i = if with_bn { VGG_BN_FEATURES[k] } else { plain };
        out.insert(format!("{name}.weight"), get(&format!("features.{i}.weight"))?.clone());
        out.insert(format!("{name}.bias"), get(&format!("features.{i}.bias"))?.clone());
        if with_bn {
            let bn = name.replacen("conv", "bn", 1);
            let j = i + 1;
            for (theirs, ours) in [
                ("weight", "gamma"),
                ("bias", "beta"),
                ("running_mean", "running_mean"),
                ("running_var", "running_var"),
            ] {
                out.insert(format!("{bn}.{ours}"), get(&format!("features.{j}.{theirs}"))?.clone());
            }
        }
    }
    let c5 = out["conv5_3.weight"].shape[0];
    let fc6 = get("classifier.0.weight")?;
    if fc6.shape.len() != 2 || fc6.shape[1] != c5 * 49 {
        return Err(format!(
            "classifier.0.weight has shape {:?}; expected [fc, {}] (conv5 width x 7 x 7)",
            fc6.shape,
            c5 * 49
        ));
    }
    let fc = fc6.shape[0];
    out.insert("fc6.weight".into(), HostTensor { shape: vec![fc, c5, 7, 7], values: fc6.values.clone() });
    out.insert("fc6.bias".into(), get("classifier.0.bias")?.clone());
    let fc7 = get("classifier.3.weight")?;
    if fc7.shape != [fc, fc] {
        return Err(format!("classifier.3.weight has shape {:?}; expected [{fc}, {fc}]", fc7.shape));
    }
    out.insert("fc7.weight".into(), HostTensor { shape: vec![fc, fc, 1, 1], values: fc7.values.clone() });
    out.insert("fc7.bias".into(), get("classifier.3.bias")?.clone());
    Ok(out)
}

/// `segkit import vgg16`: torchvision VGG16 (`.pth` or `.safetensors`) to an FCN-trunk file
/// that `train.backbone_weights` can name. Returns the number of tensors and the trunk's widths.
pub fn import_vgg16(input: &Path, out: &Path) -> Result<(usize, usize, usize), TrainError> {
    let sd = read_state_dict(input)?;
    let trunk = vgg16_to_fcn(&sd).map_err(|m| TrainError::checkpoint(input, m))?;
    let (base, fc) = (trunk["conv1_1.weight"].shape[0], trunk["fc6.weight"].shape[0]);
    let meta = HashMap::from([
        ("format".to_string(), BACKBONE_FORMAT.to_string()),
        ("source".to_string(), format!("torchvision VGG16 ({})", input.display())),
        ("normalize".to_string(), "imagenet".to_string()),
    ]);
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
        trunk.iter().map(|(k, t)| (k.clone(), t.shape.clone(), bytes_of(&t.values))).collect();
    write_safetensors(out, &tensors, Dtype::F32, meta)?;
    Ok((trunk.len(), base, fc))
}

/// The normalisation a backbone file requires (`None` when it does not say).
pub fn backbone_normalize(path: &Path) -> Result<Option<Normalize>, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let Ok((_, meta)) = safetensors::SafeTensors::read_metadata(&bytes) else { return Ok(None) };
    Ok(meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("normalize"))
        .and_then(|n| serde_json::from_value(serde_json::Value::String(n.clone())).ok()))
}

/// Loads backbone weights (an imported trunk, or torchvision VGG16 directly) into `model`'s trunk
/// by name. Returns the model and how many tensors were loaded.
pub fn load_backbone(model: SegModel, path: &Path) -> Result<(SegModel, usize), TrainError> {
    let mut sd = read_state_dict(path)?;
    if sd.contains_key("features.0.weight") {
        sd = vgg16_to_fcn(&sd).map_err(|m| TrainError::checkpoint(path, m))?;
    }
    // Weights trained with batch norm are meaningless without it, and the other way round.
    let file_bn = sd.contains_key("bn1_1.gamma");
    let model_bn = params::shapes(&model).contains_key("vgg.bn1_1.gamma");
    if file_bn != model_bn {
        let (file, fix) = if file_bn {
            ("a VGG16 with batch norm (vgg16_bn)", "model.batch_norm = true")
        } else {
            ("a VGG16 without batch norm", "model.batch_norm = false")
        };
        return Err(TrainError::checkpoint(path, format!("{file}: set {fix} to start from it")));
    }
    let by_path: BTreeMap<String, HostTensor> = sd.into_iter().map(|(k, v)| (format!("vgg.{k}"), v)).collect();
    let (model, report) = params::load(model, &by_path);
    if let Some((p, want, got)) = report.mismatched.first() {
        return Err(TrainError::checkpoint(
            path,
            format!(
                "{p}: shape {got:?} in the file, {want:?} in the model (check model.base_width / fc_width / in_channels)"
            ),
        ));
    }
    if report.loaded.is_empty() {
        return Err(TrainError::checkpoint(path, "no trunk tensors matched the model (is it an FCN?)"));
    }
    Ok((model, report.loaded.len()))
}

/// `segkit import fcn8s FILE`: a pytorch-fcn (or any reference-named) FCN state dict as a
/// self-describing segkit file (see [`crate::export`]) that `eval` and `predict` take. The
/// reference models were trained on Caffe BGR inputs with VOC classes; `classes` defaults to the
/// width of `score_fr`.
pub fn import_fcn(
    kind: ModelKind,
    input: &Path,
    out: &Path,
    class_names: Option<Vec<String>>,
) -> Result<usize, TrainError> {
    let sd = read_state_dict(input)?;
    let model_cfg = super::fcn_config_from_state_dict(&sd, Some(kind)).map_err(|m| TrainError::checkpoint(input, m))?;
    let (cfg, classes) = super::state_dict_run_config(model_cfg, Normalize::CaffeBgr, class_names)?;
    let device = Device::flex();
    let model = SegModel::new(&cfg.model, &device)?;
    let by_path: BTreeMap<String, HostTensor> = {
        let names_map: BTreeMap<String, String> =
            params::shapes(&model).into_keys().map(|k| (crate::export::torch_name(&k), k)).collect();
        sd.into_iter().filter_map(|(k, v)| names_map.get(&k).map(|p| (p.clone(), v))).collect()
    };
    let (model, report) = params::load(model, &by_path);
    if !report.missing.is_empty() || !report.mismatched.is_empty() {
        return Err(TrainError::checkpoint(
            input,
            format!(
                "does not fit a reference {kind}: missing {:?}, mismatched {:?}",
                report.missing, report.mismatched
            ),
        ));
    }
    crate::export::export(&model, &cfg, &classes, out, false)
}
