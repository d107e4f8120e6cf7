//! Mask decoding: class-index grayscale, palette PNG, binary {0, 255} and RGB colour-coded masks.
//!
//! PNG masks are decoded with the `png` crate without any expansion, because the `image` crate
//! turns palette PNGs into RGB and the class indices are lost. Other formats go through `image`
//! as grayscale. Decoding never panics: any byte string gives a mask or an error.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use crate::classes::ClassSet;
use crate::error::{DataError, Result};

/// A mask as stored, before it is turned into class indices.
#[derive(Debug, Clone, PartialEq)]
pub enum RawMask {
    /// One value per pixel: a grayscale image (8 or 16 bit).
    Gray { width: usize, height: usize, data: Vec<u16> },
    /// Palette indices, which are the class indices.
    Indexed { width: usize, height: usize, data: Vec<u8> },
    /// Colour-coded classes.
    Rgb { width: usize, height: usize, data: Vec<[u8; 3]> },
}

impl RawMask {
    pub fn size(&self) -> (usize, usize) {
        match self {
            RawMask::Gray { width, height, .. }
            | RawMask::Indexed { width, height, .. }
            | RawMask::Rgb { width, height, .. } => (*width, *height),
        }
    }
}

/// How the stored values of a mask become class indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskEncoding {
    /// Decide from the data: palette PNG -> palette, gray {0,255} -> binary, gray -> index,
    /// RGB -> colour table.
    Auto,
    /// Gray values are class indices.
    Index,
    /// Palette indices are class indices (VOC).
    Palette,
    /// Gray {0, 255}: 255 -> 1 (and 0 -> 0); anything else is an error.
    Binary,
    /// RGB colours through the classes' colour table.
    Rgb,
}

impl std::fmt::Display for MaskEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MaskEncoding::Auto => "auto",
            MaskEncoding::Index => "class-index grayscale",
            MaskEncoding::Palette => "palette PNG (index = class)",
            MaskEncoding::Binary => "binary {0,255} -> {0,1}",
            MaskEncoding::Rgb => "RGB colour-coded",
        })
    }
}

/// Decodes PNG bytes without expanding palettes. Errors are plain messages; the caller adds the
/// path.
pub fn decode_png(bytes: &[u8]) -> std::result::Result<RawMask, String> {
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: 1 << 28 });
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let size = reader.output_buffer_size().ok_or("image too large")?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let (width, height) = (info.width as usize, info.height as usize);
    let bits = info.bit_depth as usize;
    let line = info.line_size;
    // Unpacks one sample per pixel of `bits` bits from a row (bits <= 8).
    let unpack = |row: &[u8], x: usize| -> u8 {
        let per_byte = 8 / bits;
        let byte = row[x / per_byte];
        let shift = 8 - bits * (x % per_byte + 1);
        (byte >> shift) & ((1u16 << bits) - 1) as u8
    };
    let rows = || buf.chunks(line).take(height);
    match info.color_type {
        png::ColorType::Indexed => {
            let data = rows().flat_map(|r| (0..width).map(move |x| unpack(r, x))).collect();
            Ok(RawMask::Indexed { width, height, data })
        }
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => {
            let step = if info.color_type == png::ColorType::GrayscaleAlpha { 2 } else { 1 };
            let data = if bits == 16 {
                rows()
                    .flat_map(|r| (0..width).map(move |x| u16::from_be_bytes([r[2 * step * x], r[2 * step * x + 1]])))
                    .collect()
            } else if bits == 8 {
                rows().flat_map(|r| (0..width).map(move |x| r[step * x] as u16)).collect()
            } else {
                rows().flat_map(|r| (0..width).map(move |x| unpack(r, x) as u16)).collect()
            };
            Ok(RawMask::Gray { width, height, data })
        }
        png::ColorType::Rgb | png::ColorType::Rgba => {
            let n = if info.color_type == png::ColorType::Rgba { 4 } else { 3 };
            if bits != 8 {
                return Err(format!("{bits}-bit colour masks are not supported"));
            }
            let data = rows().flat_map(|r| r.chunks(n).take(width).map(|p| [p[0], p[1], p[2]])).collect();
            Ok(RawMask::Rgb { width, height, data })
        }
    }
}

/// Reads a mask file: PNG through [`decode_png`], anything else through `image` as grayscale.
pub fn read_raw_mask(path: &Path) -> Result<RawMask> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.starts_with(b"\x89PNG") {
        return decode_png(&bytes).map_err(|m| DataError::mask(path, m));
    }
    let img = image::load_from_memory(&bytes).map_err(|e| DataError::mask(path, e.to_string()))?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    if img.color().has_color() {
        let data = img.into_rgb8().pixels().map(|p| p.0).collect();
        return Ok(RawMask::Rgb { width, height, data });
    }
    let data = img.into_luma8().into_raw().into_iter().map(u16::from).collect();
    Ok(RawMask::Gray { width, height, data })
}

/// The encoding `Auto` resolves to for this mask.
pub fn detect_encoding(raw: &RawMask) -> MaskEncoding {
    match raw {
        RawMask::Indexed { .. } => MaskEncoding::Palette,
        RawMask::Rgb { .. } => MaskEncoding::Rgb,
        RawMask::Gray { data, .. } => {
            // {0, 255} only, with some 255: a binary mask (0/1 masks read as index already).
            let binary = data.iter().all(|&v| v == 0 || v == 255) && data.contains(&255);
            if binary { MaskEncoding::Binary } else { MaskEncoding::Index }
        }
    }
}

/// Turns a raw mask into class indices. Values outside the classes (other than the ignore
/// index) are errors, reported with the offending values.
pub fn to_labels(raw: &RawMask, encoding: MaskEncoding, classes: &ClassSet) -> std::result::Result<Vec<u8>, String> {
    let encoding = if encoding == MaskEncoding::Auto { detect_encoding(raw) } else { encoding };
    let n = classes.len();
    let ignore = classes.ignore_index;
    let valid = |v: u16| (v as usize) < n || v == ignore as u16;
    let bad_values = |vals: &mut dyn Iterator<Item = u16>| -> String {
        let mut bad: Vec<u16> = vals.filter(|&v| !valid(v)).collect();
        bad.sort_unstable();
        bad.dedup();
        let shown: Vec<String> = bad.iter().take(8).map(|v| v.to_string()).collect();
        format!(
            "label values {} are outside the {n} classes (ignore index {ignore}){}",
            shown.join(", "),
            if bad.len() > 8 { ", ..." } else { "" }
        )
    };
    match (raw, encoding) {
        (RawMask::Indexed { data, .. }, MaskEncoding::Palette | MaskEncoding::Index) => {
            if data.iter().all(|&v| valid(v as u16)) {
                Ok(data.clone())
            } else {
                Err(bad_values(&mut data.iter().map(|&v| v as u16)))
            }
        }
        (RawMask::Gray { data, .. }, MaskEncoding::Index | MaskEncoding::Palette) => {
            if data.iter().all(|&v| valid(v)) {
                Ok(data.iter().map(|&v| v as u8).collect())
            } else {
                Err(bad_values(&mut data.iter().copied()))
            }
        }
        (RawMask::Gray { data, .. }, MaskEncoding::Binary) => data
            .iter()
            .map(|&v| match v {
                0 => Ok(0),
                255 => Ok(1),
                v => Err(format!("binary mask has value {v}; only 0 and 255 are allowed")),
            })
            .collect(),
        (RawMask::Rgb { data, .. }, MaskEncoding::Rgb) => {
            let mut table: HashMap<[u8; 3], u8> =
                classes.colors.iter().enumerate().map(|(i, c)| (*c, i as u8)).collect();
            table.entry([255, 255, 255]).or_insert(ignore);
            let mut unknown = Vec::new();
            let labels = data
                .iter()
                .map(|c| {
                    table.get(c).copied().unwrap_or_else(|| {
                        if unknown.len() < 8 && !unknown.contains(c) {
                            unknown.push(*c);
                        }
                        ignore
                    })
                })
                .collect();
            if unknown.is_empty() {
                Ok(labels)
            } else {
                Err(format!("colours {unknown:?} are not in the class colour table"))
            }
        }
        (RawMask::Indexed { .. }, e) | (RawMask::Gray { .. }, e) => {
            Err(format!("a single-channel mask cannot be read as {e}"))
        }
        (RawMask::Rgb { .. }, e) => {
            Err(format!("a colour mask cannot be read as {e}; use mask_encoding = \"rgb\" with class colours"))
        }
    }
}

/// Reads a mask file into class indices, with its size.
pub fn read_labels(path: &Path, encoding: MaskEncoding, classes: &ClassSet) -> Result<(usize, usize, Vec<u8>)> {
    let raw = read_raw_mask(path)?;
    let (w, h) = raw.size();
    let labels = to_labels(&raw, encoding, classes).map_err(|m| DataError::mask(path, m))?;
    Ok((w, h, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_io::write_palette_png;

    #[test]
    fn palette_png_keeps_indices() {
        let dir = std::env::temp_dir().join(format!("segkit-mask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.png");
        let labels = vec![0u8, 1, 2, 255, 20, 0];
        write_palette_png(&path, 3, 2, &labels, &[]).unwrap();
        let raw = read_raw_mask(&path).unwrap();
        assert_eq!(detect_encoding(&raw), MaskEncoding::Palette);
        let classes = ClassSet::numbered(21, 255);
        assert_eq!(to_labels(&raw, MaskEncoding::Auto, &classes).unwrap(), labels);
        let few = ClassSet::numbered(3, 255);
        let err = to_labels(&raw, MaskEncoding::Auto, &few).unwrap_err();
        assert!(err.contains("20"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn binary_and_rgb() {
        let classes = ClassSet::numbered(2, 255);
        let raw = RawMask::Gray { width: 2, height: 1, data: vec![0, 255] };
        assert_eq!(detect_encoding(&raw), MaskEncoding::Binary);
        assert_eq!(to_labels(&raw, MaskEncoding::Auto, &classes).unwrap(), vec![0, 1]);
        let raw = RawMask::Gray { width: 2, height: 1, data: vec![0, 128] };
        assert!(to_labels(&raw, MaskEncoding::Binary, &classes).is_err());
        let rgb = RawMask::Rgb { width: 2, height: 1, data: vec![[0, 0, 0], [128, 0, 0]] };
        assert_eq!(to_labels(&rgb, MaskEncoding::Auto, &classes).unwrap(), vec![0, 1]);
        let rgb = RawMask::Rgb { width: 1, height: 1, data: vec![[1, 2, 3]] };
        assert!(to_labels(&rgb, MaskEncoding::Auto, &classes).is_err());
    }
}
