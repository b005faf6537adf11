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
* The CPU allocator (:func:`tune_cpu_allocator`, applied by the Trainer on a CPU): glibc's malloc
  keeps freed blocks up to 32 MiB in its heap for reuse instead of returning them to the system,
  so a training step's activations (each a fresh tensor) do not page-fault in again every step.
  Measured on the 2-core AMD EPYC, ``unet34-k3-1x1`` at 288x384, batch 1, bf16: 5-7% per step,
  three alternating pairs of processes (docs/kernels.md). ``FASTMDE_MALLOC=default`` leaves
  malloc alone.
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


def scoring_precision(device: torch.device):
    """The autocast dtype (None: float32) that ``fastmde eval`` and ``fastmde predict`` run a model
    in by default on ``device`` (their ``--amp auto``, :func:`resolve_amp` with ``inference``;
    they run it in NCHW, channels_last off). Training's validation and final test score in it
    too, whatever precision the run trains in, so that the numbers a run prints (and the best.pt
    it keeps) are those ``fastmde eval`` gives for its checkpoints."""
    return resolve_amp("auto", device, inference=True)


def describe_scoring(device: torch.device) -> str:
    """The words for :func:`scoring_precision` in ``fastmde train``'s first line."""
    dtype = scoring_precision(device)
    name = "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"
    return f"validation and test in {name} NCHW, as fastmde eval scores"


def resolve_channels_last(value: str, device: torch.device) -> bool:
    """``auto|on|off`` -> whether to run in channels_last (``auto``: on CUDA, and on a CPU with
    bf16 matrix units, where it goes with bf16 autocast)."""
    if value == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_units())
    return value == "on"


#: glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: the largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): blocks up to this size
#: come from (and return to) the heap
MMAP_THRESHOLD = 32 << 20
_allocator_note: str | None = None


def tune_cpu_allocator() -> str | None:
    """Keep freed blocks of up to 32 MiB in glibc's heap for reuse (``mallopt``
    ``M_MMAP_THRESHOLD`` = 32 MiB, ``M_TRIM_THRESHOLD`` = 2 GiB): without it, every step's fresh
    activations come from new pages that the kernel zero-fills on first touch. Process-wide,
    applied once; returns a one-line note of what was done, or None where it does not apply (not
    Linux/glibc, or ``FASTMDE_MALLOC=default``). The same setting as the environment variables
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` before a process starts."""
    global _allocator_note
    if _allocator_note is not None:
        return _allocator_note or None
    setting = os.environ.get("FASTMDE_MALLOC", "").strip().lower()
    if setting not in ("", "tuned", "default"):
        raise ValueError(f"FASTMDE_MALLOC={setting!r}: use 'default' (leave malloc alone) or 'tuned' (the default)")
    _allocator_note = ""
    if setting == "default":
        return None
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1)) == 1 and ok
    except (OSError, AttributeError):
        return None
    if ok:
        _allocator_note = "malloc keeps freed blocks up to 32 MiB for reuse (FASTMDE_MALLOC=default: off)"
    return _allocator_note or None


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
