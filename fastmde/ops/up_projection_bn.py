"""``fastmde::upsample_conv2d_bn``: a stage of the up-projection block with BatchNorm folded in.

Schema: ``upsample_conv2d_bn(x, in_scale?, in_shift?, weight, size[2], align_corners)
-> (out, mean, var)``: the previous BatchNorm's affine and ReLU applied to ``x`` while loading
(``in_scale``/``in_shift``, (Cin,), or neither), the bilinear upsample to ``size`` (none when
``size`` is x's size), the k x k conv, and the per-channel batch mean and biased variance of
``out`` that the next BatchNorm needs, in float32 (float64 for float64 input). Spec:
``upsample_conv2d_bn_reference`` in ``fastmde/reference/up_projection.py``.

Chaining stages (``fastmde/ops/up_projection_block.py`` with ``fuse_batchnorm``) means a
BatchNorm output or ReLU output is never written or saved: each conv reads its predecessor's
raw output and normalises it on the fly, and its own statistics come from its epilogue, not
another pass. The chain ends in :func:`batchnorm_add_relu`.

Backward: the total gradient of ``out`` is
:math:`g = \\partial out + \\partial\\mu / N + \\partial\\sigma^2 \\cdot 2 (out - \\mu) / N`
(N = B*H*W); the op ``upsample_conv2d_bn_backward(g, x, in_scale?, in_shift?, weight, size,
align_corners) -> (grad_a, grad_weight)`` gives the gradient of the activated input
:math:`a = \\mathrm{relu}(x s + t)` (recomputed, not stored) and of the weight; the affine +
ReLU's backward is elementwise: :math:`\\partial x = \\partial a \\cdot s \\cdot [xs+t > 0]`,
:math:`\\partial s = \\sum \\partial a \\cdot x \\cdot [\\cdot]`, :math:`\\partial t = \\sum \\partial a \\cdot [\\cdot]`.

Implementations: the Triton kernels (``kernels/up_projection.py``:
``upsample_conv2d_bn_forward`` / ``_backward``, statistics from the conv's epilogue) where the
backend is Triton; elsewhere the reference stage
(``upsample_conv2d_bn_forward_reference`` / ``_backward_reference``) over the device's
``fastmde::upsample_conv2d`` implementation (C++ or reference).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import compute_dtype, memory_format_of
from ..reference.up_projection import (
    affine_reference,
    batchnorm_add_reference,
    batchnorm_add_relu_reference,
    upsample_conv2d_bn_backward_reference,
    upsample_conv2d_bn_forward_reference,
)
from ._dispatch import implementation, no_autocast, with_eager_path
from .up_projection import output_size, upsample_conv2d_kernels


def _upsample_conv2d_bn(
    x: torch.Tensor,
    in_scale: Optional[torch.Tensor],
    in_shift: Optional[torch.Tensor],
    weight: torch.Tensor,
    size: list[int],
    align_corners: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if (in_scale is None) != (in_shift is None):
        raise ValueError("upsample_conv2d_bn: in_scale and in_shift must be given together (or neither)")
    backend, module = implementation("up_projection", x.device, x)
    with no_autocast(x.device):
        if backend == "triton":
            out, mean, var = module.upsample_conv2d_bn_forward(x, in_scale, in_shift, weight, list(size), align_corners)
        else:
            forward, _ = upsample_conv2d_kernels(x.device, x)
            out, mean, var = upsample_conv2d_bn_forward_reference(
                x, in_scale, in_shift, weight, size, align_corners, forward)
    return out.contiguous(memory_format=memory_format_of(x)), mean, var


upsample_conv2d_bn_op = torch.library.custom_op("fastmde::upsample_conv2d_bn", mutates_args=())(_upsample_conv2d_bn)


@upsample_conv2d_bn_op.register_fake
def _(x, in_scale, in_shift, weight, size, align_corners):
    out = x.new_empty((x.shape[0], weight.shape[0], size[0], size[1])).contiguous(memory_format=memory_format_of(x))
    stats = x.new_empty((weight.shape[0],), dtype=compute_dtype(x.dtype))
    return out, stats, stats.clone()


def _upsample_conv2d_bn_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    in_scale: Optional[torch.Tensor],
    in_shift: Optional[torch.Tensor],
    weight: torch.Tensor,
    size: list[int],
    align_corners: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    backend, module = implementation("up_projection", x.device, x)
    with no_autocast(x.device):
        if backend == "triton":
            grad_a, grad_w = module.upsample_conv2d_bn_backward(
                grad_out, x, in_scale, in_shift, weight, list(size), align_corners)
        else:
            _, backward = upsample_conv2d_kernels(x.device, x)
            grad_a, grad_w = upsample_conv2d_bn_backward_reference(
                grad_out, x, in_scale, in_shift, weight, size, align_corners, backward)
    return grad_a.contiguous(memory_format=memory_format_of(x)), grad_w.contiguous()


upsample_conv2d_bn_backward_op = torch.library.custom_op(
    "fastmde::upsample_conv2d_bn_backward", mutates_args=())(_upsample_conv2d_bn_backward)
upsample_conv2d_bn_backward = with_eager_path(upsample_conv2d_bn_backward_op, _upsample_conv2d_bn_backward)


@upsample_conv2d_bn_backward_op.register_fake
def _(grad_out, x, in_scale, in_shift, weight, size, align_corners):
    return torch.empty_like(x, memory_format=memory_format_of(x)), torch.empty_like(
        weight, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, in_scale, in_shift, weight, size, align_corners = inputs
    out, mean, _ = output
    ctx.save_for_backward(x, in_scale, in_shift, weight, out, mean)
    ctx.size, ctx.align_corners = size, align_corners


def _backward(ctx, grad_out, grad_mean, grad_var):
    x, in_scale, in_shift, weight, out, mean = ctx.saved_tensors
    n = max(out.numel() // max(out.shape[1], 1), 1)
    total = torch.zeros_like(out) if grad_out is None else grad_out
    if grad_mean is not None or grad_var is not None:
        # d mean / d out = 1/N, d var / d out = 2 (out - mean) / N, per channel
        total = total.to(mean.dtype)
        if grad_mean is not None:
            total = total + (grad_mean / n)[:, None, None]
        if grad_var is not None:
            total = total + (2.0 / n) * grad_var[:, None, None] * (out.to(mean.dtype) - mean[:, None, None])
    grad_a, grad_w = upsample_conv2d_bn_backward(
        total.to(x.dtype), x, in_scale, in_shift, weight, ctx.size, ctx.align_corners)
    if in_scale is None:
        return grad_a, None, None, grad_w, None, None
    # a = relu(x s + t): the gradient passes where x s + t > 0
    live = affine_reference(x, in_scale, in_shift) > 0
    grad_pre = grad_a.to(in_scale.dtype) * live
    grad_x = (grad_pre * in_scale[:, None, None]).to(x.dtype)
    grad_scale = (grad_pre * x.to(in_scale.dtype)).sum(dim=(0, 2, 3))
    grad_shift = grad_pre.sum(dim=(0, 2, 3))
    return grad_x, grad_scale, grad_shift, grad_w, None, None


upsample_conv2d_bn_op.register_autograd(_backward, setup_context=_setup_context)
# the op, or the same implementation called directly in plain eager mode
_upsample_conv2d_bn_call = with_eager_path(upsample_conv2d_bn_op, _upsample_conv2d_bn, _backward, _setup_context)


def upsample_conv2d_bn(x, in_scale, in_shift, weight, size, align_corners):
    """What callers use: ``fastmde::upsample_conv2d_bn`` (the registered op, or its implementation
    called directly in plain eager mode), ``size`` checked by ``output_size`` first (two whole
    numbers of at least 1, never truncated)."""
    return _upsample_conv2d_bn_call(x, in_scale, in_shift, weight, output_size(size, "upsample_conv2d_bn"),
                                    align_corners)


class _BatchNormAddReLU(torch.autograd.Function):
    """``batchnorm_add_relu_reference`` saving only its inputs: the ReLU's mask is recomputed in
    backward from u and v, which the stages keep anyway, instead of keeping the output."""

    @staticmethod
    def forward(ctx, u, scale_u, shift_u, v, scale_v, shift_v):
        ctx.save_for_backward(u, scale_u, shift_u, v, scale_v, shift_v)
        return batchnorm_add_relu_reference(u, scale_u, shift_u, v, scale_v, shift_v)

    @staticmethod
    def backward(ctx, grad):
        u, scale_u, shift_u, v, scale_v, shift_v = ctx.saved_tensors
        g = grad * (batchnorm_add_reference(u, scale_u, shift_u, v, scale_v, shift_v) > 0)
        dims = (0, 2, 3)
        return (
            (g * scale_u[:, None, None]).to(u.dtype), (g * u).sum(dims), g.sum(dims),
            (g * scale_v[:, None, None]).to(v.dtype), (g * v).sum(dims), g.sum(dims),
        )


def batchnorm_add_relu(u, scale_u, shift_u, v, scale_v, shift_v) -> torch.Tensor:
    r"""The fused block's end: :math:`\mathrm{relu}(u s_u + t_u + v s_v + t_v)` per channel
    (u, v (B, C, H, W); scales and shifts (C,), float32 or float64), in the scales' dtype;
    differentiable in all six, keeping only its inputs for backward."""
    return _BatchNormAddReLU.apply(u, scale_u, shift_u, v, scale_v, shift_v)
