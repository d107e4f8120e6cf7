//! Layer constructors shared by the models: convolutions with the papers' initialisations, the
//! bilinear transpose convolution of FCN, and cropping.

use burn::module::{Initializer, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::relu;

use crate::{conv, cpu_conv};

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

/// A convolution, the optional batch norm after it, and ReLU: every trunk layer of both models.
/// At inference on the CPU it is one kernel: the ReLU fused into the convolution's output loop
/// ([`conv::conv2d_relu`]; the GPU's GEMM path folds the same way) and the batch norm's running statistics folded into the
/// convolution's weights and bias ([`BatchNorm2d::fold`]), so the layer's output is written once
/// where batch norm (four elementwise passes on flex) and ReLU would write it five more times.
/// Same values up to float rounding (tested); training (autodiff) runs the three as they are.
pub fn conv_bn_relu(conv: &Conv2d, bn: Option<&BatchNorm2d>, x: Tensor<4>) -> Tensor<4> {
    match bn {
        None => conv::conv2d_relu(conv, x),
        Some(bn) if !x.device().is_autodiff() && (cpu_conv::applies(conv, &x) || conv::takes_gemm(conv, &x)) => {
            let (weight, bias) = bn.fold(conv);
            conv::conv2d_relu_with(conv, weight, bias, x)
        }
        Some(bn) => relu(bn.forward(conv::conv2d(conv, x))),
    }
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

    /// The weights and bias of `conv` followed by this batch norm with its running statistics,
    /// as one convolution: per output channel `s = gamma / sqrt(var + eps)`, `w' = w s` and
    /// `b' = (b - mean) s + beta`. For inference only (training normalises with batch
    /// statistics).
    pub fn fold(&self, conv: &Conv2d) -> (Tensor<4>, Tensor<1>) {
        let weight = conv.weight.val();
        let device = weight.device();
        let c_out = weight.dims()[0];
        let mean = self.running_mean.value().to_device(&device);
        let var = self.running_var.value().to_device(&device);
        let scale = self.gamma.val().div(var.add_scalar(self.epsilon).sqrt());
        let bias = match &conv.bias {
            Some(b) => b.val().sub(mean),
            None => mean.neg(),
        };
        let bias = bias.mul(scale.clone()).add(self.beta.val());
        (weight.mul(scale.reshape([c_out, 1, 1, 1])), bias)
    }

    /// Batch statistics (and a running-statistics update) on an autodiff device, the running
    /// statistics elsewhere: training runs on an autodiff device, evaluation on `model.valid()`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // Mixed precision: normalise in f32 (statistics of f16 activations lose digits), return
        // the activations' dtype.
        let dtype = x.dtype();
        if dtype != self.gamma.val().dtype() {
            return conv::as_dtype(self.forward(x.cast(self.gamma.val().dtype())), dtype);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_winograd;
    use burn::module::RunningState;
    use burn::tensor::Distribution;

    /// [`conv_bn_relu`] at inference (batch norm folded, ReLU fused) against the three layers
    /// run one after another by Burn, with a bias and running statistics far from 0 and 1.
    /// `(c_in, c_out, size, pad)`, batch 2, 3x3 kernels.
    fn check((c_in, c_out, size, pad): (usize, usize, usize, usize)) {
        let device = Device::flex();
        let normal = |n: usize| Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let uniform = |lo: f64, hi: f64| Tensor::<1>::random([c_out], Distribution::Uniform(lo, hi), &device);
        let mut conv = conv(c_in, c_out, 3, pad, &device);
        conv.bias = Some(Param::from_tensor(normal(c_out)));
        let mut bn = BatchNorm2d::new(c_out, &device);
        bn.gamma = Param::from_tensor(uniform(0.5, 2.0));
        bn.beta = Param::from_tensor(normal(c_out));
        bn.running_mean = RunningState::new(normal(c_out));
        bn.running_var = RunningState::new(uniform(0.1, 4.0));
        let x = Tensor::<4>::random([2, c_in, size, size], Distribution::Normal(0.0, 1.0), &device);

        let fused = conv_bn_relu(&conv, Some(&bn), x.clone());
        let reference = relu(bn.forward(conv.forward(x)));
        let zeros = reference.clone().equal_elem(0.0).int().sum().into_scalar::<i64>();
        assert!(zeros > 0, "case {:?}: the ReLU should zero some outputs", (c_in, c_out, size, pad));
        let scale = reference.clone().abs().max().into_scalar::<f32>();
        let diff = (fused - reference).abs().max().into_scalar::<f32>();
        assert!(diff <= 1e-5 * scale, "case {:?}: differs by {diff} of {scale}", (c_in, c_out, size, pad));
    }

    #[test]
    fn folded_batch_norm_matches_the_layers_in_turn() {
        for case in [
            (3, 8, 12, 1),   // the direct kernel (3 input channels)
            (16, 16, 30, 0), // Winograd, unpadded
            (16, 24, 33, 1), // Winograd, odd output: half-outside tiles
        ] {
            check(case);
        }
        assert!(!cpu_winograd::takes(3, 8, [3, 3], 2, [12, 12]));
        assert!(cpu_winograd::takes(16, 16, [3, 3], 2, [28, 28]) && cpu_winograd::takes(16, 24, [3, 3], 2, [33, 33]));
    }
}
