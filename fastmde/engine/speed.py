"""Device and speed-option resolution: what ``auto`` means for AMP, channels_last, compile, workers.

Defaults ("auto"), chosen by measurement (docs/training.md, "Speed options"):

* CUDA: bf16 autocast where the GPU supports it (no loss scaling needed), else fp16 with a
  ``GradScaler``; channels_last on; torch.compile off (its compile time outweighs the gain in
  the paper's 3-epoch ablations; turn it on for long runs).
* CPU with bf16 matrix units (AMX-BF16 or AVX512-BF16, read by ``_backend.cpu_features``):
  bf16 autocast and channels_last (oneDNN's bf16 convolutions and the C++ up-projection's bf16
  GEMMs run on those units; the benchmarks' train section measures the step both ways).
  A CPU without them: no autocast (bf16 there is emulated and slower than float32),
  channels_last off. compile off on both.
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


def cpu_has_bf16_units() -> bool:
    """Whether this CPU has bfloat16 matrix units (AMX-BF16 or AVX512-BF16)."""
    from .._backend import cpu_features

    return cpu_features()["bf16_units"]


def resolve_amp(amp: str, device: torch.device, *, inference: bool = False):
    """``auto|bf16|fp16|none`` -> autocast dtype or None (``auto``: see the module docstring).

    ``inference`` (``fastmde eval`` / ``predict``): ``auto`` on a CPU is float32, because a bf16
    network output carries 8 significant bits (depth in steps of ~0.4%) into the written maps and
    the scored metrics; on CUDA it is bf16 as in training. ``--amp bf16`` still asks for it."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_bf16_units() and not inference:
            return torch.bfloat16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def resolve_channels_last(value: str, device: torch.device) -> bool:
    """``auto|on|off`` -> whether to run in channels_last (``auto``: on CUDA, and on a CPU with
    bf16 matrix units, where it goes with bf16 autocast)."""
    if value == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_units())
    return value == "on"


def describe_speed_choice(amp: str, channels_last: str, device: torch.device) -> str:
    """One line saying what ``--amp`` / ``--channels-last`` resolved to here, and why when auto."""
    amp_dtype = resolve_amp(amp, device)
    cl = resolve_channels_last(channels_last, device)
    text = f"amp {str(amp_dtype).removeprefix('torch.') if amp_dtype else 'none (float32)'}, channels_last {'on' if cl else 'off'}"
    if "auto" in (amp, channels_last):
        if device.type == "cpu":
            why = ("this CPU has bf16 matrix units" if cpu_has_bf16_units()
                   else "this CPU has no bf16 matrix units: float32 is faster")
        else:
            why = f"the {device.type} default"
        text += f" (auto: {why})"
    return text


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
