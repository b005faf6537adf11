"""``ScaleInvariantLoss``: the module form of :func:`fastmde.scale_invariant_loss`."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import _si_options, scale_invariant_loss
from ..reference.scale_invariant_loss import DEFAULT_EPS


class ScaleInvariantLoss(nn.Module):
    """A scale-invariant loss preset (``"silog"``, ``"silog_adabins"``, ``"silog_dav2"``, ``"ssi"``);
    ``forward(pred, target, mask=None)`` returns the scalar loss.

    ``ScaleInvariantLoss("silog")`` stands in for BTS's ``silog_loss(variance_focus=0.85)``,
    ``ScaleInvariantLoss("silog_adabins")`` for AdaBins' ``SILogLoss()``,
    ``ScaleInvariantLoss("silog_dav2")`` for Depth-Anything-V2's / GLPDepth's ``SiLogLoss()``,
    ``ScaleInvariantLoss("ssi")`` for MiDaS's ``ScaleAndShiftInvariantLoss()``; the call takes the
    same (prediction, ground truth, mask) arguments. See :func:`fastmde.scale_invariant_loss`
    for the formulas and options (``lambd``, ``scale``, ``alpha``, ``reduction``,
    ``interpolate``, ``eps``).
    """

    def __init__(
        self,
        preset: str = "silog",
        *,
        lambd: float | None = None,
        scale: float | None = None,
        alpha: float | None = None,
        reduction: str | None = None,
        interpolate: bool | None = None,
        eps: float = DEFAULT_EPS,
    ):
        super().__init__()
        _si_options(preset, lambd, scale, alpha, reduction, interpolate, eps)  # bad options fail here
        self.preset = preset
        self.options = dict(lambd=lambd, scale=scale, alpha=alpha, reduction=reduction, interpolate=interpolate,
                            eps=eps)

    def forward(self, pred, target, mask=None, interpolate: bool | None = None) -> torch.Tensor:
        """``interpolate`` overrides the module's choice for this call (AdaBins passes it)."""
        options = self.options if interpolate is None else {**self.options, "interpolate": interpolate}
        return scale_invariant_loss(pred, target, preset=self.preset, mask=mask, **options)

    def extra_repr(self) -> str:
        set_options = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if v is not None and k != "eps")
        return f"{self.preset!r}" + (f", {set_options}" if set_options else "")
