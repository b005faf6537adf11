r"""Depth metric sums in Triton: one pass producing the per-image sums of every metric.

Spec: ``fastmde/reference/depth_metrics.py``. A pixel is considered when the ground truth y is
finite, the mask is true and it lies in the crop rows [top, bottom) x columns [left, right); it
is valid when y also passes the range test (``min < y`` or ``min <= y``, ``y <= max`` or
``y < max``). The prediction has a NaN replaced by ``nan_prediction`` and is clamped to
[pred_min, pred_max] (keeping NaN). Per image, with e = ln ŷ - ln y:
``[n, Σ(ŷ-y)², Σ|ŷ-y|/y, Σ(ŷ-y)²/y, Σ|log10 ŷ - log10 y|, Σe², Σe, Σ[δ<1.25], Σ[δ<1.25²],
Σ[δ<1.25³], below, above, nonpositive_hits]`` (δ by ``<=`` with DELTA_INCLUSIVE; REL and
SqRel over ŷ with REL_BY_PREDICTION; a non-finite logarithm counts as 0 with
LOG10_NONFINITE_ZERO; below/above: considered pixels outside the range, below only when y > 0;
nonpositive_hits: valid pixels with ŷ <= 0 that are δ1 hits). Each rule is a constexpr: a
protocol with other rules compiles its own variant. Prediction and ground truth are loaded in
their own dtypes (a float32 ground truth beside a bfloat16 prediction is never rounded).

Grid (bands x column chunks of the crop, B): a program walks ``STEPS`` blocks of
``BLOCK_R x BLOCK_W`` pixels down one column chunk of one image's crop window (never reading
pixels outside the crop). It takes every decision (range tests, NaN replacement, clamp,
δ = max(ŷ/y, y/ŷ) against 1.25^k) in float64 like the reference, so every count matches it
exactly, computes the error terms in float32 (from the float64 ŷ - y and ŷ/y, which a good
prediction would otherwise lose digits of; a block with a value beyond 1e18 m or below float32's
normal range computes them in float64), reduces each block at once and keeps only
scalar float64 running sums across its blocks (so registers hold one block's values, not
thirteen block accumulators: <= 128 registers, no spill, bench/compile_check.py). The
(B, chunks, 13) partials are added in float64 in a fixed order on the device (deterministic,
no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

NUM_SUMS = 13


@triton.jit
def _total(x):
    """Sum of a block as float64 (rows first, in a fixed order)."""
    return tl.sum(tl.sum(x, axis=1), axis=0).to(tl.float64)


@triton.jit
def _log_ratio(q, log_d, log_y):
    """e = ln(ŷ/y) in float32 from the float64 ratio q = ŷ/y, to a few float32 ulps of e itself.
    Near q = 1 (a good prediction) by ln(1 + x) with x = q - 1 (Goldberg's log1p: ln(u) x / (u - 1),
    u = 1 + x rounded), since ln of q rounded to float32 there would keep only ~1e-7 of e's
    absolute digits; elsewhere ln of q rounded to float32; where q is not a normal float32 (over-
    or underflow, 0, inf, NaN) the difference of the logarithms (the same value for 0, inf, NaN)."""
    x = (q - 1.0).to(tl.float32)
    u = 1.0 + x
    near = tl.where(u == 1.0, x, tl.log(u) * (x / tl.where(u == 1.0, 1.0, u - 1.0)))
    q32 = q.to(tl.float32)
    normal = (q32 >= 1.1754943508222875e-38) & (q32 <= 3.4028234663852886e38)
    far = tl.where(normal, tl.log(q32), log_d - log_y)
    return tl.where(tl.abs(x) < 0.5, near, far)


@triton.jit
def _term_sums(diff, denominator, e, valid):
    """The block's sums of (ŷ-y)², |ŷ-y|/den, (ŷ-y)²/den, |e|/ln 10, e², e as float64 scalars, from
    terms in float32 or float64. SILog = sqrt(E[e²] - E[e]²) cancels: e² is formed and both are
    summed in float64 (exact products of a float32 e), so one pixel gives 0 as in the reference."""
    e64 = e.to(tl.float64)
    return (_total(tl.where(valid, diff * diff, 0.0)),
            _total(tl.where(valid, tl.abs(diff) / denominator, 0.0)),
            _total(tl.where(valid, diff * diff / denominator, 0.0)),
            _total(tl.where(valid, tl.abs(e) * 0.4342944819032518, 0.0)),
            _total(tl.where(valid, e64 * e64, 0.0)),
            _total(tl.where(valid, e64, 0.0)))


@triton.jit
def _error_sums_float32(d, y, valid, REL_BY_PREDICTION: tl.constexpr, LOG10_NONFINITE_ZERO: tl.constexpr):
    """The block's sums of (ŷ-y)², |ŷ-y|/den, (ŷ-y)²/den, |log10 ŷ - log10 y|, e², e (float64
    scalars) from float32 terms; ŷ (d) and y are the float64 values of the block."""
    d32 = d.to(tl.float32)
    y32 = y.to(tl.float32)
    # ŷ - y and ŷ/y are formed in float64 before the rounding to float32: a good prediction
    # is close to its ground truth, and subtracting (or taking the logarithms of) the two
    # values rounded to float32 first cancels digits (float64 input: REL off by 2e-6 and
    # RMSE-log by 5e-6 at ŷ = 1.5 m, y = 1.4836 m).
    diff = (d - y).to(tl.float32)
    if REL_BY_PREDICTION:
        denominator = d32
    else:
        denominator = y32
    log_d = tl.log(d32)
    log_y = tl.log(y32)
    e = _log_ratio(d / y, log_d, log_y)
    if LOG10_NONFINITE_ZERO:
        # the rule zeroes each non-finite logarithm on its own
        finite = (tl.abs(log_d) < float("inf")) & (tl.abs(log_y) < float("inf"))
        log_d = tl.where(tl.abs(log_d) < float("inf"), log_d, 0.0)
        log_y = tl.where(tl.abs(log_y) < float("inf"), log_y, 0.0)
        e = tl.where(finite, e, log_d - log_y)
    return _term_sums(diff, denominator, e, valid)


@triton.jit
def _error_sums_float64(d, y, valid, REL_BY_PREDICTION: tl.constexpr, LOG10_NONFINITE_ZERO: tl.constexpr):
    """``_error_sums_float32``'s sums with every term in float64 (blocks with extreme values)."""
    diff = d - y
    if REL_BY_PREDICTION:
        denominator = d
    else:
        denominator = y
    log_d = tl.log(d)
    log_y = tl.log(y)
    if LOG10_NONFINITE_ZERO:
        log_d = tl.where(tl.abs(log_d) < float("inf"), log_d, 0.0)
        log_y = tl.where(tl.abs(log_y) < float("inf"), log_y, 0.0)
    return _term_sums(diff, denominator, log_d - log_y, valid)


@triton.jit
def _depth_metric_sums_kernel(
    pred_ptr, target_ptr, mask_ptr, bounds_ptr, partial_ptr,
    H, W, top, left, crop_h, crop_w, chunks_w,
    HAS_MASK: tl.constexpr, MIN_INCLUSIVE: tl.constexpr, MAX_INCLUSIVE: tl.constexpr,
    DELTA_INCLUSIVE: tl.constexpr, REL_BY_PREDICTION: tl.constexpr, LOG10_NONFINITE_ZERO: tl.constexpr,
    STEPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
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
    c = left + (chunk % chunks_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    col_ok = c < left + crop_w
    band_top = top + (chunk // chunks_w) * (STEPS * BLOCK_R)
    base = b.to(tl.int64) * H * W
    acc_n = tl.zeros((), tl.float64)
    acc_sq = tl.zeros((), tl.float64)
    acc_rel = tl.zeros((), tl.float64)
    acc_sq_rel = tl.zeros((), tl.float64)
    acc_log10 = tl.zeros((), tl.float64)
    acc_e2 = tl.zeros((), tl.float64)
    acc_e = tl.zeros((), tl.float64)
    acc_d1 = tl.zeros((), tl.float64)
    acc_d2 = tl.zeros((), tl.float64)
    acc_d3 = tl.zeros((), tl.float64)
    acc_below = tl.zeros((), tl.float64)
    acc_above = tl.zeros((), tl.float64)
    acc_nonpositive = tl.zeros((), tl.float64)
    for step in range(0, STEPS):
        r = band_top + step * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
        ok = (r < top + crop_h) & col_ok
        offs = base + r.to(tl.int64) * W + c
        y = tl.load(target_ptr + offs, mask=ok, other=0.0).to(tl.float64)
        d = tl.load(pred_ptr + offs, mask=ok, other=1.0).to(tl.float64)
        # The comparisons (range, clamp, δ) run in float64 as in the reference, so every count
        # is the reference's; the error terms below are float32.
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
        acc_below += _total(tl.where(considered & (above_min == 0) & (y > 0.0), 1.0, 0.0))
        acc_above += _total(tl.where(considered & (below_max == 0), 1.0, 0.0))
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
        acc_n += _total(tl.where(valid, 1.0, 0.0))
        acc_d1 += _total(tl.where(valid & h1, 1.0, 0.0))
        acc_d2 += _total(tl.where(valid & h2, 1.0, 0.0))
        acc_d3 += _total(tl.where(valid & h3, 1.0, 0.0))
        acc_nonpositive += _total(tl.where(valid & h1 & (d <= 0.0), 1.0, 0.0))
        # A block holding a valid ŷ or y that float32 error terms would mishandle (beyond 1e18 m,
        # where (ŷ - y)² overflows float32, or a nonzero one below float32's normal range, whose
        # logarithm float32 cannot take) computes its terms in float64, as the reference; rare.
        extreme = valid & (((tl.abs(d) > 1e18) | ((tl.abs(d) < 1.1754943508222875e-38) & (d != 0.0)))
                           | (y > 1e18) | ((y < 1.1754943508222875e-38) & (y != 0.0)))
        if tl.max(tl.where(extreme, 1, 0)) > 0:
            s_sq, s_rel, s_sq_rel, s_log10, s_e2, s_e = _error_sums_float64(
                d, y, valid, REL_BY_PREDICTION, LOG10_NONFINITE_ZERO)
        else:
            s_sq, s_rel, s_sq_rel, s_log10, s_e2, s_e = _error_sums_float32(
                d, y, valid, REL_BY_PREDICTION, LOG10_NONFINITE_ZERO)
        acc_sq += s_sq
        acc_rel += s_rel
        acc_sq_rel += s_sq_rel
        acc_log10 += s_log10
        acc_e2 += s_e2
        acc_e += s_e
    out = partial_ptr + (b.to(tl.int64) * num_chunks + chunk) * 13
    tl.store(out + 0, acc_n)
    tl.store(out + 1, acc_sq)
    tl.store(out + 2, acc_rel)
    tl.store(out + 3, acc_sq_rel)
    tl.store(out + 4, acc_log10)
    tl.store(out + 5, acc_e2)
    tl.store(out + 6, acc_e)
    tl.store(out + 7, acc_d1)
    tl.store(out + 8, acc_d2)
    tl.store(out + 9, acc_d3)
    tl.store(out + 10, acc_below)
    tl.store(out + 11, acc_above)
    tl.store(out + 12, acc_nonpositive)


def depth_metric_sums(pred, target, mask, min_depth, max_depth, crop, min_inclusive, max_inclusive,
                      pred_min, pred_max, nan_prediction, delta_inclusive, rel_by_prediction,
                      log10_nonfinite_zero):
    """Per-image sums (B, 13) float64 of contiguous (B, H, W) maps (each in its own floating
    dtype); ``crop`` = [top, bottom, left, right]."""
    if pred.dim() != 3 or target.shape != pred.shape:
        raise ValueError(
            f"depth_metric_sums expects (B, H, W) pred and target of one shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if mask is not None and (mask.shape != pred.shape or mask.dtype != torch.bool):
        raise ValueError(f"mask must be a bool tensor shaped {tuple(pred.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    B, H, W = pred.shape
    top, bottom, left, right = (int(v) for v in crop)
    if not (0 <= top <= bottom <= H and 0 <= left <= right <= W):
        raise ValueError(f"crop {list(crop)} does not fit a {H}x{W} image")
    crop_h, crop_w = bottom - top, right - left
    if B == 0 or crop_h == 0 or crop_w == 0:
        return torch.zeros((B, NUM_SUMS), dtype=torch.float64, device=pred.device)
    pred, target = pred.contiguous(), target.contiguous()
    mask_u8 = None if mask is None else mask.contiguous().view(torch.uint8)
    dummy = mask_u8 if mask_u8 is not None else torch.empty(1, dtype=torch.uint8, device=pred.device)
    if pred.device.type == "cuda":
        steps, block_r, block_w = 8, 4, 128   # 2 pixels per thread per block (8 warps)
    else:
        steps, block_r, block_w = 2, 4, 32    # the interpreter: few, small programs
    block_w = min(block_w, triton.next_power_of_2(crop_w))
    chunks_w = triton.cdiv(crop_w, block_w)
    chunks = triton.cdiv(crop_h, steps * block_r) * chunks_w
    partials = torch.empty((B, chunks, NUM_SUMS), dtype=torch.float64, device=pred.device)
    bounds = torch.tensor([min_depth, max_depth, pred_min, pred_max, nan_prediction], dtype=torch.float64,
                          device=pred.device)
    _depth_metric_sums_kernel[(chunks, B)](
        pred, target, dummy, bounds, partials,
        H, W, top, left, crop_h, crop_w, chunks_w,
        HAS_MASK=mask is not None, MIN_INCLUSIVE=bool(min_inclusive), MAX_INCLUSIVE=bool(max_inclusive),
        DELTA_INCLUSIVE=bool(delta_inclusive), REL_BY_PREDICTION=bool(rel_by_prediction),
        LOG10_NONFINITE_ZERO=bool(log10_nonfinite_zero), STEPS=steps, BLOCK_R=block_r, BLOCK_W=block_w,
        num_warps=8 if pred.device.type == "cuda" else 4,
    )
    return partials.sum(dim=1)


__all__ = ["depth_metric_sums"]
