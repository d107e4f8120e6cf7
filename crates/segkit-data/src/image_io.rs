//! Images in memory (8-bit, HWC) and their reading and writing.

use std::io::BufWriter;
use std::path::Path;

use crate::error::{DataError, Result};

/// An 8-bit image, row-major, channels interleaved (`channels` is 1 or 3).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBuf {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl ImageBuf {
    pub fn new(width: usize, height: usize, channels: usize) -> Self {
        ImageBuf { width, height, channels, data: vec![0; width * height * channels] }
    }

    #[inline]
    pub fn px(&self, x: usize, y: usize) -> &[u8] {
        let i = (y * self.width + x) * self.channels;
        &self.data[i..i + self.channels]
    }

    #[inline]
    pub fn px_mut(&mut self, x: usize, y: usize) -> &mut [u8] {
        let i = (y * self.width + x) * self.channels;
        &mut self.data[i..i + self.channels]
    }

    /// This image with `channels` channels: gray is replicated to RGB, RGB averaged to gray
    /// with the ITU-R 601 weights (as `image`'s `to_luma8` does).
    pub fn with_channels(self, channels: usize) -> ImageBuf {
        if channels == self.channels {
            return self;
        }
        let mut out = ImageBuf::new(self.width, self.height, channels);
        for (src, dst) in self.data.chunks(self.channels).zip(out.data.chunks_mut(channels)) {
            if channels == 3 {
                dst.fill(src[0]);
            } else {
                let y = 0.299 * src[0] as f32 + 0.587 * src[1] as f32 + 0.114 * src[2] as f32;
                dst[0] = y.round().clamp(0.0, 255.0) as u8;
            }
        }
        out
    }
}

/// Reads an image file (PNG, JPEG, TIFF) with `channels` channels (1 or 3).
pub fn read_image(path: &Path, channels: usize) -> Result<ImageBuf> {
    let err = |msg: String| DataError::Image { path: path.into(), msg };
    let reader = image::ImageReader::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| DataError::io(path, e))?;
    let img = reader.decode().map_err(|e| err(e.to_string()))?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = if channels == 1 { img.into_luma8().into_raw() } else { img.into_rgb8().into_raw() };
    Ok(ImageBuf { width, height, channels, data })
}

/// 1 for a grey image file, 3 for a colour one (alpha ignored).
pub fn image_channels(path: &Path) -> Result<usize> {
    let reader = image::ImageReader::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| DataError::io(path, e))?;
    let img = reader.decode().map_err(|e| DataError::Image { path: path.into(), msg: e.to_string() })?;
    Ok(if img.color().has_color() { 3 } else { 1 })
}

/// Reads only the size of an image file, without decoding its pixels.
pub fn image_size(path: &Path) -> Result<(usize, usize)> {
    let reader = image::ImageReader::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| DataError::io(path, e))?;
    let (w, h) = reader.into_dimensions().map_err(|e| DataError::Image { path: path.into(), msg: e.to_string() })?;
    Ok((w as usize, h as usize))
}

/// Writes an 8-bit gray or RGB image as PNG.
pub fn write_png(path: &Path, img: &ImageBuf) -> Result<()> {
    let color = if img.channels == 1 { png::ColorType::Grayscale } else { png::ColorType::Rgb };
    write_png_raw(path, img.width, img.height, color, None, &img.data)
}

/// Writes a class-index mask as an 8-bit palette PNG: the pixel value is the class index and the
/// palette (`colors`, padded with the VOC map) only colours it, as VOC's own masks do.
pub fn write_palette_png(path: &Path, width: usize, height: usize, labels: &[u8], colors: &[[u8; 3]]) -> Result<()> {
    let mut palette = Vec::with_capacity(256 * 3);
    for i in 0..256usize {
        let c = colors.get(i).copied().unwrap_or_else(|| crate::classes::voc_color(i as u8));
        palette.extend_from_slice(&c);
    }
    write_png_raw(path, width, height, png::ColorType::Indexed, Some(palette), labels)
}

fn write_png_raw(
    path: &Path,
    width: usize,
    height: usize,
    color: png::ColorType,
    palette: Option<Vec<u8>>,
    data: &[u8],
) -> Result<()> {
    let err = |msg: String| DataError::Image { path: path.into(), msg };
    let tmp = path.with_extension("png.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), width as u32, height as u32);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    if let Some(p) = palette {
        enc.set_palette(p);
    }
    let mut writer = enc.write_header().map_err(|e| err(e.to_string()))?;
    writer.write_image_data(data).map_err(|e| err(e.to_string()))?;
    writer.finish().map_err(|e| err(e.to_string()))?;
    // Written whole, then renamed: a reader never sees half a file.
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}
