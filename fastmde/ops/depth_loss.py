"""``fastmde::depth_loss``: the fused depth loss op (forward computes the gradient).

Schema: ``depth_loss(pred, target, mask?, depth_term, alpha, gradient, normal, blur, weights)
-> (terms, grad_sum, count)`` on (B, H, W) maps. ``terms`` is (4,) [depth, gradient, normal,
total] in float32 (float64 for float64 input); ``grad_sum`` = d (N total) / d pred, like
``pred``, and ``count`` = N (valid pixels), 0-dim. The kernels count N in the same pass that
writes the gradient (the gradient needs no 1/N then, so no counting pre-pass); backward
applies it while scaling by the incoming gradient of ``total``:
``grad_pred = grad_sum * grad_total / max(N, 1)``. (Unnormalised, a float16 gradient also
keeps its precision: 1/N alone is below float16's normal range for a batch of NYU frames.)

Implementations: ``fastmde/reference/depth_loss.py`` (spec), ``csrc/depth_loss.cpp``
(``_C.depth_loss_forward``), ``kernels/depth_loss.py`` (``depth_loss_forward``); all take the
op's arguments in order, with contiguous (B, H, W) tensors.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..reference.depth_loss import depth_loss_forward_reference
from ._dispatch import implementation, no_autocast


@torch.library.custom_op("fastmde::depth_loss", mutates_args=())
def depth_loss_op(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: Optional[torch.Tensor],
    depth_term: str,
    alpha: float,
    gradient: bool,
    normal: bool,
    blur: bool,
    weights: list[float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    backend, module = implementation("depth_loss", pred.device)
    with no_autocast(pred.device):
        if module is None:
            return depth_loss_forward_reference(
                pred, target, mask, depth_term, alpha, gradient, normal, blur, tuple(weights)
            )
        return module.depth_loss_forward(
            pred.contiguous(),
            target.contiguous(),
            None if mask is None else mask.contiguous(),
            depth_term,
            alpha,
            gradient,
            normal,
            blur,
            list(weights),
        )


@depth_loss_op.register_fake
def _(pred, target, mask, depth_term, alpha, gradient, normal, blur, weights):
    compute = torch.float64 if pred.dtype == torch.float64 else torch.float32
    return (pred.new_empty((4,), dtype=compute), torch.empty_like(pred, memory_format=torch.contiguous_format),
            pred.new_empty((), dtype=compute))


def _setup_context(ctx, inputs, output):
    _, grad_sum, count = output
    ctx.save_for_backward(grad_sum, count)


def _backward(ctx, grad_terms, grad_grad_sum, grad_count):
    grad_sum, count = ctx.saved_tensors
    # Only the total (terms[3]) is differentiable; the other terms are returned detached.
    scale = grad_terms[3] / count.clamp_min(1.0)
    grad_pred = (grad_sum.to(scale.dtype) * scale).to(grad_sum.dtype)
    return grad_pred, None, None, None, None, None, None, None, None


depth_loss_op.register_autograd(_backward, setup_context=_setup_context)
