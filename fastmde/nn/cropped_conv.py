"""A Conv2d that leaves out the kernel taps which only ever read zero padding.

On a feature map smaller than the kernel's reach some taps never meet an input value: a 3x3
convolution with padding 1 on a 1x1 map (a ResNet's last stage at a small internal size, e.g.
24x32 in, 1x1 at stride 32) only uses its centre tap, so it is a 1x1 convolution, a matrix
product, at a ninth of the work. Along one axis, with input size ``n``, kernel ``k``, stride
``s``, padding ``p`` and dilation ``d``, output ``o`` (0 <= o < m) reads input index
``o s - p + i d`` through tap ``i``; tap ``i`` is *live* when one of those indices lies in
``[0, n)``. Live taps form a range ``[i0, i1)``, and the convolution equals one with the
weight cropped to that range and the input padded by ``p - i0 d`` before and by what the last
output still needs after (zero where the map ends first).

Values and gradients are exact: the dead taps multiply zeros, so their weight gradient is
zero either way (autograd of the crop writes those zeros). The module is a drop-in
``nn.Conv2d``: same parameters and ``state_dict``; on maps where every tap is live it runs the
ordinary convolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def live_taps(n: int, k: int, s: int, p: int, d: int) -> tuple[int, int, int, int]:
    """``(i0, i1, pad_before, pad_after)`` for one axis (see the module docstring).

    ``(0, k, p, p)`` when every tap is live."""
    m = (n + 2 * p - d * (k - 1) - 1) // s + 1
    live = []
    for i in range(k):
        first_o = max(0, -((i * d - p) // s))          # smallest o with o s - p + i d >= 0
        if first_o < m and first_o * s - p + i * d < n:
            live.append(i)
    if not live or live == list(range(k)):
        return 0, k, p, p
    i0, i1 = live[0], live[-1] + 1
    before = p - i0 * d
    after = (m - 1) * s - before + (i1 - 1 - i0) * d - (n - 1)
    return i0, i1, before, max(0, after)


class TapCroppedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding, no groups restriction) that crops dead taps on small maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        r0, r1, top, bottom = live_taps(x.shape[-2], kh, sh, ph, dh)
        c0, c1, left, right = live_taps(x.shape[-1], kw, sw, pw, dw)
        if (r0, r1, c0, c1) == (0, kh, 0, kw) or min(top, left) < 0:
            return super().forward(x)
        weight = self.weight[:, :, r0:r1, c0:c1]
        if top == bottom and left == right:
            return F.conv2d(x, weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
