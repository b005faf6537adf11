r"""Scale-invariant losses in Triton: the per-pixel passes of the SILog family and of MiDaS's
scale-and-shift-invariant loss (``ssi``).

Spec: ``fastmde/reference/scale_invariant_loss.py`` (validity, the prediction floor, the
degenerate least-squares rule, the gradient formulas). The per-image algebra between the passes
is the op's, in float64 (``fastmde/ops/scale_invariant_loss.py``).

Layout of the work
------------------
Every kernel runs on a 2-D grid (tile, image): a program covers one ``BLOCK_H x BLOCK_W`` tile of
one image. The reductions (``silog_sums``, ``ssi_moments``, ``ssi_residual_sums``) write the
tile's sums to ``partials[b, tile, :]`` (the compute dtype; a tile's counts are exact there),
reduced per image in float64 on the device in a fixed order: deterministic, no atomics, no host
synchronisation. The gradient passes (``silog_backward``, ``ssi_backward``) read the per-image
coefficients and write the gradient of their tile.

ssi's gradient-matching pairs join grid pixels 2^k apart (k = 0..3, rows and columns multiples of
2^k). ``ssi_residual_sums`` counts each pair once, at its left / upper member (the right and the
lower neighbour are loaded); ``ssi_backward`` needs all four neighbours of each grid pixel. The
neighbours are masked gathers from global memory (L1/L2 hits: they lie at most 8 rows away), the
residual recomputed from pred and ground truth; a pixel is on the scale-k grid for a quarter of
the pixels of scale k-1, but the loads are issued for the whole tile (masked off the grid).

DRAM traffic per pixel: SILog forward one read of pred, ground truth and mask, backward the same
read and one write of the gradient; ssi forward two reads (moments, then residual sums),
backward one read and one write. Compute in float32 (float64 when either input is float64),
pred and target in their own dtypes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastmde.reference.scale_invariant_loss import SSI_SCALES, loss_dtype

NUM_SILOG_SUMS = 3
NUM_MOMENTS = 8
NUM_RESIDUAL_SUMS = 11
NUM_SSI_COEFFS = 10


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0)).to(x.dtype)


@triton.jit
def _total(x):
    """Sum of a block (rows first, in a fixed order)."""
    return tl.sum(tl.sum(x, axis=1), axis=0)


@triton.jit
def _tile(H, W, tiles_w, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """(b, tile, R, C, base, in_image) of this program: absolute rows / columns of its block."""
    t = tl.program_id(0)
    b = tl.program_id(1)
    R = (t // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    C = (t % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    base = b.to(tl.int64) * H * W
    return b, t, R, C, base, (R < H) & (C < W)


@triton.jit
def _load(pred_ptr, target_ptr, mask_ptr, base, R, C, H, W, SILOG: tl.constexpr, HAS_MASK: tl.constexpr,
          CDT: tl.constexpr):
    """(p, y, valid) at absolute (R, C) in the compute dtype; y is 1 (SILog) or 0 (ssi) where not
    valid, and nothing is valid outside the image."""
    ok = (R >= 0) & (R < H) & (C >= 0) & (C < W)
    off = base + R * W + C
    p = tl.load(pred_ptr + off, mask=ok, other=0.0).to(CDT)
    y = tl.load(target_ptr + off, mask=ok, other=0.0).to(CDT)
    valid = ok & (y == y) & (tl.abs(y) < float("inf"))
    if SILOG:
        valid = valid & (y > 0)
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + off, mask=ok, other=0) != 0)
    fill = 1.0 if SILOG else 0.0
    return p, tl.where(valid, y, fill), valid


@triton.jit
def _log_error(p, y, eps):
    """ln max(p, eps) - ln y (a NaN prediction stays NaN)."""
    return tl.log(tl.where(p < eps, eps, p)) - tl.log(y)


@triton.jit
def _silog_sums_kernel(pred_ptr, target_ptr, mask_ptr, partial_ptr, eps_ptr, H, W, tiles_w, tiles,
                       HAS_MASK: tl.constexpr, CDT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    b, t, R, C, base, _ = _tile(H, W, tiles_w, BLOCK_H, BLOCK_W)
    p, y, valid = _load(pred_ptr, target_ptr, mask_ptr, base, R, C, H, W, True, HAS_MASK, CDT)
    # Σd and Σd² in float64 (partials float64): SILog's square root takes Σd²/n - (Σd/n)², whose
    # cancellation left float32 sums' rounding where a constant-scale prediction has v = 0
    d = tl.where(valid, _log_error(p, y, tl.load(eps_ptr)), 0.0).to(tl.float64)
    out = partial_ptr + (b.to(tl.int64) * tiles + t) * 3
    tl.store(out + 0, _total(valid.to(tl.float64)))
    tl.store(out + 1, _total(d))
    tl.store(out + 2, _total(d * d))


@triton.jit
def _silog_backward_kernel(pred_ptr, target_ptr, mask_ptr, coeff_ptr, grad_ptr, eps_ptr, H, W, tiles_w,
                           HAS_MASK: tl.constexpr, CDT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    b, t, R, C, base, in_image = _tile(H, W, tiles_w, BLOCK_H, BLOCK_W)
    a = tl.load(coeff_ptr + b * 2).to(CDT)
    c = tl.load(coeff_ptr + b * 2 + 1).to(CDT)
    p, y, valid = _load(pred_ptr, target_ptr, mask_ptr, base, R, C, H, W, True, HAS_MASK, CDT)
    e = tl.load(eps_ptr)  # in the compute dtype
    on = valid & (p >= e)  # the floor passes no gradient
    g = (a * _log_error(p, y, e) + c) / tl.where(on, p, 1.0)
    tl.store(grad_ptr + base + R * W + C, tl.where(on, g, 0.0).to(grad_ptr.dtype.element_ty), mask=in_image)


@triton.jit
def _ssi_moments_kernel(pred_ptr, target_ptr, mask_ptr, partial_ptr, H, W, tiles_w, tiles,
                        HAS_MASK: tl.constexpr, CDT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    b, t, R, C, base, _ = _tile(H, W, tiles_w, BLOCK_H, BLOCK_W)
    p, y, valid = _load(pred_ptr, target_ptr, mask_ptr, base, R, C, H, W, False, HAS_MASK, CDT)
    pv = tl.where(valid, p, 0.0)  # invalid pixels add exactly 0, whatever p holds
    out = partial_ptr + (b.to(tl.int64) * tiles + t) * 8
    tl.store(out + 0, _total(valid.to(CDT)))
    tl.store(out + 1, _total(pv))
    tl.store(out + 2, _total(pv * pv))
    tl.store(out + 3, _total(y))
    tl.store(out + 4, _total(pv * y))
    for k in tl.static_range(1, 4):
        on = valid & (R % (1 << k) == 0) & (C % (1 << k) == 0)
        tl.store(out + 4 + k, _total(on.to(CDT)))


@triton.jit
def _residual(pred_ptr, target_ptr, mask_ptr, base, R, C, H, W, s, t, HAS_MASK: tl.constexpr, CDT: tl.constexpr):
    """(r, p, y, valid) at absolute (R, C): r = s p + t - y where valid, else 0."""
    p, y, valid = _load(pred_ptr, target_ptr, mask_ptr, base, R, C, H, W, False, HAS_MASK, CDT)
    return tl.where(valid, s * p + t - y, 0.0), p, y, valid


@triton.jit
def _ssi_residual_kernel(pred_ptr, target_ptr, mask_ptr, st_ptr, partial_ptr, H, W, tiles_w, tiles,
                         HAS_MASK: tl.constexpr, CDT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    b, t, R, C, base, _ = _tile(H, W, tiles_w, BLOCK_H, BLOCK_W)
    s = tl.load(st_ptr + b * 2).to(CDT)
    sh = tl.load(st_ptr + b * 2 + 1).to(CDT)
    r, p, _, valid = _residual(pred_ptr, target_ptr, mask_ptr, base, R, C, H, W, s, sh, HAS_MASK, CDT)
    out = partial_ptr + (b.to(tl.int64) * tiles + t) * 11
    tl.store(out + 0, _total(r * r))  # r is 0 at invalid pixels
    tl.store(out + 1, _total(r))
    tl.store(out + 2, _total(tl.where(valid, r * p, 0.0)))  # p may hold anything where not valid
    for k in tl.static_range(0, 4):
        step = 1 << k
        on = valid & (R % step == 0) & (C % step == 0)
        # each pair once, at its left / upper member
        r_x, p_x, _, v_x = _residual(pred_ptr, target_ptr, mask_ptr, base, R, C + step, H, W, s, sh, HAS_MASK, CDT)
        r_y, p_y, _, v_y = _residual(pred_ptr, target_ptr, mask_ptr, base, R + step, C, H, W, s, sh, HAS_MASK, CDT)
        pair_x = on & v_x
        pair_y = on & v_y
        g = tl.where(pair_x, tl.abs(r_x - r), 0.0) + tl.where(pair_y, tl.abs(r_y - r), 0.0)
        q = (tl.where(pair_x, _sign(r_x - r) * (p_x - p), 0.0)
             + tl.where(pair_y, _sign(r_y - r) * (p_y - p), 0.0))
        tl.store(out + 3 + k, _total(g))
        tl.store(out + 7 + k, _total(q))


@triton.jit
def _ssi_backward_kernel(pred_ptr, target_ptr, mask_ptr, coeff_ptr, grad_ptr, H, W, tiles_w,
                         HAS_MASK: tl.constexpr, CDT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    b, t, R, C, base, in_image = _tile(H, W, tiles_w, BLOCK_H, BLOCK_W)
    cb = coeff_ptr + b * 10
    s = tl.load(cb + 0).to(CDT)
    sh = tl.load(cb + 1).to(CDT)
    r, p, y, valid = _residual(pred_ptr, target_ptr, mask_ptr, base, R, C, H, W, s, sh, HAS_MASK, CDT)
    e = tl.load(cb + 2).to(CDT) * r
    for k in tl.static_range(0, 4):
        step = 1 << k
        on = valid & (R % step == 0) & (C % step == 0)
        # d|r - r'| / d r = sgn(r - r') for each valid grid neighbour r'
        acc = tl.zeros((BLOCK_H, BLOCK_W), CDT)
        r_n, _, _, v_n = _residual(pred_ptr, target_ptr, mask_ptr, base, R, C - step, H, W, s, sh, HAS_MASK, CDT)
        acc += tl.where(v_n, _sign(r - r_n), 0.0)
        r_n, _, _, v_n = _residual(pred_ptr, target_ptr, mask_ptr, base, R, C + step, H, W, s, sh, HAS_MASK, CDT)
        acc += tl.where(v_n, _sign(r - r_n), 0.0)
        r_n, _, _, v_n = _residual(pred_ptr, target_ptr, mask_ptr, base, R - step, C, H, W, s, sh, HAS_MASK, CDT)
        acc += tl.where(v_n, _sign(r - r_n), 0.0)
        r_n, _, _, v_n = _residual(pred_ptr, target_ptr, mask_ptr, base, R + step, C, H, W, s, sh, HAS_MASK, CDT)
        acc += tl.where(v_n, _sign(r - r_n), 0.0)
        e += tl.load(cb + 3 + k).to(CDT) * tl.where(on, acc, 0.0)
    k_y = tl.load(cb + 7).to(CDT)
    k_p = tl.load(cb + 8).to(CDT)
    k_1 = tl.load(cb + 9).to(CDT)
    g = s * e + tl.where(valid, k_y * y + k_p * p + k_1, 0.0)
    tl.store(grad_ptr + base + R * W + C, g.to(grad_ptr.dtype.element_ty), mask=in_image)


# ------------------------------------------------------------------------------ launchers


def _blocks(device: torch.device, neighbours: bool) -> tuple[int, int]:
    """Tile sizes: 32x64 for the plain reductions, 16x64 for the passes that also read grid
    neighbours (ssi's residual sums and backward: half the values per thread, at most ~120
    registers on sm_80/sm_90 instead of ~190) and for the gradient passes."""
    if device.type != "cuda":
        return 8, 16  # interpreter: small tiles, so that tests reach tile edges at tiny sizes
    return (16, 64) if neighbours else (32, 64)


def _check(what, pred, target, mask, coeffs=None, k=None):
    if pred.dim() != 3 or target.shape != pred.shape:
        raise ValueError(
            f"{what} expects (B, H, W) pred and target of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if mask is not None and (mask.shape != pred.shape or mask.dtype != torch.bool):
        raise ValueError(f"{what}: mask must be a bool tensor shaped {tuple(pred.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    for x in (target, mask, coeffs):
        if x is not None and x.device != pred.device:
            raise ValueError(f"{what}: all tensors must be on {pred.device}, got one on {x.device}")
    if coeffs is not None and (coeffs.dtype != torch.float64 or tuple(coeffs.shape) != (pred.shape[0], k)):
        raise ValueError(f"{what}: coeffs must be float64 ({pred.shape[0]}, {k}), got {coeffs.dtype} {tuple(coeffs.shape)}")


def _prepare(pred, target, mask, neighbours):
    pred, target = pred.contiguous(), target.contiguous()
    B, H, W = pred.shape
    cdtype = loss_dtype(pred.dtype, target.dtype)
    mask_u8 = mask.contiguous().view(torch.uint8) if mask is not None else pred.new_empty((1,), dtype=torch.uint8)
    bh, bw = _blocks(pred.device, neighbours)
    tiles_w = triton.cdiv(W, bw)
    tiles = triton.cdiv(H, bh) * tiles_w
    meta = dict(HAS_MASK=mask is not None, CDT=tl.float64 if cdtype == torch.float64 else tl.float32,
                BLOCK_H=bh, BLOCK_W=bw, num_warps=4)
    return pred, target, mask_u8, cdtype, (B, H, W, tiles_w, tiles), meta


def _eps(eps: float, cdtype: torch.dtype, device) -> torch.Tensor:
    """The prediction floor as a one-element tensor in the compute dtype (a float argument
    would reach the kernel as float32)."""
    return torch.full((1,), float(eps), dtype=cdtype, device=device)


def _reduce(partials: torch.Tensor) -> torch.Tensor:
    """(B, tiles, N) partials -> (B, N) float64, tiles added in order."""
    return partials.to(torch.float64).sum(dim=1)


def silog_sums(pred, target, mask, eps):
    """Per-image (B, 3) float64 [n, Σd, Σd²], d = ln max(p, eps) - ln y over valid pixels."""
    _check("silog_sums", pred, target, mask)
    pred, target, mask_u8, cdtype, (B, H, W, tiles_w, tiles), meta = _prepare(pred, target, mask, False)
    partials = torch.empty((B, tiles, NUM_SILOG_SUMS), dtype=torch.float64, device=pred.device)
    _silog_sums_kernel[(tiles, B)](pred, target, mask_u8, partials, _eps(eps, cdtype, pred.device), H, W, tiles_w, tiles, **meta)
    return _reduce(partials)


def silog_backward(pred, target, mask, coeffs, eps):
    """d loss / d pred (like pred) = m [p >= eps] (a d + b) / p, ``coeffs`` (B, 2) float64 [a, b]."""
    _check("silog_backward", pred, target, mask, coeffs, 2)
    pred, target, mask_u8, cdtype, (B, H, W, tiles_w, tiles), meta = _prepare(pred, target, mask, True)
    grad = torch.empty_like(pred)
    _silog_backward_kernel[(tiles, B)](pred, target, mask_u8, coeffs.contiguous(), grad, _eps(eps, cdtype, pred.device),
                                       H, W, tiles_w,
                                       **meta)
    return grad


def ssi_moments(pred, target, mask):
    """Per-image (B, 8) float64 [n, Σp, Σp², Σy, Σpy, n_1, n_2, n_3] over valid pixels."""
    _check("ssi_moments", pred, target, mask)
    pred, target, mask_u8, cdtype, (B, H, W, tiles_w, tiles), meta = _prepare(pred, target, mask, False)
    partials = torch.empty((B, tiles, NUM_MOMENTS), dtype=cdtype, device=pred.device)
    _ssi_moments_kernel[(tiles, B)](pred, target, mask_u8, partials, H, W, tiles_w, tiles, **meta)
    return _reduce(partials)


def ssi_residual_sums(pred, target, mask, st):
    """Per-image (B, 11) float64 residual sums for the scale and shift ``st`` (B, 2) float64."""
    _check("ssi_residual_sums", pred, target, mask, st, 2)
    pred, target, mask_u8, cdtype, (B, H, W, tiles_w, tiles), meta = _prepare(pred, target, mask, True)
    partials = torch.empty((B, tiles, NUM_RESIDUAL_SUMS), dtype=cdtype, device=pred.device)
    _ssi_residual_kernel[(tiles, B)](pred, target, mask_u8, st.contiguous(), partials, H, W, tiles_w, tiles, **meta)
    return _reduce(partials)


def ssi_backward(pred, target, mask, coeffs):
    """d loss / d pred (like pred) from the (B, 10) float64 coefficients."""
    _check("ssi_backward", pred, target, mask, coeffs, NUM_SSI_COEFFS)
    pred, target, mask_u8, _, (B, H, W, tiles_w, tiles), meta = _prepare(pred, target, mask, True)
    grad = torch.empty_like(pred)
    _ssi_backward_kernel[(tiles, B)](pred, target, mask_u8, coeffs.contiguous(), grad, H, W, tiles_w, **meta)
    return grad


assert SSI_SCALES == 4  # the kernels unroll the four scales

__all__ = ["silog_sums", "silog_backward", "ssi_moments", "ssi_residual_sums", "ssi_backward"]
