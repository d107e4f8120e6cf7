//! Precise batch-norm statistics: the running mean and variance of every batch norm recomputed
//! with the current weights, as the plain mean of the statistics of whole training images
//! prepared as evaluation prepares them ("PreciseBN"; Wu & Johnson 2021, "Rethinking 'Batch'
//! in BatchNorm", section 3).
//!
//! Why: the running averages that training keeps (momentum 0.1) follow the last ten or so
//! batches of training crops, taken with weights that have moved since, and evaluation runs on
//! whole images. Two measured cases where that is far from what evaluation needs (docs/RESULTS.md):
//! FCN with trunk batch norm on CamVid, where conv1_1's 100-pixel zero padding is 72% of a
//! 224x224 crop's input but 55% of a whole image's (val pixel accuracy 0.48 with the running
//! statistics, 0.74 with each image's own), and the batch-1 U-Net on ISBI 2012, whose slices
//! differ in brightness and contrast.
//!
//! Invariants: only the running statistics change (weights, and so training, are untouched);
//! the result depends only on the weights and the chosen images, not on the statistics before,
//! so a resumed run recalibrates exactly as an uninterrupted one.

use std::collections::BTreeMap;

use burn::prelude::*;
use segkit_data::{Dataset, SampleRef};
use segkit_models::SegModel;
use segkit_models::layers::BN_MOMENTUM;

use crate::TrainError;
use crate::config::RunConfig;
use crate::eval::whole_image;
use crate::params::{self, HostTensor};

/// The running statistics of `model`, by path (empty for a model without batch norm).
pub fn running(model: &SegModel) -> BTreeMap<String, HostTensor> {
    // `valid()` synchronises the statistics' latest update (see `Run::save`). Only the
    // statistics are copied: this runs twice per image, and a full-width FCN's weights are 540 MB.
    params::collect_where(&model.valid(), |k| k.ends_with(".running_mean") || k.ends_with(".running_var"))
}

/// Whether `model` has batch norms whose statistics [`recalibrate`] would set.
pub fn has_batch_norm(model: &SegModel) -> bool {
    !running(model).is_empty()
}

/// The indices of `k` images spread evenly over `n` (`j * n / k`), all of them when `k >= n`.
pub fn spread(n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    (0..k).map(|j| j * n / k).collect()
}

/// Sets every batch norm's running statistics of `model` to the mean over `images` images of
/// `samples` (spread over them) of each image's own batch statistics; `model` must be on an
/// autodiff device, where a forward pass updates the statistics. Returns the model and the
/// number of images used (0, and the model unchanged, without batch norm or images).
pub fn recalibrate(
    mut model: SegModel,
    cfg: &RunConfig,
    ds: &Dataset,
    samples: &[SampleRef],
    images: usize,
    device: &Device,
) -> Result<(SegModel, usize), TrainError> {
    if !device.is_autodiff() {
        return Err(TrainError::Device("batch-norm recalibration needs an autodiff device".into()));
    }
    let mut before = running(&model);
    let picks = spread(samples.len(), images);
    if before.is_empty() || picks.is_empty() {
        return Ok((model, 0));
    }
    let m = BN_MOMENTUM;
    // The passes run on a copy without gradients: nothing requires one, so autodiff records no
    // graph (one kept per pass until a backward that never comes held ~650 MB per ISBI slice),
    // while batch norm still sees an autodiff device and updates its statistics. The result is
    // loaded into `model` itself, which keeps its parameters' gradient flags.
    let probe = model.clone().no_grad();
    let mut sums: BTreeMap<String, Vec<f64>> =
        before.iter().map(|(k, t)| (k.clone(), vec![0.0; t.values.len()])).collect();
    for &i in &picks {
        let (_, batch, _) = whole_image(cfg, ds, &samples[i])?;
        let (x, _) = batch.to_device(device);
        // The output is dropped unused: no backward pass, only the statistics' update.
        let _ = probe.forward(x);
        let after = running(&probe);
        // running' = (1 - m) running + m stat, so the image's own statistic is recovered exactly
        // up to rounding, whatever the statistics held before.
        for (k, sum) in sums.iter_mut() {
            let (a, b) = (&after[k].values, &before[k].values);
            for ((s, &a), &b) in sum.iter_mut().zip(a).zip(b) {
                *s += (a as f64 - (1.0 - m) * b as f64) / m;
            }
        }
        before = after;
    }
    let n = picks.len() as f64;
    let mean: BTreeMap<String, HostTensor> = sums
        .into_iter()
        .map(|(k, s)| {
            let shape = before[&k].shape.clone();
            (k, HostTensor { shape, values: s.into_iter().map(|v| (v / n) as f32).collect() })
        })
        .collect();
    let (loaded, report) = params::load(model, &mean);
    model = loaded;
    debug_assert_eq!(report.loaded.len(), mean.len(), "every running statistic is set");
    Ok((model, picks.len()))
}

/// The model stored at `path` (a run directory or checkpoint, see `model_file::open_model`)
/// recalibrated on `images` images of `ds`'s training split, ready to evaluate on `device`:
/// what `segkit eval --bn-recalibrate` and `segkit compare --bn-recalibrate` evaluate.
pub fn recalibrated_model(
    path: &std::path::Path,
    cfg: &RunConfig,
    ds: &Dataset,
    images: usize,
    device: &Device,
) -> Result<(SegModel, usize), TrainError> {
    let ad = device.clone().autodiff();
    let loaded = crate::model_file::open_model(path, &ad)?;
    let train = ds.split(&cfg.data.train_split)?;
    let (model, used) = recalibrate(loaded.model, cfg, ds, &train, images, &ad)?;
    Ok((model.valid(), used))
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn recalibration_images_spread_over_the_split() {
        let check = |n: usize, k: usize, want: &[usize]| assert_eq!(spread(n, k), want, "n {n}, k {k}");
        check(367, 4, &[0, 91, 183, 275]);
        check(3, 5, &[0, 1, 2]);
        check(10, 0, &[]);
        check(0, 3, &[]);
    }
}
