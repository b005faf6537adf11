"""Checkpoints: atomic writes, a recognisable format, clear errors for anything else.

A fastmde checkpoint is a ``torch.save`` dict::

    {"format": "fastmde-checkpoint", "version": 1,
     "model_spec": {"name", "size", "overrides"},   # enough to rebuild the network
     "config": TrainConfig.to_dict(),
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ...,
     "ema": {"decay", "updates", "model": averaged state_dict} | None,
     "rng": {"torch", "cuda", "numpy", "python", "augment"},
     "epoch": int, "batch_in_epoch": int, "step": int, "elapsed": float,
     "best": {"metric", "value", "epoch"} | None, "history": [epoch records]}

It holds only tensors and plain Python values, so it loads with ``weights_only=True`` (no
code from the file runs). ``epoch``/``batch_in_epoch`` point at the next batch to train.
"""
from __future__ import annotations

import os
import random
import zipfile

import numpy as np
import torch

from .._atomic import atomic_write

FORMAT = "fastmde-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """The file is not a (compatible) fastmde checkpoint."""


def atomic_save(obj, path: str) -> None:
    """``torch.save`` through :func:`fastmde._atomic.atomic_write` (temporary file beside
    ``path``, fsync, ``os.replace``): readers see the old complete checkpoint or the new one,
    never half of one, even when the process is killed mid-write."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


# ---------------------------------------------------------------- RNG states (plain values only)

def capture_rng_states(augment_generator: torch.Generator | None = None) -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
        "augment": None if augment_generator is None else augment_generator.get_state(),
    }
    return states


def restore_rng_states(states: dict, augment_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if augment_generator is not None and states.get("augment") is not None:
        augment_generator.set_state(states["augment"])


# ---------------------------------------------------------------- reading

_FOREIGN_HINTS = {
    "pytorch-lightning_version": "a PyTorch Lightning checkpoint",
    "state_dict": "a checkpoint of another training library (it has a 'state_dict' entry)",
    "model_state_dict": "a checkpoint of another training script (it has 'model_state_dict')",
    "optimizer_state_dict": "a checkpoint of another training script",
    "ema": "a checkpoint of another training library",
}


def _describe_foreign(obj) -> str:
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return (f"a plain state_dict ({len(obj)} tensors, e.g. {next(iter(obj))!r}), not a fastmde "
                    "checkpoint: build the network with fastmde.models.build(...) and call "
                    "load_state_dict on it, or pass it to `fastmde train --pretrained` if it is "
                    "an encoder's weights")
        if obj.get("format") not in (None, FORMAT):
            return f"a file of format {obj.get('format')!r}"
        for key, what in _FOREIGN_HINTS.items():
            if key in obj:
                return what
        keys = ", ".join(map(repr, list(obj)[:6]))
        return f"a dict without the fastmde format marker (keys: {keys})"
    if isinstance(obj, torch.nn.Module):
        return "a pickled nn.Module"
    return f"a {type(obj).__name__}"


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """Load and validate a fastmde checkpoint; raise :class:`CheckpointError` for anything else."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        candidate = os.path.join(path, "best.pt")
        if not os.path.exists(candidate):
            candidate = os.path.join(path, "last.pt")
        if not os.path.exists(candidate):
            raise CheckpointError(f"{path!r} is a directory without best.pt or last.pt")
        path = candidate
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (legacy files start with a pickle protocol byte, 0x80).
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path!r} is not a fastmde checkpoint: it cannot be read as a PyTorch file "
            f"(neither a torch.save zip archive nor a pickle; first bytes {head!r})"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        # weights_only refuses pickled code (foreign checkpoints with custom classes) as well as
        # files that are not PyTorch archives at all; say which.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path!r} is not a fastmde checkpoint: it holds pickled Python objects "
                f"(a checkpoint of another library?) ({message[:200]})"
            ) from None
        raise CheckpointError(
            f"{path!r} is not a fastmde checkpoint: it cannot be read as a PyTorch file ({message[:200]})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a fastmde checkpoint: it is {_describe_foreign(obj)}")
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path!r} is a fastmde checkpoint of version {version!r}; this fastmde reads up to "
            f"version {VERSION} (upgrade fastmde)"
        )
    for key in ("model_spec", "model"):
        if key not in obj:
            raise CheckpointError(f"{path!r} is a damaged fastmde checkpoint: no {key!r} entry")
    obj["path"] = path
    return obj


def build_model_from_checkpoint(ckpt: dict):
    """The network described by ``ckpt["model_spec"]`` with the checkpoint's weights.

    A run trained with ``--ema`` keeps the moving average of its weights next to the training
    weights in ``last.pt``; the average is what validation scored, so it is the one loaded
    (``best.pt`` holds only the average, as ``model``).
    """
    from .. import models

    spec = ckpt["model_spec"]
    model = models.build(spec["name"], size=tuple(spec["size"]), pretrained=None, **spec.get("overrides", {}))
    average = ckpt.get("ema")
    weights = average["model"] if isinstance(average, dict) and "model" in average else ckpt["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{ckpt.get('path', 'checkpoint')!r}: its weights do not fit model {spec['name']!r}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return model


def load(checkpoint: str, device="cpu", *, eval_mode: bool = True):
    """A ready model from a fastmde checkpoint file (or a run directory: its best.pt).

    The model takes (B, 3, H, W) float images in 0-255 at any size and returns (B, 1, H, W)
    depth in metres; it is moved to ``device`` and put in eval mode.
    """
    ckpt = read_checkpoint(checkpoint, map_location="cpu")
    model = build_model_from_checkpoint(ckpt).to(device)
    model.train(not eval_mode)
    return model
