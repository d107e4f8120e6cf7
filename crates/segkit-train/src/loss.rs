//! Pixel-wise cross-entropy with an ignore (void) label.
//!
//! Burn's `CrossEntropyLoss` is 2-D only and gathers before it masks, so a void label of 255
//! reads out of range; this one maps void (and any label >= C) to class 0 before the gather and
//! zeroes those pixels afterwards. Normalisation `mean` divides by the (weighted) number of valid
//! pixels as PyTorch's `ignore_index` does; `sum` is the FCN reference's "unnormalised" loss:
//! Caffe's `SoftmaxWithLoss` with `normalize: false`, which sums over valid pixels and divides
//! by the batch size (pytorch-fcn: `size_average=False`, then `loss /= len(data)`), so that the
//! FCN learning rates hold for any batch size. An all-void batch gives 0, not NaN.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reduction {
    /// Mean over valid pixels (default).
    Mean,
    /// Sum over valid pixels, divided by the batch size (the FCN reference's `normalize: false`).
    Sum,
}

/// The loss of `logits` `[B, C, H, W]` against `targets` `[B, H, W]`.
///
/// `weights`: one weight per class (median-frequency balancing), or `None`. Pixels whose target
/// is `ignore` or not a class count nowhere.
pub fn cross_entropy(
    logits: Tensor<4>,
    targets: Tensor<3, Int>,
    ignore: i64,
    weights: Option<&Tensor<1>>,
    reduction: Reduction,
) -> Tensor<1> {
    cross_entropy_weighted(logits, targets, ignore, weights, None, reduction)
}

/// [`cross_entropy`] with a per-pixel weight `[B, H, W]` added to each valid pixel's class weight
/// (1 without class weights): the U-Net paper's weight map `w_c(x) + border(x)`
/// (`segkit_data::regions::border_weights`). `mean` then divides by the summed weights.
pub fn cross_entropy_weighted(
    logits: Tensor<4>,
    targets: Tensor<3, Int>,
    ignore: i64,
    weights: Option<&Tensor<1>>,
    pixel_extra: Option<Tensor<3>>,
    reduction: Reduction,
) -> Tensor<1> {
    let [b, c, h, w] = logits.dims();
    let invalid = targets.clone().equal_elem(ignore).bool_or(targets.clone().greater_equal_elem(c as i64));
    let valid = invalid.clone().bool_not().float(); // [B, H, W]
    let safe = targets.mask_fill(invalid, 0);
    let logp = log_softmax(logits, 1);
    let picked = logp.gather(1, safe.clone().unsqueeze_dim::<4>(1)).reshape([b, h, w]);
    let pixel_w = match weights {
        Some(wt) => {
            let per_pixel = wt.clone().select(0, safe.reshape([b * h * w])).reshape([b, h, w]);
            per_pixel * valid.clone()
        }
        None => valid.clone(),
    };
    let pixel_w = match pixel_extra {
        Some(extra) => pixel_w + extra * valid,
        None => pixel_w,
    };
    let total = (picked.neg() * pixel_w.clone()).sum();
    match reduction {
        Reduction::Sum => total.div_scalar(b as f64),
        // The smallest positive normal keeps an all-void batch at 0 / tiny = 0.
        Reduction::Mean => total / pixel_w.sum().clamp_min(f32::MIN_POSITIVE as f64),
    }
}

/// Median-frequency class weights (Eigen & Fergus 2015, as SegNet uses on CamVid):
/// `w_c = median(freq) / freq_c`, where `freq_c` is the pixel frequency of class `c` over the
/// images in which it appears. Classes never seen get weight 0.
pub fn median_frequency_weights(class_pixels: &[u64], image_pixels_with_class: &[u64]) -> Vec<f32> {
    let freq: Vec<f64> = class_pixels
        .iter()
        .zip(image_pixels_with_class)
        .map(|(&c, &t)| if t > 0 { c as f64 / t as f64 } else { 0.0 })
        .collect();
    let mut seen: Vec<f64> = freq.iter().copied().filter(|&f| f > 0.0).collect();
    if seen.is_empty() {
        return vec![1.0; freq.len()];
    }
    seen.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let median = if seen.len() % 2 == 1 {
        seen[seen.len() / 2]
    } else {
        (seen[seen.len() / 2 - 1] + seen[seen.len() / 2]) / 2.0
    };
    freq.iter().map(|&f| if f > 0.0 { (median / f) as f32 } else { 0.0 }).collect()
}
