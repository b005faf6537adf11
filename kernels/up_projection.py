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

Any H, W; NCHW or channels_last (all kernels take strides); fp32, fp16, bf16 (fp64 too, for
gradcheck under the interpreter). Offsets are int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


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
def _upsample_conv_kernel(
    x_ptr, w_ptr, out_ptr,
    B, Cin, h, w, Cout, H, W,
    sxb, sxc, sxh, sxw, sob, soc, soh, sow,
    scale_h, scale_w,
    KSIZE: tl.constexpr, UPSAMPLE: tl.constexpr, ALIGN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[b, n, Y, X] = sum_{c, kh, kw} w[kh, kw, c, n] * in[b, c, Y + kh - P, X + kw - P],
    in = up(x) (UPSAMPLE) or x itself; zero outside [0, H) x [0, W)."""
    P: tl.constexpr = KSIZE // 2
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
    for kh in tl.static_range(KSIZE):
        Y = oy + (kh - P)
        y_ok = (Y >= 0) & (Y < H)
        if UPSAMPLE:
            y0, y1, ly = _source_index(tl.maximum(Y, 0), h, scale_h, ALIGN)
        for kw in tl.static_range(KSIZE):
            X = ox + (kw - P)
            ok = m_ok & y_ok & (X >= 0) & (X < W)
            if UPSAMPLE:
                x0, x1, lx = _source_index(tl.maximum(X, 0), w, scale_w, ALIGN)
                o00 = x_base + y0.to(tl.int64) * sxh + x0.to(tl.int64) * sxw
                o01 = x_base + y0.to(tl.int64) * sxh + x1.to(tl.int64) * sxw
                o10 = x_base + y1.to(tl.int64) * sxh + x0.to(tl.int64) * sxw
                o11 = x_base + y1.to(tl.int64) * sxh + x1.to(tl.int64) * sxw
                f00 = ((1.0 - ly) * (1.0 - lx))[:, None]
                f01 = ((1.0 - ly) * lx)[:, None]
                f10 = (ly * (1.0 - lx))[:, None]
                f11 = (ly * lx)[:, None]
            else:
                o00 = x_base + Y.to(tl.int64) * sxh + X.to(tl.int64) * sxw
            for c0 in range(0, Cin, BLOCK_K):
                offs_k = c0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < Cin
                a_mask = ok[:, None] & k_ok[None, :]
                ck = offs_k.to(tl.int64)[None, :] * sxc
                if UPSAMPLE:
                    a = f00 * tl.load(x_ptr + o00[:, None] + ck, mask=a_mask, other=0.0).to(tl.float32)
                    a += f01 * tl.load(x_ptr + o01[:, None] + ck, mask=a_mask, other=0.0).to(tl.float32)
                    a += f10 * tl.load(x_ptr + o10[:, None] + ck, mask=a_mask, other=0.0).to(tl.float32)
                    a += f11 * tl.load(x_ptr + o11[:, None] + ck, mask=a_mask, other=0.0).to(tl.float32)
                    a = a.to(x_ptr.dtype.element_ty)
                else:
                    a = tl.load(x_ptr + o00[:, None] + ck, mask=a_mask, other=0.0)
                w_offs = ((kh * KSIZE + kw) * Cin + offs_k)[:, None].to(tl.int64) * Cout + offs_n[None, :]
                wt = tl.load(w_ptr + w_offs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
                acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
    o = bb[:, None] * sob + offs_n[None, :].to(tl.int64) * soc + oy.to(tl.int64)[:, None] * soh + ox.to(tl.int64)[:, None] * sow
    tl.store(out_ptr + o, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _weight_grad_kernel(
    x_ptr, go_ptr, partial_ptr,
    B, Cin, h, w, Cout, H, W,
    sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw,
    scale_h, scale_w, pixels_per_split,
    KSIZE: tl.constexpr, ALIGN: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """partial[split, co, ci, kh, kw] = sum over this split's pixels p of
    go[p, co] * up(x)[p shifted by (kh - P, kw - P), ci]."""
    P: tl.constexpr = KSIZE // 2
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
        y0, y1, ly = _source_index(tl.maximum(Y, 0), h, scale_h, ALIGN)
        x0, x1, lx = _source_index(tl.maximum(X, 0), w, scale_w, ALIGN)
        base = bb * sxb
        cc = offs_ci.to(tl.int64)[None, :] * sxc
        u_mask = ok[:, None] & ci_ok[None, :]
        u = ((1.0 - ly) * (1.0 - lx))[:, None] * tl.load(
            x_ptr + (base + y0.to(tl.int64) * sxh + x0.to(tl.int64) * sxw)[:, None] + cc, mask=u_mask, other=0.0
        ).to(tl.float32)
        u += ((1.0 - ly) * lx)[:, None] * tl.load(
            x_ptr + (base + y0.to(tl.int64) * sxh + x1.to(tl.int64) * sxw)[:, None] + cc, mask=u_mask, other=0.0
        ).to(tl.float32)
        u += (ly * (1.0 - lx))[:, None] * tl.load(
            x_ptr + (base + y1.to(tl.int64) * sxh + x0.to(tl.int64) * sxw)[:, None] + cc, mask=u_mask, other=0.0
        ).to(tl.float32)
        u += (ly * lx)[:, None] * tl.load(
            x_ptr + (base + y1.to(tl.int64) * sxh + x1.to(tl.int64) * sxw)[:, None] + cc, mask=u_mask, other=0.0
        ).to(tl.float32)
        acc = tl.dot(g, u.to(x_ptr.dtype.element_ty), acc, input_precision=DOT_PRECISION, out_dtype=ACC)
    out = (
        split.to(tl.int64) * Cout * Cin * KSIZE * KSIZE
        + (offs_co[:, None] * Cin + offs_ci[None, :]).to(tl.int64) * (KSIZE * KSIZE)
        + tap
    )
    tl.store(partial_ptr + out, acc, mask=co_ok[:, None] & ci_ok[None, :])


@triton.jit
def _bilinear_adjoint_kernel(
    gu_ptr, gx_ptr,
    B, C, h, w, H, W,
    sgb, sgc, sgh, sgw, sxb, sxc, sxh, sxw,
    scale_h, scale_w, inv_h, inv_w,
    ALIGN: tl.constexpr, WIN_H: tl.constexpr, WIN_W: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_x[b, c, i, j] = sum over output (Y, X) of wy(Y -> i) * wx(X -> j) * gu[b, c, Y, X].

    For input row i only output rows Y with i0(Y) in {i - 1, i} contribute; they lie in a
    window of WIN_H rows starting near the inverse map of i - 1 (likewise for columns), and the
    weights are recomputed with the forward's exact formula, so the window need only cover them.
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
    for ty in tl.static_range(WIN_H):
        Y = y_start + ty
        y0, y1, ly = _source_index(Y, h, scale_h, ALIGN)
        wy = tl.where(y0 == iy, 1.0 - ly, 0.0) + tl.where(y1 == iy, ly, 0.0)
        wy = tl.where(Y < H, wy, 0.0)
        for tx in tl.static_range(WIN_W):
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


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


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


def _conv(inp, weight_kkio, cout, out, upsample, align_corners, ksize):
    """Launch the implicit GEMM: ``out`` (B, cout, H, W) from ``inp`` with (k, k, Cin, Cout) weights."""
    B, Cin, h, w = inp.shape
    H, W = out.shape[-2:]
    precision, acc = _dot_config(inp.dtype)
    if inp.is_cuda:
        bm, bn, bk, warps, stages = 128, 64 if cout <= 64 else 128, 32, 8, 3
    else:
        bm, bn, bk, warps, stages = 32, 16, 16, 4, 1
    grid = (triton.cdiv(B * H * W, bm), triton.cdiv(cout, bn))
    _upsample_conv_kernel[grid](
        inp, weight_kkio, out, B, Cin, h, w, cout, H, W,
        *inp.stride(), *out.stride(),
        _scale(h, H, align_corners), _scale(w, W, align_corners),
        KSIZE=ksize, UPSAMPLE=upsample, ALIGN=bool(align_corners), DOT_PRECISION=precision, ACC=acc,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
    )
    return out


def upsample_conv2d_forward(x, weight, size, align_corners):
    """conv_kxk(bilinear_upsample(x, size)), padding k // 2, no bias; output in x's memory format."""
    _check(x, weight, size)
    B, Cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    H, W = int(size[0]), int(size[1])
    out = torch.empty((B, cout, H, W), dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
    if out.numel() == 0:
        return out
    return _conv(x, weight.permute(2, 3, 1, 0).contiguous(), cout, out, True, align_corners, k)


def upsample_conv2d_backward(grad_out, x, weight, size, align_corners):
    """(grad_x, grad_weight) of :func:`upsample_conv2d_forward`, recomputing up(x)."""
    _check(x, weight, size)
    B, Cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    H, W = int(size[0]), int(size[1])
    if tuple(grad_out.shape) != (B, cout, H, W):
        raise ValueError(f"grad_out must be {(B, cout, H, W)}, got {tuple(grad_out.shape)}")
    grad_out = grad_out.to(x.dtype)
    fmt = _memory_format(x)
    grad_x = torch.empty_like(x, memory_format=fmt)
    if grad_out.numel() == 0 or x.numel() == 0:
        return grad_x.zero_(), torch.zeros_like(weight, memory_format=torch.contiguous_format)
    precision, acc = _dot_config(x.dtype)
    acc_torch = torch.float64 if x.dtype == torch.float64 else torch.float32

    # grad_x, step 1: g_u = conv(grad_out, W^T flipped) at the upsampled size (float32)
    w_t = weight.flip(2, 3).permute(2, 3, 0, 1).contiguous()  # (k, k, Cout, Cin)
    gu = torch.empty((B, Cin, H, W), dtype=acc_torch, device=x.device, memory_format=fmt)
    _conv(grad_out, w_t, Cin, gu, False, align_corners, k)
    # step 2: the bilinear adjoint as a gather
    sh, sw = _scale(h, H, align_corners), _scale(w, W, align_corners)
    bp, bc = (64, 32) if x.is_cuda else (32, 16)
    _bilinear_adjoint_kernel[(triton.cdiv(B * h * w, bp), triton.cdiv(Cin, bc))](
        gu, grad_x, B, Cin, h, w, H, W, *gu.stride(), *grad_x.stride(),
        sh, sw, 1.0 / sh if sh > 0 else 0.0, 1.0 / sw if sw > 0 else 0.0,
        ALIGN=bool(align_corners), WIN_H=_window(h, H, sh), WIN_W=_window(w, W, sw),
        BLOCK_P=bp, BLOCK_C=bc, num_warps=4,
    )

    # grad_weight: per tap an implicit GEMM over B*H*W pixels, split-K, fixed-order reduce
    if x.is_cuda:
        bco, bci, bpix, warps, stages = 64, 64, 64, 4, 3
        programs = triton.cdiv(cout, bco) * triton.cdiv(Cin, bci) * k * k
        target = 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
    else:
        bco, bci, bpix, warps, stages = 16, 16, 32, 4, 1
        programs = triton.cdiv(cout, bco) * triton.cdiv(Cin, bci) * k * k
        target = programs * 2  # the interpreter: exercise split-K with two splits
    total = B * H * W
    splits = max(1, min(triton.cdiv(target, programs), triton.cdiv(total, 4 * bpix)))
    per_split = triton.cdiv(triton.cdiv(total, splits), bpix) * bpix
    splits = triton.cdiv(total, per_split)
    partials = torch.empty((splits, cout, Cin, k, k), dtype=acc_torch, device=x.device)
    _weight_grad_kernel[(triton.cdiv(cout, bco), triton.cdiv(Cin, bci), k * k * splits)](
        x, grad_out, partials, B, Cin, h, w, cout, H, W,
        *x.stride(), *grad_out.stride(), sh, sw, per_split,
        KSIZE=k, ALIGN=bool(align_corners), DOT_PRECISION=precision, ACC=acc,
        BLOCK_CO=bco, BLOCK_CI=bci, BLOCK_P=bpix, num_warps=warps, num_stages=stages,
    )
    grad_w = partials.sum(dim=0).to(weight.dtype)
    return grad_x, grad_w


__all__ = ["upsample_conv2d_backward", "upsample_conv2d_forward"]
