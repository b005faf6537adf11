r"""Reference up-projection hot path: the whole spec of the block, in plain PyTorch.

**The fused conv.** :math:`\mathrm{out} = \mathrm{conv}_{k\times k}(\mathrm{up}(x), W)`, where
``up`` is bilinear interpolation of ``x`` (B, Cin, h, w) to ``size`` = (H, W) (``align_corners``
either way), the convolution has stride 1, padding k // 2, no bias and weight W
(Cout, Cin, k, k), k odd. This is the part of the up-projection block that the kernels fuse:
the upsampled tensor (4x the input for scale 2) need not exist in memory, and the block's two
k x k convolutions that read it (the first branch conv and the shortcut) can run as one with
their weights stacked. Backward: :math:`\partial x = \mathrm{up}^T(\mathrm{conv}^T(\partial
\mathrm{out}, W))`, :math:`\partial W = \mathrm{corr}(\mathrm{up}(x), \partial \mathrm{out})`.

**The BatchNorm-folded stages** (``fastmde::upsample_conv2d_bn``). A BatchNorm in a given mode
is a per-channel affine :math:`y = v s_c + t_c`
(:func:`batchnorm_affine_reference`), so the block is a chain of stages, each
:math:`a = \mathrm{relu}(x s + t)` (the previous BatchNorm and ReLU, :func:`activate_reference`),
:math:`\mathrm{out} = \mathrm{conv}(\mathrm{up}(a))` and the batch statistics of ``out`` the
next BatchNorm needs (:func:`batch_statistics_reference`), ending in
:math:`\mathrm{relu}(u s_u + t_u + v s_v + t_v)` (:func:`batchnorm_add_relu_reference`: the
branch's and the shortcut's BatchNorms, the sum, the ReLU).

**The block** (:func:`up_projection_block_reference`): the paper's
``x [, cat skip] -> 1x1 conv -> BN -> ReLU -> up -> {conv -> BN -> ReLU -> conv -> BN} +
{conv -> BN} -> ReLU`` (DESIGN.md §3), or Hu et al.'s without the 1x1.

The ``*_forward_reference`` / ``*_backward_reference`` functions are the no-grad forms the
custom ops run where no kernel serves them; the others are differentiable (the tests' oracle).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .._checks import compute_dtype

# ------------------------------------------------------------------ upsample + k x k conv


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


# ------------------------------------------------------------------ BatchNorm-folded stages


def affine_reference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x * scale + shift per channel (dim 1), computed in the scale's dtype (float32, or float64)."""
    return x.to(scale.dtype) * scale[:, None, None] + shift[:, None, None]


def activate_reference(x: torch.Tensor, in_scale, in_shift) -> torch.Tensor:
    """relu(x * in_scale + in_shift) per channel (computed in the scale's dtype, returned in x's),
    or x itself when no scale is given: the previous BatchNorm and ReLU of a fused stage."""
    if in_scale is None:
        return x
    return F.relu(affine_reference(x, in_scale, in_shift)).to(x.dtype)


def batch_statistics_reference(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-channel batch mean and biased variance of ``out`` (B, C, H, W):
    :math:`\mu_c = \mathrm{mean}_{b,y,x}\,\mathrm{out}`,
    :math:`\sigma^2_c = \mathrm{mean}_{b,y,x}(\mathrm{out} - \mu_c)^2`, in float32 (float64 for
    float64 input). Returns (mean, var)."""
    var, mean = torch.var_mean(out.to(compute_dtype(out.dtype)), dim=(0, 2, 3), unbiased=False)
    return mean, var


def _same_size(x: torch.Tensor, size) -> bool:
    return tuple(x.shape[-2:]) == (int(size[0]), int(size[1]))


def upsample_conv2d_bn_reference(x, in_scale, in_shift, weight, size, align_corners):
    r"""Differentiable plain form of ``fastmde::upsample_conv2d_bn``: a stage of the block with
    its BatchNorms folded in.

    :math:`a = \mathrm{relu}(x \cdot s_c + t_c)` (or :math:`a = x` without ``in_scale``),
    :math:`\mathrm{out} = \mathrm{conv}_{k\times k}(\mathrm{up}(a))` (no upsample when
    ``size`` is x's size), and per output channel c the batch statistics the next BatchNorm
    needs (:func:`batch_statistics_reference`). Returns (out, mean, var)."""
    a = activate_reference(x, in_scale, in_shift)
    if not _same_size(a, size):
        a = F.interpolate(a, size=tuple(size), mode="bilinear", align_corners=align_corners)
    out = F.conv2d(a, weight, padding=weight.shape[-1] // 2)
    return (out, *batch_statistics_reference(out))


def upsample_conv2d_bn_forward_reference(
    x, in_scale, in_shift, weight, size, align_corners,
    upsample_conv2d_forward: Callable = upsample_conv2d_forward_reference,
):
    """No-grad :func:`upsample_conv2d_bn_reference` with the upsampling conv served by
    ``upsample_conv2d_forward`` (an implementation of ``fastmde::upsample_conv2d``: this
    reference, or the C++ kernel); at equal sizes the conv is ``F.conv2d``."""
    with torch.no_grad():
        a = activate_reference(x, in_scale, in_shift)
        if _same_size(a, size):
            out = F.conv2d(a, weight, padding=weight.shape[-1] // 2)
        else:
            out = upsample_conv2d_forward(a, weight, list(size), align_corners)
        return (out, *batch_statistics_reference(out))


def upsample_conv2d_bn_backward_reference(
    grad_out, x, in_scale, in_shift, weight, size, align_corners,
    upsample_conv2d_backward: Callable = upsample_conv2d_backward_reference,
):
    """(grad_a, grad_weight) of the stage's ``out`` for its total gradient ``grad_out``: the
    gradient with respect to the activated input a (recomputed from x), and the weight's;
    ``upsample_conv2d_backward`` serves the upsampling conv as in the forward."""
    with torch.no_grad():
        a = activate_reference(x, in_scale, in_shift)
        grad_out = grad_out.to(a.dtype)
        if _same_size(a, size):
            pad = weight.shape[-1] // 2
            grad_a, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_out, a, weight, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                [True, True, False])
            return grad_a, grad_w
        return upsample_conv2d_backward(grad_out, a, weight, list(size), align_corners)


def batchnorm_affine_reference(bn, mean: torch.Tensor, var: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(scale, shift) with bn(out) = out * scale + shift per channel, as ``nn.BatchNorm2d``
    ``bn`` computes in its current mode, from the batch statistics ``mean``, ``var`` (biased)
    of the conv output of ``shape`` (a ``torch.Size`` (B, C, H, W)): N = B*H*W values per channel.

    Batch statistics are used in training (or without running statistics), and then also
    update the running ones exactly as BatchNorm does (in place, without gradient): unbiased
    variance :math:`\sigma^2 N/(N-1)`, ``momentum`` or, when None, a cumulative average over
    ``num_batches_tracked``; the running statistics in eval.
    :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}`, :math:`t = \beta - \mu s` (no
    :math:`\gamma, \beta` without ``affine``). Raises ValueError for a training batch of one
    value per channel (BatchNorm's own error)."""
    count = shape.numel() // max(shape[1], 1)
    if bn.training or bn.running_mean is None:
        if bn.training and count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(shape)}")
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), momentum)
                bn.running_var.lerp_((var.detach() * (count / (count - 1))).to(bn.running_var.dtype), momentum)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def batchnorm_add_reference(u, scale_u, shift_u, v, scale_v, shift_v) -> torch.Tensor:
    """u * scale_u + shift_u + v * scale_v + shift_v per channel: the block's two last
    BatchNorms (branch and shortcut) and their sum, before the ReLU (in the promoted dtype)."""
    return (u * scale_u[:, None, None] + shift_u[:, None, None]) + (v * scale_v[:, None, None] + shift_v[:, None, None])


def batchnorm_add_relu_reference(u, scale_u, shift_u, v, scale_v, shift_v) -> torch.Tensor:
    r"""The block's end, :math:`y = \mathrm{relu}(u s_u + t_u + v s_v + t_v)` per channel, in
    the promoted dtype (the scales': float32, or float64)."""
    return F.relu(batchnorm_add_reference(u, scale_u, shift_u, v, scale_v, shift_v))


# ------------------------------------------------------------------ the block


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
