//! Precise batch-norm statistics (`segkit_train::bnstats`) on a tiny U-Net with batch norm.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use segkit_data::Dataset;
use segkit_models::SegModel;
use segkit_train::RunConfig;
use segkit_train::bnstats::{recalibrate, running};
use segkit_train::eval::whole_image;
use segkit_train::params::{self, HostTensor, to_f32};

fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

/// With one image, inference with the recalibrated statistics gives what the batch-statistics
/// forward of that image gives (up to the unbiased variance's n/(n-1)), whatever the statistics
/// held before; a fresh model's statistics do not.
#[test]
fn one_image_recalibration_reproduces_that_images_batch_statistics() {
    let o: Vec<String> = [
        "data.synth_size=48",
        "data.synth_train=6",
        "data.synth_val=2",
        "model.depth=2",
        "model.base_width=4",
        "model.batch_norm=true",
        "model.padded=true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = RunConfig::quickstart(&o).unwrap();
    let ds = Dataset::open(&cfg.data, Path::new("")).unwrap();
    let train = ds.split("train").unwrap();
    let ad = Device::flex().autodiff();
    let model = SegModel::new(&cfg.model, &ad).unwrap();
    assert!(!running(&model).is_empty());

    let (x, _) = whole_image(&cfg, &ds, &train[0]).unwrap().1.to_device(&ad);
    let batch_stats = to_f32(model.forward(x.clone()).inner());
    let flex = Device::flex();
    let (xf, _) = whole_image(&cfg, &ds, &train[0]).unwrap().1.to_device(&flex);
    let fresh = to_f32(model.valid().forward(xf.clone()));
    assert!(
        rel_diff(&batch_stats, &fresh) > 0.1,
        "a fresh model's statistics already fit: the check would prove nothing"
    );

    let (one, used) = recalibrate(model.clone(), &cfg, &ds, &train, 1, &ad).unwrap();
    assert_eq!(used, 1);
    let recalibrated = to_f32(one.valid().forward(xf.clone()));
    let d = rel_diff(&batch_stats, &recalibrated);
    assert!(d < 2e-2, "recalibrated inference differs from the batch-statistics forward by {d}");

    // Whatever the statistics held before, the same images give the same statistics.
    let scrambled: BTreeMap<String, HostTensor> = running(&model)
        .into_iter()
        .map(|(k, t)| {
            let values = t.values.iter().enumerate().map(|(i, _)| 0.5 + (i % 7) as f32).collect();
            (k, HostTensor { values, ..t })
        })
        .collect();
    let (other, _) = params::load(model.clone(), &scrambled);
    let (a, _) = recalibrate(model.clone(), &cfg, &ds, &train, 3, &ad).unwrap();
    let (b, _) = recalibrate(other, &cfg, &ds, &train, 3, &ad).unwrap();
    let (ra, rb) = (running(&a), running(&b));
    for (k, t) in &ra {
        let d = rel_diff(&t.values, &rb[k].values);
        assert!(d < 1e-4, "{k}: recalibration depends on the statistics before ({d})");
    }
    // Only the statistics change.
    let weights = |m: &SegModel| {
        params::collect(&m.valid()).into_iter().filter(|(k, _)| !k.contains("running_")).collect::<BTreeMap<_, _>>()
    };
    assert!(weights(&a) == weights(&model), "recalibration changed a weight");
    // A device without autodiff cannot update statistics: an error, not a silent no-op.
    assert!(recalibrate(model.valid(), &cfg, &ds, &train, 1, &flex).is_err());
}
