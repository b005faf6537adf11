"""``fastmde::depth_metric_sums``: one pass producing the per-image sums behind the metrics.

Schema: ``depth_metric_sums(pred, target, mask?, min_depth, max_depth, crop[4], min_inclusive,
max_inclusive, pred_min, pred_max, nan_prediction, delta_inclusive, rel_by_prediction,
log10_nonfinite_zero) -> (B, 13)`` float64, columns ``fastmde.reference.depth_metrics.SUM_FIELDS``;
``crop`` is (top, bottom, left, right), already resolved to the map size; the rules are those of
``fastmde.reference.depth_metrics.MetricRules``. ``pred`` and ``target`` may have different
floating dtypes: each is read as it is (never rounded to the other's). Not differentiable.

Implementations: ``fastmde/reference/depth_metrics.py`` (spec), ``csrc/depth_metrics.cpp``
(``_C.depth_metric_sums``), ``kernels/depth_metrics.py`` (``depth_metric_sums``); all take the
op's arguments in order, with contiguous (B, H, W) tensors.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..reference.depth_metrics import NUM_SUMS, depth_metric_sums_reference
from ._dispatch import implementation, no_autocast, with_eager_path


def _depth_metric_sums(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: Optional[torch.Tensor],
    min_depth: float,
    max_depth: float,
    crop: list[int],
    min_inclusive: bool,
    max_inclusive: bool,
    pred_min: float,
    pred_max: float,
    nan_prediction: float,
    delta_inclusive: bool,
    rel_by_prediction: bool,
    log10_nonfinite_zero: bool,
) -> torch.Tensor:
    _, module = implementation("depth_metrics", pred.device, pred)
    rules = (min_inclusive, max_inclusive, pred_min, pred_max, nan_prediction, delta_inclusive,
             rel_by_prediction, log10_nonfinite_zero)
    with no_autocast(pred.device):
        if module is None:
            return depth_metric_sums_reference(pred, target, mask, min_depth, max_depth, tuple(crop), *rules)
        return module.depth_metric_sums(
            pred.contiguous(),
            target.contiguous(),
            None if mask is None else mask.contiguous(),
            min_depth,
            max_depth,
            list(crop),
            *rules,
        )


depth_metric_sums_op = torch.library.custom_op("fastmde::depth_metric_sums", mutates_args=())(_depth_metric_sums)


@depth_metric_sums_op.register_fake
def _(pred, target, mask, min_depth, max_depth, crop, *rules):
    return pred.new_empty((pred.shape[0], NUM_SUMS), dtype=torch.float64)


# what callers use: the op, or the same implementation called directly in plain eager mode
depth_metric_sums = with_eager_path(depth_metric_sums_op, _depth_metric_sums)
