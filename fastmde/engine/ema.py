"""An exponential moving average of a model's weights, for validation, testing and prediction.

After optimiser step ``t`` (t = 1, 2, ...), every floating-point parameter and buffer ``w`` of
the training model updates its average ``a``::

    a <- a + (1 - d_t) (w - a),     d_t = min(decay, (1 + t) / (10 + t))

The ramp ``(1 + t) / (10 + t)`` lets the average follow the fast early changes instead of
remembering the random initialisation for ~1 / (1 - decay) steps. BatchNorm's running mean and
variance are averaged like the weights (they describe the activations of the averaged
weights better than the last batch's running values do); integer buffers (BatchNorm's batch
counter) are copied.

Averaging smooths the step-to-step swings of a short, high-rate run: the averaged weights
sit nearer the middle of the valley the optimiser bounces across.
"""
from __future__ import annotations

import copy

import torch


class WeightAverage:
    """The running average of ``model``'s state, held in ``self.module`` (an eval-mode copy)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the training model's current state into the average (call after each step)."""
        self.updates += 1
        weight = 1.0 - self.current_decay()
        averaged, current = [], []
        live = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.is_floating_point():
                averaged.append(value)
                current.append(live[name].detach())
            else:
                value.copy_(live[name])
        torch._foreach_lerp_(averaged, current, weight)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict, load=None) -> None:
        """``load(weights)`` puts the average's weights in place (default: the module's own
        ``load_state_dict``; the trainer passes ``checkpoint.load_weights``'s checks)."""
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        (load or self.module.load_state_dict)(state["model"])
