r"""Reference depth metrics: per-image sums (the op's contract), the rules behind them, and how
they combine into the nine numbers of BTS's ``compute_errors``.

Rules (:class:`MetricRules`; every named protocol in ``fastmde.engine.protocols`` sets each one
from its source's code):

* a pixel of image b is *valid* when the ground truth :math:`y` is finite, passes the range test
  ``min_depth < y`` (``<=`` with ``min_inclusive``) and ``y <= max_depth`` (``<`` without
  ``max_inclusive``), the optional mask is true and it lies inside the crop rows [top, bottom)
  and columns [left, right);
* the prediction :math:`ŷ` first has a NaN replaced by ``nan_prediction`` (NaN: it stays NaN and
  makes the metrics of its image NaN), then is clamped to [``pred_min``, ``pred_max``]
  (±inf: no clamp; a clamp keeps NaN; +inf is clamped to a finite ``pred_max``);
* δ = max(ŷ/y, y/ŷ) is compared with 1.25^k by ``<``, or ``<=`` with ``delta_inclusive``;
* REL and SqRel divide by y, or by ŷ with ``rel_by_prediction`` (DenseDepth passes its maps to
  ``compute_errors(gt, pred)`` the other way round);
* logarithms: with ``log10_nonfinite_zero`` a non-finite logarithm (of a value <= 0, +inf or
  NaN) counts as 0, each side separately; the rule applies to log10 and to the natural
  logarithm e = ln ŷ - ln y behind RMSE-log and SILog alike.

Ground truth and prediction are read in their own dtypes (never one rounded to the other's) and
compared in float64.

Per image the op returns, as float64 (B, 13) (``SUM_FIELDS`` names the columns), the sums over
valid pixels

``[n, Σ(ŷ-y)², Σ|ŷ-y|/y, Σ(ŷ-y)²/y, Σ|log10 ŷ - log10 y|, Σe², Σe, Σ[δ<1.25], Σ[δ<1.25²],
Σ[δ<1.25³], below, above, nonpositive_hits]``

where ``below`` / ``above`` count the pixels (finite ground truth, mask true, inside the crop)
that fail the range test on the low side with 0 < y (zero marks missing depth) / on the high
side: the evidence for a units warning (ground truth in millimetres scored in metres);
``nonpositive_hits`` counts the valid pixels whose prediction (after the NaN rule and the clamp)
is <= 0 and still a δ1 hit (max(ŷ/y, y/ŷ) is negative for ŷ < 0): the evidence that a protocol
without a positive clamp (the paper authors' code, Hu et al.'s) scores an untrained model's
negative output as accurate. Invalid pixels contribute exactly 0 whatever the prediction holds.

From one image's sums (``n`` valid pixels), as BTS ``compute_errors`` (utils/eval_with_pngs.py
@118a9da lines 50-71):

* ``rms`` = sqrt(Σ(ŷ-y)²/n), ``rel`` = Σ|ŷ-y|/y / n, ``sq_rel`` = Σ(ŷ-y)²/y / n,
  ``log10`` = Σ|log10 ŷ - log10 y| / n, ``delta1..3`` = Σ[δ < 1.25^k] / n;
* ``rmse_log`` = sqrt(Σe²/n), ``silog`` = 100 sqrt(Σe²/n - (Σe/n)²), e = ln ŷ - ln y (the
  variance is taken as 0 where float64 rounding makes it slightly negative).

Aggregation, chosen per metric (``AGGREGATIONS``; ``per_image_mse`` is for ``rms`` only):

* ``per_image``: each image's value, averaged over the images with n > 0 (RMS = mean over
  images of the per-image RMSE: the paper's code, BTS, AdaBins, monodepth2);
* ``per_image_mse`` (rms): sqrt of the mean over images of the per-image MSE (Hu et al.'s
  ``test.py``);
* ``pooled``: the sums added over all images first, then the formulas above (DenseDepth).

Images with no valid pixel are left out. With nothing to score (count 0) every metric is NaN,
never a perfect-looking 0.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .._checks import whole_number

SUM_FIELDS = (
    "n", "sq_err", "abs_rel", "sq_rel", "log10", "log_sq", "log_sum", "delta1", "delta2", "delta3",
    "below_range", "above_range", "nonpositive_hits",
)
SUM_INDEX = {name: k for k, name in enumerate(SUM_FIELDS)}
NUM_SUMS = len(SUM_FIELDS)
# The nine metrics of BTS compute_errors, in the order every table and log prints them: the
# paper's six first (its tables, ``PAPER_METRIC_NAMES``), then the three the BTS family adds.
METRIC_NAMES = ("rms", "rel", "log10", "delta1", "delta2", "delta3", "sq_rel", "rmse_log", "silog")
PAPER_METRIC_NAMES = METRIC_NAMES[:6]
AGGREGATIONS = ("per_image", "pooled")
RMS_AGGREGATIONS = ("per_image", "per_image_mse", "pooled")
DELTA_THRESHOLDS = (1.25, 1.25**2, 1.25**3)  # exact in float32 and float64

# Crops in pixels of a 480x640 image (NYU): (top, bottom, left, right), bottom/right exclusive;
# scaled proportionally (rounded) to other sizes.
CROPS = {
    "eigen": (45, 471, 41, 601),
    "densedepth": (20, 460, 24, 616),
}
CROP_REFERENCE_SIZE = (480, 640)
# Crops as fractions of the image (KITTI): rows [int(a H), int(b H)), columns [int(c W), int(d W)),
# the sources' own expression (BTS utils/eval_with_pngs.py@118a9da lines 199 and 203; the Eigen
# crop's left edge is 0.0359477 there, not the Garg crop's 0.03594771).
FRACTION_CROPS = {
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    "eigen_kitti": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
}
# The "kb crop" of the KITTI benchmark: the bottom 352 rows and the central 1216 columns
# (BTS pytorch/bts_dataloader.py@29d6a32 lines 168-175).
KB_CROP_SIZE = (352, 1216)

# Per-image values, in this order: the nine metrics, then the MSE (for ``per_image_mse``).
NUM_VALUES = len(METRIC_NAMES) + 1
# The accumulator state: pooled sums, the sums over images of each per-image value, the number
# of images with a valid pixel.
STATE_SIZE = NUM_SUMS + NUM_VALUES + 1


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


def crop_names() -> list[str]:
    return sorted((*CROPS, *FRACTION_CROPS))


def resolve_crop(crop, height: int, width: int) -> tuple[int, int, int, int]:
    """Crop name, explicit (top, bottom, left, right) or None -> integer bounds for (H, W).

    NYU crops (``CROPS``) are defined on 480x640 and scaled proportionally (rounded) to other
    sizes; KITTI crops (``FRACTION_CROPS``) are fractions of the size, truncated as the sources
    compute them (``int(0.40810811 * H)``).
    """
    crop = check_crop(crop)
    if crop is None:
        return (0, height, 0, width)
    if isinstance(crop, str):
        if crop in FRACTION_CROPS:
            a, b, c, d = FRACTION_CROPS[crop]
            return (int(a * height), int(b * height), int(c * width), int(d * width))
        top, bottom, left, right = CROPS[crop]
        rh, rw = CROP_REFERENCE_SIZE
        if (height, width) != (rh, rw):
            top, bottom = round(top * height / rh), round(bottom * height / rh)
            left, right = round(left * width / rw), round(right * width / rw)
        return (top, bottom, left, right)
    top, bottom, left, right = crop
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"crop {crop} does not fit a {height}x{width} image")
    return crop


def check_crop(crop):
    """What :func:`resolve_crop` can check without the image size: None, a crop name, or
    (top, bottom, left, right) as four ints (any whole real number is taken: numpy's int64,
    float32(45.0)); ValueError in one line for anything else."""
    if crop is None:
        return None
    if isinstance(crop, str):
        if crop not in CROPS and crop not in FRACTION_CROPS:
            raise ValueError(f"crop must be one of {crop_names()} or a 4-tuple, got {crop!r}")
        return crop
    try:
        values = tuple(crop)
    except TypeError:
        raise ValueError(f"crop must be a name or (top, bottom, left, right) in pixels, got {crop!r}") from None
    # 0.9 would silently become row 0: pixel bounds are whole numbers
    bounds = tuple(whole_number(v) for v in values)
    if None in bounds:
        raise ValueError(f"crop (top, bottom, left, right) is in whole pixels, got {crop!r}")
    if len(bounds) != 4:
        raise ValueError(f"crop must be (top, bottom, left, right), got {crop!r}")
    return bounds


def resolve_aggregate(aggregate) -> dict[str, str]:
    """``"per_image"``, ``"pooled"`` or a mapping metric -> rule for all nine metrics -> the mapping."""
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
    """Per-image sums (B, 13) float64 of (B, H, W) ``pred`` / ``target`` (see module docstring),
    each read in its own dtype.

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

        def logs(log):
            a, b = log(d), log(y)
            if log10_nonfinite_zero:
                a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
                b = torch.where(torch.isfinite(b), b, torch.zeros_like(b))
            return a, b

        log10_d, log10_y = logs(torch.log10)
        ln_d, ln_y = logs(torch.log)
        e = ln_d - ln_y
        denominator = d if rel_by_prediction else y
        ratio = torch.maximum(d / y, y / d)
        hit = (lambda t: ratio <= t) if delta_inclusive else (lambda t: ratio < t)
        per_pixel = [
            torch.ones_like(y),
            (d - y) ** 2,
            (d - y).abs() / denominator,
            (d - y) ** 2 / denominator,
            (log10_d - log10_y).abs(),
            e**2,
            e,
            *(hit(t).to(torch.float64) for t in DELTA_THRESHOLDS),
        ]
        zero = torch.zeros_like(y)
        sums = [torch.where(valid, v, zero).sum(dim=(1, 2)) for v in per_pixel]
        nonpositive_hits = valid & (d <= 0) & hit(DELTA_THRESHOLDS[0])
        sums += [t.to(torch.float64).sum(dim=(1, 2)) for t in (below, above, nonpositive_hits)]
        return torch.stack(sums, dim=1)


# The sum behind each per-image value (the nine metrics in METRIC_NAMES order, then the MSE),
# before the roots: rms = sqrt(mean sq_err), rmse_log = sqrt(mean log_sq), silog from log_sq and
# log_sum (column 8 is replaced).
_VALUE_SUMS = ("sq_err", "abs_rel", "log10", "delta1", "delta2", "delta3", "sq_rel", "log_sq", "log_sq", "sq_err")
_VALUE_COLUMNS = [SUM_INDEX[name] for name in _VALUE_SUMS]
_ROOT_VALUES = [METRIC_NAMES.index("rms"), METRIC_NAMES.index("rmse_log")]
_SILOG = METRIC_NAMES.index("silog")


@functools.lru_cache(maxsize=None)
def _value_index(device: torch.device) -> torch.Tensor:
    return torch.tensor(_VALUE_COLUMNS, device=device)


def _values(sums: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """(..., 13) sums and their (...,) pixel counts (> 0) -> (..., 10) [the nine metrics, mse]
    (vectorised: a handful of tensor operations, whatever the batch; few, as every evaluation
    call pays them)."""
    means = sums / n.unsqueeze(-1)
    columns = _VALUE_COLUMNS if torch.compiler.is_compiling() else _value_index(sums.device)
    values = means[..., columns]
    # SILog: 100 sqrt(mean e² - (mean e)²), a variance rounded below 0 taken as 0 (NaN stays NaN)
    variance = (values[..., _SILOG] - means[..., SUM_INDEX["log_sum"]] ** 2).clamp_min(0.0)
    values[..., _SILOG] = 100.0 * variance.sqrt()
    for k in _ROOT_VALUES:
        values[..., k] = values[..., k].sqrt()
    return values


def per_image_values(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 13) sums -> (B, 10) per-image [the nine metrics (``METRIC_NAMES`` order), mse] (0 for
    images without a valid pixel) and a (B,) bool of the images with n > 0."""
    n = sums[:, 0]
    has = n > 0
    values = _values(sums, n.clamp_min(1.0))
    return torch.where(has[:, None], values, torch.zeros_like(values)), has


def accumulate(sums: torch.Tensor) -> torch.Tensor:
    """(B, 13) per-image sums -> the (STATE_SIZE,) float64 accumulator state of those images.
    States add: the state of two batches is the sum of their states (and so across processes)."""
    values, has = per_image_values(sums)
    return torch.cat([sums.sum(dim=0), values.sum(dim=0), has.sum()[None].to(sums.dtype)])


def metrics_from_state(state: torch.Tensor, aggregate) -> dict[str, torch.Tensor]:
    """The nine metrics and ``count`` from an accumulator state, each metric aggregated by its rule.

    ``count`` is the number of valid pixels when every metric is pooled, else the number of
    images with a valid pixel. When it is 0 every metric is NaN."""
    rules = resolve_aggregate(aggregate)
    pooled = [rules[name] == "pooled" for name in METRIC_NAMES]
    pixels = state[0]
    images = state[NUM_SUMS + NUM_VALUES]
    image_mean = state[NUM_SUMS:NUM_SUMS + NUM_VALUES] / images.clamp_min(1.0)
    values = image_mean[:len(METRIC_NAMES)]
    if rules["rms"] == "per_image_mse":   # sqrt of the mean per-image MSE
        values = torch.cat([image_mean[NUM_VALUES - 1:].sqrt(), values[1:]])
    if any(pooled):
        pooled_values = _values(state[:NUM_SUMS], pixels.clamp_min(1.0))[:len(METRIC_NAMES)]
        values = pooled_values if all(pooled) else torch.where(
            torch.tensor(pooled, device=state.device), pooled_values, values)
    count = pixels if all(pooled) else images
    values = torch.where(count > 0, values, torch.full_like(values, math.nan))
    out = dict(zip(METRIC_NAMES, values.unbind()))
    out["count"] = count
    return out


def combine(sums: torch.Tensor, aggregate) -> dict[str, torch.Tensor]:
    """The nine metrics from per-image sums (B, 13) under ``aggregate`` (a rule or a per-metric
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


def nonpositive_hits_warning(pixels: float, hits: float, protocol: str | None = None) -> str | None:
    """A message when scored predictions <= 0 counted as δ hits (a rule set without a positive
    clamp: max(ŷ/y, y/ŷ) < 1.25 holds for any ŷ < 0), with their share of the scored pixels."""
    if not hits > 0 or not pixels > 0:
        return None
    where = f"protocol {protocol!r}" if protocol else "these metric rules (no clamp to a positive minimum)"
    return (
        f"{100.0 * hits / pixels:.3g}% of the scored predictions are <= 0 and count as δ hits under {where} "
        f"(max(ŷ/y, y/ŷ) < 1.25 holds for any ŷ < 0, as in the paper authors' and Hu et al.'s code), so δ1-δ3 "
        f"overstate the model; protocol 'fastmde' (or clamp=True) clamps predictions to [min_depth, max_depth] first"
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
    """The nine metrics of (B, H, W) maps, computed the plain way (oracle of the tests); ``rules``
    are :func:`depth_metric_sums_reference`'s keyword arguments."""
    crop_bounds = resolve_crop(crop, pred.shape[-2], pred.shape[-1])
    hi = math.inf if max_depth is None else float(max_depth)
    return combine(
        depth_metric_sums_reference(pred, target, mask, float(min_depth), hi, crop_bounds, **rules),
        aggregate,
    )
