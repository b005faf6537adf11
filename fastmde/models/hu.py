"""Hu et al.'s model (encoder, decoder D, multi-scale feature fusion MFF, refinement R), in the
paper's slimmed form and in the original form.

With encoder channels bc = (bc0, bc1, bc2, bc3) and kernel size k::

    block1..4 = encoder(x)                                        strides 4, 8, 16, 32
    D:   up1 UpProj bc3 -> bc3/2 to block3's size, up2 -> bc3/4 to block2's size,
         up3 -> bc3/8 to block1's size, up4 bc3/8 -> bc3/8 to the input size (x4)
    MFF: UpProj(block_i, 16) to D's output size for i = 1..4 (x4, x8, x16, x32),
         cat (64) -> 5x5 conv 64->64 -> BN -> ReLU   (5x5 whatever k: see below)
    R:   cat(D, MFF) (bc3/8 + 64 = bc0 + 64 channels) ->
         k x k conv -> BN -> ReLU -> k x k conv -> BN -> ReLU -> k x k conv -> 1 (bias)

The paper's text describes four refinement convolutions; its code (and Hu et al.'s) has the
three above, which is what is built here. The MFF fusion convolution is 5x5 for every
``kernel_size``: in the paper authors' code (thatcherfreeman/CS231A-FinalProject, models.py,
class ``MFF``) and in Hu et al.'s (models/modules.py, class ``MFF``) it is a fixed 5x5 conv
while ``ksize`` changes only the up-projections and the refinement; following the code lets
their checkpoints load (see :mod:`fastmde.models.external`).

``original=True`` is Hu et al.'s model as published: a 1x1 conv bc3 -> bc3/2 -> BN -> ReLU
before D, so D runs bc3/2 -> bc3/4 -> bc3/8 -> bc3/16 -> bc3/32, its last block only x2 (to the
stem's size, half the input), MFF to that size, R on bc3/32 + 64 channels (128 for ResNet50),
5x5 convolutions and Hu et al.'s up-projection (upsample, 5x5 -> BN -> ReLU -> 3x3 -> BN, plus
5x5 -> BN, no 1x1). Its output is at half the input's resolution, as in Hu et al.;
:class:`~fastmde.models.resolution.IntermediateResolution` brings it to the input size.

Otherwise ``reduce`` turns the paper's 1x1 reduction in every up-projection on or off, and all
three k x k convolutions of a block use ``kernel_size``. Every upsample is bilinear with
align_corners=True; targets are the feature maps' actual sizes, so any input size works.

Input (B, 3, H, W) image in 0-255; output (B, 1, H, W) depth in metres ((B, 1, ceil(H/2),
ceil(W/2)) with ``original=True``).
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import bool_argument, integer_argument
from ..nn.banded_conv import BandedConv2d
from ..nn.up_projection import UpProjection, check_model_input
from .resnet import ResNetEncoder

MFF_CHANNELS = 16  # per encoder block; 4 blocks -> 64
MFF_FUSION_KERNEL = 5  # the fusion conv after the concatenation: 5x5 in both codebases, whatever k


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    # BandedConv2d: the MFF and refinement convs run at the output resolution, where the CPU
    # weight gradient may be faster over row bands (elsewhere it is nn.Conv2d)
    return nn.Sequential(BandedConv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class HuModel(nn.Module):
    """Hu et al.'s depth model; see the module docstring for the exact layers.

    Args:
        encoder: ResNet depth (18, 34, 50, 101).
        kernel_size: k of every up-projection (decoder and MFF) and refinement convolution
            (3 or 5); the MFF fusion convolution is 5x5 whatever k (as in the authors' code).
        reduce: the paper's 1x1 reduction in each up-projection.
        original: Hu et al.'s published model (5x5, no 1x1 in the blocks, 1x1 entry conv,
            half-resolution output); ``kernel_size`` must then be 5 and ``reduce`` False.
        pretrained: local torchvision/timm checkpoint for the encoder.
        normalize: ImageNet mean/std on the 0-255 input (default False, as the paper's code).
    """

    def __init__(
        self,
        encoder: int = 50,
        *,
        kernel_size: int = 5,
        reduce: bool = False,
        original: bool = False,
        pretrained=None,
        normalize: bool = False,
    ):
        super().__init__()
        encoder = integer_argument(encoder, "HuModel: encoder")     # ints (numpy's too), never 50.0 or True
        kernel_size = integer_argument(kernel_size, "HuModel: kernel_size", minimum=1, odd=True)
        reduce = bool_argument(reduce, "HuModel: reduce")
        original = bool_argument(original, "HuModel: original")
        normalize = bool_argument(normalize, "HuModel: normalize")
        if original and (kernel_size != 5 or reduce):
            raise ValueError("original=True is Hu et al.'s 5x5 model without the 1x1 reduction: "
                             f"got kernel_size={kernel_size}, reduce={reduce}")
        self.encoder = ResNetEncoder(encoder, pretrained=pretrained, normalize=normalize)
        bc = self.encoder.channels
        k = kernel_size
        self.kernel_size, self.reduce, self.original = k, reduce, original
        if original:
            block = dict(kernel_size=5, reduce=False, align_corners=True)  # 5x5 / 3x3 / 5x5
            width = bc[3] // 2
            self.entry = _conv_bn_relu(bc[3], width, 1)
            widths = [width, width // 2, width // 4, width // 8, width // 16]
        else:
            block = dict(kernel_size=k, reduce=reduce, second_kernel_size=k, align_corners=True)
            self.entry = None
            widths = [bc[3], bc[3] // 2, bc[3] // 4, bc[3] // 8, bc[3] // 8]
        self.up1 = UpProjection(widths[0], widths[1], **block)
        self.up2 = UpProjection(widths[1], widths[2], **block)
        self.up3 = UpProjection(widths[2], widths[3], **block)
        self.up4 = UpProjection(widths[3], widths[4], **block)
        self.mff_up = nn.ModuleList(UpProjection(c, MFF_CHANNELS, **block) for c in bc)
        mff = 4 * MFF_CHANNELS
        self.mff_conv = _conv_bn_relu(mff, mff, MFF_FUSION_KERNEL)
        width = widths[4] + mff
        self.refine = nn.Sequential(
            _conv_bn_relu(width, width, k),
            _conv_bn_relu(width, width, k),
            BandedConv2d(width, 1, k, padding=k // 2, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_model_input(x, next(self.encoder.parameters()), type(self).__name__)
        h, w = x.shape[-2:]
        blocks = self.encoder(x)
        block1, block2, block3, block4 = blocks
        y = block4 if self.entry is None else self.entry(block4)
        out_size = ResNetEncoder.stem_size(h, w) if self.original else (h, w)
        y = self.up1(y, size=block3.shape[-2:])
        y = self.up2(y, size=block2.shape[-2:])
        y = self.up3(y, size=block1.shape[-2:])
        y = self.up4(y, size=out_size)
        m = torch.cat([up(b, size=out_size) for up, b in zip(self.mff_up, blocks)], dim=1)
        m = self.mff_conv(m)
        return self.refine(torch.cat((y, m), dim=1))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, reduce={self.reduce}, original={self.original}"
