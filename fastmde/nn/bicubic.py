"""Bicubic resize (align_corners=True) whose CPU backward is two GEMMs.

``bicubic_resize(d, size)`` is ``F.interpolate(d, size, mode="bicubic", align_corners=True)``
(the same forward call, the same values); only its backward on the CPU differs. The resize is
separable and linear: with R_y (H x h) and R_x (W x w) the per-axis interpolation matrices
(PyTorch's cubic convolution weights, A = -0.75, indices clamped at the border, duplicates
summed)::

    out  = R_y  d  R_x^T          (B, C, H, W)
    grad = R_y^T g R_x            (B, C, h, w)

ATen's CPU backward of ``upsample_bicubic2d`` scatters every output pixel's 16 weighted values
one pixel at a time on one thread: 4.5 ms for one 288x384 -> 480x640 map (the intermediate
resolution's last step), 17 ms for eight 96x128 -> 480x640 maps (AMD EPYC, 2 vCPUs, float32);
the two GEMMs take 1.6 and 3.3 ms. Same gradient up to the order of the float sums; bfloat16 and
float16 gradients are computed in float32 and rounded once (float64 stays).

R_x is the resize of the identity: ``F.interpolate`` of w one-hot rows of length w to W (height
1 to 1 takes weight 1 at the row itself), so the weights are PyTorch's own, border clamping
included; the matrices are cached per (size in, size out, dtype, device).

The GEMM backward is taken in plain eager mode on a CPU tensor that needs a gradient
(``ops/_dispatch.runs_eagerly``: not under torch.compile / export tracing or functorch
transforms); everything else is ``F.interpolate``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .._checks import compute_dtype
from ..ops._dispatch import runs_eagerly


@functools.lru_cache(maxsize=32)
def axis_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_out, n_in): row o holds the weights output o of a bicubic (align_corners=True) resize
    from n_in to n_out samples gives each input sample."""
    eye = torch.eye(n_in, dtype=dtype, device=device).view(n_in, 1, 1, n_in)
    return F.interpolate(eye, size=(1, n_out), mode="bicubic", align_corners=True).view(n_in, n_out).t().contiguous()


class _BicubicResize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d, size):
        ctx.in_size = tuple(d.shape[-2:])
        return F.interpolate(d, size=size, mode="bicubic", align_corners=True)

    @staticmethod
    def backward(ctx, grad):
        (h, w), (big_h, big_w) = ctx.in_size, grad.shape[-2:]
        ct = compute_dtype(grad.dtype)
        ry = axis_matrix(h, big_h, ct, grad.device)                 # (H, h)
        rx = axis_matrix(w, big_w, ct, grad.device)                 # (W, w)
        return torch.matmul(ry.t(), torch.matmul(grad.to(ct), rx)).to(grad.dtype), None


def bicubic_resize(d: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(d, size=size, mode="bicubic", align_corners=True)`` for d (B, C, h, w);
    on a CPU tensor that needs a gradient, in eager mode, the backward is two GEMMs (see the
    module docstring)."""
    # size goes to F.interpolate as given (its checks, its errors); the backward reads the sizes
    # off the tensors
    if (isinstance(d, torch.Tensor) and d.dim() == 4 and d.device.type == "cpu" and d.is_floating_point()
            and d.requires_grad and torch.is_grad_enabled() and runs_eagerly((d,))):
        return _BicubicResize.apply(d, size)
    return F.interpolate(d, size=size, mode="bicubic", align_corners=True)
