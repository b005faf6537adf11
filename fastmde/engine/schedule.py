"""The learning-rate schedule: a multiplier of Adam's base rate for every optimiser step.

For the update that follows ``s`` earlier updates (s = 0, 1, ...), with ``E`` steps per epoch
and ``T = epochs * E`` steps in the run::

    factor(s) = warmup(s) * decay(s)
    warmup(s) = min(1, (s + 1) / warmup_steps)                 (1 without warm-up)
    decay(s)  = gamma ** floor(s / (lr_step * E))              (--lr-step: the paper's step)
              = (1 + cos(pi * min(s, T) / T)) / 2              (--cosine: to 0 at the last step)
              = 1                                              (neither: constant)

It depends on the step count only, so a resumed run continues on the same curve.
"""
from __future__ import annotations

import math

import torch


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, lr_step: int | None = None,
              lr_gamma: float = 0.1, cosine: bool = False, warmup: int = 0) -> float:
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if lr_step:
        factor *= lr_gamma ** (step // (lr_step * steps_per_epoch))
    elif cosine:
        total = max(1, epochs * steps_per_epoch)
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return factor


def make_scheduler(optimizer, cfg, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor` for ``cfg`` (a TrainConfig)."""

    def factor(step: int) -> float:
        return lr_factor(step, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, lr_step=cfg.lr_step,
                         lr_gamma=cfg.lr_gamma, cosine=cfg.cosine, warmup=cfg.warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
