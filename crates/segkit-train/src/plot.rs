//! A small raster renderer for the PNGs of a run: line charts (loss, mean IoU), grouped bars and
//! image grids, with a built-in 5x7 bitmap font so that titles, ticks and legends need no font
//! files and no plotting dependency.

use std::path::Path;

use segkit_data::ImageBuf;

use crate::{TrainError, write_atomic};

pub type Rgb = [u8; 3];

/// Distinct series colours (Tableau 10).
pub const SERIES: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// 5x7 glyphs, one byte per row, the low 5 bits left to right.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 17, 10, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        '/' => [1, 1, 2, 4, 8, 16, 16],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        '|' => [4, 4, 4, 4, 4, 4, 4],
        '<' => [2, 4, 8, 16, 8, 4, 2],
        '>' => [8, 4, 2, 1, 2, 4, 8],
        '#' => [10, 10, 31, 10, 31, 10, 10],
        '\'' => [4, 4, 8, 0, 0, 0, 0],
        ' ' => [0; 7],
        _ => [31, 17, 17, 17, 17, 17, 31],
    }
}

/// An RGB image to draw on.
#[derive(Debug, Clone)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        let mut rgb = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            rgb.extend_from_slice(&background);
        }
        Self { width, height, rgb }
    }

    pub fn set(&mut self, x: isize, y: isize, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn rect(&mut self, x: isize, y: isize, w: usize, h: usize, c: Rgb) {
        for yy in 0..h as isize {
            for xx in 0..w as isize {
                self.set(x + xx, y + yy, c);
            }
        }
    }

    /// A line of `thickness` pixels (Bresenham, stamped).
    pub fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb, thickness: usize) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        let r = thickness as isize / 2;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = ((x0 + (x1 - x0) * t).round() as isize, (y0 + (y1 - y0) * t).round() as isize);
            for dy in -r..=r {
                for dx in -r..=r {
                    self.set(x + dx, y + dy, c);
                }
            }
        }
    }

    /// Text with its top-left at (`x`, `y`); `scale` 1 is 6 pixels per character.
    pub fn text(&mut self, x: isize, y: isize, s: &str, c: Rgb, scale: usize) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let ox = x + (i * 6 * scale) as isize;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (1 << (4 - col)) != 0 {
                        self.rect(ox + (col * scale) as isize, y + (row * scale) as isize, scale, scale, c);
                    }
                }
            }
        }
    }

    pub fn text_width(s: &str, scale: usize) -> usize {
        s.chars().count() * 6 * scale
    }

    /// Copies `img` (1 or 3 channels) with its top-left at (`x`, `y`).
    pub fn blit(&mut self, x: isize, y: isize, img: &ImageBuf) {
        for yy in 0..img.height {
            for xx in 0..img.width {
                let p = img.px(xx, yy);
                let c = if img.channels >= 3 { [p[0], p[1], p[2]] } else { [p[0]; 3] };
                self.set(x + xx as isize, y + yy as isize, c);
            }
        }
    }

    pub fn png_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().expect("in-memory PNG header");
            w.write_image_data(&self.rgb).expect("in-memory PNG data");
        }
        out
    }

    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        write_atomic(path, &self.png_bytes())
    }
}

const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];
const WHITE: Rgb = [255, 255, 255];

/// A confusion matrix as a heat map: rows the true class, columns the predicted one, void
/// pixels not counted (`metrics::ConfusionMatrix`). Each cell is shaded by its share of its row
/// (the recall of the row's class on the diagonal) and shows, with `normalized`, that share, else
/// the pixel count (k/M for thousands and millions). Class names label the rows in full and the
/// columns as far as a cell's width allows, with each column's index under it.
pub fn confusion_matrix(title: &str, classes: &[String], counts: &[u64], normalized: bool) -> Canvas {
    let n = classes.len();
    let longest = classes.iter().map(|c| c.chars().count()).max().unwrap_or(1);
    let cell = (longest * 6 + 6).clamp(40, 84);
    let label_w = Canvas::text_width(&format!("{} {}", n, "x".repeat(longest)), 1) + 12;
    let (left, top) = (label_w + 16, 56);
    let (w, h) = ((left + n * cell + 24).max(Canvas::text_width(title, 2) + 32), top + n * cell + 40);
    let mut c = Canvas::new(w, h, WHITE);
    c.text(16, 10, title, BLACK, 2);
    c.text(left as isize, top as isize - 30, "predicted", BLACK, 1);
    c.text(16, top as isize - 30, "true class", BLACK, 1);
    let fmt_count = |v: u64| {
        if v >= 10_000_000 {
            format!("{}M", v / 1_000_000)
        } else if v >= 10_000 {
            format!("{}k", v / 1000)
        } else {
            v.to_string()
        }
    };
    for (i, name) in classes.iter().enumerate() {
        let y = top + i * cell;
        c.text(16, (y + cell / 2 - 3) as isize, &format!("{i} {name}"), BLACK, 1);
        let x = left + i * cell;
        let fits: String = name.chars().take((cell - 10) / 6).collect();
        c.text((x + 2) as isize, top as isize - 16, &fits, BLACK, 1);
        c.text((x + cell / 2 - 3) as isize, (top + n * cell + 8) as isize, &i.to_string(), BLACK, 1);
        let row = &counts[i * n..(i + 1) * n];
        let total: u64 = row.iter().sum();
        for (j, &v) in row.iter().enumerate() {
            let share = if total > 0 { v as f64 / total as f64 } else { 0.0 };
            // White to a dark blue, by the share of the row.
            let shade = |full: u8| (255.0 - (255.0 - full as f64) * share).round() as u8;
            let color = [shade(8), shade(48), shade(107)];
            let (x, y) = (left + j * cell, top + i * cell);
            c.rect(x as isize, y as isize, cell - 1, cell - 1, color);
            let label = if total == 0 {
                "-".to_string()
            } else if normalized {
                format!("{share:.2}")
            } else {
                fmt_count(v)
            };
            let ink = if share > 0.5 { WHITE } else { BLACK };
            let tw = Canvas::text_width(&label, 1);
            c.text((x + cell.saturating_sub(tw) / 2) as isize, (y + cell / 2 - 3) as isize, &label, ink, 1);
        }
    }
    c
}

/// A series of a line chart.
pub struct Series {
    pub name: String,
    pub color: Rgb,
    pub points: Vec<(f64, f64)>,
}

fn fmt_tick(v: f64, span: f64) -> String {
    if span >= 100.0 || v.abs() >= 1000.0 {
        format!("{:.0}", v)
    } else if span >= 1.0 {
        format!("{:.1}", v)
    } else if span >= 0.1 {
        format!("{:.2}", v)
    } else {
        format!("{:.3}", v)
    }
}

/// A line chart with a title, axis labels, ticks, a grid and a legend.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], y_range: Option<(f64, f64)>) -> Canvas {
    let (w, h) = (800usize, 480usize);
    let mut c = Canvas::new(w, h, WHITE);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 50.0);
    let pts: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    let (mut x0, mut x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if pts.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if let Some((a, b)) = y_range {
        (y0, y1) = (a, b);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pw = w as f64 - left - right;
    let ph = h as f64 - top - bottom;
    let px = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * ph;
    c.text(((w - Canvas::text_width(title, 2)) / 2) as isize, 10, title, BLACK, 2);
    for i in 0..=5 {
        let t = i as f64 / 5.0;
        let (gx, gy) = (left + t * pw, top + t * ph);
        c.line((gx, top), (gx, top + ph), GRID, 1);
        c.line((left, gy), (left + pw, gy), GRID, 1);
        let xv = fmt_tick(x0 + t * (x1 - x0), x1 - x0);
        c.text(gx as isize - (Canvas::text_width(&xv, 1) / 2) as isize, (top + ph + 6.0) as isize, &xv, BLACK, 1);
        let yv = fmt_tick(y1 - t * (y1 - y0), y1 - y0);
        c.text(left as isize - 6 - Canvas::text_width(&yv, 1) as isize, gy as isize - 3, &yv, BLACK, 1);
    }
    c.line((left, top), (left, top + ph), BLACK, 1);
    c.line((left, top + ph), (left + pw, top + ph), BLACK, 1);
    c.text(((w - Canvas::text_width(x_label, 1)) / 2) as isize, (h - 18) as isize, x_label, BLACK, 1);
    c.text(4, (top - 14.0) as isize, y_label, BLACK, 1);
    for s in series {
        let p: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        for pair in p.windows(2) {
            c.line(
                (px(pair[0].0), py(pair[0].1.clamp(y0, y1))),
                (px(pair[1].0), py(pair[1].1.clamp(y0, y1))),
                s.color,
                2,
            );
        }
        if p.len() == 1 {
            c.rect(px(p[0].0) as isize - 2, py(p[0].1) as isize - 2, 5, 5, s.color);
        }
    }
    // Legend, top right, on a white box.
    let lw = series.iter().map(|s| Canvas::text_width(&s.name, 1)).max().unwrap_or(0) + 30;
    let lx = (left + pw) as isize - lw as isize - 8;
    c.rect(lx - 4, top as isize + 4, lw + 8, series.len() * 14 + 6, WHITE);
    for (i, s) in series.iter().enumerate() {
        let y = top as isize + 8 + 14 * i as isize;
        c.rect(lx, y + 2, 20, 4, s.color);
        c.text(lx + 26, y, &s.name, BLACK, 1);
    }
    c
}

/// Grouped bars: one group per category, one bar per series; values in [0, 1].
pub fn bar_chart(title: &str, categories: &[String], series: &[(String, Vec<Option<f64>>)]) -> Canvas {
    let group_w = (series.len() * 14 + 16).max(40);
    let (left, top, bottom) = (60usize, 40usize, 110usize);
    let w = (left + categories.len() * group_w + 20).max(500);
    let legend_h = series.len() * 14 + 10;
    let h = 360 + legend_h;
    let mut c = Canvas::new(w, h, WHITE);
    let ph = (h - top - bottom - legend_h) as f64;
    c.text(((w - Canvas::text_width(title, 2)) / 2) as isize, 10, title, BLACK, 2);
    for i in 0..=5 {
        let t = i as f64 / 5.0;
        let y = top as f64 + (1.0 - t) * ph;
        c.line((left as f64, y), ((w - 20) as f64, y), GRID, 1);
        let label = format!("{t:.1}");
        c.text(left as isize - 6 - Canvas::text_width(&label, 1) as isize, y as isize - 3, &label, BLACK, 1);
    }
    for (g, cat) in categories.iter().enumerate() {
        let gx = left + g * group_w + 8;
        for (k, (_, values)) in series.iter().enumerate() {
            if let Some(Some(v)) = values.get(g) {
                let bh = (v.clamp(0.0, 1.0) * ph) as usize;
                c.rect(
                    (gx + k * 14) as isize,
                    (top as f64 + ph) as isize - bh as isize,
                    12,
                    bh,
                    SERIES[k % SERIES.len()],
                );
            }
        }
        // Category names, written vertically downwards one character per line would be
        // illegible; a short horizontal label under each group reads better.
        let name: String = cat.chars().take(group_w / 6).collect();
        c.text(gx as isize, (top as f64 + ph + 6.0) as isize, &name, BLACK, 1);
    }
    c.line((left as f64, top as f64 + ph), ((w - 20) as f64, top as f64 + ph), BLACK, 1);
    let ly = (top as f64 + ph + 30.0) as isize;
    for (k, (name, _)) in series.iter().enumerate() {
        let y = ly + 14 * k as isize;
        c.rect(left as isize, y + 1, 20, 6, SERIES[k % SERIES.len()]);
        c.text(left as isize + 26, y, name, BLACK, 1);
    }
    c
}

/// A grid of images with column titles; every cell is scaled (nearest) to `cell` pixels high.
pub fn image_grid(columns: &[String], rows: &[Vec<ImageBuf>], cell: usize) -> Canvas {
    let ncol = columns.len();
    let cell_w = |img: &ImageBuf| (img.width * cell).div_ceil(img.height.max(1));
    let col_w: Vec<usize> = (0..ncol)
        .map(|k| {
            rows.iter()
                .filter_map(|r| r.get(k))
                .map(cell_w)
                .max()
                .unwrap_or(cell)
                .max(Canvas::text_width(&columns[k], 1))
        })
        .collect();
    let pad = 6;
    let w = col_w.iter().sum::<usize>() + pad * (ncol + 1);
    let h = 20 + rows.len() * (cell + pad) + pad;
    let mut c = Canvas::new(w, h, WHITE);
    let mut x = pad;
    for (k, title) in columns.iter().enumerate() {
        c.text(x as isize, 6, title, BLACK, 1);
        for (r, row) in rows.iter().enumerate() {
            if let Some(img) = row.get(k) {
                let scaled = scale_nearest(img, cell_w(img), cell);
                c.blit(x as isize, (20 + r * (cell + pad)) as isize, &scaled);
            }
        }
        x += col_w[k] + pad;
    }
    c
}

pub fn scale_nearest(img: &ImageBuf, w: usize, h: usize) -> ImageBuf {
    let mut out = ImageBuf::new(w, h, img.channels);
    for y in 0..h {
        let sy = (y * img.height / h.max(1)).min(img.height - 1);
        for x in 0..w {
            let sx = (x * img.width / w.max(1)).min(img.width - 1);
            out.px_mut(x, y).copy_from_slice(img.px(sx, sy));
        }
    }
    out
}

/// Class-index labels in palette colours; the ignore label is drawn black.
pub fn colorize(labels: &[u8], width: usize, height: usize, colors: &[Rgb]) -> ImageBuf {
    let mut out = ImageBuf::new(width, height, 3);
    for (i, &l) in labels.iter().enumerate() {
        let c = colors.get(l as usize).copied().unwrap_or([0, 0, 0]);
        out.data[i * 3..i * 3 + 3].copy_from_slice(&c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_render_without_data_and_with_it() {
        let empty = line_chart("Loss", "step", "loss", &[], None);
        assert_eq!((empty.width, empty.height), (800, 480));
        let s =
            Series { name: "train".into(), color: SERIES[0], points: vec![(0.0, 2.0), (10.0, 1.0), (20.0, f64::NAN)] };
        let c = line_chart("Loss", "step", "loss", &[s], None);
        assert!(c.rgb.chunks(3).any(|p| p == SERIES[0]));
        let png = c.png_bytes();
        assert_eq!(&png[1..4], b"PNG");
        let bars = bar_chart("IoU", &["a".into(), "b".into()], &[("run".into(), vec![Some(0.5), None])]);
        assert!(bars.rgb.chunks(3).any(|p| p == SERIES[0]));
    }
}
