//! Checkpoints: one safetensors file holding the model's tensors (`model.<path>`), the optimiser
//! state (`optim.<path>/<slot>`) and, as metadata, the resolved config, the class list and the
//! training state (step, epoch, position in the epoch, best metric, metric history). One file,
//! written atomically, so a checkpoint is either the old one or the new one, never half.
//!
//! The data-loading RNG needs no state: every augmentation is seeded by (seed, epoch, position),
//! and dropout is re-seeded from (seed, step) at every step.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use serde::{Deserialize, Serialize};

use crate::params::HostTensor;
use crate::{TrainError, write_atomic};

/// Version 2 carries a payload checksum, which its reader requires; version 1 files (no
/// checksum) still read.
const FORMAT: &str = "segkit-checkpoint-2";
const FORMAT_V1: &str = "segkit-checkpoint-1";
/// Every checkpoint format this version reads.
pub const FORMATS: [&str; 2] = [FORMAT_V1, FORMAT];

/// JSON has no NaN or infinity: serde_json writes them as `null` and then refuses to read that
/// `null` back as a number, which made a checkpoint whose history held a NaN (a validation with
/// no training step since the last one) unreadable for good. Metrics and state floats therefore
/// write a non-finite value as `null` and read `null` back as NaN, so every checkpoint written,
/// by this version or the earlier one, reads back.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() { s.serialize_f64(*v) } else { s.serialize_none() }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub step: usize,
    /// Completed epochs.
    pub epoch: usize,
    #[serde(with = "nan_as_null")]
    pub train_loss: f64,
    #[serde(with = "nan_as_null")]
    pub val_loss: f64,
    #[serde(with = "nan_as_null")]
    pub pixel_acc: f64,
    #[serde(with = "nan_as_null")]
    pub mean_acc: f64,
    #[serde(with = "nan_as_null")]
    pub mean_iou: f64,
    #[serde(with = "nan_as_null")]
    pub fw_iou: f64,
    #[serde(with = "nan_as_null")]
    pub mean_dice: f64,
    #[serde(with = "nan_as_null")]
    pub lr: f64,
    #[serde(with = "nan_as_null")]
    pub elapsed_s: f64,
    /// Mixed precision: the loss scale at this row (empty under f32; absent in checkpoints of
    /// earlier versions).
    #[serde(with = "nan_as_null", default = "nan")]
    pub loss_scale: f64,
    /// Mixed precision: steps skipped so far because their f16 gradients overflowed.
    #[serde(default)]
    pub overflow_skips: usize,
}

fn nan() -> f64 {
    f64::NAN
}

impl MetricsRow {
    pub const HEADER: &'static str =
        "step,epoch,train_loss,val_loss,pixel_acc,mean_acc,mean_iou,fw_iou,mean_dice,lr,loss_scale,overflow_skips,elapsed_s";

    pub fn csv(&self) -> String {
        format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6e},{},{},{:.1}",
            self.step,
            self.epoch,
            self.train_loss,
            self.val_loss,
            self.pixel_acc,
            self.mean_acc,
            self.mean_iou,
            self.fw_iou,
            self.mean_dice,
            self.lr,
            if self.loss_scale.is_finite() { format!("{}", self.loss_scale) } else { String::new() },
            self.overflow_skips,
            self.elapsed_s
        )
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken.
    pub step: usize,
    /// The epoch in progress.
    pub epoch: usize,
    /// The next batch of that epoch.
    pub batch: usize,
    #[serde(with = "nan_as_null")]
    pub best_miou: f64,
    pub best_step: usize,
    #[serde(with = "nan_as_null")]
    pub elapsed_s: f64,
    pub optim_steps: u64,
    pub history: Vec<MetricsRow>,
    /// Sum and count of the training losses since the last validation (the next row's
    /// `train_loss`); absent in checkpoints of earlier versions.
    #[serde(default)]
    pub interval_loss_sum: f64,
    #[serde(default)]
    pub interval_steps: usize,
    /// Steps skipped for a non-finite loss or gradient (`train.skip_nonfinite`).
    #[serde(default)]
    pub skipped: usize,
    /// Mixed precision's loss scale (0: none yet), its steps since the last change, and the steps
    /// skipped because f16 gradients overflowed (`amp::LossScaler`).
    #[serde(default)]
    pub loss_scale: f64,
    #[serde(default)]
    pub scale_good_steps: usize,
    #[serde(default)]
    pub overflow_skips: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassInfo {
    pub names: Vec<String>,
    pub colors: Vec<[u8; 3]>,
    pub ignore_index: u8,
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub model: BTreeMap<String, HostTensor>,
    pub optim: BTreeMap<String, HostTensor>,
    /// The resolved run config, as TOML.
    pub config: String,
    pub classes: ClassInfo,
    pub state: TrainState,
}

/// Little-endian f32 bytes, as safetensors stores them.
pub fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Checkpoint {
    /// Writes the checkpoint to `path`. The file it replaces is kept as `previous` (when
    /// given) until the new one is complete, so a checkpoint that later turns out unreadable
    /// has a fallback one save older.
    pub fn save(&self, path: &Path, previous: Option<&Path>) -> Result<(), TrainError> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (k, t) in &self.model {
            tensors.push((format!("model.{k}"), t.shape.clone(), bytes_of(&t.values)));
        }
        for (k, t) in &self.optim {
            tensors.push((format!("optim.{k}"), t.shape.clone(), bytes_of(&t.values)));
        }
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("config".to_string(), self.config.clone()),
            ("classes".to_string(), serde_json::to_string(&self.classes).expect("serialisable")),
            ("state".to_string(), serde_json::to_string(&self.state).expect("serialisable")),
        ]);
        let bytes = safetensors_bytes(path, &tensors, Dtype::F32, meta)?;
        match previous {
            Some(prev) => crate::write_atomic_keep_previous(path, prev, &bytes),
            None => write_atomic(path, &bytes),
        }
    }

    /// The config, classes and training state of a checkpoint, reading only the file's header.
    pub fn read_meta(path: &Path) -> Result<(String, ClassInfo, TrainState), TrainError> {
        let bad = |m: String| TrainError::checkpoint(path, m);
        let meta = read_header_metadata(path)?;
        if !matches!(meta.get("format").map(String::as_str), Some(FORMAT | FORMAT_V1)) {
            return Err(bad(
                "not a segkit checkpoint (no segkit metadata); exported weights go through `segkit predict`".into(),
            ));
        }
        let field = |k: &str| meta.get(k).cloned().ok_or_else(|| bad(format!("metadata `{k}` missing")));
        let classes: ClassInfo = serde_json::from_str(&field("classes")?).map_err(|e| bad(format!("classes: {e}")))?;
        let state: TrainState = serde_json::from_str(&field("state")?).map_err(|e| bad(format!("state: {e}")))?;
        Ok((field("config")?, classes, state))
    }

    pub fn load(path: &Path) -> Result<Checkpoint, TrainError> {
        let (config, classes, state) = Self::read_meta(path)?;
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let bad = |m: String| TrainError::checkpoint(path, m);
        verify_checksum(path, &bytes)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(describe_unreadable(&e, bytes.len())))?;
        let mut model = BTreeMap::new();
        let mut optim = BTreeMap::new();
        for (name, view) in st.tensors() {
            let values = read_f32(&view).map_err(|m| bad(format!("{name}: {m}")))?;
            let t = HostTensor { shape: view.shape().to_vec(), values };
            if let Some(k) = name.strip_prefix("model.") {
                model.insert(k.to_string(), t);
            } else if let Some(k) = name.strip_prefix("optim.") {
                optim.insert(k.to_string(), t);
            }
        }
        let config = fcn_without_trunk_norm(config, &model);
        Ok(Checkpoint { model, optim, config, classes, state })
    }
}

/// Checkpoints written before `model.batch_norm` applied to the FCNs (it was U-Net-only, and the
/// default recipe left it `true` for every model) say `batch_norm = true` for an FCN whose trunk
/// has no batch norm: their config is read with `batch_norm = false`, so that they still load.
fn fcn_without_trunk_norm(config: String, model: &BTreeMap<String, HostTensor>) -> String {
    let Ok(mut table) = config.parse::<toml::Table>() else { return config };
    let Some(m) = table.get_mut("model").and_then(|m| m.as_table_mut()) else { return config };
    let is_fcn = m.get("model").and_then(|k| k.as_str()).is_some_and(|k| k.starts_with("fcn"));
    let says_norm = m.get("batch_norm").and_then(|b| b.as_bool()) == Some(true);
    if !(is_fcn && says_norm) || model.keys().any(|k| k.starts_with("vgg.bn")) {
        return config;
    }
    m.insert("batch_norm".into(), toml::Value::Boolean(false));
    toml::to_string(&table).unwrap_or(config)
}

/// The values of an F32, F16 or BF16 tensor as f32.
pub fn read_f32(view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let d = view.data();
    match view.dtype() {
        Dtype::F32 => Ok(d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        Dtype::F16 => Ok(d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        Dtype::BF16 => Ok(d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        other => Err(format!("unsupported dtype {other:?}")),
    }
}

/// Writes `(name, shape, little-endian bytes)` tensors of one `dtype` with `meta` to `path`,
/// atomically, with a payload checksum. Every safetensors file segkit writes goes through here.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    dtype: Dtype,
    meta: HashMap<String, String>,
) -> Result<(), TrainError> {
    write_atomic(path, &safetensors_bytes(path, tensors, dtype, meta)?)
}

/// The bytes of a safetensors file holding `tensors` and `meta`, plus a `checksum` entry.
fn safetensors_bytes(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    dtype: Dtype,
    mut meta: HashMap<String, String>,
) -> Result<Vec<u8>, TrainError> {
    let views = tensors
        .iter()
        .map(|(k, s, b)| Ok((k.clone(), TensorView::new(dtype, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    let sum = checksum(views.iter().map(|(k, v)| (k.as_str(), v)), &meta);
    meta.insert(CHECKSUM_KEY.to_string(), sum);
    safetensors::serialize(views, Some(meta)).map_err(|e| TrainError::checkpoint(path, e.to_string()))
}

/// The metadata key of the payload checksum.
const CHECKSUM_KEY: &str = "checksum";

/// File formats whose writers always add the checksum.
const CHECKSUMMED: [&str; 2] = [FORMAT, crate::export::FORMAT];

/// `crc32:XXXXXXXX` over every tensor (name, dtype, shape, bytes) in name order and every other
/// metadata entry in key order: a flipped bit anywhere but in the header's offsets (which the
/// safetensors reader checks itself) changes it.
fn checksum<'a>(
    tensors: impl Iterator<Item = (&'a str, &'a TensorView<'a>)>,
    meta: &HashMap<String, String>,
) -> String {
    let mut tensors: Vec<_> = tensors.collect();
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = crc32fast::Hasher::new();
    for (name, view) in tensors {
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", view.dtype(), view.shape()).as_bytes());
        h.update(view.data());
    }
    let mut keys: Vec<_> = meta.keys().filter(|k| k.as_str() != CHECKSUM_KEY).collect();
    keys.sort();
    for k in keys {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(meta[k].as_bytes());
        h.update(&[0]);
    }
    format!("crc32:{:08x}", h.finalize())
}

/// Checks the checksum segkit wrote into the metadata of the safetensors file `bytes` (read
/// from `path`). Files without one pass (written by other tools, or by segkit before
/// checksums) unless their `format` is one of the versions that always carry one: a checksum
/// key damaged out of recognition must not switch the check off.
pub fn verify_checksum(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let bad = |m: String| TrainError::checkpoint(path, m);
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(describe_unreadable(&e, bytes.len())))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(describe_unreadable(&e, bytes.len())))?;
    let Some(meta) = header.metadata() else { return Ok(()) };
    let Some(stored) = meta.get(CHECKSUM_KEY) else {
        let format = meta.get("format").map(String::as_str);
        if format.is_some_and(|f| CHECKSUMMED.contains(&f)) {
            return Err(bad("the file is corrupt: its checksum is missing from the metadata".into()));
        }
        return Ok(());
    };
    let views = st.tensors();
    let computed = checksum(views.iter().map(|(k, v)| (k.as_str(), v)), meta);
    if &computed != stored {
        return Err(bad(format!(
            "the file is corrupt: its checksum is {stored} but its contents give {computed} \
             (a flipped bit, or a copy that went wrong); use another checkpoint"
        )));
    }
    Ok(())
}

/// Why the safetensors reader rejected a file, in a user's words.
pub fn describe_unreadable(e: &safetensors::SafeTensorError, len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer | E::HeaderTooSmall | E::InvalidHeaderLength => {
            format!("the file is truncated or not a safetensors file ({len} bytes; {e})")
        }
        E::InvalidHeader(_) | E::InvalidHeaderStart | E::InvalidHeaderDeserialization(_) => {
            format!("not a safetensors file, or its header is corrupt ({e})")
        }
        _ => format!("unreadable safetensors file ({e})"),
    }
}

/// The `__metadata__` of a safetensors file, reading only its header (a checkpoint of FCN is
/// half a gigabyte; its metadata a few kilobytes).
pub fn read_header_metadata(path: &Path) -> Result<HashMap<String, String>, TrainError> {
    use std::io::Read;
    let bad = |m: String| TrainError::checkpoint(path, m);
    let mut f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| bad("not a safetensors file (shorter than its header)".into()))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(bad(format!("not a safetensors file (header length {n})")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|_| bad("not a safetensors file (truncated header)".into()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("not a safetensors file (header: {e})")))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_fcn_checkpoints_read_without_trunk_norm() {
        let check = |kind: &str, keys: &[&str], want_norm: bool| {
            let config = format!("name = \"x\"\n[model]\nmodel = \"{kind}\"\nbatch_norm = true\n");
            let model =
                keys.iter().map(|k| (k.to_string(), HostTensor { shape: vec![1], values: vec![0.0] })).collect();
            let read: toml::Table = fcn_without_trunk_norm(config, &model).parse().unwrap();
            assert_eq!(read["model"]["batch_norm"].as_bool(), Some(want_norm), "{kind} {keys:?}");
        };
        check("fcn8s", &["vgg.conv1_1.weight"], false);
        check("fcn32s", &["vgg.conv1_1.weight", "vgg.bn1_1.gamma"], true);
        check("unet", &["down.0.conv1.weight"], true);
    }

    fn row(train_loss: f64) -> MetricsRow {
        MetricsRow {
            step: 10,
            epoch: 1,
            train_loss,
            val_loss: 0.5,
            pixel_acc: 0.9,
            mean_acc: f64::NAN,
            mean_iou: 0.4,
            fw_iou: 0.8,
            mean_dice: f64::INFINITY,
            lr: 1e-3,
            elapsed_s: 2.5,
            loss_scale: f64::NAN,
            overflow_skips: 0,
        }
    }

    /// A checkpoint whose state holds NaN and infinity (a validation with no training step
    /// since the previous one, a class never seen) saves and loads; the non-finite values come
    /// back as NaN, the finite ones exactly.
    #[test]
    fn non_finite_metrics_do_not_make_a_checkpoint_unreadable() {
        let state =
            TrainState { step: 10, best_miou: f64::NAN, history: vec![row(f64::NAN), row(0.25)], ..Default::default() };
        let ck = Checkpoint {
            model: BTreeMap::from([("w".to_string(), HostTensor { shape: vec![2], values: vec![1.0, -2.0] })]),
            optim: BTreeMap::new(),
            config: "name = \"x\"".into(),
            classes: ClassInfo { names: vec!["a".into()], colors: vec![[1, 2, 3]], ignore_index: 255 },
            state,
        };
        let path = std::env::temp_dir().join(format!("segkit-nan-{}.safetensors", std::process::id()));
        ck.save(&path, None).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let h = &back.state.history;
        assert!(h[0].train_loss.is_nan() && h[0].mean_acc.is_nan() && h[0].mean_dice.is_nan());
        assert!(back.state.best_miou.is_nan());
        assert_eq!((h[1].train_loss, h[1].val_loss, h[1].lr), (0.25, 0.5, 1e-3));
        assert_eq!(back.model, ck.model);
    }

    /// The earlier version wrote NaN as `null` and could not read it: such checkpoints read now.
    #[test]
    fn nulls_written_by_the_earlier_version_read_as_nan() {
        let json = r#"{"step":1,"epoch":0,"train_loss":null,"val_loss":0.1,"pixel_acc":0.2,"mean_acc":0.3,
            "mean_iou":0.4,"fw_iou":0.5,"mean_dice":0.6,"lr":0.01,"elapsed_s":1.0}"#;
        let r: MetricsRow = serde_json::from_str(json).unwrap();
        assert!(r.train_loss.is_nan());
        assert_eq!(r.val_loss, 0.1);
    }
}
