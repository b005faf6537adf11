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
