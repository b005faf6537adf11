"""``DepthMetrics``: an accumulator of the nine depth metrics over batches and processes."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import _metric_sums, metric_rules, warn_about_sums
from ..reference.depth_metrics import (
    STATE_SIZE, accumulate, check_crop, combine, metrics_from_state, resolve_aggregate,
)


class DepthMetrics(nn.Module):
    """Accumulates depth metrics: ``update(pred, target, mask=None)``, ``compute()``, ``reset()``.

    The keywords are :func:`fastmde.depth_metrics`' conventions (range, crop, aggregation per
    metric, clamp, NaN prediction, ``<``/``<=``; ``Protocol.metrics()`` fills them from a named
    protocol); ``protocol`` only names them in warnings. Prediction and ground truth keep their
    own dtypes. State is float64 sums, so batches of any size combine exactly as one big batch
    would: the pooled sums (n, Σ(ŷ-y)², ..., the out-of-range and non-positive-hit counts), the
    sums over images of each image's metrics and MSE, and the number of images with a valid
    pixel. ``compute()`` all-reduces the state across processes when ``torch.distributed`` is
    initialised (every rank must call it) and returns ``{rms, rel, log10, delta1, delta2,
    delta3, sq_rel, rmse_log, silog, count}`` where count is the number of images (per-image
    aggregation) or valid pixels (all metrics pooled) behind the values. With count 0 (on all
    ranks together) every metric is NaN. ``compute()`` warns (``UserWarning``, attributed to
    its caller's line) when most ground truth lay outside [min_depth, max_depth] (a units
    mistake) and when predictions <= 0 counted as δ hits, with their share.
    """

    def __init__(
        self,
        *,
        min_depth: float = 1e-3,
        max_depth: float | None = None,
        crop=None,
        aggregate="per_image",
        protocol: str | None = None,
        **rules,
    ):
        super().__init__()
        self.rules = metric_rules(min_depth, max_depth, **rules)
        self.aggregate = resolve_aggregate(aggregate)
        self.crop = check_crop(crop)         # a bad crop fails here, not at the first update
        self.min_depth, self.max_depth, self.protocol = min_depth, max_depth, protocol
        self.register_buffer("state", torch.zeros(STATE_SIZE, dtype=torch.float64), persistent=False)

    def reset(self) -> None:
        self.state.zero_()

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Add a batch; returns its per-image sums (B, 13).

        The batch may be on another device than the state (its sums are copied over), but not
        on ``meta`` beside a real state or the reverse: a meta tensor has no values to add."""
        state_device = self.state.device
        for name, t in (("pred", pred), ("target", target), ("mask", mask)):
            if isinstance(t, torch.Tensor) and (t.device.type == "meta") != (state_device.type == "meta"):
                raise ValueError(f"DepthMetrics.update: {name} is on {t.device} but the metric state is on "
                                 f"{state_device}; a meta tensor has no values to accumulate (move the module "
                                 f"with .to({t.device.type!r}), or give tensors with values)")
        with torch.no_grad():
            sums = _metric_sums(pred, target, mask, self.crop, self.rules).to(self.state.device)
            self.state += accumulate(sums)
        return sums

    def compute(self) -> dict[str, torch.Tensor]:
        # no @torch.no_grad() decorator: its wrapper frame would take the warnings' stacklevel
        with torch.no_grad():
            state = self.state
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                state = state.clone()
                torch.distributed.all_reduce(state)
            warn_about_sums(state, self.rules, self.protocol)
            return metrics_from_state(state, self.aggregate)

    def forward(self, pred, target, mask=None):
        """Update with a batch and return that batch's metrics alone."""
        return combine(self.update(pred, target, mask), self.aggregate)
