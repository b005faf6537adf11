r"""Fused depth loss (Hu et al.) in Triton: the loss terms, their counts and the unnormalised
gradients with respect to pred in one pass.

Spec: ``fastmde/reference/depth_loss.py`` (read its docstring for the exact semantics:
sanitised ground truth, reflect-101 folding of the 7x7 blur, sign(0) = 0, N_d = valid pixels,
N_s = pixels whose whole ground-truth stencil is valid).

Layout of the work
------------------
The (B, H, W) maps are cut into output tiles of ``OUT_H x OUT_W`` pixels. A program works on a
power-of-two block ``BLOCK_H x BLOCK_W`` = the tile plus a halo (``HALO_H`` rows and
``HALO_W`` columns each side) and walks its share of the tiles (a persistent grid of a few
programs per SM), in four stages separated by CTA barriers:

1. (blur only) vertical 7-tap Gaussian of the ground truth, read straight from global memory
   with reflect-folded rows, stored to the program's scratch block ``V``;
2. (blur only) horizontal 7-tap pass over ``V`` (reflect-folded columns) -> :math:`Y_b`, zero
   outside the image (the Sobel pads with zeros), stored to scratch ``YB``; without blur the
   ground truth itself is stored there at the start of stage 3;
3. Sobel of pred (global loads, zero padded) and of :math:`Y_b` (scratch ``YB``); per pixel the
   depth, gradient and normal terms, and
   :math:`\partial L/\partial\hat g_x`, :math:`\partial L/\partial\hat g_y` stored to scratch;
4. the Sobel adjoint (a 3x3 transposed stencil over the scratch) -> ``grad_stencil`` and the
   depth-term derivative -> ``grad_depth`` on the tile's interior.

Masked stencils: the ground truth enters the blur and the Sobel as its value where valid, NaN
where invalid and 0 outside the image (the zero padding; the blur's reflection only re-reads
pixels inside the image). A NaN spreads through exactly the sums that read it, so
:math:`g_x, g_y` are NaN precisely where the stencil (3x3, or 9x9 through the blur) holds an
invalid pixel: the stencil validity is ``valid & (gx == gx) & (gy == gy)``, and the NaNs are
replaced by 0 before any term is computed. No extra scratch plane or loads for the erosion.

Scratch is ``3 * BLOCK_H * BLOCK_W`` values per program and is reused for every tile, so it
stays in L2: DRAM sees (nearly) one read of pred, target and mask and one write of the
gradient. Halos: the adjoint needs the Sobel derivatives one pixel out, those need
:math:`Y_b` two pixels out; the horizontal blur pass reads ``V`` three more columns out, the
vertical one reads global memory, so ``HALO_H = 2, HALO_W = 5`` with blur and ``2, 2``
without (reflect folding never moves an index by more than the tap offset).

One pass: the gradients written are those of the unnormalised sums N_d w0 depth and
N_s (w1 gradient + w2 normal), so the counts are only needed for the terms and are taken in the
same pass; then one elementwise kernel (``_scale_add_kernel``) applies 1/N_d and 1/N_s, reading
the counts on the device, and leaves d total / d pred, which the op's backward scales by the
incoming gradient (the same kernel). DRAM traffic is one read of pred and target (and mask) and
one write of each part, then one read of each and one write of the gradient: 28 bytes per pixel
in float32 (16 for the depth term alone).

Registers (``ptxas -v``, sm_90 and sm_80: at most 128 per thread, no spills): a program keeps
only scalar running sums across its tiles (each tile's block of per-pixel terms is reduced at
once); the ground truth's Sobel reads the scratch (a single masked global load per pixel, not
nine); the blur's taps are run-time loops (one tap live at a time); 16 warps on a GPU (4 pixels
of the 16x128 block per thread).

Determinism: each program writes partial sums of the three unnormalised terms and integer
counts of its pixels (tile by tile, in a fixed order); they are reduced in a fixed order on the
device (no atomics, no host synchronisation). Compute is float32 (float64 for float64 input,
the scalar parameters and blur weights included: they are read from a small tensor in the
compute dtype).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastmde._checks import compute_dtype
from fastmde.reference.depth_loss import BLUR_KERNEL_SIZE, BLUR_SIGMA, DEPTH_TERMS, gaussian_weights_1d, gradient_dtype

@triton.jit
def _reflect(i, n):
    """Reflect-101 index folding into [0, n) (any number of folds; n = 1 -> 0)."""
    period = tl.maximum(2 * (n - 1), 1)
    i = ((i % period) + period) % period
    i = tl.where(i >= n, period - i, i)
    return tl.where(n == 1, 0, i)


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0)).to(x.dtype)


@triton.jit
def _load_pred(pred_ptr, base, R, C, H, W, CDT: tl.constexpr):
    """pred at absolute (R, C), zero outside the image (the Sobel's zero padding)."""
    ok = (R >= 0) & (R < H) & (C >= 0) & (C < W)
    return tl.load(pred_ptr + base + R * W + C, mask=ok, other=0.0).to(CDT)


@triton.jit
def _load_stencil_target(target_ptr, mask_ptr, base, R, C, H, W, HAS_MASK: tl.constexpr, CDT: tl.constexpr):
    """Ground truth as the stencils read it at absolute (R, C): the value where valid, NaN
    where invalid (non-finite or masked out: it marks every stencil sum it enters), 0 outside
    the image (the Sobel's zero padding)."""
    ok = (R >= 0) & (R < H) & (C >= 0) & (C < W)
    y = tl.load(target_ptr + base + R * W + C, mask=ok, other=0.0).to(CDT)
    valid = (y == y) & (tl.abs(y) < float("inf"))
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + base + R * W + C, mask=ok, other=1) != 0)
    return tl.where(valid, y, float("nan"))


@triton.jit
def _load_block(ptr, i, j, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Scratch block value at block coordinates (i, j); 0 outside the block."""
    ok = (i >= 0) & (i < BLOCK_H) & (j >= 0) & (j < BLOCK_W)
    return tl.load(ptr + i * BLOCK_W + j, mask=ok, other=0.0)


@triton.jit
def _total(x):
    """Sum of a block (rows first, in a fixed order)."""
    return tl.sum(tl.sum(x, axis=1), axis=0)


@triton.jit
def _depth_loss_kernel(
    pred_ptr, target_ptr, mask_ptr, grad_depth_ptr, grad_stencil_ptr, partial_ptr, count_ptr,
    scratch_ptr, params_ptr,
    H, W, tiles_w, tiles_per_image, num_tiles, tiles_per_program,
    DEPTH_LOG: tl.constexpr, GRADIENT: tl.constexpr, NORMAL: tl.constexpr, BLUR: tl.constexpr,
    HAS_MASK: tl.constexpr, CDT: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    # params: alpha, the term weights, then the blur's taps from the centre outwards (read in
    # the blur's loops), all in the compute dtype
    alpha = tl.load(params_ptr + 0)
    w0 = tl.load(params_ptr + 1)
    w1 = tl.load(params_ptr + 2)
    w2 = tl.load(params_ptr + 3)
    OUT_H: tl.constexpr = BLOCK_H - 2 * HALO_H
    OUT_W: tl.constexpr = BLOCK_W - 2 * HALO_W
    i = tl.arange(0, BLOCK_H)[:, None]
    j = tl.arange(0, BLOCK_W)[None, :]
    scratch = scratch_ptr + pid.to(tl.int64) * (3 * BLOCK_H * BLOCK_W)
    s_a = scratch  # V, then dL/d(Sobel_x pred)
    s_b = scratch + BLOCK_H * BLOCK_W  # blurred target
    s_c = scratch + 2 * BLOCK_H * BLOCK_W  # dL/d(Sobel_y pred)
    acc_depth = tl.zeros((), CDT)
    acc_grad = tl.zeros((), CDT)
    acc_normal = tl.zeros((), CDT)
    acc_count = tl.zeros((), tl.int32)
    acc_count_s = tl.zeros((), tl.int32)
    interior = (i >= HALO_H) & (i < HALO_H + OUT_H) & (j >= HALO_W) & (j < HALO_W + OUT_W)

    for step in range(0, tiles_per_program):
        tile = pid + step * nprog
        tile_ok = tile < num_tiles
        b = tile // tiles_per_image
        t = tile % tiles_per_image
        r0 = (t // tiles_w) * OUT_H - HALO_H  # absolute row of block row 0
        c0 = (t % tiles_w) * OUT_W - HALO_W
        R = r0 + i
        C = c0 + j
        base = b.to(tl.int64) * H * W
        # a tile past the end has an empty image (the interpreter cannot AND a scalar mask in)
        w_lim = W * tile_ok.to(tl.int32)
        in_image = (R >= 0) & (R < H) & (C >= 0) & (C < w_lim)

        if BLUR:
            # stage 1: vertical pass from global memory (reflect-folded rows)
            Rc = tl.minimum(tl.maximum(R, 0), H - 1)
            col_ok = (C >= 0) & (C < w_lim)
            v = tl.zeros((BLOCK_H, BLOCK_W), CDT)
            for k in tl.range(0, 7, loop_unroll_factor=1):  # a run-time loop: one tap live at a time
                gk = tl.load(params_ptr + 4 + tl.abs(k - 3))
                v += gk * _load_stencil_target(target_ptr, mask_ptr, base, _reflect(Rc + k - 3, H), C, H, W, HAS_MASK, CDT)
            tl.store(s_a + i * BLOCK_W + j, tl.where(col_ok, v, 0.0))
            tl.debug_barrier()
            # stage 2: horizontal pass over the scratch (reflect-folded columns)
            Cc = tl.minimum(tl.maximum(C, 0), W - 1)
            yb = tl.zeros((BLOCK_H, BLOCK_W), CDT)
            for k in tl.range(0, 7, loop_unroll_factor=1):
                gk = tl.load(params_ptr + 4 + tl.abs(k - 3))
                yb += gk * _load_block(s_a, i, _reflect(Cc + k - 3, W) - c0, BLOCK_H, BLOCK_W)
            tl.store(s_b + i * BLOCK_W + j, tl.where(in_image, yb, 0.0))
            tl.debug_barrier()

        # stage 3: per-pixel terms and the derivatives w.r.t. the prediction's Sobel
        d = _load_pred(pred_ptr, base, R, C, H, W, CDT)
        y = _load_stencil_target(target_ptr, mask_ptr, base, R, C, H, W, HAS_MASK, CDT)
        if (GRADIENT or NORMAL) and not BLUR:
            tl.store(s_b + i * BLOCK_W + j, y)  # the Sobel reads its 3x3 neighbours there
        valid = in_image & (y == y)
        y = tl.where(valid, y, 0.0)
        acc_count += _total((valid & interior).to(tl.int32))
        e = d - y
        if DEPTH_LOG:
            acc_depth += _total(tl.where(valid & interior, tl.log(tl.abs(e) + alpha), 0.0))
            grad_depth = tl.where(valid, w0 * _sign(e) / (tl.abs(e) + alpha), 0.0)
        else:
            acc_depth += _total(tl.where(valid & interior, tl.abs(e), 0.0))
            grad_depth = tl.where(valid, w0 * _sign(e), 0.0)
        tl.store(grad_depth_ptr + base + R * W + C, grad_depth.to(grad_depth_ptr.dtype.element_ty),
                 mask=in_image & interior)
        if GRADIENT or NORMAL:
            d_mm = _load_pred(pred_ptr, base, R - 1, C - 1, H, W, CDT)
            d_m0 = _load_pred(pred_ptr, base, R - 1, C, H, W, CDT)
            d_mp = _load_pred(pred_ptr, base, R - 1, C + 1, H, W, CDT)
            d_0m = _load_pred(pred_ptr, base, R, C - 1, H, W, CDT)
            d_0p = _load_pred(pred_ptr, base, R, C + 1, H, W, CDT)
            d_pm = _load_pred(pred_ptr, base, R + 1, C - 1, H, W, CDT)
            d_p0 = _load_pred(pred_ptr, base, R + 1, C, H, W, CDT)
            d_pp = _load_pred(pred_ptr, base, R + 1, C + 1, H, W, CDT)
            px = (d_mm + 2.0 * d_0m + d_pm) - (d_mp + 2.0 * d_0p + d_pp)
            py = (d_mm + 2.0 * d_m0 + d_mp) - (d_pm + 2.0 * d_p0 + d_pp)
            tl.debug_barrier()  # without blur: the block's ground truth is in the scratch
            y_mm = _load_block(s_b, i - 1, j - 1, BLOCK_H, BLOCK_W)
            y_m0 = _load_block(s_b, i - 1, j, BLOCK_H, BLOCK_W)
            y_mp = _load_block(s_b, i - 1, j + 1, BLOCK_H, BLOCK_W)
            y_0m = _load_block(s_b, i, j - 1, BLOCK_H, BLOCK_W)
            y_0p = _load_block(s_b, i, j + 1, BLOCK_H, BLOCK_W)
            y_pm = _load_block(s_b, i + 1, j - 1, BLOCK_H, BLOCK_W)
            y_p0 = _load_block(s_b, i + 1, j, BLOCK_H, BLOCK_W)
            y_pp = _load_block(s_b, i + 1, j + 1, BLOCK_H, BLOCK_W)
            gx = (y_mm + 2.0 * y_0m + y_pm) - (y_mp + 2.0 * y_0p + y_pp)
            gy = (y_mm + 2.0 * y_m0 + y_mp) - (y_pm + 2.0 * y_p0 + y_pp)
            # the stencil is valid where no NaN (an invalid ground-truth pixel) reached g
            stencil_ok = valid & (gx == gx) & (gy == gy)
            acc_count_s += _total((stencil_ok & interior).to(tl.int32))
            gx = tl.where(stencil_ok, gx, 0.0)
            gy = tl.where(stencil_ok, gy, 0.0)
            d_px = tl.zeros((BLOCK_H, BLOCK_W), CDT)
            d_py = tl.zeros((BLOCK_H, BLOCK_W), CDT)
            if GRADIENT:
                ex = px - gx
                ey = py - gy
                acc_grad += _total(tl.where(
                    stencil_ok & interior, tl.log(tl.abs(ex) + alpha) + tl.log(tl.abs(ey) + alpha), 0.0
                ))
                d_px += tl.where(stencil_ok, w1 * _sign(ex) / (tl.abs(ex) + alpha), 0.0)
                d_py += tl.where(stencil_ok, w1 * _sign(ey) / (tl.abs(ey) + alpha), 0.0)
            if NORMAL:
                norm_p2 = px * px + py * py + 1.0
                inv_pg = 1.0 / (tl.sqrt(norm_p2) * tl.sqrt(gx * gx + gy * gy + 1.0))
                cos = (px * gx + py * gy + 1.0) * inv_pg
                acc_normal += _total(tl.where(stencil_ok & interior, tl.abs(1.0 - cos), 0.0))
                s = tl.where(stencil_ok, -w2 * _sign(1.0 - cos), 0.0)
                d_px += s * (gx * inv_pg - cos * px / norm_p2)
                d_py += s * (gy * inv_pg - cos * py / norm_p2)
            tl.store(s_a + i * BLOCK_W + j, d_px)
            tl.store(s_c + i * BLOCK_W + j, d_py)
            tl.debug_barrier()
            # stage 4: the Sobel adjoint (transposed 3x3 stencil; zero outside the image
            # because the derivatives are 0 wherever the stencil is not valid)
            grad = (_load_block(s_a, i + 1, j + 1, BLOCK_H, BLOCK_W)
                     + 2.0 * _load_block(s_a, i, j + 1, BLOCK_H, BLOCK_W)
                     + _load_block(s_a, i - 1, j + 1, BLOCK_H, BLOCK_W)
                     - _load_block(s_a, i + 1, j - 1, BLOCK_H, BLOCK_W)
                     - 2.0 * _load_block(s_a, i, j - 1, BLOCK_H, BLOCK_W)
                     - _load_block(s_a, i - 1, j - 1, BLOCK_H, BLOCK_W))
            grad += (_load_block(s_c, i + 1, j + 1, BLOCK_H, BLOCK_W)
                     + 2.0 * _load_block(s_c, i + 1, j, BLOCK_H, BLOCK_W)
                     + _load_block(s_c, i + 1, j - 1, BLOCK_H, BLOCK_W)
                     - _load_block(s_c, i - 1, j + 1, BLOCK_H, BLOCK_W)
                     - 2.0 * _load_block(s_c, i - 1, j, BLOCK_H, BLOCK_W)
                     - _load_block(s_c, i - 1, j - 1, BLOCK_H, BLOCK_W))
            tl.store(grad_stencil_ptr + base + R * W + C, grad.to(grad_stencil_ptr.dtype.element_ty),
                     mask=in_image & interior)
            tl.debug_barrier()  # the next tile overwrites the scratch

    out = partial_ptr + pid * 3
    tl.store(out + 0, acc_depth)
    tl.store(out + 1, acc_grad)
    tl.store(out + 2, acc_normal)
    tl.store(count_ptr + pid * 2, acc_count)
    tl.store(count_ptr + pid * 2 + 1, acc_count_s)


def _num_programs_cap(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a few programs, so that the persistent loop runs more than once


def _check(pred, target, mask, depth_term, weights):
    if pred.dim() != 3 or target.shape != pred.shape:
        raise ValueError(
            f"depth_loss_forward expects (B, H, W) pred and target of one shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if mask is not None and (mask.shape != pred.shape or mask.dtype != torch.bool):
        raise ValueError(f"mask must be a bool tensor shaped {tuple(pred.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    if depth_term not in DEPTH_TERMS:
        raise ValueError(f"depth_term must be one of {DEPTH_TERMS}, got {depth_term!r}")
    if len(weights) != 3:
        raise ValueError(f"weights must be three numbers, got {weights}")
    for t in (target, mask):
        if t is not None and t.device != pred.device:
            raise ValueError(f"all tensors must be on {pred.device}, got one on {t.device}")


def depth_loss_forward(pred, target, mask, depth_term, alpha, gradient, normal, blur, weights):
    """Terms (4,) [depth, gradient, normal, total], ``grad`` = d total / d pred and ``counts``
    (3,) [N_d, N_s, N_s] (0 for a term that is off).

    Contiguous (B, H, W) inputs; terms and counts are float32 (float64 for float64 ``pred``),
    ``grad`` is shaped like ``pred``, in ``gradient_dtype`` (pred's; float32 for float16).
    """
    _check(pred, target, mask, depth_term, weights)
    pred, target = pred.contiguous(), target.contiguous()
    B, H, W = pred.shape
    cdtype = compute_dtype(pred.dtype)
    device = pred.device
    numel = pred.numel()
    mask_u8 = None if mask is None else mask.contiguous().view(torch.uint8)
    dummy_mask = mask_u8 if mask_u8 is not None else torch.empty(1, dtype=torch.uint8, device=device)

    stencil = gradient or normal
    grad_depth = torch.empty_like(pred, memory_format=torch.contiguous_format)
    grad_stencil = torch.empty_like(grad_depth) if stencil else pred.new_empty((0,))
    if blur and stencil:
        halo_h, halo_w = 2, 5
        # interpreter: larger tiles mean fewer (slow, Python-level) program steps
        block_h, block_w = (16, 128) if device.type == "cuda" else (16, 32)
    else:
        # the Sobel of the ground truth reads the scratch block: right one pixel in from its edge
        halo_h, halo_w = (2, 2) if stencil else (0, 0)
        block_h, block_w = (16, 128) if device.type == "cuda" else (16, 32)
    out_h, out_w = block_h - 2 * halo_h, block_w - 2 * halo_w
    tiles_w = triton.cdiv(W, out_w)
    tiles_per_image = triton.cdiv(H, out_h) * tiles_w
    num_tiles = B * tiles_per_image
    nprog = max(min(num_tiles, _num_programs_cap(device)), 1)
    tiles_per_program = triton.cdiv(num_tiles, nprog)
    partials = torch.empty((nprog, 3), dtype=cdtype, device=device)
    counts = torch.empty((nprog, 2), dtype=torch.int32, device=device)
    scratch = torch.empty(nprog * 3 * block_h * block_w if stencil else 1, dtype=cdtype, device=device)
    g = gaussian_weights_1d(BLUR_KERNEL_SIZE, BLUR_SIGMA, dtype=cdtype)
    w0, w1, w2 = (float(v) for v in weights)
    params = torch.cat((torch.tensor([alpha, w0, w1, w2], dtype=cdtype), g[3:])).to(device)
    _depth_loss_kernel[(nprog,)](
        pred, target, dummy_mask, grad_depth, grad_stencil if stencil else grad_depth, partials, counts,
        scratch, params,
        H, W, tiles_w, tiles_per_image, num_tiles, tiles_per_program,
        DEPTH_LOG=depth_term == "log", GRADIENT=bool(gradient), NORMAL=bool(normal), BLUR=bool(blur and stencil),
        HAS_MASK=mask is not None, CDT=tl.float64 if cdtype == torch.float64 else tl.float32,
        BLOCK_H=block_h, BLOCK_W=block_w, HALO_H=halo_h, HALO_W=halo_w,
        num_warps=16 if device.type == "cuda" else 4,
    )
    # fixed-order reduction of the per-program partials (in float64), then 1/N and the weights
    count_d, count_s = counts.sum(dim=0, dtype=torch.int64).unbind()
    on = torch.tensor([1.0, float(gradient), float(normal)], dtype=torch.float64, device=device)
    term_counts = torch.stack((count_d, count_s, count_s)).to(torch.float64) * on
    sums = partials.to(torch.float64).sum(dim=0) * on / term_counts.clamp_min(1.0)
    total = w0 * sums[0] + w1 * sums[1] + w2 * sums[2]
    terms = torch.cat((sums, total[None])).to(cdtype)
    counts_c = term_counts.to(cdtype)
    out = grad_depth if gradient_dtype(pred.dtype) == pred.dtype else torch.empty_like(grad_depth, dtype=torch.float32)
    one = torch.ones(1, dtype=cdtype, device=device)
    _scale_add(one, counts_c, grad_depth, grad_stencil if stencil else None, out)
    return terms, out, counts_c


@triton.jit
def _scale_add_kernel(g_ptr, counts_ptr, a_ptr, b_ptr, out_ptr, numel,
                      COUNTS: tl.constexpr, STENCIL: tl.constexpr, CDT: tl.constexpr, BLOCK: tl.constexpr):
    # out = a (g / max(N_d, 1)) + b (g / max(N_s, 1)) with COUNTS, else a g; elementwise, in CDT,
    # each product and the sum rounded (reference: normalise_gradient_reference and
    # depth_loss_backward_reference); g and the counts are read on the device (no host sync)
    g = tl.load(g_ptr).to(CDT)
    if COUNTS:
        sa = g / tl.maximum(tl.load(counts_ptr).to(CDT), 1.0)
    else:
        sa = g
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    out = tl.load(a_ptr + offs, mask=live, other=0).to(CDT) * sa
    if STENCIL:
        n_s = tl.maximum(tl.load(counts_ptr + 1).to(CDT), tl.load(counts_ptr + 2).to(CDT))
        sb = g / tl.maximum(n_s, 1.0)
        out = out + tl.load(b_ptr + offs, mask=live, other=0).to(CDT) * sb
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=live)


def _scale_add(g, counts, a, b, out):
    """``out`` = a (g / max(N_d, 1)) + b (g / max(N_s, 1)) (counts given; b None: no stencil
    part), or a g (counts None); ``out`` may be ``a``."""
    numel = a.numel()
    if numel == 0:
        return out
    cdtype = compute_dtype(a.dtype)
    block = 1024 if a.device.type == "cuda" else 256
    _scale_add_kernel[(triton.cdiv(numel, block),)](
        g.to(cdtype).reshape(1), counts if counts is not None else g, a, b if b is not None else a, out, numel,
        COUNTS=counts is not None, STENCIL=b is not None, CDT=tl.float64 if cdtype == torch.float64 else tl.float32,
        BLOCK=block, num_warps=4,
    )
    return out


def depth_loss_backward(grad_total, grad, dtype):
    """d loss / d pred = ``grad_total`` * ``grad`` in ``dtype`` (``depth_loss_backward_reference``
    is the spec)."""
    grad = grad.contiguous()
    return _scale_add(grad_total, None, grad, None, torch.empty_like(grad, dtype=dtype))


__all__ = ["depth_loss_backward", "depth_loss_forward"]
