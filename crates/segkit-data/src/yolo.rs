//! YOLO segmentation labels (Ultralytics / Roboflow exports): one object per line,
//! `class x1 y1 x2 y2 ...` with coordinates normalised to [0, 1]. A line with exactly four
//! coordinates is a detection box (`class cx cy w h`) and is filled as a rectangle.

use std::path::Path;

use crate::error::{DataError, Result};

/// One labelled object: its class and its outline in normalised coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    pub class: u8,
    pub points: Vec<(f32, f32)>,
}

/// Parses a label file's text. `n_classes` bounds the class ids. Errors carry the 1-based line.
pub fn parse_labels(text: &str, n_classes: usize) -> std::result::Result<Vec<Polygon>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut tokens = line.split_whitespace();
        let class_tok = tokens.next().unwrap_or_default();
        let class: usize =
            class_tok.parse().map_err(|_| (line_no, format!("class id `{class_tok}` is not a whole number")))?;
        if class >= n_classes || class > 255 {
            return Err((line_no, format!("class id {class} is outside the {n_classes} classes")));
        }
        let coords: Vec<f32> = tokens
            .map(|t| {
                t.parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| (line_no, format!("coordinate `{t}` is not a number")))
            })
            .collect::<std::result::Result<_, _>>()?;
        if let Some(v) = coords.iter().find(|v| !(-0.01..=1.01).contains(*v)) {
            return Err((line_no, format!("coordinate {v} is outside [0, 1] (coordinates must be normalised)")));
        }
        let points = match coords.len() {
            4 => {
                let (cx, cy, w, h) = (coords[0], coords[1], coords[2] / 2.0, coords[3] / 2.0);
                vec![(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)]
            }
            n if n >= 6 && n % 2 == 0 => coords.chunks(2).map(|p| (p[0], p[1])).collect(),
            n if n % 2 == 1 => {
                return Err((line_no, format!("odd number of coordinates ({n}): x and y must come in pairs")));
            }
            n => return Err((line_no, format!("{} points are too few for a polygon (need 3)", n / 2))),
        };
        out.push(Polygon { class: class as u8, points });
    }
    Ok(out)
}

/// Reads and parses a label file.
pub fn read_labels(path: &Path, n_classes: usize) -> Result<Vec<Polygon>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse_labels(&text, n_classes).map_err(|(line, msg)| DataError::Label { path: path.into(), line, msg })
}

/// Fills the polygons into a `width x height` class-index mask, later polygons over earlier ones,
/// by the even-odd rule at pixel centres. Pixels no polygon covers get `background`.
pub fn rasterize(polys: &[Polygon], width: usize, height: usize, background: u8) -> Vec<u8> {
    let mut mask = vec![background; width * height];
    let mut xs: Vec<f32> = Vec::new();
    for poly in polys {
        let pts: Vec<(f32, f32)> = poly.points.iter().map(|&(x, y)| (x * width as f32, y * height as f32)).collect();
        for y in 0..height {
            let cy = y as f32 + 0.5;
            xs.clear();
            for i in 0..pts.len() {
                let (x0, y0) = pts[i];
                let (x1, y1) = pts[(i + 1) % pts.len()];
                if (y0 <= cy && cy < y1) || (y1 <= cy && cy < y0) {
                    xs.push(x0 + (cy - y0) / (y1 - y0) * (x1 - x0));
                }
            }
            xs.sort_by(f32::total_cmp);
            for pair in xs.chunks_exact(2) {
                // Pixel x is inside when its centre x + 0.5 lies in [a, b).
                let start = (pair[0] - 0.5).ceil().max(0.0) as usize;
                let end = ((pair[1] - 0.5).ceil().max(0.0) as usize).min(width);
                for x in start..end {
                    mask[y * width + x] = poly.class;
                }
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_fill() {
        let polys = parse_labels("1 0 0 0.5 0 0.5 0.5 0 0.5\n2 0.75 0.75 0.5 0.5\n", 3).unwrap();
        assert_eq!(polys.len(), 2);
        let m = rasterize(&polys, 4, 4, 0);
        #[rustfmt::skip]
        assert_eq!(m, vec![
            1, 1, 0, 0,
            1, 1, 0, 0,
            0, 0, 2, 2,
            0, 0, 2, 2,
        ]);
    }

    #[test]
    fn later_lines_win() {
        let polys = parse_labels("1 0 0 1 0 1 1 0 1\n2 0 0 0.5 0 0.5 1 0 1\n", 3).unwrap();
        assert_eq!(rasterize(&polys, 2, 1, 0), vec![2, 1]);
    }

    #[test]
    fn errors_name_the_line() {
        let check = |text: &str, line: usize| assert_eq!(parse_labels(text, 3).unwrap_err().0, line, "{text}");
        check("1 0 0 1 0 1 1 0\n", 1);
        check("1 0 0 1 0 1 1 0 1\nx 0 0 1 0 1 1\n", 2);
        check("\n\n5 0 0 1 0 1 1\n", 3);
        check("1 0 0 1 0 nan 1\n", 1);
        check("1 0 0 2 0 1 1\n", 1);
        check("1 0 0\n", 1);
        // Six coordinates are a triangle and four a box: both fine.
        assert_eq!(parse_labels("1 0 0 1 0 1 1\n2 0.5 0.5 0.2 0.2\n", 3).unwrap().len(), 2);
    }
}
