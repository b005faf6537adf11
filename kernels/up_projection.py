r"""Fused bilinear upsample + k x k convolution (the up-projection's hot path) in Triton.

Spec: ``fastmde/reference/up_projection.py``:
:math:`\mathrm{out} = \mathrm{conv}_{k\times k}(\mathrm{up}(x), W)`, stride 1, padding k // 2,
no bias; ``up`` is bilinear to ``size`` = (H, W) with either ``align_corners``. The op stacks the
block's branch and shortcut weights, so both convs that read the upsampled input run here as one.

Forward (``_upsample_conv_kernel``): an implicit GEMM, M = B*H*W output pixels,
N = Cout, K = Cin*k*k. The A tile (pixels x input channels at one tap) is the bilinear
interpolation of x computed while loading (four gathers and a lerp, in float32, rounded to the
input dtype), so the upsampled tensor is never written; B is the weight rearranged to
(k, k, Cin, Cout); ``tl.dot`` accumulates in float32 on tensor cores (bf16/fp16) or in IEEE
float32 (fp32 input: ``input_precision="ieee"``, for parity with cuDNN's fp32 result).
With ``UPSAMPLE=False`` the same kernel is a plain conv (used by the backward).

Backward, recomputing the upsampled input instead of storing it:

* grad_x: the conv transpose :math:`g_u = \mathrm{conv}(\partial out, W^{\top}_{flip})`
  (the forward kernel without upsampling, float32 result at the upsampled size), then the
  bilinear adjoint as a gather (``_bilinear_adjoint_kernel``): every input pixel sums the few
  output rows/columns whose interpolation reads it, with their weights (no scatter, no atomics);
* grad_weight (``_weight_grad_kernel``): for each tap, :math:`\partial W[:, :, kh, kw] =
  \partial out^{\top} \cdot \mathrm{up}(x)_{shifted}` over the B*H*W pixels, split over pixel
  chunks (split-K) into float32 partials that are added in a fixed order.

BatchNorm folded in (``upsample_conv2d_bn_forward`` / ``_backward``, the op
``fastmde::upsample_conv2d_bn``): the same kernels with two switches. ``AFFINE`` applies the
previous BatchNorm and ReLU to every gathered input value, :math:`a = \mathrm{relu}(x s_c + t_c)`
(zero padding stays zero), in the forward and in the weight gradient's recomputation, so the
normalised input is never written. ``STATS`` makes each forward program reduce its output tile
per channel to (sum, squared deviations from the tile mean); :func:`merge_tile_stats` merges the
tiles in a fixed order into the batch mean and variance the next BatchNorm needs, so its
statistics cost no pass over the output. Without upsampling (``size`` equal to x's) the kernels
are a plain k x k conv: the branch's second conv and the 1x1 reduction.

Any H, W; NCHW or channels_last; fp32, fp16, bf16 (fp64 too, for gradcheck under the
interpreter). Offsets are int64. The kernels take strides, but the launchers run them on
channels_last tensors (an NCHW input is copied once and the results are returned in x's
layout): with channels innermost every gather and store is contiguous along the GEMM's K or N
axis, and the compile check (``bench/compile_check.py``, sm_90 and sm_80) finds the NCHW
variants at 255 registers with spills.

Compile cost: sizes (batch, spatial sizes, k, the adjoint's windows) are runtime arguments
(``do_not_specialize``) and every tap loop is a runtime loop, so one compiled variant serves
k = 1, 3, 5 and every layer of a network; only dtype, the switches, the unit channel stride and
the tile shape select a variant. Tiles per dtype: fp16/bf16 128 x 64|128 x 32 with 8 warps (the
GEMMs on wgmma on sm_90, mma on sm_80), fp32 64 x 64 x 16 (IEEE products on the FMA units).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastmde._checks import compute_dtype as _stats_dtype
from fastmde._checks import memory_format_of as _memory_format


@triton.jit
def _source_index(dst, in_size, scale, ALIGN: tl.constexpr):
    """PyTorch's bilinear source coordinate: (i0, i1, lambda) for destination indices ``dst``."""
    if ALIGN:
        src = dst.to(tl.float32) * scale
    else:
        src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), in_size - 1)  # src >= 0: truncation is floor
    i1 = tl.minimum(i0 + 1, in_size - 1)
    lam = src - i0.to(tl.float32)
    return i0, i1, lam


@triton.jit
def _affine_params(in_scale_ptr, in_shift_ptr, offs_c, c_ok, BLOCK: tl.constexpr, ACC: tl.constexpr,
                   AFFINE: tl.constexpr):
    """(1, BLOCK) scale and shift of the input's BatchNorm for channels ``offs_c`` (AFFINE), else zeros."""
    if AFFINE:
        sc = tl.load(in_scale_ptr + offs_c, mask=c_ok, other=0.0).to(ACC)[None, :]
        sh = tl.load(in_shift_ptr + offs_c, mask=c_ok, other=0.0).to(ACC)[None, :]
    else:
        sc = tl.zeros((1, BLOCK), ACC)
        sh = tl.zeros((1, BLOCK), ACC)
    return sc, sh


@triton.jit
def _load_input(x_ptr, offs, mask, sc, sh, ACC: tl.constexpr, AFFINE: tl.constexpr):
    """x at ``offs`` in the accumulator dtype; with AFFINE relu(x * sc + sh), still 0 where
    ``mask`` is false (padding is zero after the activation, as in the unfused block)."""
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    if AFFINE:
        v = tl.where(mask, tl.maximum(v * sc + sh, 0.0), 0.0)
    return v


# Sizes that change from layer to layer (batch, spatial sizes, the kernel size, the adjoint's
# windows) are runtime values: specialising on their value or divisibility would buy nothing
# (they index pixels, not contiguous memory) and would multiply the compiled variants. Strides
# and channel counts stay specialised: a unit channel stride (channels_last) or a multiple of
# 16 is what lets a load vectorise.
_RUNTIME_SIZES = ["B", "h", "w", "H", "W", "KSIZE"]


@triton.jit(do_not_specialize=_RUNTIME_SIZES)
def _upsample_conv_kernel(
    x_ptr, w_ptr, out_ptr, in_scale_ptr, in_shift_ptr, stats_ptr,
    B, Cin, h, w, Cout, H, W, KSIZE,
    sxb, sxc, sxh, sxw, sob, soc, soh, sow,
    scale_h, scale_w,
    UPSAMPLE: tl.constexpr, ALIGN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ACC: tl.constexpr, AFFINE: tl.constexpr, STATS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[b, n, Y, X] = sum_{c, kh, kw} w[kh, kw, c, n] * in[b, c, Y + kh - P, X + kw - P],
    in = up(a) (UPSAMPLE) or a itself, a = relu(x * in_scale[c] + in_shift[c]) (AFFINE: the
    previous BatchNorm and ReLU applied while loading) or x; zero outside [0, H) x [0, W).

    The reduction runs as one loop over (tap, channel block) pairs, K = k*k*Cin: the tap's
    source rows, columns and bilinear weights are recomputed per step (a few integer ops per
    row), so nothing per tap stays live across the loop and the body is compiled once.

    STATS: the program also writes, per output channel, the sum of its tile's (rounded) outputs
    and their squared deviations from the tile mean to ``stats[pid_m, 0 | 1, n]`` (merged on
    the host in a fixed order: the BatchNorm batch statistics without another pass)."""
    P = KSIZE // 2
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < B * H * W
    n_ok = offs_n < Cout
    bb = offs_m // (H * W)
    rem = offs_m % (H * W)
    oy = (rem // W).to(tl.int32)
    ox = (rem % W).to(tl.int32)
    x_base = bb * sxb
    acc = tl.zeros((BLOCK_M, BLOCK_N), ACC)
    chunks = tl.cdiv(Cin, BLOCK_K)
    for step in range(0, KSIZE * KSIZE * chunks):
        tap = step // chunks
        c0 = (step - tap * chunks) * BLOCK_K
        kh = tap // KSIZE
        kw = tap - kh * KSIZE
        Y = oy + (kh - P)
        X = ox + (kw - P)
        ok = m_ok & (Y >= 0) & (Y < H) & (X >= 0) & (X < W)
        offs_k = c0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < Cin
        a_mask = ok[:, None] & k_ok[None, :]
        ck = offs_k.to(tl.int64)[None, :] * sxc
        sc, sh = _affine_params(in_scale_ptr, in_shift_ptr, offs_k, k_ok, BLOCK_K, ACC, AFFINE)
        if UPSAMPLE:
            y0, y1, ly = _source_index(tl.maximum(Y, 0), h, scale_h, ALIGN)
            x0, x1, lx = _source_index(tl.maximum(X, 0), w, scale_w, ALIGN)
            r0 = x_base + y0.to(tl.int64) * sxh
            r1 = x_base + y1.to(tl.int64) * sxh
            c0o = x0.to(tl.int64) * sxw
            c1o = x1.to(tl.int64) * sxw
            a = ((1.0 - ly) * (1.0 - lx))[:, None] * _load_input(
                x_ptr, (r0 + c0o)[:, None] + ck, a_mask, sc, sh, ACC, AFFINE)
            a += ((1.0 - ly) * lx)[:, None] * _load_input(x_ptr, (r0 + c1o)[:, None] + ck, a_mask, sc, sh, ACC, AFFINE)
            a += (ly * (1.0 - lx))[:, None] * _load_input(x_ptr, (r1 + c0o)[:, None] + ck, a_mask, sc, sh, ACC, AFFINE)
            a += (ly * lx)[:, None] * _load_input(x_ptr, (r1 + c1o)[:, None] + ck, a_mask, sc, sh, ACC, AFFINE)
            a = a.to(x_ptr.dtype.element_ty)
        else:
            o = x_base + tl.maximum(Y, 0).to(tl.int64) * sxh + tl.maximum(X, 0).to(tl.int64) * sxw
            if AFFINE:
                a = _load_input(x_ptr, o[:, None] + ck, a_mask, sc, sh, ACC, AFFINE).to(x_ptr.dtype.element_ty)
            else:
                a = tl.load(x_ptr + o[:, None] + ck, mask=a_mask, other=0.0)
        w_offs = (tap * Cin + offs_k)[:, None].to(tl.int64) * Cout + offs_n[None, :]
        wt = tl.load(w_ptr + w_offs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
    o = bb[:, None] * sob + offs_n[None, :].to(tl.int64) * soc + oy.to(tl.int64)[:, None] * soh + ox.to(tl.int64)[:, None] * sow
    result = acc.to(out_ptr.dtype.element_ty)
    valid = m_ok[:, None] & n_ok[None, :]
    tl.store(out_ptr + o, result, mask=valid)
    if STATS:
        # Statistics of the values as stored (rounded to the output dtype), as BatchNorm sees them.
        v = tl.where(valid, result.to(ACC), 0.0)
        rows = tl.maximum(tl.sum(m_ok.to(ACC), axis=0), 1.0)
        tile_sum = tl.sum(v, axis=0)
        dev = tl.where(valid, v - (tile_sum / rows)[None, :], 0.0)
        stats = stats_ptr + pid_m.to(tl.int64) * 2 * Cout + offs_n
        tl.store(stats, tile_sum, mask=n_ok)
        tl.store(stats + Cout, tl.sum(dev * dev, axis=0), mask=n_ok)


@triton.jit(do_not_specialize=_RUNTIME_SIZES)
def _weight_grad_kernel(
    x_ptr, go_ptr, partial_ptr, in_scale_ptr, in_shift_ptr,
    B, Cin, h, w, Cout, H, W, KSIZE,
    sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw,
    scale_h, scale_w, pixels_per_split,
    UPSAMPLE: tl.constexpr, ALIGN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ACC: tl.constexpr, AFFINE: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """partial[split, co, ci, kh, kw] = sum over this split's pixels p of
    go[p, co] * in[p shifted by (kh - P, kw - P), ci], with the forward's ``in``: up(a) or a,
    a = relu(x * in_scale + in_shift) or x, recomputed while loading."""
    P = KSIZE // 2
    pid_co = tl.program_id(0)
    pid_ci = tl.program_id(1)
    pid_z = tl.program_id(2)
    tap = pid_z % (KSIZE * KSIZE)
    split = pid_z // (KSIZE * KSIZE)
    kh = tap // KSIZE
    kw = tap % KSIZE
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    offs_ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    co_ok = offs_co < Cout
    ci_ok = offs_ci < Cin
    total = B * H * W
    start = split.to(tl.int64) * pixels_per_split
    sc, sh = _affine_params(in_scale_ptr, in_shift_ptr, offs_ci, ci_ok, BLOCK_CI, ACC, AFFINE)
    cc = offs_ci.to(tl.int64)[None, :] * sxc
    acc = tl.zeros((BLOCK_CO, BLOCK_CI), ACC)
    for p0 in range(0, pixels_per_split, BLOCK_P):
        offs_p = start + p0 + tl.arange(0, BLOCK_P)
        p_ok = (offs_p < total) & (p0 + tl.arange(0, BLOCK_P) < pixels_per_split)
        bb = offs_p // (H * W)
        rem = offs_p % (H * W)
        oy = (rem // W).to(tl.int32)
        ox = (rem % W).to(tl.int32)
        g_offs = (bb * sgb + oy.to(tl.int64) * sgh + ox.to(tl.int64) * sgw)[None, :] + offs_co.to(tl.int64)[:, None] * sgc
        g = tl.load(go_ptr + g_offs, mask=co_ok[:, None] & p_ok[None, :], other=0.0)
        Y = oy + kh - P
        X = ox + kw - P
        ok = p_ok & (Y >= 0) & (Y < H) & (X >= 0) & (X < W)
        base = bb * sxb
        u_mask = ok[:, None] & ci_ok[None, :]
        if UPSAMPLE:
            y0, y1, ly = _source_index(tl.maximum(Y, 0), h, scale_h, ALIGN)
            x0, x1, lx = _source_index(tl.maximum(X, 0), w, scale_w, ALIGN)
            r0 = base + y0.to(tl.int64) * sxh
            r1 = base + y1.to(tl.int64) * sxh
            c0o = x0.to(tl.int64) * sxw
            c1o = x1.to(tl.int64) * sxw
            u = ((1.0 - ly) * (1.0 - lx))[:, None] * _load_input(x_ptr, (r0 + c0o)[:, None] + cc, u_mask, sc, sh, ACC, AFFINE)
            u += ((1.0 - ly) * lx)[:, None] * _load_input(x_ptr, (r0 + c1o)[:, None] + cc, u_mask, sc, sh, ACC, AFFINE)
            u += (ly * (1.0 - lx))[:, None] * _load_input(x_ptr, (r1 + c0o)[:, None] + cc, u_mask, sc, sh, ACC, AFFINE)
            u += (ly * lx)[:, None] * _load_input(x_ptr, (r1 + c1o)[:, None] + cc, u_mask, sc, sh, ACC, AFFINE)
        else:
            u = _load_input(x_ptr, (base + tl.maximum(Y, 0).to(tl.int64) * sxh + tl.maximum(X, 0).to(tl.int64) * sxw)[:, None] + cc,
                            u_mask, sc, sh, ACC, AFFINE)
        acc = tl.dot(g, u.to(x_ptr.dtype.element_ty), acc, input_precision=DOT_PRECISION, out_dtype=ACC)
    out = (
        split.to(tl.int64) * Cout * Cin * KSIZE * KSIZE
        + (offs_co[:, None] * Cin + offs_ci[None, :]).to(tl.int64) * (KSIZE * KSIZE)
        + tap
    )
    tl.store(partial_ptr + out, acc, mask=co_ok[:, None] & ci_ok[None, :])


@triton.jit(do_not_specialize=["B", "h", "w", "H", "W", "WIN_H", "WIN_W"])
def _bilinear_adjoint_kernel(
    gu_ptr, gx_ptr,
    B, C, h, w, H, W,
    sgb, sgc, sgh, sgw, sxb, sxc, sxh, sxw,
    scale_h, scale_w, inv_h, inv_w, WIN_H, WIN_W,
    ALIGN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_x[b, c, i, j] = sum over output (Y, X) of wy(Y -> i) * wx(X -> j) * gu[b, c, Y, X].

    For input row i only output rows Y with i0(Y) in {i - 1, i} contribute; they lie in a
    window of WIN_H rows starting near the inverse map of i - 1 (likewise for columns), and the
    weights are recomputed with the forward's exact formula, so the window need only cover them.
    The window is walked by a runtime loop (one load of a pixels x channels tile per output
    pixel, skipped where its weight is zero): nothing is indexed at run time in registers.
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = offs_p < B * h * w
    c_ok = offs_c < C
    bb = offs_p // (h * w)
    rem = offs_p % (h * w)
    iy = (rem // w).to(tl.int32)
    ix = (rem % w).to(tl.int32)
    if ALIGN:
        y_start = ((iy - 1).to(tl.float32) * inv_h).to(tl.int32) - 1
        x_start = ((ix - 1).to(tl.float32) * inv_w).to(tl.int32) - 1
    else:
        y_start = (((iy - 1).to(tl.float32) + 0.5) * inv_h - 0.5).to(tl.int32) - 1
        x_start = (((ix - 1).to(tl.float32) + 0.5) * inv_w - 0.5).to(tl.int32) - 1
    y_start = tl.maximum(y_start, 0)
    x_start = tl.maximum(x_start, 0)
    g_base = bb * sgb
    cg = offs_c.to(tl.int64)[None, :] * sgc
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for t in range(0, WIN_H * WIN_W):
        ty = t // WIN_W
        tx = t - ty * WIN_W
        Y = y_start + ty
        y0, y1, ly = _source_index(Y, h, scale_h, ALIGN)
        wy = tl.where(y0 == iy, 1.0 - ly, 0.0) + tl.where(y1 == iy, ly, 0.0)
        wy = tl.where(Y < H, wy, 0.0)
        X = x_start + tx
        x0, x1, lx = _source_index(X, w, scale_w, ALIGN)
        wx = tl.where(x0 == ix, 1.0 - lx, 0.0) + tl.where(x1 == ix, lx, 0.0)
        wgt = wy * tl.where(X < W, wx, 0.0)
        use = p_ok & (wgt != 0.0)
        g = tl.load(
            gu_ptr + (g_base + Y.to(tl.int64) * sgh + X.to(tl.int64) * sgw)[:, None] + cg,
            mask=use[:, None] & c_ok[None, :], other=0.0,
        ).to(tl.float32)
        acc += wgt[:, None] * g
    o = (bb * sxb + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw)[:, None] + offs_c.to(tl.int64)[None, :] * sxc
    tl.store(gx_ptr + o, acc.to(gx_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


def _scale(in_size: int, out_size: int, align_corners: bool) -> float:
    """PyTorch's source-index scale of a bilinear resize (``size`` given, no scale factor)."""
    if align_corners:
        return (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return in_size / out_size


def _window(in_size: int, out_size: int, scale: float) -> int:
    """Output indices an input index can receive from: those whose source lies in (i-1, i+1),
    a span of 2/scale, plus slack for the floor and the start offset."""
    if scale <= 0.0:
        return out_size
    return min(out_size + 2, int(2.0 / scale) + 4)


def _dot_config(dtype: torch.dtype):
    """(tl.dot input precision, accumulator dtype) for an input dtype."""
    if dtype == torch.float64:
        return "ieee", tl.float64
    if dtype == torch.float32:
        return "ieee", tl.float32
    return None, tl.float32  # fp16/bf16 operands: tensor cores, fp32 accumulation


def _check(x, weight, size):
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"expected x (B, Cin, h, w) and weight (Cout, Cin, k, k), got {tuple(x.shape)} and {tuple(weight.shape)}")
    k = weight.shape[-1]
    if weight.shape[1] != x.shape[1] or weight.shape[2] != k or k % 2 != 1:
        raise ValueError(f"weight {tuple(weight.shape)} must be (Cout, {x.shape[1]}, k, k) with k odd")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"upsample_conv2d supports float32/float16/bfloat16 (float64 for checks), got {x.dtype}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"weight must match x's dtype and device, got {weight.dtype} on {weight.device}, x {x.dtype} on {x.device}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be two positive integers, got {size}")


def _conv_config(dtype: torch.dtype, cout: int, cuda: bool):
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) of the implicit GEMM. On CUDA, checked by
    bench/compile_check.py for sm_90 and sm_80 (no spills; wgmma/mma for fp16/bf16)."""
    if not cuda:
        return 32, 16, 16, 4, 1  # the interpreter: small tiles, several programs
    if dtype in (torch.float16, torch.bfloat16):
        return 128, 64 if cout <= 64 else 128, 32, 8, 3
    return 64, 64, 16, 8, 2  # fp32: IEEE products on the FMA units, operands in registers


def _weight_grad_config(dtype: torch.dtype, cuda: bool):
    """(BLOCK_CO, BLOCK_CI, BLOCK_P, warps, stages) of the weight-gradient GEMM (see _conv_config)."""
    if not cuda:
        return 16, 16, 32, 4, 1
    if dtype in (torch.float16, torch.bfloat16):
        return 64, 64, 64, 8, 3
    return 64, 64, 32, 8, 2  # fp32 (IEEE, FMA): 8 warps share the operand tiles, no spills


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """The kernels' working layout: channels innermost. (They take any strides, but with pixels
    innermost the per-pixel index vectors and the NCHW store of a GEMM tile need about twice the
    registers and spill: see bench/results/compile-sm90.md.) A no-op for channels_last input."""
    return t.contiguous(memory_format=torch.channels_last)


def _in_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """``t`` with the canonical strides of ``fmt`` (a copy only when they differ)."""
    r = torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=fmt)
    return t if r.stride() == t.stride() else r.copy_(t)


def _conv(inp, weight_kkio, cout, out, upsample, align_corners, ksize, in_scale=None, in_shift=None, stats=False):
    """Launch the implicit GEMM: ``out`` (B, cout, H, W) from ``inp`` with (k, k, Cin, Cout)
    weights; with ``in_scale``/``in_shift`` the input is relu(inp * scale + shift) per channel.
    With ``stats`` returns the (programs, 2, cout) per-tile sums and squared deviations and the
    tile height, else None."""
    B, Cin, h, w = inp.shape
    H, W = out.shape[-2:]
    precision, acc = _dot_config(inp.dtype)
    bm, bn, bk, warps, stages = _conv_config(inp.dtype, cout, inp.is_cuda)
    grid = (triton.cdiv(B * H * W, bm), triton.cdiv(cout, bn))
    partial = None
    if stats:
        partial = torch.empty((grid[0], 2, cout), dtype=_stats_dtype(inp.dtype), device=inp.device)
    affine = in_scale is not None
    _upsample_conv_kernel[grid](
        inp, weight_kkio, out,
        in_scale if affine else inp, in_shift if affine else inp, partial if stats else out,
        B, Cin, h, w, cout, H, W, ksize,
        *inp.stride(), *out.stride(),
        _scale(h, H, align_corners), _scale(w, W, align_corners),
        UPSAMPLE=upsample, ALIGN=bool(align_corners), DOT_PRECISION=precision, ACC=acc,
        AFFINE=affine, STATS=bool(stats),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
    )
    return (partial, bm) if stats else None


def merge_tile_stats(partial: torch.Tensor, total: int, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-channel (mean, biased variance) of ``total`` rows from per-tile (sum, M2) partials.

    Tile i holds :math:`n_i` rows (``tile`` each, the last one the rest), their sum :math:`s_i`
    and :math:`M2_i = \sum (v - s_i/n_i)^2`. Chan et al.'s merge, in a fixed order:
    :math:`\mu = \sum s_i / N`, :math:`\sigma^2 = (\sum M2_i + \sum n_i (s_i/n_i - \mu)^2) / N`
    (no catastrophic cancellation, unlike :math:`E[v^2] - \mu^2`)."""
    programs = partial.shape[0]
    rows = torch.full((programs,), float(tile), dtype=partial.dtype, device=partial.device)
    rows[-1] = total - tile * (programs - 1)
    sums, m2 = partial[:, 0], partial[:, 1]
    mean = sums.sum(0) / total
    spread = (rows[:, None] * (sums / rows[:, None] - mean) ** 2).sum(0)
    return mean, (m2.sum(0) + spread) / total


def upsample_conv2d_forward(x, weight, size, align_corners):
    """conv_kxk(bilinear_upsample(x, size)), padding k // 2, no bias; output in x's memory format."""
    _check(x, weight, size)
    B, Cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    H, W = int(size[0]), int(size[1])
    fmt = _memory_format(x)
    out = torch.empty((B, cout, H, W), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    if out.numel() == 0:
        return _in_format(out, fmt)
    _conv(_channels_last(x), weight.permute(2, 3, 1, 0).contiguous(), cout, out, True, align_corners, k)
    return _in_format(out, fmt)


def _check_affine(x, in_scale, in_shift):
    if (in_scale is None) != (in_shift is None):
        raise ValueError("in_scale and in_shift must be given together (or neither)")
    if in_scale is not None:
        for name, t in (("in_scale", in_scale), ("in_shift", in_shift)):
            if t.shape != (x.shape[1],) or t.device != x.device:
                raise ValueError(f"{name} must be ({x.shape[1]},) on {x.device}, got {tuple(t.shape)} on {t.device}")


def upsample_conv2d_bn_forward(x, in_scale, in_shift, weight, size, align_corners):
    """(out, mean, var): out = conv_kxk(up(a), W), a = relu(x * in_scale + in_shift) per channel
    (or x when both are None), ``up`` skipped when ``size`` is x's size; mean and biased var of
    out per channel over (B, H, W), in float32 (float64 for float64), from the conv's epilogue."""
    _check(x, weight, size)
    _check_affine(x, in_scale, in_shift)
    B, Cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    H, W = int(size[0]), int(size[1])
    fmt = _memory_format(x)
    out = torch.empty((B, cout, H, W), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    stats_dtype = _stats_dtype(x.dtype)
    if out.numel() == 0:
        nan = torch.full((cout,), float("nan"), dtype=stats_dtype, device=x.device)
        return _in_format(out, fmt), nan, nan.clone()
    if in_scale is not None:
        in_scale, in_shift = in_scale.to(stats_dtype).contiguous(), in_shift.to(stats_dtype).contiguous()
    partial, tile = _conv(_channels_last(x), weight.permute(2, 3, 1, 0).contiguous(), cout, out, (h, w) != (H, W),
                          align_corners, k, in_scale, in_shift, stats=True)
    mean, var = merge_tile_stats(partial, B * H * W, tile)
    return _in_format(out, fmt), mean, var


def upsample_conv2d_backward(grad_out, x, weight, size, align_corners):
    """(grad_x, grad_weight) of :func:`upsample_conv2d_forward`, recomputing up(x)."""
    return _backward(grad_out, x, None, None, weight, size, align_corners, upsample=True)


def upsample_conv2d_bn_backward(grad_out, x, in_scale, in_shift, weight, size, align_corners):
    """(grad_a, grad_weight) of :func:`upsample_conv2d_bn_forward`'s ``out`` for the total
    gradient ``grad_out`` of out: grad_a with respect to the activated input a (x's shape),
    the weight gradient recomputing up(a) from x. The affine + ReLU's own backward is
    elementwise and left to the op."""
    _check_affine(x, in_scale, in_shift)
    if in_scale is not None:
        dtype = _stats_dtype(x.dtype)
        in_scale, in_shift = in_scale.to(dtype).contiguous(), in_shift.to(dtype).contiguous()
    upsample = tuple(x.shape[-2:]) != (int(size[0]), int(size[1]))
    return _backward(grad_out, x, in_scale, in_shift, weight, size, align_corners, upsample=upsample)


def _backward(grad_out, x, in_scale, in_shift, weight, size, align_corners, *, upsample):
    _check(x, weight, size)
    B, Cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    H, W = int(size[0]), int(size[1])
    if tuple(grad_out.shape) != (B, cout, H, W):
        raise ValueError(f"grad_out must be {(B, cout, H, W)}, got {tuple(grad_out.shape)}")
    fmt = _memory_format(x)
    if grad_out.numel() == 0 or x.numel() == 0:
        return torch.zeros_like(x, memory_format=fmt), torch.zeros_like(weight, memory_format=torch.contiguous_format)
    grad_out = _channels_last(grad_out.to(x.dtype))
    x = _channels_last(x)
    grad_x = torch.empty_like(x, memory_format=torch.channels_last)
    precision, acc = _dot_config(x.dtype)
    acc_torch = _stats_dtype(x.dtype)

    # grad_x, step 1: g_u = conv(grad_out, W^T flipped) at the upsampled size (float32)
    w_t = weight.flip(2, 3).permute(2, 3, 0, 1).contiguous()  # (k, k, Cout, Cin)
    sh, sw = _scale(h, H, align_corners), _scale(w, W, align_corners)
    if upsample:
        gu = torch.empty((B, Cin, H, W), dtype=acc_torch, device=x.device, memory_format=torch.channels_last)
        _conv(grad_out, w_t, Cin, gu, False, align_corners, k)
        # step 2: the bilinear adjoint as a gather
        bp, bc = (64, 32) if x.is_cuda else (32, 16)
        _bilinear_adjoint_kernel[(triton.cdiv(B * h * w, bp), triton.cdiv(Cin, bc))](
            gu, grad_x, B, Cin, h, w, H, W, *gu.stride(), *grad_x.stride(),
            sh, sw, 1.0 / sh if sh > 0 else 0.0, 1.0 / sw if sw > 0 else 0.0, _window(h, H, sh), _window(w, W, sw),
            ALIGN=bool(align_corners), BLOCK_P=bp, BLOCK_C=bc, num_warps=4,
        )
    else:  # no upsample: the transposed conv is the whole input gradient
        _conv(grad_out, w_t, Cin, grad_x, False, align_corners, k)

    # grad_weight: per tap an implicit GEMM over B*H*W pixels, split-K, fixed-order reduce
    bco, bci, bpix, warps, stages = _weight_grad_config(x.dtype, x.is_cuda)
    if x.is_cuda:
        programs = triton.cdiv(cout, bco) * triton.cdiv(Cin, bci) * k * k
        target = 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
    else:
        programs = triton.cdiv(cout, bco) * triton.cdiv(Cin, bci) * k * k
        target = programs * 2  # the interpreter: exercise split-K with two splits
    total = B * H * W
    splits = max(1, min(triton.cdiv(target, programs), triton.cdiv(total, 4 * bpix)))
    per_split = triton.cdiv(triton.cdiv(total, splits), bpix) * bpix
    splits = triton.cdiv(total, per_split)
    partials = torch.empty((splits, cout, Cin, k, k), dtype=acc_torch, device=x.device)
    affine = in_scale is not None
    _weight_grad_kernel[(triton.cdiv(cout, bco), triton.cdiv(Cin, bci), k * k * splits)](
        x, grad_out, partials, in_scale if affine else x, in_shift if affine else x,
        B, Cin, h, w, cout, H, W, k,
        *x.stride(), *grad_out.stride(), sh, sw, per_split,
        UPSAMPLE=upsample, ALIGN=bool(align_corners), DOT_PRECISION=precision, ACC=acc, AFFINE=affine,
        BLOCK_CO=bco, BLOCK_CI=bci, BLOCK_P=bpix, num_warps=warps, num_stages=stages,
    )
    grad_w = partials.sum(dim=0).to(weight.dtype)
    return _in_format(grad_x, fmt), grad_w


__all__ = [
    "merge_tile_stats",
    "upsample_conv2d_backward",
    "upsample_conv2d_bn_backward",
    "upsample_conv2d_bn_forward",
    "upsample_conv2d_forward",
]
