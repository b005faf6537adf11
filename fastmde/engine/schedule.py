"""The learning-rate schedule: a multiplier of Adam's base rate for every optimiser step.

For the update that follows ``s`` earlier updates (s = 0, 1, ...), with ``E`` steps per epoch
and ``T = epochs * E`` steps in the run::

    factor(s) = warmup(s) * decay(s)
    warmup(s) = min(1, (s + 1) / warmup_steps)                 (1 without warm-up)
    decay(s)  = gamma ** floor(s / (lr_step * E))              (--lr-step: the paper's step)
              = (1 + cos(pi * p)) / 2                          (--cosine: to 0 at the end of the run)
              = 1                                              (neither: constant)
    p         = min(1, max(s / T, t / L))

where ``t / L`` is the fraction of the run's time limit ``L`` (``--time-limit``) used so far, 0
without one: the cosine reaches 0 at whichever end comes first, the last epoch or the time
limit, so a run on a budget spends its last minutes at a small rate whatever the machine's
speed. Without a time limit the schedule depends on the step count only, and a resumed run
continues on the same curve bit for bit; with one, the rate depends on wall time (the elapsed
time is saved in checkpoints, so a resumed run continues where the clock stood), and runs are
not bitwise repeatable.
"""
from __future__ import annotations

import math

import torch


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, lr_step: int | None = None,
              lr_gamma: float = 0.1, cosine: bool = False, warmup: int = 0, time_fraction: float = 0.0) -> float:
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if lr_step:
        factor *= lr_gamma ** (step // (lr_step * steps_per_epoch))
    elif cosine:
        total = max(1, epochs * steps_per_epoch)
        progress = min(1.0, max(step / total, time_fraction))
        factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def make_scheduler(optimizer, cfg, steps_per_epoch: int, clock=None) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor` for ``cfg`` (a TrainConfig).

    ``clock()`` returns the run's elapsed seconds; with ``cfg.time_limit`` and ``cfg.cosine`` it
    sets the time fraction of the cosine (see the module docstring)."""
    timed = bool(cfg.cosine and cfg.time_limit and clock is not None)

    def factor(step: int) -> float:
        fraction = clock() / cfg.time_limit if timed else 0.0
        return lr_factor(step, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, lr_step=cfg.lr_step,
                         lr_gamma=cfg.lr_gamma, cosine=cfg.cosine, warmup=cfg.warmup, time_fraction=fraction)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
