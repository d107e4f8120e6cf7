//! segkit's training library: loss, metrics, optimisers, checkpoints, the training loop and
//! evaluation.
//!
//! Invariants: nothing here prints (progress goes to an [`trainer::Observer`]); every file this
//! crate writes is written to a temporary name and renamed, so a kill never leaves a half file
//! (TensorBoard event files excepted: append-only streams, see [`tensorboard`]);
//! metrics come from one confusion matrix over a whole split.

pub mod adapter_check;
pub mod amp;
pub mod bench;
pub mod bnstats;
pub mod compare;
pub mod config;
pub mod device;
pub mod eval;
pub mod isbi;
pub mod lock;
pub mod loss;
pub mod metrics;
pub mod model_file;
pub mod objects;
pub mod optim;
pub mod params;
pub mod plot;
pub mod predict;
pub mod selftest;
pub mod tensorboard;
pub mod trainer;
pub mod tta;

// The model-file modules live under `model_file`; these keep their old paths working.
pub use model_file::{checkpoint, export, import, onnx, torchfile};

use std::path::{Path, PathBuf};

pub use config::{RunConfig, TrainConfig};
pub use metrics::{ConfusionMatrix, Scores};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    // The io errors are fields, not `source`s: their text is part of the message already, and a
    // source would print twice in the CLI's error chain.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// A file could not be written; whatever it was to replace is intact.
    #[error("cannot write {path}: {error}{}", write_hint(error))]
    Write { path: PathBuf, error: std::io::Error },
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
    #[error("{}", non_finite_message(what, *step, *value, *lr, *base_lr, run_dir, *last_good))]
    NonFinite {
        /// "loss" or "gradient".
        what: &'static str,
        /// The optimiser step being computed (counting from 1).
        step: usize,
        value: f32,
        /// The step's learning rate, and the configured one (`train.lr`).
        lr: f64,
        base_lr: f64,
        run_dir: PathBuf,
        /// The step of the last checkpoint written, if any; the diverged model is never saved.
        last_good: Option<usize>,
    },
}

fn non_finite_message(
    what: &str,
    step: usize,
    value: f32,
    lr: f64,
    base_lr: f64,
    dir: &Path,
    last_good: Option<usize>,
) -> String {
    let lower = format!("{:.1e}", base_lr / 10.0);
    let resume = match last_good {
        Some(k) => format!(
            "The last good checkpoint (step {k}) is kept: `segkit train --resume {} --set train.lr={lower} \
             --resume-anyway` continues from it at a lower rate.",
            dir.display()
        ),
        None => format!("No checkpoint was written before it ({}); start again with a lower rate.", dir.display()),
    };
    format!(
        "the {what} became {value} at step {step}. Likely causes: a learning rate too high for this model \
         (train.lr = {base_lr:.2e}, {lr:.2e} at this step; try {lower}, or a warm-up with train.warmup_steps), \
         train.loss = \"sum\" with a large image (try \"mean\"), extreme class weights, or labels outside the \
         classes (check them with `segkit data check`); train.skip_nonfinite = N skips up to N such batches \
         instead of stopping. {resume}"
    )
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), error: source }
    }
    pub fn write(path: &Path, source: std::io::Error) -> Self {
        TrainError::Write { path: path.to_path_buf(), error: source }
    }
    pub fn checkpoint(path: &Path, message: impl Into<String>) -> Self {
        TrainError::Checkpoint { path: path.to_path_buf(), message: message.into() }
    }
}

/// What to do about a failed write, for the kinds of failure a user can fix.
fn write_hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::StorageFull | K::QuotaExceeded => {
            " (the disk is full: free space and run again; files written before are intact)"
        }
        K::FileTooLarge => {
            " (over the file-size limit, `ulimit -f`, or the file system's; files written before are intact)"
        }
        K::PermissionDenied | K::ReadOnlyFilesystem => {
            " (no permission to write there; choose another train.out_dir or -o)"
        }
        _ => "",
    }
}

/// The temporary name `path` is written under before the rename.
fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")))
}

/// Writes `bytes` to `tmp`, flushed to the disk. On failure the partial file is removed.
fn write_synced(tmp: &Path, final_path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let result = (|| {
        let mut f = std::fs::File::create(tmp)?;
        fault::in_write(final_path, &mut f, bytes)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        TrainError::write(final_path, e)
    })
}

/// Makes a rename in `path`'s folder durable (a power cut after it keeps the new name).
fn sync_dir(path: &Path) {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()).and_then(|d| std::fs::File::open(d).ok()) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed, then a
/// rename. A kill or a full disk at any moment leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = tmp_path(path);
    write_synced(&tmp, path, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::write(path, e))?;
    sync_dir(path);
    Ok(())
}

/// [`write_atomic`], keeping the file it replaces as `previous`. At every moment `path` is a
/// complete file (the old one until the rename, then the new one), and `previous` is the one
/// before it or missing.
pub fn write_atomic_keep_previous(path: &Path, previous: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = tmp_path(path);
    write_synced(&tmp, path, bytes)?;
    if path.is_file() {
        let _ = std::fs::remove_file(previous);
        // A second name for the old file, not a copy: instant, and `path` stays in place.
        if std::fs::hard_link(path, previous).is_err() {
            std::fs::copy(path, previous).map_err(|e| TrainError::write(previous, e))?;
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| TrainError::write(path, e))?;
    sync_dir(path);
    Ok(())
}

/// Fault injection for the crash tests (`SEGKIT_FAULT`), read once per process:
/// `abort-in-write=N` aborts the process halfway through writing the N-th file (counting from
/// 1), `abort-in-write=last.safetensors:N` halfway through the N-th write of a file of that
/// name, `abort-after-step=N` right after optimiser step N, before anything of that step is
/// saved; several are separated by commas. The abort is as abrupt as SIGKILL: no destructor runs, no buffer is flushed.
/// `wrong-gpu-gradient` is not an abort: the selftest's gradient checks see the GPU side's first
/// gradient made wrong (`selftest`), as on a driver with a wrong kernel, so that the adapter check
/// can be tested without one.
pub mod fault {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone, Default)]
    struct Plan {
        /// Abort in the N-th write of a file with this name (any file when empty).
        in_write: Option<(String, usize)>,
        after_step: Option<usize>,
        wrong_gpu_gradient: bool,
    }

    fn plan() -> &'static Plan {
        static PLAN: OnceLock<Plan> = OnceLock::new();
        PLAN.get_or_init(|| {
            let mut p = Plan::default();
            for part in std::env::var("SEGKIT_FAULT").unwrap_or_default().split(',') {
                if part.trim() == "wrong-gpu-gradient" {
                    p.wrong_gpu_gradient = true;
                }
                let Some((k, v)) = part.split_once('=') else { continue };
                let (file, n) = v.trim().rsplit_once(':').unwrap_or(("", v.trim()));
                match (k.trim(), n.parse::<usize>()) {
                    ("abort-in-write", Ok(n)) => p.in_write = Some((file.to_string(), n)),
                    ("abort-after-step", Ok(n)) => p.after_step = Some(n),
                    _ => {}
                }
            }
            p
        })
    }

    static WRITES: AtomicUsize = AtomicUsize::new(0);

    /// Called with every file (its final name) before its bytes are written.
    pub(crate) fn in_write(path: &std::path::Path, f: &mut std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
        let Some((file, n)) = &plan().in_write else { return Ok(()) };
        if !file.is_empty() && path.file_name().and_then(|s| s.to_str()) != Some(file.as_str()) {
            return Ok(());
        }
        if WRITES.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            use std::io::Write;
            f.write_all(&bytes[..bytes.len() / 2])?;
            f.sync_all()?;
            std::process::abort();
        }
        Ok(())
    }

    /// Whether the selftest's gradient checks are to see a wrong GPU gradient.
    pub(crate) fn wrong_gpu_gradient() -> bool {
        plan().wrong_gpu_gradient
    }

    /// Called after every optimiser step.
    pub(crate) fn after_step(step: usize) {
        if plan().after_step == Some(step) {
            std::process::abort();
        }
    }
}
