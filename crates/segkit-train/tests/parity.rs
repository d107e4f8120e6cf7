//! Training parity with PyTorch, step by step: the same initial weights and the same batches,
//! through segkit's own step (`trainer::optimiser_step`, the function the training loop runs)
//! and its own config, optimiser and schedule code, must give PyTorch's loss and learning rate
//! at every step and PyTorch's weights (and batch-norm statistics) at the end.
//!
//! Fixtures: `scripts/make_parity_fixtures.py` (PyTorch 2.15, CPU), one safetensors file per
//! case under tests/fixtures/parity/; each names the reference it follows. Deviations are
//! relative: a step's loss against PyTorch's, a tensor's largest difference against its largest
//! magnitude.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use segkit_models::SegModel;
use segkit_train::RunConfig;
use segkit_train::export::{from_torch_names, torch_name};
use segkit_train::optim::Optimizer;
use segkit_train::params::{HostTensor, collect};
use segkit_train::trainer::{StepOutcome, StepSpec, optimiser_step};

/// One case's fixture.
struct Case {
    init: BTreeMap<String, HostTensor>,
    fin: BTreeMap<String, HostTensor>,
    /// `(shape, bytes)` of each batch's uint8 image and labels.
    xs: Vec<(Vec<usize>, Vec<u8>)>,
    ys: Vec<(Vec<usize>, Vec<u8>)>,
    loss: Vec<f64>,
    lr: Vec<f64>,
    overrides: Vec<String>,
    accum: usize,
    /// PyTorch against itself after a change that only moves the rounding (the conv biases in
    /// front of a batch norm shifted by 1e-7): the float noise this case amplifies, if measured.
    self_deviation: Option<f64>,
}

fn load(name: &str) -> Case {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(format!("{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap_or_default();
    let f64s = |k: &str| -> Vec<f64> {
        let v = st.tensor(k).unwrap();
        assert_eq!(v.dtype(), Dtype::F64);
        v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let (mut init, mut fin) = (BTreeMap::new(), BTreeMap::new());
    let (mut xs, mut ys) = (BTreeMap::new(), BTreeMap::new());
    for (k, v) in st.tensors() {
        let host = || HostTensor {
            shape: v.shape().to_vec(),
            values: v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        };
        if let Some(n) = k.strip_prefix("init.") {
            init.insert(n.to_string(), host());
        } else if let Some(n) = k.strip_prefix("final.") {
            fin.insert(n.to_string(), host());
        } else if let Some(i) = k.strip_prefix("x.") {
            xs.insert(i.parse::<usize>().unwrap(), (v.shape().to_vec(), v.data().to_vec()));
        } else if let Some(i) = k.strip_prefix("y.") {
            ys.insert(i.parse::<usize>().unwrap(), (v.shape().to_vec(), v.data().to_vec()));
        }
    }
    Case {
        init,
        fin,
        xs: xs.into_values().collect(),
        ys: ys.into_values().collect(),
        loss: f64s("loss"),
        lr: f64s("lr"),
        overrides: serde_json::from_str(&meta["overrides"]).unwrap(),
        accum: meta["accum"].parse().unwrap(),
        self_deviation: meta.get("self_deviation").map(|v| v.parse().unwrap()),
    }
}

/// The largest deviations of a case: per-step loss, per-step learning rate, final tensors
/// (printed for the record: `cargo test --release --workspace --test parity -- --nocapture`).
#[derive(Debug)]
#[allow(dead_code)]
struct Deviation {
    loss: f64,
    lr: f64,
    param: f64,
    worst_param: String,
    /// PyTorch against itself, where the fixture measured it (see `Case::self_deviation`).
    pytorch_self: Option<f64>,
}

/// Trains `name`'s case through segkit and returns how far it strayed from PyTorch; fails when
/// a step's loss is further than `loss_tol` (relative) or a final tensor further than
/// `param_tol`.
fn check(name: &str, loss_tol: f64, param_tol: f64) -> Deviation {
    let c = load(name);
    // The quick start's `batch_norm = true` is a U-Net choice; the FCN fixtures were made before
    // the option applied to FCNs too and leave it out (their trunk has none). U-Net fixtures set it.
    let mut overrides = vec!["model.batch_norm=false".to_string()];
    overrides.extend(c.overrides.iter().cloned());
    overrides.push("train.device=\"cpu\"".into());
    let cfg = RunConfig::quickstart(&overrides).unwrap_or_else(|e| panic!("{name}: {e}"));
    let device = Device::flex().autodiff();
    let model = SegModel::new(&cfg.model, &device).unwrap();
    let (mut model, report, unused) = from_torch_names(model, c.init.clone());
    assert!(report.missing.is_empty() && report.mismatched.is_empty(), "{name}: {report:?}");
    assert!(unused.is_empty(), "{name}: tensors of the fixture the model lacks: {unused:?}");
    let mut opt = Optimizer::new(cfg.optim_settings());
    let steps = c.loss.len();
    let sched = cfg.lr_schedule(steps);
    let weights: Vec<f32> = cfg.train.class_weights.iter().map(|&w| w as f32).collect();
    let spec = StepSpec::new(&cfg, (!weights.is_empty()).then_some(&weights[..]), 255, &device);
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(f64::MIN_POSITIVE);
    let (mut dev_loss, mut dev_lr) = (0f64, 0f64);
    for s in 0..steps {
        let batches = (0..c.accum)
            .map(|a| {
                let (xshape, x) = &c.xs[s * c.accum + a];
                let (yshape, y) = &c.ys[s * c.accum + a];
                let x: Vec<f32> = x.iter().map(|&v| v as f32 / 255.0 - 0.5).collect();
                let y: Vec<i32> = y.iter().map(|&v| v as i32).collect();
                (
                    Tensor::<4>::from_data(TensorData::new(x, xshape.clone()), &device),
                    Tensor::<3, Int>::from_data(TensorData::new(y, yshape.clone()), &device),
                )
            })
            .collect();
        let lr = sched.lr(s);
        dev_lr = dev_lr.max(rel(lr, c.lr[s]));
        assert!(rel(lr, c.lr[s]) <= 1e-6, "{name}: step {}: lr {lr}, PyTorch {}", s + 1, c.lr[s]);
        let (m, outcome) = optimiser_step(model, &mut opt, lr, batches, &spec, s);
        model = m;
        let StepOutcome::Updated { loss } = outcome else { panic!("{name}: step {}: {outcome:?}", s + 1) };
        let d = rel(loss as f64, c.loss[s]);
        dev_loss = dev_loss.max(d);
        if std::env::var("PARITY_TRACE").is_ok() {
            eprintln!("  {name} step {}: loss {loss}, PyTorch {}, relative {d:.2e}", s + 1, c.loss[s]);
        }
        assert!(d <= loss_tol, "{name}: step {}: loss {loss}, PyTorch {} (relative {d:.2e})", s + 1, c.loss[s]);
    }
    let got = collect(&model.valid());
    let (mut dev_param, mut worst) = (0f64, String::new());
    for (path, t) in &got {
        let torch = torch_name(path);
        let want = c.fin.get(&torch).unwrap_or_else(|| &c.init[&torch]);
        assert_eq!(t.shape, want.shape, "{name}: {torch}");
        let scale = want.values.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(f64::MIN_POSITIVE);
        let diff = t.values.iter().zip(&want.values).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
        let d = diff / scale;
        if d > dev_param {
            (dev_param, worst) = (d, torch.clone());
        }
        if std::env::var("PARITY_TRACE").is_ok() && d > 1e-5 {
            eprintln!("  {name}: {torch} {d:.2e} of its scale {scale:.3e}");
        }
        assert!(d <= param_tol, "{name}: final {torch} differs from PyTorch's by {d:.2e} of its scale");
    }
    let dev =
        Deviation { loss: dev_loss, lr: dev_lr, param: dev_param, worst_param: worst, pytorch_self: c.self_deviation };
    eprintln!("parity {name}: {dev:?}");
    dev
}

#[test]
fn fcn32s_caffe_recipe_sum_loss() {
    check("fcn32s_caffe_sum", 1e-4, 1e-4);
}

#[test]
fn fcn16s_caffe_recipe_sum_loss() {
    check("fcn16s_caffe_sum", 1e-4, 1e-4);
}

#[test]
fn fcn8s_caffe_recipe_sum_loss() {
    check("fcn8s_caffe_sum", 1e-4, 1e-4);
}

#[test]
fn fcn8s_weighted_mean_loss() {
    check("fcn8s_caffe_mean_weighted", 1e-4, 1e-4);
}

#[test]
fn fcn8s_at_once_with_learnable_upsampling() {
    check("fcn8s_atonce_learnable", 1e-4, 1e-4);
}

#[test]
fn unet_paper_sgd() {
    check("unet_paper_sgd", 1e-4, 1e-4);
}

#[test]
fn unet_batch_norm_sgd() {
    check("unet_bn_sgd", 1e-4, 1e-4);
}

/// Held to 1e-4 like the others (seen: 1.8e-5), but this is the one case that amplifies float
/// noise: Adam turns a gradient that is a near-cancellation (the batch-norm shifts here) into a
/// full step. The fixture measures it on PyTorch alone: the conv biases in front of a batch norm
/// shifted by 1e-7 (the function cannot change; the batch norm subtracts the mean), the same
/// training rerun, final tensors moved by 1.6e-2 of their scale (`unet_bn_sgd`: 1.9e-6). An
/// earlier initialisation of this case gave 1e-2 against segkit for that reason; a regenerated
/// fixture may need a bound near PyTorch's own figure, which the test prints.
#[test]
fn unet_batch_norm_adam_poly_accumulation() {
    check("unet_bn_adam_poly_accum2", 1e-4, 1e-4);
}

/// Dropout, which the parity cases switch off: on a training device it zeroes a fraction p of
/// the activations and scales the rest by 1 / (1 - p), as PyTorch's does; off in evaluation.
#[test]
fn dropout_rate_scaling_and_eval() {
    let mut cfg = segkit_models::ModelConfig::paper(segkit_models::ModelKind::Fcn32s, 3);
    (cfg.base_width, cfg.fc_width, cfg.dropout) = (1, 4, 0.3);
    let device = Device::flex().autodiff();
    let SegModel::Fcn(fcn) = SegModel::new(&cfg, &device).unwrap() else { panic!("an FCN") };
    let n = 200_000;
    let ones = Tensor::<4>::ones([1, 1, 1, n], &device);
    let out = segkit_train::params::to_f32(fcn.vgg.drop6.forward(ones.clone()).inner());
    let zeros = out.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
    // Binomial: sd = sqrt(p (1 - p) / n) = 0.001; 5 sd.
    assert!((zeros - 0.3).abs() < 0.005, "dropped fraction {zeros}");
    assert!(out.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6), "kept values are scaled by 1/(1-p)");
    let eval = fcn.valid();
    let inference = Tensor::<4>::ones([1, 1, 1, n], &Device::flex());
    let out = segkit_train::params::to_f32(eval.vgg.drop6.forward(inference));
    assert!(out.iter().all(|&v| v == 1.0), "dropout is off in evaluation");
}
