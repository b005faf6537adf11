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
gradient is exactly 1 (``loss.backward()``), ``grad`` is already in ``pred``'s dtype and nothing
else holds it (``_handed_over``), the map itself is the answer and no pass runs. That is the
gradient where only the total (terms[3]) has an incoming gradient g_3, as through the public
functions, which return the other terms detached. A gradient reaching the depth, gradient or
normal entry of the raw op's ``terms`` (g_0..g_2) is honoured too: since total = Σ w_k term_k,
d/d pred of Σ_k g_k term_k is the map of the same forward with the weights g_k + g_3 w_k,
computed again (one forward pass, only then: ``fastmde::depth_loss_other_terms_backward_``).
Telling the two apart reads the four incoming values on the host (on CUDA a synchronisation in
the backward). (Before, the forward left the two parts and the
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
    """grad_total * grad in ``dtype``: the twins' one elementwise pass (``depth_loss_backward``)."""
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


def _weights_of_incoming(grad_terms: torch.Tensor, weights: list[float]) -> list[float] | None:
    """None where only the total (terms[3]) has an incoming gradient; else the weights whose
    total's gradient is d/d pred of Σ_k g_k terms_k: g_k + g_3 w_k (total = Σ w_k terms_k). A NaN
    among g_0..g_2 counts as a gradient (it reaches pred as NaN, as autograd would send it)."""
    g = grad_terms.tolist()
    if g[0] == 0 and g[1] == 0 and g[2] == 0:
        return None
    return [g[k] + g[3] * w for k, w in enumerate(weights)]


def _map_for_weights(pred, target, mask, options, weights, dtype):
    """The forward's gradient map for other ``weights`` (the forward's ``options`` otherwise), in ``dtype``."""
    depth_term, alpha, gradient, normal, blur, _ = options
    _, grad, _ = _depth_loss(pred, target, mask, depth_term, alpha, gradient, normal, blur, weights)
    return grad.to(dtype)


def _other_terms_backward(
    grad_pred: torch.Tensor,
    grad_terms: torch.Tensor,
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: Optional[torch.Tensor],
    depth_term: str,
    alpha: float,
    gradient: bool,
    normal: bool,
    blur: bool,
    weights: list[float],
) -> None:
    """Where a gradient reached terms[0..2] too, overwrite ``grad_pred`` (the total's, g_3 * grad)
    with d/d pred of Σ_k g_k terms_k; else leave it. An op of its own beside
    ``fastmde::depth_loss_backward`` (whose schema stays: graphs compiled before it still run from
    torch's caches), in place so that compiled code writes no other map."""
    incoming = _weights_of_incoming(grad_terms, weights)
    if incoming is not None:
        options = (depth_term, alpha, gradient, normal, blur, weights)
        grad_pred.copy_(_map_for_weights(pred, target, mask, options, incoming, grad_pred.dtype))


other_terms_backward_op = torch.library.custom_op(
    "fastmde::depth_loss_other_terms_backward_", mutates_args=("grad_pred",))(_other_terms_backward)
other_terms_backward = with_eager_path(other_terms_backward_op, _other_terms_backward)


@other_terms_backward_op.register_fake
def _(grad_pred, grad_terms, pred, target, mask, depth_term, alpha, gradient, normal, blur, weights):
    return None


def _kept(options: list) -> list:
    """The op's options as the backward keeps them: the weights copied (the caller's list may
    change between the forward and the backward; a recompute must use the forward's weights)."""
    return [*options[:-1], list(options[-1])]


def _setup_context(ctx, inputs, output):
    pred, target, mask, *options = inputs
    _, grad, counts = output
    # no zero maps for the outputs without a gradient (autograd fills one per output otherwise: a
    # B x H x W map for ``grad`` at every backward)
    ctx.set_materialize_grads(False)
    # the map and the counts are results, not functions of pred to differentiate: no grad_fn
    ctx.mark_non_differentiable(grad, counts)
    ctx.save_for_backward(grad, pred, target, mask)   # pred, target, mask: for a gradient into terms[0..2]
    ctx.options = _kept(options)
    ctx.pred_dtype = pred.dtype


# (no incoming gradient at all reaches a backward only as gradcheck's undefined-gradient check)
_NO_GRADIENTS = (None,) * 9


def _backward(ctx, grad_terms, grad_grad, grad_counts):
    if grad_terms is None:
        return _NO_GRADIENTS
    grad, pred, target, mask = ctx.saved_tensors
    grad_pred = depth_loss_backward(grad_terms[3], grad, ctx.pred_dtype)
    other_terms_backward(grad_pred, grad_terms, pred, target, mask, *ctx.options)
    return grad_pred, None, None, None, None, None, None, None, None


depth_loss_op.register_autograd(not_differentiable_again(_backward), setup_context=_setup_context)


# The plain eager path hands the forward's map over as the gradient when that is the answer
# (incoming gradient exactly 1 on the total only, the map in pred's dtype) and nobody else holds
# it: no pass at all for loss.backward() through the public functions, which drop the map. The
# map is then the caller's (p.grad may be it, and later backwards add into it in place), so the
# node keeps it only as an attribute it gives up: a second backward through the same graph
# (retain_graph=True) recomputes it from the saved inputs instead of reading memory the caller
# now owns. A caller of the ops-level function who kept the returned map gets a fresh gradient
# instead (handing that map over would let p.grad's accumulation change it). The registered op
# (torch.compile, export, dispatch modes) always scales.
def _setup_context_eager(ctx, inputs, output):
    pred, target, mask, *options = inputs
    ctx.save_for_backward(pred, target, mask)     # references, for a recompute (version-checked)
    ctx.options = _kept(options)
    ctx.pred_dtype = pred.dtype
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)               # as _setup_context
    ctx.grad_map = output[1].detach()              # detached: no grad_fn, no reference cycle


def _storage_users(t: torch.Tensor) -> int:
    """How many tensors share ``t``'s memory (views, detached aliases, numpy arrays through the
    tensor), counted by its storage's use count; ``_ALONE`` is that count for a tensor alone."""
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


_ALONE = _storage_users(torch.empty(1))


def _handed_over(grad: torch.Tensor) -> bool:
    """Whether the node's own map can be returned as the gradient: nothing but the node holds it
    (the public functions drop it; a caller of the ops-level function may keep it)."""
    return _storage_users(grad) <= _ALONE


def _backward_eager(ctx, grad_terms, grad_grad, grad_counts):
    if grad_terms is None:
        return _NO_GRADIENTS
    incoming = _weights_of_incoming(grad_terms, ctx.options[-1])
    if incoming is not None:   # a gradient into the depth, gradient or normal entry
        grad = _map_for_weights(*ctx.saved_tensors, ctx.options, incoming, ctx.pred_dtype)
        return grad, None, None, None, None, None, None, None, None
    return _total_backward_eager(ctx, grad_terms[3])


def _backward_eager_total(ctx, grad_terms, grad_grad, grad_counts):
    """The public functions' backward: they return terms[0..2] detached, so only the total has an
    incoming gradient, and the other three are not read (on CUDA, reading them would be a
    synchronisation at every backward)."""
    if grad_terms is None:
        return _NO_GRADIENTS
    return _total_backward_eager(ctx, grad_terms[3])


def _total_backward_eager(ctx, g):
    """d loss / d pred for an incoming gradient ``g`` on the total only."""
    grad = ctx.grad_map
    if grad is None:   # handed over by an earlier backward through this graph
        pred, target, mask = ctx.saved_tensors
        _, grad, _ = _depth_loss(pred, target, mask, *ctx.options)
    if grad.dtype == ctx.pred_dtype and g.device.type == "cpu" and bool(g == 1) and _handed_over(grad):
        ctx.grad_map = None
        return grad, None, None, None, None, None, None, None, None
    return _depth_loss_backward(g, grad, ctx.pred_dtype), None, None, None, None, None, None, None, None


# what callers use: the op, or the same implementation called directly in plain eager mode
depth_loss = with_eager_path(depth_loss_op, _depth_loss, _backward_eager, _setup_context_eager)
# the same for a caller that differentiates the total only (terms[3]; fastmde.functional's loss
# functions, which return the other terms detached)
depth_loss_for_total = with_eager_path(depth_loss_op, _depth_loss, _backward_eager_total, _setup_context_eager)
