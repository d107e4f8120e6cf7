//! Optimisers and learning-rate schedules.
//!
//! Written here rather than taken from `burn::optim` so that the state is keyed by parameter
//! *path* (`vgg.conv1_1.weight`), which is what a checkpoint stores and what survives a resume or
//! a staged FCN-32s -> 16s initialisation, and so that biases can get the FCN reference's
//! treatment (learning rate x2, no weight decay).
//!
//! SGD follows PyTorch's convention (`v = mu * v + g; p -= lr * v`, weight decay added to the
//! gradient), checked against `sgd_momentum` in `shared/reference/golden.json`. On the CPU it runs
//! as one pass over each parameter, its gradient and its velocity, updating both in place
//! ([`sgd_momentum_flex`]); tensor operations elsewhere.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// `lr * (1 - t / T)^power` (DeepLab's "poly", power 0.9).
    Poly,
    /// `lr * gamma^(t / step_size)`.
    Step,
    /// Cosine from `lr` to 0.
    Cosine,
}

/// Optimiser settings, a part of the `[train]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimSettings {
    pub kind: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Learning-rate multiplier for biases (the FCN reference uses 2).
    pub bias_lr_mult: f64,
    /// Whether biases get weight decay (the FCN reference: no).
    pub bias_decay: bool,
}

/// The learning rate at optimiser step `step` of `total`.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub base: f64,
    pub schedule: Schedule,
    pub total_steps: usize,
    pub warmup_steps: usize,
    pub power: f64,
    pub step_size: usize,
    pub gamma: f64,
}

impl LrSchedule {
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let t = (step - self.warmup_steps) as f64;
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let frac = (t / span).min(1.0);
        match self.schedule {
            Schedule::Constant => self.base,
            Schedule::Poly => self.base * (1.0 - frac).powf(self.power),
            Schedule::Step => self.base * self.gamma.powi((t as usize / self.step_size.max(1)) as i32),
            Schedule::Cosine => self.base * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()),
        }
    }
}

/// Per-parameter state by path: SGD's velocity, or Adam's first and second moments, flattened.
#[derive(Debug, Clone, Default)]
pub struct OptimState {
    pub slots: BTreeMap<String, Tensor<1>>,
    /// Optimiser steps taken (Adam's bias correction).
    pub steps: u64,
}

pub struct Optimizer {
    pub settings: OptimSettings,
    pub state: OptimState,
}

impl Optimizer {
    pub fn new(settings: OptimSettings) -> Self {
        Self { settings, state: OptimState::default() }
    }

    /// One update of every parameter that has a gradient in `grads`, at learning rate `lr`.
    pub fn step<M: Module>(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        self.state.steps += 1;
        let mut mapper = Update { opt: self, lr, grads, path: Vec::new() };
        model.map(&mut mapper)
    }
}

struct Update<'a> {
    opt: &'a mut Optimizer,
    lr: f64,
    grads: GradientsParams,
    path: Vec<String>,
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        if !container.starts_with("Enum:") {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container: &str) {
        if !container.starts_with("Enum:") {
            self.path.pop();
        }
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let path = self.path.join(".");
        let require_grad = tensor.is_require_grad();
        let dims = tensor.dims();
        let n = dims.iter().product::<usize>();
        let p = tensor.inner().reshape([n]);
        let g = grad.inner().reshape([n]);
        let s = &self.opt.settings;
        let is_bias = path.ends_with("bias");
        let lr = self.lr * if is_bias { s.bias_lr_mult } else { 1.0 };
        let wd = if is_bias && !s.bias_decay { 0.0 } else { s.weight_decay };
        let state = &mut self.opt.state;
        let updated = match s.kind {
            OptimizerKind::Sgd => {
                let key = format!("{path}/momentum");
                let fused = if s.momentum > 0.0 {
                    sgd_momentum_flex(p, g, state.slots.remove(&key), lr, s.momentum, wd)
                } else {
                    Err((p, g, None))
                };
                let (p, g, velocity) = match fused {
                    Ok((p, v)) => {
                        state.slots.insert(key, v);
                        return self.finish(id, p, dims, require_grad, mapper);
                    }
                    Err(unfused) => unfused,
                };
                let g = if wd > 0.0 { g + p.clone().mul_scalar(wd) } else { g };
                if s.momentum > 0.0 {
                    let v = match velocity {
                        Some(v) => v.mul_scalar(s.momentum) + g,
                        None => g,
                    };
                    if lr != 0.0 {
                        // Scale the velocity into the update in place, apply it, and scale it
                        // back, instead of storing a copy and allocating `lr * v`: on the CPU
                        // backend an uniquely owned tensor is updated in place, and a fresh
                        // buffer the size of fc6 costs more than the arithmetic (docs/BENCHMARKS.md).
                        let update = v.mul_scalar(lr);
                        let p = p - update.clone();
                        state.slots.insert(key, update.div_scalar(lr));
                        p
                    } else {
                        state.slots.insert(key, v);
                        p
                    }
                } else {
                    p - g.mul_scalar(lr)
                }
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let decoupled = s.kind == OptimizerKind::Adamw;
                let p = if decoupled && wd > 0.0 { p.clone() - p.mul_scalar(lr * wd) } else { p };
                let g = if !decoupled && wd > 0.0 { g + p.clone().mul_scalar(wd) } else { g };
                let (k1, k2) = (format!("{path}/exp_avg"), format!("{path}/exp_avg_sq"));
                let m = match state.slots.remove(&k1) {
                    Some(m) => m.mul_scalar(s.beta1) + g.clone().mul_scalar(1.0 - s.beta1),
                    None => g.clone().mul_scalar(1.0 - s.beta1),
                };
                let v = match state.slots.remove(&k2) {
                    Some(v) => v.mul_scalar(s.beta2) + g.clone().powi_scalar(2).mul_scalar(1.0 - s.beta2),
                    None => g.powi_scalar(2).mul_scalar(1.0 - s.beta2),
                };
                state.slots.insert(k1, m.clone());
                state.slots.insert(k2, v.clone());
                let t = state.steps as i32;
                let c1 = 1.0 - s.beta1.powi(t);
                let c2 = 1.0 - s.beta2.powi(t);
                let denom = v.div_scalar(c2).sqrt().add_scalar(s.eps);
                p - m.div(denom).mul_scalar(lr / c1)
            }
        };
        self.finish(id, updated, dims, require_grad, mapper)
    }
}

impl Update<'_> {
    /// The updated parameter, back in its shape and with its autodiff flag.
    fn finish<const D: usize>(
        &self,
        id: burn::module::ParamId,
        updated: Tensor<1>,
        dims: [usize; D],
        require_grad: bool,
        mapper: burn::module::ParamMapper<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        let mut out = Tensor::from_inner(updated.reshape(dims));
        if require_grad {
            out = out.require_grad();
        }
        Param::from_mapped_value(id, out, mapper)
    }
}

/// SGD with momentum (PyTorch's: `d = g + wd p; v = mu v + d; p -= lr v`; no velocity yet: `v =
/// d`) in one pass, on f32 tensors of the CPU backend. The parameter and the velocity are updated
/// in place where nothing else holds them (flex copies a shared buffer first), so a step reads
/// three arrays and writes two, where the tensor operations took five passes and two temporary
/// buffers the size of the parameter (U-Net: 94 ms of a 738 ms step, docs/BENCHMARKS.md).
/// Elsewhere (GPU, other dtypes) the inputs come back unchanged for the tensor-op path.
#[allow(clippy::type_complexity)]
fn sgd_momentum_flex(
    p: Tensor<1>,
    g: Tensor<1>,
    v: Option<Tensor<1>>,
    lr: f64,
    momentum: f64,
    wd: f64,
) -> Result<(Tensor<1>, Tensor<1>), (Tensor<1>, Tensor<1>, Option<Tensor<1>>)> {
    use burn::backend::{DispatchDevice, Flex};
    use burn::tensor::DType;
    use burn_flex::FlexTensor;
    use rayon::prelude::*;
    let on_flex_f32 =
        |t: &Tensor<1>| t.dtype() == DType::F32 && matches!(t.device().inner().as_dispatch(), DispatchDevice::Flex(_));
    if !(on_flex_f32(&p) && on_flex_f32(&g) && v.as_ref().is_none_or(on_flex_f32)) {
        return Err((p, g, v));
    }
    // The checks above make these conversions infallible: flex, float, not under autodiff
    // (the optimiser works on the inner tensors).
    let flex = |t: Tensor<1>| {
        let t = t.try_into_primitive::<Flex>().expect("a flex float tensor");
        // The same buffer where it is already contiguous and whole (then unique again once `t`
        // is dropped), else a contiguous copy: either way `storage_mut` covers exactly the values.
        let c = t.to_contiguous();
        drop(t);
        c
    };
    let n = p.dims()[0];
    let (mut pt, gt) = (flex(p), flex(g));
    let mut vt = match v {
        Some(v) => flex(v),
        None => FlexTensor::zeros(burn::tensor::Shape::new([n]), DType::F32),
    };
    let gs: &[f32] = gt.as_slice().expect("contiguous f32");
    let (lr, mu, wd) = (lr as f32, momentum as f32, wd as f32);
    const CHUNK: usize = 1 << 16;
    pt.storage_mut::<f32>()
        .par_chunks_mut(CHUNK)
        .zip(vt.storage_mut::<f32>().par_chunks_mut(CHUNK))
        .zip(gs.par_chunks(CHUNK))
        .for_each(|((p, v), g)| {
            for ((p, v), &g) in p.iter_mut().zip(v.iter_mut()).zip(g) {
                *v = mu * *v + (g + wd * *p);
                *p -= lr * *v;
            }
        });
    Ok((Tensor::from_primitive::<Flex>(pt), Tensor::from_primitive::<Flex>(vt)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(schedule: Schedule, warmup: usize) -> LrSchedule {
        LrSchedule { base: 1.0, schedule, total_steps: 10, warmup_steps: warmup, power: 0.9, step_size: 4, gamma: 0.1 }
    }

    /// The one-pass CPU update against PyTorch's formula written as tensor operations, with
    /// weight decay, with and without a velocity from an earlier step, and on a parameter larger
    /// than one parallel chunk.
    #[test]
    fn fused_sgd_matches_the_tensor_formula() {
        use burn::tensor::Distribution;
        let device = Device::flex();
        let n = 70_001;
        let rand = || Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let (lr, mu, wd) = (0.05, 0.9, 5e-4);
        for velocity in [None, Some(rand())] {
            let (p, g) = (rand(), rand());
            let d = g.clone() + p.clone().mul_scalar(wd);
            let v_want = match &velocity {
                Some(v) => v.clone().mul_scalar(mu) + d,
                None => d,
            };
            let p_want = p.clone() - v_want.clone().mul_scalar(lr);
            let Ok((p_got, v_got)) = sgd_momentum_flex(p, g, velocity, lr, mu, wd) else {
                panic!("flex f32 tensors take the fused path");
            };
            let diff = |a: Tensor<1>, b: Tensor<1>| (a - b).abs().max().into_scalar::<f32>();
            assert!(diff(p_got, p_want) < 1e-6 && diff(v_got, v_want) < 1e-6);
        }
    }

    #[test]
    fn schedules() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(sched(Schedule::Constant, 0).lr(7), 1.0));
        assert!(close(sched(Schedule::Poly, 0).lr(5), 0.5f64.powf(0.9)));
        assert!(close(sched(Schedule::Poly, 0).lr(10), 0.0));
        assert!(close(sched(Schedule::Step, 0).lr(3), 1.0));
        assert!(close(sched(Schedule::Step, 0).lr(4), 0.1));
        assert!(close(sched(Schedule::Step, 0).lr(9), 0.01));
        assert!(close(sched(Schedule::Cosine, 0).lr(5), 0.5));
        // Warm-up ramps linearly to the base rate, then the schedule starts from it.
        assert!(close(sched(Schedule::Cosine, 2).lr(0), 0.5));
        assert!(close(sched(Schedule::Cosine, 2).lr(2), 1.0));
    }
}
