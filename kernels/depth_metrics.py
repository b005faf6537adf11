r"""Depth metric sums in Triton: one pass producing the per-image sums of every metric.

Spec: ``fastmde/reference/depth_metrics.py``. A pixel is valid when the ground truth y is
finite, :math:`\mathrm{min} < y \le \mathrm{max}`, the mask is true and it lies in the crop
rows [top, bottom) x columns [left, right); the prediction is clamped to [min, max]. Per image:
``[n, Σ(ŷ-y)², Σ|ŷ-y|/y, Σ|log10 ŷ - log10 y|, Σ[δ<1.25], Σ[δ<1.25²], Σ[δ<1.25³]]``.

Grid (chunks of the crop, B): each program reads ``ROWS x BLOCK_W`` pixels of one image's
crop window (never the pixels outside the crop), computes the seven per-pixel values in
float32 and writes its seven partial sums; the (B, chunks, 7) partials are added in float64 in a
fixed order on the device (deterministic, no atomics). Counts are exact (< 2^24 per program).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl



@triton.jit
def _depth_metric_sums_kernel(
    pred_ptr, target_ptr, mask_ptr, partial_ptr,
    H, W, top, left, crop_h, crop_w, chunks_w, min_depth, max_depth,
    HAS_MASK: tl.constexpr, ROWS: tl.constexpr, BLOCK_W: tl.constexpr,
):
    chunk = tl.program_id(0)
    b = tl.program_id(1)
    num_chunks = tl.num_programs(0)
    r = top + (chunk // chunks_w) * ROWS + tl.arange(0, ROWS)[:, None]
    c = left + (chunk % chunks_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    ok = (r < top + crop_h) & (c < left + crop_w)
    offs = b.to(tl.int64) * H * W + r.to(tl.int64) * W + c
    y = tl.load(target_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    d = tl.load(pred_ptr + offs, mask=ok, other=1.0).to(tl.float32)
    # y > min (so y > 0) and y <= max; NaN fails both comparisons, +inf fails y <= max unless
    # max is inf, hence the explicit finiteness test
    valid = ok & (y > min_depth) & (y <= max_depth) & (tl.abs(y) < float("inf"))
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + offs, mask=ok, other=0) != 0)
    d = tl.minimum(tl.maximum(d, min_depth), max_depth)
    y = tl.where(valid, y, 1.0)
    d = tl.where(valid, d, 1.0)
    diff = d - y
    ratio = tl.maximum(d / y, y / d)
    zero = tl.zeros_like(y)
    out = partial_ptr + (b.to(tl.int64) * num_chunks + chunk) * 7
    tl.store(out + 0, tl.sum(tl.sum(tl.where(valid, 1.0, zero), axis=1), axis=0))
    tl.store(out + 1, tl.sum(tl.sum(tl.where(valid, diff * diff, zero), axis=1), axis=0))
    tl.store(out + 2, tl.sum(tl.sum(tl.where(valid, tl.abs(diff) / y, zero), axis=1), axis=0))
    log_err = tl.abs(tl.log(d) - tl.log(y)) * 0.4342944819032518
    tl.store(out + 3, tl.sum(tl.sum(tl.where(valid, log_err, zero), axis=1), axis=0))
    tl.store(out + 4, tl.sum(tl.sum(tl.where(valid & (ratio < 1.25), 1.0, zero), axis=1), axis=0))
    tl.store(out + 5, tl.sum(tl.sum(tl.where(valid & (ratio < 1.5625), 1.0, zero), axis=1), axis=0))
    tl.store(out + 6, tl.sum(tl.sum(tl.where(valid & (ratio < 1.953125), 1.0, zero), axis=1), axis=0))


def depth_metric_sums(pred, target, mask, min_depth, max_depth, crop):
    """Per-image sums (B, 7) float64 of contiguous (B, H, W) maps; ``crop`` = [top, bottom, left, right]."""
    if pred.dim() != 3 or target.shape != pred.shape:
        raise ValueError(
            f"depth_metric_sums expects (B, H, W) pred and target of one shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if mask is not None and (mask.shape != pred.shape or mask.dtype != torch.bool):
        raise ValueError(f"mask must be a bool tensor shaped {tuple(pred.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    B, H, W = pred.shape
    top, bottom, left, right = (int(v) for v in crop)
    if not (0 <= top < bottom <= H and 0 <= left < right <= W):
        raise ValueError(f"crop {list(crop)} does not fit a {H}x{W} image")
    pred, target = pred.contiguous(), target.contiguous()
    mask_u8 = None if mask is None else mask.contiguous().view(torch.uint8)
    dummy = mask_u8 if mask_u8 is not None else torch.empty(1, dtype=torch.uint8, device=pred.device)
    crop_h, crop_w = bottom - top, right - left
    if pred.device.type == "cuda":
        rows, block_w = 8, 256
    else:
        rows, block_w = 4, 32
    block_w = min(block_w, triton.next_power_of_2(crop_w))
    chunks_w = triton.cdiv(crop_w, block_w)
    chunks = triton.cdiv(crop_h, rows) * chunks_w
    if B == 0:
        return torch.zeros((0, 7), dtype=torch.float64, device=pred.device)
    partials = torch.empty((B, chunks, 7), dtype=torch.float32, device=pred.device)
    _depth_metric_sums_kernel[(chunks, B)](
        pred, target, dummy, partials,
        H, W, top, left, crop_h, crop_w, chunks_w, float(min_depth), float(max_depth),
        HAS_MASK=mask is not None, ROWS=rows, BLOCK_W=block_w, num_warps=4,
    )
    return partials.to(torch.float64).sum(dim=1)


__all__ = ["depth_metric_sums"]
