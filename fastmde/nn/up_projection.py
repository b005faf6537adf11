"""``UpProjection``: the paper's up-projection block and Hu et al.'s original, over the fused op."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _backend
from ..ops.up_projection import upsample_conv2d_op
from ..ops.up_projection_bn import upsample_conv2d_bn_op


def _conv_bn(cin: int, cout: int, k: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)


class UpProjection(nn.Module):
    """Up-projection block; ``forward(x, skip=None, size=None)``.

    The paper's block (``reduce=True``)::

        x [, cat skip] -> 1x1 conv (Cin->Cout) -> BN -> ReLU -> bilinear upsample
          -> {k x k conv -> BN -> ReLU -> k x k conv -> BN} + {k x k conv -> BN} -> ReLU

    Hu et al.'s original (``reduce=False``, use ``kernel_size=5``): upsample first, then
    5x5 conv -> BN -> ReLU -> 3x3 conv -> BN, plus a 5x5 conv -> BN shortcut, sum, ReLU.

    Args:
        in_channels: channels entering the block (after concatenating ``skip``).
        out_channels: channels leaving it.
        kernel_size: k of the first branch conv and the shortcut conv (odd).
        reduce: the paper's 1x1 channel reduction before the upsample.
        scale: upsampling factor when no ``size`` is given to ``forward``.
        align_corners: of the bilinear upsample (the paper's code uses True).
        second_kernel_size: k of the branch's second conv; defaults to ``kernel_size`` with
            ``reduce`` and to 3 without (Hu et al.'s 5x5/3x3/5x5).
        stack_convs: run the branch's first conv and the shortcut conv as one op over their
            stacked weights (True) or as one op each (False); None (default) stacks them on
            GPUs and not on CPUs, the faster choice measured on each.
        fuse_batchnorm: run the block as chained ``fastmde::upsample_conv2d_bn`` stages: each
            BatchNorm's statistics come from its conv's epilogue and its normalisation + ReLU
            is applied while the next conv loads, so no BatchNorm or ReLU output is written
            or saved for backward. None (default): where the up-projection runs on the
            Triton kernels (GPUs); False elsewhere (on CPUs the C++ path with ATen's
            BatchNorm is the one measured). Same values, gradients and running statistics
            as the unfused block (momentum, or a cumulative average with ``momentum=None``).

    ``forward(x, skip=None, size=None)``: ``skip`` (same batch) is concatenated to ``x`` on the
    channels, ``x`` first resized bilinearly to ``skip``'s size if they differ (so inputs need
    not be divisible by 32); ``size`` = (H, W) overrides ``scale``.

    The upsample and each k x k conv that reads it (branch and shortcut) are a
    ``fastmde::upsample_conv2d`` op, so fast backends never write the upsampled tensor; on
    GPUs the two convs run as one op with their weights stacked.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        reduce: bool = True,
        scale: float = 2,
        align_corners: bool = True,
        second_kernel_size: int | None = None,
        stack_convs: bool | None = None,
        fuse_batchnorm: bool | None = None,
    ):
        super().__init__()
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if second_kernel_size is None:
            second_kernel_size = kernel_size if reduce else 3
        if second_kernel_size % 2 != 1:
            raise ValueError(f"second_kernel_size must be odd, got {second_kernel_size}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.second_kernel_size = kernel_size, second_kernel_size
        self.reduce, self.scale, self.align_corners = reduce, scale, align_corners
        self.stack_convs = stack_convs
        self.fuse_batchnorm = fuse_batchnorm
        mid = out_channels if reduce else in_channels
        if reduce:
            self.reduce_conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
            self.reduce_bn = nn.BatchNorm2d(out_channels)
        self.conv1, self.bn1 = _conv_bn(mid, out_channels, kernel_size)
        self.conv2, self.bn2 = _conv_bn(out_channels, out_channels, second_kernel_size)
        self.shortcut_conv, self.shortcut_bn = _conv_bn(mid, out_channels, kernel_size)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if skip is not None:
            if skip.shape[-2:] != x.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=self.align_corners)
            x = torch.cat((x, skip), dim=1)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UpProjection expects (B, {self.in_channels}, H, W) after concatenation, "
                f"got {tuple(x.shape)}"
            )
        if size is None:
            size = (int(x.shape[-2] * self.scale), int(x.shape[-1] * self.scale))
        size = [int(size[0]), int(size[1])]
        stack = self.stack_convs if self.stack_convs is not None else x.device.type != "cpu"
        fuse = self.fuse_batchnorm
        if fuse is None:
            fuse = _backend.choose("up_projection", x.device.type) == "triton"
        if fuse:
            return self._fused_forward(x, size, stack)
        if self.reduce:
            x = F.relu(self.reduce_bn(self.reduce_conv(x)))
        if not stack:
            # One op per conv (the CPU default): an A/B at the U-Net34 decoder shapes, batch 1
            # and 8, found it faster than the stacked op on 6 of 8 and 5% slower on the
            # smallest batch-1 one: each call's band buffers are half the size, and its output
            # is contiguous, so at batch > 1 BatchNorm copies no strided half.
            branch = upsample_conv2d_op(x, self.conv1.weight.to(x.dtype), size, self.align_corners)
            shortcut = upsample_conv2d_op(x, self.shortcut_conv.weight.to(x.dtype), size, self.align_corners)
        else:
            # (the GPU default) one kernel computes both convs from one load of the input.
            weight = torch.cat((self.conv1.weight, self.shortcut_conv.weight), dim=0)
            both = upsample_conv2d_op(x, weight.to(x.dtype), size, self.align_corners)
            branch, shortcut = both.split(self.out_channels, dim=1)
        branch = self.bn2(self.conv2(F.relu(self.bn1(branch))))
        return F.relu(branch + self.shortcut_bn(shortcut))

    def _fused_forward(self, x: torch.Tensor, size: list[int], stack: bool) -> torch.Tensor:
        """The block as chained upsample_conv2d_bn stages (``fuse_batchnorm``); each stage reads
        its predecessor's raw conv output and that BatchNorm's (scale, shift)."""
        dtype, ac = x.dtype, self.align_corners
        scale = shift = None
        if self.reduce:
            x, mean, var = upsample_conv2d_bn_op(x, None, None, self.reduce_conv.weight.to(dtype),
                                                 list(x.shape[-2:]), ac)
            scale, shift = _batchnorm_affine(self.reduce_bn, mean, var, x)
        c = self.out_channels
        if stack:
            weight = torch.cat((self.conv1.weight, self.shortcut_conv.weight), dim=0).to(dtype)
            both, mean, var = upsample_conv2d_bn_op(x, scale, shift, weight, size, ac)
            branch, shortcut = both.split(c, dim=1)
            stats1, stats_s = (mean[:c], var[:c]), (mean[c:], var[c:])
        else:
            branch, *stats1 = upsample_conv2d_bn_op(x, scale, shift, self.conv1.weight.to(dtype), size, ac)
            shortcut, *stats_s = upsample_conv2d_bn_op(x, scale, shift, self.shortcut_conv.weight.to(dtype), size, ac)
        scale1, shift1 = _batchnorm_affine(self.bn1, *stats1, branch)
        scale_s, shift_s = _batchnorm_affine(self.shortcut_bn, *stats_s, shortcut)
        branch, mean2, var2 = upsample_conv2d_bn_op(branch, scale1, shift1, self.conv2.weight.to(dtype), size, ac)
        scale2, shift2 = _batchnorm_affine(self.bn2, mean2, var2, branch)
        return _BatchNormAddReLU.apply(branch, scale2, shift2, shortcut, scale_s, shift_s).to(dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"second_kernel_size={self.second_kernel_size}, reduce={self.reduce}, "
            f"scale={self.scale}, align_corners={self.align_corners}"
        )


def _batchnorm_affine(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, out: torch.Tensor):
    r"""(scale, shift) with bn(out) = out * scale + shift per channel, as ``nn.BatchNorm2d`` in
    its current mode: batch statistics ``mean``, ``var`` (biased) in training (or without running
    statistics), which also update the running ones as BatchNorm does (unbiased variance
    :math:`\sigma^2 N/(N-1)`, ``momentum`` or, when None, a cumulative average); running
    statistics in eval. :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}`, :math:`t = \beta - \mu s`."""
    use_batch = bn.training or bn.running_mean is None
    if use_batch:
        n = out.numel() // out.shape[1]
        if bn.training and n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(out.shape)}")
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), momentum)
                bn.running_var.lerp_((var.detach() * (n / (n - 1))).to(bn.running_var.dtype), momentum)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


class _BatchNormAddReLU(torch.autograd.Function):
    r"""The block's end: :math:`y = \mathrm{relu}(u s_u + t_u + v s_v + t_v)` per channel (the two
    BatchNorms as affines, the sum, the ReLU), saving only its inputs: the ReLU's mask is
    recomputed in backward from u and v, which the stages keep anyway, instead of keeping y."""

    @staticmethod
    def forward(ctx, u, scale_u, shift_u, v, scale_v, shift_v):
        ctx.save_for_backward(u, scale_u, shift_u, v, scale_v, shift_v)
        return F.relu(_pre_activation(u, scale_u, shift_u, v, scale_v, shift_v))

    @staticmethod
    def backward(ctx, grad):
        u, scale_u, shift_u, v, scale_v, shift_v = ctx.saved_tensors
        g = grad * (_pre_activation(u, scale_u, shift_u, v, scale_v, shift_v) > 0)
        dims = (0, 2, 3)
        return (
            (g * scale_u[:, None, None]).to(u.dtype), (g * u).sum(dims), g.sum(dims),
            (g * scale_v[:, None, None]).to(v.dtype), (g * v).sum(dims), g.sum(dims),
        )


def _pre_activation(u, scale_u, shift_u, v, scale_v, shift_v):
    return (u * scale_u[:, None, None] + shift_u[:, None, None]) + (v * scale_v[:, None, None] + shift_v[:, None, None])
