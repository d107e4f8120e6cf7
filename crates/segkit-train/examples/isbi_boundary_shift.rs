//! What a one-pixel disagreement about where the membranes end costs on two-class membrane
//! data: each ground-truth label of a split against itself with every membrane boundary moved by
//! one pixel (membranes dilated or eroded by one pixel, 4-neighbours; or the whole label shifted
//! one pixel to the right). It scores each with `segkit eval`'s own code (`crate::isbi`): the
//! misclassification (1 - pixel accuracy) and the challenge's pixel error (1 - F-score of the
//! cell pixels). docs/RESULTS.md quotes it to put segkit's ISBI figures in scale; it is a
//! measurement of the labels, not of a model.
//!
//! `isbi_boundary_shift CONFIG DATA_ROOT [SPLIT]`, e.g.
//! `isbi_boundary_shift configs/unet-isbi2012-cpu.toml ../shared/datasets/isbi2012 val`
//! (the config's `[data]` section says how to read the dataset; SPLIT defaults to val, the same
//! slices `segkit eval` scores).
use std::path::PathBuf;
use std::process::ExitCode;

use segkit_data::Dataset;
use segkit_train::config::RunConfig;
use segkit_train::isbi::{IsbiAccumulator, cell_class};

/// How the ground truth is moved.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Move {
    /// Every cell pixel with a membrane 4-neighbour becomes membrane.
    Dilate,
    /// Every membrane pixel with a cell 4-neighbour becomes cell.
    Erode,
    /// The whole label one pixel to the right (the first column kept).
    ShiftRight,
}

const MOVES: [(Move, &str); 3] =
    [(Move::Dilate, "membranes dilated"), (Move::Erode, "membranes eroded"), (Move::ShiftRight, "shifted right")];

/// `cell` (row-major, `w x h`, true = cell) moved by `how`. Pixels outside the image are not
/// neighbours.
fn moved(cell: &[bool], w: usize, h: usize, how: Move) -> Vec<bool> {
    let at = |x: usize, y: usize| cell[y * w + x];
    let neighbours = |x: usize, y: usize| {
        let mut n = Vec::with_capacity(4);
        if x > 0 {
            n.push(at(x - 1, y));
        }
        if x + 1 < w {
            n.push(at(x + 1, y));
        }
        if y > 0 {
            n.push(at(x, y - 1));
        }
        if y + 1 < h {
            n.push(at(x, y + 1));
        }
        n
    };
    (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| match how {
            Move::Dilate => at(x, y) && neighbours(x, y).iter().all(|&c| c),
            Move::Erode => at(x, y) || neighbours(x, y).iter().any(|&c| c),
            Move::ShiftRight => at(x.saturating_sub(1), y),
        })
        .collect()
}

fn run(args: &[String]) -> Result<(), String> {
    let [config, root, rest @ ..] = args else {
        return Err("usage: isbi_boundary_shift CONFIG DATA_ROOT [SPLIT]".into());
    };
    let split = rest.first().map_or("val", String::as_str);
    let cfg = RunConfig::load(&PathBuf::from(config), &[]).map_err(|e| e.to_string())?;
    let root = PathBuf::from(root);
    let ds = Dataset::open(&cfg.data, &root).map_err(|e| e.to_string())?;
    if ds.classes.len() != 2 {
        return Err(format!(
            "{}: {} classes ({}); the ISBI figures need two-class membrane data",
            root.display(),
            ds.classes.len(),
            ds.classes.names.join(", ")
        ));
    }
    let cell = cell_class(&ds.classes.names);
    let ignore = ds.classes.ignore_index;
    let samples = ds.split(split).map_err(|e| e.to_string())?;
    let mut scores: Vec<IsbiAccumulator> = MOVES.iter().map(|_| IsbiAccumulator::new(cell, ignore)).collect();
    let (mut pixels, mut cells) = (0usize, 0usize);
    for sample in &samples {
        // Only the labels matter; the image is read as grey for its size.
        let (img, labels) = ds.load(sample, 1).map_err(|e| e.to_string())?;
        let (w, h) = (img.width, img.height);
        let is_cell: Vec<bool> = labels.iter().map(|&l| l == cell).collect();
        pixels += labels.iter().filter(|&&l| l != ignore).count();
        cells += labels.iter().filter(|&&l| l == cell).count();
        for ((how, _), acc) in MOVES.iter().zip(&mut scores) {
            let prob: Vec<f32> = moved(&is_cell, w, h, *how).into_iter().map(|c| if c { 1.0 } else { 0.0 }).collect();
            acc.add(&labels, &prob, w, h);
        }
    }
    println!(
        "{} {split} images from {}: {pixels} labelled pixels, cell fraction {:.4}",
        samples.len(),
        root.display(),
        cells as f64 / pixels.max(1) as f64
    );
    println!("{:<20} {:>18} {:>20}", "ground truth moved", "misclassification", "pixel error (1 - F)");
    for ((_, name), acc) in MOVES.iter().zip(&scores) {
        let s = acc.scores();
        println!("{name:<20} {:>18.4} {:>20.4}", s.misclassification, s.pixel_error_at_half);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `#` is membrane, `.` is cell, one row per string.
    fn check(rows: &[&str], how: Move, want: &[&str]) {
        let (w, h) = (rows[0].len(), rows.len());
        let cell: Vec<bool> = rows.iter().flat_map(|r| r.chars().map(|c| c == '.')).collect();
        let got: Vec<String> =
            moved(&cell, w, h, how).chunks(w).map(|r| r.iter().map(|&c| if c { '.' } else { '#' }).collect()).collect();
        assert_eq!(got, want, "{how:?}");
    }

    #[test]
    fn a_one_pixel_membrane_moves_by_one_pixel_each_way() {
        let rows = ["..#..", "..#..", "..#.."];
        check(&rows, Move::Dilate, &[".###.", ".###.", ".###."]);
        check(&rows, Move::Erode, &[".....", ".....", "....."]);
        check(&rows, Move::ShiftRight, &["...#.", "...#.", "...#."]);
        // The image border is not a membrane: a cell at the edge stays a cell when dilating.
        check(&["#....", "....."], Move::Dilate, &["##...", "#...."]);
    }
}
