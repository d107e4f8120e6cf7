//! Inference: overlap-tile stitching, sliding windows, export round trip, the Python check.

use std::path::PathBuf;

use burn::prelude::*;
use segkit_data::ImageBuf;
use segkit_data::synth::synth_sample;
use segkit_models::SegModel;
use segkit_train::RunConfig;
use segkit_train::checkpoint::ClassInfo;
use segkit_train::export::{export, load};
use segkit_train::params::to_f32;
use segkit_train::predict::{PredictOptions, Predictor};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segkit-predict-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn predictor(overrides: &[&str], tile: usize, max_side: usize) -> Predictor {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let config = RunConfig::quickstart(&o).unwrap();
    let device = Device::flex();
    device.seed(3);
    let model = SegModel::new(&config.model, &device).unwrap();
    let classes = ClassInfo {
        names: segkit_data::synth::SYNTH_CLASSES.iter().map(|s| s.to_string()).collect(),
        colors: (0..4).map(segkit_data::classes::voc_color).collect(),
        ignore_index: 255,
    };
    Predictor {
        config,
        classes,
        model,
        device,
        tile,
        max_side,
        views: vec![segkit_train::tta::View::IDENTITY],
        dtype: burn::tensor::DType::F32,
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The unpadded U-Net the overlap-tile tests use: depth 2, 2 channels wide.
const TINY_UNET: [&str; 4] = ["model.padded=false", "model.batch_norm=false", "model.depth=2", "model.base_width=2"];

/// `p`'s probabilities for `img` through one tile, checked against those through many 12-pixel
/// output tiles: overlap-tile prediction must leave no seams.
fn seamless(p: &mut Predictor, img: &ImageBuf) -> Vec<f32> {
    p.tile = 64;
    let one = p.probabilities(img).unwrap();
    p.tile = 12;
    let many = p.probabilities(img).unwrap();
    assert!(max_diff(&one, &many) < 1e-4, "tiles differ from the whole image by {}", max_diff(&one, &many));
    one
}

/// Unpadded U-Net: the same image through 1 tile and through many tiles gives the same result.
#[test]
fn overlap_tiles_stitch_without_seams() {
    let (img, _) = synth_sample(1, 0, 37, 3);
    seamless(&mut predictor(&TINY_UNET, 64, 1024), &img);
}

/// Per-image normalisation: every tile is scaled with the whole image's statistics, so tiles still
/// stitch without seams (each tile's own statistics would differ), and the prediction no longer
/// depends on the image's exposure: a constant offset of every pixel changes nothing.
#[test]
fn per_image_normalisation_is_seamless_and_ignores_exposure() {
    let per_image: Vec<&str> = TINY_UNET.iter().copied().chain(["augment.normalize=\"per-image\""]).collect();
    // Halved, so that a brighter copy fits in 0-255 without clipping.
    let (mut img, _) = synth_sample(1, 0, 37, 3);
    img.data.iter_mut().for_each(|v| *v /= 2);
    let mut p = predictor(&per_image, 64, 1024);
    let one = seamless(&mut p, &img);
    let shift = 40;
    let mut brighter = img.clone();
    brighter.data.iter_mut().for_each(|v| *v += shift);
    let shifted = p.probabilities(&brighter).unwrap();
    assert!(max_diff(&one, &shifted) < 1e-4, "an exposure shift moved the output by {}", max_diff(&one, &shifted));
    // The same net with fixed [0, 1] inputs does see the shift: the invariance is the option's.
    let mut fixed = predictor(&TINY_UNET, 64, 1024);
    fixed.model = p.model.clone();
    let (a, b) = (fixed.probabilities(&img).unwrap(), fixed.probabilities(&brighter).unwrap());
    assert!(max_diff(&a, &b) > 1e-3, "unit inputs ignored a shift of {shift} levels");
}

/// Test-time augmentation keeps the overlap-tile invariant (each view is undone per tile, and a
/// valid-convolution net sees the same context for a pixel in any tile), changes the result
/// (the views are really different inputs), and still gives probabilities.
#[test]
fn averaged_views_stitch_without_seams_too() {
    let (img, _) = synth_sample(1, 0, 37, 3);
    // One model throughout: tests run in parallel on the one CPU device, whose seeded RNG another
    // test may draw from between a seed and an initialisation.
    let mut p = predictor(&TINY_UNET, 64, 1024);
    let plain = p.probabilities(&img).unwrap();
    p = p.with_tta();
    // The quick start trains with horizontal and vertical flips and quarter turns: all 8 views.
    assert_eq!(p.views.len(), 8);
    let one = seamless(&mut p, &img);
    assert!(max_diff(&one, &plain) > 1e-3, "averaging changed nothing: {}", max_diff(&one, &plain));
    let hw = 37 * 37;
    for i in 0..hw {
        let s: f32 = (0..4).map(|k| one[k * hw + i]).sum();
        assert!((s - 1.0).abs() < 1e-4, "pixel {i}: probabilities sum to {s}");
    }
}

/// FCN: a sliding window over a large image agrees with the whole image where both are defined
/// well inside, and covers every pixel.
#[test]
fn fcn_sliding_window_covers_the_image() {
    let fcn = ["model.model=\"fcn8s\"", "model.base_width=1", "model.fc_width=4", "augment.crop=32"];
    let (img, _) = synth_sample(2, 0, 40, 3);
    let p = predictor(&fcn, 32, 24);
    let probs = p.probabilities(&img).unwrap();
    let hw = 40 * 40;
    for i in 0..hw {
        let s: f32 = (0..4).map(|k| probs[k * hw + i]).sum();
        assert!((s - 1.0).abs() < 1e-4, "pixel {i}: probabilities sum to {s}");
    }
    let pred = p.predict(&img, &PredictOptions::default()).unwrap();
    let (masks, shape) = pred.masks();
    assert_eq!(shape, [pred.objects.len(), 40, 40]);
    assert_eq!(masks.iter().map(|&v| v as usize).sum::<usize>(), pred.objects.iter().map(|o| o.area).sum::<usize>());
    assert_eq!(pred.boxes().len(), pred.objects.len());
}

fn has_python(modules: &str) -> bool {
    std::process::Command::new("python3").args(["-c", &format!("import {modules}")]).status().is_ok_and(|s| s.success())
}

/// Export, load back: identical outputs. Where Python has safetensors and numpy, the file is
/// checked from Python; where it also has torch, loaded into the PyTorch reference model and its
/// output compared with segkit's.
#[test]
fn exported_file_gives_identical_outputs() {
    let dir = scratch("export");
    let cases: [(&[&str], usize); 2] = [
        (&["model.base_width=2", "model.padded=false", "model.batch_norm=false", "model.depth=2"], 44),
        (&["model.model=\"fcn16s\"", "model.base_width=1", "model.fc_width=4"], 30),
    ];
    for (overrides, size) in cases {
        let p = predictor(overrides, 48, 1024);
        let path = dir.join("model.safetensors");
        export(&p.model, &p.config, &p.classes, &path, false).unwrap();
        let (config, classes, model) = load(&path, &Device::flex()).unwrap();
        assert_eq!(config.model, p.config.model);
        assert_eq!(classes, p.classes);
        let device = Device::flex();
        let x = Tensor::<4>::random([1, 3, size, size], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let a = to_f32(p.model.forward(x.clone()));
        assert_eq!(max_diff(&a, &to_f32(model.forward(x.clone()))), 0.0);
        // f16 export loads too, within half precision.
        export(&p.model, &p.config, &p.classes, &dir.join("half.safetensors"), true).unwrap();
        let (_, _, half) = load(&dir.join("half.safetensors"), &Device::flex()).unwrap();
        let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
        assert!(max_diff(&a, &to_f32(half.forward(x.clone()))) < 1e-2 * scale);
        if !has_python("safetensors, numpy") {
            eprintln!(
                "skipping the Python check of the export: python3 with the safetensors and numpy packages is not available"
            );
            continue;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/check_export.py");
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(script).arg(&path);
        let torch = has_python("torch");
        if torch {
            let io = serde_json::json!({
                "shape": [1, 3, size, size],
                "input": to_f32(x),
                "output": a,
            });
            std::fs::write(dir.join("io.json"), io.to_string()).unwrap();
            cmd.arg("--torch").arg("--io").arg(dir.join("io.json"));
        } else {
            eprintln!("skipping the PyTorch comparison: torch is not installed");
        }
        let out = cmd.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}");
        assert!(!torch || text.contains("PyTorch output equals segkit's"), "{text}");
    }
}
