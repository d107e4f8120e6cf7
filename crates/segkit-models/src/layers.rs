//! Layer constructors shared by the models: convolutions with the papers' initialisations, the
//! bilinear transpose convolution of FCN, and cropping.

use burn::module::{Initializer, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;
use burn::tensor::TensorData;

/// He (Kaiming) normal initialisation, `std = sqrt(2 / fan_in)`, as the U-Net paper prescribes
/// and as PyTorch reference FCN/VGG code uses for layers trained from scratch.
pub fn he_normal() -> Initializer {
    Initializer::KaimingNormal { gain: 2f64.sqrt(), fan_out_only: false }
}

/// A `k x k` convolution with explicit symmetric padding, He-initialised weights and zero bias.
pub fn conv(c_in: usize, c_out: usize, k: usize, pad: usize, device: &Device) -> Conv2d {
    let conv = Conv2dConfig::new([c_in, c_out], [k, k])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_initializer(he_normal())
        .init(device);
    zero_bias(conv, c_out, device)
}

/// A `1 x 1` convolution whose weights and bias start at zero: FCN's score layers, so that a
/// fresh skip branch adds nothing until it has learned something.
pub fn conv_zero(c_in: usize, c_out: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [1, 1]).with_initializer(Initializer::Zeros).init(device)
}

fn zero_bias(mut conv: Conv2d, c_out: usize, device: &Device) -> Conv2d {
    conv.bias = Some(Initializer::Zeros.init([c_out], device));
    conv
}

/// 2x2 stride-2 max pooling; `ceil` selects Caffe's rounding (FCN), floor is U-Net's.
pub fn max_pool(ceil: bool) -> MaxPool2d {
    MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).with_ceil_mode(ceil).init()
}

/// A learnable transpose convolution (U-Net's up-convolution), He-initialised, zero bias.
pub fn up_conv(c_in: usize, c_out: usize, k: usize, stride: usize, device: &Device) -> ConvTranspose2d {
    let mut up = ConvTranspose2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_initializer(he_normal())
        .init(device);
    up.bias = Some(Initializer::Zeros.init([c_out], device));
    up
}

/// Caffe's `upsample_filt`: the `k x k` bilinear interpolation kernel, row-major.
pub fn bilinear_kernel(k: usize) -> Vec<f32> {
    let factor = k.div_ceil(2) as f64;
    let center = if k % 2 == 1 { factor - 1.0 } else { factor - 0.5 };
    let tap = |i: usize| 1.0 - (i as f64 - center).abs() / factor;
    let mut out = Vec::with_capacity(k * k);
    for y in 0..k {
        for x in 0..k {
            out.push((tap(y) * tap(x)) as f32);
        }
    }
    out
}

/// FCN's upsampler: a `c -> c` transpose convolution without bias whose weight holds the bilinear
/// kernel on the class diagonal (`weight[i][i] = bilinear`, zero elsewhere), as in the reference.
/// The full `c x c` kernel is kept so that Caffe and PyTorch weights map one-to-one. Frozen
/// unless `learnable`.
pub fn bilinear_up(c: usize, k: usize, stride: usize, learnable: bool, device: &Device) -> ConvTranspose2d {
    let kernel = bilinear_kernel(k);
    let mut weight = vec![0f32; c * c * k * k];
    for i in 0..c {
        let start = (i * c + i) * k * k;
        weight[start..start + k * k].copy_from_slice(&kernel);
    }
    let weight = Tensor::<4>::from_data(TensorData::new(weight, [c, c, k, k]), device);
    let mut up = ConvTranspose2dConfig::new([c, c], [k, k]).with_stride([stride, stride]).with_bias(false).init(device);
    up.weight = Param::from_tensor(weight).set_require_grad(learnable);
    up
}

/// Crop `x` to `h x w` starting at (`top`, `left`).
pub fn crop(x: Tensor<4>, top: usize, left: usize, h: usize, w: usize) -> Tensor<4> {
    x.narrow(2, top, h).narrow(3, left, w)
}

/// Centre-crop `x` to `h x w` (U-Net's skip connections). The extra pixel of an odd difference
/// goes to the bottom/right, as `(H - h) / 2` does in the reference implementations.
pub fn center_crop(x: Tensor<4>, h: usize, w: usize) -> Tensor<4> {
    let [_, _, xh, xw] = x.dims();
    crop(x, (xh - h) / 2, (xw - w) / 2, h, w)
}

/// Parameters of a convolution layer, read off the module.
pub fn conv_params(conv: &Conv2d) -> usize {
    let w: usize = conv.weight.lazy_shape().num_elements();
    w + conv.bias.as_ref().map_or(0, |b| b.lazy_shape().num_elements())
}

/// Parameters of a transpose convolution layer, read off the module.
pub fn deconv_params(conv: &ConvTranspose2d) -> usize {
    let w: usize = conv.weight.lazy_shape().num_elements();
    w + conv.bias.as_ref().map_or(0, |b| b.lazy_shape().num_elements())
}

/// The running statistics' update factor of every [`BatchNorm2d`] (PyTorch's default):
/// `running = (1 - m) * running + m * batch`.
pub const BN_MOMENTUM: f64 = 0.1;

/// Batch normalisation over `[B, C, H, W]` as PyTorch's `BatchNorm2d` computes it (momentum
/// 0.1, epsilon 1e-5): normalised with the batch's biased variance while training, the running
/// variance updated with the *unbiased* one (`n / (n - 1)`, n = B·H·W). Burn's `BatchNorm`
/// updates it with the biased variance, so its running statistics, and every evaluation after
/// training, drifted from PyTorch's (found by tests/parity.rs); everything else is Burn's
/// functional batch norm. Field names are Burn's (`gamma`, `beta`, `running_mean`,
/// `running_var`), so checkpoints of either kind load; export maps them to PyTorch's names.
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
    pub running_mean: burn::module::RunningState<Tensor<1>>,
    pub running_var: burn::module::RunningState<Tensor<1>>,
    pub momentum: f64,
    pub epsilon: f64,
}

impl BatchNorm2d {
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([channels], device),
            beta: Initializer::Zeros.init([channels], device),
            running_mean: burn::module::RunningState::new(Tensor::zeros([channels], device)),
            running_var: burn::module::RunningState::new(Tensor::ones([channels], device)),
            momentum: BN_MOMENTUM,
            epsilon: 1e-5,
        }
    }

    /// Batch statistics (and a running-statistics update) on an autodiff device, the running
    /// statistics elsewhere: training runs on an autodiff device, evaluation on `model.valid()`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        if !device.is_autodiff() {
            let mean = self.running_mean.value().to_device(&device);
            let var = self.running_var.value().to_device(&device);
            return burn::tensor::module::batch_norm(x, self.gamma.val(), self.beta.val(), mean, var, self.epsilon);
        }
        let [b, _, h, w] = x.dims();
        let n = (b * h * w) as f64;
        let r = burn::tensor::module::batch_norm_train(x, self.gamma.val(), self.beta.val(), self.epsilon);
        let m = self.momentum;
        let unbiased = if n > 1.0 { r.variance.detach().mul_scalar(n / (n - 1.0)) } else { r.variance.detach() };
        let mean =
            self.running_mean.value_sync().to_device(&device).mul_scalar(1.0 - m).add(r.mean.detach().mul_scalar(m));
        let var = self.running_var.value_sync().to_device(&device).mul_scalar(1.0 - m).add(unbiased.mul_scalar(m));
        self.running_mean.update(mean.detach());
        self.running_var.update(var.detach());
        r.output
    }
}
