//! Inference on images of any size.
//!
//! U-Net (unpadded) uses the paper's overlap-tile strategy: output tiles of the training size,
//! each computed from its input tile with the missing context mirrored at the image borders; a
//! valid-convolution network sees the same context for a pixel whichever tile computes it, so
//! tiles stitch without seams and an image that fits in one tile gets exactly the whole-image
//! result. FCN (and padded U-Net) take whole images up to `max_side`; larger images go through a
//! sliding window whose overlapping logits are blended with a tapered (not uniform) weight.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::TensorData;
use segkit_data::transform::cut;
use segkit_data::{ImageBuf, NormParams};
use segkit_models::{ModelKind, SegModel, input_size_for_output, unet_output_size};
use serde::Serialize;

use crate::TrainError;
use crate::checkpoint::ClassInfo;
use crate::config::RunConfig;
use crate::eval::eval_geometry;
use crate::objects::{Object, find_objects};
use crate::params::{HostTensor, to_f32};

/// A model ready to predict.
pub struct Predictor {
    pub config: RunConfig,
    pub classes: ClassInfo,
    pub model: SegModel,
    pub device: Device,
    /// U-Net output tile side; FCN window side for large images.
    pub tile: usize,
    /// FCN: images with both sides up to this go through whole.
    pub max_side: usize,
    /// Views whose softmax is averaged (`crate::tta`); the identity alone by default.
    pub views: Vec<crate::tta::View>,
    /// The activations' dtype: f32, or f16 with [`Predictor::with_half`] (the f16-mixed path:
    /// f32 weights cast per layer, logits back to f32 before the softmax).
    pub dtype: burn::tensor::DType,
}

/// Options of [`Predictor::predict`].
#[derive(Debug, Clone)]
pub struct PredictOptions {
    pub min_area: usize,
    /// Classes that are not objects (background).
    pub skip_classes: Vec<u8>,
}

impl Default for PredictOptions {
    fn default() -> Self {
        Self { min_area: 1, skip_classes: vec![0] }
    }
}

/// The result for one image.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub width: usize,
    pub height: usize,
    /// Class index per pixel, row-major.
    #[serde(skip)]
    pub mask: Vec<u8>,
    /// Softmax probability of the winning class per pixel.
    #[serde(skip)]
    pub confidence: Vec<f32>,
    /// Pixels per class.
    pub class_areas: Vec<usize>,
    pub objects: Vec<Object>,
}

impl Prediction {
    /// Instance masks as `[N, H, W]` (0/1), with their shape.
    pub fn masks(&self) -> (Vec<u8>, [usize; 3]) {
        let hw = self.width * self.height;
        let mut out = vec![0u8; self.objects.len() * hw];
        for (k, o) in self.objects.iter().enumerate() {
            for &i in &o.pixels {
                out[k * hw + i] = 1;
            }
        }
        (out, [self.objects.len(), self.height, self.width])
    }

    /// Boxes as `[N, 6]`: x1, y1, x2, y2, confidence, class.
    pub fn boxes(&self) -> Vec<[f32; 6]> {
        self.objects
            .iter()
            .map(|o| [o.xyxy[0], o.xyxy[1], o.xyxy[2], o.xyxy[3], o.confidence, o.class_id as f32])
            .collect()
    }
}

impl Predictor {
    /// From a run directory, a checkpoint, or a file written by `segkit export`.
    pub fn load(path: &Path, device: &Device) -> Result<Predictor, TrainError> {
        Ok(Self::from_loaded(crate::model_file::open_model(path, device)?, device))
    }

    /// From an opened model file (whose `notes` the caller may want to show first).
    pub fn from_loaded(l: crate::model_file::Loaded, device: &Device) -> Predictor {
        let (config, classes, model) = (l.config, l.classes, l.model);
        let tile = if config.augment.crop > 0 { config.augment.crop } else { 512 };
        Predictor {
            config,
            classes,
            model,
            device: device.clone(),
            tile,
            max_side: 1024,
            views: vec![crate::tta::View::IDENTITY],
            dtype: burn::tensor::DType::F32,
        }
    }

    /// f16 activations where the device computes in f16 (`device::computes_f16`); whether it
    /// does is the second value (on the CPU and on OpenGL it stays f32).
    pub fn with_half(mut self) -> (Predictor, bool) {
        let half = crate::device::computes_f16(&self.device);
        if half {
            self.dtype = burn::tensor::DType::F16;
        }
        (self, half)
    }

    /// The model's logits for `x`, computed in [`Predictor::dtype`], returned as f32.
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        use segkit_models::conv::as_dtype;
        as_dtype(self.model.forward(as_dtype(x, self.dtype)), burn::tensor::DType::F32)
    }

    /// Test-time augmentation: average over the flips and quarter turns the run trained with.
    pub fn with_tta(mut self) -> Predictor {
        self.views = crate::tta::views(&self.config.augment);
        self
    }

    /// The input normalisation for `img`, the whole image: its tiles and windows share it, as
    /// the crops of one image did in training.
    fn norm_for(&self, img: &ImageBuf) -> NormParams {
        self.config.augment.normalize.params_for(img)
    }

    /// Softmax probabilities `[C, out_h, out_w]` of one network input.
    fn probs(&self, input: &ImageBuf, norm: &NormParams) -> Vec<f32> {
        let mut data = vec![0f32; input.data.len()];
        norm.apply(input, &mut data);
        let x =
            Tensor::<4>::from_data(TensorData::new(data, [1, input.channels, input.height, input.width]), &self.device);
        to_f32(crate::tta::mean_probs(|x| self.forward(x), x, &self.views))
    }

    /// Class probabilities `[C, H, W]` for the whole image.
    pub fn probabilities(&self, img: &ImageBuf) -> Result<Vec<f32>, TrainError> {
        let m = &self.config.model;
        let (h, w, c) = (img.height, img.width, m.classes);
        let img = img.clone().with_channels(m.in_channels);
        let norm = self.norm_for(&img);
        let mut out = vec![0f32; c * h * w];
        let no_labels = vec![0u8; h * w];
        if m.model == ModelKind::Unet && !m.padded {
            // Overlap-tile: one tile when the image fits, else a grid of output tiles.
            let ((in_h, in_w), margin) = eval_geometry(m, h, w)?;
            let tile_in = input_size_for_output(self.tile, m.depth, false)
                .ok_or_else(|| TrainError::Config(format!("no U-Net tile for output {}", self.tile)))?;
            let t = unet_output_size(tile_in, m.depth, false).expect("valid by construction");
            let (oh, ow) = (in_h - 2 * margin, in_w - 2 * margin);
            if oh <= t && ow <= t {
                let (inp, _, _) = cut(&img, &no_labels, 0, 0, oh, ow, margin, true, 0);
                let p = self.probs(&inp, &norm);
                paste(&mut out, &p, (h, w), (oh, ow), (0, 0), c);
                return Ok(out);
            }
            let margin = (tile_in - t) / 2;
            // Tile origins on the pooling grid (multiples of 2^depth), so that every tile sees
            // its pixels exactly as the whole-image pass would.
            let align = 1usize << m.depth;
            for oy in aligned_starts(h, t, align) {
                for ox in aligned_starts(w, t, align) {
                    let (inp, _, _) = cut(&img, &no_labels, oy as isize, ox as isize, t, t, margin, true, 0);
                    let p = self.probs(&inp, &norm);
                    paste(&mut out, &p, (h, w), (t, t), (oy, ox), c);
                }
            }
            return Ok(out);
        }
        // FCN and padded U-Net: whole image (padded U-Net to its next valid size, mirrored).
        let whole = |img: &ImageBuf| -> Result<Vec<f32>, TrainError> {
            let ((in_h, in_w), _) = eval_geometry(m, img.height, img.width)?;
            let labels = vec![0u8; img.width * img.height];
            let (inp, _, _) = cut(img, &labels, 0, 0, in_h, in_w, 0, true, 0);
            let p = self.probs(&inp, &norm);
            let mut o = vec![0f32; c * img.height * img.width];
            paste(&mut o, &p, (img.height, img.width), (in_h, in_w), (0, 0), c);
            Ok(o)
        };
        if h <= self.max_side && w <= self.max_side {
            return whole(&img);
        }
        // Sliding window with tapered blending of the probabilities.
        let s = self.tile.min(self.max_side).max(32);
        let mut weight_sum = vec![0f32; h * w];
        let taper = |i: usize, n: usize| ((i.min(n - 1 - i) + 1) as f32 / (n as f32 / 2.0)).min(1.0);
        for oy in window_starts(h, s) {
            for ox in window_starts(w, s) {
                let (wh, ww) = (s.min(h), s.min(w));
                let (win, _, _) = cut(&img, &no_labels, oy as isize, ox as isize, wh, ww, 0, true, 0);
                let p = whole(&win)?;
                for y in 0..wh {
                    for x in 0..ww {
                        let wt = taper(y, wh) * taper(x, ww);
                        let i = (oy + y) * w + ox + x;
                        weight_sum[i] += wt;
                        for k in 0..c {
                            out[k * h * w + i] += wt * p[k * wh * ww + y * ww + x];
                        }
                    }
                }
            }
        }
        for k in 0..c {
            for i in 0..h * w {
                out[k * h * w + i] /= weight_sum[i];
            }
        }
        Ok(out)
    }

    /// The network's input and raw output (logits) for one pass over the whole image, as
    /// `segkit eval` runs it: FCN takes the image as it is; a U-Net takes the smallest valid input
    /// whose output covers the image, the context mirrored (one tile). What an exported model is
    /// checked against (`segkit predict --save-logits`, scripts/check_onnx.py).
    pub fn network_pass(&self, img: &ImageBuf) -> Result<(HostTensor, HostTensor), TrainError> {
        let m = &self.config.model;
        let img = img.clone().with_channels(m.in_channels);
        let norm = self.norm_for(&img);
        let ((in_h, in_w), margin) = eval_geometry(m, img.height, img.width)?;
        let no_labels = vec![0u8; img.height * img.width];
        let (inp, _, _) = cut(&img, &no_labels, 0, 0, in_h - 2 * margin, in_w - 2 * margin, margin, true, 0);
        let mut data = vec![0f32; inp.data.len()];
        norm.apply(&inp, &mut data);
        let shape = [1, inp.channels, inp.height, inp.width];
        let x = Tensor::<4>::from_data(TensorData::new(data.clone(), shape), &self.device);
        let logits = self.forward(x);
        let out_shape = logits.dims().to_vec();
        Ok((
            HostTensor { shape: shape.to_vec(), values: data },
            HostTensor { shape: out_shape, values: to_f32(logits) },
        ))
    }

    pub fn predict(&self, img: &ImageBuf, opts: &PredictOptions) -> Result<Prediction, TrainError> {
        let probs = self.probabilities(img)?;
        let (h, w, c) = (img.height, img.width, self.config.model.classes);
        let mut mask = vec![0u8; h * w];
        let mut confidence = vec![0f32; h * w];
        let mut class_areas = vec![0usize; c];
        for i in 0..h * w {
            let (mut best, mut bp) = (0usize, f32::MIN);
            for k in 0..c {
                let p = probs[k * h * w + i];
                if p > bp {
                    (best, bp) = (k, p);
                }
            }
            mask[i] = best as u8;
            confidence[i] = bp;
            class_areas[best] += 1;
        }
        let objects = find_objects(&mask, &confidence, w, h, &self.classes.names, &opts.skip_classes, opts.min_area);
        Ok(Prediction { width: w, height: h, mask, confidence, class_areas, objects })
    }
}

/// Writes a float32 tensor as a NumPy `.npy` file (format 1.0, little-endian, C order), the
/// format every Python tool reads.
pub fn write_npy(path: &Path, t: &HostTensor) -> Result<(), TrainError> {
    let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * t.values.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(t.values.iter().flat_map(|v| v.to_le_bytes()));
    crate::write_atomic(path, &bytes)
}

/// Copies the top-left `h x w` part (or less at the borders) of `src` (`[C, sh, sw]`) into `dst`
/// (`[C, H, W]`) at (`oy`, `ox`).
fn paste(
    dst: &mut [f32],
    src: &[f32],
    (h, w): (usize, usize),
    (sh, sw): (usize, usize),
    (oy, ox): (usize, usize),
    c: usize,
) {
    for k in 0..c {
        for y in 0..sh.min(h.saturating_sub(oy)) {
            for x in 0..sw.min(w.saturating_sub(ox)) {
                dst[k * h * w + (oy + y) * w + ox + x] = src[k * sh * sw + y * sw + x];
            }
        }
    }
}

/// Output-tile origins covering `n` pixels with tiles of `t`, every origin a multiple of
/// `align`; the last tile may reach past the border (its context is mirrored, its extra output
/// dropped).
pub fn aligned_starts(n: usize, t: usize, align: usize) -> Vec<usize> {
    let step = (t / align * align).max(align);
    let mut v = vec![0];
    while v[v.len() - 1] + t < n {
        let next = v[v.len() - 1] + step;
        v.push(next);
    }
    v
}

/// Sliding-window origins with one third overlap.
fn window_starts(n: usize, s: usize) -> Vec<usize> {
    if n <= s {
        return vec![0];
    }
    let stride = (2 * s / 3).max(1);
    let mut v: Vec<usize> = (0..n - s).step_by(stride).collect();
    v.push(n - s);
    v.dedup();
    v
}

/// The image blended with the coloured mask, with a legend of the classes present.
pub fn overlay(img: &ImageBuf, pred: &Prediction, classes: &ClassInfo) -> crate::plot::Canvas {
    let legend: Vec<(usize, String)> = pred
        .class_areas
        .iter()
        .enumerate()
        .filter(|(_, a)| **a > 0)
        .map(|(k, &a)| {
            let pct = 100.0 * a as f64 / (img.width * img.height).max(1) as f64;
            (k, format!("{} {:.1}%", classes.names.get(k).cloned().unwrap_or_default(), pct))
        })
        .collect();
    let legend_w = legend.iter().map(|(_, t)| crate::plot::Canvas::text_width(t, 1) + 22).max().unwrap_or(0);
    let legend_h = 14 * legend.len() + 8;
    let mut c = crate::plot::Canvas::new(img.width.max(legend_w), img.height + legend_h, [255, 255, 255]);
    for y in 0..img.height {
        for x in 0..img.width {
            let p = img.px(x, y);
            let base = if img.channels >= 3 { [p[0], p[1], p[2]] } else { [p[0]; 3] };
            let l = pred.mask[y * img.width + x] as usize;
            let col = classes.colors.get(l).copied().unwrap_or([0, 0, 0]);
            let mix = |a: u8, b: u8| ((a as u16 + b as u16) / 2) as u8;
            let out = if l == 0 { base } else { [mix(base[0], col[0]), mix(base[1], col[1]), mix(base[2], col[2])] };
            c.set(x as isize, y as isize, out);
        }
    }
    let mut y = img.height as isize + 4;
    for (k, text) in &legend {
        c.rect(4, y, 10, 10, classes.colors.get(*k).copied().unwrap_or([0, 0, 0]));
        c.text(18, y + 2, text, [0, 0, 0], 1);
        y += 14;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_without_overhang() {
        assert_eq!(window_starts(10, 6), vec![0, 4]);
        assert_eq!(aligned_starts(100, 388, 16), vec![0]);
        assert_eq!(aligned_starts(512, 388, 16), vec![0, 384]);
        assert_eq!(aligned_starts(30, 12, 4), vec![0, 12, 24]);
    }
}
