//! Connected regions of a mask and the U-Net paper's border weights.
//!
//! The weight map of Ronneberger et al. 2015, equation 2, without its class-balancing term
//! (that comes from the run's class weights):
//!
//! `border(x) = w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`
//!
//! where `d1`, `d2` are the Euclidean distances from pixel `x` to the nearest and the second
//! nearest cell. Cells are the 4-connected regions of the cell class; the term is given to the
//! pixels between cells (every pixel not of the cell class and not ignored), which is where the
//! paper's figure 3d puts it: on the thin membranes separating touching cells. Distances are
//! exact (Felzenszwalb and Huttenlocher's squared distance transform, per cell, over the cell's
//! bounding box widened by `cutoff(sigma)`); only a pixel whose second-nearest cell is farther
//! than the cutoff gets 0 instead of a term below `w0 * 1e-6`.

/// 4-connected components of the pixels where `fg` holds, numbered from 1 in scan order; 0 is
/// background. Returns the labels and the number of regions.
pub fn label_regions(fg: &[bool], width: usize, height: usize) -> (Vec<u32>, u32) {
    assert_eq!(fg.len(), width * height, "mask size");
    let mut labels = vec![0u32; fg.len()];
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..fg.len() {
        if !fg[start] || labels[start] != 0 {
            continue;
        }
        next += 1;
        labels[start] = next;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % width, i / width);
            let mut visit = |j: usize| {
                if fg[j] && labels[j] == 0 {
                    labels[j] = next;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < width {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - width);
            }
            if y + 1 < height {
                visit(i + width);
            }
        }
    }
    (labels, next)
}

/// Stands for "no site" in the distance transform: finite, so that differences stay defined.
const FAR: f64 = 1e20;

/// One-dimensional squared distance transform (Felzenszwalb & Huttenlocher 2012): `d[q]` =
/// min over `p` of `(q - p)^2 + f[p]`. `v` and `z` are scratch of length `n` and `n + 1`.
fn sq_edt_1d(f: &[f64], d: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    let mut k = 0usize;
    v[0] = 0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    let inter =
        |q: usize, p: usize| ((f[q] + (q * q) as f64) - (f[p] + (p * p) as f64)) / (2.0 * (q as f64 - p as f64));
    for q in 1..n {
        let mut s = inter(q, v[k]);
        while s <= z[k] {
            k -= 1;
            s = inter(q, v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    k = 0;
    for (q, dq) in d.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let diff = q as f64 - v[k] as f64;
        *dq = diff * diff + f[v[k]];
    }
}

/// Exact squared Euclidean distance from every pixel of a `width x height` grid to the nearest
/// pixel where `site` holds (`FAR` where there is none).
pub fn squared_distance(site: &[bool], width: usize, height: usize) -> Vec<f64> {
    assert_eq!(site.len(), width * height, "mask size");
    let mut g: Vec<f64> = site.iter().map(|&s| if s { 0.0 } else { FAR }).collect();
    let n = width.max(height);
    let (mut f, mut d, mut v, mut z) = (vec![0.0; n], vec![0.0; n], vec![0usize; n], vec![0.0; n + 1]);
    for x in 0..width {
        for y in 0..height {
            f[y] = g[y * width + x];
        }
        sq_edt_1d(&f[..height], &mut d[..height], &mut v, &mut z);
        for y in 0..height {
            g[y * width + x] = d[y].min(FAR);
        }
    }
    for y in 0..height {
        f[..width].copy_from_slice(&g[y * width..(y + 1) * width]);
        sq_edt_1d(&f[..width], &mut d[..width], &mut v, &mut z);
        for x in 0..width {
            g[y * width + x] = d[x].min(FAR);
        }
    }
    g
}

/// How far from a cell its distances are computed: beyond it the border term is below
/// `w0 * 1e-6` (`exp(-c^2 / (2 sigma^2)) = 1e-6`).
pub fn cutoff(sigma: f32) -> usize {
    (sigma as f64 * (2.0 * (1e6f64).ln()).sqrt()).ceil() as usize + 1
}

/// The border term of the U-Net weight map (module docs) for a label tile: `cell` is the cell
/// class; pixels labelled `ignore` get 0, as do cell pixels.
pub fn border_weights(
    labels: &[u8],
    width: usize,
    height: usize,
    cell: u8,
    ignore: u8,
    w0: f32,
    sigma: f32,
) -> Vec<f32> {
    let is_cell: Vec<bool> = labels.iter().map(|&l| l == cell).collect();
    let (regions, count) = label_regions(&is_cell, width, height);
    let mut out = vec![0f32; labels.len()];
    if count < 2 {
        // Fewer than two cells: no second-nearest cell, so no border term anywhere.
        return out;
    }
    // Each region's bounding box.
    let mut boxes = vec![(usize::MAX, usize::MAX, 0usize, 0usize); count as usize];
    for (i, &r) in regions.iter().enumerate() {
        if r > 0 {
            let b = &mut boxes[r as usize - 1];
            let (x, y) = (i % width, i / width);
            *b = (b.0.min(x), b.1.min(y), b.2.max(x), b.3.max(y));
        }
    }
    let margin = cutoff(sigma);
    let (mut d1, mut d2) = (vec![f64::INFINITY; labels.len()], vec![f64::INFINITY; labels.len()]);
    for (r, &(x0, y0, x1, y1)) in boxes.iter().enumerate() {
        let (wx0, wy0) = (x0.saturating_sub(margin), y0.saturating_sub(margin));
        let (wx1, wy1) = ((x1 + margin).min(width - 1), (y1 + margin).min(height - 1));
        let (ww, wh) = (wx1 - wx0 + 1, wy1 - wy0 + 1);
        let site: Vec<bool> =
            (0..ww * wh).map(|i| regions[(wy0 + i / ww) * width + wx0 + i % ww] == r as u32 + 1).collect();
        let sq = squared_distance(&site, ww, wh);
        for (i, &s) in sq.iter().enumerate() {
            let j = (wy0 + i / ww) * width + wx0 + i % ww;
            let dist = s.sqrt();
            if dist < d1[j] {
                d2[j] = d1[j];
                d1[j] = dist;
            } else if dist < d2[j] {
                d2[j] = dist;
            }
        }
    }
    let two_s2 = 2.0 * (sigma as f64).powi(2);
    for (i, o) in out.iter_mut().enumerate() {
        if labels[i] != cell && labels[i] != ignore && d2[i].is_finite() {
            *o = (w0 as f64 * (-(d1[i] + d2[i]).powi(2) / two_s2).exp()) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distances by brute force: every pixel against every site.
    fn brute(site: &[bool], w: usize, h: usize) -> Vec<f64> {
        (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f64, (i / w) as f64);
                (0..w * h)
                    .filter(|&j| site[j])
                    .map(|j| ((j % w) as f64 - x).powi(2) + ((j / w) as f64 - y).powi(2))
                    .fold(FAR, f64::min)
            })
            .collect()
    }

    #[test]
    fn the_distance_transform_is_exact() {
        // A few fixed patterns and a seeded random one, against brute force.
        let mut state = 12345u64;
        let mut rnd = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % 17 == 0
        };
        let random: Vec<bool> = (0..23 * 19).map(|_| rnd()).collect();
        let cases: Vec<(Vec<bool>, usize, usize)> = vec![
            ((0..25).map(|i| i == 12).collect(), 5, 5),
            ((0..12).map(|i| i == 0 || i == 11).collect(), 4, 3),
            (vec![false; 6], 3, 2),
            (random, 23, 19),
        ];
        for (site, w, h) in cases {
            assert_eq!(squared_distance(&site, w, h), brute(&site, w, h), "{w}x{h}");
        }
    }

    /// `#` membrane (class 0), `.` cell (class 1), `x` ignored.
    fn picture(rows: &[&str]) -> (Vec<u8>, usize, usize) {
        let v = rows
            .iter()
            .flat_map(|r| {
                r.bytes().map(|b| match b {
                    b'.' => 1,
                    b'x' => 255,
                    _ => 0,
                })
            })
            .collect();
        (v, rows[0].len(), rows.len())
    }

    #[test]
    fn border_weights_follow_equation_two() {
        // Cells at columns 0-1, 3-5 and 9-10: a one-pixel membrane (column 2) and a three-pixel
        // one (columns 6-8).
        let (l, w, h) = picture(&["..#...###..", "..#...###..", "..#x..###.."]);
        let b = border_weights(&l, w, h, 1, 255, 10.0, 5.0);
        let at = |x: usize, y: usize| b[y * w + x];
        // On the thin membrane: d1 = d2 = 1, w0 * exp(-4 / 50).
        let thin = 10.0 * (-4.0f64 / 50.0).exp();
        assert!((at(2, 0) as f64 - thin).abs() < 1e-5, "{}", at(2, 0));
        // The middle of the wide membrane (columns 6-8, cells at 5 and 9): d1 = d2 = 2.
        let wide = 10.0 * (-16.0f64 / 50.0).exp();
        assert!((at(7, 1) as f64 - wide).abs() < 1e-5, "{}", at(7, 1));
        // Cells and ignored pixels get none.
        assert_eq!(at(0, 0), 0.0);
        assert_eq!(at(3, 2), 0.0);
        // A single cell: no second-nearest cell, no term.
        let (one, w1, h1) = picture(&["..##", "..##"]);
        assert!(border_weights(&one, w1, h1, 1, 255, 10.0, 5.0).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn the_cutoff_window_changes_nothing_that_matters() {
        // Two cells 40 pixels apart (far beyond the cutoff at sigma 2): every term on the
        // membrane between them is exact or below w0 * 1e-6.
        let w = 50;
        let row: String = (0..w).map(|x| if x < 2 || x >= 44 { '.' } else { '#' }).collect();
        let (l, w, h) = picture(&[&row, &row]);
        let b = border_weights(&l, w, h, 1, 255, 10.0, 2.0);
        for x in 2..44 {
            let (d1, d2) = ((x - 1).min(44 - x) as f64, (x - 1).max(44 - x) as f64);
            let want = 10.0 * (-(d1 + d2).powi(2) / 8.0).exp();
            assert!((b[x] as f64 - want).abs() <= 1e-5, "x {x}: {} vs {want}", b[x]);
        }
    }
}
