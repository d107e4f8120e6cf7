//! Built-in synthetic data: textured backgrounds with discs, squares and triangles.
//!
//! Deterministic: sample `i` of seed `s` is the same on every machine and in every order, so the
//! quick start and the tests need no files and reproduce exactly. Class colours overlap in
//! brightness and every shape is textured, so a model must use shape and colour together.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::classes::ClassSet;
use crate::image_io::ImageBuf;

pub const SYNTH_CLASSES: [&str; 4] = ["background", "disc", "square", "triangle"];

pub fn synth_classes() -> ClassSet {
    ClassSet::new(SYNTH_CLASSES.iter().map(|s| s.to_string()).collect(), 255)
}

/// A seed for item `index` of stream `seed`, well mixed (SplitMix64), so neighbouring indices
/// give unrelated streams.
pub fn mix_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sample `index` of the synthetic set: an image (`channels` 1 or 3) and its class-index mask.
pub fn synth_sample(seed: u64, index: u64, size: usize, channels: usize) -> (ImageBuf, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(mix_seed(seed, index));
    let s = size as f32;
    let mut img = ImageBuf::new(size, size, 3);
    let mut mask = vec![0u8; size * size];

    // Background: a gray-brown base with stripes of random frequency and direction.
    let base: [f32; 3] = [rng.random_range(70.0..150.0), rng.random_range(70.0..150.0), rng.random_range(70.0..150.0)];
    let (fx, fy) = (rng.random_range(0.05..0.4f32), rng.random_range(0.05..0.4f32));
    let amp = rng.random_range(10.0..35.0f32);
    for y in 0..size {
        for x in 0..size {
            let t = amp * ((x as f32 * fx + y as f32 * fy).sin());
            let n: f32 = rng.random_range(-12.0..12.0);
            let p = img.px_mut(x, y);
            for c in 0..3 {
                p[c] = (base[c] + t + n).clamp(0.0, 255.0) as u8;
            }
        }
    }

    let n_shapes = rng.random_range(2..=5usize);
    for _ in 0..n_shapes {
        let class = rng.random_range(1..=3u8);
        let r = rng.random_range(0.08..0.2f32) * s;
        let (cx, cy) = (rng.random_range(0.1..0.9f32) * s, rng.random_range(0.1..0.9f32) * s);
        // Each class leans to one hue, with jitter, so colour helps but does not decide alone.
        let hue: [f32; 3] = match class {
            1 => [200.0, 70.0, 60.0],
            2 => [60.0, 190.0, 80.0],
            _ => [70.0, 90.0, 210.0],
        };
        let jitter = rng.random_range(-40.0..40.0f32);
        let angle = rng.random_range(0.0..std::f32::consts::TAU);
        let (sa, ca) = angle.sin_cos();
        let inside = |x: f32, y: f32| -> bool {
            let (dx, dy) = (x - cx, y - cy);
            match class {
                1 => dx * dx + dy * dy <= r * r,
                2 => {
                    let (u, v) = (dx * ca + dy * sa, -dx * sa + dy * ca);
                    u.abs() <= r && v.abs() <= r
                }
                _ => {
                    // An equilateral triangle of circumradius 1.3 r, rotated.
                    let (u, v) = (dx * ca + dy * sa, -dx * sa + dy * ca);
                    let rr = 1.3 * r;
                    (0..3).all(|k| {
                        let a = k as f32 * std::f32::consts::TAU / 3.0;
                        u * a.cos() + v * a.sin() <= rr / 2.0
                    })
                }
            }
        };
        let lo_y = (cy - 1.6 * r).floor().max(0.0) as usize;
        let hi_y = ((cy + 1.6 * r).ceil() as usize).min(size);
        let lo_x = (cx - 1.6 * r).floor().max(0.0) as usize;
        let hi_x = ((cx + 1.6 * r).ceil() as usize).min(size);
        for y in lo_y..hi_y {
            for x in lo_x..hi_x {
                if inside(x as f32 + 0.5, y as f32 + 0.5) {
                    mask[y * size + x] = class;
                    let n: f32 = rng.random_range(-20.0..20.0);
                    let p = img.px_mut(x, y);
                    for c in 0..3 {
                        p[c] = (hue[c] + jitter + n).clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
    }
    (img.with_channels(channels), mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let (a, ma) = synth_sample(7, 3, 48, 3);
        let (b, mb) = synth_sample(7, 3, 48, 3);
        assert_eq!((a.clone(), ma.clone()), (b, mb));
        let (c, _) = synth_sample(7, 4, 48, 3);
        assert_ne!(a, c);
        // Every sample holds background and at least one shape.
        for i in 0..20 {
            let (_, m) = synth_sample(1, i, 48, 1);
            assert!(m.contains(&0) && m.iter().any(|&v| v > 0), "sample {i}");
            assert!(m.iter().all(|&v| v < 4));
        }
    }
}
