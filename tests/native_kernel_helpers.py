"""Shared pieces of the native (C++) kernel tests: the forced-backend fixture body and input makers."""
from __future__ import annotations

import importlib

import torch

from fastmde import _backend


def require_native_extension():
    """Import fastmde._C or fail (never skip): CI builds the extension, so its absence is a bug."""
    module = importlib.import_module("fastmde._C")
    for entry_points in _backend.NATIVE_ENTRY_POINTS.values():
        for name in entry_points:
            assert hasattr(module, name), f"fastmde._C lacks {name}"
    return module


def depth_pair(shape, seed, dtype=torch.float32, bad_fraction=0.0, lo=0.5, hi=10.0):
    """(pred, target) depth maps; ``bad_fraction`` of the target pixels become NaN / +inf / -inf."""
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo
    pred = (target + 0.4 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp_min(0.05)
    if bad_fraction > 0:
        u = torch.rand(shape, generator=g)
        target = torch.where(u < bad_fraction / 3, float("nan"), target)
        target = torch.where((u >= bad_fraction / 3) & (u < 2 * bad_fraction / 3), float("inf"), target)
        target = torch.where((u >= 2 * bad_fraction / 3) & (u < bad_fraction), float("-inf"), target)
    return pred.to(dtype), target.to(dtype)


def random_mask(shape, seed, kind):
    """None, a random bool mask, or an all-false one."""
    if kind == "none":
        return None
    if kind == "all_invalid":
        return torch.zeros(shape, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed + 7)
    return torch.rand(shape, generator=g) > 0.3


def loss_kink_pixels(pred, target, mask, preset, tol=1e-4, cos_tol=1e-6):
    """Pixels where the loss's gradient is ambiguous at float32 precision (bool, pred's shape).

    ``preset``: a preset name or its options dict.

    Every term is a sum of |.| of a smooth quantity: the depth error d - y at a pixel, the Sobel
    differences px - gx and py - gy and 1 - cos of the normals at a pixel q, the latter reaching
    the gradient of q's 3x3 Sobel neighbourhood. Where such a quantity is within float32
    rounding of 0 (``tol`` for the differences of O(1-10) m values, ``cos_tol`` for 1 - cos,
    which is >= 0 exactly and only changes sign by rounding), float32 rounding decides its
    sign and either one-sided derivative is a correct answer, so gradient comparisons leave
    those pixels out (computed here in float64)."""
    import torch.nn.functional as F

    from fastmde.reference.depth_loss import PRESETS, _sanitise, gaussian_blur_reference, sobel_reference

    options = PRESETS[preset] if isinstance(preset, str) else preset
    d = pred.detach().double()
    y, valid = _sanitise(target.double(), mask)
    kink = ((d - y).abs() < tol) & valid
    if options["gradient"] or options["normal"]:
        yb = gaussian_blur_reference(y) if options["blur"] else y
        gx, gy = sobel_reference(yb)
        px, py = sobel_reference(d)
        near = torch.zeros_like(kink)
        if options["gradient"]:
            near |= ((px - gx).abs() < tol) | ((py - gy).abs() < tol)
        if options["normal"]:
            cos = (px * gx + py * gy + 1) / ((px * px + py * py + 1) * (gx * gx + gy * gy + 1)).sqrt()
            near |= (1 - cos).abs() < cos_tol
        near &= valid
        kink |= F.max_pool2d(near[:, None].double(), 3, stride=1, padding=1)[:, 0] > 0
    return kink
