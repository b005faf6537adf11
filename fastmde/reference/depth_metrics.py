r"""Reference depth metrics: per-image sums (the op's contract), the rules behind them, and how
they combine into the six numbers.

Rules (:class:`MetricRules`; every named protocol in ``fastmde.engine.protocols`` sets each one
from its source's code):

* a pixel of image b is *valid* when the ground truth :math:`y` is finite, passes the range test
  ``min_depth < y`` (``<=`` with ``min_inclusive``) and ``y <= max_depth`` (``<`` without
  ``max_inclusive``), the optional mask is true and it lies inside the crop rows [top, bottom)
  and columns [left, right);
* the prediction :math:`ŷ` first has a NaN replaced by ``nan_prediction`` (NaN: it stays NaN and
  makes the metrics of its image NaN), then is clamped to [``pred_min``, ``pred_max``]
  (±inf: no clamp; a clamp keeps NaN);
* δ = max(ŷ/y, y/ŷ) is compared with 1.25^k by ``<``, or ``<=`` with ``delta_inclusive``;
* REL divides |ŷ-y| by y, or by ŷ with ``rel_by_prediction``;
* log10 error = |log10 ŷ - log10 y|; with ``log10_nonfinite_zero`` a non-finite logarithm
  (of a value <= 0, +inf or NaN) counts as 0, each side separately.

Per image the op returns, as float64 (B, 9) (``SUM_FIELDS`` names the columns), the sums over
valid pixels

``[n, Σ(ŷ-y)², Σ|ŷ-y|/y, Σ|log10 ŷ - log10 y|, Σ[δ<1.25], Σ[δ<1.25²], Σ[δ<1.25³], below, above]``

where ``below`` / ``above`` count the pixels (finite ground truth, mask true, inside the crop)
that fail the range test on the low side with 0 < y (zero marks missing depth) / on the high
side: the evidence for a units warning (ground truth in millimetres scored in metres).
Invalid pixels contribute exactly 0 whatever the prediction holds there.

Aggregation, chosen per metric (``AGGREGATIONS``; ``per_image_mse`` is for ``rms`` only):

* ``per_image``: each image's value, averaged over the images with n > 0 (RMS = mean over
  images of the per-image RMSE: the paper's code, BTS);
* ``per_image_mse`` (rms): sqrt of the mean over images of the per-image MSE (Hu et al.'s
  ``test.py``);
* ``pooled``: the sums added over all images first (RMS = sqrt of the pooled mean square:
  DenseDepth).

Images with no valid pixel are left out. With nothing to score (count 0) every metric is NaN,
never a perfect-looking 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SUM_FIELDS = ("n", "sq_err", "abs_rel", "log10", "delta1", "delta2", "delta3", "below_range", "above_range")
NUM_SUMS = len(SUM_FIELDS)
# The six metrics, in the order every table and log prints them.
METRIC_NAMES = ("rms", "rel", "log10", "delta1", "delta2", "delta3")
AGGREGATIONS = ("per_image", "pooled")
RMS_AGGREGATIONS = ("per_image", "per_image_mse", "pooled")
DELTA_THRESHOLDS = (1.25, 1.25**2, 1.25**3)  # exact in float32 and float64

# Crops defined on 480x640 images: (top, bottom, left, right), bottom/right exclusive.
CROPS = {
    "eigen": (45, 471, 41, 601),
    "densedepth": (20, 460, 24, 616),
}
CROP_REFERENCE_SIZE = (480, 640)

# The accumulator state: pooled sums, the sums over images of each per-image value (the six
# metrics, then the per-image MSE), the number of images with a valid pixel.
STATE_SIZE = NUM_SUMS + len(METRIC_NAMES) + 1 + 1


@dataclass(frozen=True)
class MetricRules:
    """The per-pixel rules of the op (see the module docstring); the defaults are fastmde's own
    convention (ground truth in (1e-3, max_depth], prediction clamped to that range, ``<``)."""

    min_depth: float = 1e-3
    max_depth: float = math.inf
    min_inclusive: bool = False
    max_inclusive: bool = True
    pred_min: float = 1e-3
    pred_max: float = math.inf
    nan_prediction: float = math.nan
    delta_inclusive: bool = False
    rel_by_prediction: bool = False
    log10_nonfinite_zero: bool = False

    def op_args(self) -> tuple:
        """The op's arguments after ``crop``, in schema order."""
        return (
            self.min_inclusive, self.max_inclusive, self.pred_min, self.pred_max, self.nan_prediction,
            self.delta_inclusive, self.rel_by_prediction, self.log10_nonfinite_zero,
        )


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


def resolve_aggregate(aggregate) -> dict[str, str]:
    """``"per_image"``, ``"pooled"`` or a mapping metric -> rule for all six metrics -> the mapping."""
    if isinstance(aggregate, str):
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS} or a per-metric mapping, got {aggregate!r}")
        return {name: aggregate for name in METRIC_NAMES}
    rules = dict(aggregate)
    if set(rules) != set(METRIC_NAMES):
        raise ValueError(f"a per-metric aggregate must name exactly {METRIC_NAMES}, got {sorted(rules)}")
    for name, rule in rules.items():
        allowed = RMS_AGGREGATIONS if name == "rms" else AGGREGATIONS
        if rule not in allowed:
            raise ValueError(f"aggregate[{name!r}] must be one of {allowed}, got {rule!r}")
    return {name: rules[name] for name in METRIC_NAMES}


def depth_metric_sums_reference(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    min_depth: float,
    max_depth: float,
    crop: tuple[int, int, int, int],
    min_inclusive: bool = False,
    max_inclusive: bool = True,
    pred_min: float | None = None,
    pred_max: float | None = None,
    nan_prediction: float = math.nan,
    delta_inclusive: bool = False,
    rel_by_prediction: bool = False,
    log10_nonfinite_zero: bool = False,
) -> torch.Tensor:
    """Per-image sums (B, 9) float64 of (B, H, W) ``pred`` / ``target`` (see module docstring).

    ``pred_min`` / ``pred_max`` default to ``min_depth`` / ``max_depth`` (fastmde's clamp)."""
    pred_min = min_depth if pred_min is None else pred_min
    pred_max = max_depth if pred_max is None else pred_max
    with torch.no_grad():
        d = pred.to(torch.float64)
        y = target.to(torch.float64)
        top, bottom, left, right = crop
        H, W = y.shape[-2:]
        if not (0 <= top <= bottom <= H and 0 <= left <= right <= W):
            raise ValueError(f"depth_metric_sums: crop {list(crop)} does not fit a {H}x{W} image")
        considered = torch.isfinite(y)
        if mask is not None:
            considered = considered & mask
        in_crop = torch.zeros_like(considered)
        in_crop[:, top:bottom, left:right] = True
        considered = considered & in_crop
        above_min = (y >= min_depth) if min_inclusive else (y > min_depth)
        below_max = (y <= max_depth) if max_inclusive else (y < max_depth)
        valid = considered & above_min & below_max
        below = considered & ~above_min & (y > 0)
        above = considered & ~below_max
        d = torch.where(torch.isnan(d), torch.full_like(d, nan_prediction), d)
        d = torch.where(d < pred_min, torch.full_like(d, pred_min), d)  # NaN stays NaN
        d = torch.where(d > pred_max, torch.full_like(d, pred_max), d)
        y = torch.where(valid, y, torch.ones_like(y))  # any positive value: left out below
        log_d, log_y = torch.log10(d), torch.log10(y)
        if log10_nonfinite_zero:
            log_d = torch.where(torch.isfinite(log_d), log_d, torch.zeros_like(log_d))
            log_y = torch.where(torch.isfinite(log_y), log_y, torch.zeros_like(log_y))
        ratio = torch.maximum(d / y, y / d)
        hit = (lambda t: ratio <= t) if delta_inclusive else (lambda t: ratio < t)
        per_pixel = [
            torch.ones_like(y),
            (d - y) ** 2,
            (d - y).abs() / (d if rel_by_prediction else y),
            (log_d - log_y).abs(),
            *(hit(t).to(torch.float64) for t in DELTA_THRESHOLDS),
        ]
        zero = torch.zeros_like(y)
        sums = [torch.where(valid, v, zero).sum(dim=(1, 2)) for v in per_pixel]
        sums += [below.to(torch.float64).sum(dim=(1, 2)), above.to(torch.float64).sum(dim=(1, 2))]
        return torch.stack(sums, dim=1)


def per_image_values(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 9) sums -> (B, 7) per-image [rmse, rel, log10, delta1..3, mse] (0 for images without a
    valid pixel) and a (B,) bool of the images with n > 0."""
    n = sums[:, 0]
    has = n > 0
    safe_n = torch.where(has, n, torch.ones_like(n))
    mse = sums[:, 1] / safe_n
    values = torch.stack([torch.sqrt(mse), *(sums[:, k] / safe_n for k in range(2, 7)), mse], dim=1)
    return torch.where(has[:, None], values, torch.zeros_like(values)), has


def accumulate(sums: torch.Tensor) -> torch.Tensor:
    """(B, 9) per-image sums -> the (STATE_SIZE,) float64 accumulator state of those images.
    States add: the state of two batches is the sum of their states (and so across processes)."""
    values, has = per_image_values(sums)
    return torch.cat([sums.sum(dim=0), values.sum(dim=0), has.sum()[None].to(sums.dtype)])


def metrics_from_state(state: torch.Tensor, aggregate) -> dict[str, torch.Tensor]:
    """The six metrics and ``count`` from an accumulator state, each metric aggregated by its rule.

    ``count`` is the number of valid pixels when every metric is pooled, else the number of
    images with a valid pixel. When it is 0 every metric is NaN."""
    rules = resolve_aggregate(aggregate)
    pooled = state[:NUM_SUMS]
    image_values = state[NUM_SUMS:NUM_SUMS + 7]
    images = state[NUM_SUMS + 7]
    pixels = pooled[0]
    pooled_mean = pooled[1:7] / torch.where(pixels > 0, pixels, torch.ones_like(pixels))
    image_mean = image_values / torch.where(images > 0, images, torch.ones_like(images))
    out = {}
    for k, name in enumerate(METRIC_NAMES):
        rule = rules[name]
        if rule == "pooled":
            value = torch.sqrt(pooled_mean[0]) if name == "rms" else pooled_mean[k]
        elif rule == "per_image_mse":
            value = torch.sqrt(image_mean[6])
        else:
            value = image_mean[k]
        out[name] = value
    count = pixels if all(r == "pooled" for r in rules.values()) else images
    nan = torch.full_like(count, math.nan)
    out = {name: torch.where(count > 0, v, nan) for name, v in out.items()}
    out["count"] = count
    return out


def combine(sums: torch.Tensor, aggregate) -> dict[str, torch.Tensor]:
    """The six metrics from per-image sums (B, 9) under ``aggregate`` (a rule or a per-metric
    mapping); NaN when no pixel is valid."""
    values = metrics_from_state(accumulate(sums), aggregate)
    del values["count"]
    return values


def range_warning(pixels: float, below: float, above: float, min_depth: float, max_depth: float) -> str | None:
    """A message when most considered ground truth (finite, mask true, in the crop, > 0) lies
    outside the valid range, naming the side and the usual units mistake; else None."""
    considered = pixels + below + above
    if considered <= 0 or below + above <= 0.5 * considered:
        return None
    # no counts in the text: Python's warning registry then shows it once per call site
    if above >= below:
        return (
            f"most of the ground truth lies above max_depth={max_depth:g} m and is not scored: "
            f"is it in millimetres (divide by 1000) or another unit?"
        )
    return (
        f"most of the ground truth lies below min_depth={min_depth:g} m (and above 0) and is not scored: "
        f"is it in kilometres, or min_depth in the wrong unit?"
    )


def depth_metrics_reference(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    min_depth: float = 1e-3,
    max_depth: float | None = None,
    crop=None,
    aggregate="per_image",
    **rules,
) -> dict[str, torch.Tensor]:
    """The six metrics of (B, H, W) maps, computed the plain way (oracle of the tests); ``rules``
    are :func:`depth_metric_sums_reference`'s keyword arguments."""
    crop_bounds = resolve_crop(crop, pred.shape[-2], pred.shape[-1])
    hi = math.inf if max_depth is None else float(max_depth)
    return combine(
        depth_metric_sums_reference(pred, target, mask, float(min_depth), hi, crop_bounds, **rules),
        aggregate,
    )
