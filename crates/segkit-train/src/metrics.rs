//! Segmentation metrics from one confusion matrix accumulated over a whole split.
//!
//! The four FCN metrics (Long et al. 2015, section 5, and the reference `score.py`): pixel
//! accuracy, mean class accuracy, mean IoU, frequency-weighted IoU; plus per-class IoU and mean
//! Dice. Classes absent from both prediction and ground truth have an undefined IoU and are left
//! out of the means (`nanmean`), as `score.py` does; a class absent from the ground truth has an
//! undefined accuracy and is left out of the mean accuracy.

use serde::{Deserialize, Serialize};

/// `counts[t * n + p]` = pixels of true class `t` predicted as `p`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub n: usize,
    pub counts: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub pixel_acc: f64,
    pub mean_acc: f64,
    pub mean_iou: f64,
    pub fw_iou: f64,
    pub mean_dice: f64,
    /// `None` where undefined (class absent from prediction and ground truth).
    pub class_iou: Vec<Option<f64>>,
    pub class_acc: Vec<Option<f64>>,
    pub class_dice: Vec<Option<f64>>,
    /// Ground-truth pixels per class.
    pub class_pixels: Vec<u64>,
    pub pixels: u64,
}

fn nanmean(v: &[Option<f64>]) -> f64 {
    let d: Vec<f64> = v.iter().flatten().copied().collect();
    if d.is_empty() { f64::NAN } else { d.iter().sum::<f64>() / d.len() as f64 }
}

impl ConfusionMatrix {
    pub fn new(n: usize) -> Self {
        Self { n, counts: vec![0; n * n] }
    }

    /// Adds a prediction. Pixels whose target is not a class (the ignore label included) are
    /// skipped; predictions are class indices `< n`.
    pub fn add(&mut self, pred: &[u8], target: &[u8]) {
        debug_assert_eq!(pred.len(), target.len());
        for (&p, &t) in pred.iter().zip(target) {
            let (p, t) = (p as usize, t as usize);
            if t < self.n && p < self.n {
                self.counts[t * self.n + p] += 1;
            }
        }
    }

    /// As [`Self::add`] with 32-bit labels, as they come back from a device.
    pub fn add_i64(&mut self, pred: &[i64], target: &[i64]) {
        for (&p, &t) in pred.iter().zip(target) {
            if (0..self.n as i64).contains(&t) && (0..self.n as i64).contains(&p) {
                self.counts[t as usize * self.n + p as usize] += 1;
            }
        }
    }

    pub fn merge(&mut self, other: &ConfusionMatrix) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn scores(&self) -> Scores {
        let n = self.n;
        let at = |t: usize, p: usize| self.counts[t * n + p] as f64;
        let row: Vec<f64> = (0..n).map(|t| (0..n).map(|p| at(t, p)).sum()).collect();
        let col: Vec<f64> = (0..n).map(|p| (0..n).map(|t| at(t, p)).sum()).collect();
        let diag: Vec<f64> = (0..n).map(|i| at(i, i)).collect();
        let total: f64 = row.iter().sum();
        let class_acc: Vec<Option<f64>> = (0..n).map(|i| (row[i] > 0.0).then(|| diag[i] / row[i])).collect();
        let union = |i: usize| row[i] + col[i] - diag[i];
        let class_iou: Vec<Option<f64>> = (0..n).map(|i| (union(i) > 0.0).then(|| diag[i] / union(i))).collect();
        let class_dice: Vec<Option<f64>> =
            (0..n).map(|i| (row[i] + col[i] > 0.0).then(|| 2.0 * diag[i] / (row[i] + col[i]))).collect();
        let fw_iou = if total > 0.0 {
            (0..n).filter_map(|i| class_iou[i].map(|iou| row[i] / total * iou)).sum()
        } else {
            f64::NAN
        };
        Scores {
            pixel_acc: if total > 0.0 { diag.iter().sum::<f64>() / total } else { f64::NAN },
            mean_acc: nanmean(&class_acc),
            mean_iou: nanmean(&class_iou),
            fw_iou,
            mean_dice: nanmean(&class_dice),
            class_iou,
            class_acc,
            class_dice,
            class_pixels: row.iter().map(|&r| r as u64).collect(),
            pixels: total as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12 || (a.is_nan() && b.is_nan())
    }

    /// Builds a matrix from rows (true class) of counts and checks the scores.
    fn check(rows: &[&[u64]], pixel_acc: f64, mean_acc: f64, mean_iou: f64, fw_iou: f64, mean_dice: f64) {
        let n = rows.len();
        let cm = ConfusionMatrix { n, counts: rows.iter().flat_map(|r| r.iter().copied()).collect() };
        let s = cm.scores();
        let got = [s.pixel_acc, s.mean_acc, s.mean_iou, s.fw_iou, s.mean_dice];
        let want = [pixel_acc, mean_acc, mean_iou, fw_iou, mean_dice];
        for (name, (g, w)) in
            ["pixel_acc", "mean_acc", "mean_iou", "fw_iou", "mean_dice"].iter().zip(got.iter().zip(want))
        {
            assert!(close(*g, w), "{name}: got {g}, want {w} for {rows:?}");
        }
    }

    #[test]
    fn hand_computed_matrices() {
        // Perfect prediction.
        check(&[&[5, 0], &[0, 3]], 1.0, 1.0, 1.0, 1.0, 1.0);
        // Two classes: t0 = [3 right, 1 as 1], t1 = [2 as 0, 4 right].
        // acc: 7/10; class acc 3/4, 4/6; IoU0 = 3/(4+5-3) = 1/2, IoU1 = 4/(6+5-4) = 4/7;
        // fw = 0.4*0.5 + 0.6*4/7; dice0 = 6/9, dice1 = 8/11.
        check(
            &[&[3, 1], &[2, 4]],
            0.7,
            (0.75 + 4.0 / 6.0) / 2.0,
            (0.5 + 4.0 / 7.0) / 2.0,
            0.4 * 0.5 + 0.6 * 4.0 / 7.0,
            (6.0 / 9.0 + 8.0 / 11.0) / 2.0,
        );
        // Class 2 absent from ground truth and prediction: left out of every mean.
        check(&[&[2, 0, 0], &[0, 2, 0], &[0, 0, 0]], 1.0, 1.0, 1.0, 1.0, 1.0);
        // Class 2 predicted but absent from ground truth: IoU 0 counts, accuracy is undefined.
        // t0: 2 right; t1: 1 right, 1 as 2. acc 3/4; class acc (1 + 0.5)/2;
        // IoU: 1, 1/2, 0 -> 1/2; fw: 0.5*1 + 0.5*0.5; dice: 1, 2/3, 0.
        check(&[&[2, 0, 0], &[0, 1, 1], &[0, 0, 0]], 0.75, 0.75, 0.5, 0.75, (1.0 + 2.0 / 3.0) / 3.0);
        // Nothing counted: undefined, not a panic.
        check(&[&[0, 0], &[0, 0]], f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }

    #[test]
    fn ignore_label_counts_nowhere() {
        let mut cm = ConfusionMatrix::new(2);
        cm.add(&[0, 1, 1, 0], &[0, 1, 255, 2]);
        assert_eq!(cm.counts, vec![1, 0, 0, 1]);
        let mut other = ConfusionMatrix::new(2);
        other.add_i64(&[1], &[0]);
        cm.merge(&other);
        assert_eq!(cm.counts, vec![1, 1, 0, 1]);
    }
}
