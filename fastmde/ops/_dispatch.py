"""Helpers shared by the op files: pick the implementation module for a call, keep autocast out."""
from __future__ import annotations

import torch

from .. import _backend


def implementation(hot_path: str, device: torch.device, like: torch.Tensor | None = None):
    """(backend name, module) that serves ``hot_path`` on ``device``, for the dtype and layout of
    ``like`` when given (see ``_backend.choose``); module is None for reference."""
    setting = _backend.setting_of(like) if like is not None else (None, None)
    backend = _backend.choose(hot_path, device.type, *setting)
    if backend == "native":
        return backend, _backend.native_module()
    if backend == "triton":
        return backend, _backend.triton_module(hot_path)
    return backend, None


def no_autocast(device: torch.device):
    """Op implementations compute in their inputs' dtypes: an autocast region around the op
    must not re-type the ATen calls inside them (the op's output dtype is fixed by its inputs)."""
    return torch.autocast(device_type=device.type, enabled=False)
