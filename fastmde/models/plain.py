"""A standard-operator copy of a depth model, for export (ONNX, ``torch.export``).

fastmde's up-projection blocks run through ``fastmde::`` custom ops, which neither an ONNX
runtime nor a PyTorch install without fastmde knows. :func:`plain_copy` returns an inference
copy of a model (CPU, float32, eval mode) in which

* every :class:`~fastmde.nn.UpProjection` is a :class:`FoldedUpProjection`: the block's
  reference composition (``up_projection_block_reference`` in
  ``fastmde/reference/up_projection.py``: bilinear upsample, then ``F.conv2d``) with each
  BatchNorm folded into the conv before it (eval mode: ``bn(conv(x)) = conv'(x)`` with
  :math:`W' = W \\gamma / \\sqrt{\\sigma^2 + \\epsilon}`, :math:`b' = \\beta - \\mu \\gamma /
  \\sqrt{\\sigma^2 + \\epsilon}`, ``torch.nn.utils.fusion.fuse_conv_bn_eval``);
* every :class:`~fastmde.nn.cropped_conv.TapCroppedConv2d` is a plain ``nn.Conv2d`` (its tap
  cropping is a Python decision on the feature map's size, which a graph with a symbolic
  size cannot take; the dropped taps multiply zeros, so the values are the same), and so is
  every :class:`~fastmde.nn.banded_conv.BandedConv2d` (it differs from ``nn.Conv2d`` only in
  its training backward), folded ones included;
* an :class:`~fastmde.models.IntermediateResolution` is an :class:`ExportResolution`, whose
  resizes are written so that one graph is right at every input size (see there).

(Blocks of other projects adopted by :func:`fastmde.patch` keep their patched forward here;
:func:`fastmde.export` gives them their own forward back with :func:`fastmde.unpatch`.)

The copy computes the same function as the model in eval mode up to float rounding (the
folded weights are rounded once; the tests hold it to 1e-5 relative). The model itself is
not changed.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..nn.banded_conv import BandedConv2d
from ..nn.cropped_conv import TapCroppedConv2d
from ..nn.up_projection import UpProjection
from .resolution import IntermediateResolution, internal_size


class PlainExportError(ValueError):
    """The model holds something that has no faithful standard-operator form."""


# ---------------------------------------------------------------- the up-projection block


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    return _plain_conv(fuse_conv_bn_eval(conv.eval(), bn.eval()))


class FoldedUpProjection(nn.Module):
    """An eval-mode :class:`~fastmde.nn.UpProjection` in standard operators, BatchNorm folded::

        x [, cat skip] -> [relu(conv'_r(x)) ->] up = bilinear(x, size, align_corners)
          -> relu(conv'_2(relu(conv'_1(up))) + conv'_s(up))

    (``conv'`` = the block's conv with its BatchNorm folded in, so each has a bias.)
    ``forward(x, skip=None, size=None)`` as the block's."""

    def __init__(self, block: UpProjection):
        super().__init__()
        self.in_channels, self.out_channels = block.in_channels, block.out_channels
        self.scale, self.align_corners = block.scale, block.align_corners
        self.reduce = _fold(block.reduce_conv, block.reduce_bn) if block.reduce else None
        self.conv1 = _fold(block.conv1, block.bn1)
        self.conv2 = _fold(block.conv2, block.bn2)
        self.shortcut = _fold(block.shortcut_conv, block.shortcut_bn)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            if skip.shape[-2:] != x.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=self.align_corners)
            x = torch.cat((x, skip), dim=1)
        if size is None:
            size = (int(x.shape[-2] * self.scale), int(x.shape[-1] * self.scale))
        if self.reduce is not None:
            x = F.relu(self.reduce(x))
        up = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=self.align_corners)
        return F.relu(self.conv2(F.relu(self.conv1(up))) + self.shortcut(up))


# ---------------------------------------------------------------- intermediate resolution


def _area_last_axis(x: torch.Tensor, m: int) -> torch.Tensor:
    """Area resize of the last axis (length n) to ``m``, from the input's symbolic length:
    output i is the mean of inputs [floor(i n / m), ceil((i + 1) n / m)), PyTorch's adaptive
    average pooling window (``start_index`` / ``end_index`` in ATen's
    AdaptiveAveragePooling.cpp), gathered as (m, L) indices, L = ceil(n / m) + 1 the longest
    window, masked to each window's own length."""
    n = x.shape[-1]
    i = torch.arange(m, device=x.device)
    start = torch.div(i * n, m, rounding_mode="floor")
    end = torch.div((i + 1) * n + (m - 1), m, rounding_mode="floor")
    idx = start[:, None] + torch.arange((n + m - 1) // m + 1, device=x.device)
    inside = idx < end[:, None]
    window = x[..., idx.clamp(max=n - 1)]                  # (..., m, L)
    return (window * inside).sum(-1) / (end - start).to(x.dtype)


def area_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="area")`` (adaptive average pooling) as gathers and sums:
    the same windows for any input size, so an exported graph whose input size is symbolic
    keeps them right (the exporters' own lowering of adaptive pooling fixes the windows of the
    example input)."""
    x = _area_last_axis(x, size[1])
    return _area_last_axis(x.transpose(-1, -2), size[0]).transpose(-1, -2)


class ExportResolution(nn.Module):
    """:class:`~fastmde.models.IntermediateResolution` with the size decisions in the graph.

    ``IntermediateResolution`` area-downscales the input to ``size`` (bilinear when a dimension
    would grow, nothing when equal) and upscales the prediction bicubically (nothing when the
    sizes are equal), deciding in Python from the input's size. Here both candidates of the
    input resize are computed and ``torch.where`` picks by the input's size (area of equal
    sizes is the identity), and the bicubic upscale always runs (at equal sizes its weights
    are exactly 0 and 1): the same values, with a graph valid at every input size.

    ``aspect="keep"`` computes the internal size from the input's with Python's float ``round``
    (:func:`~fastmde.models.resolution.internal_size`), which an exported graph cannot carry
    (``torch.export`` cannot serialise it, ONNX has no such size arithmetic): such a wrapper
    says so in ``fixed_size_reason`` and is exported at a fixed input size."""

    def __init__(self, wrapper: IntermediateResolution):
        super().__init__()
        self.net, self.size = wrapper.net, wrapper.size
        self.aspect = getattr(wrapper, "aspect", "stretch")
        self.fixed_size_reason = None
        if self.aspect != "stretch" and self.size is not None:
            self.fixed_size_reason = (f"aspect={self.aspect!r} computes the internal size from the input's with "
                                      "float rounding, which an exported graph cannot carry")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_size = x.shape[-2:]
        if self.size is not None:
            h, w = size = internal_size(x.shape[-2], x.shape[-1], self.size, self.aspect)
            shrink = (torch.scalar_tensor(x.shape[-2]) >= h) & (torch.scalar_tensor(x.shape[-1]) >= w)
            grown = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            x = torch.where(shrink, area_resize(x, size), grown)
        return F.interpolate(self.net(x), size=out_size, mode="bicubic", align_corners=True)

    def extra_repr(self) -> str:
        return f"size={self.size}, aspect={self.aspect!r}"


# ---------------------------------------------------------------- the copy


def _plain_conv(conv: nn.Conv2d) -> nn.Conv2d:
    if type(conv) is nn.Conv2d:
        return conv
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    plain.load_state_dict(conv.state_dict())
    return plain


def _convert(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    if isinstance(module, UpProjection):
        return FoldedUpProjection(module)
    if isinstance(module, (TapCroppedConv2d, BandedConv2d)):
        return _plain_conv(module)
    if isinstance(module, IntermediateResolution):
        return ExportResolution(module)
    return module


def plain_copy(model: nn.Module) -> nn.Module:
    """The model's inference function in standard PyTorch operators (see the module docstring):
    a copy on the CPU in eval mode, float16/bfloat16 weights upcast to float32 (exactly).

    Raises:
        PlainExportError: a BatchNorm without running statistics (it would normalise with each
            batch's own statistics at inference, so one image's depth would depend on the
            others in the batch), named by its module path.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.running_mean is None or m.running_var is None):
            raise PlainExportError(
                f"BatchNorm {name or '<model>'!r} has no running statistics (track_running_stats=False): in eval "
                "mode it normalises with each batch's own statistics, which no exported inference graph reproduces")
    copied = copy.deepcopy(model).cpu()
    if any(t.dtype in (torch.float16, torch.bfloat16) for t in (*copied.parameters(), *copied.buffers())):
        copied = copied.float()
    copied.eval()
    copied = _convert(copied)
    return copied.eval()
