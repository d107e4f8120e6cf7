//! Winograd F(2x2, 3x3) convolution for Burn's CPU backend (flex): the 3x3 layers' forward pass
//! and both gradients in 16 matrix products instead of 36 per 2x2 output tile.
//!
//! Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). Each 2x2 output
//! tile is `A^T [(G g G^T) ⊙ (B^T d B)] A`, with `g` a 3x3 kernel, `d` the 4x4 input patch under
//! the tile (patches overlap by two) and `⊙` elementwise. Summed over input channels, the 16
//! elementwise products become 16 independent matrix products
//! `M_k [C_out, T] = U_k [C_out, C_in] x V_k [C_in, T]` over the `T` tiles, with
//! `U = G g G^T` (the weights, transformed on every call) and `V = B^T d B` (the input). That is
//! 16 multiply-adds per input channel and tile where the direct convolution needs 36: 2.25x fewer.
//! PyTorch does not use Winograd on the CPU, so this is where segkit can be faster, not only equal.
//!
//! Gradients: the input gradient of a stride-1 3x3 layer with padding `p` is itself a stride-1
//! 3x3 convolution, of the output gradient padded by `2 - p` with the kernels rotated by 180
//! degrees and the channels swapped, so the same kernel computes it ([`input_grad_f32`]). The
//! weight gradient follows the algorithm backwards ([`weight_grad_f32`]): `dU_k = dM_k V_k^T`
//! summed over tiles, with `dM = A dY A^T` per tile, then `dW = G^T dU G`: again 16 products.
//!
//! Accuracy: F(2x2, 3x3)'s transforms have coefficients 0, ±1/2 and ±1 only, so it loses almost
//! no fp32 accuracy (the tests hold all three directions to 1e-5 of the largest value, as the
//! direct kernels; with 256 input channels of uniform data the measured error is 8e-7 of it),
//! where F(4x4, 3x3) (4x fewer multiplications) has larger coefficients and costs one to two
//! decimal digits.
//!
//! Layout and tasks: the transformed input and the products are frequency-major
//! (`[16][C][tiles]`), so each of the 16 products reads compact matrices; `gemm` ran them up to
//! 1.5x (forward) and 1.6x (weight gradient) faster so than with each channel's 16 rows together.
//! The forward pass is split into rayon tasks by blocks of tiles, sized so a block's transformed
//! input and products (`16 (C_in + C_out) T_block` floats) stay near 2 MiB, and by blocks of
//! output channels where the tiles give fewer blocks than twice the threads; the weight gradient
//! runs its 16 products as 16 tasks over bands of tiles. Buffers whose every element is written
//! before it is read are kept per thread between calls (no allocation, no zeroing).
//!
//! Scope, checked by [`takes`]: 3x3 kernels with at least [`MIN_CHANNELS`] channels in and out
//! (conv1_1's 3 and U-Net's 1 input channel keep the direct kernel) and at least [`MIN_TILES`]
//! output tiles (U-Net's bottleneck at 252x252 keeps it too), f32, and the switch
//! [`set_enabled`] on. Other layers take `cpu_conv`'s direct kernels.

use crate::cpu_conv::{Activation, OutPtr};
use burn::tensor::{DType, Shape};
use burn_flex::FlexTensor;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::LocalKey;

/// Fewest input and output channels for which a 3x3 layer takes Winograd.
pub const MIN_CHANNELS: usize = 16;

/// Fewest 2x2 output tiles (over the batch) for which a 3x3 layer takes Winograd. Below that the
/// products are too thin to be compute-bound: they stream the transformed weights (16/9 the size
/// of the weights, and written first) for a few columns each. Measured, `segkit bench --conv`
/// forward, AVX-512: 1024 channels at 8x8 (16 tiles) 30 ms against 9-13 ms direct, at 14x14 (49)
/// 39-44 against 32-40, 512 at 12x12 (36) 6-8 against 5; 512 at 24x24 (144) 12-20 against
/// 21-26, 256 at 40x40 (400) 8.5 against 13-19.
pub const MIN_TILES: usize = 128;

/// Target for a forward task's transformed input and products, in f32 elements (2 MiB).
const BLOCK_ELEMS: usize = 512 << 10;

/// Largest band of the weight gradient's transformed input and output gradient, in f32
/// elements (64 MiB), so FCN's 64-channel 422x422 layers do not hold 4x copies of whole maps.
const BAND_ELEMS: usize = 16 << 20;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the Winograd path on or off for every later 3x3 convolution in this process (on by
/// default); `segkit bench --no-winograd` turns it off to measure the direct kernel in the same
/// binary.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether a layer with this kernel and these widths, producing `n` maps of `out`, takes the
/// Winograd path (for a gradient: the widths and map of the convolution that computes it).
pub fn takes(c_in: usize, c_out: usize, kernel: [usize; 2], n: usize, out: [usize; 2]) -> bool {
    ENABLED.load(Ordering::Relaxed)
        && kernel == [3, 3]
        && c_in >= MIN_CHANNELS
        && c_out >= MIN_CHANNELS
        && n * out[0].div_ceil(2) * out[1].div_ceil(2) >= MIN_TILES
}

/// The runs of tiles `t0..t0 + len` (row-major over `tw` tiles a row) that lie on one tile row:
/// `(ty, tx0..tx1, o0)`, with `o0` the place of tile `(ty, tx0)` in the run `t0..`.
fn tile_rows(t0: usize, len: usize, tw: usize) -> impl Iterator<Item = (usize, std::ops::Range<usize>, usize)> {
    let mut t = t0;
    std::iter::from_fn(move || {
        (t < t0 + len).then(|| {
            let (ty, tx0) = (t / tw, t % tw);
            let tx1 = tw.min(tx0 + (t0 + len - t));
            let o0 = t - t0;
            t += tx1 - tx0;
            (ty, tx0..tx1, o0)
        })
    })
}

/// How a convolution's kernels are read from the weights `ws` it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernels {
    /// `ws` is `[C_out, C_in, 3, 3]`: the layer's own weights.
    AsGiven,
    /// `ws` is `[C_in, C_out, 3, 3]` and kernel `(co, ci)` is `ws[ci, co]` rotated by 180
    /// degrees: the convolution that computes a layer's input gradient, read off the layer's
    /// weights without a rotated copy.
    Flipped,
}

/// `G g G^T` for each 3x3 kernel `g` of `ws` (read as `kernels` says), laid out
/// `[C_out][16][C_in]`: output channel `co`'s 16 matrices' rows are one contiguous run, so the
/// transform splits over output channels, and `U_k` is the `C_out x C_in` matrix at offset
/// `k C_in` with row stride `16 C_in`.
/// G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
fn transform_weights(ws: &[f32], c_in: usize, kernels: Kernels, u: &mut [f32]) {
    use rayon::prelude::*;
    let c_out = u.len() / (16 * c_in);
    u.par_chunks_mut(16 * c_in).enumerate().for_each(|(co, dst)| {
        for ci in 0..c_in {
            let g: [f32; 9] = match kernels {
                Kernels::AsGiven => ws[(co * c_in + ci) * 9..][..9].try_into().expect("nine taps"),
                Kernels::Flipped => std::array::from_fn(|t| ws[(ci * c_out + co) * 9 + 8 - t]),
            };
            // G g: 4 rows of 3.
            let mut gg = [[0f32; 3]; 4];
            for c in 0..3 {
                let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
                gg[0][c] = g0;
                gg[1][c] = 0.5 * (g0 + g1 + g2);
                gg[2][c] = 0.5 * (g0 - g1 + g2);
                gg[3][c] = g2;
            }
            // (G g) G^T: 4 x 4.
            for (r, a) in gg.iter().enumerate() {
                let row = [a[0], 0.5 * (a[0] + a[1] + a[2]), 0.5 * (a[0] - a[1] + a[2]), a[2]];
                for (c, v) in row.into_iter().enumerate() {
                    dst[(r * 4 + c) * c_in + ci] = v;
                }
            }
        }
    });
}

/// `B^T d B` for tiles `t0..t0 + len` of one padded plane `p` (rows of `wp`; `tw` tiles per
/// row), written as 16 rows of `len`, row `k` at `dst + k * stride`; `e` is scratch of at least
/// `4 wp`. B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
///
/// # Safety
/// `dst + k * stride + o` for `k < 16`, `o < len` must be valid for writes and written by no one
/// else while this runs.
unsafe fn transform_input(
    p: &[f32],
    wp: usize,
    tw: usize,
    t0: usize,
    len: usize,
    dst: OutPtr,
    stride: usize,
    e: &mut [f32],
) {
    for (ty, txs, o0) in tile_rows(t0, len, tw) {
        let n = txs.len();
        let (c0, c1) = (2 * txs.start, 2 * txs.end + 2);
        let row = |i: usize| &p[(2 * ty + i) * wp..][c0..c1];
        let (d0, d1, d2, d3) = (row(0), row(1), row(2), row(3));
        // B^T d for the tile row (its four input rows combined elementwise), stored as the even
        // and the odd columns of each of its four rows: n + 1 of each.
        let m = n + 1;
        let (ev, rest) = e.split_at_mut(4 * m);
        let od = &mut rest[..4 * m];
        let (ev0, ev) = ev.split_at_mut(m);
        let (ev1, ev) = ev.split_at_mut(m);
        let (ev2, ev3) = ev.split_at_mut(m);
        let (od0, od) = od.split_at_mut(m);
        let (od1, od) = od.split_at_mut(m);
        let (od2, od3) = od.split_at_mut(m);
        let (d0, d1, d2, d3) = (&d0[..2 * m], &d1[..2 * m], &d2[..2 * m], &d3[..2 * m]);
        for j in 0..m {
            let (x, y) = (2 * j, 2 * j + 1);
            ev0[j] = d0[x] - d2[x];
            od0[j] = d0[y] - d2[y];
            ev1[j] = d1[x] + d2[x];
            od1[j] = d1[y] + d2[y];
            ev2[j] = d2[x] - d1[x];
            od2[j] = d2[y] - d1[y];
            ev3[j] = d1[x] - d3[x];
            od3[j] = d1[y] - d3[y];
        }
        let (ev, od) = ([&*ev0, &*ev1, &*ev2, &*ev3], [&*od0, &*od1, &*od2, &*od3]);
        // (B^T d) B per tile: the same combination of each row's four columns, which for tile i
        // are ev[i], od[i], ev[i + 1], od[i + 1]: unit-stride loops the compiler vectorises.
        for r in 0..4 {
            let (ea, oa, eb, ob) = (&ev[r][..n], &od[r][..n], &ev[r][1..], &od[r][1..]);
            // SAFETY: rows 4r..4r + 4, positions o0..o0 + n < len: the caller's contract.
            let [v0, v1, v2, v3] = std::array::from_fn(|c| unsafe {
                std::slice::from_raw_parts_mut(dst.at((4 * r + c) * stride + o0), n)
            });
            for i in 0..n {
                v0[i] = ea[i] - eb[i];
                v1[i] = oa[i] + eb[i];
                v2[i] = eb[i] - oa[i];
                v3[i] = oa[i] - ob[i];
            }
        }
    }
}

/// The input zero-padded by `pad` into planes of `hp x wp` (at least as large as the padded
/// input; zeros below and right where tiles overhang the output), written to every element of
/// `xp` (so it may hold anything before).
fn pad_planes(xs: &[f32], [h, w]: [usize; 2], pad: [usize; 2], [hp, wp]: [usize; 2], xp: &mut [f32]) {
    use rayon::prelude::*;
    xp.par_chunks_mut(hp * wp).zip(xs.par_chunks(h * w)).for_each(|(dst, src)| {
        for (y, row) in dst.chunks_mut(wp).enumerate() {
            match y.checked_sub(pad[0]).filter(|&r| r < h) {
                Some(r) => {
                    row[..pad[1]].fill(0.0);
                    row[pad[1]..pad[1] + w].copy_from_slice(&src[r * w..][..w]);
                    row[pad[1] + w..].fill(0.0);
                }
                None => row.fill(0.0),
            }
        }
    });
}

/// The input padded as [`pad_planes`], in a new buffer.
fn padded_planes(xs: &[f32], [h, w]: [usize; 2], pad: [usize; 2], [hp, wp]: [usize; 2]) -> Vec<f32> {
    let mut xp = vec![0f32; xs.len() / (h * w) * hp * wp];
    pad_planes(xs, [h, w], pad, [hp, wp], &mut xp);
    xp
}

thread_local! {
    /// Buffers kept between calls, one per use, per thread: the padded input and the transformed
    /// weights (on the calling thread) and a forward task's transformed input and products (on
    /// each worker). Every element is written before it is read, so a reused buffer needs no
    /// zeroing: this spares a page-faulting allocation and a memset per call and per task.
    static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static WEIGHTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static TASK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the first `len` elements of this thread's buffer `slot` (grown where short), or
/// on a fresh buffer where `slot` is already in use further up this thread's stack.
fn with_scratch<R>(slot: &'static LocalKey<RefCell<Vec<f32>>>, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    slot.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// The tiling of a 3x3 layer's output: `th x tw` tiles of 2x2, the last row and column possibly
/// half outside the map, over padded input planes of `hp x wp` (each tile reads a 4x4 patch).
struct Tiling {
    h_out: usize,
    w_out: usize,
    th: usize,
    tw: usize,
    hp: usize,
    wp: usize,
}

impl Tiling {
    /// `None` when the output would be empty.
    fn new([h, w]: [usize; 2], pad: [usize; 2]) -> Option<Tiling> {
        let h_out = (h + 2 * pad[0]).checked_sub(2).filter(|&v| v > 0)?;
        let w_out = (w + 2 * pad[1]).checked_sub(2).filter(|&v| v > 0)?;
        let (th, tw) = (h_out.div_ceil(2), w_out.div_ceil(2));
        Some(Tiling { h_out, w_out, th, tw, hp: 2 * th + 2, wp: 2 * tw + 2 })
    }
}

/// A 3x3, stride-1 convolution with zero padding `pad` by Winograd F(2x2, 3x3): `xs` is
/// `[n, C_in, h, w]`, `ws` the weights (contiguous, row-major; `[C_out, C_in, 3, 3]` or, for
/// `Kernels::Flipped`, `[C_in, C_out, 3, 3]`), `act` applied to each output as it is written;
/// `None` when the output would be empty. Same values as the direct convolution up to float
/// rounding.
#[allow(clippy::too_many_arguments)] // one convolution's shapes, options and output activation
pub(crate) fn conv3x3_f32(
    xs: &[f32],
    [n, c_in, h, w]: [usize; 4],
    ws: &[f32],
    kernels: Kernels,
    c_out: usize,
    bias: Option<&[f32]>,
    pad: [usize; 2],
    act: Activation,
) -> Option<FlexTensor> {
    if [n, c_in, c_out, h, w].contains(&0) || xs.len() != n * c_in * h * w || ws.len() != c_out * c_in * 9 {
        return None;
    }
    let Tiling { h_out, w_out, th, tw, hp, wp } = Tiling::new([h, w], pad)?;
    let plane = hp * wp;
    let out = with_scratch(&PADDED, n * c_in * plane, |xp| {
        pad_planes(xs, [h, w], pad, [hp, wp], xp);
        with_scratch(&WEIGHTS, c_out * 16 * c_in, |u| {
            transform_weights(ws, c_in, kernels, u);
            forward_tiles(xp, u, [n, c_in, c_out], &Tiling { h_out, w_out, th, tw, hp, wp }, bias, act)
        })
    });
    Some(out)
}

/// The forward pass over all tiles, from the padded input `xp` and the transformed weights `u`.
fn forward_tiles(
    xp: &[f32],
    u: &[f32],
    [n, c_in, c_out]: [usize; 3],
    tiling: &Tiling,
    bias: Option<&[f32]>,
    act: Activation,
) -> FlexTensor {
    use rayon::prelude::*;
    let &Tiling { h_out, w_out, th, tw, hp, wp } = tiling;
    let plane = hp * wp;

    // Tasks: blocks of tiles (cache-sized), and blocks of output channels where the tiles alone
    // would leave threads idle.
    let tiles = th * tw;
    let threads = rayon::current_num_threads();
    let target = (BLOCK_ELEMS / (16 * (c_in + c_out))).clamp(64, 1024);
    let blocks = tiles.div_ceil(target);
    let len = tiles.div_ceil(blocks);
    let blocks = tiles.div_ceil(len);
    let co_blocks =
        if n * blocks >= 2 * threads { 1 } else { (2 * threads).div_ceil(n * blocks).min(c_out.div_ceil(16)) };
    let co_block = c_out.div_ceil(co_blocks).next_multiple_of(16).min(c_out);
    let co_blocks = c_out.div_ceil(co_block);

    let mut out = FlexTensor::empty(Shape::new([n, c_out, h_out, w_out]), DType::F32);
    let out_ptr = OutPtr(out.storage_mut::<f32>().as_mut_ptr());
    (0..n * blocks * co_blocks).into_par_iter().for_each(|task| {
        let (b, blk, cb) = (task / (blocks * co_blocks), task / co_blocks % blocks, task % co_blocks);
        let t0 = blk * len;
        let l = len.min(tiles - t0);
        let co0 = cb * co_block;
        let co_len = co_block.min(c_out - co0);
        // V: [16][C_in][l]; M: [16][co_len][l]. Frequency-major, so each product's operands are
        // compact matrices: `gemm` ran the products up to 1.5x faster so than with each channel's
        // 16 frequencies together (measured on AVX-512, 2026-12-03).
        with_scratch(&TASK, 16 * (c_in + co_len) * l + 4 * wp, |buf| {
            let (v, rest) = buf.split_at_mut(16 * c_in * l);
            let (m, e) = rest.split_at_mut(16 * co_len * l);
            let v_ptr = OutPtr(v.as_mut_ptr());
            for ci in 0..c_in {
                // SAFETY: rows (k, ci) of `v` ([16][c_in][l]), which only this loop writes.
                unsafe {
                    transform_input(
                        &xp[(b * c_in + ci) * plane..][..plane],
                        wp,
                        tw,
                        t0,
                        l,
                        OutPtr(v_ptr.at(ci * l)),
                        c_in * l,
                        e,
                    )
                };
            }
            for k in 0..16 {
                // SAFETY: lhs is U_k rows co0..co0 + co_len (co_len x c_in, strides 1 and 16 c_in)
                // inside `u` (c_out * 16 * c_in); rhs is V_k (c_in x l, row-major) inside `v`
                // (16 * c_in * l); dst is M_k (co_len x l, row-major) inside `m` (16 * co_len * l).
                unsafe {
                    gemm::gemm(
                        co_len,
                        l,
                        c_in,
                        m.as_mut_ptr().add(k * co_len * l),
                        1,
                        l as isize,
                        false,
                        u.as_ptr().add(co0 * 16 * c_in + k * c_in),
                        1,
                        (16 * c_in) as isize,
                        v.as_ptr().add(k * c_in * l),
                        1,
                        l as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            // A^T M A per tile, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], plus the bias, through the
            // activation: the values are written once, so a fused ReLU costs no pass of its own.
            for j in 0..co_len {
                let co = co0 + j;
                let bv = bias.map_or(0.0, |b| b[co]);
                let mk: [&[f32]; 16] = std::array::from_fn(|k| &m[(k * co_len + j) * l..][..l]);
                let plane_out = (b * c_out + co) * h_out * w_out;
                for (ty, txs, o0) in tile_rows(t0, l, tw) {
                    let y = 2 * ty;
                    let q: [&[f32]; 16] = std::array::from_fn(|k| &mk[k][o0..o0 + txs.len()]);
                    let row = |k: usize| [q[k], q[k + 1], q[k + 2], q[k + 3]];
                    // Two output columns per tile, one for a tile half outside the map.
                    let (x0, x1) = (2 * txs.start, (2 * txs.end).min(w_out));
                    // SAFETY: rows y and, when inside the map, y + 1 of channel co of image b, columns
                    // x0..x1: tiles t0..t0 + l belong to this task alone, and channels
                    // co0..co0 + co_len to its channel block, so no other task writes them.
                    let r0 = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(plane_out + y * w_out + x0), x1 - x0) };
                    output_row::<false>(r0, [row(0), row(4), row(8)], bv, act);
                    if y + 1 < h_out {
                        let r1 = unsafe {
                            std::slice::from_raw_parts_mut(out_ptr.at(plane_out + (y + 1) * w_out + x0), x1 - x0)
                        };
                        output_row::<true>(r1, [row(4), row(8), row(12)], bv, act);
                    }
                }
            }
        });
    });
    out
}

/// One output row of a run of tiles, from three rows `[a, b, c]` of each tile's `M` (four
/// columns each): `s_j = a_j + b_j + c_j` (or `a_j - b_j - c_j` for `SUB`, the tiles' second
/// row), then `dst[2i] = s_0 + s_1 + s_2` and `dst[2i + 1] = s_1 - s_2 - s_3` for tile `i`, plus
/// the bias, through `act`. `dst` holds two values per tile, one fewer when the last tile is half
/// outside the map. The loop over whole tiles has unit-stride loads and no branch, so the
/// compiler vectorises it; the sums are in the order the scalar version used (same values).
#[inline(always)]
fn output_row<const SUB: bool>(dst: &mut [f32], [a, b, c]: [[&[f32]; 4]; 3], bias: f32, act: Activation) {
    #[inline(always)]
    fn run<const SUB: bool>(dst: &mut [f32], [a, b, c]: [[&[f32]; 4]; 3], bias: f32, f: impl Fn(f32) -> f32) {
        let sum = |a: f32, b: f32, c: f32| if SUB { a - b - c } else { a + b + c };
        let n = dst.len() / 2;
        let (body, tail) = dst.split_at_mut(2 * n);
        // Slices of exactly n, so the loop's indexing needs no bounds checks.
        fn cut(v: [&[f32]; 4], n: usize) -> [&[f32]; 4] {
            v.map(|s| &s[..n])
        }
        let (aw, bw, cw) = (cut(a, n), cut(b, n), cut(c, n));
        for (i, pair) in body.chunks_exact_mut(2).enumerate() {
            let [s0, s1, s2, s3] = std::array::from_fn(|j| sum(aw[j][i], bw[j][i], cw[j][i]));
            pair[0] = f(s0 + s1 + s2 + bias);
            pair[1] = f(s1 - s2 - s3 + bias);
        }
        if let [last] = tail {
            let [s0, s1, s2] = std::array::from_fn(|j| sum(a[j][n], b[j][n], c[j][n]));
            *last = f(s0 + s1 + s2 + bias);
        }
    }
    match act {
        Activation::Identity => run::<SUB>(dst, [a, b, c], bias, |v| v),
        Activation::Relu => run::<SUB>(dst, [a, b, c], bias, |v| Activation::Relu.apply(v)),
    }
}

/// The weight gradient of a 3x3, stride-1 convolution with padding `pad`, through the same
/// algorithm: the forward pass is `Y = A^T [U_k V_k]_k A` per tile, so
/// `dU_k = sum over tiles of dM_k V_k^T` with `dM = A dY_tile A^T` (the 2x2 output gradient of
/// the tile, zero where it overhangs the map), and `dW = G^T dU G`. That is 16 products of
/// `[C_out, T] x [T, C_in]` summed over the tiles `T`, where the direct gradient runs 9 of
/// `[C_out, 4T] x [4T, C_in]`. `xs` is `[n, C_in, h, w]`, `dys` `[n, C_out, h_out, w_out]`;
/// returns `[C_out, C_in, 3, 3]`.
pub(crate) fn weight_grad_f32(
    xs: &[f32],
    [n, c_in, h, w]: [usize; 4],
    dys: &[f32],
    c_out: usize,
    pad: [usize; 2],
) -> Option<FlexTensor> {
    use rayon::prelude::*;
    if [n, c_in, c_out, h, w].contains(&0) || xs.len() != n * c_in * h * w {
        return None;
    }
    let Tiling { h_out, w_out, th, tw, hp, wp } = Tiling::new([h, w], pad)?;
    if dys.len() != n * c_out * h_out * w_out {
        return None;
    }
    let plane = hp * wp;
    let xp = padded_planes(xs, [h, w], pad, [hp, wp]);
    let tiles = th * tw;
    // Tiles in bands, so V and dM (16 (C_in + C_out) floats a tile) stay under BAND_ELEMS.
    let len = (BAND_ELEMS / (16 * (c_in + c_out))).max(16).min(tiles);
    // dU: [16][C_out][C_in], summed over the bands of every image.
    let mut du = vec![0f32; 16 * c_out * c_in];
    let mut v = vec![0f32; 16 * c_in * len];
    let mut dm = vec![0f32; 16 * c_out * len];
    let mut first = true;
    for b in 0..n {
        let mut t0 = 0;
        while t0 < tiles {
            let l = len.min(tiles - t0);
            let (v, dm) = (&mut v[..16 * c_in * l], &mut dm[..16 * c_out * l]);
            // Frequency-major, V: [16][C_in][l] and dM: [16][C_out][l] (products 1.6x faster
            // than with each channel's 16 rows together, measured), one task per channel.
            let (v_ptr, dm_ptr) = (OutPtr(v.as_mut_ptr()), OutPtr(dm.as_mut_ptr()));
            (0..c_in + c_out).into_par_iter().for_each_init(
                || vec![0f32; 4 * wp + 10 * tw],
                |e, c| {
                    // SAFETY: rows (k, c) of `v` ([16][c_in][l]) or `dm` ([16][c_out][l]): each
                    // channel's rows are written by its own task only, and nothing reads them
                    // until every task has finished.
                    unsafe {
                        if c < c_in {
                            let p = &xp[(b * c_in + c) * plane..][..plane];
                            transform_input(p, wp, tw, t0, l, OutPtr(v_ptr.at(c * l)), c_in * l, e);
                        } else {
                            let co = c - c_in;
                            let g = &dys[(b * c_out + co) * h_out * w_out..][..h_out * w_out];
                            transform_output_grad(
                                g,
                                [h_out, w_out],
                                tw,
                                t0,
                                l,
                                OutPtr(dm_ptr.at(co * l)),
                                c_out * l,
                                e,
                            );
                        }
                    }
                },
            );
            let (v, dm) = (&*v, &*dm);
            du.par_chunks_mut(c_out * c_in).enumerate().for_each(|(k, duk)| {
                // SAFETY: dst is dU_k (c_out x c_in, row-major) = `duk`; lhs is dM_k (c_out x l,
                // row-major) inside `dm`; rhs is V_k^T (l x c_in, strides l and 1) inside `v`.
                unsafe {
                    gemm::gemm(
                        c_out,
                        c_in,
                        l,
                        duk.as_mut_ptr(),
                        1,
                        c_in as isize,
                        !first,
                        dm.as_ptr().add(k * c_out * l),
                        1,
                        l as isize,
                        v.as_ptr().add(k * c_in * l),
                        l as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
            first = false;
            t0 += l;
        }
    }
    // dW = G^T dU G, G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]].
    let mut out = FlexTensor::empty(Shape::new([c_out, c_in, 3, 3]), DType::F32);
    let cc = c_out * c_in;
    out.storage_mut::<f32>().par_chunks_mut(c_in * 9).enumerate().for_each(|(co, dst)| {
        for ci in 0..c_in {
            let x = |k: usize| du[k * cc + co * c_in + ci];
            let mut q = [[0f32; 4]; 3];
            for c in 0..4 {
                let (x0, x1, x2, x3) = (x(c), x(4 + c), x(8 + c), x(12 + c));
                q[0][c] = x0 + 0.5 * (x1 + x2);
                q[1][c] = 0.5 * (x1 - x2);
                q[2][c] = 0.5 * (x1 + x2) + x3;
            }
            for (r, a) in q.iter().enumerate() {
                let g = &mut dst[ci * 9 + r * 3..][..3];
                g[0] = a[0] + 0.5 * (a[1] + a[2]);
                g[1] = 0.5 * (a[1] - a[2]);
                g[2] = 0.5 * (a[1] + a[2]) + a[3];
            }
        }
    });
    Some(out)
}

/// `A dY A^T` for tiles `t0..t0 + len` of one output-gradient plane `g` (`h_out x w_out`, zero
/// outside it), written as 16 rows of `len`, row `k` at `dst + k * stride`; `e` is scratch of
/// at least `10 tw`. A = [[1, 0], [1, 1], [1, -1], [0, -1]].
///
/// # Safety
/// As [`transform_input`]: `dst + k * stride + o` for `k < 16`, `o < len` valid and exclusive.
unsafe fn transform_output_grad(
    g: &[f32],
    [h_out, w_out]: [usize; 2],
    tw: usize,
    t0: usize,
    len: usize,
    dst: OutPtr,
    stride: usize,
    e: &mut [f32],
) {
    for (ty, txs, o0) in tile_rows(t0, len, tw) {
        let n = txs.len();
        let (y, x0) = (2 * ty, 2 * txs.start);
        // The tile row's two gradient rows, columns x0..x0 + 2n, zero where they overhang.
        let (g0, rest) = e.split_at_mut(2 * n);
        let (g1, rest) = rest.split_at_mut(2 * n);
        let cols = (2 * n).min(w_out - x0);
        g0[..cols].copy_from_slice(&g[y * w_out + x0..][..cols]);
        g0[cols..].fill(0.0);
        if y + 1 < h_out {
            g1[..cols].copy_from_slice(&g[(y + 1) * w_out + x0..][..cols]);
        } else {
            g1[..cols].fill(0.0);
        }
        g1[cols..].fill(0.0);
        // A dY: four rows, combined elementwise.
        let (a1, rest) = rest.split_at_mut(2 * n);
        let (a2, rest) = rest.split_at_mut(2 * n);
        let a3 = &mut rest[..2 * n];
        for x in 0..2 * n {
            a1[x] = g0[x] + g1[x];
            a2[x] = g0[x] - g1[x];
            a3[x] = -g1[x];
        }
        // (A dY) A^T per tile: each row's pair (a, b) becomes (a, a + b, a - b, -b).
        for (r, ar) in [&*g0, &*a1, &*a2, &*a3].into_iter().enumerate() {
            // SAFETY: rows 4r..4r + 4, positions o0..o0 + n < len: the caller's contract.
            let [v0, v1, v2, v3] = std::array::from_fn(|c| unsafe {
                std::slice::from_raw_parts_mut(dst.at((4 * r + c) * stride + o0), n)
            });
            for i in 0..n {
                let (a, b) = (ar[2 * i], ar[2 * i + 1]);
                v0[i] = a;
                v1[i] = a + b;
                v2[i] = a - b;
                v3[i] = -b;
            }
        }
    }
}

/// The input gradient of a 3x3, stride-1 convolution with padding `pad` (at most 2 per side):
/// `dX = conv(dY padded by 2 - pad, W')` with `W'[ci, co, i, j] = W[co, ci, 2 - i, 2 - j]`.
/// `dys` is `[n, C_out, h_out, w_out]`, `ws` `[C_out, C_in, 3, 3]`; returns `[n, C_in, h, w]`,
/// or `None` where the rule does not apply (padding over 2).
pub(crate) fn input_grad_f32(
    dys: &[f32],
    [n, c_out, h_out, w_out]: [usize; 4],
    ws: &[f32],
    c_in: usize,
    pad: [usize; 2],
) -> Option<FlexTensor> {
    if pad[0] > 2 || pad[1] > 2 || ws.len() != c_out * c_in * 9 {
        return None;
    }
    let pad = [2 - pad[0], 2 - pad[1]];
    conv3x3_f32(dys, [n, c_out, h_out, w_out], ws, Kernels::Flipped, c_in, None, pad, Activation::Identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::backend::ops::{ConvOptions, ModuleOps};
    use burn::tensor::TensorData;

    struct Rng(u32);
    impl Rng {
        /// Uniform in [-0.5, 0.5) (an LCG: tests need no quality, only repeatability).
        fn data(&mut self, shape: [usize; 4]) -> FlexTensor {
            let v: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| {
                    self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (self.0 >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect();
            FlexTensor::from_data(TensorData::new(v, shape))
        }
    }

    fn vec(t: &FlexTensor) -> Vec<f32> {
        t.clone().into_data().try_to_vec::<f32>().unwrap()
    }

    /// Largest difference over the reference's largest magnitude.
    fn rel_diff(a: &FlexTensor, b: &FlexTensor) -> f32 {
        assert_eq!(a.layout().shape(), b.layout().shape());
        let (a, b) = (vec(a), vec(b));
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// [`conv3x3_f32`] with the layer's own kernels and no activation: `x` is `[n, C_in, h, w]`,
    /// `wt` `[C_out, C_in, 3, 3]`.
    fn forward(x: &FlexTensor, wt: &FlexTensor, bias: Option<&[f32]>, pad: [usize; 2]) -> FlexTensor {
        let dims = x.layout().shape().dims();
        let c_out = wt.layout().shape().dims::<4>()[0];
        conv3x3_f32(&vec(x), dims, &vec(wt), Kernels::AsGiven, c_out, bias, pad, Activation::Identity)
            .expect("Winograd applies")
    }

    /// Forward (with a bias), input and weight gradients against flex's convolution and its
    /// gradients. `(n, c_in, c_out, h, w, pad)`.
    fn check(case: (usize, usize, usize, usize, usize, usize)) {
        let (n, c_in, c_out, h, w, pad) = case;
        let mut rng = Rng(11 + case.0 as u32 * 7 + c_out as u32);
        let x = rng.data([n, c_in, h, w]);
        let wt = rng.data([c_out, c_in, 3, 3]);
        let bias = rng.data([1, 1, 1, c_out]);
        let bias = FlexTensor::from_data(TensorData::new(vec(&bias), [c_out]));
        let opts = ConvOptions::new([1, 1], [pad, pad], [1, 1], 1);
        let y = forward(&x, &wt, Some(&vec(&bias)), [pad, pad]);
        let reference = Flex::conv2d(x.clone(), wt.clone(), Some(bias), opts.clone());
        let e = rel_diff(&y, &reference);
        assert!(e < 1e-5, "forward differs for {case:?}: {e}");

        let [_, _, h_out, w_out] = reference.layout().shape().dims();
        let dy = rng.data([n, c_out, h_out, w_out]);
        let dx = input_grad_f32(&vec(&dy), [n, c_out, h_out, w_out], &vec(&wt), c_in, [pad, pad])
            .expect("padding at most 2");
        let reference = Flex::conv2d_x_backward(x.clone(), wt.clone(), dy.clone(), opts.clone());
        let e = rel_diff(&dx, &reference);
        assert!(e < 1e-5, "input gradient differs for {case:?}: {e}");

        let dw = weight_grad_f32(&vec(&x), [n, c_in, h, w], &vec(&dy), c_out, [pad, pad]).expect("applies");
        let reference = Flex::conv2d_weight_backward(x, wt, dy, opts);
        let e = rel_diff(&dw, &reference);
        assert!(e < 1e-5, "weight gradient differs for {case:?}: {e}");
    }

    #[test]
    fn forward_and_gradients_match_flex() {
        for case in [
            (1, 16, 16, 8, 8, 1),   // even output: whole tiles
            (2, 17, 20, 9, 11, 0),  // odd output (7x9): half-outside tiles; batch; widths not multiples of 16
            (1, 16, 33, 5, 6, 2),   // padding 2: the input gradient's padding is 0
            (1, 24, 16, 3, 3, 0),   // a single output pixel
            (1, 16, 16, 1, 1, 1),   // a 1x1 map, all padding
            (1, 32, 40, 40, 44, 1), // several tile blocks (484 tiles in blocks of at most 1024 / ...)
            (3, 64, 24, 12, 12, 0), // more images than threads need: no channel split
            (1, 20, 64, 30, 30, 0), // one block, channels split into 16-wide blocks
        ] {
            check(case);
        }
    }

    /// Accuracy at a realistic width: the error stays near fp32's rounding (stated in the module
    /// docs) on unit-scale data with 256 input channels, not only on the small cases above.
    #[test]
    fn wide_layers_keep_fp32_accuracy() {
        let (n, c_in, c_out, h, w) = (1, 256, 32, 14, 14);
        let mut rng = Rng(5);
        let x = rng.data([n, c_in, h, w]);
        let wt = rng.data([c_out, c_in, 3, 3]);
        let y = forward(&x, &wt, None, [1, 1]);
        let reference = Flex::conv2d(x, wt, None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
        let e = rel_diff(&y, &reference);
        assert!(e < 2e-6, "relative error {e}");
    }

    #[test]
    fn only_wide_3x3_layers_on_large_maps_take_it() {
        assert!(takes(16, 16, [3, 3], 1, [32, 16]), "128 tiles");
        assert!(takes(512, 1024, [3, 3], 2, [16, 15]), "two images of 64 tiles");
        assert!(!takes(512, 1024, [3, 3], 1, [16, 16]), "U-Net's bottleneck: 64 tiles");
        assert!(!takes(3, 64, [3, 3], 1, [400, 400]), "conv1_1: three input channels");
        assert!(!takes(64, 15, [3, 3], 1, [400, 400]));
        assert!(!takes(64, 64, [7, 7], 1, [400, 400]), "fc6");
        assert!(!takes(64, 64, [1, 1], 1, [400, 400]));
    }

    #[test]
    fn padding_over_two_has_no_input_gradient_rule() {
        // A 4x4 output gradient: the layer's input was 2x2 with padding 2, or 0x0 with padding 3.
        let (dy, w) = ([0.0; 16 * 16], [0.0; 16 * 16 * 9]);
        assert!(input_grad_f32(&dy, [1, 16, 4, 4], &w, 16, [3, 3]).is_none());
        let dx = input_grad_f32(&dy, [1, 16, 4, 4], &w, 16, [2, 2]).expect("padding 2 has the rule");
        assert_eq!(dx.layout().shape().dims::<4>(), [1, 16, 2, 2]);
    }
}
