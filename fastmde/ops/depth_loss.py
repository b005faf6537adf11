"""``fastmde::depth_loss``: the fused depth loss op (forward computes the gradient).

Schema: ``depth_loss(pred, target, mask?, depth_term, alpha, gradient, normal, blur, weights)
-> (terms, grad_depth, grad_stencil, counts)`` on (B, H, W) maps. ``terms`` is (4,) [depth,
gradient, normal, total] in float32 (float64 for float64 input). Each term is a mean over its
own pixels (``fastmde/reference/depth_loss.py``): the depth term over the :math:`N_d` valid
pixels, the gradient and normal terms over the :math:`N_s` pixels whose whole ground-truth
stencil is valid; ``counts`` (3,) = [N_d, N_s, N_s] (0 for a term that is off).

The gradient leaves the forward pass unnormalised, in two parts: ``grad_depth`` =
d (N_d w0 depth) / d pred and ``grad_stencil`` = d (N_s (w1 gradient + w2 normal)) / d pred
(an empty (0,) tensor when neither stencil term is on), both like ``pred``; backward applies
each part's count while scaling by the incoming gradient of ``total``:
``grad_pred = grad_total * (grad_depth / max(N_d, 1) + grad_stencil / max(N_s, 1))``.

Why two parts, not a counting pre-pass: N_d and N_s are batch-wide counts, known only once
every tile has been seen, and N_s needs an erosion of the validity (9x9 with the blur), so a
pre-pass would read ground truth and mask twice and compute that erosion twice. With the two
unnormalised parts the kernels stay one pass (one read of pred, ground truth and mask), at the
price of one more map written by forward and read by backward (float32: 17 instead of 13 bytes
per pixel forward, 12 instead of 8 backward). Unnormalised, a float16 gradient also keeps its
precision: 1/N alone is below float16's normal range for a batch of NYU frames.

Implementations: ``fastmde/reference/depth_loss.py`` (spec), ``csrc/depth_loss.cpp``
(``_C.depth_loss_forward``), ``kernels/depth_loss.py`` (``depth_loss_forward``); all take the
op's arguments in order, with contiguous (B, H, W) tensors. The backward,
``fastmde::depth_loss_backward(grad_total, grad_depth, grad_stencil, counts) -> grad_pred``, is
one elementwise pass in each (``depth_loss_backward_reference`` is its spec).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import compute_dtype
from ..reference.depth_loss import depth_loss_backward_reference, depth_loss_forward_reference
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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
    grad_depth = torch.empty_like(pred, memory_format=torch.contiguous_format)
    if gradient or normal:
        grad_stencil = torch.empty_like(pred, memory_format=torch.contiguous_format)
    else:
        grad_stencil = pred.new_empty((0,))
    return pred.new_empty((4,), dtype=compute), grad_depth, grad_stencil, pred.new_empty((3,), dtype=compute)


def _depth_loss_backward(
    grad_total: torch.Tensor, grad_depth: torch.Tensor, grad_stencil: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    _, module = implementation("depth_loss", grad_depth.device, grad_depth)
    with no_autocast(grad_depth.device):
        if module is None:
            return depth_loss_backward_reference(grad_total, grad_depth, grad_stencil, counts)
        return module.depth_loss_backward(grad_total, grad_depth, grad_stencil, counts)


depth_loss_backward_op = torch.library.custom_op(
    "fastmde::depth_loss_backward", mutates_args=())(_depth_loss_backward)
depth_loss_backward = with_eager_path(depth_loss_backward_op, _depth_loss_backward)


@depth_loss_backward_op.register_fake
def _(grad_total, grad_depth, grad_stencil, counts):
    return torch.empty_like(grad_depth, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    _, grad_depth, grad_stencil, counts = output
    ctx.save_for_backward(grad_depth, grad_stencil, counts)


def _backward(ctx, grad_terms, grad_grad_depth, grad_grad_stencil, grad_counts):
    grad_depth, grad_stencil, counts = ctx.saved_tensors
    # Only the total (terms[3]) is differentiable; the other terms are returned detached. One
    # pass over the two parts (``fastmde::depth_loss_backward``), not four tensor operations
    # that would each write a fresh map.
    grad_pred = depth_loss_backward(grad_terms[3], grad_depth, grad_stencil, counts)
    return grad_pred, None, None, None, None, None, None, None, None


depth_loss_op.register_autograd(not_differentiable_again(_backward), setup_context=_setup_context)
# what callers use: the op, or the same implementation called directly in plain eager mode
depth_loss = with_eager_path(depth_loss_op, _depth_loss, _backward, _setup_context)
