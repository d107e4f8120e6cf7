//! `segkit predict`: masks, overlays and per-object JSON for images and folders.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use segkit_data::image_io::{read_image, write_palette_png};
use segkit_train::device;
use segkit_train::predict::{PredictOptions, Predictor, overlay, write_npy};

use crate::progress;

#[derive(clap::Args)]
pub struct Args {
    /// A run directory, a checkpoint, or a file written by `segkit export`.
    run: PathBuf,
    /// Images or folders of images.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Use the GPU without checking it against the CPU first, even if it failed the check
    /// before: at your own risk, its results may be wrong.
    #[arg(long)]
    trust_device: bool,
    /// Objects smaller than this many pixels are dropped.
    #[arg(long, default_value_t = 1)]
    min_area: usize,
    /// Class ids that are not objects, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    skip: Vec<u8>,
    /// U-Net output tile / FCN window side (default: the training crop).
    #[arg(long)]
    tile: Option<usize>,
    /// Also write STEM_input.npy and STEM_logits.npy: the network's input and raw output for one
    /// pass over the whole image (as `segkit eval` runs it), to check an exported model against
    /// (scripts/check_onnx.py).
    #[arg(long)]
    save_logits: bool,
    /// Test-time augmentation: average the softmax over the flips and quarter turns the run was
    /// trained with (up to 8 views, as the U-Net paper's ISBI submission); that many times slower.
    #[arg(long)]
    tta: bool,
    /// f16 activations on a GPU that computes in f16 (weights stay f32 and are cast per layer,
    /// as in f16-mixed training); f32 elsewhere, with a note.
    #[arg(long)]
    half: bool,
}

const IMAGE_EXT: [&str; 7] = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "webp"];

fn collect(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| IMAGE_EXT.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            v.sort();
            out.extend(v);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    Ok(out)
}

pub fn run(a: Args) -> Result<i32> {
    let usage = crate::device::Use::infer(segkit_train::model_file::model_kind_of(&a.run), a.trust_device);
    let (dev, desc) = device::select(&crate::device::vet(&a.device, &usage)?)?;
    let loaded = segkit_train::model_file::open_model(&a.run, &dev)?;
    for note in &loaded.notes {
        eprintln!("note: {note}");
    }
    let mut predictor = Predictor::from_loaded(loaded, &dev);
    if a.tta {
        predictor = predictor.with_tta();
    }
    if a.half {
        let (p, half) = predictor.with_half();
        predictor = p;
        if !half {
            eprintln!("note: --half: this device has no f16 arithmetic; predicting in f32");
        }
    }
    if let Some(t) = a.tile {
        predictor.tile = t;
    }
    let files = collect(&a.inputs)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    println!(
        "{} images, {} ({} classes) on {desc}",
        files.len(),
        predictor.config.model.model,
        predictor.classes.names.len()
    );
    if a.tta {
        println!("test-time augmentation: the mean of {} views", predictor.views.len());
    }
    if predictor.dtype != burn::tensor::DType::F32 {
        println!("f16 activations (--half)");
    }
    let opts = PredictOptions { min_area: a.min_area, skip_classes: a.skip.clone() };
    let bar = progress::bar(files.len() as u64, "predict");
    let mut failed = 0;
    for f in &files {
        bar.inc(1);
        if let Err(e) = one(&predictor, f, &a.out, &opts, a.save_logits) {
            bar.println(format!("{}: {e:#}", f.display()));
            failed += 1;
        }
    }
    bar.finish_and_clear();
    println!("wrote masks, overlays and JSON for {} images to {}", files.len() - failed, a.out.display());
    Ok(i32::from(failed > 0))
}

fn one(p: &Predictor, file: &Path, out: &Path, opts: &PredictOptions, save_logits: bool) -> Result<()> {
    let img = read_image(file, 3)?;
    let pred = p.predict(&img, opts)?;
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if save_logits {
        let (input, logits) = p.network_pass(&img)?;
        write_npy(&out.join(format!("{stem}_input.npy")), &input)?;
        write_npy(&out.join(format!("{stem}_logits.npy")), &logits)?;
    }
    write_palette_png(&out.join(format!("{stem}_mask.png")), pred.width, pred.height, &pred.mask, &p.classes.colors)?;
    overlay(&img, &pred, &p.classes).save(&out.join(format!("{stem}_overlay.png")))?;
    let areas: serde_json::Map<String, serde_json::Value> =
        p.classes.names.iter().zip(&pred.class_areas).map(|(n, a)| (n.clone(), (*a).into())).collect();
    let json = serde_json::json!({
        "image": file.display().to_string(),
        "width": pred.width,
        "height": pred.height,
        "class_areas": areas,
        "objects": pred.objects,
    });
    std::fs::write(out.join(format!("{stem}.json")), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}
