//! Stride-1 convolutions for Burn's CPU backend (flex): a direct forward kernel and a direct
//! weight gradient, instead of Burn's generic formulations.
//!
//! Why, forward: flex's convolution is a tiled im2col + GEMM with layout changes around it; on
//! FCN's 64-channel 424x424 layers the copies cost more than the product. The direct kernel
//! pads the input once and runs the k*k products `W_ij [C_out, C_in] x shift_ij(x)` as `gemm`
//! calls on strided views of it, accumulating into cache-sized output tiles: no im2col buffer.
//! Why, weight gradient: Burn's autodiff computes it as another convolution, of the input (batch
//! and channels swapped) by the output gradient used as an H x W kernel, giving a k x k output.
//! On flex that ran at 56-115 GFLOP/s, 1.7-2.5x the time of the forward pass, and it was the
//! largest single cost of a training step (`segkit bench --conv` prints the split). Here it is
//! `dW_ij = dY x shift_ij(x)^T`, k*k `gemm` calls on the same strided views (large maps), or one
//! GEMM against an im2col built from tensor ops (small maps with wide layers, and any backend
//! without the direct path). The input gradient stays Burn's (a direct version of it measured no
//! faster, again on 2026-12-03: backward +10% on U-Net). Measured effect, in order
//! (docs/BENCHMARKS.md): the im2col GEMM gradient -21% (FCN-8s) and -26% (U-Net) per training
//! step; the direct forward FCN-8s -14% and its inference -34%; the direct weight gradient FCN-8s
//! -11% and U-Net -7%; narrow maps without the padded-width waste and split over output channels
//! (below), FCN-8s inference -32% and U-Net -21%.
//!
//! Wide 3x3 layers on large maps (at least 16 channels in and out and 128 output tiles: all but
//! conv1_1, U-Net's first convolution and its bottleneck) go further, through Winograd
//! F(2x2, 3x3) in `cpu_winograd.rs`, for the forward pass and both gradients: against these
//! kernels, U-Net training 1.21x -> 0.93-0.99x PyTorch's time and FCN-8s inference 1.23x ->
//! 0.69-0.98x on an AVX-512 EPYC (docs/BENCHMARKS.md). The kernels here serve the rest (conv1_1,
//! fc6, fc7, the 1x1 score layers, small maps) and, with `segkit bench --no-winograd`, every
//! layer.
//!
//! Inference (no autodiff) fuses what follows a convolution into the kernels' output loop:
//! the ReLU ([`conv2d_relu`]) and, through `layers::conv_bn_relu`, a batch norm's running
//! statistics folded into the weights and bias ([`conv2d_relu_with`]), so each layer's output is
//! written once. Under autodiff the ReLU and batch norm stay separate tracked operations.
//! Measured (docs/BENCHMARKS.md, Zen 3): U-Net and FCN-8s inference 5-6% faster, evaluating a
//! U-Net with batch norm about 15% faster.
//!
//! Work is split into rayon tasks by output row tiles and, where a map gives fewer tiles than
//! twice the threads (fc6 at 224x224 gives one), by blocks of output channels too, so no thread
//! idles through a layer; the weight gradient's tasks come in multiples of the thread count.
//!
//! Scope, checked by [`applies`]: CPU (flex) devices, stride 1, dilation 1, one group, symmetric
//! explicit padding, with a bias — every convolution in FCN (conv1_1 ... fc7, score layers) and
//! U-Net. Anything else, and every GPU device, takes Burn's `Conv2d::forward` unchanged; tensors
//! other than f32 take flex's own convolution and the tensor-op gradient inside the same layer.
//!
//! Invariant: the values and gradients equal Burn's conv2d up to float summation order (the test
//! compares both on random data, shapes chosen to hit every tiling, banding and padding branch
//! and both weight-gradient paths).

use crate::conv::stride1_padding;
use crate::cpu_winograd;
use burn::backend::ops::{ActivationOps, ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DispatchDevice, Flex, TensorMetadata, backend_extension};
use burn::nn::conv::Conv2d;
use burn::tensor::DType;
use burn::tensor::{Shape, Slice, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::NodeId;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest im2col band built at once (f32 elements; 64 MiB), so the weight gradient of FCN's
/// 424x424 first layers does not hold a 9x copy of the whole input.
const BAND_ELEMS: usize = 16 << 20;

#[backend_extension(Flex, Autodiff)]
pub trait CpuConv: Backend {
    /// `conv2d(x, weight, bias)` with stride 1, dilation 1, one group and zero padding
    /// `pad_h`/`pad_w` on both sides.
    fn conv2d_stride1(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self>;

    /// `relu(conv2d_stride1(x, weight, bias))`. On flex the ReLU is applied as each output value
    /// is written, sparing inference a pass over every layer's output; under autodiff it is the
    /// two tracked operations, so gradients are exactly as without fusion.
    fn conv2d_stride1_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self>;
}

/// What the kernels apply to each output value as they write it (bias included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Identity,
    /// Flex's ReLU, NaN kept: the fused result is bit for bit the unfused one.
    Relu,
}

impl Activation {
    #[inline(always)]
    pub(crate) fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => {
                if v.is_nan() || v > 0.0 {
                    v
                } else {
                    0.0
                }
            }
        }
    }
}

fn options(pad_h: usize, pad_w: usize) -> ConvOptions<2> {
    ConvOptions::new([1, 1], [pad_h, pad_w], [1, 1], 1)
}

impl CpuConv for Flex {
    fn conv2d_stride1(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self> {
        flex_conv(x, weight, bias, [pad_h, pad_w], Activation::Identity)
    }

    fn conv2d_stride1_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self> {
        flex_conv(x, weight, bias, [pad_h, pad_w], Activation::Relu)
    }
}

/// Winograd for wide 3x3 layers, the direct kernel for the rest (f32), flex's own convolution
/// (and ReLU) otherwise.
fn flex_conv(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, pad: [usize; 2], act: Activation) -> FlexTensor {
    if let Some(y) = winograd_f32(&x, &weight, &bias, pad, act) {
        return y;
    }
    if let Some(y) = direct_conv_f32(&x, &weight, Some(&bias), pad, act) {
        return y;
    }
    let y = Flex::conv2d(x, weight, Some(bias), options(pad[0], pad[1]));
    match act {
        Activation::Identity => y,
        Activation::Relu => Flex::relu(y),
    }
}

/// The environment variable that caps the instruction set of the CPU's matrix-multiply kernels
/// (`gemm`, under flex's matmul and the kernels here): read by the patched `gemm-common` at the
/// first product (patches/README.md), so one AVX-512 machine can benchmark the AVX2 kernels too.
pub const ISA_VAR: &str = "SEGKIT_GEMM_ISA";

/// What [`ISA_VAR`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsaCap {
    /// Unset, `native` or `avx512`: the best the CPU has (the default).
    Native,
    /// `avx2`: no AVX-512 kernels even where the CPU has them.
    Avx2,
}

impl IsaCap {
    /// The cap for a value of [`ISA_VAR`] (`None`: unset). Exact, case-insensitive matches only,
    /// as the patched `gemm-common` reads it: a value it would ignore is an error here.
    pub fn parse(value: Option<&str>) -> Result<IsaCap, String> {
        match value {
            None | Some("") => Ok(IsaCap::Native),
            Some(v) if v.eq_ignore_ascii_case("native") || v.eq_ignore_ascii_case("avx512") => Ok(IsaCap::Native),
            Some(v) if v.eq_ignore_ascii_case("avx2") => Ok(IsaCap::Avx2),
            Some(v) => Err(format!(
                "{ISA_VAR}={v:?}: expected `avx2` (cap the CPU kernels at AVX2) or `avx512` / `native` (the \
                 CPU's best, the default)"
            )),
        }
    }

    /// The cap of this process's environment; an error names a bad value.
    pub fn from_env() -> Result<IsaCap, String> {
        match std::env::var_os(ISA_VAR) {
            None => Ok(IsaCap::Native),
            Some(v) => IsaCap::parse(Some(v.to_str().ok_or_else(|| format!("{ISA_VAR}: not UTF-8: {v:?}"))?)),
        }
    }
}

/// The instruction set `gemm` dispatches to in this process, in words ("AVX-512", "AVX2+FMA",
/// ...), asked of the same function its dispatch asks. The workspace builds flex's `gemm` with its
/// AVX-512 kernels (Burn's `x86-v4` feature), so a CPU with AVX-512 uses them unless capped.
pub fn kernel_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && gemm_common::isa_cap::allows("avx512f") {
            "AVX-512"
        } else if std::arch::is_x86_feature_detected!("fma") {
            "AVX2+FMA"
        } else {
            "SSE (scalar gemm)"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "NEON"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "portable"
    }
}

/// [`cpu_winograd::conv3x3_f32`] where it [`takes`](cpu_winograd::takes) the layer (f32 only).
fn winograd_f32(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    pad: [usize; 2],
    act: Activation,
) -> Option<FlexTensor> {
    let [c_out, c_in, kh, kw] = weight.layout().shape().dims();
    let [n, _, h, w] = x.layout().shape().dims();
    let out = [(h + 2 * pad[0] + 1).saturating_sub(kh), (w + 2 * pad[1] + 1).saturating_sub(kw)];
    if !cpu_winograd::takes(c_in, c_out, [kh, kw], n, out) {
        return None;
    }
    let (x, weight, bias) = (x.to_contiguous(), weight.to_contiguous(), bias.to_contiguous());
    let dims = x.layout().shape().dims();
    let ws = weight.as_slice()?;
    cpu_winograd::conv3x3_f32(
        x.as_slice()?,
        dims,
        ws,
        cpu_winograd::Kernels::AsGiven,
        c_out,
        Some(bias.as_slice()?),
        pad,
        act,
    )
}

/// A raw pointer that may cross into rayon tasks; each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so closures capture the whole (Send) wrapper rather than its raw field.
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Direct stride-1 convolution on flex's memory (f32; `None` for other dtypes or shapes):
/// `y[:, p] = sum_{i,j} W_ij [C_out, C_in] x x_p[:, p + i*W_p + j]`, where `x_p` is the input
/// zero-padded once and flattened per channel with row length `W_p`. Each `x_p` shift is a plain
/// strided matrix, so the k*k products are `gemm` calls accumulating into one output tile, with
/// no im2col buffer. Output positions are computed at the padded width (`W_p`) and the valid
/// `W_out` columns copied out with the bias; tiles of whole output rows small enough to stay in
/// cache are spread over rayon's threads.
///
/// On narrow maps the padded width wastes `(k_w - 1) / W_p` of the products: 43% for fc6's 7x7
/// on FCN's 14-wide pool5 at 224x224, 7% for a 3x3 at width 27. Where that exceeds 1/16, the
/// padded input is first copied once per kernel column `j`, each copy `x_j` holding exactly the
/// `W_out` columns that offset reads (`x_j[:, r, c] = x_p[:, r, c + j]`), and the products run on
/// those at row length `W_out`: every computed position is kept, for `k_w` copies of a small map.
/// `act` is applied to each value (bias included) as it is copied out.
fn direct_conv_f32(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    pad: [usize; 2],
    act: Activation,
) -> Option<FlexTensor> {
    use rayon::prelude::*;
    let x = x.to_contiguous();
    let weight = weight.to_contiguous();
    let xs: &[f32] = x.as_slice()?;
    let ws: &[f32] = weight.as_slice()?;
    let bias: Option<Vec<f32>> = match bias {
        Some(b) => Some(b.to_contiguous().as_slice::<f32>()?.to_vec()),
        None => None,
    };
    let [n, c_in, h, w] = x.layout().shape().dims();
    let [c_out, c_in_w, kh, kw] = weight.layout().shape().dims();
    if c_in_w != c_in || [n, c_in, c_out, h, w].contains(&0) {
        return None;
    }
    let (hp, wp) = (h + 2 * pad[0], w + 2 * pad[1]);
    let h_out = (hp + 1).checked_sub(kh).filter(|&v| v > 0)?;
    let w_out = (wp + 1).checked_sub(kw).filter(|&v| v > 0)?;
    let (xp, plane) = padded_planes(xs, [h, w], pad);
    // The products' input: `src` with rows of `row_len` and channel planes of `src_plane`, and
    // where the view of image `b` for kernel offset (i, j) starts, minus its row offset.
    let compact = kw > 1 && 16 * (kw - 1) > wp;
    let (src, row_len, src_plane) = if compact {
        let c_plane = hp * w_out;
        let mut xc = vec![0f32; kw * n * c_in * c_plane];
        xc.par_chunks_mut(c_plane).enumerate().for_each(|(k, dst)| {
            let (j, bc) = (k / (n * c_in), k % (n * c_in));
            for (r, row) in dst.chunks_mut(w_out).enumerate() {
                row.copy_from_slice(&xp[bc * plane + r * wp + j..][..w_out]);
            }
        });
        (xc, w_out, c_plane)
    } else {
        (xp, wp, plane)
    };
    let view_start = |b: usize, j: usize| {
        if compact { (j * n + b) * c_in * src_plane } else { b * c_in * src_plane + j }
    };
    let mut out = FlexTensor::empty(Shape::new([n, c_out, h_out, w_out]), DType::F32);
    let out_ptr = OutPtr(out.storage_mut::<f32>().as_mut_ptr());
    // About 1 MiB of accumulator per tile, at least one output row.
    let rows_per_tile = ((256 << 10) / (c_out * row_len)).clamp(1, h_out);
    let tiles = h_out.div_ceil(rows_per_tile);
    // Small maps give fewer row tiles than threads (fc6 at 224x224: one), so the output channels
    // are split too, into blocks of whole 16-row panels, until there are two tasks per thread.
    let threads = rayon::current_num_threads();
    let co_blocks =
        if n * tiles >= 2 * threads { 1 } else { (2 * threads).div_ceil(n * tiles).min(c_out.div_ceil(16)) };
    let co_block = c_out.div_ceil(co_blocks).next_multiple_of(16).min(c_out);
    let co_blocks = c_out.div_ceil(co_block);
    let k2 = kh * kw;
    (0..n * tiles * co_blocks).into_par_iter().for_each(|task| {
        let (b, t, cb) = (task / (tiles * co_blocks), task / co_blocks % tiles, task % co_blocks);
        let r0 = t * rows_per_tile;
        let rows = rows_per_tile.min(h_out - r0);
        let len = rows * row_len;
        let co0 = cb * co_block;
        let co_len = co_block.min(c_out - co0);
        let mut acc = vec![0f32; co_len * len];
        for i in 0..kh {
            for j in 0..kw {
                let first = i == 0 && j == 0;
                let rhs = view_start(b, j) + (r0 + i) * row_len;
                // SAFETY: lhs is W[co0.., :, i, j] (co_len x c_in, strides c_in*k2 and k2) inside `ws`;
                // rhs is the (i, j) view of image b (c_in x len, strides src_plane and 1).
                // Padded width: it is x_p shifted by (r0 + i) * wp + j, whose last element,
                // (c_in - 1) * plane + (r0 + rows - 1 + i) * wp + wp - 1 + j, lies inside the
                // plane thanks to the spare row. Compact: rows r0 + i .. r0 + i + rows of x_j,
                // all below hp = h_out + kh - 1. dst is `acc` (co_len x len).
                unsafe {
                    gemm::gemm(
                        co_len,
                        len,
                        c_in,
                        acc.as_mut_ptr(),
                        1,
                        len as isize,
                        !first,
                        ws.as_ptr().add(co0 * c_in * k2 + i * kw + j),
                        k2 as isize,
                        (c_in * k2) as isize,
                        src.as_ptr().add(rhs),
                        1,
                        src_plane as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        }
        for (k, co) in (co0..co0 + co_len).enumerate() {
            let bv = bias.as_ref().map_or(0.0, |b| b[co]);
            for r in 0..rows {
                let src = &acc[k * len + r * row_len..][..w_out];
                // SAFETY: output rows r0..r0+rows of channels co0..co0+co_len of image b belong to
                // this task alone.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.at(((b * c_out + co) * h_out + r0 + r) * w_out), w_out)
                };
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = act.apply(s + bv);
                }
            }
        }
    });
    Some(out)
}

/// The input zero-padded by `pad` and laid out plane by plane with row length `w + 2 pad_w`, plus
/// one spare zero row per plane: the last kernel row's shifted views read up to `kw - 1` elements
/// past the padded plane. Returns the buffer and the plane length.
fn padded_planes(xs: &[f32], [h, w]: [usize; 2], pad: [usize; 2]) -> (Vec<f32>, usize) {
    use rayon::prelude::*;
    let wp = w + 2 * pad[1];
    let plane = (h + 2 * pad[0] + 1) * wp;
    let mut xp = vec![0f32; xs.len() / (h * w).max(1) * plane];
    xp.par_chunks_mut(plane).zip(xs.par_chunks(h * w)).for_each(|(dst, src)| {
        for (y, row) in src.chunks(w).enumerate() {
            dst[(y + pad[0]) * wp + pad[1]..][..w].copy_from_slice(row);
        }
    });
    (xp, plane)
}

/// The weight gradient of a stride-1 convolution on flex's memory (f32; `None` otherwise), with
/// no im2col buffer: `dW[:, :, i, j] = dY_ext [C_out, L] x shift_ij(x_p)^T [L, C_in]`, where
/// `x_p` is as in [`direct_conv_f32`] and `dY_ext` is `dY` widened to the padded row length with
/// zero columns, so output position `p` and input position `p + i*W_p + j` line up in both flat
/// layouts (the zero columns cancel the positions that wrap across rows). The products run as
/// `gemm` calls over bands of output rows, spread over rayon's threads, then summed.
fn weight_grad_f32(x: &FlexTensor, dy: &FlexTensor, kernel: [usize; 2], pad: [usize; 2]) -> Option<FlexTensor> {
    use rayon::prelude::*;
    let x = x.to_contiguous();
    let dy = dy.to_contiguous();
    let xs: &[f32] = x.as_slice()?;
    let gs: &[f32] = dy.as_slice()?;
    let [n, c_in, h, w] = x.layout().shape().dims();
    let [n_g, c_out, h_out, w_out] = dy.layout().shape().dims();
    let [kh, kw] = kernel;
    let (hp, wp) = (h + 2 * pad[0], w + 2 * pad[1]);
    if n_g != n || [n, c_in, c_out, h, w, h_out, w_out].contains(&0) || hp + 1 != h_out + kh || wp + 1 != w_out + kw {
        return None;
    }
    // Worth it where the im2col would be large next to the weights (big maps, FCN's first layers
    // and U-Net's outer ones). For small maps with wide layers (fc6, fc7, the 512-channel
    // stages) the per-task partial sums would be the cost: measured slower there, so the caller
    // keeps the im2col GEMM.
    if n * h_out * w_out < 4 * c_out {
        return None;
    }
    let (xp, plane) = padded_planes(xs, [h, w], pad);
    let g_plane = h_out * wp;
    let mut g_ext = vec![0f32; n * c_out * g_plane];
    g_ext.par_chunks_mut(g_plane).zip(gs.par_chunks(h_out * w_out)).for_each(|(dst, src)| {
        for (r, row) in src.chunks(w_out).enumerate() {
            dst[r * wp..][..w_out].copy_from_slice(row);
        }
    });
    let k2 = kh * kw;
    // Enough tasks to keep every thread busy; each is one (image, band, kernel offset) product.
    // Partial sums stay under 16 Mi elements in all.
    let max_parts = ((16 << 20) / (c_out * c_in * n * k2)).max(1);
    let mut bands = (16 / (n * k2)).clamp(1, h_out).min(max_parts);
    // A task count that the threads divide evenly: one image's nine 3x3 offsets on two threads
    // would leave one idle for the ninth.
    let threads = rayon::current_num_threads();
    while (n * bands * k2) % threads != 0 && bands < h_out.min(max_parts) {
        bands += 1;
    }
    let rows_per_band = h_out.div_ceil(bands);
    let bands = h_out.div_ceil(rows_per_band);
    let partials: Vec<(usize, Vec<f32>)> = (0..n * bands * k2)
        .into_par_iter()
        .map(|task| {
            let (b, rest) = (task / (bands * k2), task % (bands * k2));
            let (band, ij) = (rest / k2, rest % k2);
            let (i, j) = (ij / kw, ij % kw);
            let r0 = band * rows_per_band;
            let len = rows_per_band.min(h_out - r0) * wp;
            let mut part = vec![0f32; c_out * c_in];
            // SAFETY: lhs is dY_ext[b] from position r0*wp (c_out x len, strides g_plane and 1)
            // inside `g_ext`; rhs is x_p[b] shifted by (r0 + i)*wp + j, read as len x c_in
            // (strides 1 and plane), whose last element (c_in - 1)*plane + (r0 + i)*wp + j + len - 1
            // is at most (c_in - 1)*plane + hp*wp + kw - 2, inside the last plane thanks to its
            // spare row; dst is `part` (c_out x c_in, row-major).
            unsafe {
                gemm::gemm(
                    c_out,
                    c_in,
                    len,
                    part.as_mut_ptr(),
                    1,
                    c_in as isize,
                    false,
                    g_ext.as_ptr().add(b * c_out * g_plane + r0 * wp),
                    1,
                    g_plane as isize,
                    xp.as_ptr().add(b * c_in * plane + (r0 + i) * wp + j),
                    plane as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            (ij, part)
        })
        .collect();
    let mut out = FlexTensor::empty(Shape::new([c_out, c_in, kh, kw]), DType::F32);
    let dw: &mut [f32] = out.storage_mut();
    for (ij, part) in partials {
        for (k, v) in part.into_iter().enumerate() {
            dw[k * k2 + ij] += v;
        }
    }
    Some(out)
}

/// A backend's own gradients for [`CpuConv`]'s backward pass, where it has them (called on the
/// inner backend, not routed through `Dispatch`); `None` falls back to [`weight_grad`] and to
/// Burn's `conv2d_x_backward`.
pub trait DirectWeightGrad: Backend {
    fn weight_grad_direct(
        x: &FloatTensor<Self>,
        grad: &FloatTensor<Self>,
        kernel: [usize; 2],
        pad: [usize; 2],
    ) -> Option<FloatTensor<Self>>;

    /// The input gradient from the weights and the output gradient.
    fn input_grad_direct(
        weight: &FloatTensor<Self>,
        grad: &FloatTensor<Self>,
        pad: [usize; 2],
    ) -> Option<FloatTensor<Self>>;
}

impl DirectWeightGrad for Flex {
    fn weight_grad_direct(
        x: &FlexTensor,
        grad: &FlexTensor,
        kernel: [usize; 2],
        pad: [usize; 2],
    ) -> Option<FlexTensor> {
        let [_, c_in, _, _] = x.layout().shape().dims();
        let [n, c_out, h_out, w_out] = grad.layout().shape().dims();
        if cpu_winograd::takes(c_in, c_out, kernel, n, [h_out, w_out]) {
            let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
            let dims = x.layout().shape().dims();
            return cpu_winograd::weight_grad_f32(x.as_slice()?, dims, grad.as_slice()?, c_out, pad);
        }
        weight_grad_f32(x, grad, kernel, pad)
    }

    fn input_grad_direct(weight: &FlexTensor, grad: &FlexTensor, pad: [usize; 2]) -> Option<FlexTensor> {
        let [c_out, c_in, kh, kw] = weight.layout().shape().dims();
        let [n, _, h_out, w_out] = grad.layout().shape().dims();
        // The gradient is a convolution from C_out to C_in producing the layer's input map.
        let input = [(h_out + kh - 1).saturating_sub(2 * pad[0]), (w_out + kw - 1).saturating_sub(2 * pad[1])];
        if !cpu_winograd::takes(c_out, c_in, [kh, kw], n, input) {
            return None;
        }
        let (weight, grad) = (weight.to_contiguous(), grad.to_contiguous());
        let dims = grad.layout().shape().dims();
        cpu_winograd::input_grad_f32(grad.as_slice()?, dims, weight.as_slice()?, c_in, pad)
    }
}

/// `dW = sum_n dY_n [C_out, L] x im2col(x_n) [L, C_in*kh*kw]`, built band of output rows by band
/// so the im2col buffer stays under [`BAND_ELEMS`].
fn weight_grad<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
    weight_shape: Shape,
    pad: [usize; 2],
) -> FloatTensor<B> {
    let [n, c_in, h, w] = x.shape().dims();
    let [_, c_out, h_out, w_out] = grad.shape().dims();
    let [_, _, kh, kw] = weight_shape.dims();
    let ck = c_in * kh * kw;
    let device = x.device();
    let dtype = x.dtype();
    // Zero-pad once; the bands below are views into it.
    let xp = if pad == [0, 0] {
        x
    } else {
        let shape = Shape::new([n, c_in, h + 2 * pad[0], w + 2 * pad[1]]);
        let zeros = B::float_zeros(shape, &device, dtype.into());
        let region =
            [Slice::from(0..n), Slice::from(0..c_in), Slice::from(pad[0]..pad[0] + h), Slice::from(pad[1]..pad[1] + w)];
        B::float_slice_assign(zeros, &region, x)
    };
    let rows_per_band = (BAND_ELEMS / (n * w_out * ck).max(1)).clamp(1, h_out);
    let mut total: Option<FloatTensor<B>> = None;
    let mut r0 = 0;
    while r0 < h_out {
        let r1 = (r0 + rows_per_band).min(h_out);
        let rows = r1 - r0;
        // Input rows [r0, r1 + kh - 1) produce output rows [r0, r1).
        let band = B::float_slice(
            xp.clone(),
            &[Slice::from(0..n), Slice::from(0..c_in), Slice::from(r0..r1 + kh - 1), Slice::full()],
        );
        // [n, c_in, rows, w_out, kh] -> [n, c_in, rows, w_out, kh, kw] (views, no copy)
        let cols = B::float_unfold(B::float_unfold(band, 2, kh, 1), 3, kw, 1);
        // [n, c_in, kh, kw, rows, w_out] -> [n, c_in*kh*kw, rows*w_out]: the one copy (im2col),
        // in the order whose innermost run is a contiguous input row. The product below reads it
        // transposed through strides.
        let cols = B::float_permute(cols, &[0, 1, 4, 5, 2, 3]);
        let cols = B::float_reshape(cols, Shape::new([n, ck, rows * w_out]));
        let cols = B::float_swap_dims(cols, 1, 2);
        let g = B::float_slice(
            grad.clone(),
            &[Slice::from(0..n), Slice::from(0..c_out), Slice::from(r0..r1), Slice::full()],
        );
        let g = B::float_reshape(g, Shape::new([n, c_out, rows * w_out]));
        let part = B::float_matmul(g, cols); // [n, c_out, ck]
        total = Some(match total {
            None => part,
            Some(t) => B::float_add(t, part),
        });
        r0 = r1;
    }
    let total = total.expect("a convolution output has at least one row");
    let total = if n > 1 { B::float_sum_dim(total, 0) } else { total };
    B::float_reshape(total, weight_shape)
}

impl<B: Backend + CpuConv + DirectWeightGrad, C: CheckpointStrategy> CpuConv for Autodiff<B, C> {
    fn conv2d_stride1(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct CpuConvBackward;

        impl<B: Backend + DirectWeightGrad> Backward<B, 3> for CpuConvBackward {
            type State = (NodeId, NodeId, NodeId, [usize; 2]);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_x, node_weight, node_bias] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, weight_state, bias_state, pad) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
                let bias = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(bias_state);
                if let Some(node) = node_x {
                    let g = B::input_grad_direct(&weight, &grad, pad).unwrap_or_else(|| {
                        B::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options(pad[0], pad[1]))
                    });
                    grads.register::<B>(node.id, g);
                }
                if let Some(node) = node_weight {
                    let [_, _, kh, kw] = weight.shape().dims();
                    let g = B::weight_grad_direct(&x, &grad, [kh, kw], pad)
                        .unwrap_or_else(|| weight_grad::<B>(x.clone(), grad.clone(), weight.shape(), pad));
                    grads.register::<B>(node.id, g);
                }
                if let Some(node) = node_bias {
                    let g = B::conv2d_bias_backward(x, bias, grad);
                    grads.register::<B>(node.id, g);
                }
            }
        }

        match CpuConvBackward.prepare::<C>([x.node(), weight.node(), bias.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let bias_state = prep.checkpoint(&bias);
                prep.finish(
                    (x_state, weight_state, bias_state, [pad_h, pad_w]),
                    B::conv2d_stride1(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), pad_h, pad_w),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_stride1(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                pad_h,
                pad_w,
            )),
        }
    }

    fn conv2d_stride1_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self> {
        // Tracked as two operations: ReLU's backward needs its output, which fusion would hide.
        <Self as ActivationOps<Self>>::relu(Self::conv2d_stride1(x, weight, bias, pad_h, pad_w))
    }
}

/// Process-wide switch for segkit's CPU kernels (these convolutions and `cpu_pool`'s max
/// pooling), on by default; `segkit bench --burn-conv` turns it off to measure Burn's own path
/// against this one in the same binary.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns segkit's CPU convolution and pooling on or off for every later forward pass in this
/// process.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether `x` lives on the CPU backend (directly or under autodiff) and segkit's CPU kernels
/// are enabled (this switch covers [`crate::cpu_pool`] too).
pub(crate) fn on_flex(x: &Tensor<4>) -> bool {
    ENABLED.load(Ordering::Relaxed) && matches!(x.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// Whether [`conv2d`] takes segkit's path (direct forward, own gradients) for this layer and input.
pub fn applies(conv: &Conv2d, x: &Tensor<4>) -> bool {
    on_flex(x) && stride1_padding(conv).is_some() && !x.dims().contains(&0)
}

/// `conv.forward(x)`, through segkit's kernels where it [`applies`].
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match stride1_padding(conv) {
        Some([ph, pw]) if applies(conv, &x) => {
            let bias = conv.bias.as_ref().expect("stride1_padding checked the bias").val();
            let y = burn::backend::Dispatch::conv2d_stride1(
                x.into_dispatch(),
                conv.weight.val().into_dispatch(),
                bias.into_dispatch(),
                ph,
                pw,
            );
            Tensor::from_dispatch(y)
        }
        _ => conv.forward(x),
    }
}

/// `relu(conv.forward(x))`, through segkit's kernels where it [`applies`]; on a device without
/// autodiff (inference, validation) the ReLU is fused into the kernels' output loop.
pub fn conv2d_relu(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match stride1_padding(conv) {
        Some(pad) if applies(conv, &x) => {
            let bias = conv.bias.as_ref().expect("stride1_padding checked the bias").val();
            stride1_relu(x, conv.weight.val(), bias, pad)
        }
        _ => burn::tensor::activation::relu(conv.forward(x)),
    }
}

/// [`conv2d_relu`] with `weight` and `bias` in place of the layer's own (same shapes, the
/// layer's stride and padding): a batch norm folded into the convolution
/// (`layers::conv_bn_relu`).
pub fn conv2d_relu_with(conv: &Conv2d, weight: Tensor<4>, bias: Tensor<1>, x: Tensor<4>) -> Tensor<4> {
    match stride1_padding(conv) {
        Some(pad) if applies(conv, &x) => stride1_relu(x, weight, bias, pad),
        _ => {
            let mut conv = conv.clone();
            conv.weight = burn::module::Param::from_tensor(weight);
            conv.bias = Some(burn::module::Param::from_tensor(bias));
            burn::tensor::activation::relu(conv.forward(x))
        }
    }
}

fn stride1_relu(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, [ph, pw]: [usize; 2]) -> Tensor<4> {
    let y = burn::backend::Dispatch::conv2d_stride1_relu(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        ph,
        pw,
    );
    Tensor::from_dispatch(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Device;
    use burn::tensor::activation::relu;

    fn max_rel_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-6);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// Values and all three gradients through [`conv2d`] against Burn's `Conv2d::forward`, on
    /// the CPU backend under autodiff. `(n, c_in, c_out, h, w, k, pad)`.
    fn check(case: (usize, usize, usize, usize, usize, usize, usize)) {
        let (n, c_in, c_out, h, w, k, pad) = case;
        let device = Device::flex().autodiff();
        // Data from a generator seeded by the case, so that every run tests the same values
        // (the assertion that the ReLU zeroes something depends on them for the tiny cases).
        use rand::{RngExt, SeedableRng};
        let mut rng =
            rand::rngs::StdRng::seed_from_u64((n * 31 + c_in * 17 + c_out * 13 + h * 7 + w * 5 + k * 3 + pad) as u64);
        let mut draw = |shape: Vec<usize>| {
            let len = shape.iter().product();
            let v: Vec<f32> = (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
            burn::tensor::TensorData::new(v, shape)
        };
        let conv = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .init(&device);
        let weight = Tensor::<4>::from_data(draw(vec![c_out, c_in, k, k]), &device);
        // A non-zero bias, so its gradient path is exercised with a real value.
        let bias = Tensor::<1>::from_data(draw(vec![c_out]), &device);
        let conv = Conv2d {
            weight: burn::module::Param::from_tensor(weight),
            bias: Some(burn::module::Param::from_tensor(bias)),
            ..conv
        };
        let x = Tensor::<4>::from_data(draw(vec![n, c_in, h, w]), &device).require_grad();
        // A non-uniform upstream gradient: the weighted sum of the output.
        let out_w = Tensor::<4>::from_data(draw(vec![n, c_out, h + 2 * pad - k + 1, w + 2 * pad - k + 1]), &device);
        assert!(applies(&conv, &x), "case {case:?} should take segkit's path");

        let run = |y: Tensor<4>| {
            let grads = (y.clone() * out_w.clone()).sum().backward();
            let gx = x.grad(&grads).unwrap();
            let gw = conv.weight.grad(&grads).unwrap();
            let gb = conv.bias.as_ref().unwrap().grad(&grads).unwrap();
            (y.inner(), gx, gw, gb)
        };
        let tol = 1e-5;
        let same = |(y1, gx1, gw1, gb1): (Tensor<4>, Tensor<4>, Tensor<4>, Tensor<1>),
                    (y0, gx0, gw0, gb0): (Tensor<4>, Tensor<4>, Tensor<4>, Tensor<1>),
                    what: &str| {
            assert!(max_rel_diff(y1, y0) < tol, "{what}: output differs for {case:?}");
            assert!(max_rel_diff(gx1, gx0) < tol, "{what}: input gradient differs for {case:?}");
            assert!(max_rel_diff(gw1, gw0) < tol, "{what}: weight gradient differs for {case:?}");
            let gb = max_rel_diff(gb1.reshape([1, 1, 1, c_out]), gb0.reshape([1, 1, 1, c_out]));
            assert!(gb < tol, "{what}: bias gradient differs for {case:?}");
        };
        same(run(conv2d(&conv, x.clone())), run(conv.forward(x.clone())), "conv2d");
        same(run(conv2d_relu(&conv, x.clone())), run(relu(conv.forward(x.clone()))), "conv2d_relu");

        // Without autodiff the ReLU is fused into the kernels: the same values.
        let (conv, x) = (conv.valid(), x.inner());
        let fused = conv2d_relu(&conv, x.clone());
        let reference = relu(conv.forward(x));
        let zeros = reference.clone().equal_elem(0.0).int().sum().into_scalar::<i64>();
        assert!(zeros > 0, "case {case:?}: the ReLU should zero some outputs");
        assert!(max_rel_diff(fused, reference) < tol, "fused ReLU differs for {case:?}");
    }

    #[test]
    fn values_and_gradients_match_burns_conv() {
        for case in [
            (1, 3, 4, 9, 11, 3, 1),  // VGG's 3x3, padding 1, non-square
            (2, 5, 3, 8, 8, 3, 0),   // U-Net's unpadded 3x3, batch summed
            (1, 4, 6, 10, 7, 7, 0),  // fc6's 7x7
            (3, 6, 2, 5, 5, 1, 0),   // 1x1 score layers
            (1, 3, 2, 4, 4, 3, 100), // conv1_1's padding of 100: mostly zeros
            // 16 * 49 * 150 * 150 elements exceed BAND_ELEMS: the im2col is built in two bands.
            (1, 16, 2, 150, 150, 7, 3),
            // 64 outputs at a padded width of 302: the direct kernel splits the 40 output rows into
            // tiles of 13 (the last one shorter).
            (1, 3, 64, 40, 300, 3, 1),
            (2, 8, 5, 1, 1, 3, 1), // a 1x1 image, all padding
            // Wide 3x3 layers: Winograd forward and input gradient (cpu_winograd), direct weight
            // gradient; odd output sizes leave half-outside tiles.
            (1, 16, 20, 24, 23, 3, 1),
            (2, 16, 16, 17, 19, 3, 0),
        ] {
            check(case);
        }
        // The last two cases do reach Winograd, in all three directions.
        use cpu_winograd::takes;
        assert!(takes(16, 20, [3, 3], 1, [24, 23]) && takes(20, 16, [3, 3], 1, [24, 23]));
        assert!(takes(16, 16, [3, 3], 2, [15, 17]) && takes(16, 16, [3, 3], 2, [17, 19]));
    }

    /// The two direct kernels return a result (they must not silently fall back) and match flex's
    /// own convolution and the tensor-op gradient, on flex tensors directly.
    /// `(n, c_in, c_out, h, w, k, pad)`; every case here is a large map next to the layer width.
    #[test]
    fn direct_kernels_run_and_match_the_reference_paths() {
        use burn::tensor::TensorData;
        let mut seed = 7u32;
        let mut data = |shape: [usize; 4]| {
            let v: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect();
            FlexTensor::from_data(TensorData::new(v, shape))
        };
        let max_diff = |a: FlexTensor, b: FlexTensor| {
            let (a, b) = (a.into_data().try_to_vec::<f32>().unwrap(), b.into_data().try_to_vec::<f32>().unwrap());
            assert_eq!(a.len(), b.len());
            let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
        };
        // Narrow maps take the compact forward (`16 (k - 1) > W_p`), the rest the padded width; the
        // 700-output case splits its 22 output rows into two compact tiles.
        for (n, c_in, c_out, h, w, k, pad) in [
            (1, 3, 4, 12, 9, 3, 1),
            (2, 5, 3, 10, 10, 3, 0),
            (1, 2, 3, 6, 5, 3, 100),
            (3, 4, 2, 7, 7, 1, 0),
            (2, 3, 5, 14, 14, 7, 0),
            (1, 2, 700, 24, 20, 3, 0),
            (1, 3, 2, 40, 40, 3, 1),
        ] {
            let x = data([n, c_in, h, w]);
            let wt = data([c_out, c_in, k, k]);
            let y =
                direct_conv_f32(&x, &wt, None, [pad, pad], Activation::Identity).expect("the direct forward applies");
            let reference = Flex::conv2d(x.clone(), wt.clone(), None, options(pad, pad));
            assert!(max_diff(y, reference) < 1e-5, "forward differs for {:?}", (n, c_in, c_out, h, w, k, pad));
            let (h_out, w_out) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
            let dy = data([n, c_out, h_out, w_out]);
            // The direct weight gradient declines small maps next to wide layers (its rule).
            let Some(dw) = weight_grad_f32(&x, &dy, [k, k], [pad, pad]) else {
                assert!(
                    n * h_out * w_out < 4 * c_out,
                    "the direct gradient should apply to {:?}",
                    (n, c_in, c_out, h, w, k, pad)
                );
                continue;
            };
            let reference = weight_grad::<Flex>(x, dy, Shape::new([c_out, c_in, k, k]), [pad, pad]);
            assert!(max_diff(dw, reference) < 1e-5, "weight gradient differs for {:?}", (n, c_in, c_out, h, w, k, pad));
        }
    }

    /// The patched gemm-common's half-width f16 kernel type (patches/README.md), whose methods
    /// upstream left as panicking placeholders, gives the full-width type's values lane for lane.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_patched_half_width_f16_kernel_matches_the_full_width_one() {
        use gemm_common::simd::{MixedSimd, V3, V3Half};
        use half::f16;
        if !(std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c")) {
            return; // V3 needs both; nothing to compare against
        }
        let h = <V3Half as MixedSimd<f16, f16, f16, f32>>::try_new().expect("V3Half always exists");
        let f = <V3 as MixedSimd<f16, f16, f16, f32>>::try_new().expect("fma and f16c are present");
        compare(h, f);
    }

    /// The comparison, generic in the full-width type so that its f16 methods resolve (`V3` also
    /// implements the trait for f32, f64 and complex types).
    #[cfg(target_arch = "x86_64")]
    fn compare<W>(h: gemm_common::simd::V3Half, f: W)
    where
        W: gemm_common::simd::MixedSimd<
                half::f16,
                half::f16,
                half::f16,
                f32,
                AccN = [f32; 8],
                LhsN = [half::f16; 8],
                RhsN = [half::f16; 8],
                DstN = [half::f16; 8],
            >,
    {
        use gemm_common::simd::MixedSimd;
        use half::f16;
        let xs = [1.0f32, -2.5, 0.333_333, 65504.0, 1e-7, -0.0, 3.140_625, 1e5];
        let hs: [f16; 8] = xs.map(f16::from_f32);
        let (a, b, c) = ([xs[0], xs[1], xs[2], xs[4]], [xs[6], xs[2], xs[1], xs[0]], [xs[5], xs[4], xs[2], xs[6]]);
        let wide = |v: [f32; 4]| [v[0], v[1], v[2], v[3], 0.0, 0.0, 0.0, 0.0];
        let low = |v: [f32; 8]| [v[0], v[1], v[2], v[3]];
        let low_h = |v: [f16; 8]| [v[0], v[1], v[2], v[3]];
        for (x, y) in xs.iter().zip(&hs) {
            assert_eq!(h.from_lhs(*y), f.from_lhs(*y));
            assert_eq!(h.from_rhs(*y), f.from_rhs(*y));
            assert_eq!(h.from_dst(*y), f.from_dst(*y));
            assert_eq!(h.into_dst(*x).to_bits(), f.into_dst(*x).to_bits(), "{x}");
            assert_eq!(h.add(*x, 1.5), f.add(*x, 1.5));
        }
        assert_eq!(h.simd_mult_add(a, b, c), low(f.simd_mult_add(wide(a), wide(b), wide(c))));
        assert_eq!(h.simd_mul(a, b), low(f.simd_mul(wide(a), wide(b))));
        assert_eq!(h.simd_add(a, b), low(f.simd_add(wide(a), wide(b))));
        assert_eq!(h.simd_splat(2.5), low(f.simd_splat(2.5)));
        assert_eq!(h.simd_from_lhs(low_h(hs)), low(f.simd_from_lhs(hs)));
        assert_eq!(h.simd_from_rhs(low_h(hs)), low(f.simd_from_rhs(hs)));
        let back = |v: [f16; 4]| v.map(f16::to_bits);
        assert_eq!(back(h.simd_into_dst(a)), back(low_h(f.simd_into_dst(wide(a)))));
        struct Two;
        impl gemm_common::pulp::NullaryFnOnce for Two {
            type Output = i32;
            fn call(self) -> i32 {
                2
            }
        }
        assert_eq!(h.vectorize(Two), 2);
    }

    #[test]
    fn the_isa_cap_accepts_what_gemm_reads_and_rejects_the_rest() {
        let check = |value: Option<&str>, want: Result<IsaCap, ()>| {
            assert_eq!(IsaCap::parse(value).map_err(|_| ()), want, "{value:?}");
        };
        check(None, Ok(IsaCap::Native));
        check(Some(""), Ok(IsaCap::Native));
        check(Some("AVX512"), Ok(IsaCap::Native));
        check(Some("native"), Ok(IsaCap::Native));
        check(Some("avx2"), Ok(IsaCap::Avx2));
        check(Some("AVX2"), Ok(IsaCap::Avx2));
        // The patched gemm-common compares exactly: these would silently not cap, so they fail.
        check(Some(" avx2"), Err(()));
        check(Some("avx-2"), Err(()));
        check(Some("sse"), Err(()));
        let e = IsaCap::parse(Some("avx")).unwrap_err();
        assert!(e.contains(ISA_VAR) && e.contains("avx2"), "{e}");
    }

    /// Strided, bias-less, "same"-padded layers and empty inputs keep Burn's own path.
    #[test]
    fn only_stride_one_layers_take_segkits_path() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([1, 2, 8, 8], &device);
        let plain = Conv2dConfig::new([2, 2], [3, 3]).init(&device);
        assert!(applies(&plain, &x));
        let strided = Conv2dConfig::new([2, 2], [3, 3]).with_stride([2, 2]).init(&device);
        assert!(!applies(&strided, &x));
        let no_bias = Conv2dConfig::new([2, 2], [3, 3]).with_bias(false).init(&device);
        assert!(!applies(&no_bias, &x));
        let same = Conv2dConfig::new([2, 2], [3, 3]).with_padding(PaddingConfig2d::Same).init(&device);
        assert!(!applies(&same, &x));
        // An empty batch stays with Burn (the kernels assume at least one element).
        assert!(!applies(&plain, &Tensor::<4>::zeros([0, 2, 8, 8], &device)));
    }
}
