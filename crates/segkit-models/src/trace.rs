//! Shape tracing: the per-layer table behind `segkit summary` and the FLOP counts of benchmarks.
//!
//! Each model walks its own layers in `trace`, in the order of `forward`, handing this tracer the
//! real modules: parameter counts and kernel geometry are read off the modules, never typed in.
//! FLOPs count convolutions and transpose convolutions only, one multiply-add as 2 FLOP, which is
//! the convention of the reference figures (`shared/reference/README.md`).

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::pool::MaxPool2d;
use serde::Serialize;

use crate::ModelError;
use crate::geometry::{conv_out, deconv_out, pool_out_ceil, pool_out_floor};
use crate::layers::{conv_params, deconv_params};

/// Channels, height, width of one image's feature map.
pub type Shape3 = [usize; 3];

/// One row of the summary table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerInfo {
    pub name: String,
    pub kind: &'static str,
    /// `[C, H, W]` of this layer's output for one image.
    pub output: Shape3,
    pub params: usize,
    pub flops: u64,
}

/// Collects [`LayerInfo`] rows while a model walks its layers.
#[derive(Debug, Default)]
pub struct Tracer {
    pub layers: Vec<LayerInfo>,
}

impl Tracer {
    fn push(&mut self, name: &str, kind: &'static str, output: Shape3, params: usize, flops: u64) -> Shape3 {
        self.layers.push(LayerInfo { name: name.to_string(), kind, output, params, flops });
        output
    }

    pub fn conv(&mut self, name: &str, conv: &Conv2d, x: Shape3) -> Result<Shape3, ModelError> {
        let [c_out, c_in_g, kh, kw] = conv.weight.lazy_shape().dims();
        let (ph, pw) = match conv.padding {
            PaddingConfig2d::Valid => (0, 0),
            PaddingConfig2d::Explicit(top, left, _, _) => (top, left),
            // "Same" keeps the size for stride 1, which is how the models use it.
            PaddingConfig2d::Same => ((kh - 1) / 2, (kw - 1) / 2),
        };
        let [sh, sw] = conv.stride;
        let too_small = || ModelError::InputTooSmall { layer: name.to_string(), h: x[1], w: x[2] };
        let h = conv_out(x[1], kh, sh, ph).ok_or_else(too_small)?;
        let w = conv_out(x[2], kw, sw, pw).ok_or_else(too_small)?;
        let flops = 2 * (c_out * c_in_g * kh * kw) as u64 * (h * w) as u64;
        Ok(self.push(name, "conv", [c_out, h, w], conv_params(conv), flops))
    }

    pub fn pool(&mut self, name: &str, pool: &MaxPool2d, x: Shape3) -> Result<Shape3, ModelError> {
        let [kh, kw] = pool.kernel_size;
        let [sh, sw] = pool.stride;
        let f = if pool.ceil_mode { pool_out_ceil } else { pool_out_floor };
        let too_small = || ModelError::InputTooSmall { layer: name.to_string(), h: x[1], w: x[2] };
        let h = f(x[1], kh, sh).ok_or_else(too_small)?;
        let w = f(x[2], kw, sw).ok_or_else(too_small)?;
        Ok(self.push(name, "maxpool", [x[0], h, w], 0, 0))
    }

    pub fn deconv(&mut self, name: &str, up: &ConvTranspose2d, x: Shape3) -> Shape3 {
        let [c_in, c_out_g, kh, kw] = up.weight.lazy_shape().dims();
        let [sh, sw] = up.stride;
        let h = deconv_out(x[1], kh, sh, up.padding[0]);
        let w = deconv_out(x[2], kw, sw, up.padding[1]);
        // Every input pixel scatters one k x k x C_out kernel.
        let flops = 2 * (c_in * c_out_g * kh * kw) as u64 * (x[1] * x[2]) as u64;
        self.push(name, "deconv", [c_out_g * up.groups, h, w], deconv_params(up), flops)
    }

    pub fn op(&mut self, name: &str, kind: &'static str, output: Shape3) -> Shape3 {
        self.push(name, kind, output, 0, 0)
    }

    pub fn norm(&mut self, name: &str, params: usize, x: Shape3) -> Shape3 {
        self.push(name, "batchnorm", x, params, 0)
    }
}

/// The whole-model figures `segkit summary` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub model: String,
    /// `[C, H, W]` of the input image.
    pub input: Shape3,
    /// `[1, classes, H, W]`.
    pub output_shape: [usize; 4],
    pub parameters: usize,
    pub trainable_parameters: usize,
    pub forward_flops: u64,
    pub forward_gflop: f64,
    pub layers: Vec<LayerInfo>,
}
