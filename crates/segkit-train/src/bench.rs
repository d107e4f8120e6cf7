//! Benchmarks: timed training steps (forward, pixel-wise loss, backward, SGD update) or
//! inference steps on random data, after warm-up steps that absorb autotuning and kernel
//! compilation. The device is synchronised before every clock reading.

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::{DType, Distribution, TensorData};
use segkit_models::conv::as_dtype;
use segkit_models::{ModelConfig, SegModel};
use serde::Serialize;

use crate::TrainError;
use crate::amp::Precision;
use crate::loss::{Reduction, cross_entropy};
use crate::optim::{OptimSettings, Optimizer, OptimizerKind};
use crate::params::to_f32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Train,
    Infer,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub mode: Mode,
    pub device: String,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
    pub warmup: usize,
    pub steps: usize,
    /// Every timed step, milliseconds.
    pub step_ms: Vec<f64>,
    pub ms_per_step: f64,
    pub images_per_s: f64,
    /// Model FLOPs per step (forward x batch, x3 for training) over the median time.
    pub tflops: f64,
    pub gflop_per_step: f64,
    /// Process peak RSS on the CPU; device allocator reservation on a GPU (when reported).
    pub peak_memory_mb: f64,
    pub memory_source: String,
    /// `f32` or `f16-mixed` (`train.precision`; a CPU device, or a GPU without f16 arithmetic,
    /// runs f32).
    pub precision: String,
    /// How convolutions ran on a GPU (`--gpu-conv`); `cpu` on the CPU.
    pub gpu_conv: String,
    /// The largest im2col chunk the GEMM convolutions built, MiB (0 without them).
    pub peak_im2col_mb: f64,
    /// Training: median milliseconds of forward + loss, backward, and optimiser update, each
    /// measured between device synchronisations (their sum can exceed `ms_per_step` a little).
    pub phase_ms: Option<[f64; 3]>,
}

/// Peak resident set size of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("finite times"));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    cfg: &ModelConfig,
    (h, w): (usize, usize),
    batch: usize,
    mode: Mode,
    precision: Precision,
    warmup: usize,
    steps: usize,
    device: &Device,
    device_desc: &str,
    mut progress: impl FnMut(usize, usize),
) -> Result<BenchResult, TrainError> {
    let model_cpu = SegModel::new(cfg, &Device::flex())?;
    let summary = model_cpu.summary(cfg, [cfg.in_channels, h, w])?;
    drop(model_cpu);
    let (oh, ow) = cfg.output_size(h, w)?;
    let factor = if mode == Mode::Train { 3.0 } else { 1.0 };
    let gflop = summary.forward_flops as f64 * batch as f64 * factor / 1e9;
    device.seed(0);
    let x = Tensor::<4>::random([batch, cfg.in_channels, h, w], Distribution::Normal(0.0, 1.0), device);
    let labels: Vec<i64> = (0..batch * oh * ow).map(|i| ((i * 7919) % cfg.classes) as i64).collect();
    let y = Tensor::<3, Int>::from_data(TensorData::new(labels, [batch, oh, ow]), device);
    let on_cpu = matches!(device.clone().inner().as_dispatch(), burn::backend::DispatchDevice::Flex(_));
    // As the trainer does: the CPU keeps f32.
    let precision = if on_cpu || !crate::device::computes_f16(device) { Precision::F32 } else { precision };
    let dtype = precision.compute_dtype();
    // A fixed loss scale: the multiply and the unscaling cost what the trainer's do.
    let scale = (precision == Precision::F16Mixed).then_some(crate::amp::INITIAL_SCALE as f64);
    let mut times = Vec::with_capacity(steps);
    let mut phases: Vec<[f64; 3]> = Vec::new();
    match mode {
        Mode::Train => {
            let ad = device.clone().autodiff();
            let mut model = SegModel::new(cfg, &ad)?;
            let mut opt = Optimizer::new(OptimSettings {
                kind: OptimizerKind::Sgd,
                momentum: 0.9,
                weight_decay: 5e-4,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                bias_lr_mult: 1.0,
                bias_decay: true,
            });
            let (xa, ya) = (x.clone().autodiff(), y.clone().autodiff());
            let sync = || device.sync().map_err(|e| TrainError::Device(e.to_string()));
            for i in 0..warmup + steps {
                progress(i, warmup + steps);
                sync()?;
                let t0 = Instant::now();
                let grads = train_grads(&model, xa.clone(), ya.clone(), dtype, scale);
                model = opt.step(1e-6, model, grads);
                sync()?;
                if i >= warmup {
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            // The same step again in phases, synchronised between them.
            for _ in 0..steps.min(3).max(1) {
                sync()?;
                let t0 = Instant::now();
                let loss = forward_loss(&model, xa.clone(), ya.clone(), dtype, scale);
                let _ = to_f32(loss.clone().inner());
                let t1 = Instant::now();
                let grads = unscaled(&model, GradientsParams::from_grads(loss.backward(), &model), scale);
                sync()?;
                let t2 = Instant::now();
                model = opt.step(1e-6, model, grads);
                sync()?;
                let t3 = Instant::now();
                let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
                phases.push([ms(t0, t1), ms(t1, t2), ms(t2, t3)]);
            }
            let _ = to_f32(model.valid().forward(x.clone().narrow(0, 0, 1)).sum());
        }
        Mode::Infer => {
            let model = SegModel::new(cfg, device)?;
            for i in 0..warmup + steps {
                progress(i, warmup + steps);
                device.sync().map_err(|e| TrainError::Device(e.to_string()))?;
                let t0 = Instant::now();
                let pred = model.forward(as_dtype(x.clone(), dtype)).argmax(1);
                let _ = pred.into_data();
                if i >= warmup {
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    }
    progress(warmup + steps, warmup + steps);
    let ms = median(&times);
    let (peak, source) = match device.memory_pool_usage() {
        Some(u) if !device_desc.starts_with("CPU") => {
            (u.bytes_reserved as f64 / (1024.0 * 1024.0), "device allocator (reserved, at the end)".to_string())
        }
        _ => (peak_rss_mb().unwrap_or(f64::NAN), "process peak RSS".to_string()),
    };
    Ok(BenchResult {
        model: cfg.model.name().to_string(),
        mode,
        device: device_desc.to_string(),
        batch,
        height: h,
        width: w,
        classes: cfg.classes,
        warmup,
        steps,
        step_ms: times,
        ms_per_step: ms,
        images_per_s: batch as f64 / (ms / 1e3),
        tflops: gflop / (ms / 1e3) / 1e3,
        gflop_per_step: gflop,
        peak_memory_mb: peak,
        memory_source: source,
        precision: precision.name().to_string(),
        gpu_conv: if on_cpu { "cpu".into() } else { segkit_models::conv::gpu_conv().name().into() },
        peak_im2col_mb: segkit_models::gpu_conv::peak_cols_bytes() as f64 / (1024.0 * 1024.0),
        phase_ms: (!phases.is_empty()).then(|| {
            let col = |k: usize| median(&phases.iter().map(|p| p[k]).collect::<Vec<_>>());
            [col(0), col(1), col(2)]
        }),
    })
}

/// The loss of one training batch as the trainer computes it in `dtype`, times the loss scale.
fn forward_loss(model: &SegModel, x: Tensor<4>, y: Tensor<3, Int>, dtype: DType, scale: Option<f64>) -> Tensor<1> {
    let logits = as_dtype(model.forward(as_dtype(x, dtype)), DType::F32);
    let loss = cross_entropy(logits, y, 255, None, Reduction::Mean);
    match scale {
        Some(s) => loss.mul_scalar(s),
        None => loss,
    }
}

fn unscaled(model: &SegModel, grads: GradientsParams, scale: Option<f64>) -> GradientsParams {
    match scale {
        Some(s) => crate::params::scale_gradients(model, grads, 1.0 / s),
        None => grads,
    }
}

fn train_grads(model: &SegModel, x: Tensor<4>, y: Tensor<3, Int>, dtype: DType, scale: Option<f64>) -> GradientsParams {
    let loss = forward_loss(model, x, y, dtype, scale);
    unscaled(model, GradientsParams::from_grads(loss.backward(), model), scale)
}

/// One 3x3 convolution (padding 1) against the matrix product it amounts to, to tell the
/// convolution's own overhead (layout changes, im2col, tiling) from the speed of the matrix
/// multiplication underneath.
#[derive(Debug, Clone, Serialize)]
pub struct ConvProbe {
    pub batch: usize,
    pub channels_in: usize,
    pub channels_out: usize,
    pub size: usize,
    /// `2 * c_out * c_in * 9 * H * W * B`.
    pub gflop: f64,
    pub conv_forward_ms: f64,
    /// The forward through segkit's own layer (`segkit_models::cpu_conv`).
    pub conv_forward_segkit_ms: f64,
    /// Forward plus backward (input and weight gradients: about 3x the forward's FLOPs).
    pub conv_train_ms: f64,
    /// Forward plus backward through segkit's own layer (`segkit_models::cpu_conv`): its direct
    /// forward and weight gradient, Burn's input gradient. Equals `conv_train_ms` where that
    /// layer does not apply (GPU devices).
    pub conv_train_segkit_ms: f64,
    /// The input gradient alone, as Burn's autodiff computes it (a transposed convolution).
    pub input_grad_ms: f64,
    /// The weight gradient alone, as Burn's autodiff computes it (a convolution of the input by
    /// the output gradient, batched over input channels).
    pub weight_grad_ms: f64,
    /// `[c_out, c_in*9] x [c_in*9, B*H*W]`: the same FLOPs as one forward.
    pub matmul_ms: f64,
    pub conv_forward_gflops: f64,
    pub conv_train_gflops: f64,
    pub matmul_gflops: f64,
}

fn time_ms(device: &Device, warmup: usize, steps: usize, mut f: impl FnMut()) -> f64 {
    let mut t = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let _ = device.sync();
        let t0 = Instant::now();
        f();
        let _ = device.sync();
        if i >= warmup {
            t.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    median(&t)
}

pub fn conv_probe(
    device: &Device,
    batch: usize,
    c_in: usize,
    c_out: usize,
    size: usize,
    warmup: usize,
    steps: usize,
) -> ConvProbe {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::module::{conv_transpose2d, conv2d_weight_backward};
    use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
    let conv =
        Conv2dConfig::new([c_in, c_out], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device);
    let x = Tensor::<4>::random([batch, c_in, size, size], Distribution::Normal(0.0, 1.0), device);
    let conv_forward_ms = time_ms(device, warmup, steps, || {
        let _ = conv.forward(x.clone()).sum().into_data();
    });
    let conv_forward_segkit_ms = time_ms(device, warmup, steps, || {
        let _ = segkit_models::cpu_conv::conv2d(&conv, x.clone()).sum().into_data();
    });
    let ad = device.clone().autodiff();
    let conv_ad =
        Conv2dConfig::new([c_in, c_out], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&ad);
    let xa = Tensor::<4>::random([batch, c_in, size, size], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let conv_train_ms = time_ms(device, warmup, steps, || {
        let grads = conv_ad.forward(xa.clone()).sum().backward();
        let _ = xa.grad(&grads).map(|g| g.sum().into_data());
    });
    let conv_train_segkit_ms = time_ms(device, warmup, steps, || {
        let grads = segkit_models::cpu_conv::conv2d(&conv_ad, xa.clone()).sum().backward();
        let _ = xa.grad(&grads).map(|g| g.sum().into_data());
    });
    // The two halves of the backward pass, each called the way Burn's autodiff calls it.
    let w = conv.weight.val();
    let dy = Tensor::<4>::random([batch, c_out, size, size], Distribution::Normal(0.0, 1.0), device);
    let input_grad_ms = time_ms(device, warmup, steps, || {
        let opts = ConvTransposeOptions::new([1, 1], [1, 1], [0, 0], [1, 1], 1);
        let _ = conv_transpose2d(dy.clone(), w.clone(), None, opts).sum().into_data();
    });
    let weight_grad_ms = time_ms(device, warmup, steps, || {
        let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let _ = conv2d_weight_backward(x.clone(), w.clone(), dy.clone(), opts).sum().into_data();
    });
    let a = Tensor::<2>::random([c_out, c_in * 9], Distribution::Normal(0.0, 1.0), device);
    let b = Tensor::<2>::random([c_in * 9, batch * size * size], Distribution::Normal(0.0, 1.0), device);
    let matmul_ms = time_ms(device, warmup, steps, || {
        let _ = a.clone().matmul(b.clone()).sum().into_data();
    });
    let gflop = 2.0 * (c_out * c_in * 9) as f64 * (batch * size * size) as f64 / 1e9;
    ConvProbe {
        batch,
        channels_in: c_in,
        channels_out: c_out,
        size,
        gflop,
        conv_forward_ms,
        conv_forward_segkit_ms,
        conv_train_ms,
        conv_train_segkit_ms,
        input_grad_ms,
        weight_grad_ms,
        matmul_ms,
        conv_forward_gflops: gflop / (conv_forward_ms / 1e3),
        conv_train_gflops: 3.0 * gflop / (conv_train_ms / 1e3),
        matmul_gflops: gflop / (matmul_ms / 1e3),
    }
}
