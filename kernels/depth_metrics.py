r"""Depth metric sums in Triton: one pass producing the per-image sums of every metric.

Spec: ``fastmde/reference/depth_metrics.py``. A pixel is considered when the ground truth y is
finite, the mask is true and it lies in the crop rows [top, bottom) x columns [left, right); it
is valid when y also passes the range test (``min < y`` or ``min <= y``, ``y <= max`` or
``y < max``). The prediction has a NaN replaced by ``nan_prediction`` and is clamped to
[pred_min, pred_max] (keeping NaN). Per image:
``[n, Σ(ŷ-y)², Σ|ŷ-y|/y (or /ŷ), Σ|log10 ŷ - log10 y|, Σ[δ<1.25], Σ[δ<1.25²], Σ[δ<1.25³],
below, above]`` (δ by ``<=`` with DELTA_INCLUSIVE; REL over ŷ with REL_BY_PREDICTION; a
non-finite logarithm counts as 0 with LOG10_NONFINITE_ZERO; below/above: considered pixels
outside the range, below only when y > 0). Each rule is a constexpr: a protocol with other rules
compiles its own variant.

Grid (chunks of the crop, B): each program reads ``ROWS x BLOCK_W`` pixels of one image's
crop window (never the pixels outside the crop), takes every decision (range tests, NaN
replacement, clamp, δ = max(ŷ/y, y/ŷ) against 1.25^k) in float64 like the reference, so all
counts match it exactly, computes the three error terms in float32 and writes its nine partial
sums; the (B, chunks, 9) partials are added in float64 in a fixed order on the device
(deterministic, no atomics). Counts are exact (< 2^24 per program).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

NUM_SUMS = 9


@triton.jit
def _depth_metric_sums_kernel(
    pred_ptr, target_ptr, mask_ptr, bounds_ptr, partial_ptr,
    H, W, top, left, crop_h, crop_w, chunks_w,
    HAS_MASK: tl.constexpr, MIN_INCLUSIVE: tl.constexpr, MAX_INCLUSIVE: tl.constexpr,
    DELTA_INCLUSIVE: tl.constexpr, REL_BY_PREDICTION: tl.constexpr, LOG10_NONFINITE_ZERO: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_W: tl.constexpr,
):
    chunk = tl.program_id(0)
    b = tl.program_id(1)
    num_chunks = tl.num_programs(0)
    # float64 bounds: [min_depth, max_depth, pred_min, pred_max, nan_prediction]
    min_depth = tl.load(bounds_ptr + 0)
    max_depth = tl.load(bounds_ptr + 1)
    pred_min = tl.load(bounds_ptr + 2)
    pred_max = tl.load(bounds_ptr + 3)
    nan_prediction = tl.load(bounds_ptr + 4)
    r = top + (chunk // chunks_w) * ROWS + tl.arange(0, ROWS)[:, None]
    c = left + (chunk % chunks_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    ok = (r < top + crop_h) & (c < left + crop_w)
    offs = b.to(tl.int64) * H * W + r.to(tl.int64) * W + c
    y = tl.load(target_ptr + offs, mask=ok, other=0.0).to(tl.float64)
    d = tl.load(pred_ptr + offs, mask=ok, other=1.0).to(tl.float64)
    # The comparisons (range, clamp, δ) run in float64 as in the reference, so every count is
    # the reference's; the error terms below are float32.
    # NaN fails every comparison and |y| < inf, so it is never considered
    considered = ok & (tl.abs(y) < float("inf"))
    if HAS_MASK:
        considered = considered & (tl.load(mask_ptr + offs, mask=ok, other=0) != 0)
    if MIN_INCLUSIVE:
        above_min = y >= min_depth
    else:
        above_min = y > min_depth
    if MAX_INCLUSIVE:
        below_max = y <= max_depth
    else:
        below_max = y < max_depth
    valid = considered & above_min & below_max
    below = considered & (above_min == 0) & (y > 0.0)
    above = considered & (below_max == 0)
    d = tl.where(d != d, nan_prediction, d)
    d = tl.where(d < pred_min, pred_min, d)  # comparisons keep NaN
    d = tl.where(d > pred_max, pred_max, d)
    y = tl.where(valid, y, 1.0)
    ratio = tl.maximum(d / y, y / d, propagate_nan=tl.PropagateNan.ALL)
    if DELTA_INCLUSIVE:
        h1 = ratio <= 1.25
        h2 = ratio <= 1.5625
        h3 = ratio <= 1.953125
    else:
        h1 = ratio < 1.25
        h2 = ratio < 1.5625
        h3 = ratio < 1.953125
    d = d.to(tl.float32)
    y = y.to(tl.float32)
    diff = d - y
    log_d = tl.log(d)
    log_y = tl.log(y)
    if LOG10_NONFINITE_ZERO:
        log_d = tl.where(tl.abs(log_d) < float("inf"), log_d, 0.0)
        log_y = tl.where(tl.abs(log_y) < float("inf"), log_y, 0.0)
    log_err = tl.abs(log_d - log_y) * 0.4342944819032518
    if REL_BY_PREDICTION:
        rel = tl.abs(diff) / d
    else:
        rel = tl.abs(diff) / y
    zero = tl.zeros_like(y)
    out = partial_ptr + (b.to(tl.int64) * num_chunks + chunk) * 9
    tl.store(out + 0, tl.sum(tl.sum(tl.where(valid, 1.0, zero), axis=1), axis=0))
    tl.store(out + 1, tl.sum(tl.sum(tl.where(valid, diff * diff, zero), axis=1), axis=0))
    tl.store(out + 2, tl.sum(tl.sum(tl.where(valid, rel, zero), axis=1), axis=0))
    tl.store(out + 3, tl.sum(tl.sum(tl.where(valid, log_err, zero), axis=1), axis=0))
    tl.store(out + 4, tl.sum(tl.sum(tl.where(valid & h1, 1.0, zero), axis=1), axis=0))
    tl.store(out + 5, tl.sum(tl.sum(tl.where(valid & h2, 1.0, zero), axis=1), axis=0))
    tl.store(out + 6, tl.sum(tl.sum(tl.where(valid & h3, 1.0, zero), axis=1), axis=0))
    tl.store(out + 7, tl.sum(tl.sum(tl.where(below, 1.0, zero), axis=1), axis=0))
    tl.store(out + 8, tl.sum(tl.sum(tl.where(above, 1.0, zero), axis=1), axis=0))


def depth_metric_sums(pred, target, mask, min_depth, max_depth, crop, min_inclusive, max_inclusive,
                      pred_min, pred_max, nan_prediction, delta_inclusive, rel_by_prediction,
                      log10_nonfinite_zero):
    """Per-image sums (B, 9) float64 of contiguous (B, H, W) maps; ``crop`` = [top, bottom, left, right]."""
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
        return torch.zeros((0, NUM_SUMS), dtype=torch.float64, device=pred.device)
    partials = torch.empty((B, chunks, NUM_SUMS), dtype=torch.float32, device=pred.device)
    bounds = torch.tensor([min_depth, max_depth, pred_min, pred_max, nan_prediction], dtype=torch.float64,
                          device=pred.device)
    _depth_metric_sums_kernel[(chunks, B)](
        pred, target, dummy, bounds, partials,
        H, W, top, left, crop_h, crop_w, chunks_w,
        HAS_MASK=mask is not None, MIN_INCLUSIVE=bool(min_inclusive), MAX_INCLUSIVE=bool(max_inclusive),
        DELTA_INCLUSIVE=bool(delta_inclusive), REL_BY_PREDICTION=bool(rel_by_prediction),
        LOG10_NONFINITE_ZERO=bool(log10_nonfinite_zero), ROWS=rows, BLOCK_W=block_w, num_warps=4,
    )
    return partials.to(torch.float64).sum(dim=1)


__all__ = ["depth_metric_sums"]
