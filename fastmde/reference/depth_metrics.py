r"""Reference depth metrics: per-image sums (the op's contract) and how they combine.

A pixel of image b is *valid* when the ground truth :math:`y` is finite and
:math:`\mathrm{min\_depth} < y \le \mathrm{max\_depth}`, the optional mask is true, and it lies
inside the crop rows [top, bottom) and columns [left, right). The prediction is clamped to
[min_depth, max_depth] first (so log10 is always finite). Per image the op returns the sums

``[n, Σ(ŷ-y)², Σ|ŷ-y|/y, Σ|log10 ŷ - log10 y|, Σ[δ<1.25], Σ[δ<1.25²], Σ[δ<1.25³]]``,
:math:`δ = \max(ŷ/y, y/ŷ)`, as float64 (B, 7): ``SUM_FIELDS`` names the columns.

Aggregation:

* ``per_image`` (the paper's code, Hu et al.): the metrics of each image with n > 0, averaged
  over those images (RMS = mean over images of the per-image RMSE);
* ``pooled``: the sums added over all images first (RMS = sqrt of the pooled mean square).

Images with no valid pixel are left out; with none at all every metric is NaN-free 0 and
``count`` says 0.
"""
from __future__ import annotations

import math

import torch

SUM_FIELDS = ("n", "sq_err", "abs_rel", "log10", "delta1", "delta2", "delta3")
METRIC_NAMES = ("rms", "rel", "log10", "delta1", "delta2", "delta3")
AGGREGATIONS = ("per_image", "pooled")

# Crops defined on 480x640 images: (top, bottom, left, right), bottom/right exclusive.
CROPS = {
    "eigen": (45, 471, 41, 601),
    "densedepth": (20, 460, 24, 616),
}
CROP_REFERENCE_SIZE = (480, 640)


def resolve_crop(crop, height: int, width: int) -> tuple[int, int, int, int]:
    """Crop name, explicit (top, bottom, left, right) or None -> integer bounds for (H, W).

    Named crops are defined on 480x640 and scaled proportionally (rounded) to other sizes.
    """
    if crop is None:
        return (0, height, 0, width)
    if isinstance(crop, str):
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {sorted(CROPS)} or a 4-tuple, got {crop!r}")
        top, bottom, left, right = CROPS[crop]
        rh, rw = CROP_REFERENCE_SIZE
        if (height, width) != (rh, rw):
            top, bottom = round(top * height / rh), round(bottom * height / rh)
            left, right = round(left * width / rw), round(right * width / rw)
        return (top, bottom, left, right)
    bounds = tuple(int(v) for v in crop)
    if len(bounds) != 4:
        raise ValueError(f"crop must be (top, bottom, left, right), got {crop!r}")
    top, bottom, left, right = bounds
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"crop {bounds} does not fit a {height}x{width} image")
    return bounds


def depth_metric_sums_reference(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    min_depth: float,
    max_depth: float,
    crop: tuple[int, int, int, int],
) -> torch.Tensor:
    """Per-image sums (B, 7) float64 of (B, H, W) ``pred`` / ``target`` (see module docstring)."""
    with torch.no_grad():
        d = pred.to(torch.float64)
        y = target.to(torch.float64)
        top, bottom, left, right = crop
        valid = torch.isfinite(y) & (y > min_depth) & (y <= max_depth)
        if mask is not None:
            valid = valid & mask
        in_crop = torch.zeros_like(valid)
        in_crop[:, top:bottom, left:right] = True
        valid = valid & in_crop
        d = d.clamp(min=min_depth, max=max_depth)
        y = torch.where(valid, y, torch.ones_like(y))  # any positive value: masked out below
        m = valid.to(torch.float64)
        ratio = torch.maximum(d / y, y / d)
        sums = [
            m,
            (d - y) ** 2 * m,
            (d - y).abs() / y * m,
            (torch.log10(d) - torch.log10(y)).abs() * m,
            (ratio < 1.25).to(torch.float64) * m,
            (ratio < 1.25**2).to(torch.float64) * m,
            (ratio < 1.25**3).to(torch.float64) * m,
        ]
        return torch.stack([s.sum(dim=(1, 2)) for s in sums], dim=1)


def per_image_metrics(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 7) sums -> (B, 6) metrics of each image and a (B,) bool of images with n > 0."""
    n = sums[:, 0]
    has = n > 0
    safe_n = n.clamp_min(1.0)
    metrics = torch.stack(
        [
            torch.sqrt(sums[:, 1] / safe_n),
            sums[:, 2] / safe_n,
            sums[:, 3] / safe_n,
            sums[:, 4] / safe_n,
            sums[:, 5] / safe_n,
            sums[:, 6] / safe_n,
        ],
        dim=1,
    )
    return metrics * has[:, None], has


def pooled_metrics(total_sums: torch.Tensor) -> torch.Tensor:
    """(7,) sums over any number of images -> (6,) metrics; zeros when n == 0."""
    n = total_sums[0]
    safe_n = n.clamp_min(1.0)
    out = total_sums[1:] / safe_n
    out = torch.cat([torch.sqrt(out[:1]), out[1:]])
    return out * (n > 0)


def combine(sums: torch.Tensor, aggregate: str) -> dict[str, torch.Tensor]:
    """Metrics dict from per-image sums under ``aggregate`` (``per_image`` or ``pooled``)."""
    if aggregate == "pooled":
        values = pooled_metrics(sums.sum(dim=0))
        count = sums[:, 0].sum()
    elif aggregate == "per_image":
        metrics, has = per_image_metrics(sums)
        count = has.sum().to(torch.float64)
        values = metrics.sum(dim=0) / count.clamp_min(1.0)
    else:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    out = {name: values[i] for i, name in enumerate(METRIC_NAMES)}
    return out


def depth_metrics_reference(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    min_depth: float = 1e-3,
    max_depth: float | None = None,
    crop=None,
    aggregate: str = "per_image",
) -> dict[str, torch.Tensor]:
    """The six metrics of (B, H, W) maps, computed the plain way (oracle of the tests)."""
    crop_bounds = resolve_crop(crop, pred.shape[-2], pred.shape[-1])
    hi = math.inf if max_depth is None else float(max_depth)
    return combine(
        depth_metric_sums_reference(pred, target, mask, float(min_depth), hi, crop_bounds),
        aggregate,
    )
