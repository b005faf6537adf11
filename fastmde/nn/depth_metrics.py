"""``DepthMetrics``: an accumulator of the six depth metrics over batches and processes."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import check_metric_options, depth_metric_sums
from ..reference.depth_metrics import METRIC_NAMES, combine, per_image_metrics, pooled_metrics


class DepthMetrics(nn.Module):
    """Accumulates depth metrics: ``update(pred, target, mask=None)``, ``compute()``, ``reset()``.

    State is float64 sums, so batches of any size combine exactly as one big batch would:
    the pooled sums (n, Σ(ŷ-y)², ...) and, for per-image aggregation, the sum of each image's
    metrics and the number of images with a valid pixel. ``compute()`` all-reduces the state
    across processes when ``torch.distributed`` is initialised (every rank must call it) and
    returns ``{rms, rel, log10, delta1, delta2, delta3, count}`` where count is the number of
    images (per_image) or valid pixels (pooled) behind the values.
    """

    def __init__(
        self,
        *,
        min_depth: float = 1e-3,
        max_depth: float | None = None,
        crop=None,
        aggregate: str = "per_image",
    ):
        super().__init__()
        check_metric_options(min_depth, max_depth, aggregate)
        self.min_depth, self.max_depth, self.crop, self.aggregate = min_depth, max_depth, crop, aggregate
        self.register_buffer("pooled_sums", torch.zeros(7, dtype=torch.float64), persistent=False)
        self.register_buffer("image_sums", torch.zeros(6, dtype=torch.float64), persistent=False)
        self.register_buffer("image_count", torch.zeros((), dtype=torch.float64), persistent=False)

    def reset(self) -> None:
        self.pooled_sums.zero_()
        self.image_sums.zero_()
        self.image_count.zero_()

    @torch.no_grad()
    def update(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Add a batch; returns its per-image sums (B, 7)."""
        sums = depth_metric_sums(
            pred, target, mask=mask, min_depth=self.min_depth, max_depth=self.max_depth, crop=self.crop
        ).to(self.pooled_sums.device)
        self.pooled_sums += sums.sum(dim=0)
        metrics, has = per_image_metrics(sums)
        self.image_sums += metrics.sum(dim=0)
        self.image_count += has.sum()
        return sums

    @torch.no_grad()
    def compute(self) -> dict[str, torch.Tensor]:
        state = torch.cat([self.pooled_sums, self.image_sums, self.image_count[None]])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            state = state.clone()
            torch.distributed.all_reduce(state)
        pooled, image_sums, image_count = state[:7], state[7:13], state[13]
        if self.aggregate == "pooled":
            values, count = pooled_metrics(pooled), pooled[0]
        else:
            values, count = image_sums / image_count.clamp_min(1.0), image_count
        out = {name: values[i] for i, name in enumerate(METRIC_NAMES)}
        out["count"] = count
        return out

    def forward(self, pred, target, mask=None):
        """Update with a batch and return that batch's metrics alone."""
        return combine(self.update(pred, target, mask), self.aggregate)
