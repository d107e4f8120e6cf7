//! The GPU path checked against the CPU (flex), check by check: what `segkit selftest` runs after
//! a user installs a GPU driver, and what the GPU tests run on Mesa's software adapters.
//!
//! Every check builds the same tiny network on both devices with the same weights and data:
//! - `kernels/long-loops`: weight gradients whose kernels loop past 65,535 iterations;
//! - `kernels/gemm-conv`: segkit's GEMM convolution (`--gpu-conv gemm`) against Burn's on the
//!   CPU, layer by layer, values and all three gradients;
//! - `forward/KIND`: logits within 1e-4 relative (of the largest CPU logit);
//! - `gradients/KIND`: the masked, class-weighted cross-entropy (void pixels in the labels) within
//!   1e-3 relative, and every trainable parameter's gradient within 1e-3 relative (of that
//!   gradient's largest CPU entry, or of a thousandth of the model's largest gradient entry if
//!   that is larger: a bias before a batch norm has a gradient that is zero but for rounding);
//! - `train/sgd`, `train/adam`: 5 steps through the real trainer (SGD with momentum, weight decay
//!   and poly LR; Adam with cosine LR), per-step losses within 1e-3 relative;
//! - `train/f16-mixed`: the SGD run in f16-mixed precision on the GPU against f32 on the CPU,
//!   within [`F16_LOSS_LIMIT`];
//! - `resume/gpu->cpu`, `resume/cpu->gpu`: a run stopped after 3 steps on one device continues on
//!   the other with the uninterrupted run's 4th and 5th losses (1e-3 relative);
//! - `predict`: the same mask on both, except where the CPU's two best class probabilities are
//!   within 1e-3 of each other (a tie that float noise may break either way).
//!
//! Dropout is off in every check (its random masks differ between devices by design).
//! This module does no printing: results go to the caller's callback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::TensorData;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use segkit_models::{ModelConfig, ModelKind, SegModel};

use crate::config::RunConfig;
use crate::loss::{Reduction, cross_entropy};
use crate::params::{self, HostTensor, to_f32};
use crate::trainer::{Event, Observer, Outcome, TrainOptions, train};
use crate::{TrainError, device};

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    /// The largest deviation found (or why the check could not run).
    pub detail: String,
    pub seconds: f64,
}

/// The model cases: every kind and option the GPU kernels must handle.
pub fn model_cases() -> Vec<(&'static str, ModelConfig, usize)> {
    let fcn = |kind, learnable| {
        let mut c = ModelConfig::paper(kind, 3);
        (c.base_width, c.fc_width, c.dropout, c.learnable_upsampling) = (2, 8, 0.0, learnable);
        c
    };
    let mut unet = ModelConfig::paper(ModelKind::Unet, 3);
    (unet.base_width, unet.depth, unet.in_channels) = (2, 2, 3);
    let unet_size = (36..).find(|&s| unet.output_size(s, s).is_ok()).expect("a valid U-Net size");
    let mut unet_bn = unet.clone();
    (unet_bn.padded, unet_bn.batch_norm) = (true, true);
    // Cheapest first: on a software driver with a cold autotune cache each new kernel shape costs
    // seconds of compilation, and the FCNs' conv1_1 padding of 100 makes even a 24x24 input a
    // 222x222 convolution; the U-Net cases report while the FCN ones are still being tuned.
    vec![
        ("unet", unet, unet_size),
        ("unet-padded-bn", unet_bn, 16),
        ("fcn32s", fcn(ModelKind::Fcn32s, false), 24),
        ("fcn16s", fcn(ModelKind::Fcn16s, false), 24),
        ("fcn8s", fcn(ModelKind::Fcn8s, false), 24),
        ("fcn8s-atonce", fcn(ModelKind::Fcn8sAtonce, true), 24),
    ]
}

/// Largest `|a - b|` over the largest `|b|` (the reference), so that "relative" means relative to
/// the tensor's scale, not to entries that happen to be near zero.
pub fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    rel_diff_floored(a, b, 1e-12)
}

/// [`rel_diff`] with the reference scale at least `floor`: for a gradient that is zero in exact
/// arithmetic, whose entries on both devices are rounding noise (a convolution bias followed by a
/// batch norm, which subtracts each channel's mean), so that noise is not read as a wrong kernel.
pub fn rel_diff_floored(a: &[f32], b: &[f32], floor: f64) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(floor);
    let diff =
        a.iter().zip(b).fold(0f64, |m, (p, q)| if p.is_finite() { m.max((p - q).abs() as f64) } else { f64::INFINITY });
    diff / scale
}

/// Deterministic weights for every trainable tensor (frozen bilinear upsamplers and batch-norm
/// statistics keep their values): score layers start at zero in the models, which would make
/// the forward check trivially pass.
fn random_weights(model: &SegModel, seed: u64) -> std::collections::BTreeMap<String, HostTensor> {
    let mut all = params::collect(model);
    let mut rng = StdRng::seed_from_u64(seed);
    for path in params::trainable_paths(model) {
        let h = all.get_mut(&path).expect("a trainable tensor is collected");
        let fan_in: usize = h.shape.iter().skip(1).product::<usize>().max(1);
        let scale = if h.shape.len() > 1 { (2.0 / fan_in as f64).sqrt() } else { 0.1 };
        for v in &mut h.values {
            *v = ((rng.random::<f64>() * 2.0 - 1.0) * scale * 1.7) as f32;
        }
    }
    all
}

/// The check of kernels whose loops run long ([`check_long_loops`]); part of every training
/// check, whatever the model kind.
pub const LONG_LOOPS: &str = "kernels/long-loops";

/// How many checks [`run`] makes.
pub fn check_count() -> usize {
    2 * model_cases().len() + 8
}

/// The checks of one model kind that a command using it needs: the forward checks of every case
/// of that kind, for training [`LONG_LOOPS`] and their gradient checks too, and [`GEMM_CONV`]
/// where this process runs GPU convolutions as GEMMs (`--gpu-conv gemm`). `adapter_check`
/// runs these before a run uses an adapter; `segkit selftest` runs them all.
pub fn check_names(kind: ModelKind, gradients: bool) -> Vec<String> {
    let mut names = Vec::new();
    if gradients {
        names.push(LONG_LOOPS.to_string());
    }
    if segkit_models::conv::gpu_conv() != segkit_models::conv::GpuConv::Burn {
        names.push(GEMM_CONV.to_string());
    }
    for (name, cfg, _) in model_cases() {
        if cfg.model == kind {
            names.push(format!("forward/{name}"));
            if gradients {
                names.push(format!("gradients/{name}"));
            }
        }
    }
    names
}

/// The forward checks (and with `gradients` the gradient checks) of every case of `kind` on `gpu`
/// against the CPU: what [`check_names`] lists, in that order.
pub fn check_kind(kind: ModelKind, gpu: &Device, gradients: bool, out: &mut dyn FnMut(CheckResult)) {
    if gradients {
        check_long_loops(gpu, out);
    }
    if segkit_models::conv::gpu_conv() != segkit_models::conv::GpuConv::Burn {
        check_gemm_conv(gpu, out);
    }
    for (name, cfg, size) in model_cases() {
        if cfg.model == kind {
            check_model(name, &cfg, size, gpu, gradients, out);
        }
    }
}

/// Kernels whose loops run far past 65,535 iterations per invocation, against the CPU: the
/// weight gradients of a 3x3 convolution over a 256x256 map and of a 2x2 stride-2 transposed
/// convolution onto a 512x512 one (Burn computes each as a direct convolution whose kernel is
/// the whole map, about 200,000 loop iterations per invocation). Mesa 22.3's llvmpipe ends
/// every loop of a shader once 65,535 iterations have run in all, silently
/// (`LP_MAX_TGSI_LOOP_ITERATIONS`; docs/GPU.md, section 3); the model checks' tiny sizes stay
/// under that limit for U-Net, while its gradients at training sizes would not.
fn check_long_loops(gpu: &Device, out: &mut dyn FnMut(CheckResult)) {
    use burn::tensor::module::{conv_transpose2d, conv2d};
    use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
    let t0 = Instant::now();
    let (n, m) = (256usize, 512usize);
    let mut rng = StdRng::seed_from_u64(13);
    let mut draw = |len: usize| (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect::<Vec<f32>>();
    let (x, w, dy) = (draw(n * n), draw(9), draw(n * n));
    let (wt, dz) = (draw(4), draw(m * m));
    let run = |d: &Device| {
        let d = d.clone().autodiff();
        let t = |v: &Vec<f32>, shape: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v.clone(), shape), &d);
        let (w, wt) = (t(&w, [1, 1, 3, 3]).require_grad(), t(&wt, [1, 1, 2, 2]).require_grad());
        let y = conv2d(t(&x, [1, 1, n, n]), w.clone(), None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
        let options = ConvTransposeOptions::new([2, 2], [0, 0], [0, 0], [1, 1], 1);
        let z = conv_transpose2d(t(&x, [1, 1, n, n]), wt.clone(), None, options);
        let grads = ((y * t(&dy, [1, 1, n, n])).sum() + (z * t(&dz, [1, 1, m, m])).sum()).backward();
        let g = |p: &Tensor<4>| p.grad(&grads).map(|g| to_f32(g)).unwrap_or_default();
        (g(&w), g(&wt))
    };
    let ((a_conv, a_up), (b_conv, b_up)) = (run(&Device::flex()), run(gpu));
    let (d_conv, d_up) = (rel_diff(&b_conv, &a_conv), rel_diff(&b_up, &a_up));
    let ok = d_conv <= 1e-3 && d_up <= 1e-3 && !a_conv.is_empty() && !a_up.is_empty();
    let detail = format!(
        "weight gradients over {n}x{n} (conv 3x3) and {m}x{m} (transposed 2x2/2): {d_conv:.2e} and {d_up:.2e} \
         relative (limit 1e-3){}",
        if ok { "" } else { "; a driver that ends long loops early (docs/GPU.md, section 3)" }
    );
    out(result(LONG_LOOPS, ok, detail, t0));
}

/// The check of mixed-precision training (`train.precision = "f16-mixed"`).
pub const F16_MIXED: &str = "train/f16-mixed";

/// How far f16-mixed losses may be from f32 ones over the 5 steps of the tiny run: f16 keeps 11
/// significant bits (a relative rounding of 4.9e-4 per operation), which a U-Net's chain of
/// convolutions and batch norms compounds into about 1e-3 per step; 2e-2 leaves room for five
/// steps of trajectories that drift apart, and still fails a cast or a loss scale that is wrong
/// (those give errors of order one).
pub const F16_LOSS_LIMIT: f64 = 2e-2;

/// The check of the GEMM convolution path ([`check_gemm_conv`]).
pub const GEMM_CONV: &str = "kernels/gemm-conv";

/// segkit's GEMM convolution (`segkit_models::gpu_conv`, what `--gpu-conv gemm` runs) on `gpu`
/// against Burn's convolution on the CPU, whichever path the models use in this process: values
/// within 1e-4 and the input, weight and bias gradients within 1e-3 relative, for a 3x3
/// "same" layer, an unpadded one (U-Net), conv1_1's padding of 100 (an input gradient that
/// crops), fc6's 7x7 and a 1x1 score layer, the second with im2col chunks of one image and of
/// a few rows (a budget of 4096 elements for that case).
fn check_gemm_conv(gpu: &Device, out: &mut dyn FnMut(CheckResult)) {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use segkit_models::gpu_conv;
    let t0 = Instant::now();
    // (n, c_in, c_out, size, k, pad, im2col budget in elements; 0: the default)
    let cases = [
        (2, 3, 8, 30, 3, 1, 0),
        (2, 4, 6, 20, 3, 0, 4096),
        (1, 3, 4, 6, 3, 100, 0),
        (2, 8, 16, 9, 7, 0, 0),
        (2, 8, 4, 10, 1, 0, 0),
    ];
    let mut worst = (String::from("-"), 0f64);
    let mut ok = true;
    for (i, &(n, c_in, c_out, size, k, pad, budget)) in cases.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(17 + i as u64);
        let mut draw = |len: usize| (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect::<Vec<f32>>();
        let out_size = size + 2 * pad + 1 - k;
        let (x, w, b, dy) =
            (draw(n * c_in * size * size), draw(c_out * c_in * k * k), draw(c_out), draw(n * c_out * out_size * out_size));
        let run = |d: &Device, gemm: bool| {
            let d = d.clone().autodiff();
            let t = |v: &Vec<f32>, shape: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v.clone(), shape), &d);
            let xt = t(&x, [n, c_in, size, size]).require_grad();
            let wt = t(&w, [c_out, c_in, k, k]).require_grad();
            let bt = Tensor::<1>::from_data(TensorData::new(b.clone(), [c_out]), &d).require_grad();
            let y = if gemm {
                gpu_conv::conv2d_gemm(xt.clone(), wt.clone(), bt.clone(), [pad, pad])
            } else {
                conv2d(xt.clone(), wt.clone(), Some(bt.clone()), ConvOptions::new([1, 1], [pad, pad], [1, 1], 1))
            };
            let dyt = t(&dy, [n, c_out, out_size, out_size]);
            let grads = (y.clone() * dyt).sum().backward();
            let g4 = |p: &Tensor<4>| p.grad(&grads).map(|g| to_f32(g)).unwrap_or_default();
            let g1 = bt.grad(&grads).map(|g| to_f32(g)).unwrap_or_default();
            [to_f32(y.inner()), g4(&xt), g4(&wt), g1]
        };
        if budget > 0 {
            gpu_conv::set_cols_budget(budget);
        }
        let got = run(gpu, true);
        if budget > 0 {
            gpu_conv::reset_cols_budget();
        }
        let want = run(&Device::flex(), false);
        for (j, (what, limit)) in [("output", 1e-4), ("input gradient", 1e-3), ("weight gradient", 1e-3), ("bias gradient", 1e-3)].into_iter().enumerate() {
            let d = rel_diff(&got[j], &want[j]);
            let fine = d <= limit && !want[j].is_empty();
            ok &= fine;
            if !fine || d > worst.1 || d.is_nan() {
                worst = (format!("{k}x{k} pad {pad} {what}"), d);
            }
        }
    }
    if crate::fault::wrong_gpu_gradient() {
        (ok, worst) = (false, ("3x3 pad 1 weight gradient (SEGKIT_FAULT)".into(), 1.0));
    }
    let detail = format!("{} layer shapes, worst {} {:.2e} relative (limits 1e-4 values, 1e-3 gradients)", cases.len(), worst.0, worst.1);
    out(result(GEMM_CONV, ok, detail, t0));
}

/// Forward and (with `gradients`) gradient checks for one model case.
/// Each result goes to `out` as soon as its check ends, so that a check that hangs on a driver
/// does not hide the ones before it.
fn check_model(
    name: &str,
    cfg: &ModelConfig,
    size: usize,
    gpu: &Device,
    gradients: bool,
    out: &mut dyn FnMut(CheckResult),
) {
    let t0 = Instant::now();
    let cpu = Device::flex().autodiff();
    let gpu = gpu.clone().autodiff();
    let built = SegModel::new(cfg, &cpu).and_then(|m| SegModel::new(cfg, &gpu).map(|g| (m, g)));
    let (m_cpu, m_gpu) = match built {
        Ok(p) => p,
        Err(e) => {
            out(fail(&format!("forward/{name}"), e.to_string(), t0));
            return;
        }
    };
    let w = random_weights(&m_cpu, 7);
    let (m_cpu, _) = params::load(m_cpu, &w);
    let (m_gpu, _) = params::load(m_gpu, &w);

    let mut rng = StdRng::seed_from_u64(11);
    let [b, c] = [2, cfg.in_channels];
    let x: Vec<f32> = (0..b * c * size * size).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    let (oh, ow) = cfg.output_size(size, size).expect("a valid size");
    let y: Vec<i64> = (0..b * oh * ow)
        .map(|_| if rng.random::<f32>() < 0.1 { 255 } else { rng.random_range(0..cfg.classes as i64) })
        .collect();
    let weights = [0.5f32, 1.0, 2.0];
    let run = |m: &SegModel, d: &Device| {
        let x = Tensor::<4>::from_data(TensorData::new(x.clone(), [b, c, size, size]), d);
        let y = Tensor::<3, Int>::from_data(TensorData::new(y.clone(), [b, oh, ow]), d);
        let wt = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [3]), d);
        let logits = m.forward(x);
        let loss = cross_entropy(logits.clone(), y, 255, Some(&wt), Reduction::Mean);
        let grads = if gradients { params::gradients(m, &loss.backward()) } else { Vec::new() };
        (to_f32(logits.inner()), to_f32(loss.inner()), grads)
    };
    let (l_cpu, loss_cpu, g_cpu) = run(&m_cpu, &cpu);
    let (l_gpu, loss_gpu, mut g_gpu) = run(&m_gpu, &gpu);
    let fwd = rel_diff(&l_gpu, &l_cpu);
    out(result(&format!("forward/{name}"), fwd <= 1e-4, format!("logits: {fwd:.2e} relative (limit 1e-4)"), t0));
    if !gradients {
        return;
    }
    if crate::fault::wrong_gpu_gradient() {
        corrupt_first_gradient(&mut g_gpu);
    }

    let t1 = Instant::now();
    let dl = rel_diff(&loss_gpu, &loss_cpu);
    let mut worst = (String::from("-"), -1f64);
    let mut missing = Vec::new();
    // A gradient's deviation is relative to its own largest entry, but never to less than a
    // thousandth of the model's largest gradient entry (see `rel_diff_floored`).
    let largest = g_cpu.iter().flat_map(|(_, g)| g).fold(0f64, |m, v| m.max(v.abs() as f64));
    for (path, g) in &g_cpu {
        match g_gpu.iter().find(|(p, _)| p == path) {
            Some((_, h)) => {
                let d = rel_diff_floored(h, g, 1e-3 * largest);
                if d > worst.1 || d.is_nan() {
                    worst = (path.clone(), d);
                }
            }
            None => missing.push(path.clone()),
        }
    }
    let ok = dl <= 1e-3 && (0.0..=1e-3).contains(&worst.1) && missing.is_empty() && !g_cpu.is_empty();
    let mut detail = format!(
        "loss {:.6} vs {:.6} ({dl:.2e}); {} gradients, worst {} {:.2e} relative (limit 1e-3)",
        loss_gpu.first().copied().unwrap_or(f32::NAN),
        loss_cpu.first().copied().unwrap_or(f32::NAN),
        g_cpu.len(),
        worst.0,
        worst.1
    );
    if !missing.is_empty() {
        detail.push_str(&format!("; no GPU gradient for {}", missing.join(", ")));
    }
    out(result(&format!("gradients/{name}"), ok, detail, t1));
}

/// `SEGKIT_FAULT=wrong-gpu-gradient`: the GPU side's first non-zero gradient made wrong (its
/// sign flipped and its scale added), as a driver with a wrong kernel would, so that the tests
/// can prove that a wrong adapter is refused without needing a wrong driver.
fn corrupt_first_gradient(grads: &mut [(String, Vec<f32>)]) {
    if let Some((_, g)) = grads.iter_mut().find(|(_, g)| g.iter().any(|v| *v != 0.0)) {
        let scale = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        for v in g.iter_mut() {
            *v = scale - *v;
        }
    }
}

fn result(name: &str, passed: bool, detail: String, t0: Instant) -> CheckResult {
    CheckResult { name: name.to_string(), passed, detail, seconds: t0.elapsed().as_secs_f64() }
}

fn fail(name: &str, detail: String, t0: Instant) -> CheckResult {
    result(name, false, detail, t0)
}

/// Per-step losses of a run; raises `stop` after step `stop_at`.
struct Losses {
    losses: Vec<f32>,
    stop: Arc<AtomicBool>,
    stop_at: usize,
}

impl Observer for Losses {
    fn event(&mut self, e: Event<'_>) {
        if let Event::Step { step, loss, .. } = e {
            self.losses.push(loss);
            if step == self.stop_at {
                self.stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// A tiny training config on `device`: 16x16 synthetic images, U-Net with batch norm, 5 steps.
fn tiny_run(out: &Path, name: &str, device: &str, optimizer: &str) -> Result<RunConfig, TrainError> {
    let mut o: Vec<String> = [
        "data.synth_size=16",
        "data.synth_train=10",
        "data.synth_val=2",
        "augment.crop=16",
        "model.depth=2",
        "model.base_width=4",
        "train.batch_size=2",
        "train.epochs=0",
        "train.max_steps=5",
        "train.val_every=0",
        "train.val_every_steps=0",
        "train.workers=1",
        "train.grid_images=0",
        "train.warmup_steps=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if optimizer == "sgd" {
        o.extend(
            [
                "train.optimizer=\"sgd\"",
                "train.lr=0.05",
                "train.momentum=0.9",
                "train.weight_decay=0.0005",
                "train.schedule=\"poly\"",
            ]
            .map(String::from),
        );
    } else {
        o.extend(["train.optimizer=\"adam\"", "train.lr=0.01", "train.schedule=\"cosine\""].map(String::from));
    }
    o.push(format!("train.device={device:?}"));
    o.push(format!("name={name:?}"));
    o.push(format!("train.out_dir={:?}", out.display().to_string()));
    RunConfig::quickstart(&o)
}

/// Trains `cfg` (or resumes `resume`), stopping after `stop_at` steps; the losses and the run dir.
fn losses(cfg: RunConfig, resume: Option<PathBuf>, stop_at: usize) -> Result<(Vec<f32>, PathBuf), TrainError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut obs = Losses { losses: Vec::new(), stop: stop.clone(), stop_at };
    let out = train(cfg, TrainOptions { resume, stop, resume_anyway: false }, &mut obs)?;
    let dir = match out {
        Outcome::Finished { run_dir, .. } | Outcome::Interrupted { run_dir, .. } => run_dir,
    };
    Ok((obs.losses, dir))
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).fold(0f64, |m, (p, q)| m.max(((p - q).abs() / q.abs().max(1e-12)) as f64))
}

fn fmt_losses(v: &[f32]) -> String {
    v.iter().map(|l| format!("{l:.5}")).collect::<Vec<_>>().join(" ")
}

/// Training, resume and predict checks, which go through the trainer by device name.
fn check_training(gpu_name: &str, scratch: &Path, report: &mut dyn FnMut(&CheckResult), out: &mut Vec<CheckResult>) {
    let mut push = |r: CheckResult, out: &mut Vec<CheckResult>| {
        report(&r);
        out.push(r);
    };
    let mut cpu_sgd = None;
    for opt in ["sgd", "adam"] {
        let t0 = Instant::now();
        let name = format!("train/{opt}");
        let pair = tiny_run(scratch, &format!("{opt}-cpu"), "cpu", opt)
            .and_then(|c| losses(c, None, usize::MAX))
            .and_then(|a| Ok((a, losses(tiny_run(scratch, &format!("{opt}-gpu"), gpu_name, opt)?, None, usize::MAX)?)));
        match pair {
            Ok(((a, dir_cpu), (b, _))) => {
                let d = max_rel(&b, &a);
                let ok = d <= 1e-3 && a.len() == 5;
                let detail =
                    format!("losses gpu [{}] cpu [{}]: {d:.2e} relative (limit 1e-3)", fmt_losses(&b), fmt_losses(&a));
                push(result(&name, ok, detail, t0), out);
                if opt == "sgd" {
                    cpu_sgd = Some((a, dir_cpu));
                }
            }
            Err(e) => push(fail(&name, e.to_string(), t0), out),
        }
    }
    let Some((full, cpu_dir)) = cpu_sgd else { return };

    // Mixed precision on the GPU against f32 on the CPU: the same 5 SGD steps. (On the CPU the
    // trainer keeps f32, so CPU against CPU proves the wiring, not f16.)
    let t0 = Instant::now();
    let f16 = gpu_name == "cpu" || device::select(gpu_name).is_ok_and(|(d, _)| device::computes_f16(&d));
    if !f16 {
        let detail = "the adapter has no f16 arithmetic: f16-mixed runs train in f32 on it (nothing to check)";
        push(result(F16_MIXED, true, detail.into(), t0), out);
    } else {
        let mixed = tiny_run(scratch, "sgd-f16", gpu_name, "sgd").and_then(|mut c| {
            c.train.precision = crate::amp::Precision::F16Mixed;
            losses(c, None, usize::MAX)
        });
        match mixed {
            Ok((b, _)) => {
                let d = max_rel(&b, &full);
                let ok = d <= F16_LOSS_LIMIT && b.len() == 5;
                let detail = format!(
                    "losses gpu f16-mixed [{}] cpu f32 [{}]: {d:.2e} relative (limit {F16_LOSS_LIMIT:.0e})",
                    fmt_losses(&b),
                    fmt_losses(&full)
                );
                push(result(F16_MIXED, ok, detail, t0), out);
            }
            Err(e) => push(fail(F16_MIXED, e.to_string(), t0), out),
        }
    }

    // Stop after step 3 on one device, continue on the other: steps 4 and 5 as uninterrupted.
    for (first, second, label) in [(gpu_name, "cpu", "resume/gpu->cpu"), ("cpu", gpu_name, "resume/cpu->gpu")] {
        let t0 = Instant::now();
        let tag = label.replace(['/', '>'], "-");
        let run = (|| {
            let (head, dir) = losses(tiny_run(scratch, &tag, first, "sgd")?, None, 3)?;
            let (tail, _) = losses(tiny_run(scratch, &tag, second, "sgd")?, Some(dir), usize::MAX)?;
            Ok::<_, TrainError>((head, tail))
        })();
        match run {
            Ok((head, tail)) => {
                let d = max_rel(&tail, &full[3.min(full.len())..]);
                let ok = head.len() == 3 && tail.len() == 2 && d <= 1e-3;
                let detail = format!(
                    "steps 4-5 after the switch [{}], uninterrupted [{}]: {d:.2e} relative (limit 1e-3)",
                    fmt_losses(&tail),
                    fmt_losses(&full[3.min(full.len())..])
                );
                push(result(label, ok, detail, t0), out);
            }
            Err(e) => push(fail(label, e.to_string(), t0), out),
        }
    }

    // The same checkpoint predicting on both devices.
    let t0 = Instant::now();
    match check_predict(&cpu_dir.join("last.safetensors"), gpu_name) {
        Ok((ok, detail)) => push(result("predict", ok, detail, t0), out),
        Err(e) => push(fail("predict", e.to_string(), t0), out),
    }
}

fn check_predict(checkpoint: &Path, gpu_name: &str) -> Result<(bool, String), TrainError> {
    let (gpu, _) = device::select(gpu_name)?;
    let p_cpu = crate::predict::Predictor::load(checkpoint, &Device::flex())?;
    let p_gpu = crate::predict::Predictor::load(checkpoint, &gpu)?;
    let (w, h) = (40usize, 28usize);
    let mut rng = StdRng::seed_from_u64(5);
    let img = segkit_data::ImageBuf {
        width: w,
        height: h,
        channels: 3,
        data: (0..w * h * 3).map(|_| rng.random::<u8>()).collect(),
    };
    let a = p_cpu.probabilities(&img)?;
    let b = p_gpu.probabilities(&img)?;
    let classes = a.len() / (w * h);
    let (mut differ, mut ties) = (0usize, 0usize);
    for px in 0..w * h {
        let pa: Vec<f32> = (0..classes).map(|c| a[c * w * h + px]).collect();
        let pb: Vec<f32> = (0..classes).map(|c| b[c * w * h + px]).collect();
        let arg = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap_or(0);
        if arg(&pa) != arg(&pb) {
            let mut sorted = pa.clone();
            sorted.sort_by(|x, y| y.total_cmp(x));
            if sorted.len() > 1 && sorted[0] - sorted[1] < 1e-3 {
                ties += 1;
            } else {
                differ += 1;
            }
        }
    }
    let d = rel_diff(&b, &a);
    Ok((
        differ == 0 && d <= 1e-3,
        format!("{w}x{h} image: {differ} pixels differ, {ties} near-ties flipped; probabilities {d:.2e} relative"),
    ))
}

/// Runs every check on the GPU device `gpu_name` (`wgpu`, `vulkan` or `opengl`) against the CPU,
/// writing tiny runs under `scratch`. `report` sees each result as it comes.
pub fn run(
    gpu_name: &str,
    scratch: &Path,
    report: &mut dyn FnMut(&CheckResult),
) -> Result<Vec<CheckResult>, TrainError> {
    if device::Api::of(gpu_name).is_none() {
        return Err(TrainError::Device(format!(
            "selftest compares a GPU with the CPU: expected wgpu, vulkan or opengl, not `{gpu_name}`"
        )));
    }
    run_checks(gpu_name, scratch, report)
}

/// The checks against any device name, `cpu` included (the unit test below runs them CPU
/// against CPU, where every difference must be zero, to prove the checks themselves).
fn run_checks(
    gpu_name: &str,
    scratch: &Path,
    report: &mut dyn FnMut(&CheckResult),
) -> Result<Vec<CheckResult>, TrainError> {
    let (gpu, _) = device::select(gpu_name)?;
    std::fs::create_dir_all(scratch).map_err(|e| TrainError::io(scratch, e))?;
    let mut out = Vec::new();
    check_long_loops(&gpu, &mut |r| {
        report(&r);
        out.push(r);
    });
    check_gemm_conv(&gpu, &mut |r| {
        report(&r);
        out.push(r);
    });
    for (name, cfg, size) in model_cases() {
        check_model(name, &cfg, size, &gpu, true, &mut |r| {
            report(&r);
            out.push(r);
        });
    }
    check_training(gpu_name, scratch, report, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU against CPU: every check runs (all model kinds, both optimisers, both resume
    /// directions, predict) and passes with a difference of zero, or the checks are broken.
    #[test]
    fn every_check_passes_cpu_against_cpu() {
        let scratch = std::env::temp_dir().join(format!("segkit-selftest-unit-{}", std::process::id()));
        let results = run_checks("cpu", &scratch, &mut |r| eprintln!("{} {}: {}", r.passed, r.name, r.detail)).unwrap();
        let _ = std::fs::remove_dir_all(&scratch);
        assert_eq!(results.len(), check_count(), "{results:#?}");
        for r in &results {
            assert!(r.passed, "{r:#?}");
        }
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        for want in
            [LONG_LOOPS, GEMM_CONV, "forward/fcn8s-atonce", "gradients/unet-padded-bn", "train/adam", F16_MIXED, "resume/cpu->gpu", "predict"]
        {
            assert!(names.contains(&want), "{names:?}");
        }
    }

    #[test]
    fn a_deviation_fails_the_comparison() {
        assert!(rel_diff(&[1.0, 2.0001], &[1.0, 2.0]) < 1e-4);
        assert!(rel_diff(&[1.0, 2.01], &[1.0, 2.0]) > 1e-3);
        assert!(max_rel(&[1.0, 2.0], &[1.0]).is_infinite());
    }
}
