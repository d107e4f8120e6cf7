//! Shapes, size rules, parameter counts and FLOPs of the models.
//!
//! Forward passes use narrow widths on the CPU backend; full-size models are checked by their
//! shape trace and parameter count (read off the modules, never typed into the code), against
//! the reference figures in `shared/reference/README.md`.

use burn::prelude::*;
use segkit_models::{ModelConfig, ModelError, ModelKind, SegModel, nearest_valid_sizes, unet_output_size};

fn narrow(kind: ModelKind, classes: usize) -> ModelConfig {
    let mut c = ModelConfig::paper(kind, classes);
    c.base_width = 2;
    c.fc_width = 8;
    c
}

/// Builds `cfg`, runs a `[2, C, h, w]` batch and checks the output shape.
fn check_forward(cfg: &ModelConfig, h: usize, w: usize, want: (usize, usize)) {
    let device = Device::flex();
    let model = SegModel::new(cfg, &device).unwrap();
    let out = model.forward(Tensor::random([2, cfg.in_channels, h, w], burn::tensor::Distribution::Default, &device));
    assert_eq!(out.dims(), [2, cfg.classes, want.0, want.1], "{} at {h}x{w}", cfg.model);
    assert_eq!(cfg.output_size(h, w).unwrap(), want, "{} output_size at {h}x{w}", cfg.model);
}

#[test]
fn fcn_output_is_input_size() {
    for kind in [ModelKind::Fcn32s, ModelKind::Fcn16s, ModelKind::Fcn8s, ModelKind::Fcn8sAtonce] {
        for (h, w) in [(32, 32), (33, 47), (1, 1), (64, 21), (17, 96)] {
            check_forward(&narrow(kind, 3), h, w, (h, w));
        }
    }
}

#[test]
fn fcn_with_batch_norm() {
    // Batch norm keeps every shape (and so every crop offset).
    for kind in [ModelKind::Fcn32s, ModelKind::Fcn8s] {
        let mut c = narrow(kind, 3);
        c.batch_norm = true;
        check_forward(&c, 33, 47, (33, 47));
    }
    // The 13 trunk convolutions have 4,224 channels: torchvision's vgg16_bn adds a gamma and a
    // beta per channel (8,448 parameters) and a running mean and variance (8,448 buffers); Burn's
    // `num_params` counts all four (16,896).
    let mut cfg = ModelConfig::paper(ModelKind::Fcn8s, 21);
    let plain = SegModel::new(&cfg, &Device::flex()).unwrap().num_params();
    cfg.batch_norm = true;
    let bn = SegModel::new(&cfg, &Device::flex()).unwrap();
    assert_eq!(bn.num_params(), plain + 4 * 4_224);
    let s = bn.summary(&cfg, [3, 64, 64]).unwrap();
    let norms: Vec<&str> = s.layers.iter().filter(|l| l.name.starts_with("bn")).map(|l| l.name.as_str()).collect();
    assert_eq!(norms.len(), 13);
    assert_eq!((norms[0], norms[12]), ("bn1_1", "bn5_3"));
}

#[test]
fn unet_shapes() {
    // Unpadded depth 2: 44 -> 4 (the tiny_unet case), 60 -> 20.
    let mut c = narrow(ModelKind::Unet, 3);
    c.depth = 2;
    check_forward(&c, 44, 60, (4, 20));
    // Padded keeps the size; batch norm on.
    c.padded = true;
    c.batch_norm = true;
    c.depth = 3;
    check_forward(&c, 32, 48, (32, 48));
}

#[test]
fn unet_size_rule() {
    assert_eq!(unet_output_size(572, 4, false), Some(388));
    let valid: Vec<usize> = (1..300).filter(|&s| unet_output_size(s, 4, false).is_some()).collect();
    assert_eq!(valid, vec![188, 204, 220, 236, 252, 268, 284]);
    for s in valid {
        assert_eq!(unet_output_size(s, 4, false), Some(s - 184));
    }
    assert_eq!(nearest_valid_sizes(573, 4, false), (Some(572), Some(588)));
    assert_eq!(nearest_valid_sizes(100, 4, false), (None, Some(188)));
    assert_eq!(unet_output_size(64, 3, true), Some(64));
    assert_eq!(unet_output_size(60, 3, true), None);
}

#[test]
fn invalid_sizes_are_errors_not_panics() {
    let cfg = ModelConfig::paper(ModelKind::Unet, 2);
    let err = cfg.output_size(573, 572).unwrap_err();
    assert!(matches!(err, ModelError::InvalidUnetSize { size: 573, .. }));
    let msg = err.to_string();
    assert!(msg.contains("572") && msg.contains("588"), "{msg}");
    let model = SegModel::new(&cfg, &Device::flex()).unwrap();
    assert!(model.summary(&cfg, [1, 500, 500]).is_err());
    assert!(model.summary(&cfg, [3, 572, 572]).is_err(), "wrong channel count");
    let mut bad = cfg.clone();
    bad.classes = 0;
    assert!(SegModel::new(&bad, &Device::flex()).is_err());
}

/// Full-size reference figures: parameters, trainable parameters and forward GFLOP at sizes.
fn check_full(kind: ModelKind, classes: usize, params: usize, trainable: usize, gflop: &[(usize, f64)]) {
    let cfg = ModelConfig::paper(kind, classes);
    let model = SegModel::new(&cfg, &Device::flex()).unwrap();
    for &(size, want) in gflop {
        let s = model.summary(&cfg, [cfg.in_channels, size, size]).unwrap();
        assert_eq!(s.parameters, params, "{kind} parameters");
        assert_eq!(s.trainable_parameters, trainable, "{kind} trainable parameters");
        assert!((s.forward_gflop - want).abs() < 0.05, "{kind} at {size}: {} GFLOP, expected {want}", s.forward_gflop);
        let out = cfg.output_size(size, size).unwrap();
        assert_eq!(s.output_shape, [1, classes, out.0, out.1]);
    }
}

#[test]
fn full_size_reference_figures() {
    // Frozen bilinear upsamplers: 21 x 21 x k x k each.
    let up = |k: usize| 21 * 21 * k * k;
    check_full(ModelKind::Fcn32s, 21, 136_152_917, 136_152_917 - up(64), &[(512, 380.4), (320, 194.9)]);
    check_full(ModelKind::Fcn16s, 21, 134_815_994, 134_815_994 - up(4) - up(32), &[(512, 380.6), (320, 195.0)]);
    check_full(
        ModelKind::Fcn8s,
        21,
        134_489_759,
        134_489_759 - 2 * up(4) - up(16),
        &[(512, 380.7), (320, 195.1), (224, 125.7)],
    );
    check_full(ModelKind::Unet, 2, 31_030_658, 31_030_658, &[(572, 300.9)]);
}
