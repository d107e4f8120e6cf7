//! Per-object results from a class-index mask: connected regions of each foreground class as
//! instances, with confidence, area, boxes (pixel and normalised) and outline polygons — what
//! segmentation users get from detector-style tools.

use serde::Serialize;

/// One connected region of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object {
    pub class_id: u8,
    pub class_name: String,
    /// Mean of the winning class's softmax probability over the region's pixels.
    pub confidence: f32,
    pub area: usize,
    /// `[x1, y1, x2, y2]` in pixel edges (x2, y2 exclusive).
    pub xyxy: [f32; 4],
    /// `[cx, cy, w, h]`.
    pub xywh: [f32; 4],
    pub xyxyn: [f32; 4],
    pub xywhn: [f32; 4],
    /// Outer outline, pixel coordinates of the boundary pixels' centres, clockwise.
    pub segments: Vec<Vec<[f32; 2]>>,
    /// Pixel indices of the region (`y * width + x`), not serialised.
    #[serde(skip)]
    pub pixels: Vec<usize>,
}

/// Connected components (8-connectivity) of every class not in `skip`, largest first within a
/// class; regions smaller than `min_area` are dropped.
pub fn find_objects(
    mask: &[u8],
    conf: &[f32],
    width: usize,
    height: usize,
    names: &[String],
    skip: &[u8],
    min_area: usize,
) -> Vec<Object> {
    let mut seen = vec![false; mask.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        let c = mask[start];
        if seen[start] || skip.contains(&c) || (c as usize) >= names.len() {
            continue;
        }
        let mut pixels = Vec::new();
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            pixels.push(i);
            let (x, y) = ((i % width) as isize, (i / width) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= width as isize || ny >= height as isize {
                        continue;
                    }
                    let j = ny as usize * width + nx as usize;
                    if !seen[j] && mask[j] == c {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        if pixels.len() < min_area.max(1) {
            continue;
        }
        pixels.sort_unstable();
        let (mut x1, mut y1, mut x2, mut y2) = (usize::MAX, usize::MAX, 0, 0);
        let mut sum = 0f64;
        for &i in &pixels {
            let (x, y) = (i % width, i / width);
            (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1));
            sum += conf.get(i).copied().unwrap_or(1.0) as f64;
        }
        let (fw, fh) = (width as f32, height as f32);
        let xyxy = [x1 as f32, y1 as f32, x2 as f32, y2 as f32];
        let xywh = [(xyxy[0] + xyxy[2]) / 2.0, (xyxy[1] + xyxy[3]) / 2.0, xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]];
        let outline = trace_outline(mask, width, height, pixels[0], c);
        out.push(Object {
            class_id: c,
            class_name: names[c as usize].clone(),
            confidence: (sum / pixels.len() as f64) as f32,
            area: pixels.len(),
            xyxy,
            xywh,
            xyxyn: [xyxy[0] / fw, xyxy[1] / fh, xyxy[2] / fw, xyxy[3] / fh],
            xywhn: [xywh[0] / fw, xywh[1] / fh, xywh[2] / fw, xywh[3] / fh],
            segments: vec![outline],
            pixels,
        });
    }
    out.sort_by(|a, b| a.class_id.cmp(&b.class_id).then(b.area.cmp(&a.area)));
    out
}

/// Moore-neighbour tracing of the outer boundary of the region containing `start`, which must be
/// its first pixel in raster order (so its left and upper neighbours are outside).
fn trace_outline(mask: &[u8], width: usize, height: usize, start: usize, c: u8) -> Vec<[f32; 2]> {
    // Clockwise neighbour offsets starting west.
    const DIRS: [(isize, isize); 8] = [(-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1)];
    let inside = |x: isize, y: isize| {
        x >= 0 && y >= 0 && x < width as isize && y < height as isize && mask[y as usize * width + x as usize] == c
    };
    let s = ((start % width) as isize, (start / width) as isize);
    let mut points = vec![[s.0 as f32, s.1 as f32]];
    let (mut p, mut dir) = (s, 0usize); // we arrived "from the west"
    let limit = 4 * mask.len() + 8;
    for _ in 0..limit {
        let mut found = None;
        for k in 0..8 {
            let d = (dir + k) % 8;
            let (nx, ny) = (p.0 + DIRS[d].0, p.1 + DIRS[d].1);
            if inside(nx, ny) {
                found = Some(((nx, ny), d));
                break;
            }
        }
        let Some((next, d)) = found else { break }; // a single pixel
        // The chain-code rule: resume the search two steps back from an axis move, one from a
        // diagonal one, so that no boundary pixel is skipped.
        dir = if d % 2 == 0 { (d + 6) % 8 } else { (d + 7) % 8 };
        p = next;
        if p == s {
            break;
        }
        points.push([p.0 as f32, p.1 as f32]);
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_boxes_and_outlines() {
        // 6x4: a 2x2 block of class 1 at (1,1), a single pixel of class 2 at (5,0), class 1 at (4,3).
        #[rustfmt::skip]
        let mask = [
            0, 0, 0, 0, 0, 2,
            0, 1, 1, 0, 0, 0,
            0, 1, 1, 0, 0, 0,
            0, 0, 0, 0, 1, 0,
        ];
        let conf = vec![0.5f32; 24];
        let names: Vec<String> = ["bg", "a", "b"].iter().map(|s| s.to_string()).collect();
        let objs = find_objects(&mask, &conf, 6, 4, &names, &[0], 1);
        assert_eq!(objs.len(), 3);
        let block = &objs[0];
        assert_eq!((block.class_id, block.area), (1, 4));
        assert_eq!(block.xyxy, [1.0, 1.0, 3.0, 3.0]);
        assert_eq!(block.xywh, [2.0, 2.0, 2.0, 2.0]);
        assert_eq!(block.xyxyn, [1.0 / 6.0, 0.25, 0.5, 0.75]);
        assert_eq!(block.segments[0], vec![[1.0, 1.0], [2.0, 1.0], [2.0, 2.0], [1.0, 2.0]]);
        assert!((block.confidence - 0.5).abs() < 1e-6);
        assert_eq!((objs[1].class_id, objs[1].area), (1, 1));
        assert_eq!(objs[2].segments[0], vec![[5.0, 0.0]]);
        // Minimum area and skipped classes.
        assert_eq!(find_objects(&mask, &conf, 6, 4, &names, &[0], 2).len(), 1);
        assert_eq!(find_objects(&mask, &conf, 6, 4, &names, &[0, 1], 1).len(), 1);
    }
}
