//! segkit's models: FCN-32s/16s/8s and U-Net as Burn modules.
//!
//! Invariants: models do no IO and print nothing; every size rule is checked before a forward
//! pass (an invalid input is an error value, never a panic inside Burn); layer and field names are
//! the reference models' so that weights map by name.

pub mod conv;
pub mod cpu_conv;
pub mod cpu_pool;
pub mod cpu_winograd;
pub mod fcn;
pub mod geometry;
pub mod gpu_conv;
pub mod layers;
pub mod trace;
pub mod unet;
pub mod vgg;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use fcn::{Fcn, FcnOffsets, FcnOptions, FcnVariant};
pub use trace::{LayerInfo, Summary, Tracer};
pub use unet::{Unet, UnetOptions, input_size_for_output, nearest_valid_sizes, unet_output_size};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "{size} is not a valid input size for a U-Net of depth {depth} (every map entering a pooling must be even); nearest valid sizes: {}",
        fmt_nearest(*below, *above)
    )]
    InvalidUnetSize { size: usize, depth: usize, below: Option<usize>, above: Option<usize> },
    #[error("input {h}x{w} is too small: it vanishes at layer {layer}")]
    InputTooSmall { layer: String, h: usize, w: usize },
    #[error("layer geometry: {0}")]
    Geometry(String),
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
}

fn fmt_nearest(below: Option<usize>, above: Option<usize>) -> String {
    match (below, above) {
        (Some(b), Some(a)) => format!("{b} or {a}"),
        (None, Some(a)) => format!("{a}"),
        (Some(b), None) => format!("{b}"),
        (None, None) => "none".into(),
    }
}

/// The architectures segkit trains: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Fcn32s,
    Fcn16s,
    Fcn8s,
    /// FCN-8s trained in one stage, with scaled skips (PAMI 2016).
    Fcn8sAtonce,
    Unet,
}

impl ModelKind {
    pub const ALL: [ModelKind; 5] =
        [ModelKind::Fcn32s, ModelKind::Fcn16s, ModelKind::Fcn8s, ModelKind::Fcn8sAtonce, ModelKind::Unet];

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Fcn32s => "fcn32s",
            ModelKind::Fcn16s => "fcn16s",
            ModelKind::Fcn8s => "fcn8s",
            ModelKind::Fcn8sAtonce => "fcn8s-atonce",
            ModelKind::Unet => "unet",
        }
    }

    pub fn parse(s: &str) -> Option<ModelKind> {
        ModelKind::ALL.into_iter().find(|k| k.name() == s.to_ascii_lowercase())
    }

    pub fn is_fcn(self) -> bool {
        self != ModelKind::Unet
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that defines an architecture. Flat, so that it sits in a run config as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// unet, fcn32s, fcn16s, fcn8s or fcn8s-atonce.
    pub model: ModelKind,
    /// Output classes, background included (0: from the data).
    pub classes: usize,
    /// Input channels: 3 for RGB, 1 for grey images (EM); 0: from the data.
    pub in_channels: usize,
    /// Width of the first level (64 in both papers); deeper levels are multiples of it.
    pub base_width: usize,
    /// FCN: width of fc6/fc7 (4096).
    pub fc_width: usize,
    /// FCN: dropout after fc6 and fc7 (0.5).
    pub dropout: f64,
    /// FCN: train the bilinear upsamplers instead of keeping them fixed.
    pub learnable_upsampling: bool,
    /// U-Net: number of poolings (4).
    pub depth: usize,
    /// U-Net: "same" 3x3 convolutions instead of the paper's unpadded ones.
    pub padded: bool,
    /// Batch norm after each convolution (U-Net) or each VGG trunk convolution (FCN, as
    /// torchvision's vgg16_bn); in neither paper.
    pub batch_norm: bool,
}

impl ModelConfig {
    /// The paper's architecture for `kind` with `classes` classes (RGB input for FCN, grayscale
    /// for U-Net, as in the papers).
    pub fn paper(kind: ModelKind, classes: usize) -> Self {
        Self {
            model: kind,
            classes,
            in_channels: if kind == ModelKind::Unet { 1 } else { 3 },
            base_width: 64,
            fc_width: 4096,
            dropout: 0.5,
            learnable_upsampling: false,
            depth: 4,
            padded: false,
            batch_norm: false,
        }
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: &str| Err(ModelError::InvalidConfig(m.to_string()));
        if self.classes == 0 {
            return bad("classes must be at least 1");
        }
        if self.in_channels == 0 || self.base_width == 0 {
            return bad("in_channels and base_width must be at least 1");
        }
        if self.model.is_fcn() && self.fc_width == 0 {
            return bad("fc_width must be at least 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout must be in [0, 1)");
        }
        if self.model == ModelKind::Unet && !(1..=6).contains(&self.depth) {
            return bad("depth must be between 1 and 6");
        }
        Ok(())
    }

    /// Output size for an input of `h x w`, or why that input is not accepted.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize), ModelError> {
        if h == 0 || w == 0 {
            return Err(ModelError::InputTooSmall { layer: "input".into(), h, w });
        }
        if self.model != ModelKind::Unet {
            return Ok((h, w));
        }
        let out = |s| {
            unet_output_size(s, self.depth, self.padded).ok_or_else(|| unet::invalid_size(s, self.depth, self.padded))
        };
        Ok((out(h)?, out(w)?))
    }

    /// How far the output is inset into the input on each side (U-Net unpadded: 92 for depth 4).
    pub fn output_margin(&self, h: usize) -> usize {
        self.output_size(h, h).map_or(0, |(o, _)| (h - o) / 2)
    }
}

/// Any segkit model.
#[derive(Module, Debug)]
pub enum SegModel {
    Fcn(Fcn),
    Unet(Unet),
}

impl SegModel {
    pub fn new(config: &ModelConfig, device: &Device) -> Result<Self, ModelError> {
        config.validate()?;
        let variant = match config.model {
            ModelKind::Fcn32s => FcnVariant::Fcn32s,
            ModelKind::Fcn16s => FcnVariant::Fcn16s,
            ModelKind::Fcn8s => FcnVariant::Fcn8s,
            ModelKind::Fcn8sAtonce => FcnVariant::Fcn8sAtOnce,
            ModelKind::Unet => {
                let o = UnetOptions {
                    n_classes: config.classes,
                    in_channels: config.in_channels,
                    depth: config.depth,
                    base_width: config.base_width,
                    padded: config.padded,
                    batch_norm: config.batch_norm,
                };
                return Ok(SegModel::Unet(Unet::new(&o, device)));
            }
        };
        let o = FcnOptions {
            variant,
            n_classes: config.classes,
            in_channels: config.in_channels,
            base_width: config.base_width,
            fc_width: config.fc_width,
            dropout: config.dropout,
            learnable_upsampling: config.learnable_upsampling,
            batch_norm: config.batch_norm,
        };
        Ok(SegModel::Fcn(Fcn::new(&o, device)?))
    }

    /// `[B, C, H, W]` to `[B, classes, H', W']`; see [`ModelConfig::output_size`] for `H'`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            SegModel::Fcn(m) => m.forward(x),
            SegModel::Unet(m) => m.forward(x),
        }
    }

    /// The per-layer table and totals for one image of shape `[C, H, W]`.
    pub fn summary(&self, config: &ModelConfig, input: [usize; 3]) -> Result<Summary, ModelError> {
        if input[0] != config.in_channels {
            return Err(ModelError::InvalidConfig(format!(
                "the model takes {} input channels, not {}",
                config.in_channels, input[0]
            )));
        }
        config.output_size(input[1], input[2])?;
        let mut t = Tracer::default();
        let out = match self {
            SegModel::Fcn(m) => m.trace(&mut t, input)?,
            SegModel::Unet(m) => m.trace(&mut t, input)?,
        };
        let frozen = match self {
            SegModel::Fcn(m) => m.frozen_params(config.learnable_upsampling),
            SegModel::Unet(m) => m.frozen_params(),
        };
        let parameters = self.num_params();
        let forward_flops = t.layers.iter().map(|l| l.flops).sum();
        Ok(Summary {
            model: config.model.name().to_string(),
            input,
            output_shape: [1, out[0], out[1], out[2]],
            parameters,
            trainable_parameters: parameters - frozen,
            forward_flops,
            forward_gflop: forward_flops as f64 / 1e9,
            layers: t.layers,
        })
    }
}
