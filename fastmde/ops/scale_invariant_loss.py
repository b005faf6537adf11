"""``fastmde::scale_invariant_loss``: the SILog family and the scale-and-shift-invariant loss.

Schema: ``scale_invariant_loss(pred, target, mask?, kind, lambd, scale, alpha, image_reduction,
eps) -> (loss, coeffs, count)`` on (B, H, W) maps (pred and target may have different dtypes: the
ground truth is read as it is). ``loss`` is 0-dim in the compute dtype (float32; float64 when
either input is float64); ``coeffs`` (B, K) float64 are the per-image gradient coefficients per
unit incoming gradient (``fastmde/reference/scale_invariant_loss.py``: ``SILOG_COEFFS``, K = 2,
or ``SSI_COEFFS``, K = 10); ``count`` (float64, 0-dim) the valid pixels of the batch. Backward
is its own op,
``scale_invariant_loss_backward(pred, target, mask?, coeffs, kind, eps) -> grad_pred``: one pass
that writes d loss / d pred (like pred) from the coefficients scaled by the incoming gradient.

Why backward recomputes instead of forward writing the gradient (the depth loss's pattern):
every gradient here depends on batch-wide statistics (the mean log error for SILog; s, t and
the per-image sums P, E for ssi) that exist only once the whole batch has been read. A one-pass
forward could only write unnormalised parts (two maps for SILog), which backward then reads
back: 9 + 8 bytes per float32 pixel forward and 8 + 4 backward, against 9 forward and 9 + 4
backward when backward recomputes the log error from pred and ground truth (and a forward
under ``torch.no_grad`` (validation) writes nothing at all).

Passes (each implementation provides all five, same names and arguments):

* SILog: forward ``silog_sums`` (one read: per-image n, Σd, Σd²), backward ``silog_backward``;
* ssi: forward ``ssi_moments`` (per-image least-squares sums and grid counts) -> s, t ->
  ``ssi_residual_sums`` (the residual's data and gradient-matching sums at the 4 scales and the
  sums that the gradient through s and t needs), backward ``ssi_backward`` (the residual's
  gradient from its grid neighbours at the 4 scales, plus the part through s and t).
  Everything per pixel is fused; only the per-image algebra between passes (a few float64
  numbers per image: ``ssi_solve``, ``ssi_combine``) runs as plain tensor ops.

Implementations: ``fastmde/reference/scale_invariant_loss.py`` (spec), ``csrc/scale_invariant_loss.cpp``
(``_C``), ``kernels/scale_invariant_loss.py`` (Triton). The choice is ``_dispatch.implementation``'s.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch

from ..reference import scale_invariant_loss as ref
from ._dispatch import implementation, no_autocast, not_differentiable_again, with_eager_path

HOT_PATH = "scale_invariant_loss"
_REFERENCE = SimpleNamespace(
    silog_sums=ref.silog_sums,
    silog_backward=ref.silog_backward,
    ssi_moments=ref.ssi_moments,
    ssi_residual_sums=ref.ssi_residual_sums,
    ssi_backward=ref.ssi_backward,
)


def _impl(pred: torch.Tensor):
    """The module serving the op for ``pred``'s device, dtype and layout (``_backend.choose``)."""
    _, module = implementation(HOT_PATH, pred.device, pred)
    return _REFERENCE if module is None else module


def _contiguous(pred, target, mask):
    return pred.contiguous(), target.contiguous(), None if mask is None else mask.contiguous()


def _scale_invariant_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: Optional[torch.Tensor],
    kind: str,
    lambd: float,
    scale: float,
    alpha: float,
    image_reduction: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = _impl(pred)
    with no_autocast(pred.device):
        pred, target, mask = _contiguous(pred, target, mask)
        return ref.scale_invariant_loss_forward(
            impl, pred, target, mask, kind, lambd, scale, alpha, image_reduction, eps
        )


scale_invariant_loss_op = torch.library.custom_op(
    "fastmde::scale_invariant_loss", mutates_args=())(_scale_invariant_loss)


@scale_invariant_loss_op.register_fake
def _(pred, target, mask, kind, lambd, scale, alpha, image_reduction, eps):
    loss = pred.new_empty((), dtype=ref.loss_dtype(pred.dtype, target.dtype))
    coeffs = pred.new_empty((pred.shape[0], ref.num_coeffs(kind)), dtype=torch.float64)
    return loss, coeffs, pred.new_empty((), dtype=torch.float64)


def _scale_invariant_loss_backward(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: Optional[torch.Tensor],
    coeffs: torch.Tensor,
    kind: str,
    eps: float,
) -> torch.Tensor:
    impl = _impl(pred)
    with no_autocast(pred.device):
        pred, target, mask = _contiguous(pred, target, mask)
        coeffs = coeffs.to(torch.float64).contiguous()
        if kind == "ssi":
            return impl.ssi_backward(pred, target, mask, coeffs)
        return impl.silog_backward(pred, target, mask, coeffs, eps)


scale_invariant_loss_backward_op = torch.library.custom_op(
    "fastmde::scale_invariant_loss_backward", mutates_args=())(_scale_invariant_loss_backward)
scale_invariant_loss_backward = with_eager_path(scale_invariant_loss_backward_op, _scale_invariant_loss_backward)


@scale_invariant_loss_backward_op.register_fake
def _(pred, target, mask, coeffs, kind, eps):
    return torch.empty_like(pred, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    pred, target, mask, kind, _, _, _, _, eps = inputs
    ctx.kind, ctx.eps = kind, eps
    # the coefficients and the count are statistics handed out, not differentiated through (the
    # backward recomputes from pred and target): no grad_fn, so no gradient is silently dropped
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(pred, target, mask, output[1])


def _backward(ctx, grad_loss, grad_coeffs, grad_count):
    pred, target, mask, coeffs = ctx.saved_tensors
    scaled = ref.scale_coeffs(ctx.kind, coeffs, grad_loss)
    grad = scale_invariant_loss_backward(pred, target, mask, scaled, ctx.kind, ctx.eps)
    return grad, None, None, None, None, None, None, None, None


scale_invariant_loss_op.register_autograd(not_differentiable_again(_backward), setup_context=_setup_context)
# what callers use: the op, or the same implementation called directly in plain eager mode
scale_invariant_loss = with_eager_path(scale_invariant_loss_op, _scale_invariant_loss, _backward, _setup_context)
