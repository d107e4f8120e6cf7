//! The ISBI 2012 challenge's metrics for two-class membrane data (cell interior vs membrane), as
//! its evaluation code defines them (Arganda-Carreras et al., "Crowdsourcing the creation of
//! image segmentation algorithms for connectomics", Front. Neuroanat. 2015; Fiji's
//! `trainableSegmentation.metrics.PixelError`, `RandError` and `ClassificationStatistics`). Both
//! binarise the cell probability at the thresholds 0.0, 0.1, ..., 0.9 and report the best:
//!
//! - **pixel error**: `1 - F`, where `F` is the F-score of pixel similarity: positives are the
//!   cell pixels, true/false positives and false negatives are counted over all the images
//!   together, precision = TP / (TP + FP) and recall = TP / (TP + FN), each 1 where its
//!   denominator's error term is 0 (as `ClassificationStatistics`). This is the figure the
//!   challenge's leaderboard and the U-Net paper (0.0611) report. It is not the fraction of
//!   wrong pixels: a net that calls every pixel a cell scores `1 - 2c / (1 + c)` (about 0.12 on
//!   ISBI, where a fraction c = 0.78 of the pixels are cells).
//! - **misclassification**: the fraction of pixels whose label differs from the ground truth at
//!   the network's decision (argmax, i.e. probability 0.5), per image, averaged over the images:
//!   `1 - pixel accuracy`. Not a challenge figure; kept because it is what "pixel error" means
//!   informally, and what segkit reported under that name before 2026-12-03.
//! - **foreground-restricted Rand error**: `1 - F`, where `F` is the F-score of the Rand index
//!   restricted to the ground truth's foreground. Per image, the regions are the 4-connected
//!   components of the cell class in the ground truth and in the proposal. Pairs of
//!   ground-truth cell pixels are counted: a true positive is a pair in one ground-truth region
//!   and one proposed region; proposal pixels on a membrane belong to no region (they join no
//!   pair, as singletons). Precision = true positives / pairs in one proposed region, recall =
//!   true positives / pairs in one ground-truth region, pair counts summed over the images.
//!
//! Both sweeps are also reported at 0.5, the network's own decision. Fiji's loop also tries a
//! last threshold of about 1.0; it keeps only pixels of probability exactly 1 and is left out.
//!
//! Which class is the cell interior: class 1 (ISBI's labels: 255 = cell, 0 = membrane), unless
//! class 1's name says it is the boundary ("membrane", "boundary", "border", "edge"), then
//! class 0. Ignored pixels (the void label) are left out of the pixel counts and count as
//! ground-truth background (no region) for the Rand error.

use std::collections::HashMap;

use segkit_data::regions::label_regions;
use serde::{Deserialize, Serialize};

/// The binarisation thresholds of the challenge's sweep, on the cell probability.
pub const THRESHOLDS: [f32; 10] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// The index of 0.5 in [`THRESHOLDS`]: the network's own decision.
const HALF: usize = 5;

/// The class whose connected regions are the cells, from the class names (module docs).
pub fn cell_class(names: &[String]) -> u8 {
    let boundary = ["membrane", "boundary", "border", "edge"];
    match names.get(1) {
        Some(n) if boundary.iter().any(|b| n.to_lowercase().contains(b)) => 0,
        _ => 1,
    }
}

/// Pair counts of the foreground-restricted Rand index (module docs), summable over images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RandPairs {
    /// Pairs of ground-truth foreground pixels in one true region and one proposed region.
    pub true_positive: f64,
    /// Pairs in one ground-truth region.
    pub truth_positive: f64,
    /// Pairs (of ground-truth foreground pixels) in one proposed region.
    pub proposal_positive: f64,
}

fn pairs(n: u64) -> f64 {
    n as f64 * (n as f64 - 1.0) / 2.0
}

impl RandPairs {
    /// The counts for one image: `truth` and `proposal` are region labels (0 = background).
    pub fn of(truth: &[u32], proposal: &[u32]) -> Self {
        let mut joint: HashMap<(u32, u32), u64> = HashMap::new();
        let mut rows: HashMap<u32, u64> = HashMap::new();
        let mut cols: HashMap<u32, u64> = HashMap::new();
        for (&t, &p) in truth.iter().zip(proposal) {
            if t == 0 {
                continue;
            }
            *rows.entry(t).or_default() += 1;
            if p != 0 {
                *joint.entry((t, p)).or_default() += 1;
                *cols.entry(p).or_default() += 1;
            }
        }
        RandPairs {
            true_positive: joint.values().map(|&n| pairs(n)).sum(),
            truth_positive: rows.values().map(|&n| pairs(n)).sum(),
            proposal_positive: cols.values().map(|&n| pairs(n)).sum(),
        }
    }

    pub fn add(&mut self, other: &RandPairs) {
        self.true_positive += other.true_positive;
        self.truth_positive += other.truth_positive;
        self.proposal_positive += other.proposal_positive;
    }

    /// The F-score of the Rand index; 0 where precision or recall is undefined or zero (as the
    /// challenge's `ClassificationStatistics`).
    pub fn f_score(&self) -> f64 {
        if self.proposal_positive <= 0.0 || self.truth_positive <= 0.0 {
            return 0.0;
        }
        let precision = self.true_positive / self.proposal_positive;
        let recall = self.true_positive / self.truth_positive;
        if precision + recall <= 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) }
    }
}

/// Pixel counts of the pixel-similarity F-score (module docs), summable over images; the
/// positives are the cell pixels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PixelCounts {
    pub true_positive: u64,
    pub false_positive: u64,
    pub false_negative: u64,
}

impl PixelCounts {
    /// The F-score as the challenge's `ClassificationStatistics` computes it: precision is 1
    /// without false positives and recall 1 without false negatives, so a proposal that finds
    /// no cell in an image without cells scores 1, not 0/0.
    pub fn f_score(&self) -> f64 {
        let (tp, fp, fn_) = (self.true_positive as f64, self.false_positive as f64, self.false_negative as f64);
        let precision = if self.false_positive == 0 { 1.0 } else { tp / (tp + fp) };
        let recall = if self.false_negative == 0 { 1.0 } else { tp / (tp + fn_) };
        if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 }
    }
}

/// The best of a sweep: (index into [`THRESHOLDS`], F-score). Ties keep the lower threshold,
/// as the challenge's loop (`>`); an all-zero sweep reports 0.5.
fn best_of(f_scores: impl Iterator<Item = f64>) -> (usize, f64) {
    f_scores.enumerate().fold((HALF, f64::NEG_INFINITY), |b, (k, f)| if f > b.1 { (k, f) } else { b })
}

/// The challenge's figures for a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsbiScores {
    /// `1 - F` of pixel similarity at the best threshold of the sweep (the challenge's figure).
    pub pixel_error: f64,
    /// The threshold on the cell probability where `pixel_error` was found.
    pub pixel_threshold: f32,
    /// `1 - F` of pixel similarity at the network's decision (probability 0.5).
    pub pixel_error_at_half: f64,
    /// Mean over the images of the fraction of wrongly labelled pixels at the network's
    /// decision: `1 - pixel accuracy` (not a challenge figure).
    pub misclassification: f64,
    /// `1 - F` at the best threshold of the sweep (the challenge's figure).
    pub rand_error: f64,
    /// The threshold on the cell probability where `rand_error` was found.
    pub rand_threshold: f32,
    /// `1 - F` at the network's decision (probability 0.5).
    pub rand_error_at_half: f64,
    /// The class taken as the cell interior.
    pub cell_class: u8,
    pub images: usize,
}

/// Accumulates the challenge's counts image by image over a split.
#[derive(Debug, Clone)]
pub struct IsbiAccumulator {
    cell: u8,
    ignore: u8,
    images: usize,
    misclassified_sum: f64,
    pixels: [PixelCounts; THRESHOLDS.len()],
    pairs: [RandPairs; THRESHOLDS.len()],
}

impl IsbiAccumulator {
    pub fn new(cell_class: u8, ignore_index: u8) -> Self {
        IsbiAccumulator {
            cell: cell_class,
            ignore: ignore_index,
            images: 0,
            misclassified_sum: 0.0,
            pixels: Default::default(),
            pairs: Default::default(),
        }
    }

    /// One image: `truth` class indices and the cell probability per pixel, both `width x height`.
    pub fn add(&mut self, truth: &[u8], cell_prob: &[f32], width: usize, height: usize) {
        assert_eq!(truth.len(), cell_prob.len(), "truth and probability sizes");
        let true_cell: Vec<bool> = truth.iter().map(|&t| t == self.cell).collect();
        let (true_regions, _) = label_regions(&true_cell, width, height);
        let (mut wrong, mut counted) = (0u64, 0u64);
        for ((&t, &is_cell), &p) in truth.iter().zip(&true_cell).zip(cell_prob) {
            if t != self.ignore {
                counted += 1;
                wrong += u64::from(is_cell != (p > 0.5));
            }
        }
        if counted > 0 {
            self.misclassified_sum += wrong as f64 / counted as f64;
        }
        for (k, &th) in THRESHOLDS.iter().enumerate() {
            let proposal: Vec<bool> = cell_prob.iter().map(|&p| p > th).collect();
            let counts = &mut self.pixels[k];
            for ((&t, &is_cell), &proposed) in truth.iter().zip(&true_cell).zip(&proposal) {
                match (t != self.ignore, is_cell, proposed) {
                    (true, true, true) => counts.true_positive += 1,
                    (true, false, true) => counts.false_positive += 1,
                    (true, true, false) => counts.false_negative += 1,
                    _ => {}
                }
            }
            let (regions, _) = label_regions(&proposal, width, height);
            self.pairs[k].add(&RandPairs::of(&true_regions, &regions));
        }
        self.images += 1;
    }

    pub fn scores(&self) -> IsbiScores {
        let (pixel_best, pixel_f) = best_of(self.pixels.iter().map(PixelCounts::f_score));
        let (best, f) = best_of(self.pairs.iter().map(RandPairs::f_score));
        // No image: every figure is undefined (the F-scores of empty counts would read 1).
        let undefined = |v: f64| if self.images > 0 { v } else { f64::NAN };
        IsbiScores {
            pixel_error: undefined(1.0 - pixel_f),
            pixel_threshold: THRESHOLDS[pixel_best],
            pixel_error_at_half: undefined(1.0 - self.pixels[HALF].f_score()),
            misclassification: undefined(self.misclassified_sum / self.images.max(1) as f64),
            rand_error: undefined(1.0 - f),
            rand_threshold: THRESHOLDS[best],
            rand_error_at_half: undefined(1.0 - self.pairs[HALF].f_score()),
            cell_class: self.cell,
            images: self.images,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a picture: `#` is membrane (class 0), `.` is cell (class 1), one row per line.
    fn picture(rows: &[&str]) -> (Vec<u8>, usize, usize) {
        let w = rows[0].len();
        let v = rows.iter().flat_map(|r| r.bytes().map(|b| u8::from(b == b'.'))).collect();
        (v, w, rows.len())
    }

    fn check_regions(rows: &[&str], want: u32) {
        let (m, w, h) = picture(rows);
        let fg: Vec<bool> = m.iter().map(|&c| c == 1).collect();
        let (labels, n) = label_regions(&fg, w, h);
        assert_eq!(n, want, "{rows:?}");
        assert!(labels.iter().zip(&fg).all(|(&l, &f)| (l > 0) == f));
    }

    #[test]
    fn regions_are_four_connected() {
        check_regions(&["..#..", "..#..", "#####", "..#.."], 4);
        // Diagonal neighbours are different regions (a one-pixel diagonal membrane separates).
        check_regions(&[".#", "#."], 2);
        check_regions(&["###", "###"], 0);
        check_regions(&["...", "..."], 1);
    }

    /// Rand error of a proposal picture against a truth picture, at the network's decision.
    fn rand_error(truth: &[&str], proposal: &[&str]) -> f64 {
        let (t, w, h) = picture(truth);
        let (p, ..) = picture(proposal);
        let prob: Vec<f32> = p.iter().map(|&c| c as f32).collect();
        let mut acc = IsbiAccumulator::new(1, 255);
        acc.add(&t, &prob, w, h);
        acc.scores().rand_error_at_half
    }

    #[test]
    fn rand_error_on_hand_made_masks() {
        let truth = ["..#..", "..#..", "..#.."];
        // Perfect: 0.
        assert_eq!(rand_error(&truth, &truth), 0.0);
        // Merge: the membrane missed. Truth: two regions of 6 -> 2 * 15 = 30 true pairs. The
        // proposal puts all 12 in one region: 66 proposed pairs, 30 of them true.
        // P = 30/66, R = 1, F = 2PR/(P+R) = 60/96.
        let merged = rand_error(&truth, &[".....", ".....", "....."]);
        assert!((merged - (1.0 - 60.0 / 96.0)).abs() < 1e-12, "{merged}");
        // Split: a false membrane through the left cell (its row 1) leaves two proposed regions
        // of 2 there; the right cell stays whole (6). TP = 1 + 1 + 15 = 17 of 30 true pairs, all
        // 17 proposed pairs true (the membrane pixels join none): P = 1, R = 17/30, F = 34/47.
        let split = rand_error(&truth, &["..#..", "###..", "..#.."]);
        assert!((split - (1.0 - 34.0 / 47.0)).abs() < 1e-12, "{split}");
        // A thicker membrane that keeps the regions apart costs recall only: columns 1 and 3
        // are lost to it, leaving proposed regions of 3 in each cell: TP = 3 + 3 = 6 of 30
        // true pairs, all 6 proposed pairs true. P = 1, R = 1/5, F = 1/3.
        let thick = rand_error(&truth, &[".###.", ".###.", ".###."]);
        assert!((thick - 2.0 / 3.0).abs() < 1e-12, "{thick}");
    }

    #[test]
    fn pixel_error_and_threshold_sweep() {
        let (t, w, h) = picture(&["..#..", "..#..", "..#.."]);
        // Cell probabilities: 0.65 on the membrane (a weak boundary the argmax misses), 0.9 inside.
        let prob: Vec<f32> = t.iter().map(|&c| if c == 1 { 0.9 } else { 0.65 }).collect();
        let mut acc = IsbiAccumulator::new(1, 255);
        acc.add(&t, &prob, w, h);
        let s = acc.scores();
        // At 0.5 everything is cell: 3 of 15 pixels wrong, and the two cells merge. Pixel
        // similarity: TP 12, FP 3, FN 0, so P = 4/5, R = 1, F = 8/9.
        assert!((s.misclassification - 3.0 / 15.0).abs() < 1e-12);
        assert!((s.pixel_error_at_half - 1.0 / 9.0).abs() < 1e-12);
        assert!((s.rand_error_at_half - (1.0 - 60.0 / 96.0)).abs() < 1e-12);
        // From threshold 0.7 up the membrane is found: both best errors are 0, first at 0.7
        // (at 0.9 nothing is a cell any more: F = 0).
        assert_eq!((s.pixel_error, s.pixel_threshold), (0.0, 0.7));
        assert_eq!((s.rand_error, s.rand_threshold), (0.0, 0.7));
        assert_eq!(s.images, 1);
    }

    /// The challenge's pixel error of a constant cell probability `p` on `picture`.
    fn check_constant(rows: &[&str], p: f32, want: f64) {
        let (t, w, h) = picture(rows);
        let mut acc = IsbiAccumulator::new(1, 255);
        acc.add(&t, &vec![p; t.len()], w, h);
        let got = acc.scores().pixel_error;
        assert!((got - want).abs() < 1e-12, "{rows:?} at {p}: {got}, want {want}");
    }

    #[test]
    fn pixel_error_is_one_minus_the_best_f_score_not_the_wrong_fraction() {
        let rows = ["..#..", "..#..", "..#.."];
        // All cell: the lowest thresholds take every pixel, P = c = 4/5, R = 1: 1 - 2c/(1+c) = 1/9,
        // though 3 of 15 pixels (0.2) are wrong.
        check_constant(&rows, 1.0, 1.0 / 9.0);
        check_constant(&rows, 0.55, 1.0 / 9.0);
        // All membrane at every threshold: no true positive, F = 0.
        check_constant(&rows, 0.0, 1.0);
        // An image without cells and a proposal without cells: nothing wrong, F = 1 (the
        // challenge's precision and recall are 1 without false positives or negatives).
        check_constant(&["###"], 0.0, 0.0);
    }

    #[test]
    fn ignored_pixels_and_summing_over_images() {
        // A void pixel in the truth: out of the pixel counts, no region.
        let (mut t, w, h) = picture(&["....", "...."]);
        t[0] = 255;
        let prob = vec![0.0f32; t.len()];
        let mut acc = IsbiAccumulator::new(1, 255);
        acc.add(&t, &prob, w, h);
        // 7 counted pixels, all wrong; nothing proposed: F = 0 for both.
        let s = acc.scores();
        assert_eq!((s.misclassification, s.pixel_error, s.rand_error_at_half), (1.0, 1.0, 1.0));
        // Pixel and pair counts add over images; the misclassification averages per image.
        let (t2, ..) = picture(&["....", "...."]);
        acc.add(&t2, &vec![1.0; 8], w, h);
        let s = acc.scores();
        assert_eq!(s.misclassification, 0.5);
        // Pixels: TP 8, FP 0, FN 7 over both images: P = 1, R = 8/15, F = 16/23 (not the
        // per-image mean of 0 and 1).
        assert!((s.pixel_error - 7.0 / 23.0).abs() < 1e-12, "{}", s.pixel_error);
        // Truth pairs: pairs(7) + pairs(8) = 21 + 28; proposal only in image 2: 28 true.
        let want = 1.0 - 2.0 * (28.0 / 49.0) / (1.0 + 28.0 / 49.0);
        assert!((s.rand_error_at_half - want).abs() < 1e-12);
    }

    #[test]
    fn no_image_gives_undefined_figures() {
        let s = IsbiAccumulator::new(1, 255).scores();
        assert!(s.pixel_error.is_nan() && s.misclassification.is_nan() && s.rand_error.is_nan());
    }

    #[test]
    fn the_cell_class_follows_the_names() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(cell_class(&names(&["membrane", "cell"])), 1);
        assert_eq!(cell_class(&names(&["class 0", "class 1"])), 1);
        assert_eq!(cell_class(&names(&["cell", "Membrane"])), 0);
    }
}
