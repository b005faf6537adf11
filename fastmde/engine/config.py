"""``TrainConfig``: every option of a training run, as one serialisable record.

The same record is built from the command line (``fastmde train``), from a sweep row, or in
Python, and is stored inside every checkpoint so that a model can be rebuilt and a run resumed
without the original command line.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..data.augment import Augment, parse_parts

DATA_FORMATS = ("synthetic", "labeled", "frames", "csv")
AMP_CHOICES = ("auto", "bf16", "fp16", "none")
SWITCH_CHOICES = ("auto", "on", "off")
BEST_METRICS = {  # metric -> True when higher is better
    "rms": False, "rel": False, "log10": False, "delta1": True, "delta2": True, "delta3": True,
}


def parse_size(text) -> tuple[int, int]:
    """``"288x384"`` (H x W), ``"288,384"`` or a pair -> (288, 384)."""
    if isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        parts = str(text).lower().replace(",", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"size must be HxW such as 288x384, got {text!r}") from None
    if height < 8 or width < 8:
        raise ValueError(f"size must be at least 8x8, got {height}x{width}")
    return height, width


@dataclass
class TrainConfig:
    """Options of one training run (the defaults are the paper's recipe where it has one)."""

    # model
    model: str = "unet34-k3-1x1"
    size: tuple[int, int] = (288, 384)          # internal (network) resolution H, W
    pretrained: str | None = None               # torchvision-format encoder state dict
    # loss
    loss: str = "hu_blurred"
    blur: bool | None = None                    # override the preset's blur
    # optimisation
    epochs: int = 3
    batch_size: int = 1
    lr: float = 1e-4
    lr_step: int | None = None                  # x lr_gamma every N epochs (None = no step decay)
    lr_gamma: float = 0.1
    cosine: bool = False                        # cosine decay to 0 over the epochs or the time limit
    warmup: int = 0                             # linear warm-up over this many steps
    ema: float | None = None                    # decay of the weights' moving average (None = off)
    seed: int = 0
    augment: bool = True
    augment_parts: tuple[str, ...] = Augment.PARTS  # which of the paper's transforms (with augment)
    # data
    data_format: str = "synthetic"
    data: str | None = None                     # path (None with synthetic = the cache)
    cache_dir: str | None = None
    synthetic_train: int = 400
    synthetic_val: int = 40
    synthetic_size: tuple[int, int] = (480, 640)  # frame size of the generated synthetic data
    synthetic_views: int = 4                    # synthetic training frames per room
    val_fraction: float = 0.03
    val_by_scene: bool = False
    limit_train: int | None = None              # use only the first N training items
    # speed
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    compile: str = "auto"
    workers: int = -1                           # -1 = auto
    # run control
    out: str = "runs/train"
    max_steps: int | None = None                # stop after this global step (resumable)
    time_limit: float | None = None             # seconds of training wall time (resumable)
    save_every: int | None = None               # also checkpoint every N steps
    val_every: int | None = None                # also validate (and checkpoint) every N steps
    best_metric: str = "delta1"
    eval_batch_size: int = 4
    progress: bool = True
    extra: dict = field(default_factory=dict)   # model overrides passed to models.build

    def __post_init__(self):
        self.size = parse_size(self.size)
        self.synthetic_size = parse_size(self.synthetic_size)
        self.augment_parts = parse_parts(self.augment_parts)
        if self.data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {self.data_format!r}")
        if self.data_format != "synthetic" and not self.data:
            raise ValueError(f"data_format {self.data_format!r} needs a data path (--data)")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        for name in ("channels_last", "compile"):
            value = getattr(self, name)
            if isinstance(value, bool):
                setattr(self, name, "on" if value else "off")
            elif value not in SWITCH_CHOICES:
                raise ValueError(f"{name} must be one of {SWITCH_CHOICES}, got {value!r}")
        if self.best_metric not in BEST_METRICS:
            raise ValueError(f"best_metric must be one of {sorted(BEST_METRICS)}, got {self.best_metric!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be positive")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("max_steps", "save_every", "val_every", "lr_step", "limit_train"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {value}")
        if self.cosine and self.lr_step:
            raise ValueError("choose one learning-rate decay: lr_step (step) or cosine, not both")
        if self.warmup < 0:
            raise ValueError(f"warmup must be a number of steps >= 0, got {self.warmup}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema must be a decay in (0, 1) such as 0.99, got {self.ema}")
        if self.synthetic_views < 1:
            raise ValueError(f"synthetic_views (frames per training room) must be >= 1, got {self.synthetic_views}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be positive seconds, got {self.time_limit}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["size"] = list(self.size)
        out["synthetic_size"] = list(self.synthetic_size)
        out["augment_parts"] = list(self.augment_parts)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def model_spec(self) -> dict:
        """What ``fastmde.models.build`` needs to rebuild the network (stored in checkpoints)."""
        return {"name": self.model, "size": list(self.size), "overrides": dict(self.extra)}
