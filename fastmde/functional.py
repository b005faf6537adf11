"""The public functions: ``depth_loss``, ``depth_loss_terms``, ``depth_metrics``, ``scale_invariant_loss``.

They check their input, resolve presets and conventions, and call the ``fastmde::`` ops,
which pick the fastest available implementation for the device.
"""
from __future__ import annotations

import functools
import math
import warnings

import torch

from ._checks import as_depth_maps, bool_argument, bool_like, brief_repr, check_depth_units, real_argument
from ._warn import HostValues, warn_at_caller
from .ops.depth_loss import depth_loss_for_total as depth_loss_op  # the op, or its direct eager path
# (whose backward reads the total's incoming gradient only: the other terms are returned detached)
from .ops.depth_metrics import depth_metric_sums as depth_metric_sums_op
from .ops.scale_invariant_loss import scale_invariant_loss as scale_invariant_loss_op
from .reference import scale_invariant_loss as _si
from .reference.depth_loss import DEPTH_TERMS, PRESETS
from .reference.scale_invariant_loss import PRESETS as SI_PRESETS, SSI_REDUCTIONS
from .reference.depth_metrics import (
    SUM_INDEX,
    MetricRules,
    combine,
    nonpositive_hits_warning,
    range_warning,
    resolve_aggregate,
    resolve_crop,
)


# plain Python values (not numpy's, not torch.compile's symbolic numbers): their checked options
# are kept per argument tuple (the checks are a few dozen calls per loss call); a weight's type is
# part of the key (True, 1 and 1.0 hash alike, and a bool weight is refused)
_PLAIN = (str, float, int, bool, type(None))


def _loss_options(preset, depth_term, alpha, gradient, normal, blur, weights):
    if (type(weights) in (list, tuple) and all(type(v) in _PLAIN for v in (preset, depth_term, alpha, gradient, normal, blur))
            and all(type(w) in (float, int) for w in weights)):
        options = _plain_loss_options(preset, depth_term, alpha, gradient, normal, blur,
                                      tuple((type(w), w) for w in weights))
        return options[:-1] + (list(options[-1]),)
    return _checked_loss_options(preset, depth_term, alpha, gradient, normal, blur, weights)


@functools.lru_cache(maxsize=64, typed=True)
def _plain_loss_options(preset, depth_term, alpha, gradient, normal, blur, typed_weights):
    options = _checked_loss_options(preset, depth_term, alpha, gradient, normal, blur, [w for _, w in typed_weights])
    return options[:-1] + (tuple(options[-1]),)


def _name_argument(value, name: str, *, allow_none: bool = False) -> None:
    """TypeError naming ``name`` unless ``value`` is a string (a preset or option name): a list
    or array would otherwise fail as 'unhashable type' or 'truth value ... is ambiguous'."""
    if not isinstance(value, str) and not (allow_none and value is None):
        raise TypeError(f"{name} must be a name (str){' or None' if allow_none else ''}, got {brief_repr(value)} "
                        f"({type(value).__name__})")


def _checked_loss_options(preset, depth_term, alpha, gradient, normal, blur, weights):
    # True / False (numpy's too), checked even where a preset sets them: "no" would read as true
    gradient = bool_argument(gradient, "gradient")
    normal = bool_argument(normal, "normal")
    blur = bool_argument(blur, "blur")
    _name_argument(preset, "preset", allow_none=True)   # a list or an array: no 'unhashable type'
    if preset is not None:
        if preset in SI_PRESETS:
            raise ValueError(
                f"preset {preset!r} is a scale-invariant loss: use fastmde.scale_invariant_loss(pred, target, "
                f"preset={preset!r}) or fastmde.nn.ScaleInvariantLoss({preset!r})"
            )
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        options = PRESETS[preset]
        depth_term, gradient, normal, blur = (
            options["depth_term"], options["gradient"], options["normal"], options["blur"],
        )
    _name_argument(depth_term, "depth_term")
    if depth_term not in DEPTH_TERMS:
        raise ValueError(f"depth_term must be one of {DEPTH_TERMS}, got {depth_term!r}")
    # comparisons, not math.isfinite: under torch.compile(dynamic=True) these floats are symbolic
    # and math.isfinite would break the graph (a NaN fails every comparison)
    alpha = real_argument(alpha, "alpha")
    if not 0.0 < alpha < math.inf:
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    weights = [real_argument(w, "weights") for w in weights]
    if len(weights) != 3 or not all(-math.inf < w < math.inf for w in weights):
        raise ValueError(f"weights must be three finite numbers (depth, gradient, normal), got {weights}")
    return depth_term, alpha, gradient, normal, blur, weights


# the loss's counts reach the host without a synchronisation (checked on a later call on CUDA)
_LOSS_COUNTS = HostValues()


def _empty_terms_message(counts: torch.Tensor, gradient: bool, normal: bool, blur: bool) -> str | None:
    """Which requested terms counted no pixel in the batch (``counts``: the op's [N_d, N_s, N_s])."""
    if counts[0] == 0:
        return ("depth_loss: no valid ground-truth pixel in this batch (finite and mask true): every term is 0 and "
                "adds no gradient")
    if (gradient or normal) and counts[1] == 0:
        names = " and ".join(n for n, on in (("gradient", gradient), ("normal", normal)) if on)
        window = "9x9" if blur else "3x3"
        return (f"depth_loss: no pixel of this batch has its whole {window} ground-truth window valid (sparse ground "
                f"truth such as KITTI's LiDAR?), so the {names} term{'s count' if gradient and normal else ' counts'} "
                f"nothing (0, no gradient); for sparse "
                f"ground truth use a preset without stencil terms ('l1')")
    return None


def depth_loss_terms(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    preset: str | None = None,
    depth_term: str = "log",
    alpha: float = 0.5,
    gradient: bool = True,
    normal: bool = True,
    blur: bool = False,
    mask: torch.Tensor | None = None,
    weights=(1.0, 1.0, 1.0),
) -> dict[str, torch.Tensor]:
    """The depth loss and its terms: ``{"total", "depth", "gradient", "normal"}``.

    ``total`` = w0 * depth + w1 * gradient + w2 * normal carries the gradient with respect to
    ``pred``; the three terms are returned detached, for logging. See :func:`depth_loss`.
    """
    depth_term, alpha, gradient, normal, blur, weights = _loss_options(
        preset, depth_term, alpha, gradient, normal, blur, weights
    )
    # the ground truth keeps its dtype: the op reads it in the compute dtype, so a float32 target
    # beside a bfloat16 prediction is never rounded to bfloat16
    pred3, target3, mask3 = as_depth_maps(pred, target, mask, "depth_loss", cast_target=False)
    if target3.requires_grad:
        raise ValueError(
            "depth_loss: target requires grad, but the loss is differentiable with respect to "
            "pred only; pass target.detach()"
        )
    checking = _values_readable(pred3)
    if checking:
        message = check_depth_units(target3, mask3)   # the first call of the process only
        if message is not None:
            warn_at_caller(f"depth_loss: {message}")
    terms, _, counts = depth_loss_op(pred3, target3, mask3, depth_term, alpha, gradient, normal, blur, weights)
    if checking:
        check = lambda c: _empty_terms_message(c, gradient, normal, blur)  # noqa: E731
        for message in _LOSS_COUNTS.submit(counts, check):
            warn_at_caller(message)
    return {
        "total": terms[3],
        "depth": terms[0].detach(),
        "gradient": terms[1].detach(),
        "normal": terms[2].detach(),
    }


def depth_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    preset: str | None = None,
    depth_term: str = "log",
    alpha: float = 0.5,
    gradient: bool = True,
    normal: bool = True,
    blur: bool = False,
    mask: torch.Tensor | None = None,
    weights=(1.0, 1.0, 1.0),
) -> torch.Tensor:
    r"""Hu et al.'s depth loss as in the paper's code, fused: a scalar tensor.

    ``pred``, ``target``: (B, 1, H, W) or (B, H, W). ``preset`` (the paper's Table 3: ``l1``,
    ``hu``, ``hu_blurred``, ``l1_hu``, ``l1_hu_blurred``) sets ``depth_term``, ``gradient``,
    ``normal`` and ``blur``; ``alpha``, ``mask`` and ``weights`` still apply.

    .. math::
        L = w_0 \frac1{N_d}\sum_{m} \ln(|\hat y-y|+α) + w_1 \frac1{N_s}\sum_{s} [\ln(|\hat g_x-g_x|+α)
            + \ln(|\hat g_y-g_y|+α)] + w_2 \frac1{N_s}\sum_{s} |1-\cos(\hat n, n)|

    (``depth_term="l1"`` uses :math:`|\hat y - y|`), with unnormalised Sobel gradients g of the
    ground truth (Gaussian-blurred, 7x7, σ = 1.4, reflect padding, when ``blur``) and ĝ of the
    prediction (zero padding), normals n = (-g_x, -g_y, 1), depths in metres.

    What a mask does to each term: a pixel is *valid* where ``mask`` is true (default all) and
    the ground truth is finite. The depth term is the mean over the N_d valid pixels. The
    gradient and normal terms are means over the N_s pixels whose whole ground-truth stencil is
    valid: the 3x3 Sobel window, or the 9x9 window with ``blur`` (a 3x3 Sobel of 7x7 blurs),
    clipped to the image. So holes (zeros of a depth sensor, an augmentation's fill) never enter
    a Sobel or blur, and a prediction equal to the ground truth around a hole puts every term at
    its minimum with no pull on the valid pixels; what the prediction holds inside a hole does
    not change the loss. Without a mask and with finite ground truth every pixel counts in every
    term (the paper's code). A term with no counted pixel is 0 and adds no gradient, and a
    ``UserWarning`` says so (on CUDA one call later: the counts reach the host without a
    synchronisation). float16/bfloat16 predictions are computed in float32 and return a float32
    loss; the ground truth keeps its own precision (a float32 target is never rounded to the
    prediction's dtype). On the first call of the process, ground truth whose median exceeds
    100 m (millimetres, an unscaled 16-bit PNG) gets a ``UserWarning``.

    ``mask``: bool, integers (nonzero = valid) or floating 0/1, shaped like ``pred``. Raises
    ValueError for a floating mask holding other values (a probability mask, NaN holes), for an
    unknown ``preset`` or ``depth_term``, a non-positive ``alpha``, weights that are not three
    finite numbers, shapes that differ or are not (B, [1,] H, W), empty maps, tensors on
    different devices and a ``target`` that requires grad; TypeError for a ``pred`` or
    ``target`` that is not floating point and a complex ``mask``.
    Source: Hu et al. (WACV 2019) as in the code of Freeman & Tilney-Volk (Table 3's presets).
    """
    return depth_loss_terms(
        pred, target, preset=preset, depth_term=depth_term, alpha=alpha, gradient=gradient,
        normal=normal, blur=blur, mask=mask, weights=weights,
    )["total"]


def metric_rules(
    min_depth: float = 1e-3,
    max_depth: float | None = None,
    *,
    min_inclusive: bool = False,
    max_inclusive: bool = True,
    clamp=True,
    nan_prediction: float | None = None,
    delta_inclusive: bool = False,
    rel_denominator: str = "target",
    log10_nonfinite: str = "propagate",
) -> MetricRules:
    """Validate the metric conventions (see :func:`depth_metrics`) and return them as the op's
    :class:`~fastmde.reference.depth_metrics.MetricRules`."""
    # comparisons, not math.isfinite: under torch.compile(dynamic=True) these floats are
    # symbolic and math.isfinite would break the graph (a NaN fails every comparison)
    lo = real_argument(min_depth, "min_depth")
    hi = math.inf if max_depth is None else real_argument(max_depth, "max_depth")
    if not 0.0 <= lo < math.inf:
        raise ValueError(f"min_depth must be a finite number >= 0 (metres), got {min_depth}")
    if not hi > lo:
        raise ValueError(f"max_depth ({max_depth}) must be greater than min_depth ({min_depth})")
    min_inclusive = bool_argument(min_inclusive, "min_inclusive")
    max_inclusive = bool_argument(max_inclusive, "max_inclusive")
    delta_inclusive = bool_argument(delta_inclusive, "delta_inclusive")
    if isinstance(clamp, (str, bytes)):      # "no" would unpack as the pair ("n", "o")
        raise TypeError(f"clamp must be True, False/None or (low, high) in metres, got {clamp!r} "
                        f"({type(clamp).__name__})")
    if clamp is None or bool_like(clamp):    # numpy's bools too
        pred_min, pred_max = (lo, hi) if clamp else (-math.inf, math.inf)
    else:
        try:
            a, b = clamp
        except (TypeError, ValueError):
            raise ValueError(f"clamp must be True, False/None or (low, high) in metres, got {clamp!r}") from None
        pred_min = -math.inf if a is None else real_argument(a, "clamp's low")
        pred_max = math.inf if b is None else real_argument(b, "clamp's high")
        if not pred_min <= pred_max:
            raise ValueError(f"clamp must have low <= high, got {clamp!r}")
    if rel_denominator not in ("target", "prediction"):
        raise ValueError(f"rel_denominator must be 'target' or 'prediction', got {rel_denominator!r}")
    if log10_nonfinite not in ("propagate", "zero"):
        raise ValueError(f"log10_nonfinite must be 'propagate' or 'zero', got {log10_nonfinite!r}")
    return MetricRules(
        min_depth=lo, max_depth=hi, min_inclusive=min_inclusive, max_inclusive=max_inclusive,
        pred_min=pred_min, pred_max=pred_max,
        nan_prediction=math.nan if nan_prediction is None else real_argument(nan_prediction, "nan_prediction"),
        delta_inclusive=delta_inclusive, rel_by_prediction=rel_denominator == "prediction",
        log10_nonfinite_zero=log10_nonfinite == "zero",
    )


def _values_readable(t: torch.Tensor) -> bool:
    """Whether the checks and warnings that read a result's values on the host may run: not
    under torch.compile (a graph break), not on meta tensors (no values)."""
    return not torch.compiler.is_compiling() and t.device.type != "meta"


def warn_about_sums(sums: torch.Tensor, rules: MetricRules, protocol: str | None = None,
                    stacklevel: int = 3) -> None:
    """The metrics' warnings from the pooled sums (``SUM_FIELDS``, or a state that starts with
    them): most considered ground truth outside [min_depth, max_depth] (a units mistake, usually
    millimetres), and predictions <= 0 counted as δ hits (with their share; ``protocol`` names
    the rules in the message). ``stacklevel`` 3 attributes them to the caller of the public
    function that calls this. Skipped under torch.compile (they need the counts on the host)."""
    if not _values_readable(sums):
        return
    host = sums[:len(SUM_INDEX)].tolist()   # one copy to the host, not one per count
    count = lambda name: host[SUM_INDEX[name]]  # noqa: E731
    messages = (
        range_warning(count("n"), count("below_range"), count("above_range"), rules.min_depth, rules.max_depth),
        nonpositive_hits_warning(count("n"), count("nonpositive_hits"), protocol),
    )
    for message in messages:
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=stacklevel)


def _metric_sums(pred, target, mask, crop, rules: MetricRules) -> torch.Tensor:
    # the ground truth keeps its dtype: a float32 target beside a bfloat16 prediction is never
    # rounded to bfloat16 (10.01 m would become 10.0 and pass max_depth=10)
    pred3, target3, mask3 = as_depth_maps(pred, target, mask, "depth_metrics", cast_target=False)
    bounds = resolve_crop(crop, pred3.shape[-2], pred3.shape[-1])
    return depth_metric_sums_op(
        pred3.detach(), target3.detach(), mask3, rules.min_depth, rules.max_depth, list(bounds), *rules.op_args()
    )


def depth_metric_sums(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    min_depth: float = 1e-3,
    max_depth: float | None = None,
    crop=None,
    **rules,
) -> torch.Tensor:
    """Per-image sums (B, 13) float64 behind the metrics (columns ``SUM_FIELDS`` of
    ``fastmde.reference.depth_metrics``); ``rules`` are :func:`depth_metrics`' convention
    keywords (``min_inclusive``, ``clamp``, ...)."""
    return _metric_sums(pred, target, mask, crop, metric_rules(min_depth, max_depth, **rules))


def depth_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    min_depth: float = 1e-3,
    max_depth: float | None = None,
    crop=None,
    aggregate="per_image",
    min_inclusive: bool = False,
    max_inclusive: bool = True,
    clamp=True,
    nan_prediction: float | None = None,
    delta_inclusive: bool = False,
    rel_denominator: str = "target",
    log10_nonfinite: str = "propagate",
) -> dict[str, torch.Tensor]:
    r"""The nine standard depth metrics of BTS ``compute_errors``: ``{rms, rel, log10, delta1,
    delta2, delta3, sq_rel, rmse_log, silog}`` (float64 tensors).

    ``pred``, ``target`` (ground truth), optional ``mask``: (B, 1, H, W) or (B, H, W), metres,
    each in its own floating dtype (the ground truth is never rounded to the prediction's dtype;
    comparisons run in float64). Over valid pixels: ground truth finite and in
    (min_depth, max_depth] (``min_inclusive``: ``>=``; ``max_inclusive=False``: ``<``),
    ``mask`` true, inside ``crop``: ``"eigen"`` or ``"densedepth"`` (NYU, defined on 480x640
    and scaled to other sizes), ``"garg"`` or ``"eigen_kitti"`` (KITTI, fractions of the size,
    truncated as the sources do), (top, bottom, left, right) or None. A NaN prediction becomes
    ``nan_prediction`` (None: stays NaN, so its image's metrics are NaN); predictions are then
    clamped: ``clamp=True`` to [min_depth, max_depth], ``(low, high)`` to that, ``False`` not
    at all. With e = ln ŷ - ln y:

    .. math::
        \mathrm{RMS} = \sqrt{\tfrac1n \sum (ŷ-y)^2},\quad
        \mathrm{REL} = \tfrac1n \sum |ŷ-y|/y,\quad
        \mathrm{SqRel} = \tfrac1n \sum (ŷ-y)^2/y,\quad
        \log_{10} = \tfrac1n \sum |\log_{10} ŷ - \log_{10} y|,

        \mathrm{RMSE_{log}} = \sqrt{\tfrac1n \sum e^2},\quad
        \mathrm{SILog} = 100 \sqrt{\tfrac1n \sum e^2 - (\tfrac1n \sum e)^2},\quad
        δ_k = \tfrac1n \sum [\max(ŷ/y, y/ŷ) < 1.25^k]

    (``delta_inclusive``: ``<=``; ``rel_denominator="prediction"``: REL and SqRel divide by ŷ;
    ``log10_nonfinite="zero"``: a non-finite logarithm of either side counts as 0, in log10 and
    in e alike). ``aggregate``: ``"per_image"`` (BTS, the paper's code: each image's metrics
    averaged over the images that have a valid pixel, RMS = mean per-image RMSE), ``"pooled"``
    (all valid pixels at once), or a mapping metric -> rule for all nine that may also give
    ``rms`` the rule ``"per_image_mse"`` (sqrt of the mean per-image MSE, Hu et al.). The named
    protocols of ``fastmde.engine.protocols`` set all of these from their source's code
    (``Protocol.metric_options()``; BTS's NYU evaluation is
    ``depth_metrics(pred, gt, mask=gt > 0, **PROTOCOLS["bts"].metric_options())``).

    Nothing to score (no valid pixel): every metric is NaN, never 0. ``UserWarning``: when most
    considered ground truth lies outside the range (naming the side; ground truth in
    millimetres scored with ``max_depth=10`` is the usual cause), and when predictions <= 0
    count as δ hits (rules without a positive clamp), with their share. Raises ``ValueError`` /
    ``TypeError`` for shapes, dtypes, devices or conventions it cannot use.
    Source: Lee et al., BTS, utils/eval_with_pngs.py ``compute_errors`` (cleinc/bts@118a9da).
    """
    rules = metric_rules(
        min_depth, max_depth, min_inclusive=min_inclusive, max_inclusive=max_inclusive, clamp=clamp,
        nan_prediction=nan_prediction, delta_inclusive=delta_inclusive, rel_denominator=rel_denominator,
        log10_nonfinite=log10_nonfinite,
    )
    aggregate = resolve_aggregate(aggregate)
    sums = _metric_sums(pred, target, mask, crop, rules)
    warn_about_sums(sums.sum(dim=0), rules)
    return combine(sums, aggregate)


# ------------------------------------------------------------------ scale-invariant losses


def _si_options(preset, lambd, scale, alpha, reduction, interpolate, eps):
    """Validated options of :func:`scale_invariant_loss`: (kind, lambd, scale, alpha,
    image_reduction, interpolate, eps). Comparisons, not math.isfinite (symbolic floats under
    torch.compile(dynamic=True); a NaN fails every comparison)."""
    _name_argument(preset, "preset")
    if preset not in SI_PRESETS:
        hint = " (a Hu et al. preset: use fastmde.depth_loss)" if preset in PRESETS else ""
        raise ValueError(f"preset must be one of {sorted(SI_PRESETS)}, got {preset!r}{hint}")
    options = SI_PRESETS[preset]
    kind = options["kind"]
    if kind == "ssi":
        for name, value in (("lambd", lambd), ("scale", scale)):
            if value is not None:
                raise ValueError(f"{name} applies to the silog presets, not to {preset!r}")
        alpha = options["alpha"] if alpha is None else real_argument(alpha, "alpha")
        if not 0.0 <= alpha < math.inf:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        reduction = options["reduction"] if reduction is None else reduction
        _name_argument(reduction, "reduction")
        if reduction not in SSI_REDUCTIONS:
            raise ValueError(f"reduction must be one of {SSI_REDUCTIONS}, got {reduction!r}")
        lambd, scale = 0.0, 1.0
    else:
        for name, value in (("alpha", alpha), ("reduction", reduction)):
            if value is not None:
                raise ValueError(f"{name} applies to the 'ssi' preset, not to {preset!r}")
        lambd = options["lambd"] if lambd is None else real_argument(lambd, "lambd")
        if not 0.0 <= lambd <= 1.0:
            raise ValueError(f"lambd (BTS variance_focus) must be in [0, 1], got {lambd}")
        scale = options["scale"] if scale is None else real_argument(scale, "scale")
        if not 0.0 < scale < math.inf:
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        alpha, reduction = 0.0, "batch"
    eps = real_argument(eps, "eps")
    if not 0.0 < eps < math.inf:
        raise ValueError(f"eps must be a positive finite number (metres), got {eps}")
    interpolate = bool_argument(interpolate, "interpolate", allow_none=True)
    interpolate = options["interpolate"] if interpolate is None else interpolate
    return kind, lambd, scale, alpha, reduction == "image", interpolate, eps


def _si_maps(pred, target, mask, interpolate: bool):
    """(B, H, W) views of pred (bilinearly resized to the ground truth's size first when
    ``interpolate`` and the sizes differ, align_corners=True, as AdaBins), target (its own dtype)
    and mask (bool)."""
    what = "scale_invariant_loss"
    if isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor) and pred.dim() in (3, 4) \
            and target.dim() in (3, 4) and pred.shape[-2:] != target.shape[-2:]:
        if not interpolate:
            raise ValueError(
                f"{what}: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)} "
                "(interpolate=True resizes pred bilinearly to the ground truth, as AdaBins does)"
            )
        if pred.is_floating_point() and pred.numel() > 0 and (pred.dim() == 3 or pred.shape[1] == 1):
            size = (int(target.shape[-2]), int(target.shape[-1]))
            p4 = pred if pred.dim() == 4 else pred[:, None]
            pred = torch.nn.functional.interpolate(p4, size=size, mode="bilinear", align_corners=True)
            pred = pred if target.dim() == 4 else pred[:, 0]
    pred3, _, mask3 = as_depth_maps(pred, target, mask, what)
    target3 = target.reshape(pred3.shape)  # in its own dtype: the op reads it so, never rounded to pred's
    if target3.requires_grad:
        raise ValueError(
            f"{what}: target requires grad, but the loss is differentiable with respect to pred only; "
            "pass target.detach()"
        )
    return pred3, target3, mask3


def scale_invariant_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    preset: str = "silog",
    mask: torch.Tensor | None = None,
    lambd: float | None = None,
    scale: float | None = None,
    alpha: float | None = None,
    reduction: str | None = None,
    interpolate: bool | None = None,
    eps: float = _si.DEFAULT_EPS,
) -> torch.Tensor:
    r"""A scale-invariant depth loss, fused: a scalar tensor (differentiable w.r.t. ``pred``).

    ``pred``, ``target`` (ground truth), optional ``mask`` (bool, integers: nonzero = valid, or
    floating 0/1; other floating values are refused):
    (B, 1, H, W) or (B, H, W), depths in metres (``ssi``: any affine-invariant quantity, e.g.
    disparity). Presets (each as its source's code computes it; docs/losses.md):

    * ``"silog"`` (BTS ``silog_loss``, NeWCRFs): :math:`10\sqrt{\overline{d^2} - λ\bar d^2}`, λ = 0.85;
    * ``"silog_adabins"`` (AdaBins ``SILogLoss``): :math:`10\sqrt{\mathrm{var}(d) + (1-λ)\bar d^2}`,
      unbiased variance, λ = 0.85; a prediction of another size is first resized bilinearly to
      the ground truth (align_corners=True), as AdaBins does (``interpolate``);
    * ``"silog_dav2"`` (Depth-Anything-V2 metric_depth / GLPDepth ``SiLogLoss``):
      :math:`\sqrt{\overline{d^2} - λ\bar d^2}`, λ = 0.5;
    * ``"ssi"`` (MiDaS scale-and-shift-invariant loss): per image the least-squares scale s and
      shift t of ``pred`` onto ``target``, then :math:`\sum M (s\hat y + t - y)^2 / (2\sum M)`
      plus α = 0.5 times the gradient-matching term (L1 of the residual's differences at 4
      scales, strides 1, 2, 4, 8), sums over the batch (``reduction="batch"``, MiDaS's default;
      ``"image"``: per image, then averaged).

    with :math:`d = \ln\max(\hat y, ε) - \ln y` over the valid pixels of the whole batch: mask
    true and ground truth finite and > 0 (``ssi``: finite). Options override the preset:
    ``lambd`` (BTS ``variance_focus``, DAV2 ``lambd``; in [0, 1]), ``scale`` (the factor 10 of
    BTS/AdaBins), ``alpha`` and ``reduction`` (``ssi``), ``interpolate``, ``eps`` (the floor of the
    prediction under the log, 1e-6 m: a prediction <= 0 gives a large finite error instead of
    NaN and passes no gradient).

    Never NaN from the data's edge cases: no valid pixel gives 0 with zero gradient and a
    ``UserWarning``; a square root of a slightly negative variance (rounding) is 0 with zero
    gradient; AdaBins' variance of one pixel is 0 (``torch.var`` gives NaN). A NaN prediction
    still gives NaN (a diverged network is not hidden). float16/bfloat16 are computed in float32
    and the ground truth is read in its own dtype (never rounded to the prediction's); the loss
    is float32, float64 when either input is float64.

    Raises ValueError for an unknown preset, options that do not apply to it or are out of
    range, shapes that differ (without ``interpolate``) or are not (B, [1,] H, W), empty maps,
    tensors on different devices and a ``target`` that requires grad; TypeError for
    non-floating ``pred`` / ``target`` and a complex ``mask``.
    Sources: BTS ``pytorch/bts.py``; AdaBins ``loss.py``; Depth-Anything-V2
    ``metric_depth/util/loss.py``; MiDaS's published ``midas_loss.py`` (Ranftl et al., TPAMI 2020).
    """
    kind, lambd, scale, alpha, image_reduction, interpolate, eps = _si_options(
        preset, lambd, scale, alpha, reduction, interpolate, eps
    )
    pred3, target3, mask3 = _si_maps(pred, target, mask, interpolate)
    loss, _, count = scale_invariant_loss_op(pred3, target3, mask3, kind, lambd, scale, alpha, image_reduction, eps)
    if _values_readable(count) and count.item() == 0:
        warnings.warn(
            f"scale_invariant_loss ({preset}): no valid ground-truth pixel in the batch (mask empty, or "
            f"ground truth all {'non-finite' if kind == 'ssi' else 'zero, negative or non-finite'}); "
            "the loss is 0 with zero gradient",
            UserWarning,
            stacklevel=2,
        )
    return loss
