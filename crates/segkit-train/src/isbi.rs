//! The ISBI 2012 challenge's metrics for two-class membrane data (cell interior vs membrane), as
//! its evaluation code defines them (Arganda-Carreras et al., "Crowdsourcing the creation of
//! image segmentation algorithms for connectomics", Front. Neuroanat. 2015; Fiji's
//! `trainableSegmentation.metrics.PixelError` and `RandError`):
//!
//! - **pixel error**: the fraction of pixels whose binary label differs from the ground truth,
//!   per image, averaged over the images (the U-Net paper's 0.0611). Taken at the network's
//!   decision (argmax, i.e. probability 0.5).
//! - **foreground-restricted Rand error**: `1 - F`, where `F` is the F-score of the Rand index
//!   restricted to the ground truth's foreground. Per image, the regions are the 4-connected
//!   components of the cell class in the ground truth and in the proposal. Pairs of
//!   ground-truth cell pixels are counted: a true positive is a pair in one ground-truth region
//!   and one proposed region; proposal pixels on a membrane belong to no region (they join no
//!   pair, as singletons). Precision = true positives / pairs in one proposed region, recall =
//!   true positives / pairs in one ground-truth region, pair counts summed over the images. The
//!   challenge binarises the cell probability at several thresholds and reports the best `F`:
//!   so does [`IsbiAccumulator`], at 0.0, 0.1, ..., 0.9, and it also reports the error at 0.5.
//!
//! Which class is the cell interior: class 1 (ISBI's labels: 255 = cell, 0 = membrane), unless
//! class 1's name says it is the boundary ("membrane", "boundary", "border", "edge"), then
//! class 0. Ignored pixels (the void label) are left out of the pixel error and count as
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

/// The challenge's figures for a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsbiScores {
    /// Mean over the images of the fraction of wrongly labelled pixels (at the argmax).
    pub pixel_error: f64,
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
    pixel_error_sum: f64,
    pairs: [RandPairs; THRESHOLDS.len()],
}

impl IsbiAccumulator {
    pub fn new(cell_class: u8, ignore_index: u8) -> Self {
        IsbiAccumulator {
            cell: cell_class,
            ignore: ignore_index,
            images: 0,
            pixel_error_sum: 0.0,
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
            self.pixel_error_sum += wrong as f64 / counted as f64;
        }
        for (k, &th) in THRESHOLDS.iter().enumerate() {
            let proposal: Vec<bool> = cell_prob.iter().map(|&p| p > th).collect();
            let (regions, _) = label_regions(&proposal, width, height);
            self.pairs[k].add(&RandPairs::of(&true_regions, &regions));
        }
        self.images += 1;
    }

    pub fn scores(&self) -> IsbiScores {
        let (best, f) = self
            .pairs
            .iter()
            .map(RandPairs::f_score)
            .enumerate()
            .fold((HALF, f64::NEG_INFINITY), |b, (k, f)| if f > b.1 { (k, f) } else { b });
        IsbiScores {
            pixel_error: if self.images > 0 { self.pixel_error_sum / self.images as f64 } else { f64::NAN },
            rand_error: 1.0 - f,
            rand_threshold: THRESHOLDS[best],
            rand_error_at_half: 1.0 - self.pairs[HALF].f_score(),
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
        // At 0.5 everything is cell: 3 of 15 pixels wrong, and the two cells merge.
        assert!((s.pixel_error - 3.0 / 15.0).abs() < 1e-12);
        assert!((s.rand_error_at_half - (1.0 - 60.0 / 96.0)).abs() < 1e-12);
        // From threshold 0.7 up the membrane is found: the best error is 0, first at 0.7.
        assert_eq!(s.rand_error, 0.0);
        assert_eq!(s.rand_threshold, 0.7);
        assert_eq!(s.images, 1);
    }

    #[test]
    fn ignored_pixels_and_summing_over_images() {
        // A void pixel in the truth: out of the pixel error, no region.
        let (mut t, w, h) = picture(&["....", "...."]);
        t[0] = 255;
        let prob = vec![0.0f32; t.len()];
        let mut acc = IsbiAccumulator::new(1, 255);
        acc.add(&t, &prob, w, h);
        // 7 counted pixels, all wrong; nothing proposed: F = 0.
        assert_eq!(acc.scores().pixel_error, 1.0);
        assert_eq!(acc.scores().rand_error_at_half, 1.0);
        // Pair counts add over images; the pixel error averages per image.
        let (t2, ..) = picture(&["....", "...."]);
        acc.add(&t2, &vec![1.0; 8], w, h);
        let s = acc.scores();
        assert_eq!(s.pixel_error, 0.5);
        // Truth pairs: pairs(7) + pairs(8) = 21 + 28; proposal only in image 2: 28 true.
        let want = 1.0 - 2.0 * (28.0 / 49.0) / (1.0 + 28.0 / 49.0);
        assert!((s.rand_error_at_half - want).abs() < 1e-12);
    }

    #[test]
    fn the_cell_class_follows_the_names() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(cell_class(&names(&["membrane", "cell"])), 1);
        assert_eq!(cell_class(&names(&["class 0", "class 1"])), 1);
        assert_eq!(cell_class(&names(&["cell", "Membrane"])), 0);
    }
}
