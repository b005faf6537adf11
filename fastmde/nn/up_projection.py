"""``UpProjection``: the paper's up-projection block and Hu et al.'s original, over the fused op."""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import bool_argument, integer_argument
from ..ops.up_projection import output_size
from ..ops.up_projection_block import (
    AUTOCAST_ELIGIBLE as _AUTOCAST_ELIGIBLE,
    UpProjectionLayers,
    check_block_inputs,
    under_autocast as _under_autocast,
    up_projection,
)
from .banded_conv import BandedConv2d

# check_block_inputs lives beside the op (fastmde.ops.up_projection refuses the same inputs); it
# is imported here for fastmde.patch and the models


def check_model_input(x, weight: torch.Tensor, what: str) -> None:
    """One-line errors for a model's input image where its first convolution would raise
    PyTorch's own ("expected scalar type Long but found Float"): not a floating tensor, on another
    device than ``weight``, or of another dtype outside autocast (autocast's float16, bfloat16 and
    float32 may mix; float64 must match). ``what`` names the model in the message."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: the image must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what}: expected a float image in 0-255, got {x.dtype} (convert it with .float())")
    if x.device != weight.device:
        raise ValueError(f"{what}: the image is on {x.device} but the model's weights are on {weight.device} "
                         f"(move one: model.to({str(x.device)!r}) or image.to({str(weight.device)!r}))")
    under = _under_autocast(x)
    if x.dtype == weight.dtype or (under and {x.dtype, weight.dtype} <= set(_AUTOCAST_ELIGIBLE)):
        return
    raise TypeError(f"{what}: the image is {x.dtype} but the model's weights are {weight.dtype}: convert one "
                    f"(model.to({x.dtype}) or image.to({weight.dtype}))"
                    + (" (autocast does not cast float64)" if under else ", or run under torch.autocast"))


def _conv_bn(cin: int, cout: int, k: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    # BandedConv2d: conv2 runs as a module at the block's output size (full resolution for the
    # last block), where its CPU weight gradient may be faster over row bands
    return BandedConv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)


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
    not be divisible by 32); ``size`` = (H, W), two whole numbers, overrides ``scale``
    (ValueError for 9.7 or 0). Under ``torch.autocast`` the block computes in and returns
    autocast's dtype (a float32 ``x`` too), as the plain block would (its convs' rule).

    The block runs :func:`fastmde.ops.up_projection_block.up_projection` over its own modules:
    the upsample and each k x k conv that reads it (branch and shortcut) are a
    ``fastmde::upsample_conv2d`` op, so fast backends never write the upsampled tensor.
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
        # ints (numpy's too), never bools or floats: UpProjection(True, 4) is no block of 1 channel
        in_channels = integer_argument(in_channels, "UpProjection: in_channels", minimum=1)
        out_channels = integer_argument(out_channels, "UpProjection: out_channels", minimum=1)
        reduce = bool_argument(reduce, "UpProjection: reduce")
        align_corners = bool_argument(align_corners, "UpProjection: align_corners")
        stack_convs = bool_argument(stack_convs, "UpProjection: stack_convs", allow_none=True)
        fuse_batchnorm = bool_argument(fuse_batchnorm, "UpProjection: fuse_batchnorm", allow_none=True)
        kernel_size = integer_argument(kernel_size, "UpProjection: kernel_size", minimum=1, odd=True)
        if second_kernel_size is None:
            second_kernel_size = kernel_size if reduce else 3
        second_kernel_size = integer_argument(second_kernel_size, "UpProjection: second_kernel_size",
                                              minimum=1, odd=True)
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"UpProjection: scale must be a number, got {scale!r} ({type(scale).__name__})")
        if not (0 < scale and math.isfinite(scale)):
            raise ValueError(f"UpProjection: scale must be positive and finite, got {scale}")
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

    def layers(self) -> UpProjectionLayers:
        """The block's modules in the order the ops take them."""
        return UpProjectionLayers(
            self.conv1, self.bn1, self.conv2, self.bn2, self.shortcut_conv, self.shortcut_bn,
            self.reduce_conv if self.reduce else None, self.reduce_bn if self.reduce else None,
        )

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        check_block_inputs(x, skip, self.conv1.weight, "UpProjection")
        if x.dim() != 4:
            raise ValueError(f"UpProjection: x must be (B, C, H, W), got {tuple(x.shape)}")
        if skip is not None:
            if skip.dim() != 4 or skip.shape[0] != x.shape[0]:
                raise ValueError(f"UpProjection: skip {tuple(skip.shape)} must be (B, C, H, W) with x's batch "
                                 f"size, x is {tuple(x.shape)}")
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
        else:
            size = output_size(size, "UpProjection")   # 9.7 is refused, not truncated
        return up_projection(x, self.layers(), size, self.align_corners,
                             stack_convs=self.stack_convs, fuse_batchnorm=self.fuse_batchnorm)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"second_kernel_size={self.second_kernel_size}, reduce={self.reduce}, "
            f"scale={self.scale}, align_corners={self.align_corners}"
        )

