//! `segkit compare`: runs side by side, as a report and as pictures; `--train` runs the whole
//! experiment (staged 32s -> 16s -> 8s where the configs say so) first.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use segkit_train::RunConfig;
use segkit_train::compare::compare;
use segkit_train::device;
use segkit_train::trainer::{Outcome, TrainOptions, train};

use crate::progress;
use crate::train::{Progress, ctrl_c};

#[derive(clap::Args)]
pub struct Args {
    /// Run directories (or checkpoints) to compare; the first is the baseline.
    runs: Vec<PathBuf>,
    /// Train these configs first, in order, then compare their runs (after RUNS).
    #[arg(long, num_args = 1.., value_name = "CONFIG")]
    train: Vec<PathBuf>,
    /// Overrides for every config of --train.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Dataset folder (default: the first run's).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "val")]
    split: String,
    #[arg(long)]
    out: PathBuf,
    /// Validation images shown in samples.png.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Evaluate on the first N images of the split only (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Test-time augmentation for every run: the mean over the flips and quarter turns each run
    /// was trained with (see `segkit eval --tta`).
    #[arg(long)]
    tta: bool,
    /// Recompute every run's batch-norm statistics on N training images first (see `segkit eval
    /// --bn-recalibrate`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    bn_recalibrate: usize,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Use the GPU without checking it against the CPU first, even if it failed the check
    /// before: at your own risk, its results may be wrong.
    #[arg(long)]
    trust_device: bool,
}

pub fn run(a: Args) -> Result<i32> {
    let mut runs = a.runs.clone();
    // Probed once for training and evaluation alike.
    // The checks of every model kind involved: training checks for the configs to train (read
    // again below, where a bad one is reported with its file), forward checks for the given runs.
    let given = runs.iter().filter_map(|r| segkit_train::model_file::model_kind_of(r));
    let usage = if a.train.is_empty() {
        crate::device::Use::infer(given, a.trust_device)
    } else {
        let trained = a.train.iter().filter_map(|p| RunConfig::load(p, &a.set).ok()).map(|c| c.model.model);
        crate::device::Use::train(trained.chain(given), a.trust_device)
    };
    let device_name = crate::device::vet(&a.device, &usage)?;
    if !a.train.is_empty() {
        let stop = ctrl_c()?;
        // Where each trained config's run went, so that a later config's `init_from` naming
        // `out_dir/name` finds it even when the directory got a suffix.
        let mut trained: Vec<(PathBuf, PathBuf)> = Vec::new();
        for path in &a.train {
            let mut overrides = a.set.clone();
            overrides.push(format!("train.device={device_name:?}"));
            let mut cfg = RunConfig::load(path, &overrides)?;
            if !cfg.train.init_from.is_empty() {
                let wanted = PathBuf::from(&cfg.train.init_from);
                if let Some((_, dir)) = trained.iter().find(|(name, _)| *name == wanted) {
                    cfg.train.init_from = dir.display().to_string();
                }
            }
            println!("== training {} ({})", path.display(), cfg.model.model);
            let nominal = Path::new(&cfg.train.out_dir).join(&cfg.name);
            let mut obs = Progress::new();
            let outcome = train(cfg, TrainOptions { resume: None, stop: stop.clone(), resume_anyway: false }, &mut obs);
            obs.finish();
            match outcome? {
                Outcome::Finished { run_dir, .. } => {
                    trained.push((nominal, run_dir.clone()));
                    runs.push(run_dir);
                }
                Outcome::Interrupted { run_dir, step } => {
                    println!("stopped at step {step}; resume with: segkit train --resume {}", run_dir.display());
                    return Ok(130);
                }
            }
        }
    }
    if runs.is_empty() {
        bail!("nothing to compare: give run directories or --train CONFIG...");
    }
    let (dev, desc) = device::select(&device_name)?;
    let bar = progress::bar(0, "eval");
    let cmp = compare(
        &runs,
        a.data.as_deref(),
        &a.split,
        a.samples,
        a.limit,
        segkit_train::eval::EvalOptions { tta: a.tta, bn_recalibrate: a.bn_recalibrate },
        &dev,
        &desc,
        &mut |name, d, t| {
            bar.set_length(t as u64);
            bar.set_position(d as u64);
            bar.set_message(name.to_string());
        },
    )?;
    bar.finish_and_clear();
    let written = cmp.write(&a.out)?;
    println!("{} runs on {} split {} ({} images), {desc}", cmp.runs.len(), cmp.data, cmp.split, cmp.images);
    println!(
        "{:<24} {:>9} {:>9} {:>18} {:>9} {:>9}",
        "run", "pix acc", "mean acc", "mean IoU (95% CI)", "fw IoU", "Dice"
    );
    for r in &cmp.runs {
        let s = &r.scores;
        println!(
            "{:<24} {:>9.4} {:>9.4} {:>7.4} ({:.3}-{:.3}) {:>9.4} {:>9.4}",
            r.name, s.pixel_acc, s.mean_acc, s.mean_iou, r.miou_ci.0, r.miou_ci.1, s.fw_iou, s.mean_dice
        );
    }
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(0)
}
