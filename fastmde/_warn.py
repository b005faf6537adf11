"""Warnings about a caller's data: where they point, and how checks that need device values
stay off the hot path.

* :func:`warn_at_caller` attributes a warning to the first frame outside fastmde's public
  layers (``functional``, ``nn``, ``ops``, ``models``, the shared checks, ``fastmde.load`` and
  ``engine/checkpoint.py``'s loaders) and outside torch
  (``nn.Module.__call__``, ``torch.no_grad``'s wrapper): the user's own line, or the engine's
  line (``fastmde/engine/train.py``) when the trainer called. A fixed ``stacklevel`` cannot do
  this: the same function is reached through a different number of frames from
  ``depth_loss``, ``DepthLoss`` or a compiled module.
* :class:`HostValues` brings a few values of a CUDA tensor (a loss's counts) to the host
  without waiting for the device: the copy is queued (``non_blocking``) with an event, and the
  check runs on a later call once the event has completed. A CPU tensor is checked at once
  (reading it costs nothing). So a per-batch data check never adds a host-device
  synchronisation to a training step.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Callable

import torch

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# fastmde's public layers: a warning raised inside them is about their caller's input; so is one
# about a checkpoint being loaded (``fastmde.load`` in __init__.py -> engine/checkpoint.py): it
# points at the line that loaded it (a user's, or a command's in engine/predict.py, evaluate.py)
_INTERNAL = tuple(os.path.join(_PACKAGE, p) for p in (
    "functional.py", "_checks.py", "_warn.py", "nn" + os.sep, "ops" + os.sep, "reference" + os.sep,
    "models" + os.sep, "__init__.py", os.path.join("engine", "checkpoint.py"),
))
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _internal(filename: str) -> bool:
    return filename.startswith(_INTERNAL) or filename.startswith(_TORCH)


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message)`` attributed to the first calling frame outside fastmde's public
    layers and torch (see the module doc)."""
    frame = sys._getframe(1)
    level = 2   # stacklevel of warn_at_caller's caller
    while frame.f_back is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


class HostValues:
    """Checks on small device tensors without a host-device synchronisation.

    ``submit(tensor, check)`` returns the messages that are ready: for a CPU tensor,
    ``check(tensor)`` at once; for a CUDA tensor, the checks of earlier submissions whose copy
    has arrived (``check`` returns a message or None). At most ``limit`` copies wait; older
    ones are dropped unchecked (a check is advice, never worth a stall)."""

    def __init__(self, limit: int = 8):
        self.limit = limit
        self._pending: list[tuple[object, torch.Tensor, Callable]] = []

    def submit(self, tensor: torch.Tensor, check: Callable[[torch.Tensor], str | None]) -> list[str]:
        if tensor.device.type == "cpu":
            message = check(tensor.detach())
            return [message] if message else []
        ready = self.poll()
        if tensor.device.type == "cuda":
            host = tensor.detach().to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (self._pending + [(event, host, check)])[-self.limit:]
        return ready

    def poll(self) -> list[str]:
        """The messages of the queued checks whose values have arrived."""
        messages, waiting = [], []
        for event, host, check in self._pending:
            if event.query():
                message = check(host)
                if message:
                    messages.append(message)
            else:
                waiting.append((event, host, check))
        self._pending = waiting
        return messages
