"""``DepthLoss``: the module form of :func:`fastmde.depth_loss`."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import _loss_options, depth_loss_terms


class DepthLoss(nn.Module):
    """Hu et al.'s depth loss with the paper's presets; ``forward(pred, target, mask=None)``.

    ``DepthLoss("hu_blurred")`` or ``DepthLoss(depth_term="l1", normal=False)``; see
    :func:`fastmde.depth_loss` for the formula. ``forward`` returns the scalar total;
    ``terms(pred, target, mask)`` returns the dict of :func:`fastmde.depth_loss_terms`.
    """

    def __init__(
        self,
        preset: str | None = None,
        *,
        depth_term: str = "log",
        alpha: float = 0.5,
        gradient: bool = True,
        normal: bool = True,
        blur: bool = False,
        weights=(1.0, 1.0, 1.0),
    ):
        super().__init__()
        depth_term, alpha, gradient, normal, blur, weights = _loss_options(
            preset, depth_term, alpha, gradient, normal, blur, weights
        )
        self.preset = preset
        self.options = dict(
            depth_term=depth_term, alpha=alpha, gradient=gradient, normal=normal, blur=blur,
            weights=tuple(weights),
        )

    def terms(self, pred, target, mask=None) -> dict[str, torch.Tensor]:
        return depth_loss_terms(pred, target, mask=mask, **self.options)

    def forward(self, pred, target, mask=None) -> torch.Tensor:
        return self.terms(pred, target, mask)["total"]

    def extra_repr(self) -> str:
        prefix = f"preset={self.preset!r}, " if self.preset else ""
        return prefix + ", ".join(f"{k}={v!r}" for k, v in self.options.items())
