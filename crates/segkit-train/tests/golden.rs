//! Numeric checks against `fixtures/golden.json`, a copy of `shared/reference/golden.json`
//! (PyTorch 2.15, float32, seed 1234). Tolerance: 1e-5 relative (plus 1e-6 absolute).

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use segkit_models::layers::{bilinear_kernel, bilinear_up, max_pool};
use segkit_models::{Fcn, FcnOptions, FcnVariant, Unet, UnetOptions};
use segkit_train::loss::{Reduction, cross_entropy, cross_entropy_weighted};
use segkit_train::optim::{OptimSettings, Optimizer, OptimizerKind};
use segkit_train::params::{self, HostTensor, to_f32};
use serde_json::Value;

fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden.json fixture")).expect("valid JSON")
}

fn case(name: &str) -> Value {
    golden()["cases"][name].clone()
}

/// Flattens a nested list into values and shape.
fn flat(v: &Value) -> (Vec<f32>, Vec<usize>) {
    fn rec(v: &Value, out: &mut Vec<f32>, shape: &mut Vec<usize>, depth: usize) {
        match v {
            Value::Array(items) => {
                if shape.len() <= depth {
                    shape.push(items.len());
                }
                for i in items {
                    rec(i, out, shape, depth + 1);
                }
            }
            Value::Number(n) => out.push(n.as_f64().expect("number") as f32),
            other => panic!("unexpected {other}"),
        }
    }
    let (mut out, mut shape) = (Vec::new(), Vec::new());
    rec(v, &mut out, &mut shape, 0);
    (out, shape)
}

fn tensor<const D: usize>(v: &Value, device: &Device) -> Tensor<D> {
    let (values, shape) = flat(v);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// The one comparison every case goes through.
fn check(what: &str, got: &[f32], want: &Value) {
    let (want, _) = flat(want);
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * w.abs() + 1e-6, "{what}[{i}]: got {g}, expected {w}");
    }
}

#[test]
fn bilinear_kernels() {
    for k in [4, 16, 64] {
        let c = case(&format!("bilinear_kernel_k{k}"));
        check(&format!("bilinear k{k}"), &bilinear_kernel(k), &c["expected"]);
    }
}

#[test]
fn bilinear_transpose_convs() {
    let device = Device::flex();
    for name in ["deconv_bilinear_k4s2", "deconv_bilinear_k16s8"] {
        let c = case(name);
        let (k, s) = (c["kernel_size"].as_u64().unwrap() as usize, c["stride"].as_u64().unwrap() as usize);
        let up = bilinear_up(c["in_channels"].as_u64().unwrap() as usize, k, s, false, &device);
        let out = up.forward(tensor::<4>(&c["input"], &device));
        let shape: Vec<usize> =
            c["expected_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(out.dims().to_vec(), shape, "{name}");
        check(name, &to_f32(out), &c["expected"]);
    }
}

#[test]
fn maxpool_ceil_mode() {
    let device = Device::flex();
    let c = case("maxpool_ceil");
    let out = max_pool(true).forward(tensor::<4>(&c["input"], &device));
    assert_eq!(out.dims(), [1, 1, 3, 4]);
    check("maxpool_ceil", &to_f32(out), &c["expected"]);
}

#[test]
fn fcn_crop_offsets_and_shapes() {
    let device = Device::flex();
    let c = case("fcn_crop_offsets");
    for (name, variant) in
        [("fcn32s", FcnVariant::Fcn32s), ("fcn16s", FcnVariant::Fcn16s), ("fcn8s", FcnVariant::Fcn8s)]
    {
        // Narrow widths: the offsets depend on kernels, strides and paddings only.
        let o = FcnOptions {
            variant,
            n_classes: 21,
            in_channels: 3,
            base_width: 1,
            fc_width: 2,
            dropout: 0.5,
            learnable_upsampling: false,
            batch_norm: false,
        };
        let fcn = Fcn::new(&o, &device).unwrap();
        let want = &c[name]["offsets"];
        assert_eq!(fcn.offsets.final_crop as u64, want["final"].as_u64().unwrap(), "{name} final");
        assert_eq!(
            fcn.offsets.score_pool4.map(|v| v as u64),
            want.get("score_pool4").and_then(Value::as_u64),
            "{name} pool4"
        );
        assert_eq!(
            fcn.offsets.score_pool3.map(|v| v as u64),
            want.get("score_pool3").and_then(Value::as_u64),
            "{name} pool3"
        );
        for (size, shape) in c[name]["output_shape_for_input_size"].as_object().unwrap() {
            let s: usize = size.parse().unwrap();
            if s > 64 {
                continue; // the large sizes are covered by the shape trace in the models crate
            }
            let out = fcn.forward(Tensor::zeros([1, 3, s, s], &device));
            let want: Vec<usize> = shape.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(out.dims().to_vec(), want, "{name} at {s}");
        }
    }
}

#[test]
fn cross_entropy_with_ignore() {
    let device = Device::flex().autodiff();
    let c = case("cross_entropy_ignore");
    let logits = tensor::<4>(&c["logits"], &device).require_grad();
    let (t, shape) = flat(&c["targets"]);
    let batch = shape[0] as f64;
    let targets =
        Tensor::<3, Int>::from_data(TensorData::new(t.iter().map(|&v| v as i64).collect::<Vec<_>>(), shape), &device);
    let mean = cross_entropy(logits.clone(), targets.clone(), 255, None, Reduction::Mean);
    let sum = cross_entropy(logits.clone(), targets, 255, None, Reduction::Sum);
    check("mean", &to_f32(mean.clone().inner()), &c["expected_mean"]);
    // PyTorch's reduction="sum"; segkit's `sum` is Caffe's normalize: false, that sum divided by
    // the batch size.
    let per_image = serde_json::json!(c["expected_sum"].as_f64().expect("a number") / batch);
    check("sum", &to_f32(sum.inner()), &per_image);
    let grads = mean.backward();
    let g = logits.grad(&grads).expect("gradient of the logits");
    check("grad", &to_f32(g), &c["expected_grad_mean_wrt_logits"]);
}

#[test]
fn all_void_batch_gives_zero_loss() {
    let device = Device::flex();
    let logits = Tensor::<4>::ones([1, 3, 2, 2], &device);
    let targets = Tensor::<3, Int>::full([1, 2, 2], 255, &device);
    for r in [Reduction::Mean, Reduction::Sum] {
        assert_eq!(to_f32(cross_entropy(logits.clone(), targets.clone(), 255, None, r)), vec![0.0]);
    }
}

/// The per-pixel term of the U-Net weight map adds to each valid pixel's class weight, and `mean`
/// divides by the summed weights: checked against the formula computed by hand.
#[test]
fn per_pixel_weights_add_to_the_class_weights() {
    let device = Device::flex();
    // One image, 2 classes, 1x3 pixels: logits favour class 0 everywhere.
    let logits = Tensor::<4>::from_data(TensorData::new(vec![2.0f32, 1.0, 0.0, 0.0, 0.5, 1.0], [1, 2, 1, 3]), &device);
    let targets = Tensor::<3, Int>::from_data(TensorData::new(vec![0i64, 1, 255], [1, 1, 3]), &device);
    let class_w = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 3.0], [2]), &device);
    let extra = Tensor::<3>::from_data(TensorData::new(vec![0.5f32, 2.0, 7.0], [1, 1, 3]), &device);
    let nll = |own: f64, other: f64| -(own - (own.exp() + other.exp()).ln());
    // Pixel 0: class 0, weight 1 + 0.5; pixel 1: class 1, weight 3 + 2; pixel 2: void, nothing.
    let (w0, w1) = (1.5, 5.0);
    let (l0, l1) = (nll(2.0, 0.0), nll(0.5, 1.0));
    let want_mean = (w0 * l0 + w1 * l1) / (w0 + w1);
    let got = cross_entropy_weighted(
        logits.clone(),
        targets.clone(),
        255,
        Some(&class_w),
        Some(extra.clone()),
        Reduction::Mean,
    );
    assert!((to_f32(got)[0] as f64 - want_mean).abs() < 1e-6);
    let got = cross_entropy_weighted(logits.clone(), targets.clone(), 255, Some(&class_w), Some(extra), Reduction::Sum);
    assert!((to_f32(got)[0] as f64 - (w0 * l0 + w1 * l1)).abs() < 1e-5);
    // Without the extra term it is the class-weighted loss.
    let plain = cross_entropy(logits.clone(), targets.clone(), 255, Some(&class_w), Reduction::Mean);
    let none = cross_entropy_weighted(logits, targets, 255, Some(&class_w), None, Reduction::Mean);
    assert_eq!(to_f32(plain), to_f32(none));
}

#[derive(Module, Debug)]
struct OneParam {
    w: Param<Tensor<1>>,
}

#[test]
fn sgd_momentum_matches_pytorch() {
    let device = Device::flex().autodiff();
    let c = case("sgd_momentum");
    let mut m = OneParam { w: Param::from_tensor(tensor::<1>(&c["init"], &device).require_grad()) };
    let settings = OptimSettings {
        kind: OptimizerKind::Sgd,
        momentum: c["momentum"].as_f64().unwrap(),
        weight_decay: 0.0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        bias_lr_mult: 1.0,
        bias_decay: true,
    };
    let mut opt = Optimizer::new(settings);
    let lr = c["lr"].as_f64().unwrap();
    for (i, g) in c["grads"].as_array().unwrap().iter().enumerate() {
        let mut grads = GradientsParams::new();
        grads.register(m.w.id, tensor::<1>(g, &device.clone().inner()));
        m = opt.step(lr, m, grads);
        check(&format!("step {i}"), &to_f32(m.w.val().inner()), &c["expected_params_after_each_step"][i]);
    }
}

#[test]
fn tiny_unet_matches_pytorch() {
    let device = Device::flex();
    let c = case("tiny_unet");
    let cfg = &c["config"];
    let o = UnetOptions {
        n_classes: cfg["n_class"].as_u64().unwrap() as usize,
        in_channels: cfg["in_channels"].as_u64().unwrap() as usize,
        depth: cfg["depth"].as_u64().unwrap() as usize,
        base_width: cfg["base"].as_u64().unwrap() as usize,
        padded: false,
        batch_norm: false,
    };
    let unet = Unet::new(&o, &device);
    // PyTorch names, with `final` (a Rust keyword) as `final_conv`.
    let state: BTreeMap<String, HostTensor> = c["state_dict"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let (values, shape) = flat(v);
            (k.replace("final.", "final_conv."), HostTensor { shape, values })
        })
        .collect();
    let (unet, report) = params::load(unet, &state);
    assert!(report.missing.is_empty() && report.mismatched.is_empty(), "{report:?}");
    assert_eq!(report.loaded.len(), state.len());
    let out = unet.forward(tensor::<4>(&c["input"], &device));
    assert_eq!(out.dims(), [1, 2, 4, 4]);
    check("tiny_unet output", &to_f32(out.clone()), &c["expected_output"]);
    let (t, shape) = flat(&c["targets"]);
    let targets =
        Tensor::<3, Int>::from_data(TensorData::new(t.iter().map(|&v| v as i64).collect::<Vec<_>>(), shape), &device);
    let loss = cross_entropy(out, targets, 255, None, Reduction::Mean);
    check("tiny_unet loss", &to_f32(loss), &c["expected_loss_mean"]);
}
