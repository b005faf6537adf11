"""The up-projection block over the ``fastmde::`` ops, and where its path is chosen.

:func:`up_projection` runs ``[conv -> BN -> ReLU ->] up -> {conv1 -> BN -> ReLU -> conv2 -> BN}
+ {shortcut conv -> BN} -> ReLU`` (DESIGN.md §3; spec: ``up_projection_block_reference`` in
``fastmde/reference/up_projection.py``) with the parameters and buffers of the block's own
``nn.Conv2d`` / ``nn.BatchNorm2d`` modules (:class:`UpProjectionLayers`), so
``fastmde.nn.UpProjection`` and blocks adopted by ``fastmde.patch`` run the same code. Two
choices, both taken here from the device and the backend:

* ``stack_convs``: the branch's first conv and the shortcut conv as one ``upsample_conv2d`` over
  their stacked weights (one load of the input for both; the GPU default) or one op each (the
  CPU default: an A/B at the U-Net34 decoder shapes, batch 1 and 8, found it faster on 6 of 8
  and 5% slower on the smallest batch-1 one: each call's band buffers are half the size, and
  its output is contiguous, so at batch > 1 BatchNorm copies no strided half).
* ``fuse_batchnorm``: the block as chained ``upsample_conv2d_bn`` stages: each BatchNorm's
  statistics come from its conv's epilogue and its normalisation + ReLU is applied while the
  next conv loads, so no BatchNorm or ReLU output is written or saved for backward (3 maps of
  the upsampled size kept instead of 5). Default: where the up-projection runs on the Triton
  kernels; elsewhere the plain path (ATen's BatchNorm) is the one measured faster.

Both paths give the same values, gradients and BatchNorm running statistics (momentum, or a
cumulative average with ``momentum=None``) as the plain block.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import _backend
from ..reference.up_projection import batchnorm_affine_reference
from .up_projection import output_size, upsample_conv2d
from .up_projection_bn import batchnorm_add_relu, upsample_conv2d_bn


#: what autocast casts to its own dtype (float64 it leaves alone, so it must match the weights)
AUTOCAST_ELIGIBLE = (torch.float16, torch.bfloat16, torch.float32)


def under_autocast(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device (never for a shape-only meta tensor)."""
    return x.device.type != "meta" and torch.is_autocast_enabled(x.device.type)


def check_block_inputs(x, skip, weight: torch.Tensor, what: str) -> None:
    """One-line errors where ``torch.cat`` or a conv of the block would raise PyTorch's own, or
    where the fused path would cast silently: an input that is not a floating tensor, on another
    device than the block's ``weight``, or of another dtype than ``skip`` / the weights. Under
    autocast float16, bfloat16 and float32 may mix (the convs run in autocast's dtype, as a plain
    block's would); float64 is never cast by autocast, so it must match. ``what`` names the block
    (or the op) in the message."""
    named = (("x", x),) if skip is None else (("x", x), ("skip", skip))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{what}: {name} must be a floating tensor, got {t.dtype}")
        if t.device != weight.device:
            raise ValueError(f"{what}: {name} is on {t.device} but the block's weights are on {weight.device} "
                             f"(move one: block.to({str(t.device)!r}) or {name}.to({str(weight.device)!r}))")
    dtypes = {t.dtype for _, t in named} | {weight.dtype}
    under = under_autocast(x)
    if under and dtypes <= set(AUTOCAST_ELIGIBLE):
        return
    if skip is not None and skip.dtype != x.dtype:
        raise TypeError(f"{what}: skip is {skip.dtype} but x is {x.dtype}: give both the same dtype "
                        f"(the block's weights are {weight.dtype})")
    if x.dtype != weight.dtype:
        raise TypeError(f"{what}: x is {x.dtype} but the block's weights are {weight.dtype}: convert one "
                        f"(block.to({x.dtype}) or x.to({weight.dtype}))"
                        + (" (autocast does not cast float64)" if under else ", or run under torch.autocast"))


class UpProjectionLayers(NamedTuple):
    """The modules of one up-projection block (their weights and buffers are read at each call).

    ``conv1``/``bn1``: the branch's first conv (reads the upsampled input) and BatchNorm;
    ``conv2``/``bn2``: the branch's second conv and BatchNorm; ``shortcut_conv``/``shortcut_bn``:
    the shortcut (reads the upsampled input); ``reduce_conv``/``reduce_bn`` (optional): the
    conv -> BN -> ReLU before the upsample (the paper's 1x1 reduction). Every conv: stride 1,
    padding k // 2, no bias, k odd."""

    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    conv2: nn.Conv2d
    bn2: nn.BatchNorm2d
    shortcut_conv: nn.Conv2d
    shortcut_bn: nn.BatchNorm2d
    reduce_conv: Optional[nn.Conv2d] = None
    reduce_bn: Optional[nn.BatchNorm2d] = None


def up_projection(
    x: torch.Tensor,
    layers: UpProjectionLayers,
    size,
    align_corners: bool,
    *,
    stack_convs: bool | None = None,
    fuse_batchnorm: bool | None = None,
) -> torch.Tensor:
    """The block's output (B, Cout, H, W) for ``x`` (B, Cin, h, w) upsampled to ``size`` = (H, W)
    (bilinear, ``align_corners``); ``stack_convs`` / ``fuse_batchnorm``: None chooses by
    device and backend (see the module docstring). The branch's first conv and the shortcut
    are stacked only when their kernel sizes match.

    ``x`` has the weights' dtype, or runs under ``torch.autocast`` (float16, bfloat16 and
    float32 then mix as in ``fastmde.nn.UpProjection``: ``x`` is cast to autocast's dtype, in
    which the block computes and which it returns, as a plain block under autocast does: its
    convs' rule, the lower-precision dtype; float64 stays). ``size``: two whole numbers of at
    least 1 (a float such as 9.7 is refused, not truncated). Raises TypeError / ValueError in
    one line for ``layers`` that are no :class:`UpProjectionLayers`, for an ``x`` that is not a
    floating (B, Cin, h, w) tensor on the weights' device, or of another dtype outside autocast
    (the fused path would otherwise cast the weights to ``x``'s dtype unasked), and for such a
    ``size``."""
    if not isinstance(layers, UpProjectionLayers):
        raise TypeError(f"up_projection: layers must be an UpProjectionLayers, got {type(layers).__name__}")
    first = layers.conv1 if layers.reduce_conv is None else layers.reduce_conv
    check_block_inputs(x, None, first.weight, "up_projection")
    if x.dim() != 4 or x.shape[1] != first.weight.shape[1]:
        raise ValueError(f"up_projection: x must be (B, {first.weight.shape[1]}, h, w) for the block's first conv, "
                         f"got {tuple(x.shape)}")
    size = output_size(size, "up_projection")
    if under_autocast(x) and x.dtype in AUTOCAST_ELIGIBLE:
        # as in the plain block, whose convs autocast runs in its dtype (a float32 x too): the
        # stages compute in it and the block returns it, on both paths
        x = x.to(torch.get_autocast_dtype(x.device.type))
    stack = stack_convs if stack_convs is not None else x.device.type != "cpu"
    stack = stack and layers.conv1.weight.shape[-1] == layers.shortcut_conv.weight.shape[-1]
    fuse = fuse_batchnorm
    if fuse is None:
        fuse = _triton_serves(x.device.type)
    if fuse:
        return _fused(x, layers, size, align_corners, stack)
    return _plain(x, layers, size, align_corners, stack)


@torch.compiler.assume_constant_result
def _triton_serves(device_type: str) -> bool:
    """Whether the Triton kernels serve the up-projection on ``device_type``: a constant while a
    graph is traced (the first call may load the C++ extension, which tracing cannot follow)."""
    return _backend.choose("up_projection", device_type) == "triton"


def _plain(x, layers: UpProjectionLayers, size, align_corners, stack):
    """ATen's conv and BatchNorm around the ``upsample_conv2d`` op(s)."""
    if layers.reduce_conv is not None:
        x = F.relu(layers.reduce_bn(layers.reduce_conv(x)))
    if stack:
        weight = torch.cat((layers.conv1.weight, layers.shortcut_conv.weight), dim=0)
        both = upsample_conv2d(x, weight.to(x.dtype), size, align_corners)
        branch, shortcut = both.split([layers.conv1.weight.shape[0], layers.shortcut_conv.weight.shape[0]], dim=1)
    else:
        branch = upsample_conv2d(x, layers.conv1.weight.to(x.dtype), size, align_corners)
        shortcut = upsample_conv2d(x, layers.shortcut_conv.weight.to(x.dtype), size, align_corners)
    branch = layers.bn2(layers.conv2(F.relu(layers.bn1(branch))))
    return F.relu(branch + layers.shortcut_bn(shortcut))


def _fused(x, layers: UpProjectionLayers, size, align_corners, stack):
    """Chained ``upsample_conv2d_bn`` stages: each reads its predecessor's raw conv output and
    that BatchNorm's (scale, shift)."""
    dtype, ac = x.dtype, align_corners
    scale = shift = None
    if layers.reduce_conv is not None:
        x, mean, var = upsample_conv2d_bn(x, None, None, layers.reduce_conv.weight.to(dtype), list(x.shape[-2:]), ac)
        scale, shift = batchnorm_affine_reference(layers.reduce_bn, mean, var, x.shape)
    if stack:
        c = layers.conv1.weight.shape[0]
        weight = torch.cat((layers.conv1.weight, layers.shortcut_conv.weight), dim=0).to(dtype)
        both, mean, var = upsample_conv2d_bn(x, scale, shift, weight, size, ac)
        branch, shortcut = both.split([c, both.shape[1] - c], dim=1)
        stats1, stats_s = (mean[:c], var[:c]), (mean[c:], var[c:])
    else:
        branch, *stats1 = upsample_conv2d_bn(x, scale, shift, layers.conv1.weight.to(dtype), size, ac)
        shortcut, *stats_s = upsample_conv2d_bn(x, scale, shift, layers.shortcut_conv.weight.to(dtype), size, ac)
    scale1, shift1 = batchnorm_affine_reference(layers.bn1, *stats1, branch.shape)
    scale_s, shift_s = batchnorm_affine_reference(layers.shortcut_bn, *stats_s, shortcut.shape)
    branch, mean2, var2 = upsample_conv2d_bn(branch, scale1, shift1, layers.conv2.weight.to(dtype), size, ac)
    scale2, shift2 = batchnorm_affine_reference(layers.bn2, mean2, var2, branch.shape)
    return batchnorm_add_relu(branch, scale2, shift2, shortcut, scale_s, shift_s).to(dtype)
