//! Layer geometry: output sizes and coordinate maps, so that crop offsets are derived, not typed.
//!
//! A coordinate map says where a pixel of some feature map sits in the input image:
//! `image_x = scale * blob_x + offset`. Convolutions and poolings compose as
//! `in = stride * out - pad + (k - 1) / 2`; a transpose convolution inverts that. This is the
//! rule of Caffe's `coord_map.py`, which the FCN reference used to compute its crops; with it the
//! offsets come out as 19 (FCN-32s), 5 and 27 (FCN-16s), 5, 9 and 31 (FCN-8s).
//!
//! All scales are powers of two and all offsets multiples of 1/64 for the models here, so `f64`
//! represents them exactly and the equality tests below are exact.

use crate::ModelError;

/// Where the pixels of a feature map sit in the input image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoordMap {
    pub scale: f64,
    pub offset: f64,
}

impl CoordMap {
    /// The map of the input image itself.
    pub const IDENTITY: CoordMap = CoordMap { scale: 1.0, offset: 0.0 };

    /// The map after a convolution or pooling with kernel `k`, stride `s`, padding `p`.
    pub fn conv(self, k: usize, s: usize, p: usize) -> CoordMap {
        CoordMap {
            scale: self.scale * s as f64,
            offset: self.offset + self.scale * ((k as f64 - 1.0) / 2.0 - p as f64),
        }
    }

    /// The map after a transpose convolution with kernel `k`, stride `s`, padding `p`.
    pub fn deconv(self, k: usize, s: usize, p: usize) -> CoordMap {
        CoordMap {
            scale: self.scale / s as f64,
            offset: self.offset + self.scale * (p as f64 - (k as f64 - 1.0) / 2.0) / s as f64,
        }
    }

    /// The offset at which to crop a map with this coordinate map so that it aligns with
    /// `reference`: `cropped[x] = self[x + offset]` sits where `reference[x]` sits.
    ///
    /// Fails when the two maps have different scales or the offset is not a non-negative whole
    /// number, which would mean the architecture cannot be aligned by cropping.
    pub fn crop_offset_to(self, reference: CoordMap) -> Result<usize, ModelError> {
        if self.scale != reference.scale {
            return Err(ModelError::Geometry(format!(
                "cannot crop a map of scale {} to one of scale {}",
                self.scale, reference.scale
            )));
        }
        let offset = (reference.offset - self.offset) / self.scale;
        if offset < 0.0 || offset.fract() != 0.0 {
            return Err(ModelError::Geometry(format!("crop offset {offset} is not a non-negative whole number")));
        }
        Ok(offset as usize)
    }

    /// The map of a map cropped to `reference`: by construction, the reference's.
    pub fn cropped_to(self, reference: CoordMap) -> CoordMap {
        reference
    }
}

/// Output size of a convolution (floor rounding), or `None` when the kernel does not fit.
pub fn conv_out(size: usize, k: usize, s: usize, p: usize) -> Option<usize> {
    let padded = size + 2 * p;
    (padded >= k).then(|| (padded - k) / s + 1)
}

/// Output size of a max pooling with ceil rounding and no padding, as Caffe and
/// `ceil_mode=True` in PyTorch compute it (the last window starts inside the input).
pub fn pool_out_ceil(size: usize, k: usize, s: usize) -> Option<usize> {
    (size >= k).then(|| (size - k).div_ceil(s) + 1)
}

/// Output size of a max pooling with floor rounding and no padding.
pub fn pool_out_floor(size: usize, k: usize, s: usize) -> Option<usize> {
    (size >= k).then(|| (size - k) / s + 1)
}

/// Output size of a transpose convolution.
pub fn deconv_out(size: usize, k: usize, s: usize, p: usize) -> usize {
    (size - 1) * s + k - 2 * p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_and_deconv_maps_are_inverse() {
        let m = CoordMap::IDENTITY.conv(4, 2, 0).deconv(4, 2, 0);
        assert_eq!(m, CoordMap::IDENTITY);
    }

    #[test]
    fn pool_sizes() {
        // Ceil rounding keeps the odd last column; floor drops it.
        assert_eq!(pool_out_ceil(7, 2, 2), Some(4));
        assert_eq!(pool_out_floor(7, 2, 2), Some(3));
        assert_eq!(pool_out_ceil(1, 2, 2), None);
        assert_eq!(conv_out(32, 3, 1, 100), Some(230));
        assert_eq!(deconv_out(2, 64, 32, 0), 96);
    }

    #[test]
    fn misaligned_crop_is_an_error() {
        let a = CoordMap { scale: 2.0, offset: 1.0 };
        let b = CoordMap { scale: 2.0, offset: 2.0 };
        assert!(a.crop_offset_to(b).is_err());
        assert!(b.crop_offset_to(a).is_err());
        assert!(a.crop_offset_to(CoordMap::IDENTITY).is_err());
    }
}
