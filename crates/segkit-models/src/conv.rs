//! The one convolution entry point every model calls: it picks the kernels for the tensor's
//! device and casts parameters to the activations' dtype.
//!
//! - CPU (flex): segkit's direct and Winograd kernels ([`crate::cpu_conv`]) where they apply.
//! - GPU (cubecl): by [`GpuConv`], process-wide: `gemm` runs stride-1 convolutions as im2col
//!   GEMMs on Burn's tuned matrix multiply ([`crate::gpu_conv`]), `burn` runs Burn's own
//!   convolution kernels.
//! - Anything else: Burn's `Conv2d::forward`.
//!
//! Mixed precision (`train.precision = "f16-mixed"`) feeds the models f16 activations while the
//! parameters stay f32 (the master weights): each layer here casts its weight and bias to the
//! input's dtype as it uses them, a tracked cast whose backward casts the gradient back to f32,
//! so the optimiser sees f32 gradients of f32 parameters.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::relu;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::cpu_conv;

/// How convolutions run on a GPU device (`--gpu-conv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuConv {
    /// [`GpuConv::Gemm`] on a hardware GPU, [`GpuConv::Burn`] on a software adapter; resolved when
    /// segkit opens the device (`segkit_train::device::select`), and read as `Gemm` if a device
    /// is opened some other way. docs/GPU.md ("Convolution kernels") has the figures and the
    /// reasoning.
    Auto,
    /// Burn's convolution kernels (direct forward for f32 3x3, im2col for 1x1).
    Burn,
    /// im2col + Burn's matrix multiply for forward and both gradients ([`crate::gpu_conv`]).
    Gemm,
}

impl GpuConv {
    pub const ALL: [GpuConv; 3] = [GpuConv::Auto, GpuConv::Burn, GpuConv::Gemm];

    pub const DEFAULT: GpuConv = GpuConv::Auto;

    pub fn name(self) -> &'static str {
        match self {
            GpuConv::Auto => "auto",
            GpuConv::Burn => "burn",
            GpuConv::Gemm => "gemm",
        }
    }

    pub fn parse(s: &str) -> Option<GpuConv> {
        GpuConv::ALL.into_iter().find(|g| g.name() == s)
    }

    /// What `self` means on an adapter that is (`software`) or is not a software rasteriser.
    pub fn resolve(self, software: bool) -> GpuConv {
        match self {
            GpuConv::Auto if software => GpuConv::Burn,
            GpuConv::Auto => GpuConv::Gemm,
            other => other,
        }
    }
}

impl std::fmt::Display for GpuConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

static GPU_CONV: AtomicU8 = AtomicU8::new(GpuConv::DEFAULT as u8);

/// Chooses the GPU convolution path for every later forward pass in this process.
pub fn set_gpu_conv(choice: GpuConv) {
    GPU_CONV.store(choice as u8, Ordering::Relaxed);
}

/// The GPU convolution path in force (`Auto` until a device resolves it).
pub fn gpu_conv() -> GpuConv {
    let v = GPU_CONV.load(Ordering::Relaxed);
    GpuConv::ALL.into_iter().find(|g| *g as u8 == v).unwrap_or(GpuConv::DEFAULT)
}

fn on_cube(x: &Tensor<4>) -> bool {
    matches!(x.device().inner().as_dispatch(), burn::backend::DispatchDevice::Cube(_))
}

/// `t` in `dtype`: a tracked cast when it differs (mixed precision), else `t` itself.
pub fn as_dtype<const D: usize>(t: Tensor<D>, dtype: DType) -> Tensor<D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

/// The stride-1 padding of `conv` when segkit's own kernels can run it (stride 1, dilation 1,
/// one group, symmetric explicit padding, a bias).
pub(crate) fn stride1_padding(conv: &Conv2d) -> Option<[usize; 2]> {
    if conv.stride != [1, 1] || conv.dilation != [1, 1] || conv.groups != 1 || conv.bias.is_none() {
        return None;
    }
    match conv.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => Some([top, left]),
        _ => None,
    }
}

/// Whether [`conv2d`] takes the GEMM path for this layer and input.
pub fn takes_gemm(conv: &Conv2d, x: &Tensor<4>) -> bool {
    matches!(gpu_conv(), GpuConv::Gemm | GpuConv::Auto) && on_cube(x) && stride1_padding(conv).is_some() && !x.dims().contains(&0)
}

/// `conv.forward(x)` through the kernels for `x`'s device, with `weight`/`bias` in place of the
/// layer's own when given (a folded batch norm).
fn run(conv: &Conv2d, x: Tensor<4>, params: Option<(Tensor<4>, Tensor<1>)>) -> Tensor<4> {
    let dtype = x.dtype();
    let (weight, bias) = match params {
        Some((w, b)) => (w, Some(b)),
        None => (conv.weight.val(), conv.bias.as_ref().map(|b| b.val())),
    };
    let (weight, bias) = (as_dtype(weight, dtype), bias.map(|b| as_dtype(b, dtype)));
    if takes_gemm(conv, &x) {
        let [ph, pw] = stride1_padding(conv).expect("takes_gemm checked the padding");
        let bias = bias.expect("stride1_padding checked the bias");
        return crate::gpu_conv::conv2d_gemm(x, weight, bias, [ph, pw]);
    }
    match (conv.padding.clone(), stride1_padding(conv)) {
        // Burn's functional convolution with (possibly cast) parameters: the options of the layer.
        (_, Some([ph, pw])) => burn::tensor::module::conv2d(
            x,
            weight,
            bias,
            ConvOptions::new(conv.stride, [ph, pw], conv.dilation, conv.groups),
        ),
        _ => {
            let mut layer = conv.clone();
            layer.weight = burn::module::Param::from_tensor(weight);
            layer.bias = bias.map(burn::module::Param::from_tensor);
            layer.forward(x)
        }
    }
}

/// `conv.forward(x)`: segkit's CPU kernels where [`cpu_conv::applies`], the GEMM path on a GPU
/// where chosen, Burn's convolution otherwise.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if on_cpu_kernels(conv, &x) {
        return cpu_conv::conv2d(conv, x);
    }
    if params_match(conv, &x) && !takes_gemm(conv, &x) {
        return conv.forward(x);
    }
    run(conv, x, None)
}

/// `relu(conv.forward(x))`; on the CPU without autodiff the ReLU is fused into the kernels.
pub fn conv2d_relu(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if on_cpu_kernels(conv, &x) {
        return cpu_conv::conv2d_relu(conv, x);
    }
    relu(conv2d(conv, x))
}

/// [`conv2d_relu`] with `weight` and `bias` in place of the layer's own (same shapes, the layer's
/// stride and padding): a batch norm folded into the convolution (`layers::conv_bn_relu`).
pub fn conv2d_relu_with(conv: &Conv2d, weight: Tensor<4>, bias: Tensor<1>, x: Tensor<4>) -> Tensor<4> {
    if on_cpu_kernels(conv, &x) {
        return cpu_conv::conv2d_relu_with(conv, weight, bias, x);
    }
    relu(run(conv, x, Some((weight, bias))))
}

/// `up.forward(x)` with the layer's parameters cast to `x`'s dtype (mixed precision).
pub fn conv_transpose2d(up: &ConvTranspose2d, x: Tensor<4>) -> Tensor<4> {
    let dtype = x.dtype();
    if up.weight.val().dtype() == dtype {
        return up.forward(x);
    }
    burn::tensor::module::conv_transpose2d(
        x,
        as_dtype(up.weight.val(), dtype),
        up.bias.as_ref().map(|b| as_dtype(b.val(), dtype)),
        ConvTransposeOptions::new(up.stride, up.padding, up.padding_out, up.dilation, up.groups),
    )
}

/// segkit's CPU kernels take f32 layers with f32 inputs (other dtypes: Burn's convolution).
fn on_cpu_kernels(conv: &Conv2d, x: &Tensor<4>) -> bool {
    x.dtype() == DType::F32 && params_match(conv, x) && cpu_conv::applies(conv, x)
}

fn params_match(conv: &Conv2d, x: &Tensor<4>) -> bool {
    conv.weight.val().dtype() == x.dtype()
}
