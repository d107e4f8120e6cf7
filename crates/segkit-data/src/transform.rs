//! Training and evaluation transforms. Every random choice comes from an RNG seeded by
//! (run seed, epoch, sample position), so a sample is augmented identically however many
//! workers run and after a resume.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::image_io::ImageBuf;
use crate::synth::mix_seed;

/// How pixel values become network inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    /// RGB in [0, 1] minus ImageNet mean, over ImageNet std (torchvision weights).
    Imagenet,
    /// BGR in [0, 255] minus the Caffe VGG mean (Caffe-converted weights, the FCN reference).
    CaffeBgr,
    /// [0, 1].
    Unit,
    /// [-0.5, 0.5].
    Centered,
    /// Each image minus its own mean, over its own standard deviation, per channel: the
    /// statistics of the whole source image, before augmentation and tiling, so that every crop
    /// and every overlap tile of one image is scaled alike. For microscopy, where exposure and
    /// staining vary between images (ISBI 2012's slices have mean grey 99-143, spread 34-51).
    PerImage,
}

/// What a [`Normalize`] computes, as numbers: `out[c] = (pixel[src(c)] * scale - mean[c]) / std[c]`
/// with `src(c) = channels - 1 - c` when `bgr` (Caffe's channel order), else `c`. Written into
/// exported models so that a deployer can prepare inputs without segkit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormParams {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Applied to the 0-255 pixel value before the mean is subtracted.
    pub scale: f32,
    pub bgr: bool,
}

impl Normalize {
    /// The numbers behind this normalisation for an image of `channels` channels; `None` for
    /// [`Normalize::PerImage`], whose numbers come from each image ([`Normalize::params_for`]).
    pub fn fixed_params(self, channels: usize) -> Option<NormParams> {
        let (mean, std, scale, bgr): ([f32; 3], [f32; 3], f32, bool) = match (self, channels) {
            (Normalize::Imagenet, 3) => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1.0 / 255.0, false),
            (Normalize::Imagenet, _) => ([0.449; 3], [0.226; 3], 1.0 / 255.0, false),
            (Normalize::CaffeBgr, 3) => ([104.00699, 116.66877, 122.67892], [1.0; 3], 1.0, true),
            (Normalize::CaffeBgr, _) => ([114.4; 3], [1.0; 3], 1.0, false),
            (Normalize::Unit, _) => ([0.0; 3], [1.0; 3], 1.0 / 255.0, false),
            (Normalize::Centered, _) => ([0.5; 3], [1.0; 3], 1.0 / 255.0, false),
            (Normalize::PerImage, _) => return None,
        };
        Some(NormParams { mean, std, scale, bgr })
    }

    /// The numbers for `source`, the whole image as decoded (before augmentation, crops or
    /// tiles): every part of that image is then normalised with them.
    pub fn params_for(self, source: &ImageBuf) -> NormParams {
        if let Some(p) = self.fixed_params(source.channels) {
            return p;
        }
        let c = source.channels;
        let n = (source.width * source.height).max(1) as f64;
        let (mut mean, mut std) = ([0f32; 3], [1f32; 3]);
        for ch in 0..c.min(3) {
            let (mut sum, mut sq) = (0f64, 0f64);
            for px in source.data.chunks_exact(c) {
                let v = px[ch] as f64;
                sum += v;
                sq += v * v;
            }
            let m = sum / n;
            mean[ch] = m as f32;
            // A flat image would divide by zero; one grey level is the floor of the spread.
            std[ch] = ((sq / n - m * m).max(0.0).sqrt() as f32).max(PER_IMAGE_MIN_STD);
        }
        NormParams { mean, std, scale: 1.0, bgr: false }
    }
}

/// The smallest standard deviation [`Normalize::PerImage`] divides by, in grey levels.
pub const PER_IMAGE_MIN_STD: f32 = 1.0;

impl NormParams {
    /// Writes `img` normalised into `out` as CHW.
    pub fn apply(&self, img: &ImageBuf, out: &mut [f32]) {
        let (hw, c) = (img.width * img.height, img.channels);
        debug_assert_eq!(out.len(), hw * c);
        let NormParams { mean, std, scale, bgr } = *self;
        for ch in 0..c {
            let src = if bgr { c - 1 - ch } else { ch };
            let (m, s) = (mean[ch], std[ch]);
            let plane = &mut out[ch * hw..(ch + 1) * hw];
            for (i, v) in plane.iter_mut().enumerate() {
                *v = (img.data[i * c + src] as f32 * scale - m) / s;
            }
        }
    }
}

/// The `[augment]` section of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Side of the square training crop (the network's output size for U-Net); 0 trains on whole
    /// images, which must then all have one size.
    pub crop: usize,
    /// Random rescaling before the crop: smallest factor.
    pub scale_min: f64,
    /// Random rescaling: largest factor.
    pub scale_max: f64,
    /// Random horizontal flips.
    pub hflip: bool,
    /// Random vertical flips.
    pub vflip: bool,
    /// Rotations by multiples of 90 degrees (EM data has no preferred orientation).
    pub rot90: bool,
    /// Brightness shift, as a fraction of the range (0.1 = up to +-10%).
    pub brightness: f64,
    /// Contrast factor range, 1 +- this.
    pub contrast: f64,
    /// Elastic deformation of the U-Net paper: displacements on a coarse `elastic_grid` x
    /// `elastic_grid` grid drawn with standard deviation `elastic_sigma` pixels, interpolated
    /// smoothly over the image. 0 turns it off.
    pub elastic_sigma: f64,
    /// Elastic deformation: control points per side (the paper: 3x3).
    pub elastic_grid: usize,
    /// Input normalisation: imagenet (mean/std), caffe-bgr (the FCN reference), unit ([0, 1]),
    /// centered ([-0.5, 0.5]) or per-image (each image's own mean and standard deviation).
    pub normalize: Normalize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            crop: 0,
            scale_min: 1.0,
            scale_max: 1.0,
            hflip: true,
            vflip: false,
            rot90: false,
            brightness: 0.0,
            contrast: 0.0,
            elastic_sigma: 0.0,
            elastic_grid: 3,
            normalize: Normalize::Imagenet,
        }
    }
}

/// Geometry of a network input: `input` pixels in, `output` pixels out, centred.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub input: usize,
    pub output: usize,
}

impl Window {
    pub fn margin(&self) -> usize {
        (self.input - self.output) / 2
    }
}

/// Resizes an image bilinearly (half-pixel centres, as OpenCV and `align_corners=False`).
pub fn resize_image(img: &ImageBuf, w: usize, h: usize) -> ImageBuf {
    let mut out = ImageBuf::new(w, h, img.channels);
    let sx = img.width as f32 / w as f32;
    let sy = img.height as f32 / h as f32;
    for y in 0..h {
        let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (img.height - 1) as f32);
        let (y0, ty) = (fy.floor() as usize, fy.fract());
        let y1 = (y0 + 1).min(img.height - 1);
        for x in 0..w {
            let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (img.width - 1) as f32);
            let (x0, tx) = (fx.floor() as usize, fx.fract());
            let x1 = (x0 + 1).min(img.width - 1);
            for c in 0..img.channels {
                let p = |x: usize, y: usize| img.px(x, y)[c] as f32;
                let top = p(x0, y0) * (1.0 - tx) + p(x1, y0) * tx;
                let bot = p(x0, y1) * (1.0 - tx) + p(x1, y1) * tx;
                out.px_mut(x, y)[c] = (top * (1.0 - ty) + bot * ty).round() as u8;
            }
        }
    }
    out
}

/// Resizes labels by nearest neighbour (labels must never be blended).
pub fn resize_labels(labels: &[u8], w0: usize, h0: usize, w: usize, h: usize) -> Vec<u8> {
    let mut out = vec![0; w * h];
    for y in 0..h {
        let sy = (((y as f32 + 0.5) * h0 as f32 / h as f32) as usize).min(h0 - 1);
        for x in 0..w {
            let sx = (((x as f32 + 0.5) * w0 as f32 / w as f32) as usize).min(w0 - 1);
            out[y * w + x] = labels[sy * w0 + sx];
        }
    }
    out
}

/// Mirror index into `0..n` (reflection without repeating the edge, as `np.pad(mode="reflect")`).
pub fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let mut i = i.rem_euclid(period);
    if i >= n as isize {
        i = period - i;
    }
    i as usize
}

/// A training or evaluation sample, ready to batch.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// CHW, normalised, `window.input` square (or the whole image size).
    pub image: Vec<f32>,
    pub in_hw: (usize, usize),
    /// HW, `window.output` square (or the whole image size).
    pub labels: Vec<u8>,
    pub out_hw: (usize, usize),
}

/// Cuts the network input around an output region at (`oy`, `ox`) of size `out_h x out_w`.
/// Image context outside the image is mirrored when `mirror` (U-Net's overlap-tile), else zero
/// after normalisation; labels outside the image are `ignore`.
#[allow(clippy::too_many_arguments)]
pub fn cut(
    img: &ImageBuf,
    labels: &[u8],
    oy: isize,
    ox: isize,
    out_h: usize,
    out_w: usize,
    margin: usize,
    mirror: bool,
    ignore: u8,
) -> (ImageBuf, Vec<u8>, Vec<bool>) {
    let (in_h, in_w) = (out_h + 2 * margin, out_w + 2 * margin);
    let mut inp = ImageBuf::new(in_w, in_h, img.channels);
    let mut valid = vec![true; in_w * in_h];
    for y in 0..in_h {
        let sy = oy + y as isize - margin as isize;
        for x in 0..in_w {
            let sx = ox + x as isize - margin as isize;
            let inside = sy >= 0 && sx >= 0 && (sy as usize) < img.height && (sx as usize) < img.width;
            if inside || mirror {
                let (ry, rx) = (reflect(sy, img.height), reflect(sx, img.width));
                let c = img.channels;
                let src = &img.data[(ry * img.width + rx) * c..(ry * img.width + rx + 1) * c];
                inp.data[(y * in_w + x) * c..(y * in_w + x + 1) * c].copy_from_slice(src);
            } else {
                valid[y * in_w + x] = false;
            }
        }
    }
    let mut out = vec![ignore; out_h * out_w];
    for y in 0..out_h {
        let sy = oy + y as isize;
        for x in 0..out_w {
            let sx = ox + x as isize;
            if sy >= 0 && sx >= 0 && (sy as usize) < img.height && (sx as usize) < img.width {
                out[y * out_w + x] = labels[sy as usize * img.width + sx as usize];
            }
        }
    }
    (inp, out, valid)
}

fn to_tensor_data(img: &ImageBuf, valid: Option<&[bool]>, norm: &NormParams) -> Vec<f32> {
    let mut data = vec![0f32; img.data.len()];
    norm.apply(img, &mut data);
    if let Some(valid) = valid {
        let hw = img.width * img.height;
        for (i, &v) in valid.iter().enumerate() {
            if !v {
                for c in 0..img.channels {
                    data[c * hw + i] = 0.0;
                }
            }
        }
    }
    data
}

/// Elastic deformation: a smooth random displacement field, bilinear for the image and nearest
/// for the labels.
fn elastic(img: &ImageBuf, labels: &[u8], sigma: f64, grid: usize, rng: &mut StdRng) -> (ImageBuf, Vec<u8>) {
    let (w, h) = (img.width, img.height);
    let g = grid.max(2);
    let normal = |rng: &mut StdRng| -> f32 {
        // Box-Muller.
        let (u1, u2): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    };
    let dx: Vec<f32> = (0..g * g).map(|_| normal(rng) * sigma as f32).collect();
    let dy: Vec<f32> = (0..g * g).map(|_| normal(rng) * sigma as f32).collect();
    // Bicubic-smooth interpolation of the coarse grid (smoothstep weights).
    let field = |d: &[f32], x: usize, y: usize| -> f32 {
        let gx = x as f32 / (w.max(2) - 1) as f32 * (g - 1) as f32;
        let gy = y as f32 / (h.max(2) - 1) as f32 * (g - 1) as f32;
        let (x0, y0) = ((gx.floor() as usize).min(g - 2), (gy.floor() as usize).min(g - 2));
        let s = |t: f32| t * t * (3.0 - 2.0 * t);
        let (tx, ty) = (s(gx - x0 as f32), s(gy - y0 as f32));
        let v = |i: usize, j: usize| d[j * g + i];
        let top = v(x0, y0) * (1.0 - tx) + v(x0 + 1, y0) * tx;
        let bot = v(x0, y0 + 1) * (1.0 - tx) + v(x0 + 1, y0 + 1) * tx;
        top * (1.0 - ty) + bot * ty
    };
    let mut out = ImageBuf::new(w, h, img.channels);
    let mut out_l = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let fx = x as f32 + field(&dx, x, y);
            let fy = y as f32 + field(&dy, x, y);
            let (rx, ry) = (reflect(fx.round() as isize, w), reflect(fy.round() as isize, h));
            out_l[y * w + x] = labels[ry * w + rx];
            let (x0, y0) = (fx.floor(), fy.floor());
            let (tx, ty) = (fx - x0, fy - y0);
            for c in 0..img.channels {
                let p = |xx: f32, yy: f32| img.px(reflect(xx as isize, w), reflect(yy as isize, h))[c] as f32;
                let top = p(x0, y0) * (1.0 - tx) + p(x0 + 1.0, y0) * tx;
                let bot = p(x0, y0 + 1.0) * (1.0 - tx) + p(x0 + 1.0, y0 + 1.0) * tx;
                out.px_mut(x, y)[c] = (top * (1.0 - ty) + bot * ty).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    (out, out_l)
}

fn flip_h(img: &mut ImageBuf, labels: &mut [u8]) {
    let (w, c) = (img.width, img.channels);
    for y in 0..img.height {
        for x in 0..w / 2 {
            for k in 0..c {
                img.data.swap((y * w + x) * c + k, (y * w + w - 1 - x) * c + k);
            }
            labels.swap(y * w + x, y * w + w - 1 - x);
        }
    }
}

fn flip_v(img: &mut ImageBuf, labels: &mut [u8]) {
    let (w, h, c) = (img.width, img.height, img.channels);
    for y in 0..h / 2 {
        for x in 0..w {
            for k in 0..c {
                img.data.swap((y * w + x) * c + k, ((h - 1 - y) * w + x) * c + k);
            }
            labels.swap(y * w + x, (h - 1 - y) * w + x);
        }
    }
}

fn transpose(img: &ImageBuf, labels: &[u8]) -> (ImageBuf, Vec<u8>) {
    let (w, h, c) = (img.width, img.height, img.channels);
    let mut out = ImageBuf::new(h, w, c);
    let mut out_l = vec![0; w * h];
    for y in 0..h {
        for x in 0..w {
            out.px_mut(y, x).copy_from_slice(img.px(x, y));
            out_l[x * h + y] = labels[y * w + x];
        }
    }
    (out, out_l)
}

/// The training transform of one sample: scale, elastic, flips, crop (mirrored context for
/// U-Net, ignore-padded for FCN), photometric jitter, normalisation. `window` is `None` for
/// whole-image training (crop = 0).
pub fn train_transform(
    img: ImageBuf,
    labels: Vec<u8>,
    cfg: &AugmentConfig,
    window: Option<Window>,
    mirror: bool,
    ignore: u8,
    seed: u64,
) -> Prepared {
    let mut rng = StdRng::seed_from_u64(seed);
    // Taken before any augmentation, so that the brightness and contrast jitter below survive
    // a per-image normalisation instead of being divided out again.
    let norm = cfg.normalize.params_for(&img);
    let (mut img, mut labels) = (img, labels);
    if cfg.scale_max > cfg.scale_min || cfg.scale_min != 1.0 {
        let s =
            if cfg.scale_max > cfg.scale_min { rng.random_range(cfg.scale_min..cfg.scale_max) } else { cfg.scale_min };
        let (w, h) =
            (((img.width as f64 * s).round() as usize).max(1), ((img.height as f64 * s).round() as usize).max(1));
        if (w, h) != (img.width, img.height) {
            labels = resize_labels(&labels, img.width, img.height, w, h);
            img = resize_image(&img, w, h);
        }
    }
    if cfg.elastic_sigma > 0.0 {
        (img, labels) = elastic(&img, &labels, cfg.elastic_sigma, cfg.elastic_grid, &mut rng);
    }
    if cfg.hflip && rng.random_bool(0.5) {
        flip_h(&mut img, &mut labels);
    }
    if cfg.vflip && rng.random_bool(0.5) {
        flip_v(&mut img, &mut labels);
    }
    if cfg.rot90 && rng.random_bool(0.5) {
        (img, labels) = transpose(&img, &labels);
    }
    let (inp, out, valid, out_hw) = match window {
        Some(win) => {
            let o = win.output;
            let pick = |n: usize, rng: &mut StdRng| -> isize {
                if n >= o { rng.random_range(0..=(n - o)) as isize } else { -(rng.random_range(0..=(o - n)) as isize) }
            };
            let oy = pick(img.height, &mut rng);
            let ox = pick(img.width, &mut rng);
            let (inp, out, valid) = cut(&img, &labels, oy, ox, o, o, win.margin(), mirror, ignore);
            (inp, out, Some(valid), (o, o))
        }
        None => {
            let hw = (img.height, img.width);
            (img, labels, None, hw)
        }
    };
    let mut inp = inp;
    if cfg.brightness > 0.0 || cfg.contrast > 0.0 {
        let b =
            if cfg.brightness > 0.0 { rng.random_range(-cfg.brightness..cfg.brightness) as f32 * 255.0 } else { 0.0 };
        let k = if cfg.contrast > 0.0 { rng.random_range(1.0 - cfg.contrast..1.0 + cfg.contrast) as f32 } else { 1.0 };
        let mean = inp.data.iter().map(|&v| v as f32).sum::<f32>() / inp.data.len().max(1) as f32;
        for v in &mut inp.data {
            *v = ((*v as f32 - mean) * k + mean + b).round().clamp(0.0, 255.0) as u8;
        }
    }
    let in_hw = (inp.height, inp.width);
    Prepared { image: to_tensor_data(&inp, valid.as_deref(), &norm), in_hw, labels: out, out_hw }
}

/// The evaluation transform: the whole image, mirrored out to `in_hw` for U-Net (its output's
/// top-left `H x W` covers the image). `in_hw` = image size for FCN.
pub fn eval_transform(
    img: &ImageBuf,
    labels: &[u8],
    in_hw: (usize, usize),
    margin: usize,
    norm: Normalize,
    ignore: u8,
) -> Prepared {
    let (h, w) = (img.height, img.width);
    let (out_h, out_w) = (in_hw.0 - 2 * margin, in_hw.1 - 2 * margin);
    let (inp, out, _) = cut(img, labels, 0, 0, out_h, out_w, margin, true, ignore);
    let _ = (h, w);
    Prepared { image: to_tensor_data(&inp, None, &norm.params_for(img)), in_hw, labels: out, out_hw: (out_h, out_w) }
}

/// A per-sample seed from the run seed, the epoch and the sample's position in the epoch.
pub fn sample_seed(seed: u64, epoch: u64, position: u64) -> u64 {
    mix_seed(mix_seed(seed, epoch), position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_is_numpy_reflect() {
        let got: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    #[test]
    fn crop_pads_with_ignore_and_mirrors_context() {
        let img = ImageBuf { width: 2, height: 2, channels: 1, data: vec![10, 20, 30, 40] };
        let labels = vec![0, 1, 2, 3];
        // Output 3x3 at (0,0) without margin: the last row/column is outside -> ignore.
        let (_, out, valid) = cut(&img, &labels, 0, 0, 3, 3, 0, false, 255);
        assert_eq!(out, vec![0, 1, 255, 2, 3, 255, 255, 255, 255]);
        assert_eq!(valid.iter().filter(|v| !**v).count(), 5);
        // Output 2x2 with a margin of 1, mirrored: the input's corner is the reflected pixel.
        let (inp, out, _) = cut(&img, &labels, 0, 0, 2, 2, 1, true, 255);
        assert_eq!(out, labels);
        assert_eq!(inp.data, vec![40, 30, 40, 30, 20, 10, 20, 10, 40, 30, 40, 30, 20, 10, 20, 10]);
    }

    #[test]
    fn transforms_are_reproducible() {
        let (img, labels) = crate::synth::synth_sample(3, 0, 40, 3);
        let cfg = AugmentConfig {
            crop: 24,
            scale_min: 0.8,
            scale_max: 1.2,
            brightness: 0.1,
            contrast: 0.1,
            elastic_sigma: 4.0,
            vflip: true,
            rot90: true,
            ..Default::default()
        };
        let win = Some(Window { input: 24, output: 24 });
        let a = train_transform(img.clone(), labels.clone(), &cfg, win, false, 255, 9);
        let b = train_transform(img.clone(), labels.clone(), &cfg, win, false, 255, 9);
        assert_eq!((a.image.clone(), a.labels.clone()), (b.image, b.labels));
        assert_eq!(a.labels.len(), 24 * 24);
        assert_eq!(a.image.len(), 3 * 24 * 24);
        let c = train_transform(img, labels, &cfg, win, false, 255, 10);
        assert_ne!(a.labels, c.labels);
    }

    /// Per-image statistics come from the whole source image: a crop of a half-dark, half-bright
    /// image holds only the whole image's two standardised values (+-1), never its own
    /// standardisation; the brightness jitter, applied after the statistics are taken, survives.
    #[test]
    fn per_image_normalisation_uses_the_whole_source_image() {
        let (w, h) = (20, 20);
        let data = (0..w * h).map(|i| if i % w < w / 2 { 50 } else { 200 }).collect();
        let img = ImageBuf { width: w, height: h, channels: 1, data };
        let p = Normalize::PerImage.params_for(&img);
        assert_eq!((p.mean[0], p.std[0], p.scale, p.bgr), (125.0, 75.0, 1.0, false));
        let labels = vec![0u8; w * h];
        let cfg = AugmentConfig { crop: 8, hflip: false, normalize: Normalize::PerImage, ..Default::default() };
        let win = Some(Window { input: 8, output: 8 });
        for seed in 0..8 {
            let prep = train_transform(img.clone(), labels.clone(), &cfg, win, false, 255, seed);
            assert!(prep.image.iter().all(|&v| v == 1.0 || v == -1.0), "seed {seed}: {:?}", prep.image);
        }
        let jitter = AugmentConfig { brightness: 0.2, ..cfg.clone() };
        let shifted = (0..8).any(|seed| {
            let prep = train_transform(img.clone(), labels.clone(), &jitter, win, false, 255, seed);
            prep.image.iter().any(|&v| (v.abs() - 1.0).abs() > 1e-3)
        });
        assert!(shifted, "the brightness jitter was divided out again");
        // The evaluation transform standardises the whole image: mean 0, deviation 1.
        let prep = eval_transform(&img, &labels, (h, w), 0, Normalize::PerImage, 255);
        let mean = prep.image.iter().sum::<f32>() / prep.image.len() as f32;
        let var = prep.image.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / prep.image.len() as f32;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "mean {mean}, variance {var}");
        // A flat image has no spread to divide by: zeros, not NaN.
        let flat = ImageBuf { width: 3, height: 2, channels: 3, data: vec![77; 18] };
        let mut out = vec![f32::NAN; 18];
        Normalize::PerImage.params_for(&flat).apply(&flat, &mut out);
        assert!(out.iter().all(|&v| v == 0.0), "{out:?}");
    }

    #[test]
    fn caffe_normalisation_is_bgr_minus_mean() {
        let img = ImageBuf { width: 1, height: 1, channels: 3, data: vec![200, 100, 50] };
        let mut out = vec![0.0; 3];
        Normalize::CaffeBgr.params_for(&img).apply(&img, &mut out);
        assert!((out[0] - (50.0 - 104.00699)).abs() < 1e-4);
        assert!((out[2] - (200.0 - 122.67892)).abs() < 1e-4);
    }
}
