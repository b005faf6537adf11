"""``fastmde::upsample_conv2d``: bilinear upsample + k x k conv without the upsampled tensor.

Schema: ``upsample_conv2d(x, weight, size[2], align_corners) -> out`` with x (B, Cin, h, w),
weight (Cout, Cin, k, k), out (B, Cout, H, W); backward is the op
``upsample_conv2d_backward(grad_out, x, weight, size, align_corners) -> (grad_x, grad_weight)``.
Outputs keep the memory format of ``x`` (channels_last in, channels_last out).

Implementations: ``fastmde/reference/up_projection.py`` (spec), ``csrc/up_projection.cpp``
(``_C.upsample_conv2d_forward`` / ``_backward``), ``kernels/up_projection.py`` (same names);
all take the op's arguments in order. The block built on it is
``fastmde/ops/up_projection_block.py``; the BatchNorm-folded stages are
``fastmde/ops/up_projection_bn.py``.
"""
from __future__ import annotations

import torch

from .._checks import memory_format_of
from ..reference.up_projection import (
    upsample_conv2d_backward_reference,
    upsample_conv2d_forward_reference,
)
from ._dispatch import implementation, no_autocast, with_eager_path


def upsample_conv2d_kernels(device: torch.device, x: torch.Tensor | None = None):
    """(forward, backward) functions serving ``fastmde::upsample_conv2d`` on ``device`` (for the
    dtype and layout of ``x``: see ``_backend.choose``): the chosen implementation's (C++ on
    CPUs, Triton on GPUs) or the reference's."""
    _, module = implementation("up_projection", device, x)
    if module is None:
        return upsample_conv2d_forward_reference, upsample_conv2d_backward_reference
    return module.upsample_conv2d_forward, module.upsample_conv2d_backward


def _upsample_conv2d(
    x: torch.Tensor, weight: torch.Tensor, size: list[int], align_corners: bool
) -> torch.Tensor:
    forward, _ = upsample_conv2d_kernels(x.device, x)
    with no_autocast(x.device):
        out = forward(x, weight, list(size), align_corners)
    return out.contiguous(memory_format=memory_format_of(x))


upsample_conv2d_op = torch.library.custom_op("fastmde::upsample_conv2d", mutates_args=())(_upsample_conv2d)


@upsample_conv2d_op.register_fake
def _(x, weight, size, align_corners):
    out = x.new_empty((x.shape[0], weight.shape[0], size[0], size[1]))
    return out.contiguous(memory_format=memory_format_of(x))


def _upsample_conv2d_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    size: list[int],
    align_corners: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _, backward = upsample_conv2d_kernels(x.device, x)
    with no_autocast(x.device):
        grad_x, grad_w = backward(grad_out, x, weight, list(size), align_corners)
    return grad_x.contiguous(memory_format=memory_format_of(x)), grad_w.contiguous()


upsample_conv2d_backward_op = torch.library.custom_op(
    "fastmde::upsample_conv2d_backward", mutates_args=())(_upsample_conv2d_backward)
upsample_conv2d_backward = with_eager_path(upsample_conv2d_backward_op, _upsample_conv2d_backward)


@upsample_conv2d_backward_op.register_fake
def _(grad_out, x, weight, size, align_corners):
    return torch.empty_like(x, memory_format=memory_format_of(x)), torch.empty_like(
        weight, memory_format=torch.contiguous_format
    )


def _setup_context(ctx, inputs, output):
    x, weight, size, align_corners = inputs
    ctx.save_for_backward(x, weight)
    ctx.size = size
    ctx.align_corners = align_corners


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    grad_x, grad_w = upsample_conv2d_backward(
        grad_out, x, weight, ctx.size, ctx.align_corners
    )
    return grad_x, grad_w, None, None


upsample_conv2d_op.register_autograd(_backward, setup_context=_setup_context)
# what callers use: the op, or the same implementation called directly in plain eager mode
upsample_conv2d = with_eager_path(upsample_conv2d_op, _upsample_conv2d, _backward, _setup_context)
