//! Stride-1 convolutions as GEMMs on the GPU: im2col from tensor views, then Burn's tuned matrix
//! multiply, for the forward pass and both gradients.
//!
//! Why: Burn 0.22's wgpu backend runs f32 3x3 (and 7x7) forward convolutions in a direct kernel,
//! one output value per thread (cubek-convolution `kernels/forward/direct.rs`), and only 1x1
//! convolutions through its matrix multiply. The matrix multiply is the kernel cubecl tunes
//! hardest (tiling, double buffering, and on NVIDIA cooperative-matrix tiles for 16-bit inputs,
//! i.e. tensor cores), so expressing every convolution as one is the way to reach it:
//! - forward: `Y_n [C_out, H'W'] = W [C_out, C_in k k] x im2col(x_n) [C_in k k, H'W']`, a batched
//!   product with `W` broadcast over the batch; the result is already NCHW.
//! - input gradient: the same forward GEMM on the output gradient, with the weights transposed
//!   (`C_in <-> C_out`) and flipped, and padding `k - 1 - p` (a crop where `p > k - 1`: conv1_1's
//!   100).
//! - weight gradient: `dW = sum_n dY_n [C_out, H'W'] x im2col(x_n)^T`, with the output rows cut
//!   into bands that become extra batch entries ("split-K"), so that the product of a 64-channel
//!   layer has more than a handful of output tiles to spread over the GPU.
//! - bias gradient: the sum of the output gradient over batch and space.
//!
//! Memory: the im2col matrix is `k*k` times the input; it is built chunk by chunk (whole images
//! first, then bands of output rows) so that no chunk exceeds [`cols_budget`] elements, 64 Mi
//! (256 MiB in f32) unless `SEGKIT_GEMM_CONV_MIB` says otherwise. The largest chunk built so
//! far is kept for `segkit bench` to report ([`peak_cols_bytes`]). Only the layer's input is kept
//! for backward (as Burn's convolution does), never its im2col: the backward pass rebuilds it.
//!
//! Scope: the same layers as `cpu_conv` (stride 1, dilation 1, one group, symmetric explicit
//! padding, with a bias), on a cubecl device when `conv::GpuConv::Gemm` is chosen. The algorithm
//! is written on Burn's backend operations only, for any backend; it is also implemented for flex
//! so that the CPU tests check it against Burn's convolution, values and all three gradients.
//! Any float dtype runs as it comes: with f16 tensors the products are f16 GEMMs, which is what
//! `train.precision = "f16-mixed"` is for.
//!
//! Invariant: values and gradients equal Burn's conv2d up to float summation order (tests below
//! on flex; `kernels/gemm-conv` in the selftest on each GPU adapter).

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Slice};
use burn_autodiff::Autodiff;
use burn_autodiff::NodeId;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Default bound of one im2col chunk, in elements (256 MiB of f32).
const DEFAULT_COLS_ELEMS: usize = 64 << 20;

/// Output rows per weight-gradient band: a band's `rows * W'` is the inner dimension of its
/// product; about 8k keeps each product long enough to be efficient while giving a 512x512 layer
/// 32 bands per image.
const WGRAD_BAND_ELEMS: usize = 8 << 10;

static BUDGET: AtomicUsize = AtomicUsize::new(0);

/// The largest im2col chunk, in elements: [`set_cols_budget`]'s, else `SEGKIT_GEMM_CONV_MIB`
/// (MiB of f32), else 64 Mi.
pub fn cols_budget() -> usize {
    match BUDGET.load(Ordering::Relaxed) {
        0 => {
            let elems = std::env::var("SEGKIT_GEMM_CONV_MIB")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&m| m > 0)
                .map_or(DEFAULT_COLS_ELEMS, |mib| (mib << 20) / 4);
            BUDGET.store(elems, Ordering::Relaxed);
            elems
        }
        elems => elems,
    }
}

/// Back to the bound from `SEGKIT_GEMM_CONV_MIB` or the default.
pub fn reset_cols_budget() {
    BUDGET.store(0, Ordering::Relaxed);
}

/// Bounds every later im2col chunk of this process to `elems` elements (at least one output row
/// is always built at once).
pub fn set_cols_budget(elems: usize) {
    BUDGET.store(elems.max(1), Ordering::Relaxed);
}

static PEAK_COLS_BYTES: AtomicU64 = AtomicU64::new(0);

/// The largest im2col chunk any GEMM convolution of this process has built, in bytes.
pub fn peak_cols_bytes() -> u64 {
    PEAK_COLS_BYTES.load(Ordering::Relaxed)
}

fn note_cols(elems: usize, elem_bytes: usize) {
    PEAK_COLS_BYTES.fetch_max((elems * elem_bytes) as u64, Ordering::Relaxed);
}

#[backend_extension(Cube, Flex, Autodiff)]
pub trait GemmConv: Backend {
    /// `conv2d(x, weight, bias)` with stride 1, dilation 1, one group and zero padding
    /// `pad_h`/`pad_w` on both sides, as GEMMs (see the module docs).
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self>;
}

/// `conv2d(x, weight, bias)` with stride 1 and zero padding `pad` through the GEMM path, on any
/// device with an implementation (cubecl, flex, and autodiff over them).
pub fn conv2d_gemm(x: burn::tensor::Tensor<4>, weight: burn::tensor::Tensor<4>, bias: burn::tensor::Tensor<1>, pad: [usize; 2]) -> burn::tensor::Tensor<4> {
    let y = burn::backend::Dispatch::conv2d_gemm(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), pad[0], pad[1]);
    burn::tensor::Tensor::from_dispatch(y)
}

impl GemmConv for Cube {
    fn conv2d_gemm(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, ph: usize, pw: usize) -> FloatTensor<Self> {
        forward::<Self>(x, weight, Some(bias), [ph as isize, pw as isize])
    }
}

impl GemmConv for Flex {
    fn conv2d_gemm(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, ph: usize, pw: usize) -> FloatTensor<Self> {
        forward::<Self>(x, weight, Some(bias), [ph as isize, pw as isize])
    }
}

/// Zero-pads (positive `pad`) or crops (negative) the two spatial dimensions of `x`, both sides.
fn pad_or_crop<B: Backend>(x: FloatTensor<B>, pad: [isize; 2]) -> FloatTensor<B> {
    if pad == [0, 0] {
        return x;
    }
    let [n, c, h, w] = x.shape().dims();
    // Crop first (a view), then pad what is left.
    let crop = |p: isize, len: usize| if p < 0 { Slice::from(p.unsigned_abs()..len - p.unsigned_abs()) } else { Slice::full() };
    let x = if pad.iter().any(|&p| p < 0) {
        B::float_slice(x, &[Slice::full(), Slice::full(), crop(pad[0], h), crop(pad[1], w)])
    } else {
        x
    };
    let [_, _, h, w] = x.shape().dims();
    let [ph, pw] = pad.map(|p| p.max(0) as usize);
    if ph == 0 && pw == 0 {
        return x;
    }
    let dtype = x.dtype();
    let zeros = B::float_zeros(Shape::new([n, c, h + 2 * ph, w + 2 * pw]), &x.device(), dtype.into());
    let region = [Slice::full(), Slice::full(), Slice::from(ph..ph + h), Slice::from(pw..pw + w)];
    B::float_slice_assign(zeros, &region, x)
}

/// im2col of output rows `r0..r1` of images `n0..n1` from the padded input `xp`:
/// `[images, C_in*kh*kw, rows*W']`, in (channel, tap row, tap column) order, the order of a
/// reshaped `[C_out, C_in, kh, kw]` weight.
fn im2col<B: Backend>(xp: &FloatTensor<B>, images: [usize; 2], rows: [usize; 2], kernel: [usize; 2]) -> FloatTensor<B> {
    let [_, c, _, wp] = xp.shape().dims();
    let [kh, kw] = kernel;
    let w_out = wp + 1 - kw;
    let band = B::float_slice(
        xp.clone(),
        &[Slice::from(images[0]..images[1]), Slice::full(), Slice::from(rows[0]..rows[1] + kh - 1), Slice::full()],
    );
    // [n, c, rows, w_out, kh, kw]: views, no copy yet.
    let cols = B::float_unfold(B::float_unfold(band, 2, kh, 1), 3, kw, 1);
    // [n, c, kh, kw, rows, w_out] -> [n, c*kh*kw, rows*w_out]: the one copy.
    let cols = B::float_permute(cols, &[0, 1, 4, 5, 2, 3]);
    let n = images[1] - images[0];
    let elems = n * c * kh * kw * (rows[1] - rows[0]) * w_out;
    note_cols(elems, cols.dtype().size());
    B::float_reshape(cols, Shape::new([n, c * kh * kw, (rows[1] - rows[0]) * w_out]))
}

/// Chunks of `(images, rows)` covering an `n x h_out` output, each with at most `budget` im2col
/// elements given `per_row` elements per output row of one image: whole images while they fit,
/// else bands of rows of one image (at least one row).
fn chunks(n: usize, h_out: usize, per_row: usize, budget: usize) -> Vec<([usize; 2], [usize; 2])> {
    let per_image = per_row * h_out;
    let mut out = Vec::new();
    if per_image <= budget {
        let images = (budget / per_image.max(1)).clamp(1, n);
        let mut i = 0;
        while i < n {
            let j = (i + images).min(n);
            out.push(([i, j], [0, h_out]));
            i = j;
        }
    } else {
        let rows = (budget / per_row.max(1)).clamp(1, h_out);
        for i in 0..n {
            let mut r = 0;
            while r < h_out {
                let s = (r + rows).min(h_out);
                out.push(([i, i + 1], [r, s]));
                r = s;
            }
        }
    }
    out
}

/// The convolution of `x` by `weight` (plus `bias`) with padding `pad` (negative: a crop), as
/// chunked batched GEMMs.
fn forward<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, bias: Option<FloatTensor<B>>, pad: [isize; 2]) -> FloatTensor<B> {
    let [c_out, c_in, kh, kw] = weight.shape().dims();
    let xp = pad_or_crop::<B>(x, pad);
    let [n, _, hp, wp] = xp.shape().dims();
    let (h_out, w_out) = (hp + 1 - kh, wp + 1 - kw);
    let ck = c_in * kh * kw;
    let wm = B::float_reshape(weight, Shape::new([1, c_out, ck]));
    let bias = bias.map(|b| B::float_reshape(b, Shape::new([1, c_out, 1])));
    let product = |cols: FloatTensor<B>, images: usize, rows: usize| {
        let y = B::float_matmul(wm.clone(), cols);
        let y = match &bias {
            Some(b) => B::float_add(y, b.clone()),
            None => y,
        };
        B::float_reshape(y, Shape::new([images, c_out, rows, w_out]))
    };
    if kh == 1 && kw == 1 {
        // A 1x1 convolution is the product itself: no im2col.
        let cols = B::float_reshape(xp, Shape::new([n, c_in, h_out * w_out]));
        return product(cols, n, h_out);
    }
    let mut by_image: Vec<FloatTensor<B>> = Vec::new();
    let mut bands: Vec<FloatTensor<B>> = Vec::new();
    for (images, rows) in chunks(n, h_out, ck * w_out, cols_budget()) {
        let cols = im2col::<B>(&xp, images, rows, [kh, kw]);
        let y = product(cols, images[1] - images[0], rows[1] - rows[0]);
        if rows == [0, h_out] {
            by_image.push(y);
        } else {
            bands.push(y);
            if rows[1] == h_out {
                by_image.push(B::float_cat(std::mem::take(&mut bands), 2));
            }
        }
    }
    if by_image.len() == 1 { by_image.pop().expect("one chunk") } else { B::float_cat(by_image, 0) }
}

/// `dW = sum_n dY_n x im2col(x_n)^T`, band by band of output rows, bands as batch entries.
fn weight_grad<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>, kernel: [usize; 2], pad: [usize; 2]) -> FloatTensor<B> {
    let [_, c_in, _, _] = x.shape().dims();
    let [n, c_out, h_out, w_out] = grad.shape().dims();
    let [kh, kw] = kernel;
    let ck = c_in * kh * kw;
    let xp = pad_or_crop::<B>(x, [pad[0] as isize, pad[1] as isize]);
    let band = (WGRAD_BAND_ELEMS / w_out.max(1)).clamp(1, h_out);
    let mut total: Option<FloatTensor<B>> = None;
    for (images, rows) in chunks(n, h_out, ck * w_out, cols_budget()) {
        let (imgs, len) = (images[1] - images[0], rows[1] - rows[0]);
        // Bands of `band` rows as extra batch entries where they divide the chunk evenly.
        let s = if len % band == 0 { len / band } else { 1 };
        let rs = len / s;
        let cols = if kh == 1 && kw == 1 && pad == [0, 0] {
            let v = B::float_slice(
                xp.clone(),
                &[Slice::from(images[0]..images[1]), Slice::full(), Slice::from(rows[0]..rows[1]), Slice::full()],
            );
            B::float_reshape(v, Shape::new([imgs, ck, len * w_out]))
        } else {
            im2col::<B>(&xp, images, rows, kernel)
        };
        // [imgs, ck, s, rs*w] -> [imgs, s, rs*w, ck] -> [imgs*s, rs*w, ck]
        let cols = B::float_reshape(cols, Shape::new([imgs, ck, s, rs * w_out]));
        let cols = B::float_permute(cols, &[0, 2, 3, 1]);
        let cols = B::float_reshape(cols, Shape::new([imgs * s, rs * w_out, ck]));
        let g = B::float_slice(
            grad.clone(),
            &[Slice::from(images[0]..images[1]), Slice::full(), Slice::from(rows[0]..rows[1]), Slice::full()],
        );
        // [imgs, c_out, s, rs*w] -> [imgs, s, c_out, rs*w] -> [imgs*s, c_out, rs*w]
        let g = B::float_reshape(g, Shape::new([imgs, c_out, s, rs * w_out]));
        let g = B::float_permute(g, &[0, 2, 1, 3]);
        let g = B::float_reshape(g, Shape::new([imgs * s, c_out, rs * w_out]));
        let part = B::float_matmul(g, cols); // [imgs*s, c_out, ck]
        let part = if imgs * s > 1 { B::float_sum_dim(part, 0) } else { part };
        total = Some(match total {
            None => part,
            Some(t) => B::float_add(t, part),
        });
    }
    let total = total.expect("a convolution output has at least one row");
    B::float_reshape(total, Shape::new([c_out, c_in, kh, kw]))
}

/// `dX`: the forward GEMM convolution of the output gradient by the transposed, flipped weights.
fn input_grad<B: Backend>(weight: FloatTensor<B>, grad: FloatTensor<B>, pad: [usize; 2]) -> FloatTensor<B> {
    let [_, _, kh, kw] = weight.shape().dims();
    let flipped = B::float_flip(B::float_swap_dims(weight, 0, 1), &[2, 3]);
    let pad = [kh as isize - 1 - pad[0] as isize, kw as isize - 1 - pad[1] as isize];
    forward::<B>(grad, flipped, None, pad)
}

fn bias_grad<B: Backend>(grad: FloatTensor<B>) -> FloatTensor<B> {
    let [_, c_out, _, _] = grad.shape().dims();
    let g = B::float_sum_dim(B::float_sum_dim(B::float_sum_dim(grad, 0), 2), 3);
    B::float_reshape(g, Shape::new([c_out]))
}

impl<B: Backend + GemmConv, C: CheckpointStrategy> GemmConv for Autodiff<B, C> {
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GemmConvBackward;

        impl<B: Backend> Backward<B, 3> for GemmConvBackward {
            type State = (NodeId, NodeId, [usize; 2]);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_x, node_weight, node_bias] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, weight_state, pad) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, input_grad::<B>(weight.clone(), grad.clone(), pad));
                }
                if let Some(node) = node_weight {
                    let [_, _, kh, kw] = weight.shape().dims();
                    grads.register::<B>(node.id, weight_grad::<B>(x, grad.clone(), [kh, kw], pad));
                }
                if let Some(node) = node_bias {
                    grads.register::<B>(node.id, bias_grad::<B>(grad));
                }
            }
        }

        match GemmConvBackward.prepare::<C>([x.node(), weight.node(), bias.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                prep.finish(
                    (x_state, weight_state, [pad_h, pad_w]),
                    B::conv2d_gemm(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), pad_h, pad_w),
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::conv2d_gemm(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), pad_h, pad_w))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{GpuConv, as_dtype};
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::prelude::*;
    use burn::tensor::{DType, TensorData};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    /// The GEMM path on flex (`Dispatch::conv2d_gemm` under autodiff) against Burn's own
    /// convolution: values and all three gradients within 1e-5 relative (1e-3 in f16 against f32).
    /// `(n, c_in, c_out, h, w, k, pad, budget)`; `budget` is the im2col bound in elements.
    fn check(case: (usize, usize, usize, usize, usize, usize, usize, usize), dtype: DType) {
        let (n, c_in, c_out, h, w, k, pad, budget) = case;
        set_cols_budget(budget);
        let device = Device::flex().autodiff();
        let mut rng = StdRng::seed_from_u64((n * 31 + c_in * 7 + h + k + pad) as u64);
        let mut draw = |len: usize| (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect::<Vec<f32>>();
        let conv = Conv2dConfig::new([c_in, c_out], [k, k]).with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad));
        let mut conv = conv.init(&device);
        conv.bias = Some(burn::module::Param::from_tensor(Tensor::<1>::from_data(TensorData::new(draw(c_out), [c_out]), &device)));
        let x = draw(n * c_in * h * w);
        let dy = {
            let (ho, wo) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
            Tensor::<4>::from_data(TensorData::new(draw(n * c_out * ho * wo), [n, c_out, ho, wo]), &device)
        };
        let run = |gemm: bool| {
            let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, c_in, h, w]), &device).require_grad();
            let y = if gemm {
                let xd = as_dtype(xt.clone(), dtype);
                let (wd, bd) = (as_dtype(conv.weight.val(), dtype), as_dtype(conv.bias.as_ref().unwrap().val(), dtype));
                as_dtype(conv2d_gemm(xd, wd, bd, [pad, pad]), DType::F32)
            } else {
                conv.forward(xt.clone())
            };
            let grads = (y.clone() * dy.clone()).sum().backward();
            let g = |t: Tensor<4>| t.grad(&grads).expect("a gradient").into_data().try_to_vec::<f32>().unwrap();
            let bg = conv.bias.as_ref().unwrap().val().grad(&grads).expect("a bias gradient");
            (y.into_data().try_to_vec::<f32>().unwrap(), g(xt), g(conv.weight.val()), bg.into_data().try_to_vec::<f32>().unwrap())
        };
        let (a, b) = (run(true), run(false));
        let limit = if dtype == DType::F32 { 1e-5 } else { 2e-3 };
        for (what, p, q) in [("output", &a.0, &b.0), ("input gradient", &a.1, &b.1), ("weight gradient", &a.2, &b.2), ("bias gradient", &a.3, &b.3)] {
            assert_eq!(p.len(), q.len(), "case {case:?}: {what} sizes");
            let scale = q.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let diff = p.iter().zip(q).fold(0f32, |m, (u, v)| m.max((u - v).abs()));
            assert!(diff <= limit * scale, "case {case:?} {dtype:?}: {what} differs by {diff} of {scale}");
        }
        reset_cols_budget();
    }

    #[test]
    fn values_and_gradients_match_burns_conv() {
        for case in [
            (2, 3, 4, 9, 11, 3, 1, DEFAULT_COLS_ELEMS), // one chunk, "same" padding
            (2, 3, 4, 9, 11, 3, 0, DEFAULT_COLS_ELEMS), // unpadded (U-Net)
            (3, 2, 5, 7, 6, 3, 1, 2 * 18 * 6),          // chunks of whole images (2 + 1)
            (2, 2, 3, 10, 8, 3, 1, 3 * 18 * 8),         // bands of 3 rows (last band of 1)
            (1, 2, 3, 4, 5, 3, 6, DEFAULT_COLS_ELEMS),  // padding past k - 1: the input gradient crops
            (2, 4, 3, 9, 9, 7, 0, DEFAULT_COLS_ELEMS),  // 7x7 (fc6)
            (2, 5, 3, 6, 7, 1, 0, DEFAULT_COLS_ELEMS),  // 1x1 (fc7, score layers): no im2col
            (1, 3, 2, 2, 3, 3, 2, 1),                   // one row per chunk
        ] {
            check(case, DType::F32);
        }
        // Bands that divide the rows become batch entries of the weight-gradient product.
        check((1, 2, 3, 64, 260, 3, 1, DEFAULT_COLS_ELEMS), DType::F32);
    }

    #[test]
    fn default_is_known() {
        assert_eq!(GpuConv::parse(GpuConv::DEFAULT.name()), Some(GpuConv::DEFAULT));
    }

    #[test]
    fn chunks_cover_the_output_once_within_the_budget() {
        for (n, h, per_row, budget) in [(4, 10, 3, 1000), (4, 10, 3, 60), (3, 10, 7, 20), (2, 5, 100, 1), (1, 1, 1, 1)] {
            let c = chunks(n, h, per_row, budget);
            let mut seen = vec![0u8; n * h];
            for ([i0, i1], [r0, r1]) in &c {
                assert!(i1 > i0 && r1 > r0);
                let elems = (i1 - i0) * (r1 - r0) * per_row;
                assert!(elems <= budget.max(per_row), "{:?}: chunk of {elems} over {budget}", (n, h, per_row, budget));
                for i in *i0..*i1 {
                    for r in *r0..*r1 {
                        seen[i * h + r] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{:?}: {seen:?}", (n, h, per_row, budget));
        }
    }
}
