"""``fastmde::depth_loss``: the fused depth loss op (forward computes the gradient).

Schema: ``depth_loss(pred, target, mask?, depth_term, alpha, gradient, normal, blur, weights)
-> (terms, grad, counts)`` on (B, H, W) maps. ``terms`` is (4,) [depth, gradient, normal,
total] in float32 (float64 for float64 input). Each term is a mean over its own pixels
(``fastmde/reference/depth_loss.py``): the depth term over the :math:`N_d` valid pixels, the
gradient and normal terms over the :math:`N_s` pixels whose whole ground-truth stencil is
valid; ``counts`` (3,) = [N_d, N_s, N_s] (0 for a term that is off). ``grad`` is d total / d
pred, like ``pred`` (float32 for a float16 ``pred``: ``gradient_dtype``).

The kernels take the gradient in the pass that takes the counts, as two unnormalised parts
(N_d and N_s are batch-wide, known once every tile has been seen), then apply 1/N_d and 1/N_s
in one elementwise pass (``normalise_gradient_reference``). The backward,
``fastmde::depth_loss_backward(grad_total, grad, dtype) -> grad_pred`` = grad_total * grad in
``dtype``, is one elementwise pass in each twin; in plain eager mode, when the incoming
gradient is exactly 1 (``loss.backward()``) and ``grad`` is already in ``pred``'s dtype, the
map itself is the answer and no pass runs. (Before, the forward left the two parts and the
backward combined them: 7 MiB more written and read at 8x1x288x384, and a backward pass of
0.8 ms right after a network's forward on the 2-vCPU AMD EPYC.)

Implementations: ``fastmde/reference/depth_loss.py`` (spec), ``csrc/depth_loss.cpp``
(``_C.depth_loss_forward``), ``kernels/depth_loss.py`` (``depth_loss_forward``); all take the
op's arguments in order, with contiguous (B, H, W) tensors, and each has its
``depth_loss_backward`` (``depth_loss_backward_reference`` is its spec).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import compute_dtype
from ..reference.depth_loss import depth_loss_backward_reference, depth_loss_forward_reference, gradient_dtype
from ._dispatch import implementation, no_autocast, not_differentiable_again, with_eager_path


def _depth_loss(
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
    _, module = implementation("depth_loss", pred.device, pred)
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


depth_loss_op = torch.library.custom_op("fastmde::depth_loss", mutates_args=())(_depth_loss)


@depth_loss_op.register_fake
def _(pred, target, mask, depth_term, alpha, gradient, normal, blur, weights):
    compute = compute_dtype(pred.dtype)
    grad = torch.empty_like(pred, dtype=gradient_dtype(pred.dtype), memory_format=torch.contiguous_format)
    return pred.new_empty((4,), dtype=compute), grad, pred.new_empty((3,), dtype=compute)


def _depth_loss_backward(grad_total: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    _, module = implementation("depth_loss", grad.device, grad)
    with no_autocast(grad.device):
        if module is None:
            return depth_loss_backward_reference(grad_total, grad, dtype)
        return module.depth_loss_backward(grad_total, grad, dtype)


depth_loss_backward_op = torch.library.custom_op(
    "fastmde::depth_loss_backward", mutates_args=())(_depth_loss_backward)
depth_loss_backward = with_eager_path(depth_loss_backward_op, _depth_loss_backward)


@depth_loss_backward_op.register_fake
def _(grad_total, grad, dtype):
    return torch.empty_like(grad, dtype=dtype, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    _, grad, counts = output
    # the map and the counts are results, not functions of pred to differentiate: no grad_fn
    ctx.mark_non_differentiable(grad, counts)
    ctx.save_for_backward(grad)
    ctx.pred_dtype = inputs[0].dtype


def _backward(ctx, grad_terms, grad_grad, grad_counts):
    # Only the total (terms[3]) is differentiable; the other terms are returned detached.
    (grad,) = ctx.saved_tensors
    return depth_loss_backward(grad_terms[3], grad, ctx.pred_dtype), None, None, None, None, None, None, None, None


depth_loss_op.register_autograd(not_differentiable_again(_backward), setup_context=_setup_context)


# The plain eager path hands the forward's map over as the gradient when that is the answer
# (incoming gradient exactly 1, the map in pred's dtype): no pass at all for loss.backward().
# The map is then the caller's (p.grad may be it, and later backwards add into it in place), so
# the node keeps it only as an attribute it gives up: a second backward through the same graph
# (retain_graph=True) recomputes it from the saved inputs instead of reading memory the caller
# now owns. The registered op (torch.compile, export, dispatch modes) always scales.
def _setup_context_eager(ctx, inputs, output):
    pred, target, mask, *options = inputs
    ctx.save_for_backward(pred, target, mask)     # references, for a recompute (version-checked)
    ctx.options = options
    ctx.pred_dtype = pred.dtype
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.grad_map = output[1].detach()              # detached: no grad_fn, no reference cycle


def _backward_eager(ctx, grad_terms, grad_grad, grad_counts):
    g = grad_terms[3]
    grad = ctx.grad_map
    if grad is None:   # handed over by an earlier backward through this graph
        pred, target, mask = ctx.saved_tensors
        _, grad, _ = _depth_loss(pred, target, mask, *ctx.options)
    if grad.dtype == ctx.pred_dtype and g.device.type == "cpu" and bool(g == 1):
        ctx.grad_map = None
        return grad, None, None, None, None, None, None, None, None
    return depth_loss_backward(g, grad, ctx.pred_dtype), None, None, None, None, None, None, None, None


# what callers use: the op, or the same implementation called directly in plain eager mode
depth_loss = with_eager_path(depth_loss_op, _depth_loss, _backward_eager, _setup_context_eager)
