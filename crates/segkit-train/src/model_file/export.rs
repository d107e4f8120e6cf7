//! Export and import of weights under the reference models' PyTorch state-dict names.
//!
//! - FCN: pytorch-fcn / Caffe names (`conv1_1.weight`, ..., `fc6.weight`, `score_fr.weight`,
//!   `upscore2.weight`, ...): segkit's `vgg.` prefix is dropped.
//! - U-Net: the `tiny_unet` names of `shared/reference/golden.json` (`down.0.conv1.weight`, ...,
//!   `final.weight`); batch norm, when on, as PyTorch's `weight`/`bias`/`running_mean`/`running_var`.
//!
//! Layouts are PyTorch's already: Burn's conv weight is `[out, in, kh, kw]` and its transpose-conv
//! weight `[in, out, kh, kw]`. The file's metadata holds the architecture config, class names and
//! colours, ignore index and input normalisation, so an exported file is self-describing and
//! `segkit predict` takes it in place of a run directory.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors};
use segkit_models::SegModel;

use crate::TrainError;
use crate::checkpoint::{ClassInfo, read_f32, read_header_metadata, write_safetensors};
use crate::config::RunConfig;
use crate::params::{self, HostTensor};

/// Version 2 carries a payload checksum (see `checkpoint::verify_checksum`).
pub(crate) const FORMAT: &str = "segkit-export-2";
const FORMAT_V1: &str = "segkit-export-1";
/// Every export format this version reads.
pub const FORMATS: [&str; 2] = [FORMAT_V1, FORMAT];

/// segkit parameter path -> PyTorch state-dict name.
pub fn torch_name(path: &str) -> String {
    let p = path.strip_prefix("vgg.").unwrap_or(path);
    let p = p.replace("final_conv.", "final.");
    p.replace(".gamma", ".weight").replace(".beta", ".bias")
}

/// The inverse of [`torch_name`] for the tensors of `model`.
fn segkit_names(model: &SegModel) -> BTreeMap<String, String> {
    params::shapes(model).into_keys().map(|k| (torch_name(&k), k)).collect()
}

/// Whether `path` is a file written by [`export`].
pub fn is_export(path: &Path) -> bool {
    read_header_metadata(path).is_ok_and(|m| m.get("format").is_some_and(|f| f == FORMAT || f == FORMAT_V1))
}

/// Writes `model` to `out` under PyTorch names, f32 or (`half`) f16.
pub fn export(
    model: &SegModel,
    config: &RunConfig,
    classes: &ClassInfo,
    out: &Path,
    half: bool,
) -> Result<usize, TrainError> {
    let tensors = params::collect(model);
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            let bytes: Vec<u8> = if half {
                t.values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()
            } else {
                t.values.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
            (torch_name(k), t.shape.clone(), bytes)
        })
        .collect();
    let dtype = if half { Dtype::F16 } else { Dtype::F32 };
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("model".to_string(), config.model.model.name().to_string()),
        ("architecture".to_string(), serde_json::to_string(&config.model).expect("serialisable")),
        ("config".to_string(), config.to_toml()),
        ("class_names".to_string(), serde_json::to_string(&classes.names).expect("serialisable")),
        ("class_colors".to_string(), serde_json::to_string(&classes.colors).expect("serialisable")),
        ("ignore_index".to_string(), classes.ignore_index.to_string()),
        ("normalize".to_string(), serde_json::to_string(&config.augment.normalize).expect("serialisable")),
    ]);
    write_safetensors(out, &owned, dtype, meta)?;
    Ok(owned.len())
}

/// Reads a state dict of PyTorch names from a safetensors file into `model`, by name. Tensors of
/// the file the model lacks are listed as unused; a shape mismatch is an error.
pub fn load_torch_names(
    model: SegModel,
    path: &Path,
) -> Result<(SegModel, params::LoadReport, Vec<String>), TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    crate::checkpoint::verify_checksum(path, &bytes)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::checkpoint(path, crate::checkpoint::describe_unreadable(&e, bytes.len())))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let values = read_f32(&view).map_err(|m| TrainError::checkpoint(path, format!("{name}: {m}")))?;
        tensors.insert(name, HostTensor { shape: view.shape().to_vec(), values });
    }
    let (model, report, unused) = from_torch_names(model, tensors);
    if !report.mismatched.is_empty() {
        let (p, want, got) = &report.mismatched[0];
        return Err(TrainError::checkpoint(
            path,
            format!("{}: shape {got:?} in the file, {want:?} in the model", torch_name(p)),
        ));
    }
    Ok((model, report, unused))
}

/// Loads a state dict of PyTorch names into `model`, by name: `(model, what was loaded,
/// the names the model lacks)`. Shape mismatches are in the report, not loaded.
pub fn from_torch_names(
    model: SegModel,
    tensors: BTreeMap<String, HostTensor>,
) -> (SegModel, params::LoadReport, Vec<String>) {
    let names = segkit_names(&model);
    let mut source = BTreeMap::new();
    let mut unused = Vec::new();
    for (name, t) in tensors {
        match names.get(&name) {
            Some(path_in_model) => {
                source.insert(path_in_model.clone(), t);
            }
            None => unused.push(name),
        }
    }
    let (model, report) = params::load(model, &source);
    (model, report, unused)
}

/// Loads an exported file: its config, classes and model.
pub fn load(path: &Path, device: &Device) -> Result<(RunConfig, ClassInfo, SegModel), TrainError> {
    let meta = read_header_metadata(path)?;
    let get =
        |k: &str| meta.get(k).cloned().ok_or_else(|| TrainError::checkpoint(path, format!("metadata `{k}` missing")));
    let config = RunConfig::parse_stored(&get("config")?, &format!("{} (metadata)", path.display()), &[])?;
    let classes = ClassInfo {
        names: serde_json::from_str(&get("class_names")?).map_err(|e| TrainError::checkpoint(path, e.to_string()))?,
        colors: serde_json::from_str(&get("class_colors")?).map_err(|e| TrainError::checkpoint(path, e.to_string()))?,
        ignore_index: get("ignore_index")?.parse().map_err(|_| TrainError::checkpoint(path, "bad ignore_index"))?,
    };
    let model = SegModel::new(&config.model, device)?;
    let (model, report, _) = load_torch_names(model, path)?;
    if !report.missing.is_empty() {
        return Err(TrainError::checkpoint(
            path,
            format!("tensors missing: {}", report.missing.iter().map(|p| torch_name(p)).collect::<Vec<_>>().join(", ")),
        ));
    }
    Ok((config, classes, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_reference_state_dicts() {
        assert_eq!(torch_name("vgg.conv1_1.weight"), "conv1_1.weight");
        assert_eq!(torch_name("score_pool4.bias"), "score_pool4.bias");
        assert_eq!(torch_name("final_conv.weight"), "final.weight");
        assert_eq!(torch_name("down.0.bn1.gamma"), "down.0.bn1.weight");
        assert_eq!(torch_name("down.0.bn1.running_mean"), "down.0.bn1.running_mean");
    }
}
