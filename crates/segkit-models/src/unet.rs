//! U-Net.
//!
//! Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
//! Segmentation", MICCAI 2015. Per level two unpadded 3x3 convolutions with ReLU, 2x2 max pooling
//! (stride 2), channels 64-128-256-512-1024; on the way up a 2x2 stride-2 up-convolution halving
//! the channels, the skip centre-cropped and concatenated (`[skip, up]`), two unpadded 3x3
//! convolutions; a final 1x1 convolution. He initialisation. 572x572 in gives 388x388 out.
//!
//! Field names follow the state dict of `tiny_unet` in `shared/reference/golden.json`
//! (`down.i.conv1`, `bottom`, `upconv.i`, `up.i`, `final`), except that `final` is a Rust keyword
//! and is called `final_conv` here; export maps it back.
//!
//! Options beyond the paper: `depth`, `base_width`, `padded` ("same" convolutions, output size =
//! input size, as most modern U-Nets do) and `batch_norm` after each convolution (off by default;
//! the paper has none): PyTorch's `BatchNorm2d`, running variance included (`layers::BatchNorm2d`).

use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::pool::MaxPool2d;
use burn::prelude::*;

use crate::ModelError;
use crate::conv::{conv_transpose2d, conv2d};
use crate::cpu_pool::max_pool2d;
use crate::layers::{BatchNorm2d, center_crop, conv, conv_bn_relu, max_pool, up_conv};
use crate::trace::{Shape3, Tracer};

/// Two 3x3 convolutions, each followed by (optional batch norm and) ReLU.
#[derive(Module, Debug)]
pub struct DoubleConv {
    pub conv1: Conv2d,
    pub bn1: Option<BatchNorm2d>,
    pub conv2: Conv2d,
    pub bn2: Option<BatchNorm2d>,
}

impl DoubleConv {
    fn new(c_in: usize, c_out: usize, padded: bool, batch_norm: bool, device: &Device) -> Self {
        let pad = usize::from(padded);
        let bn = || batch_norm.then(|| BatchNorm2d::new(c_out, device));
        Self {
            conv1: conv(c_in, c_out, 3, pad, device),
            bn1: bn(),
            conv2: conv(c_out, c_out, 3, pad, device),
            bn2: bn(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = conv_bn_relu(&self.conv1, self.bn1.as_ref(), x);
        conv_bn_relu(&self.conv2, self.bn2.as_ref(), x)
    }

    fn trace(&self, t: &mut Tracer, prefix: &str, x: Shape3) -> Result<Shape3, ModelError> {
        let bn_params = |bn: &BatchNorm2d| 2 * bn.gamma.lazy_shape().num_elements();
        let mut x = t.conv(&format!("{prefix}.conv1"), &self.conv1, x)?;
        if let Some(bn) = &self.bn1 {
            x = t.norm(&format!("{prefix}.bn1"), bn_params(bn), x);
        }
        x = t.conv(&format!("{prefix}.conv2"), &self.conv2, x)?;
        if let Some(bn) = &self.bn2 {
            x = t.norm(&format!("{prefix}.bn2"), bn_params(bn), x);
        }
        Ok(x)
    }
}

#[derive(Module, Debug)]
pub struct Unet {
    /// Contracting path, shallowest level first.
    pub down: Vec<DoubleConv>,
    pub pool: MaxPool2d,
    pub bottom: DoubleConv,
    /// Up-convolutions, deepest first.
    pub upconv: Vec<ConvTranspose2d>,
    /// Expanding path, deepest first.
    pub up: Vec<DoubleConv>,
    /// `final` in the reference state dict.
    pub final_conv: Conv2d,
    pub padded: bool,
}

/// Options of [`Unet::new`]; the defaults are the paper's.
#[derive(Debug, Clone)]
pub struct UnetOptions {
    pub n_classes: usize,
    pub in_channels: usize,
    pub depth: usize,
    pub base_width: usize,
    pub padded: bool,
    pub batch_norm: bool,
}

impl Unet {
    pub fn new(o: &UnetOptions, device: &Device) -> Self {
        let ch: Vec<usize> = (0..=o.depth).map(|i| o.base_width << i).collect();
        let down = (0..o.depth)
            .map(|i| {
                let c_in = if i == 0 { o.in_channels } else { ch[i - 1] };
                DoubleConv::new(c_in, ch[i], o.padded, o.batch_norm, device)
            })
            .collect();
        let bottom = DoubleConv::new(ch[o.depth - 1], ch[o.depth], o.padded, o.batch_norm, device);
        let levels = (0..o.depth).rev();
        let upconv = levels.clone().map(|i| up_conv(ch[i + 1], ch[i], 2, 2, device)).collect();
        let up = levels.map(|i| DoubleConv::new(2 * ch[i], ch[i], o.padded, o.batch_norm, device)).collect();
        Self {
            down,
            pool: max_pool(false),
            bottom,
            upconv,
            up,
            final_conv: conv(ch[0], o.n_classes, 1, 0, device),
            padded: o.padded,
        }
    }

    /// `[B, C, H, W]` to `[B, classes, H', W']` with `H' = unet_output_size(H)`. The input size
    /// must be valid (see [`unet_output_size`]); callers check it first.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = x;
        let mut skips = Vec::with_capacity(self.down.len());
        for block in &self.down {
            let s = block.forward(x); // H - 4 (unpadded)
            x = max_pool2d(&self.pool, s.clone()); // H / 2
            skips.push(s);
        }
        x = self.bottom.forward(x);
        for ((upconv, block), skip) in self.upconv.iter().zip(&self.up).zip(skips.into_iter().rev()) {
            let u = conv_transpose2d(upconv, x); // 2H
            let [_, _, h, w] = u.dims();
            let skip = center_crop(skip, h, w);
            x = block.forward(Tensor::cat(vec![skip, u], 1)); // 2H - 4 (unpadded)
        }
        conv2d(&self.final_conv, x)
    }

    pub fn trace(&self, t: &mut Tracer, x: Shape3) -> Result<Shape3, ModelError> {
        let depth = self.down.len();
        if unet_output_size(x[1], depth, self.padded).is_none() || unet_output_size(x[2], depth, self.padded).is_none()
        {
            let bad = if unet_output_size(x[1], depth, self.padded).is_none() { x[1] } else { x[2] };
            return Err(invalid_size(bad, depth, self.padded));
        }
        let mut x = x;
        let mut skips = Vec::new();
        for (i, block) in self.down.iter().enumerate() {
            let s = block.trace(t, &format!("down.{i}"), x)?;
            x = t.pool(&format!("pool{}", i + 1), &self.pool, s)?;
            skips.push(s);
        }
        x = self.bottom.trace(t, "bottom", x)?;
        for (i, ((upconv, block), skip)) in self.upconv.iter().zip(&self.up).zip(skips.into_iter().rev()).enumerate() {
            let u = t.deconv(&format!("upconv.{i}"), upconv, x);
            t.op(&format!("crop.{i}"), "crop", [skip[0], u[1], u[2]]);
            let cat = t.op(&format!("concat.{i}"), "concat", [skip[0] + u[0], u[1], u[2]]);
            x = block.trace(t, &format!("up.{i}"), cat)?;
        }
        t.conv("final", &self.final_conv, x)
    }

    /// Batch-norm running statistics are buffers, not trained parameters.
    pub fn frozen_params(&self) -> usize {
        0
    }
}

/// The output size of a U-Net of `depth` levels for an input of `size`, or `None` when the size is
/// not valid: every map entering a pooling must be even, and no map may vanish. Unpadded depth 4
/// accepts 188 + 16k and returns input - 184; padded accepts multiples of 2^depth.
pub fn unet_output_size(size: usize, depth: usize, padded: bool) -> Option<usize> {
    let shrink = if padded { 0 } else { 4 };
    let mut s = size;
    for _ in 0..depth {
        s = s.checked_sub(shrink).filter(|&s| s > 0 && s % 2 == 0)? / 2;
    }
    s = s.checked_sub(shrink).filter(|&s| s > 0)?;
    for _ in 0..depth {
        s = (2 * s).checked_sub(shrink).filter(|&s| s > 0)?;
    }
    Some(s)
}

/// The nearest valid input sizes below and above `size`.
pub fn nearest_valid_sizes(size: usize, depth: usize, padded: bool) -> (Option<usize>, Option<usize>) {
    let below = (1..=size).rev().find(|&s| unet_output_size(s, depth, padded).is_some());
    let above = (size..size + (16 << depth) + 256).find(|&s| unet_output_size(s, depth, padded).is_some());
    (below, above)
}

/// The smallest valid input size whose output is at least `out` (for tiling and training crops).
pub fn input_size_for_output(out: usize, depth: usize, padded: bool) -> Option<usize> {
    (1..out + (16 << depth) + 512).find(|&s| unet_output_size(s, depth, padded).is_some_and(|o| o >= out))
}

pub(crate) fn invalid_size(size: usize, depth: usize, padded: bool) -> ModelError {
    let (below, above) = nearest_valid_sizes(size, depth, padded);
    ModelError::InvalidUnetSize { size, depth, below, above }
}
