"""``fastmde::upsample_conv2d``: bilinear upsample + k x k conv without the upsampled tensor.

Schema: ``upsample_conv2d(x, weight, size[2], align_corners) -> out`` with x (B, Cin, h, w),
weight (Cout, Cin, k, k), out (B, Cout, H, W); backward is the op
``upsample_conv2d_backward(grad_out, x, weight, size, align_corners) -> (grad_x, grad_weight)``.
Outputs keep the memory format of ``x`` (channels_last in, channels_last out). ``size`` is
two whole numbers of at least 1 (:func:`output_size`; a float such as 9.7 is refused, as
``F.interpolate`` refuses it, not truncated).

Implementations: ``fastmde/reference/up_projection.py`` (spec), ``csrc/up_projection.cpp``
(``_C.upsample_conv2d_forward`` / ``_backward``), ``kernels/up_projection.py`` (same names);
all take the op's arguments in order. The block built on it is
``fastmde/ops/up_projection_block.py``; the BatchNorm-folded stages are
``fastmde/ops/up_projection_bn.py``.
"""
from __future__ import annotations

import math

import torch

from .._checks import brief_repr, memory_format_of, whole_number
from ..reference.up_projection import (
    upsample_conv2d_backward_reference,
    upsample_conv2d_forward_reference,
)
from ._dispatch import implementation, no_autocast, with_eager_path


def output_size(size, what: str) -> list:
    """``size`` = (H, W) as a list of two ints for the ops: each side a whole number of at least 1
    (``whole_number``: ints, numpy's, whole floats such as 9.0; never bools). Under
    ``torch.compile`` a side may be a ``SymInt`` (``dynamic=True``): kept as it is, the graph
    checks it. Raises ValueError in one line naming ``what`` (9.7 rows would be truncated to 9
    by the kernels; ``F.interpolate`` refuses a float size too)."""
    if isinstance(size, (tuple, list, torch.Size)) and len(size) == 2:
        # an int is taken as it is: under torch.compile a symbolic side also reads as an int, and
        # whole_number's operator.index would specialise the graph to its value
        sides = [s if isinstance(s, (int, torch.SymInt)) and not isinstance(s, bool) else whole_number(s)
                 for s in size]
        if all(s is not None and s >= 1 for s in sides):
            return sides
    shown = tuple(size) if isinstance(size, (list, torch.Size)) else size
    fractional = isinstance(size, (tuple, list)) and any(
        isinstance(s, float) and math.isfinite(s) and not s.is_integer() for s in size)
    # brief_repr: a 2-D array's or tensor's repr has several lines
    raise ValueError(f"{what}: size must be (H, W), two whole numbers of at least 1, got {brief_repr(shown)}"
                     + (" (round a computed size yourself: it is not truncated)" if fractional else ""))


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
# the op, or the same implementation called directly in plain eager mode
_upsample_conv2d_call = with_eager_path(upsample_conv2d_op, _upsample_conv2d, _backward, _setup_context)


def upsample_conv2d(x: torch.Tensor, weight: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    """What callers use: ``fastmde::upsample_conv2d(x, weight, size, align_corners)`` (the
    registered op, or its implementation called directly in plain eager mode), ``size`` checked
    by :func:`output_size` first."""
    return _upsample_conv2d_call(x, weight, output_size(size, "upsample_conv2d"), align_corners)
