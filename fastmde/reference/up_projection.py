r"""Reference up-projection hot path: bilinear upsample followed by a k x k convolution.

:math:`\mathrm{out} = \mathrm{conv}_{k\times k}(\mathrm{up}(x), W)`, where ``up`` is bilinear
interpolation of ``x`` (B, Cin, h, w) to ``size`` = (H, W) (``align_corners`` either way), the
convolution has stride 1, padding k // 2, no bias and weight W (Cout, Cin, k, k), k odd.

This is the part of the up-projection block that the kernels fuse: the upsampled tensor
(4x the input for scale 2) need not exist in memory, and the block's two k x k convolutions
that read it (the first branch conv and the shortcut) can run as one with their weights
stacked (the block does so on GPUs; on CPUs one op per conv measured faster).
BatchNorm and ReLU stay in :class:`fastmde.nn.UpProjection`.

Backward: :math:`\partial x = \mathrm{up}^T(\mathrm{conv}^T(\partial \mathrm{out}, W))`,
:math:`\partial W = \mathrm{corr}(\mathrm{up}(x), \partial \mathrm{out})`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_conv2d_reference(
    x: torch.Tensor, weight: torch.Tensor, size: tuple[int, int], align_corners: bool
) -> torch.Tensor:
    """Differentiable plain-PyTorch form (the oracle of the tests)."""
    up = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
    return F.conv2d(up, weight, padding=weight.shape[-1] // 2)


def upsample_conv2d_forward_reference(
    x: torch.Tensor, weight: torch.Tensor, size: tuple[int, int], align_corners: bool
) -> torch.Tensor:
    with torch.no_grad():
        return upsample_conv2d_reference(x, weight, size, align_corners)


def upsample_conv2d_backward_reference(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    size: tuple[int, int],
    align_corners: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight) from explicit backward ops (usable inside a custom op)."""
    with torch.no_grad():
        pad = weight.shape[-1] // 2
        up = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
        grad_up, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out, up, weight, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
            [True, True, False],
        )
        grad_x = torch.ops.aten.upsample_bilinear2d_backward(
            grad_up, list(size), list(x.shape), align_corners
        )
        return grad_x, grad_w


def activate_reference(x: torch.Tensor, in_scale, in_shift) -> torch.Tensor:
    """relu(x * in_scale + in_shift) per channel (computed in the scale's dtype, returned in x's),
    or x itself when no scale is given: the previous BatchNorm and ReLU of a fused stage."""
    if in_scale is None:
        return x
    return F.relu(x.to(in_scale.dtype) * in_scale[:, None, None] + in_shift[:, None, None]).to(x.dtype)


def upsample_conv2d_bn_reference(x, in_scale, in_shift, weight, size, align_corners):
    r"""Differentiable plain form of ``fastmde::upsample_conv2d_bn``: a stage of the block with
    its BatchNorms folded in.

    :math:`a = \mathrm{relu}(x \cdot s_c + t_c)` (or :math:`a = x` without ``in_scale``),
    :math:`\mathrm{out} = \mathrm{conv}_{k\times k}(\mathrm{up}(a))` (no upsample when
    ``size`` is x's size), and per output channel c the batch statistics the next BatchNorm
    needs: :math:`\mu_c = \mathrm{mean}_{b,y,x}\,\mathrm{out}`,
    :math:`\sigma^2_c = \mathrm{mean}_{b,y,x}(\mathrm{out} - \mu_c)^2` (biased), in float32
    (float64 for float64 input). Returns (out, mean, var)."""
    a = activate_reference(x, in_scale, in_shift)
    if tuple(size) != tuple(a.shape[-2:]):
        a = F.interpolate(a, size=tuple(size), mode="bilinear", align_corners=align_corners)
    out = F.conv2d(a, weight, padding=weight.shape[-1] // 2)
    stats_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    var, mean = torch.var_mean(out.to(stats_dtype), dim=(0, 2, 3), unbiased=False)
    return out, mean, var


def up_projection_block_reference(block, x: torch.Tensor, skip=None, size=None) -> torch.Tensor:
    """``fastmde.nn.UpProjection``'s forward written the plain way (upsampled tensor
    materialised, branch and shortcut convs separate), with ``block``'s parameters."""
    if skip is not None:
        if skip.shape[-2:] != x.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=block.align_corners)
        x = torch.cat((x, skip), dim=1)
    if size is None:
        size = (int(x.shape[-2] * block.scale), int(x.shape[-1] * block.scale))
    if block.reduce:
        x = F.relu(block.reduce_bn(block.reduce_conv(x)))
    up = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=block.align_corners)
    branch = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(up)))))
    return F.relu(branch + block.shortcut_bn(block.shortcut_conv(up)))
