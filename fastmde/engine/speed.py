"""Device and speed-option resolution: what ``auto`` means for AMP, channels_last, compile, workers.

Defaults ("auto"), chosen by measurement (docs/training.md, "Speed options"):

* CUDA: bf16 autocast where the GPU supports it (no loss scaling needed), else fp16 with a
  ``GradScaler``; channels_last on; torch.compile off (its compile time outweighs the gain in
  the paper's 3-epoch ablations; turn it on for long runs).
* CPU: no autocast (bf16 autocast runs slower than float32 on CPUs without native bf16
  matrix units), channels_last off, compile off.
* Data loader workers: 0 on CPU (the training process already uses every core), 4 on CUDA.
"""
from __future__ import annotations

import contextlib
import os

import torch


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``--device``: ``auto`` (CUDA if there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``
    (``cuda`` under torchrun: the process's local rank), or another PyTorch device type that this
    machine has (``mps``, ``xpu``).

    Raises ValueError naming the value for a name that is no device or a device that is absent."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is available here (use cpu or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        if device.type == "meta" or not (backend is not None and getattr(backend, "is_available", lambda: False)()):
            raise ValueError(f"--device {name}: no {device.type} device is available here (use auto, cpu or cuda)")
    return device


def resolve_amp(amp: str, device: torch.device):
    """``auto|bf16|fp16|none`` -> autocast dtype or None."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def resolve_switch(value: str, device: torch.device, *, cuda_default: bool, cpu_default: bool) -> bool:
    if value == "auto":
        return cuda_default if device.type == "cuda" else cpu_default
    return value == "on"


def resolve_workers(workers: int, device: torch.device) -> int:
    if workers >= 0:
        return workers
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, dtype):
    """A GradScaler for fp16 (bf16 and float32 need none); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
