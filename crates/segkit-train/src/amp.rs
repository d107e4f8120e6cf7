//! Mixed precision (`train.precision = "f16-mixed"`): f16 activations and weights in the forward
//! and backward passes, f32 everywhere the digits matter, and dynamic loss scaling.
//!
//! Burn 0.22 has no automatic mixed precision (burn issue #5696), so segkit builds it from
//! casts on the runtime `Device`'s float dtypes:
//! - The batch goes to the model as f16; each layer casts its f32 parameters to f16 as it uses
//!   them (`segkit_models::conv`), a tracked cast whose backward casts the gradient back to f32.
//!   The parameters, their gradients and the optimiser state stay f32 (the master weights), and
//!   so do checkpoints: a run resumes in either precision.
//! - Batch norm normalises in f32 (`layers::BatchNorm2d`), and the logits are cast to f32 before
//!   the softmax and the loss.
//! - The loss is multiplied by a scale before backward so that small gradients survive f16's
//!   range (smallest normal 6.1e-5), and the gradients are divided by it before the update. A step
//!   whose scaled gradients overflow is skipped (no update) and the scale halves; after
//!   [`GROWTH_INTERVAL`] steps without overflow it doubles. PyTorch's `GradScaler` defaults:
//!   2^16, x2 every 2000 steps, x0.5 on overflow. Both the scale and the skipped steps are in
//!   the training state (so a resume continues them) and in `metrics.csv`.
//!
//! On the CPU (flex) segkit trains in f32 whatever `train.precision` says: flex has no f16
//! matrix kernels faster than its f32 ones, so f16 there costs accuracy for nothing.

use std::cell::Cell;

use burn::tensor::DType;
use serde::{Deserialize, Serialize};

/// `train.precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    F32,
    /// f16 compute, f32 master weights, dynamic loss scaling.
    F16Mixed,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16Mixed => "f16-mixed",
        }
    }

    /// The dtype of activations in the forward and backward passes.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16Mixed => DType::F16,
        }
    }
}

/// The first loss scale (2^16).
pub const INITIAL_SCALE: f32 = 65536.0;
/// Steps without overflow after which the scale doubles.
pub const GROWTH_INTERVAL: usize = 2000;
/// The scale never drops below this (a model whose gradients overflow at scale 1 is broken, and
/// the loss check reports it).
const MIN_SCALE: f32 = 1.0;
/// Nor grows past this (f32's range is the limit; 2^24 is far past any useful scale).
const MAX_SCALE: f32 = 16_777_216.0;

/// The dynamic loss scale. Interior mutability, so that it sits in the step's spec
/// (`trainer::StepSpec`), which the step reads by shared reference.
#[derive(Debug)]
pub struct LossScaler {
    scale: Cell<f32>,
    good_steps: Cell<usize>,
    overflows: Cell<usize>,
}

impl LossScaler {
    /// A scaler that continues from a training state's `scale` (0: a fresh one), its count of
    /// steps since the last change, and its count of skipped steps.
    pub fn resume(scale: f64, good_steps: usize, overflows: usize) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 { scale as f32 } else { INITIAL_SCALE };
        LossScaler { scale: Cell::new(scale), good_steps: Cell::new(good_steps), overflows: Cell::new(overflows) }
    }

    pub fn scale(&self) -> f32 {
        self.scale.get()
    }

    /// Steps without overflow since the scale last changed.
    pub fn good_steps(&self) -> usize {
        self.good_steps.get()
    }

    /// Steps skipped for overflowing gradients, in the whole run.
    pub fn overflows(&self) -> usize {
        self.overflows.get()
    }

    /// The step's scaled gradients overflowed: skip it and halve the scale.
    pub fn overflowed(&self) {
        self.overflows.set(self.overflows.get() + 1);
        self.scale.set((self.scale.get() * 0.5).max(MIN_SCALE));
        self.good_steps.set(0);
    }

    /// The step's gradients were finite: after [`GROWTH_INTERVAL`] such steps the scale doubles.
    pub fn finite(&self) {
        let n = self.good_steps.get() + 1;
        if n >= GROWTH_INTERVAL {
            self.scale.set((self.scale.get() * 2.0).min(MAX_SCALE));
            self.good_steps.set(0);
        } else {
            self.good_steps.set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;
    use crate::optim::Optimizer;
    use crate::params;
    use crate::trainer::{StepOutcome, StepSpec, optimiser_step};
    use burn::prelude::*;
    use burn::tensor::TensorData;
    use segkit_models::SegModel;

    /// One f16-mixed step of a tiny U-Net with batch norm on flex (which has f16 kernels, though
    /// the trainer keeps the CPU in f32) at loss scale `scale`: the outcome and the weights after.
    type Weights = std::collections::BTreeMap<String, params::HostTensor>;

    /// ... and the weights before the step.
    fn step_at(scale: f64) -> (StepOutcome, Weights, f32, Weights) {
        let o: Vec<String> =
            ["model.depth=2", "model.base_width=4", "model.in_channels=3", "model.classes=3", "train.optimizer=\"sgd\"", "train.lr=0.1", "train.momentum=0.9", "train.weight_decay=0.0005", "train.device=\"cpu\""]
                .map(String::from)
                .to_vec();
        let cfg = RunConfig::quickstart(&o).unwrap();
        let device = Device::flex().autodiff();
        device.seed(3);
        let model = SegModel::new(&cfg.model, &device).unwrap();
        let before = params::collect(&model);
        let mut opt = Optimizer::new(cfg.optim_settings());
        let mut spec = StepSpec::new(&cfg, None, 255, &device);
        spec.precision = Precision::F16Mixed;
        spec.scaler = LossScaler::resume(scale, 0, 0);
        let size = 16;
        let (oh, _) = cfg.model.output_size(size, size).unwrap();
        let x: Vec<f32> = (0..2 * 3 * size * size).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let y: Vec<i64> = (0..2 * oh * oh).map(|i| (i * 7 % 3) as i64).collect();
        let batch = (
            Tensor::<4>::from_data(TensorData::new(x, [2, 3, size, size]), &device),
            Tensor::<3, Int>::from_data(TensorData::new(y, [2, oh, oh]), &device),
        );
        let (model, outcome) = optimiser_step(model, &mut opt, 0.1, vec![batch], &spec, 0);
        (outcome, params::collect(&model), spec.scaler.scale(), before)
    }

    /// The master update is f32 and the scale cancels: scaling the loss by 2^10 and by 2^13 gives
    /// the same f32 update (a power of two scales f16 gradients exactly where nothing under- or
    /// overflows; at scale 1 the gradients of this net's biases, about 1e-6, are f16 subnormals
    /// and lose their digits, which is why the scale exists), and a scale that overflows f16
    /// skips the step without touching a weight and halves the scale.
    /// (Flex runs f16 here though the trainer keeps the CPU in f32: the logic is the GPU's.)
    #[test]
    fn scaled_steps_update_the_f32_masters_as_unscaled_ones() {
        let (a, wa, _, _) = step_at(1024.0);
        let (b, wb, _, _) = step_at(8192.0);
        let (StepOutcome::Updated { loss: la }, StepOutcome::Updated { loss: lb }) = (a, b) else { panic!("{a:?} {b:?}") };
        assert_eq!(la, lb, "the loss does not depend on the scale");
        let mut worst = 0f32;
        for (k, ta) in &wa {
            let tb = &wb[k];
            let scale = tb.values.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let d = ta.values.iter().zip(&tb.values).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            worst = worst.max(d / scale);
        }
        assert!(worst <= 1e-6, "updates at scale 1024 and 8192 differ by {worst:.2e} relative");
        let (c, wc, after, w0) = step_at(16_777_216.0 * 1024.0);
        assert!(matches!(c, StepOutcome::Overflow { .. }), "{c:?}");
        assert_eq!(after, MAX_SCALE * 512.0, "halved");
        // (The forward pass did update the batch norms' running statistics, as PyTorch's does.)
        let changed: Vec<&String> =
            w0.keys().filter(|k| !k.contains("running_") && wc[*k].values != w0[*k].values).collect();
        assert!(changed.is_empty(), "an overflowing step changed {changed:?}");
    }

    /// Halves on overflow, doubles after the growth interval, stays in its bounds, and resumes
    /// where it was.
    #[test]
    fn the_scale_backs_off_and_grows() {
        let s = LossScaler::resume(0.0, 0, 0);
        assert_eq!(s.scale(), INITIAL_SCALE);
        s.overflowed();
        s.overflowed();
        assert_eq!((s.scale(), s.overflows(), s.good_steps()), (INITIAL_SCALE / 4.0, 2, 0));
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.finite();
        }
        assert_eq!((s.scale(), s.good_steps()), (INITIAL_SCALE / 4.0, GROWTH_INTERVAL - 1));
        s.finite();
        assert_eq!((s.scale(), s.good_steps()), (INITIAL_SCALE / 2.0, 0));
        let r = LossScaler::resume(s.scale() as f64, 7, s.overflows());
        assert_eq!((r.scale(), r.good_steps(), r.overflows()), (INITIAL_SCALE / 2.0, 7, 2));
        let low = LossScaler::resume(1.0, 0, 0);
        low.overflowed();
        assert_eq!(low.scale(), 1.0);
        let high = LossScaler::resume(MAX_SCALE as f64, GROWTH_INTERVAL - 1, 0);
        high.finite();
        assert_eq!(high.scale(), MAX_SCALE);
        assert_eq!(LossScaler::resume(f64::NAN, 0, 0).scale(), INITIAL_SCALE);
    }
}
