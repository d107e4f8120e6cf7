//! `segkit train`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use segkit_models::ModelKind;
use segkit_train::RunConfig;
use segkit_train::trainer::{Event, Observer, Outcome, TrainOptions, train};

use crate::progress;

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML). Without it: the quick start on built-in synthetic data, or with
    /// --data, the default recipe of --model.
    config: Option<PathBuf>,
    /// Your dataset: a folder (image/mask pairs, VOC, YOLO) or a YOLO/Roboflow `data.yaml`.
    /// Layout, splits, classes and class names come from it.
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// unet, fcn8s, fcn16s, fcn32s or fcn8s-atonce (with --data and no CONFIG: its default recipe;
    /// default unet).
    #[arg(long, value_name = "KIND")]
    model: Option<String>,
    /// Epochs (train.epochs).
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size (train.batch_size).
    #[arg(long)]
    batch: Option<usize>,
    /// Training crop side in pixels (augment.crop; U-Net: its output tile).
    #[arg(long)]
    size: Option<usize>,
    /// Learning rate (train.lr).
    #[arg(long)]
    lr: Option<f64>,
    /// Run folder name under train.out_dir (name).
    #[arg(long)]
    name: Option<String>,
    /// Override a config key, e.g. --set train.lr=0.001 --set data.root=../data/camvid.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// auto (a GPU if there is one, else CPU), cpu, wgpu, vulkan or opengl.
    #[arg(long)]
    device: Option<String>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// With --resume: continue even if --set changes keys that alter the run's trajectory
    /// (model, data, batch size, optimiser, seed, ...). Length, validation and device changes
    /// are always allowed.
    #[arg(long, requires = "resume")]
    resume_anyway: bool,
    /// Use the GPU without checking it against the CPU first, even if it failed the check
    /// before: at your own risk, its results may be wrong.
    #[arg(long)]
    trust_device: bool,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    every: usize,
    classes_printed: bool,
    /// Seconds the steps waited for the loader, and spent computing, in this session.
    data_wait_s: f64,
    compute_s: f64,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            bar: None,
            started: Instant::now(),
            every: 1,
            classes_printed: false,
            data_wait_s: 0.0,
            compute_s: 0.0,
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Started {
                run_dir,
                device,
                parameters,
                train_images,
                val_images,
                steps_per_epoch,
                total_steps,
                start_step,
                notes,
            } => {
                println!("run directory: {}", run_dir.display());
                println!("device: {device}");
                println!(
                    "model: {} parameters; data: {train_images} training / {val_images} validation images; \
                     {steps_per_epoch} steps per epoch, {total_steps} steps",
                    crate::summary::group(parameters)
                );
                for n in notes {
                    println!("{n}");
                }
                self.every = (total_steps / 40).max(1);
                if progress::is_tty() {
                    let bar = progress::bar(total_steps as u64, "train");
                    bar.set_position(start_step as u64);
                    bar.reset_eta();
                    self.bar = Some(bar);
                }
            }
            Event::Step { step, total, epoch, loss, lr, images_per_s, data_wait_s, compute_s } => {
                self.data_wait_s += data_wait_s;
                self.compute_s += compute_s;
                let msg = format!("epoch {} loss {loss:.4} lr {lr:.2e} {images_per_s:.1} img/s", epoch + 1);
                match &self.bar {
                    Some(b) => {
                        b.set_position(step as u64);
                        b.set_message(msg);
                    }
                    None => {
                        if step % self.every == 0 || step == total {
                            println!("step {step}/{total} {msg} ({:.0} s)", self.started.elapsed().as_secs_f64());
                        }
                    }
                }
            }
            Event::Validating { done, total } => {
                if let Some(b) = &self.bar {
                    b.set_message(format!("validating {done}/{total}"));
                }
            }
            Event::Validated { row, scores, classes, best } => {
                let line = format!(
                    "validation at step {} ({} epochs): loss {:.4}, pixel acc {:.4}, mean acc {:.4}, mean IoU {:.4}, fw IoU {:.4}, Dice {:.4}{}",
                    row.step,
                    row.epoch,
                    row.val_loss,
                    row.pixel_acc,
                    row.mean_acc,
                    row.mean_iou,
                    row.fw_iou,
                    row.mean_dice,
                    if best { " (best)" } else { "" }
                );
                let mut text = line;
                if !self.classes_printed || best {
                    let per: Vec<String> = classes
                        .iter()
                        .zip(&scores.class_iou)
                        .map(|(n, v)| format!("{n} {}", v.map_or("-".into(), |v| format!("{v:.3}"))))
                        .collect();
                    text.push_str(&format!("\n  IoU per class: {}", per.join(", ")));
                    self.classes_printed = true;
                }
                match &self.bar {
                    Some(b) => b.println(text),
                    None => println!("{text}"),
                }
            }
            Event::Saved { .. } => {}
            Event::Overflow { step, total, scale, overflows } => {
                let text = format!(
                    "step {step}/{total}: f16 gradients overflowed, step skipped; loss scale now {scale} ({overflows} skipped in this run)"
                );
                match &self.bar {
                    Some(b) => b.println(text),
                    None => println!("{text}"),
                }
            }
            Event::Skipped { step, total, what, skipped, limit } => {
                let text = format!(
                    "warning: step {step}/{total} skipped: its {what} was not finite ({skipped} of at most {limit} skipped)"
                );
                match &self.bar {
                    Some(b) => {
                        b.set_position(step as u64);
                        b.println(text);
                    }
                    None => eprintln!("{text}"),
                }
            }
        }
    }
}

/// Where the run is and what to do with it: the best validation's figures (from the best
/// checkpoint's history) and the commands that use the checkpoint.
fn summary(run_dir: &std::path::Path, best_step: usize) {
    let best = run_dir.join("best.safetensors");
    let history = segkit_train::checkpoint::Checkpoint::read_meta(&best).map(|(_, _, s)| s.history).unwrap_or_default();
    if let Some(r) = history.iter().find(|r| r.step == best_step) {
        println!(
            "best: step {} (epoch {}): pixel acc {:.4}, mean acc {:.4}, mean IoU {:.4}, fw IoU {:.4}, Dice {:.4}",
            r.step, r.epoch, r.pixel_acc, r.mean_acc, r.mean_iou, r.fw_iou, r.mean_dice
        );
    }
    println!(
        "run directory: {} (best.safetensors, last.safetensors, metrics.csv, loss.png, miou.png, val_samples.png, TensorBoard events)",
        run_dir.display()
    );
    let d = run_dir.display();
    println!("next: segkit eval {d}");
    println!("      segkit predict {d} IMAGES_OR_FOLDER --out predictions/");
    println!("      segkit export {d} -o model.onnx        # or model.safetensors for PyTorch");
}

/// A flag raised by Ctrl-C; a second Ctrl-C exits at once.
pub fn ctrl_c() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C: the user really wants out.
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: saving a checkpoint at the end of this step (press again to quit at once)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// The `--set` overrides the short flags stand for; they come before the user's own `--set`s,
/// which therefore win.
fn flag_overrides(a: &Args) -> Result<Vec<String>> {
    let mut o = Vec::new();
    if let Some(path) = &a.data {
        // A data.yaml names its folder: the YOLO layout is read from there.
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if path.is_file() && !yaml {
            anyhow::bail!("--data {}: expected a dataset folder or a YOLO data.yaml", path.display());
        }
        let root = if path.is_file() { path.parent().map(PathBuf::from).unwrap_or_default() } else { path.clone() };
        if !root.is_dir() {
            anyhow::bail!("--data {}: no such folder or data.yaml", path.display());
        }
        o.push(format!("data.root={:?}", root.display().to_string()));
        if a.config.is_some() {
            // With a config made for another dataset: what describes the data comes from the data.
            for kv in ["data.format=\"auto\"", "data.class_names=[]", "data.num_classes=0", "model.classes=0"] {
                o.push(kv.to_string());
            }
        }
    }
    // With --data and no config, --model picks the recipe instead (see `run`).
    if let Some(m) = a.model.as_ref().filter(|_| a.config.is_some() || a.data.is_none()) {
        let kind = ModelKind::parse(m).with_context(|| format!("--model {m}: expected {MODELS}"))?;
        o.push(format!("model.model={:?}", kind.name()));
    }
    for (key, value) in [
        ("train.epochs", a.epochs.map(|v| v.to_string())),
        ("train.batch_size", a.batch.map(|v| v.to_string())),
        ("augment.crop", a.size.map(|v| v.to_string())),
        ("train.lr", a.lr.map(|v| format!("{v:e}"))),
    ] {
        if let Some(v) = value {
            o.push(format!("{key}={v}"));
        }
    }
    if let Some(n) = &a.name {
        o.push(format!("name={n:?}"));
    }
    if let Some(d) = &a.device {
        o.push(format!("train.device={d:?}"));
    }
    Ok(o)
}

const MODELS: &str = "unet, fcn8s, fcn16s, fcn32s or fcn8s-atonce";

pub fn run(a: Args) -> Result<i32> {
    let mut overrides = flag_overrides(&a)?;
    overrides.extend(a.set.iter().cloned());
    let cfg = match (&a.resume, &a.config, &a.data) {
        (Some(dir), _, _) => {
            let path = dir.join("config.toml");
            RunConfig::load_stored(&path, &overrides).with_context(|| format!("resuming {}", dir.display()))?
        }
        (None, Some(path), _) => RunConfig::load(path, &overrides)?,
        (None, None, Some(data)) => {
            let m = a.model.as_deref().unwrap_or("unet");
            let kind = ModelKind::parse(m).with_context(|| format!("--model {m}: expected {MODELS}"))?;
            println!(
                "training {} on {} with its default recipe (`segkit train --help`; --set changes any key)",
                kind.name(),
                data.display()
            );
            RunConfig::recipe(kind, &overrides)?
        }
        (None, None, None) => {
            println!("no config given: running the quick start (configs/quickstart.toml, built-in synthetic data)");
            RunConfig::quickstart(&overrides)?
        }
    };
    let mut cfg = cfg;
    let usage = crate::device::Use::train([cfg.model.model], a.trust_device);
    cfg.train.device = crate::device::vet(&cfg.train.device, &usage)?;
    let stop = ctrl_c()?;
    let mut obs = Progress::new();
    let outcome = train(cfg, TrainOptions { resume: a.resume.clone(), stop, resume_anyway: a.resume_anyway }, &mut obs);
    obs.finish();
    match outcome? {
        Outcome::Finished { run_dir, steps, best_miou, best_step, stopped_early } => {
            if stopped_early {
                println!("early stop: no better validation mean IoU for train.patience validations");
            }
            println!(
                "done: {steps} steps in {:.0} s; best validation mean IoU {best_miou:.4} at step {best_step}",
                obs.started.elapsed().as_secs_f64()
            );
            let (wait, compute) = (obs.data_wait_s, obs.compute_s);
            if wait + compute > 0.0 {
                println!(
                    "data loading: the steps waited {wait:.1} s for batches and computed for {compute:.0} s \
                     ({:.1}% of step time spent waiting)",
                    100.0 * wait / (wait + compute)
                );
            }
            summary(&run_dir, best_step);
            Ok(0)
        }
        Outcome::Interrupted { run_dir, step } => {
            println!("stopped at step {step}; continue with: segkit train --resume {}", run_dir.display());
            Ok(130)
        }
    }
}
