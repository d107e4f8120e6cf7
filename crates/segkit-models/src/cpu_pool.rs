//! 2x2 stride-2 max pooling for Burn's CPU backend (flex): a direct kernel for the forward pass and
//! a backward pass that finds each window's maximum again instead of storing its index.
//!
//! Why: flex runs every 2-D max pooling as its generic 3-D pooling with indices, working out the
//! valid kernel range per output element and writing an `i64` index for each, even in inference.
//! In a U-Net 252x252 inference step that was about 11% of the time (docs/BENCHMARKS.md), for an
//! operation that reads each input once. Here each output row reads its two input rows, and the
//! forward pass writes nothing but the output. Under autodiff the backward pass needs the input
//! and the output, which the neighbouring layers keep anyway (the ReLU before it keeps its output,
//! the convolution after it its input: the same buffers), where Burn's keeps a separate `i64`
//! index per output element: twice the size of the output.
//!
//! Scope, checked by [`applies`]: CPU (flex) devices, f32, kernel 2x2, stride 2, no padding,
//! dilation 1, floor (U-Net) or ceil (FCN, Caffe's rounding) mode, inputs at least 2x2 — every
//! pooling in FCN and U-Net. Anything else, and every GPU device, takes Burn's
//! `MaxPool2d::forward` unchanged; other dtypes take flex's own pooling inside the same op.
//!
//! Invariant: values and gradients equal Burn's max pooling exactly, ties included: the gradient
//! goes to the first maximum of a window in row-major order, and a window holding NaN outputs
//! NaN and sends its gradient to the last NaN, as flex does (tested against Burn on data with
//! ties, both rounding modes and odd sizes).

use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::{DType, IntDType, Shape, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::NodeId;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;

#[backend_extension(Flex, Autodiff)]
pub trait CpuPool: Backend {
    /// 2x2 max pooling with stride 2 and no padding; `ceil` keeps a last partial window where a
    /// side is odd (Caffe's rounding), floor drops it.
    fn max_pool2x2(x: FloatTensor<Self>, ceil: bool) -> FloatTensor<Self>;
}

/// The inner backend's gradient of [`CpuPool::max_pool2x2`] (called on it directly, not routed
/// through `Dispatch`).
pub trait MaxPool2x2Backward: Backend {
    /// The input gradient from the input `x`, the pooled output `y` and the output gradient.
    fn max_pool2x2_backward(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        ceil: bool,
    ) -> FloatTensor<Self>;
}

/// The output side of a 2x2 stride-2 pooling of `n` (at least 2) positions.
fn pooled(n: usize, ceil: bool) -> usize {
    if ceil { n.div_ceil(2) } else { n / 2 }
}

fn burn_pool(x: FlexTensor, ceil: bool) -> FlexTensor {
    Flex::max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], ceil)
}

impl CpuPool for Flex {
    fn max_pool2x2(x: FloatTensor<Self>, ceil: bool) -> FloatTensor<Self> {
        match pool_f32(&x, ceil) {
            Some(y) => y,
            None => burn_pool(x, ceil),
        }
    }
}

/// The direct forward kernel (f32; `None` for other dtypes or inputs under 2x2). NaN wins a
/// window, as in flex.
fn pool_f32(x: &FlexTensor, ceil: bool) -> Option<FlexTensor> {
    use rayon::prelude::*;
    if x.dtype() != DType::F32 {
        return None;
    }
    let [n, c, h, w] = x.layout().shape().dims();
    if h < 2 || w < 2 || n * c == 0 {
        return None;
    }
    let (ho, wo) = (pooled(h, ceil), pooled(w, ceil));
    let x = x.to_contiguous();
    let xs: &[f32] = x.as_slice()?;
    let mut out = FlexTensor::empty(Shape::new([n, c, ho, wo]), DType::F32);
    let ys: &mut [f32] = out.storage_mut();
    let pick = |m: f32, v: f32| if v > m || v.is_nan() { v } else { m };
    ys.par_chunks_mut(ho * wo).zip(xs.par_chunks(h * w)).for_each(|(y, x)| {
        for (oy, y_row) in y.chunks_mut(wo).enumerate() {
            let r0 = &x[2 * oy * w..][..w];
            // A last window of one row (ceil mode, odd height) reads it twice: same maximum.
            let r1 = if 2 * oy + 1 < h { &x[(2 * oy + 1) * w..][..w] } else { r0 };
            for (ox, out) in y_row.iter_mut().enumerate() {
                let (c0, c1) = (2 * ox, (2 * ox + 1).min(w - 1));
                *out = pick(pick(pick(r0[c0], r0[c1]), r1[c0]), r1[c1]);
            }
        }
    });
    Some(out)
}

/// The window position of the gradient: the first maximum in row-major order, or the last NaN
/// where the maximum is NaN (flex's rule). `window` lists the window's valid positions in
/// row-major order.
fn argmax_of(window: &[(usize, f32)], max: f32) -> usize {
    if max.is_nan() {
        window.iter().rev().find(|(_, v)| v.is_nan()).map_or(window[0].0, |&(i, _)| i)
    } else {
        window.iter().find(|&&(_, v)| v == max).map_or(window[0].0, |&(i, _)| i)
    }
}

impl MaxPool2x2Backward for Flex {
    fn max_pool2x2_backward(x: FlexTensor, y: FlexTensor, grad: FlexTensor, ceil: bool) -> FlexTensor {
        use rayon::prelude::*;
        let [n, c, h, w] = x.layout().shape().dims();
        let (ho, wo) = (pooled(h, ceil), pooled(w, ceil));
        let (x, y, grad) = (x.to_contiguous(), y.to_contiguous(), grad.to_contiguous());
        let (Some(xs), Some(ys), Some(gs)) = (x.as_slice::<f32>(), y.as_slice::<f32>(), grad.as_slice::<f32>()) else {
            // Not f32: [`CpuPool::max_pool2x2`] pooled with flex's own kernel, so its gradient is
            // flex's too, from the indices it computes again.
            let indices =
                Flex::max_pool2d_with_indices(x.clone(), [2, 2], [2, 2], [0, 0], [1, 1], ceil, IntDType::I64).indices;
            return Flex::max_pool2d_with_indices_backward(x, [2, 2], [2, 2], [0, 0], [1, 1], ceil, grad, indices)
                .x_grad;
        };
        let mut dx = FlexTensor::zeros(Shape::new([n, c, h, w]), DType::F32);
        let ds: &mut [f32] = dx.storage_mut();
        ds.par_chunks_mut(h * w)
            .zip(xs.par_chunks(h * w))
            .zip(ys.par_chunks(ho * wo).zip(gs.par_chunks(ho * wo)))
            .for_each(|((d, x), (y, g))| {
                let mut window = Vec::with_capacity(4);
                for oy in 0..ho {
                    for ox in 0..wo {
                        window.clear();
                        for r in 2 * oy..(2 * oy + 2).min(h) {
                            for col in 2 * ox..(2 * ox + 2).min(w) {
                                window.push((r * w + col, x[r * w + col]));
                            }
                        }
                        // Windows do not overlap (stride = kernel), so each input gets at most one
                        // gradient: a write, not a sum.
                        d[argmax_of(&window, y[oy * wo + ox])] = g[oy * wo + ox];
                    }
                }
            });
        dx
    }
}

impl<B: Backend + CpuPool + MaxPool2x2Backward, C: CheckpointStrategy> CpuPool for Autodiff<B, C> {
    fn max_pool2x2(x: FloatTensor<Self>, ceil: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MaxPool2x2Grad;

        impl<B: Backend + MaxPool2x2Backward> Backward<B, 1> for MaxPool2x2Grad {
            type State = (NodeId, B::FloatTensorPrimitive, bool);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_x] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, y, ceil) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::max_pool2x2_backward(x, y, grad, ceil));
                }
            }
        }

        match MaxPool2x2Grad.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                // The output is shared with the state (a reference count, not a copy).
                let y = B::max_pool2x2(x.into_primitive(), ceil);
                prep.finish((x_state, y.clone(), ceil), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool2x2(x.into_primitive(), ceil)),
        }
    }
}

/// Whether `pool` is a 2x2 stride-2 pooling without padding or dilation (see the module docs).
fn is_2x2(pool: &MaxPool2d) -> bool {
    pool.kernel_size == [2, 2]
        && pool.stride == [2, 2]
        && pool.dilation == [1, 1]
        && matches!(pool.padding, PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0))
}

/// Whether [`max_pool2d`] takes segkit's path for this pooling and input.
pub fn applies(pool: &MaxPool2d, x: &Tensor<4>) -> bool {
    let [n, c, h, w] = x.dims();
    crate::cpu_conv::on_flex(x) && is_2x2(pool) && h >= 2 && w >= 2 && n * c > 0
}

/// `pool.forward(x)`, through segkit's kernels where it [`applies`].
pub fn max_pool2d(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    if applies(pool, &x) {
        Tensor::from_dispatch(burn::backend::Dispatch::max_pool2x2(x.into_dispatch(), pool.ceil_mode))
    } else {
        pool.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::{Device, TensorData};

    /// Values on a coarse grid, so that windows often hold equal maxima (the tie rule is tested).
    fn data(shape: [usize; 4], seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..shape.iter().product::<usize>())
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 24) % 5) as f32 - 2.0
            })
            .collect()
    }

    /// Values and the input gradient through [`max_pool2d`] against Burn's `MaxPool2d::forward`,
    /// on the CPU backend under autodiff, bit for bit. `(n, c, h, w, ceil)`.
    fn check(case: (usize, usize, usize, usize, bool), nan_at: Option<usize>) {
        let (n, c, h, w, ceil) = case;
        let device = Device::flex().autodiff();
        let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).with_ceil_mode(ceil).init();
        let mut v = data([n, c, h, w], (n * 31 + c * 7 + h * 3 + w) as u32);
        if let Some(i) = nan_at {
            v[i] = f32::NAN;
        }
        let x = Tensor::<4>::from_data(TensorData::new(v, [n, c, h, w]), &device).require_grad();
        assert!(applies(&pool, &x), "case {case:?} should take segkit's path");
        // The direct kernel itself runs (it must not silently fall back to flex's pooling).
        let flex_x = FlexTensor::from_data(x.clone().inner().into_data());
        assert!(pool_f32(&flex_x, ceil).is_some(), "case {case:?} should take the direct kernel");
        let (ho, wo) = (pooled(h, ceil), pooled(w, ceil));
        let out_w = Tensor::<4>::from_data(TensorData::new(data([n, c, ho, wo], 99), [n, c, ho, wo]), &device);
        let run = |y: Tensor<4>| {
            let grads = (y.clone() * out_w.clone()).sum().backward();
            let gx = x.grad(&grads).unwrap();
            (y.inner().into_data().try_to_vec::<f32>().unwrap(), gx.into_data().try_to_vec::<f32>().unwrap())
        };
        let (y0, g0) = run(pool.forward(x.clone()));
        let (y1, g1) = run(max_pool2d(&pool, x.clone()));
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y1), bits(&y0), "output differs for {case:?}");
        // A NaN's gradient: the sums NaN * weight are NaN on both sides, so compare positions.
        if nan_at.is_some() {
            assert_eq!(
                g1.iter().map(|v| *v != 0.0).collect::<Vec<_>>(),
                g0.iter().map(|v| *v != 0.0).collect::<Vec<_>>()
            );
        } else {
            assert_eq!(bits(&g1), bits(&g0), "input gradient differs for {case:?}");
        }
    }

    #[test]
    fn values_and_gradients_match_burns_pooling() {
        for case in [
            (1, 1, 4, 4, false),
            (2, 3, 8, 6, false),
            (1, 2, 7, 9, false), // U-Net never sees odd sizes; floor drops the last row and column
            (1, 2, 7, 9, true),  // FCN's ceil mode keeps them as partial windows
            (2, 1, 5, 2, true),
            (1, 3, 2, 3, true),
        ] {
            check(case, None);
        }
        // NaN: the output is NaN where a window holds one, and the gradient goes where flex's does.
        check((1, 1, 4, 4, false), Some(5));
        check((1, 1, 5, 5, true), Some(24)); // in a partial corner window
    }

    /// Strided-differently, padded and tiny inputs keep Burn's own path.
    #[test]
    fn only_2x2_stride_2_pools_take_segkits_path() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([1, 1, 6, 6], &device);
        let two = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]);
        assert!(applies(&two.clone().init(), &x));
        assert!(applies(&two.clone().with_ceil_mode(true).init(), &x));
        assert!(!applies(&MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).init(), &x));
        assert!(!applies(&MaxPool2dConfig::new([2, 2]).with_strides([1, 1]).init(), &x));
        assert!(!applies(&two.clone().with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(), &x));
        assert!(!applies(&two.init(), &Tensor::<4>::zeros([1, 1, 1, 6], &device)));
    }
}
