//! `segkit eval`.

use std::path::PathBuf;

use anyhow::Result;
use segkit_data::Dataset;
use segkit_train::device;
use segkit_train::eval::{EvalOptions, EvalReport, evaluate, load_run};

use crate::progress;

#[derive(clap::Args)]
pub struct Args {
    /// A run directory (its best checkpoint, else the last) or a checkpoint file.
    run: PathBuf,
    /// Dataset folder, replacing the run's data.root.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Split to evaluate (a split other than val writes eval_SPLIT.json).
    #[arg(long, default_value = "val")]
    split: String,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Use the GPU without checking it against the CPU first, even if it failed the check
    /// before: at your own risk, its results may be wrong.
    #[arg(long)]
    trust_device: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Test-time augmentation: average the softmax over the flips and quarter turns the run was
    /// trained with (up to 8 views, as the U-Net paper's ISBI submission); writes eval_tta.json.
    #[arg(long)]
    tta: bool,
    /// Recompute the batch-norm statistics first, as the mean over N whole training images with
    /// the checkpoint's weights (what `train.bn_recalibrate` does at every validation), for runs
    /// trained without it; writes eval_bn.json.
    #[arg(long, value_name = "N", default_value_t = 0)]
    bn_recalibrate: usize,
}

pub fn run(a: Args) -> Result<i32> {
    // The forward checks of the run's model kind (every kind when its header does not say);
    // batch-norm recalibration runs forward passes too.
    let usage = crate::device::Use::infer(segkit_train::model_file::model_kind_of(&a.run), a.trust_device);
    let (device, desc) = device::select(&crate::device::vet(&a.device, &usage)?)?;
    let loaded = load_run(&a.run, &device)?;
    let mut cfg = loaded.config.clone();
    if let Some(d) = &a.data {
        cfg.data.root = d.display().to_string();
    }
    let ds = Dataset::open(&cfg.data, &PathBuf::from(&cfg.data.root))?;
    let samples = ds.split(&a.split)?;
    let opts = EvalOptions { tta: a.tta, bn_recalibrate: a.bn_recalibrate };
    let mut model = loaded.model.clone();
    let mut recalibrated = None;
    if opts.bn_recalibrate > 0 {
        let (m, used) = segkit_train::bnstats::recalibrated_model(&a.run, &cfg, &ds, opts.bn_recalibrate, &device)?;
        if used == 0 {
            eprintln!("note: the model has no batch norm; --bn-recalibrate changes nothing");
        } else {
            (model, recalibrated) = (m, Some(used));
        }
    }
    let bar = progress::bar(samples.len() as u64, "eval");
    let pass =
        evaluate(&model, &cfg, &ds, &samples, &device, None, 0, opts.tta, &mut |d, _| bar.set_position(d as u64))?;
    bar.finish_and_clear();
    let scores = pass.cm.scores();
    let report = EvalReport {
        checkpoint: loaded.checkpoint.display().to_string(),
        split: a.split.clone(),
        images: samples.len(),
        loss: pass.loss,
        classes: loaded.classes.names.clone(),
        scores,
        confusion_matrix: segkit_train::eval::confusion_rows(&pass.cm),
        isbi: pass.isbi.as_ref().map(|a| a.scores()),
        tta_views: a.tta.then_some(pass.views),
        bn_recalibrated: recalibrated,
    };
    // Each kind of evaluation has its own file, so that none hides another.
    let written = a.run.join(EvalOptions { bn_recalibrate: recalibrated.unwrap_or(0), ..opts }.report_name(&a.split));
    if a.run.is_dir() {
        report.write(&written)?;
        let stem = written.file_stem().map_or("eval".into(), |s| s.to_string_lossy().into_owned());
        let stem = format!("confusion_matrix_{stem}");
        let title = format!("{} split", a.split);
        segkit_train::eval::write_confusion_pngs(&a.run, &stem, &title, &report.classes, &pass.cm)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    let s = &report.scores;
    let data = if cfg.data.root.is_empty() { cfg.data.format.to_string() } else { cfg.data.root.clone() };
    println!(
        "{} (step {}) on {data}, split {} ({} images), {desc}",
        report.checkpoint, loaded.step, a.split, report.images
    );
    if let Some(n) = recalibrated {
        println!("batch-norm statistics recalibrated on {n} training images");
    }
    if a.tta {
        println!("test-time augmentation: the mean of {} views (the run's training flips and turns)", pass.views);
    }
    let rows = [
        ("pixel accuracy", s.pixel_acc),
        ("mean accuracy", s.mean_acc),
        ("mean IoU", s.mean_iou),
        ("frequency-weighted IoU", s.fw_iou),
        ("mean Dice", s.mean_dice),
        ("loss (no class weights)", report.loss),
    ];
    for (name, v) in rows {
        println!("{name:<24}{v:.4}");
    }
    if let Some(i) = &report.isbi {
        let cell = report.classes.get(i.cell_class as usize).map_or("class 1", String::as_str);
        println!("ISBI 2012 challenge metrics (regions: 4-connected `{cell}` pixels, per image):");
        println!("{:<24}{:.4} (best threshold {:.1})", "pixel error", i.pixel_error, i.pixel_threshold);
        println!("{:<24}{:.4}", "pixel error at 0.5", i.pixel_error_at_half);
        println!("{:<24}{:.4} (1 - pixel accuracy; not a challenge figure)", "misclassification", i.misclassification);
        println!("{:<24}{:.4} (best threshold {:.1})", "Rand error", i.rand_error, i.rand_threshold);
        println!("{:<24}{:.4}", "Rand error at 0.5", i.rand_error_at_half);
    }
    println!();
    println!("{:<20} {:>8} {:>8} {:>8} {:>12}", "class", "IoU", "acc", "Dice", "pixels");
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    for (i, name) in report.classes.iter().enumerate() {
        println!(
            "{:<20} {:>8} {:>8} {:>8} {:>12}",
            name,
            f(s.class_iou.get(i).copied().flatten()),
            f(s.class_acc.get(i).copied().flatten()),
            f(s.class_dice.get(i).copied().flatten()),
            s.class_pixels.get(i).copied().unwrap_or(0)
        );
    }
    if a.run.is_dir() {
        println!("\nwritten to {}", written.display());
    }
    Ok(0)
}
