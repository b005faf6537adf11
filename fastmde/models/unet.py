"""The paper's U-Net ("Baseline34"): a ResNet encoder and an up-projection decoder with skips.

With encoder channels bc = (bc0, bc1, bc2, bc3) — (64, 128, 256, 512) for ResNet18/34,
(256, 512, 1024, 2048) for ResNet50/101 — and k the kernel size (3 or 5)::

    block1..4 = encoder(x)                                   strides 4, 8, 16, 32
    entry: 1x1 conv bc3->bc2 -> BN -> ReLU -> bilinear up to block3's size   (x2)
    up1:   UpProj(cat(x, block3))  2*bc2 -> bc1,  to block2's size           (x2)
    up2:   UpProj(cat(x, block2))  2*bc1 -> bc0,  to block1's size           (x2)
    up3:   UpProj(cat(x, block1))  2*bc0 -> bc0,  to the stem's size H/2     (x2)
    up4:   UpProj(x)               bc0   -> bc0,  to the input size H        (x2)
    head:  k x k conv bc0->bc0 -> BN -> ReLU -> k x k conv bc0->1 (bias)

(up3 takes bc0 + bc0 channels: block1 has bc0 channels for every depth.) Every upsample is
bilinear with align_corners=True, as in the paper's code. Each block's target is the next
feature map's actual size instead of "x2", so any input size works (the paper's code needs
H, W divisible by 32); for divisible sizes the two are the same.

``reduce=True`` is the paper's up-projection (1x1 reduction first, three k x k convs);
``reduce=False`` leaves out the 1x1 (the three k x k convs then read the concatenated input).

Input (B, 3, H, W) image in 0-255; output (B, 1, H, W) depth in metres.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import bool_argument, integer_argument
from ..nn.banded_conv import BandedConv2d
from ..nn.up_projection import UpProjection, check_model_input
from .resnet import ResNetEncoder


class UNet(nn.Module):
    """U-Net depth model; see the module docstring for the exact layers.

    Args:
        encoder: ResNet depth (18, 34, 50, 101).
        kernel_size: k of the decoder's and the head's convolutions (3 or 5; any odd k works).
        reduce: the paper's 1x1 reduction in each up-projection.
        pretrained: local torchvision/timm checkpoint for the encoder.
        normalize: ImageNet mean/std on the 0-255 input (default False, as the paper's code).
    """

    def __init__(
        self,
        encoder: int = 34,
        *,
        kernel_size: int = 3,
        reduce: bool = True,
        pretrained=None,
        normalize: bool = False,
    ):
        super().__init__()
        encoder = integer_argument(encoder, "UNet: encoder")     # ints (numpy's too), never 18.0 or True
        k = integer_argument(kernel_size, "UNet: kernel_size", minimum=1, odd=True)
        reduce = bool_argument(reduce, "UNet: reduce")
        normalize = bool_argument(normalize, "UNet: normalize")
        self.encoder = ResNetEncoder(encoder, pretrained=pretrained, normalize=normalize)
        bc0, bc1, bc2, bc3 = self.encoder.channels
        self.kernel_size, self.reduce = k, reduce
        block = dict(kernel_size=k, reduce=reduce, second_kernel_size=k, align_corners=True)
        self.entry_conv = nn.Conv2d(bc3, bc2, 1, bias=False)
        self.entry_bn = nn.BatchNorm2d(bc2)
        self.up1 = UpProjection(2 * bc2, bc1, **block)
        self.up2 = UpProjection(2 * bc1, bc0, **block)
        self.up3 = UpProjection(2 * bc0, bc0, **block)
        self.up4 = UpProjection(bc0, bc0, **block)
        # the head runs at the input's resolution: BandedConv2d's CPU weight gradient may be faster
        self.head_conv1 = BandedConv2d(bc0, bc0, k, padding=k // 2, bias=False)
        self.head_bn = nn.BatchNorm2d(bc0)
        self.head_conv2 = BandedConv2d(bc0, 1, k, padding=k // 2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_model_input(x, next(self.encoder.parameters()), type(self).__name__)
        h, w = x.shape[-2:]
        block1, block2, block3, block4 = self.encoder(x)
        y = F.relu(self.entry_bn(self.entry_conv(block4)))
        y = F.interpolate(y, size=block3.shape[-2:], mode="bilinear", align_corners=True)
        y = self.up1(y, block3, size=block2.shape[-2:])
        y = self.up2(y, block2, size=block1.shape[-2:])
        y = self.up3(y, block1, size=ResNetEncoder.stem_size(h, w))
        y = self.up4(y, size=(h, w))
        y = F.relu(self.head_bn(self.head_conv1(y)))
        return self.head_conv2(y)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, reduce={self.reduce}"
