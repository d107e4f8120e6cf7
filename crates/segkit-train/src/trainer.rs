//! The training loop: data on worker threads, forward, pixel-wise loss, backward, optimiser,
//! validation on the whole split, checkpoints, metrics.csv and pictures.
//!
//! Resume is exact: a checkpoint is written at an optimiser-step boundary with the position in
//! the epoch; batches are a pure function of (seed, epoch, position), dropout is re-seeded from
//! (seed, step), and the optimiser state travels with the weights. A resumed run therefore
//! computes the same losses as an uninterrupted one, to float noise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use segkit_data::synth::mix_seed;
use segkit_data::{Dataset, LoaderSpec};
use segkit_models::conv::as_dtype;
use segkit_models::{ModelKind, SegModel};

use crate::amp::{LossScaler, Precision};
use crate::checkpoint::{Checkpoint, ClassInfo, MetricsRow, TrainState};
use crate::config::RunConfig;
use crate::eval::{evaluate, train_window};
use crate::loss::{cross_entropy_weighted, median_frequency_weights};
use crate::metrics::Scores;
use crate::optim::{LrSchedule, Optimizer};
use crate::params::{self, HostTensor, to_f32};
use crate::plot::{self, Series};
use crate::tensorboard::EventWriter;
use crate::{TrainError, device, write_atomic};

/// What the loop reports; the CLI turns these into progress bars and lines.
pub enum Event<'a> {
    Started {
        run_dir: &'a Path,
        device: &'a str,
        parameters: usize,
        train_images: usize,
        val_images: usize,
        steps_per_epoch: usize,
        total_steps: usize,
        start_step: usize,
        notes: &'a [String],
    },
    Step {
        step: usize,
        total: usize,
        epoch: usize,
        loss: f32,
        lr: f64,
        images_per_s: f64,
        /// Seconds this step waited for its batches from the loader (decode, augmentation,
        /// batching not yet done by the worker threads): what the data pipeline costs a step.
        data_wait_s: f64,
        /// Seconds from the last batch's arrival to the end of the optimiser step.
        compute_s: f64,
    },
    Validating {
        done: usize,
        total: usize,
    },
    Validated {
        row: &'a MetricsRow,
        scores: &'a Scores,
        classes: &'a [String],
        best: bool,
    },
    Saved {
        path: &'a Path,
    },
    /// Mixed precision: a step whose f16 gradients overflowed, skipped (no update); the loss scale
    /// is now `scale`.
    Overflow {
        step: usize,
        total: usize,
        scale: f32,
        overflows: usize,
    },
    /// A step whose loss or gradient was not finite, skipped (`train.skip_nonfinite`): no update.
    Skipped {
        step: usize,
        total: usize,
        what: &'static str,
        skipped: usize,
        limit: usize,
    },
}

pub trait Observer {
    fn event(&mut self, event: Event<'_>);
}

/// An observer that ignores everything (tests, library use).
pub struct Quiet;
impl Observer for Quiet {
    fn event(&mut self, _: Event<'_>) {}
}

pub struct TrainOptions {
    /// Continue the run in this directory from its `last.safetensors`.
    pub resume: Option<PathBuf>,
    /// Set by Ctrl-C: the loop saves a checkpoint at the next step boundary and returns.
    pub stop: Arc<AtomicBool>,
    /// Resume even when the config differs from the checkpoint's in keys that change the
    /// trajectory (model, data, batch size, optimiser, seed, ...).
    pub resume_anyway: bool,
}

/// Keys a resume may change without changing what the steps compute: how long to train, how
/// often to validate and save, how to load data and where to run.
const RESUME_HARMLESS: [&str; 15] = [
    "train.epochs",
    "train.max_steps",
    "train.val_every",
    "train.val_every_steps",
    "train.checkpoint_every",
    "train.skip_nonfinite",
    "train.patience",
    "train.workers",
    "train.prefetch",
    "train.device",
    // Checkpoints are f32 whatever the precision (amp.rs).
    "train.precision",
    "train.grid_images",
    "train.val_limit",
    "train.bn_recalibrate",
    "train.out_dir",
];

/// `section.key = value` for every key of a TOML config; an error when it does not parse.
fn flat_config(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in toml::from_str::<toml::Table>(text).map_err(|e| e.to_string())? {
        match v {
            toml::Value::Table(sec) => {
                for (k2, v2) in sec {
                    out.insert(format!("{k}.{k2}"), v2.to_string());
                }
            }
            v => {
                out.insert(k, v.to_string());
            }
        }
    }
    Ok(out)
}

/// Every `section.key` of a TOML config (for checks that each key is documented).
pub fn flat_config_keys(text: &str) -> Vec<String> {
    flat_config(text).map(|m| m.into_keys().collect()).unwrap_or_default()
}

/// The keys whose values differ between the checkpoint's config and the one in effect now:
/// `(trajectory-changing, harmless)`, each as "key: old -> new".
fn config_changes(stored: &str, now: &str) -> (Vec<String>, Vec<String>) {
    let (a, b) = match (flat_config(stored), flat_config(now)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return (vec![format!("the checkpoint's config cannot be compared: {e}")], vec![]),
    };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let (mut bad, mut ok) = (Vec::new(), Vec::new());
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y || x.is_none() {
            // Absent in the checkpoint: a key added by a later version, filled with its neutral value.
            continue;
        }
        let line = format!("{k}: {} -> {}", x.map_or("(absent)", |v| v), y.map_or("(absent)", |v| v));
        if RESUME_HARMLESS.contains(&k.as_str()) { ok.push(line) } else { bad.push(line) }
    }
    (bad, ok)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `stopped_early`: `train.patience` validations without a better mean IoU ended the run
    /// before its last step.
    Finished {
        run_dir: PathBuf,
        steps: usize,
        best_miou: f64,
        best_step: usize,
        stopped_early: bool,
    },
    Interrupted {
        run_dir: PathBuf,
        step: usize,
    },
}

/// A fresh run directory under `out_dir`: `name`, or `name-2`, `name-3`, ... if taken.
fn new_run_dir(out_dir: &Path, name: &str) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let mut k = 1;
    loop {
        let dir = if k == 1 { out_dir.join(name) } else { out_dir.join(format!("{name}-{k}")) };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => k += 1,
            Err(e) => return Err(TrainError::io(&dir, e)),
        }
    }
}

/// The file `init_from` names: a checkpoint file, or the best (else last) of a run directory.
fn init_weights(init_from: &str) -> Result<(PathBuf, Checkpoint), TrainError> {
    let path = crate::eval::checkpoint_path(Path::new(init_from)).map_err(|e| {
        TrainError::Config(format!(
            "train.init_from: {e}; train that run first (staged FCN: 32s, then 16s, then 8s), or start fresh with --set train.init_from=\"\""
        ))
    })?;
    Ok((path.clone(), Checkpoint::load(&path)?))
}

/// The checkpoint a run continues from, and the one before it (kept until the next is complete).
pub const LAST: &str = "last.safetensors";
pub const PREVIOUS: &str = "last.previous.safetensors";

struct Run {
    cfg: RunConfig,
    dir: PathBuf,
    classes: ClassInfo,
    device: Device,
    /// The step of the newest checkpoint written or resumed from.
    saved: std::cell::Cell<Option<usize>>,
    /// This process's TensorBoard event file (`tensorboard.rs`).
    events: std::cell::RefCell<EventWriter>,
}

/// The newest readable checkpoint of `dir`: `last`, or, when that one is unreadable (a disk
/// error, a bad copy), the one before it, saying so in `notes`. The unreadable file is kept
/// beside them for inspection.
fn resume_checkpoint(dir: &Path, notes: &mut Vec<String>) -> Result<(PathBuf, Checkpoint), TrainError> {
    let last = dir.join(LAST);
    let e_last = match Checkpoint::load(&last) {
        Ok(ck) => return Ok((last, ck)),
        Err(e) => e,
    };
    let prev = dir.join(PREVIOUS);
    if !prev.is_file() {
        return Err(e_last);
    }
    match Checkpoint::load(&prev) {
        Ok(ck) => {
            let kept = dir.join("last.unreadable.safetensors");
            if last.exists() {
                std::fs::rename(&last, &kept).map_err(|e| TrainError::write(&kept, e))?;
            }
            notes.push(format!(
                "{e_last}\n  resuming from the checkpoint before it, {} (step {}); the unreadable file is kept as {}",
                prev.display(),
                ck.state.step,
                kept.display()
            ));
            Ok((prev, ck))
        }
        Err(e_prev) => Err(TrainError::checkpoint(
            &last,
            format!("cannot resume: {e_last}; and the checkpoint before it: {e_prev}"),
        )),
    }
}

impl Run {
    fn save(
        &self,
        model: &SegModel,
        opt: &Optimizer,
        state: &TrainState,
        obs: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        let optim = opt
            .state
            .slots
            .iter()
            .map(|(k, t)| (k.clone(), HostTensor { shape: t.dims().to_vec(), values: to_f32(t.clone()) }))
            .collect();
        let mut state = state.clone();
        state.optim_steps = opt.state.steps;
        // Batch norm's running statistics hold their latest update apart until they are
        // synchronised, which `valid()` does: collected from the training model directly, a
        // checkpoint would carry statistics one step old and a resumed run would validate
        // differently from an uninterrupted one.
        let ck = Checkpoint {
            model: params::collect(&model.valid()),
            optim,
            config: self.cfg.to_toml(),
            classes: self.classes.clone(),
            state,
        };
        let path = self.dir.join(LAST);
        ck.save(&path, Some(&self.dir.join(PREVIOUS)))?;
        self.saved.set(Some(ck.state.step));
        obs.event(Event::Saved { path: &path });
        Ok(())
    }

    fn write_metrics(&self, history: &[MetricsRow]) -> Result<(), TrainError> {
        let mut csv = String::from(MetricsRow::HEADER);
        csv.push('\n');
        for r in history {
            csv.push_str(&r.csv());
            csv.push('\n');
        }
        write_atomic(&self.dir.join("metrics.csv"), csv.as_bytes())?;
        let pts = |f: fn(&MetricsRow) -> f64| history.iter().map(|r| (r.step as f64, f(r))).collect::<Vec<_>>();
        let loss = plot::line_chart(
            &format!("{}: loss", self.cfg.name),
            "optimiser step",
            "loss",
            &[
                Series { name: "train".into(), color: plot::SERIES[0], points: pts(|r| r.train_loss) },
                Series { name: "validation".into(), color: plot::SERIES[1], points: pts(|r| r.val_loss) },
            ],
            None,
        );
        loss.save(&self.dir.join("loss.png"))?;
        let miou = plot::line_chart(
            &format!("{}: validation mean IoU", self.cfg.name),
            "optimiser step",
            "mean IoU",
            &[
                Series { name: "mean IoU".into(), color: plot::SERIES[2], points: pts(|r| r.mean_iou) },
                Series { name: "pixel acc".into(), color: plot::SERIES[4], points: pts(|r| r.pixel_acc) },
            ],
            Some((0.0, 1.0)),
        );
        miou.save(&self.dir.join("miou.png"))
    }
}

/// One start of a run (a fresh run or a resume), as `run.json` lists them, so that two runs can
/// be told apart later: what was run, by which build, on which device and data.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Session {
    /// Seconds since 1970 (UTC).
    pub started: u64,
    /// The process's command line, as given.
    pub command: Vec<String>,
    pub segkit_version: String,
    /// The git commit segkit was built from (`-dirty`: with uncommitted changes), empty outside
    /// a checkout.
    pub git_commit: String,
    /// The device line (`device::select`'s description).
    pub device: String,
    /// The step the session started from (0: a fresh run).
    pub from_step: usize,
    /// The data: its root, the number of training and validation samples, and a CRC-32 of their
    /// ids and paths in split order (any added, removed, renamed or reordered file changes it).
    pub data_root: String,
    pub train_samples: usize,
    pub val_samples: usize,
    pub split_crc32: String,
}

/// `run.json`: every [`Session`] of the run, oldest first.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RunMeta {
    pub sessions: Vec<Session>,
}

fn split_fingerprint(train: &[segkit_data::SampleRef], val: &[segkit_data::SampleRef]) -> String {
    let mut h = crc32fast::Hasher::new();
    for (tag, samples) in [("train", train), ("val", val)] {
        h.update(tag.as_bytes());
        for s in samples {
            h.update(s.id.as_bytes());
            h.update(&[0]);
            if let Some(p) = &s.image {
                h.update(p.to_string_lossy().as_bytes());
            }
            h.update(&[0]);
        }
    }
    format!("{:08x}", h.finalize())
}

/// Adds this session to `dir/run.json` (a damaged or missing file starts a new list).
fn record_session(dir: &Path, session: Session) -> Result<(), TrainError> {
    let path = dir.join("run.json");
    let mut meta: RunMeta =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    meta.sessions.push(session);
    write_atomic(&path, serde_json::to_string_pretty(&meta).expect("serialisable").as_bytes())
}

/// Trains `cfg` (or resumes `opts.resume`), reporting to `obs`.
pub fn train(cfg: RunConfig, opts: TrainOptions, obs: &mut dyn Observer) -> Result<Outcome, TrainError> {
    let mut cfg = cfg;
    let mut notes = Vec::new();
    let (device, device_desc) = device::select(&cfg.train.device)?;
    let ad = device.clone().autodiff();
    let on_cpu = matches!(device.clone().inner().as_dispatch(), burn::backend::DispatchDevice::Flex(_));
    if cfg.train.precision != Precision::F32 {
        // What the run does is what its stored config says (amp.rs: the CPU keeps f32).
        let why = if on_cpu {
            Some("the CPU trains in f32 (mixed precision is for GPUs)")
        } else if !device::computes_f16(&device) {
            Some("this GPU has no f16 arithmetic, so it trains in f32")
        } else {
            None
        };
        if let Some(why) = why {
            notes.push(format!("train.precision = \"{}\": {why}", cfg.train.precision.name()));
            cfg.train.precision = Precision::F32;
        }
    }
    let t = &cfg.train;

    // Data.
    let root = PathBuf::from(&cfg.data.root);
    let ds = Arc::new(Dataset::open(&cfg.data, &root)?);
    if cfg.model.classes == 0 {
        // "From the data": the run's stored config records the count.
        cfg.model.classes = ds.classes.len();
        notes.push(format!("{} classes from {}: {}", ds.classes.len(), ds.class_source, ds.classes.names.join(", ")));
    }
    if ds.classes.len() != cfg.model.classes {
        return Err(TrainError::Config(format!(
            "{}: the dataset has {} classes ({}; from {}) but model.classes = {} (from the config); \
             set model.classes = {} or 0 (from the data), or data.class_names to the model's classes",
            ds.root.display(),
            ds.classes.len(),
            ds.classes.names.join(", "),
            ds.class_source,
            cfg.model.classes,
            ds.classes.len()
        )));
    }
    let train_samples = ds.split(&cfg.data.train_split)?;
    if cfg.model.in_channels == 0 {
        // "From the data": the first training image decides (synthetic data is colour).
        let first = train_samples.first().and_then(|s| s.image.as_ref());
        cfg.model.in_channels = match first {
            Some(path) => segkit_data::image_io::image_channels(path)?,
            None => 3,
        };
        notes.push(format!("{} input channels, from the first training image", cfg.model.in_channels));
    }
    let mut val_samples = ds.split(&cfg.data.val_split)?;
    for (what, split, n) in [
        ("training", &cfg.data.train_split, train_samples.len()),
        ("validation", &cfg.data.val_split, val_samples.len()),
    ] {
        if n == 0 {
            return Err(TrainError::Config(format!(
                "{}: the {what} split `{split}` has no samples",
                ds.root.display()
            )));
        }
    }
    if t.val_limit > 0 {
        val_samples.truncate(t.val_limit);
    }
    let window = train_window(&cfg)?;
    if let Some(w) = window.filter(|w| w.output != cfg.augment.crop) {
        // The U-Net's size rule: the crop is rounded up to the next output its geometry allows.
        notes.push(format!(
            "augment.crop = {}: the U-Net trains on {}x{} output tiles ({}x{} input), the next size its geometry allows",
            cfg.augment.crop, w.output, w.output, w.input, w.input
        ));
    }
    let is_unet_valid = cfg.model.model == segkit_models::ModelKind::Unet && !cfg.model.padded;
    let border = if t.border_weights {
        if cfg.model.classes != 2 {
            return Err(TrainError::Config(format!(
                "train.border_weights needs two-class cell/membrane masks; this data has {} classes",
                cfg.model.classes
            )));
        }
        let cell_class = crate::isbi::cell_class(&ds.classes.names);
        notes.push(format!(
            "border weights: w0 {} sigma {} px between cells of class {cell_class} ({})",
            t.border_w0,
            t.border_sigma,
            ds.classes.names.get(cell_class as usize).map_or("?", String::as_str)
        ));
        Some(segkit_data::BorderSpec { cell_class, w0: t.border_w0 as f32, sigma: t.border_sigma as f32 })
    } else {
        None
    };
    let spec = LoaderSpec {
        dataset: ds.clone(),
        samples: Arc::new(train_samples.clone()),
        augment: cfg.augment.clone(),
        window,
        mirror: is_unet_valid,
        channels: cfg.model.in_channels,
        batch_size: t.batch_size,
        seed: t.seed,
        workers: t.workers.max(1),
        prefetch: t.prefetch.max(1),
        border,
    };
    let classes = ClassInfo {
        names: ds.classes.names.clone(),
        colors: ds.classes.colors.clone(),
        ignore_index: ds.classes.ignore_index,
    };

    // Class weights: given, or median frequency over the training masks.
    let weights: Option<Vec<f32>> = if !t.class_weights.is_empty() {
        Some(t.class_weights.iter().map(|&w| w as f32).collect())
    } else if t.median_frequency {
        let n = cfg.model.classes;
        let (mut class_px, mut image_px) = (vec![0u64; n], vec![0u64; n]);
        for s in &train_samples {
            let (_, labels) = ds.load(s, cfg.model.in_channels)?;
            let mut here = vec![0u64; n];
            for &l in &labels {
                if (l as usize) < n {
                    here[l as usize] += 1;
                }
            }
            let total: u64 = here.iter().sum();
            for c in 0..n {
                if here[c] > 0 {
                    class_px[c] += here[c];
                    image_px[c] += total;
                }
            }
        }
        let w = median_frequency_weights(&class_px, &image_px);
        notes.push(format!(
            "median-frequency class weights: {}",
            w.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(", ")
        ));
        Some(w)
    } else {
        None
    };
    let mut step_spec = StepSpec::new(&cfg, weights.as_deref(), ds.classes.ignore_index, &ad);
    let weights_eval = weights.as_ref().map(|w| Tensor::<1>::from_data(TensorData::new(w.clone(), [w.len()]), &device));

    // Model, optimiser, position: fresh, initialised from another run, or resumed.
    // The initial weights are drawn on the CPU whatever the training device: each device has its
    // own random stream, and a seed must give the same starting model on the CPU and on any GPU
    // (so that a run can be reproduced, and compared step by step, across devices).
    let cpu = Device::flex();
    cpu.seed(t.seed);
    let initial = params::collect(&SegModel::new(&cfg.model, &cpu)?);
    let (mut model, _) = params::load(SegModel::new(&cfg.model, &ad)?, &initial);
    let mut opt = Optimizer::new(cfg.optim_settings());
    let mut state = TrainState::default();
    // The lock is taken before anything is written into the directory.
    let take_lock = |dir: &Path, notes: &mut Vec<String>| {
        let (guard, stale) = crate::lock::acquire(dir)?;
        if let Some(pid) = stale {
            notes.push(format!("took over the lock left by process {pid}, which is no longer running"));
        }
        Ok::<_, TrainError>(guard)
    };
    let (dir, _lock) = match &opts.resume {
        Some(dir) => {
            let guard = take_lock(dir, &mut notes)?;
            // Temporary files of a write a kill interrupted: never renamed, so never used.
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let (path, ck) = resume_checkpoint(dir, &mut notes)?;
            // A run from before `model.batch_norm` applied to FCNs stored `true` for a trunk
            // without batch norm (checkpoint::fcn_without_trunk_norm reads its checkpoint's
            // config as `false`): continue it with the model it has.
            let fcn = cfg.model.model != ModelKind::Unet;
            if fcn && cfg.model.batch_norm && !ck.model.keys().any(|k| k.starts_with("vgg.bn")) {
                cfg.model.batch_norm = false;
                model = SegModel::new(&cfg.model, &ad)?;
                notes.push("model.batch_norm = false: this FCN run predates batch norm in the VGG trunk".into());
            }
            let (changed, harmless) = config_changes(&ck.config, &cfg.to_toml());
            if !changed.is_empty() && !opts.resume_anyway {
                return Err(TrainError::Config(format!(
                    "{}: resuming with a config that changes the run's trajectory:\n  {}\n\
                     resume without those --set overrides, or pass --resume-anyway to continue with them",
                    path.display(),
                    changed.join("\n  ")
                )));
            }
            for c in changed.iter().chain(&harmless) {
                notes.push(format!("resumed with a changed config: {c}"));
            }
            let (m, report) = params::load(model, &ck.model);
            if !report.missing.is_empty() || !report.mismatched.is_empty() {
                return Err(TrainError::checkpoint(
                    &path,
                    format!(
                        "does not fit the config's model: missing {:?}, mismatched {:?}",
                        report.missing, report.mismatched
                    ),
                ));
            }
            model = m;
            for (k, h) in ck.optim {
                let n = h.values.len();
                opt.state.slots.insert(k, Tensor::<1>::from_data(TensorData::new(h.values, [n]), &device));
            }
            opt.state.steps = ck.state.optim_steps;
            state = ck.state;
            notes.push(format!("resumed from {} at step {}", path.display(), state.step));
            // The config in effect from here on (a resume may override e.g. the device).
            write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
            (dir.clone(), guard)
        }
        None => {
            if !t.backbone_weights.is_empty() {
                let path = Path::new(&t.backbone_weights);
                let wanted = crate::import::backbone_normalize(path)?.unwrap_or(segkit_data::Normalize::Imagenet);
                if wanted != cfg.augment.normalize {
                    return Err(TrainError::Config(format!(
                        "{} expects inputs normalised as {:?}; set augment.normalize to match (it is {:?})",
                        path.display(),
                        wanted,
                        cfg.augment.normalize
                    )));
                }
                let (m, n) = crate::import::load_backbone(model, path)?;
                model = m;
                notes.push(format!(
                    "trunk initialised from {} ({n} tensors; inputs normalised as {wanted:?})",
                    path.display()
                ));
            }
            if !t.init_from.is_empty() {
                let (path, ck) = init_weights(&t.init_from)?;
                let (m, report) = params::load(model, &ck.model);
                model = m;
                notes.push(format!(
                    "initialised {} tensors from {} (by name); kept fresh: {}",
                    report.loaded.len(),
                    path.display(),
                    report
                        .missing
                        .iter()
                        .chain(report.mismatched.iter().map(|m| &m.0))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let dir = new_run_dir(Path::new(&t.out_dir), &cfg.name)?;
            let guard = take_lock(&dir, &mut notes)?;
            write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
            (dir, guard)
        }
    };
    if t.bn_recalibrate > 0 {
        notes.push(if crate::bnstats::has_batch_norm(&model) {
            format!(
                "batch-norm statistics recalibrated before each validation on {} whole training images",
                t.bn_recalibrate.min(train_samples.len())
            )
        } else {
            "train.bn_recalibrate: the model has no batch norm, nothing to recalibrate".into()
        });
    }
    // The loss scale continues where the checkpoint left it (a fresh one after an f32 run).
    step_spec.scaler = LossScaler::resume(state.loss_scale, state.scale_good_steps, state.overflow_skips);
    if t.precision == Precision::F16Mixed {
        notes.push(format!(
            "f16-mixed: f16 compute, f32 master weights, loss scale {} (x2 every {} steps without overflow)",
            step_spec.scaler.scale(),
            crate::amp::GROWTH_INTERVAL
        ));
    }
    let resumed_at = opts.resume.as_ref().map(|_| state.step);
    record_session(
        &dir,
        Session {
            started: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            command: std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect(),
            segkit_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("SEGKIT_GIT_COMMIT").into(),
            device: device_desc.clone(),
            from_step: state.step,
            data_root: cfg.data.root.clone(),
            train_samples: train_samples.len(),
            val_samples: val_samples.len(),
            split_crc32: split_fingerprint(&train_samples, &val_samples),
        },
    )?;
    // A resumed run computes from the step after its checkpoint: TensorBoard drops what the
    // earlier files hold from there on (tensorboard.rs).
    let events = EventWriter::create(&dir, resumed_at.map(|s| s + 1))?;
    let run = Run {
        cfg: cfg.clone(),
        dir: dir.clone(),
        classes,
        device: device.clone(),
        saved: resumed_at.into(),
        events: events.into(),
    };

    let batches = spec.batches_per_epoch();
    let accum = t.accum_steps;
    let steps_per_epoch = (batches / accum).max(1);
    let epoch_steps = t.epochs * steps_per_epoch;
    let total_steps =
        if t.max_steps > 0 && (t.epochs == 0 || t.max_steps < epoch_steps) { t.max_steps } else { epoch_steps };
    let sched = cfg.lr_schedule(total_steps);
    obs.event(Event::Started {
        run_dir: &dir,
        device: &device_desc,
        parameters: model.num_params(),
        train_images: train_samples.len(),
        val_images: val_samples.len(),
        steps_per_epoch,
        total_steps,
        start_step: state.step,
        notes: &notes,
    });

    let started = Instant::now();
    let elapsed0 = state.elapsed_s;
    let vctx = ValContext {
        ds: &ds,
        samples: &val_samples,
        train_samples: &train_samples,
        ad: &ad,
        weights: weights_eval.as_ref(),
        sched: &sched,
        started,
        elapsed0,
    };
    while state.step < total_steps {
        // A run killed after the validation that ended it early stays ended.
        if patience_exhausted(&state, t.patience) {
            return Ok(finished(dir, &state, true));
        }
        let epoch = state.epoch;
        let mut loader = spec.epoch(epoch as u64, state.batch);
        // The batches of the step in progress (more than one with gradient accumulation).
        let mut group: Vec<StepBatch> = Vec::with_capacity(accum);
        let mut tick = Instant::now();
        let mut images = 0usize;
        let mut usable = (batches / accum) * accum;
        if usable == 0 {
            usable = batches;
        }
        let mut data_wait_s = 0f64;
        loop {
            let waiting = Instant::now();
            let Some((k, batch)) = loader.next() else { break };
            data_wait_s += waiting.elapsed().as_secs_f64();
            if k >= usable {
                break;
            }
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    // Keep the position at the start of this step so that a fixed dataset resumes here.
                    state.elapsed_s = elapsed0 + started.elapsed().as_secs_f64();
                    run.save(&model, &opt, &state, obs)?;
                    return Err(e.into());
                }
            };
            images += batch.batch;
            let (x, y) = batch.to_device(&ad);
            group.push(StepBatch { images: x, labels: y, border: batch.border_to_device(&ad) });
            if group.len() < accum.min(usable) {
                continue;
            }
            let lr = sched.lr(state.step);
            let computing = Instant::now();
            let (m, outcome) = optimiser_step(model, &mut opt, lr, std::mem::take(&mut group), &step_spec, state.step);
            let compute_s = computing.elapsed().as_secs_f64();
            model = m;
            let group_loss = match outcome {
                StepOutcome::Updated { loss } => {
                    // In the state, so that a checkpoint carries it: after a resume, the next
                    // validation's train_loss still averages every step since the previous one.
                    state.interval_loss_sum += loss as f64;
                    state.interval_steps += 1;
                    Some(loss)
                }
                // Mixed precision's overflow is routine (the scale finds its level this way): the
                // step is skipped, counted, and the run goes on.
                StepOutcome::Overflow { scale } => {
                    obs.event(Event::Overflow {
                        step: state.step + 1,
                        total: total_steps,
                        scale,
                        overflows: step_spec.scaler.overflows(),
                    });
                    None
                }
                // A non-finite loss or gradient never reaches the weights: the step stops the
                // run, or, within `train.skip_nonfinite`, is skipped whole.
                StepOutcome::NonFinite { what, value } => {
                    if state.skipped >= t.skip_nonfinite {
                        return Err(TrainError::NonFinite {
                            what,
                            step: state.step + 1,
                            value,
                            lr,
                            base_lr: t.lr,
                            run_dir: dir.clone(),
                            last_good: run.saved.get(),
                        });
                    }
                    state.skipped += 1;
                    obs.event(Event::Skipped {
                        step: state.step + 1,
                        total: total_steps,
                        what,
                        skipped: state.skipped,
                        limit: t.skip_nonfinite,
                    });
                    None
                }
            };
            state.step += 1;
            state.batch = k + 1;
            (state.loss_scale, state.scale_good_steps, state.overflow_skips) = if t.precision == Precision::F16Mixed {
                (step_spec.scaler.scale() as f64, step_spec.scaler.good_steps(), step_spec.scaler.overflows())
            } else {
                (state.loss_scale, state.scale_good_steps, state.overflow_skips)
            };
            crate::fault::after_step(state.step);
            let secs = tick.elapsed().as_secs_f64().max(1e-9);
            if let Some(group_loss) = group_loss {
                let mixed = t.precision == Precision::F16Mixed;
                run.events.borrow_mut().scalars(
                    state.step,
                    &[
                        ("train/loss", group_loss as f64),
                        ("train/lr", lr),
                        ("train/images_per_s", images as f64 / secs),
                        ("train/step_s", secs),
                        ("train/loss_scale", if mixed { state.loss_scale } else { f64::NAN }),
                    ],
                )?;
                obs.event(Event::Step {
                    step: state.step,
                    total: total_steps,
                    epoch,
                    loss: group_loss,
                    lr,
                    images_per_s: images as f64 / secs,
                    data_wait_s,
                    compute_s,
                });
            }
            data_wait_s = 0.0;
            (images, tick) = (0, Instant::now());
            let stopping = opts.stop.load(Ordering::Relaxed);
            if stopping || (t.checkpoint_every > 0 && state.step % t.checkpoint_every == 0) {
                state.elapsed_s = elapsed0 + started.elapsed().as_secs_f64();
                run.save(&model, &opt, &state, obs)?;
            }
            if stopping {
                return Ok(Outcome::Interrupted { run_dir: dir, step: state.step });
            }
            if state.step >= total_steps {
                break;
            }
            if t.val_every_steps > 0 && state.step % t.val_every_steps == 0 {
                validate_and_save(&run, &mut model, &opt, &vctx, &mut state, epoch, obs)?;
                if patience_exhausted(&state, t.patience) {
                    return Ok(finished(dir, &state, true));
                }
            }
        }
        drop(loader);
        let finished_epoch = state.batch >= usable;
        if !finished_epoch && state.step < total_steps {
            // The loader ended early without an error: a worker thread died (a panic in data
            // code). Stop rather than retry the same batch forever; the position is saved.
            state.elapsed_s = elapsed0 + started.elapsed().as_secs_f64();
            run.save(&model, &opt, &state, obs)?;
            return Err(TrainError::Config(format!(
                "the data loader stopped at batch {} of epoch {} (a worker thread failed; see the message above); \
                 the run can be resumed from {}",
                state.batch,
                epoch + 1,
                dir.display()
            )));
        }
        // Completed epochs, for the record: the epoch just run counts once its last batch is in.
        let epochs_done = epoch + usize::from(finished_epoch);
        if finished_epoch && state.step < total_steps {
            state.epoch += 1;
            state.batch = 0;
        }
        let last = state.step >= total_steps;
        let due = last || (finished_epoch && t.val_every > 0 && epochs_done % t.val_every == 0);
        // A step-based validation may just have covered this step.
        let done = state.history.last().is_some_and(|r| r.step == state.step);
        if due && !done {
            validate_and_save(&run, &mut model, &opt, &vctx, &mut state, epochs_done, obs)?;
            if patience_exhausted(&state, t.patience) && state.step < total_steps {
                return Ok(finished(dir, &state, true));
            }
        } else if due && finished_epoch {
            run.save(&model, &opt, &state, obs)?;
        }
    }
    Ok(finished(dir, &state, false))
}

fn finished(run_dir: PathBuf, state: &TrainState, stopped_early: bool) -> Outcome {
    Outcome::Finished {
        run_dir,
        steps: state.step,
        best_miou: state.best_miou,
        best_step: state.best_step,
        stopped_early,
    }
}

/// Whether the last `patience` validations (0: never) all came after the best one: early
/// stopping. A function of the history only, so a resumed run decides as the uninterrupted one.
fn patience_exhausted(state: &TrainState, patience: usize) -> bool {
    patience > 0
        && !state.history.is_empty()
        && state.history.iter().filter(|r| r.step > state.best_step).count() >= patience
}

/// What a step computes besides the model and the optimiser: the loss and the accumulation.
pub struct StepSpec {
    /// Void label: pixels with it (or with a label past the last class) count nowhere.
    pub ignore: i64,
    /// Class weights of the loss, on the training (autodiff) device.
    pub weights: Option<Tensor<1>>,
    pub reduction: crate::loss::Reduction,
    /// Batches per optimiser step; each batch's loss is divided by it.
    pub accum: usize,
    /// The run's seed: dropout is seeded from (seed, step, batch of the step).
    pub seed: u64,
    /// `train.precision` as the device runs it (f32 on the CPU).
    pub precision: Precision,
    /// Mixed precision's dynamic loss scale (used under f16-mixed only).
    pub scaler: LossScaler,
}

impl StepSpec {
    /// The spec of `cfg`'s `[train]` section with the given class weights and void label.
    pub fn new(cfg: &RunConfig, weights: Option<&[f32]>, ignore: u8, device: &Device) -> Self {
        StepSpec {
            ignore: ignore as i64,
            weights: weights.map(|w| Tensor::<1>::from_data(TensorData::new(w.to_vec(), [w.len()]), device)),
            reduction: cfg.train.loss,
            accum: cfg.train.accum_steps,
            seed: cfg.train.seed,
            precision: cfg.train.precision,
            scaler: LossScaler::resume(0.0, 0, 0),
        }
    }
}

/// One batch on the training device.
pub struct StepBatch {
    pub images: Tensor<4>,
    pub labels: Tensor<3, Int>,
    /// The U-Net border weights per label pixel (`train.border_weights`), added to the class weights.
    pub border: Option<Tensor<3>>,
}

impl From<(Tensor<4>, Tensor<3, Int>)> for StepBatch {
    fn from((images, labels): (Tensor<4>, Tensor<3, Int>)) -> Self {
        StepBatch { images, labels, border: None }
    }
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepOutcome {
    /// The weights were updated; `loss` is the sum of the batches' losses, each divided by the
    /// accumulation count (the loss of the whole step).
    Updated { loss: f32 },
    /// A batch's loss or the gradients were not finite: the weights are unchanged.
    NonFinite { what: &'static str, value: f32 },
    /// Mixed precision: the scaled f16 gradients overflowed; the weights are unchanged and the
    /// loss scale has been halved (it is now `scale`).
    Overflow { scale: f32 },
}

/// One optimiser step: for each batch (more than one with gradient accumulation) dropout is
/// seeded from (seed, step, batch), then forward, loss divided by the accumulation count,
/// backward, with the loss and the gradients checked for finiteness; then the update at `lr`.
/// Under f16-mixed (`amp`) the batch enters the model as f16, the logits leave it as f32, the
/// loss is multiplied by the loss scale before backward and the gradients divided by it before
/// the update; scaled gradients that overflow skip the step and halve the scale.
/// The training loop runs every step through here, and so does `tests/parity.rs`, with
/// PyTorch's batches, against PyTorch's losses and weights.
pub fn optimiser_step<B: Into<StepBatch>>(
    model: SegModel,
    opt: &mut Optimizer,
    lr: f64,
    batches: Vec<B>,
    spec: &StepSpec,
    step: usize,
) -> (SegModel, StepOutcome) {
    let mut acc = GradientsAccumulator::<SegModel>::new();
    let mut single = None;
    let mut total = 0f32;
    let n = batches.len();
    let dtype = spec.precision.compute_dtype();
    let scale = (spec.precision == Precision::F16Mixed).then(|| spec.scaler.scale());
    for (i, batch) in batches.into_iter().enumerate() {
        let StepBatch { images: x, labels: y, border } = batch.into();
        x.device().seed(mix_seed(spec.seed, (step * spec.accum + i) as u64));
        let logits = as_dtype(model.forward(as_dtype(x, dtype)), DType::F32);
        let mut loss = cross_entropy_weighted(logits, y, spec.ignore, spec.weights.as_ref(), border, spec.reduction);
        if spec.accum > 1 {
            loss = loss.div_scalar(spec.accum as f64);
        }
        let value = to_f32(loss.clone().inner())[0];
        if !value.is_finite() {
            return (model, StepOutcome::NonFinite { what: "loss", value });
        }
        let scaled = match scale {
            Some(s) => loss.mul_scalar(s as f64),
            None => loss,
        };
        let grads = GradientsParams::from_grads(scaled.backward(), &model);
        if !params::gradients_finite(&model, &grads) {
            if scale.is_some() {
                spec.scaler.overflowed();
                return (model, StepOutcome::Overflow { scale: spec.scaler.scale() });
            }
            return (model, StepOutcome::NonFinite { what: "gradient", value: f32::NAN });
        }
        total += value;
        if n > 1 {
            acc.accumulate(&model, grads);
        } else {
            single = Some(grads);
        }
    }
    let mut grads = single.unwrap_or_else(|| acc.grads());
    if let Some(s) = scale {
        grads = params::scale_gradients(&model, grads, 1.0 / s as f64);
        spec.scaler.finite();
    }
    (opt.step(lr, model, grads), StepOutcome::Updated { loss: total })
}

/// What validation needs besides the model and the run's state.
struct ValContext<'a> {
    ds: &'a Dataset,
    samples: &'a [segkit_data::SampleRef],
    /// The training split and the autodiff device, for batch-norm recalibration.
    train_samples: &'a [segkit_data::SampleRef],
    ad: &'a Device,
    weights: Option<&'a Tensor<1>>,
    sched: &'a LrSchedule,
    started: Instant,
    elapsed0: f64,
}

/// Validation, then the last checkpoint, then (when this is the best so far) `best.safetensors`.
#[allow(clippy::too_many_arguments)]
fn validate_and_save(
    run: &Run,
    model: &mut SegModel,
    opt: &Optimizer,
    v: &ValContext<'_>,
    state: &mut TrainState,
    epochs_done: usize,
    obs: &mut dyn Observer,
) -> Result<(), TrainError> {
    let images = run.cfg.train.bn_recalibrate;
    if images > 0 {
        // The training model keeps the recalibrated statistics, so that the checkpoints saved
        // below evaluate as this validation did; its weights are untouched (`bnstats`).
        let (recalibrated, _) =
            crate::bnstats::recalibrate(model.clone(), &run.cfg, v.ds, v.train_samples, images, v.ad)?;
        *model = recalibrated;
    }
    let eval_model = model.valid();
    let keep = run.cfg.train.grid_images;
    let pass =
        evaluate(&eval_model, &run.cfg, v.ds, v.samples, &run.device, v.weights, keep, false, &mut |done, total| {
            obs.event(Event::Validating { done, total })
        })?;
    let scores = pass.cm.scores();
    let row = MetricsRow {
        step: state.step,
        epoch: epochs_done,
        train_loss: if state.interval_steps > 0 {
            state.interval_loss_sum / state.interval_steps as f64
        } else {
            f64::NAN
        },
        val_loss: pass.loss,
        pixel_acc: scores.pixel_acc,
        mean_acc: scores.mean_acc,
        mean_iou: scores.mean_iou,
        fw_iou: scores.fw_iou,
        mean_dice: scores.mean_dice,
        lr: v.sched.lr(state.step.saturating_sub(1)),
        elapsed_s: v.elapsed0 + v.started.elapsed().as_secs_f64(),
        loss_scale: if run.cfg.train.precision == Precision::F16Mixed { state.loss_scale } else { f64::NAN },
        overflow_skips: state.overflow_skips,
    };
    (state.interval_loss_sum, state.interval_steps) = (0.0, 0);
    let best = scores.mean_iou.is_finite() && (state.history.is_empty() || scores.mean_iou > state.best_miou);
    if best {
        state.best_miou = scores.mean_iou;
        state.best_step = state.step;
    }
    state.elapsed_s = row.elapsed_s;
    state.history.push(row.clone());
    run.write_metrics(&state.history)?;
    {
        let mut values: Vec<(String, f64)> = [
            ("val/loss", row.val_loss),
            ("val/pixel_acc", row.pixel_acc),
            ("val/mean_acc", row.mean_acc),
            ("val/mean_iou", row.mean_iou),
            ("val/fw_iou", row.fw_iou),
            ("val/mean_dice", row.mean_dice),
            ("train/interval_loss", row.train_loss),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec();
        for (name, iou) in run.classes.names.iter().zip(&scores.class_iou) {
            values.push((format!("val/iou/{name}"), iou.unwrap_or(f64::NAN)));
        }
        let values: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        run.events.borrow_mut().scalars(state.step, &values)?;
    }
    if !pass.kept.is_empty() {
        let colors = &run.classes.colors;
        let rows: Vec<Vec<segkit_data::ImageBuf>> = pass
            .kept
            .iter()
            .map(|(img, gt, pred)| {
                vec![
                    img.clone(),
                    plot::colorize(gt, img.width, img.height, colors),
                    plot::colorize(pred, img.width, img.height, colors),
                ]
            })
            .collect();
        let cell = pass.kept[0].0.height.clamp(96, 240);
        let grid = plot::image_grid(
            &["image".into(), "ground truth".into(), format!("prediction (step {})", state.step)],
            &rows,
            cell,
        );
        grid.save(&run.dir.join("val_samples.png"))?;
        run.events.borrow_mut().image(state.step, "val/samples", grid.png_bytes(), grid.width, grid.height)?;
    }
    if best {
        let title = format!("{}, validation at step {}", run.cfg.name, state.step);
        crate::eval::write_confusion_pngs(&run.dir, "confusion_matrix", &title, &run.classes.names, &pass.cm)?;
    }
    obs.event(Event::Validated { row: &row, scores: &scores, classes: &run.classes.names, best });
    run.save(model, opt, state, obs)?;
    if best {
        let best = run.dir.join("best.safetensors");
        let tmp = run.dir.join("best.safetensors.tmp");
        std::fs::copy(run.dir.join("last.safetensors"), &tmp).map_err(|e| TrainError::io(&tmp, e))?;
        std::fs::rename(&tmp, &best).map_err(|e| TrainError::io(&best, e))?;
    }
    Ok(())
}
