//! Evaluation over a whole split: one confusion matrix, the loss, and a few predictions kept for
//! pictures. Shared by validation during training and by `segkit eval`.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::softmax;
use segkit_data::transform::eval_transform;
use segkit_data::{Dataset, HostBatch, ImageBuf, SampleRef, Window};
use segkit_models::{ModelConfig, ModelKind, SegModel, input_size_for_output, unet_output_size};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::isbi::{IsbiAccumulator, IsbiScores, cell_class};
use crate::loss::{Reduction, cross_entropy};
use crate::metrics::{ConfusionMatrix, Scores};
use crate::params::{to_f32, to_i64};
use crate::{TrainError, write_atomic};

/// Network input size and output margin for evaluating a whole `h x w` image: FCN takes it as
/// it is; U-Net takes the smallest valid input whose output covers the image, the context
/// mirrored (the paper's overlap-tile, one tile).
pub fn eval_geometry(model: &ModelConfig, h: usize, w: usize) -> Result<((usize, usize), usize), TrainError> {
    if model.model != ModelKind::Unet {
        return Ok(((h, w), 0));
    }
    let fit = |s: usize| {
        input_size_for_output(s, model.depth, model.padded)
            .ok_or_else(|| TrainError::Config(format!("no U-Net input size covers an image side of {s}")))
    };
    let (in_h, in_w) = (fit(h)?, fit(w)?);
    let out_h = unet_output_size(in_h, model.depth, model.padded).expect("valid by construction");
    Ok(((in_h, in_w), (in_h - out_h) / 2))
}

/// One image of `ds` as evaluation feeds it to the network: the whole image (U-Net: mirrored out
/// to the input of [`eval_geometry`]) as a batch of one, with the image and the input size.
pub fn whole_image(
    cfg: &RunConfig,
    ds: &Dataset,
    s: &SampleRef,
) -> Result<(ImageBuf, HostBatch, (usize, usize)), TrainError> {
    let (img, labels) = ds.load(s, cfg.model.in_channels)?;
    let (in_hw, margin) = eval_geometry(&cfg.model, img.height, img.width)?;
    let prep = eval_transform(&img, &labels, in_hw, margin, cfg.augment.normalize, ds.classes.ignore_index);
    let batch = HostBatch::stack(vec![prep], cfg.model.in_channels).map_err(TrainError::Config)?;
    Ok((img, batch, in_hw))
}

/// The training window (input and output tile) for `augment.crop`, `None` for whole images.
pub fn train_window(cfg: &RunConfig) -> Result<Option<Window>, TrainError> {
    let crop = cfg.augment.crop;
    if crop == 0 {
        return Ok(None);
    }
    let m = &cfg.model;
    if m.model != ModelKind::Unet {
        return Ok(Some(Window { input: crop, output: crop }));
    }
    let input = input_size_for_output(crop, m.depth, m.padded)
        .ok_or_else(|| TrainError::Config(format!("augment.crop = {crop}: no U-Net input size gives that output")))?;
    let output = unet_output_size(input, m.depth, m.padded).expect("valid by construction");
    Ok(Some(Window { input, output }))
}

/// What one evaluation pass gives.
pub struct EvalPass {
    pub cm: ConfusionMatrix,
    /// Mean loss per valid pixel.
    pub loss: f64,
    /// A few samples spread evenly over the split (see [`kept_index`]): image, ground truth,
    /// prediction (image size).
    pub kept: Vec<(ImageBuf, Vec<u8>, Vec<u8>)>,
    /// One confusion matrix per image (for bootstrap intervals); they sum to `cm`.
    pub per_image: Vec<ConfusionMatrix>,
    /// Seconds spent in forward passes and argmax, the device synchronised around them.
    pub forward_s: f64,
    /// Network input size of the first image.
    pub input_hw: (usize, usize),
    /// The ISBI 2012 challenge's pixel and Rand error, for two-class data (`crate::isbi`).
    pub isbi: Option<IsbiAccumulator>,
    /// Views averaged per image (`crate::tta`); 1 without test-time augmentation.
    pub views: usize,
}

/// Runs `model` (on a device without autodiff) over `samples`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &SegModel,
    cfg: &RunConfig,
    ds: &Dataset,
    samples: &[SampleRef],
    device: &Device,
    weights: Option<&Tensor<1>>,
    keep: usize,
    tta: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalPass, TrainError> {
    let n = cfg.model.classes;
    let views = if tta { crate::tta::views(&cfg.augment) } else { vec![crate::tta::View::IDENTITY] };
    let ignore = ds.classes.ignore_index;
    let mut cm = ConfusionMatrix::new(n);
    let (mut loss_sum, mut valid) = (0f64, 0u64);
    let mut kept = Vec::new();
    let mut per_image = Vec::with_capacity(samples.len());
    let (mut forward_s, mut input_hw) = (0f64, (0, 0));
    let cell = cell_class(&ds.classes.names);
    let mut isbi = (n == 2).then(|| IsbiAccumulator::new(cell, ignore));
    for (i, s) in samples.iter().enumerate() {
        progress(i, samples.len());
        let (img, batch, in_hw) = whole_image(cfg, ds, s)?;
        let (h, w) = (img.height, img.width);
        let (x, y) = batch.to_device(device);
        if i == 0 {
            input_hw = in_hw;
        }
        let _ = device.sync();
        let t0 = std::time::Instant::now();
        let logits = if views.len() > 1 {
            crate::tta::as_logits(crate::tta::mean_probs(|x| model.forward(x), x, &views))
        } else {
            model.forward(x)
        };
        let [_, _, oh, ow] = logits.dims();
        let pred: Vec<u8> = to_i64(logits.clone().argmax(1).reshape([oh, ow])).into_iter().map(|v| v as u8).collect();
        forward_s += t0.elapsed().as_secs_f64();
        // The image's own pixels of an output that may be larger (U-Net tiles, padded inputs).
        let crop = |v: &[u8]| (0..h).flat_map(|y| v[y * ow..y * ow + w].to_vec()).collect::<Vec<u8>>();
        if let Some(acc) = isbi.as_mut() {
            let c = cell as usize;
            let prob = to_f32(softmax(logits.clone(), 1).slice([0..1, c..c + 1, 0..oh, 0..ow]));
            let prob: Vec<f32> = (0..h).flat_map(|y| prob[y * ow..y * ow + w].to_vec()).collect();
            acc.add(&crop(&batch.labels), &prob, w, h);
        }
        loss_sum += to_f32(cross_entropy(logits, y, ignore as i64, weights, Reduction::Sum))[0] as f64;
        valid += batch.labels.iter().filter(|&&l| (l as usize) < n).count() as u64;
        let mut one = ConfusionMatrix::new(n);
        one.add(&pred, &batch.labels);
        cm.merge(&one);
        per_image.push(one);
        if kept_index(i, samples.len(), keep) {
            kept.push((img, crop(&batch.labels), crop(&pred)));
        }
    }
    progress(samples.len(), samples.len());
    Ok(EvalPass {
        cm,
        loss: if valid > 0 { loss_sum / valid as f64 } else { 0.0 },
        kept,
        per_image,
        forward_s,
        input_hw,
        isbi,
        views: views.len(),
    })
}

/// Whether sample `i` of `n` is one of the `keep` shown in sample grids: indices spread evenly
/// over the split (`j * n / keep`), so that a video split (CamVid) shows several scenes rather
/// than consecutive frames of one street.
pub fn kept_index(i: usize, n: usize, keep: usize) -> bool {
    let keep = keep.min(n);
    keep > 0 && (0..keep).any(|j| j * n / keep == i)
}

/// `eval.json` of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub checkpoint: String,
    pub split: String,
    pub images: usize,
    /// Mean cross-entropy per valid pixel, without the run's class weights.
    pub loss: f64,
    pub classes: Vec<String>,
    pub scores: Scores,
    /// Pixel counts, `confusion_matrix[true][predicted]`, over the whole split (void pixels not
    /// counted); absent in reports of earlier versions.
    #[serde(default)]
    pub confusion_matrix: Vec<Vec<u64>>,
    /// The ISBI 2012 challenge's figures, for two-class data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isbi: Option<IsbiScores>,
    /// Views averaged per image by test-time augmentation (`segkit eval --tta`), absent without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tta_views: Option<usize>,
    /// Training images the batch-norm statistics were recalibrated on before this evaluation
    /// (`segkit eval --bn-recalibrate`, `crate::bnstats`), absent when they were not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bn_recalibrated: Option<usize>,
}

/// How `segkit eval` and `segkit compare` evaluate a stored model beyond the plain pass.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalOptions {
    /// Average the views the run trained with (`crate::tta`).
    pub tta: bool,
    /// Recalibrate batch-norm statistics on this many training images first (0: no).
    pub bn_recalibrate: usize,
}

impl EvalOptions {
    /// The report file of an evaluation of `split` with these options: `eval.json` for the
    /// plain pass over the validation split, otherwise with the split and the options in the
    /// name (`eval_train.json`, `eval_bn_tta.json`), so that no evaluation overwrites another.
    pub fn report_name(&self, split: &str) -> String {
        let mut name = String::from("eval");
        if split != "val" {
            // Split names are folder or list names; keep the file name plain.
            name.push('_');
            name.extend(split.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }));
        }
        if self.bn_recalibrate > 0 {
            name.push_str("_bn");
        }
        if self.tta {
            name.push_str("_tta");
        }
        name + ".json"
    }
}

// Opening a model moved to `model_file`; these names stay for the callers.
pub use crate::model_file::{Loaded, checkpoint_path, open_model as load_run};

impl EvalReport {
    pub fn write(&self, path: &Path) -> Result<(), TrainError> {
        write_atomic(path, serde_json::to_string_pretty(self).expect("serialisable").as_bytes())
    }
}

/// The rows of `cm` as `[true][predicted]` counts (an `EvalReport`'s `confusion_matrix`).
pub fn confusion_rows(cm: &crate::ConfusionMatrix) -> Vec<Vec<u64>> {
    cm.counts.chunks(cm.n.max(1)).map(<[u64]>::to_vec).collect()
}

/// `STEM.png` (pixel counts) and `STEM_normalized.png` (shares of each true class) in `dir`: the
/// confusion matrix pictures of a run's best validation and of `segkit eval`.
pub fn write_confusion_pngs(
    dir: &Path,
    stem: &str,
    title: &str,
    classes: &[String],
    cm: &crate::ConfusionMatrix,
) -> Result<(), TrainError> {
    let counts = crate::plot::confusion_matrix(&format!("{title}: pixels"), classes, &cm.counts, false);
    counts.save(&dir.join(format!("{stem}.png")))?;
    let shares = crate::plot::confusion_matrix(&format!("{title}: share of each true class"), classes, &cm.counts, true);
    shares.save(&dir.join(format!("{stem}_normalized.png")))
}

#[cfg(test)]
mod tests {
    use super::{EvalOptions, kept_index};

    #[test]
    fn each_kind_of_evaluation_has_its_own_report() {
        let check = |split: &str, tta: bool, bn: usize, want: &str| {
            assert_eq!(EvalOptions { tta, bn_recalibrate: bn }.report_name(split), want, "{split} {tta} {bn}");
        };
        check("val", false, 0, "eval.json");
        check("val", true, 0, "eval_tta.json");
        check("val", false, 20, "eval_bn.json");
        check("val", true, 20, "eval_bn_tta.json");
        check("train", false, 0, "eval_train.json");
        check("train", true, 8, "eval_train_bn_tta.json");
        check("../x y", false, 0, "eval____x_y.json");
    }

    #[test]
    fn sample_grids_spread_over_the_split() {
        let check = |n: usize, keep: usize, want: &[usize]| {
            let got: Vec<usize> = (0..n).filter(|&i| kept_index(i, n, keep)).collect();
            assert_eq!(got, want, "n {n}, keep {keep}");
        };
        check(101, 4, &[0, 25, 50, 75]);
        check(5, 4, &[0, 1, 2, 3]);
        check(3, 4, &[0, 1, 2]);
        check(10, 0, &[]);
        check(0, 4, &[]);
    }
}
