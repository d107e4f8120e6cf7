//! FCN-32s, FCN-16s and FCN-8s.
//!
//! Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015
//! (and the PAMI 2016 version, which adds the "at-once" FCN-8s). Follows the reference Caffe nets
//! `voc-fcn32s`, `voc-fcn16s`, `voc-fcn8s`, `voc-fcn8s-atonce` and their PyTorch port
//! (pytorch-fcn): the same layer names, the same parameter counts.
//!
//! - score layers (`score_fr`, `score_pool4`, `score_pool3`) are 1x1 convolutions initialised to
//!   zero;
//! - upsamplers are bias-free transpose convolutions holding a bilinear kernel on the class
//!   diagonal (32s: k64 s32; 16s: k4 s2 then k32 s16; 8s: k4 s2, k4 s2, k16 s8), frozen unless
//!   `learnable_upsampling`;
//! - crop offsets are derived from the layers' geometry at construction ([`crate::geometry`]),
//!   so the output is exactly the input size for every input size.
//!
//! Deviation: none in the architecture by default; `batch_norm` adds a batch norm after each trunk
//! convolution (torchvision's `vgg16_bn`, see [`crate::vgg`]) for from-scratch CPU recipes. Dropout uses Burn's RNG, so runs are reproducible per
//! seed but do not reproduce Caffe's random streams.

use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::conv::{conv_transpose2d, conv2d};
use crate::geometry::CoordMap;
use crate::layers::{bilinear_up, conv_zero, crop};
use crate::trace::{Shape3, Tracer};
use crate::vgg::Vgg16;

/// Which skip connections the FCN has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FcnVariant {
    /// No skip: score_fr upsampled 32x.
    Fcn32s,
    /// pool4 skip, upsampled 16x.
    Fcn16s,
    /// pool4 and pool3 skips, upsampled 8x.
    Fcn8s,
    /// FCN-8s trained in one stage: pool4 scaled by 0.01 and pool3 by 0.0001 before scoring.
    Fcn8sAtOnce,
}

/// Crop offsets, derived from the layers in [`Fcn::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FcnOffsets {
    pub score_pool4: Option<usize>,
    pub score_pool3: Option<usize>,
    pub final_crop: usize,
}

#[derive(Module, Debug)]
pub struct Fcn {
    pub vgg: Vgg16,
    pub score_fr: Conv2d,
    pub score_pool4: Option<Conv2d>,
    pub score_pool3: Option<Conv2d>,
    /// fc7 scores x2 (FCN-16s, FCN-8s).
    pub upscore2: Option<ConvTranspose2d>,
    /// Fused pool4 scores x2 (FCN-8s).
    pub upscore_pool4: Option<ConvTranspose2d>,
    /// Final x32 (FCN-32s).
    pub upscore: Option<ConvTranspose2d>,
    /// Final x16 (FCN-16s).
    pub upscore16: Option<ConvTranspose2d>,
    /// Final x8 (FCN-8s).
    pub upscore8: Option<ConvTranspose2d>,
    #[module(skip)]
    pub variant: FcnVariant,
    #[module(skip)]
    pub offsets: FcnOffsets,
}

/// Options of [`Fcn::new`]; the defaults are the paper's.
#[derive(Debug, Clone)]
pub struct FcnOptions {
    pub variant: FcnVariant,
    pub n_classes: usize,
    pub in_channels: usize,
    pub base_width: usize,
    pub fc_width: usize,
    pub dropout: f64,
    pub learnable_upsampling: bool,
    /// Batch norm after each trunk convolution (`vgg16_bn`); off in the paper.
    pub batch_norm: bool,
}

impl Fcn {
    pub fn new(o: &FcnOptions, device: &Device) -> Result<Self, ModelError> {
        let n = o.n_classes;
        let vgg = Vgg16::new(o.in_channels, o.base_width, o.fc_width, o.dropout, o.batch_norm, device);
        let ch = vgg.tap_channels();
        let up = |k, s| Some(bilinear_up(n, k, s, o.learnable_upsampling, device));
        let (p4, p3) = match o.variant {
            FcnVariant::Fcn32s => (false, false),
            FcnVariant::Fcn16s => (true, false),
            FcnVariant::Fcn8s | FcnVariant::Fcn8sAtOnce => (true, true),
        };
        let mut fcn = Fcn {
            score_fr: conv_zero(ch.fc7, n, device),
            score_pool4: p4.then(|| conv_zero(ch.pool4, n, device)),
            score_pool3: p3.then(|| conv_zero(ch.pool3, n, device)),
            upscore2: if p4 { up(4, 2) } else { None },
            upscore_pool4: if p3 { up(4, 2) } else { None },
            upscore: if !p4 { up(64, 32) } else { None },
            upscore16: if p4 && !p3 { up(32, 16) } else { None },
            upscore8: if p3 { up(16, 8) } else { None },
            vgg,
            variant: o.variant,
            offsets: FcnOffsets::default(),
        };
        fcn.offsets = fcn.derive_offsets()?;
        Ok(fcn)
    }

    /// Derive every crop offset from the coordinate maps of the layers (see [`crate::geometry`]).
    fn derive_offsets(&self) -> Result<FcnOffsets, ModelError> {
        let taps = self.vgg.coord_maps();
        let dec = |m: CoordMap, up: &ConvTranspose2d| m.deconv(up.kernel_size[0], up.stride[0], up.padding[0]);
        // score_* are 1x1 convolutions: they keep the map of their input.
        let mut fuse = taps.fc7;
        let mut offsets = FcnOffsets::default();
        if let Some(up2) = &self.upscore2 {
            let upscore2 = dec(fuse, up2);
            offsets.score_pool4 = Some(taps.pool4.crop_offset_to(upscore2)?);
            fuse = upscore2;
        }
        if let Some(up_p4) = &self.upscore_pool4 {
            let upscore_pool4 = dec(fuse, up_p4);
            offsets.score_pool3 = Some(taps.pool3.crop_offset_to(upscore_pool4)?);
            fuse = upscore_pool4;
        }
        offsets.final_crop = dec(fuse, self.final_up()).crop_offset_to(CoordMap::IDENTITY)?;
        Ok(offsets)
    }

    fn final_up(&self) -> &ConvTranspose2d {
        self.upscore
            .as_ref()
            .or(self.upscore16.as_ref())
            .or(self.upscore8.as_ref())
            .expect("every FCN variant has a final upsampler")
    }

    /// `[B, C, H, W]` image to `[B, classes, H, W]` scores, for any `H`, `W` >= 1.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let taps = self.vgg.forward(x);
        let mut score = conv2d(&self.score_fr, taps.fc7); // 1/32
        let at_once = self.variant == FcnVariant::Fcn8sAtOnce;
        if let (Some(up2), Some(score_pool4), Some(off)) = (&self.upscore2, &self.score_pool4, self.offsets.score_pool4)
        {
            let upscore2 = conv_transpose2d(up2, score); // 1/16
            let [_, _, uh, uw] = upscore2.dims();
            let pool4 = if at_once { taps.pool4.mul_scalar(0.01) } else { taps.pool4 };
            let skip = crop(conv2d(score_pool4, pool4), off, off, uh, uw);
            score = upscore2 + skip;
        }
        if let (Some(up_p4), Some(score_pool3), Some(off)) =
            (&self.upscore_pool4, &self.score_pool3, self.offsets.score_pool3)
        {
            let upscore_pool4 = conv_transpose2d(up_p4, score); // 1/8
            let [_, _, uh, uw] = upscore_pool4.dims();
            let pool3 = if at_once { taps.pool3.mul_scalar(0.0001) } else { taps.pool3 };
            let skip = crop(conv2d(score_pool3, pool3), off, off, uh, uw);
            score = upscore_pool4 + skip;
        }
        let out = conv_transpose2d(self.final_up(), score); // back to full resolution, plus a margin
        let off = self.offsets.final_crop;
        crop(out, off, off, h, w) // H x W
    }

    /// Per-layer shapes, parameters and FLOPs for one `[C, H, W]` image.
    pub fn trace(&self, t: &mut Tracer, x: Shape3) -> Result<Shape3, ModelError> {
        let [_, h, w] = x;
        let taps = self.vgg.trace(t, x)?;
        let mut score = t.conv("score_fr", &self.score_fr, taps.fc7)?;
        if let (Some(up2), Some(sp4)) = (&self.upscore2, &self.score_pool4) {
            let up = t.deconv("upscore2", up2, score);
            t.conv("score_pool4", sp4, taps.pool4)?;
            t.op("score_pool4c", "crop", up);
            score = t.op("fuse_pool4", "add", up);
        }
        if let (Some(up_p4), Some(sp3)) = (&self.upscore_pool4, &self.score_pool3) {
            let up = t.deconv("upscore_pool4", up_p4, score);
            t.conv("score_pool3", sp3, taps.pool3)?;
            t.op("score_pool3c", "crop", up);
            score = t.op("fuse_pool3", "add", up);
        }
        let name = match self.variant {
            FcnVariant::Fcn32s => "upscore",
            FcnVariant::Fcn16s => "upscore16",
            FcnVariant::Fcn8s | FcnVariant::Fcn8sAtOnce => "upscore8",
        };
        let up = t.deconv(name, self.final_up(), score);
        Ok(t.op("score", "crop", [up[0], h, w]))
    }

    /// Parameters that do not train: the bilinear upsamplers unless they are learnable.
    pub fn frozen_params(&self, learnable_upsampling: bool) -> usize {
        if learnable_upsampling {
            return 0;
        }
        [&self.upscore2, &self.upscore_pool4, &self.upscore, &self.upscore16, &self.upscore8]
            .into_iter()
            .flatten()
            .map(crate::layers::deconv_params)
            .sum()
    }
}
