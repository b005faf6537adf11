"""Checkpoints: atomic writes, a recognisable format, clear errors for anything else.

A fastmde checkpoint is a ``torch.save`` dict::

    {"format": "fastmde-checkpoint", "version": 1,
     "model_spec": {"name", "size", "overrides",    # enough to rebuild the network
                    "variant"},                     # its name (unet18-k3-1x1 under --encoder 18)
     "config": TrainConfig.to_dict(),
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ...,
     "ema": {"decay", "updates", "model": averaged state_dict} | None,
     "rng": {"torch", "cuda", "numpy", "python", "augment"},
     "epoch": int, "batch_in_epoch": int, "step": int, "elapsed": float,
     "best": {"metric", "value", "epoch"} | None, "history": [epoch records],
     "validation_due": bool}    # a --val-every validation not yet run (a Ctrl-C came first)

It holds only tensors and plain Python values, so it loads with ``weights_only=True`` (no
code from the file runs). ``epoch``/``batch_in_epoch`` point at the next batch to train; the
state is that at the end of the step before it (a Ctrl-C mid-step saves the last completed one).
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import warnings

import numpy as np
import torch

from .._atomic import atomic_write, clean_stale_temporaries
from .._checks import brief_repr, damaged_weights_message, nonfinite_message, nonfinite_tensors
from .._warn import warn_at_caller
from .._files import load_error_text, torch_file_damage, torch_file_problem

FORMAT = "fastmde-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """The file is not a (compatible) fastmde checkpoint."""


def atomic_save(obj, path: str, *, stopping: bool = False) -> None:
    """``torch.save`` through :func:`fastmde._atomic.atomic_write` (temporary file beside
    ``path``, fsync, ``os.replace``): readers see the old complete checkpoint or the new one,
    never half of one, even when the process is killed mid-write.

    Ctrl-C does not cut a save short (:func:`interrupts_deferred`): the file is finished first.
    A Ctrl-C during an ordinary save is raised as ``KeyboardInterrupt`` once the file is in
    place; with ``stopping=True`` (the save a Ctrl-C asked for) further presses are only
    acknowledged, since the run is stopping anyway."""
    with interrupts_deferred(raise_after=not stopping):
        with atomic_write(path, "wb") as f:
            torch.save(obj, f)


def clean_output_folder(folder, log=None) -> list[str]:
    """Before a run writes into ``folder`` (a training run, a sweep, an evaluation, predictions):
    remove the temporary files that writes of fastmde killed mid-way (SIGKILL, a power cut) left
    there, ``.last.pt.<hex>.tmp`` and the like, and say so through ``log``. Only those: see
    :func:`fastmde._atomic.clean_stale_temporaries` (exact name pattern, no live writer's lock,
    not written in the last seconds)."""
    removed = clean_stale_temporaries(folder)
    if removed and log is not None:
        log(f"removed {len(removed)} temporary file(s) that a killed write left in {folder}: {', '.join(removed)}")
    return removed


@contextlib.contextmanager
def interrupts_deferred(*, raise_after: bool = True):
    """Hold Ctrl-C (SIGINT) until the block ends, so that a file being written is finished.

    A ``KeyboardInterrupt`` inside ``torch.save`` leaves its zip writer half-closed (it then
    fails with ``RuntimeError: [enforce fail at inline_container.cc]``) and the checkpoint
    unwritten. While the block runs, a Ctrl-C prints one line and is remembered; when the block
    has finished normally it is raised as ``KeyboardInterrupt`` (``raise_after``) or dropped.
    Only in the main thread and only while Ctrl-C raises ``KeyboardInterrupt`` (Python's
    default handler); otherwise nothing changes."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    pressed = []

    def hold(signum, frame):
        if not pressed:
            print("fastmde: finishing the checkpoint being written before stopping", file=sys.stderr, flush=True)
        pressed.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed and raise_after:
        raise KeyboardInterrupt


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


def _describe_state_dict(state: dict, path: str) -> str:
    """What a plain state dict (names -> tensors) is, and how to load it: the rest of the sentence
    "<path> is not a fastmde checkpoint: it is ..."."""
    n = f"{len(state)} tensor{'s' if len(state) != 1 else ''}"
    keys = list(state)
    if all(isinstance(k, str) and k.startswith("net.") for k in keys):
        return (f"a plain state_dict of a fastmde model ({n}), which does not record the variant's internal "
                f"size or input normalisation: load it with fastmde.models.from_external({path!r}, "
                f"source='fastmde', size=(H, W)) at the size it was trained at")
    if "conv1.weight" in state and any(isinstance(k, str) and k.startswith("layer4.") for k in keys):
        return (f"a ResNet's state_dict ({n}): encoder weights, which train --pretrained {path!r} "
                f"(models.build(..., pretrained={path!r})) loads")
    return (f"a plain state_dict ({n}, e.g. {keys[0]!r}) whose names fit none of the models fastmde reads "
            f"(fastmde's net.*, the paper authors' encoder./decoder./mff./refinement., Hu et al.'s E./D./MFF./R.)")


def _describe_foreign(obj, path: str = "path") -> str:
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return _describe_state_dict(obj, path)
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


def _resolve(path) -> str:
    """The file to read: ``path`` itself, or a run directory's best.pt (else last.pt)."""
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
    return path


def check_checkpoint_argument(path, flag: str) -> None:
    """Refuse, before any work, a command's checkpoint argument that names nothing to read: a
    missing path (FileNotFoundError) or a folder without best.pt / last.pt (CheckpointError); the
    message names ``flag`` (``--checkpoint``) and the path. What the file holds is checked by
    :func:`load`."""
    try:
        _resolve(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{flag} {os.fspath(path)!r} does not exist") from None
    except CheckpointError:
        raise CheckpointError(f"{flag} {os.fspath(path)!r} is a folder without best.pt or last.pt "
                              "(a run folder holds them once training saved)") from None


def load_checkpoint_argument(path, flag: str, device="cpu", *, warn_nonfinite: bool = True):
    """:func:`load` of a command's checkpoint argument, its :class:`CheckpointError` (a damaged
    or foreign file, weights that fit no model) named with ``flag`` in front: ``--checkpoint:
    checkpoint '...' is damaged or truncated: ...``. The file is read once; a message that
    already starts with the flag (export's positional ``checkpoint``) is left as it is.
    ``warn_nonfinite``: as :func:`load`'s (export refuses such a model itself)."""
    try:
        return load(path, device=device, warn_nonfinite=warn_nonfinite)
    except CheckpointError as exc:
        message = str(exc)
        if message.startswith(f"{flag} "):
            raise
        raise CheckpointError(f"{flag}: {message}") from None


def _read_file(path: str, map_location):
    """``torch.load(path, weights_only=True)``; :class:`CheckpointError` for what is not a file of
    tensors and plain values, and for a damaged one (cut short, or bytes that fail the archive's
    CRC-32: :func:`fastmde._files.torch_file_damage`)."""
    problem = torch_file_problem(path)   # text or random bytes: say so, not torch.load's "KeyError: 101"
    if problem is not None:
        raise CheckpointError(f"{path!r} is not a fastmde checkpoint: {problem}")
    damage = torch_file_damage(path)     # a torch.save file cut short or with changed bytes
    if damage is not None:
        raise CheckpointError(f"checkpoint {path!r} is damaged or truncated: {damage}")
    try:
        with warnings.catch_warnings():
            # a plain pickle (not torch.save's) gets torch's "Detected pickle protocol" warning
            # before fastmde's own one-line message about the file
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        damage = torch_file_damage(path, exc)     # a legacy (pickle) checkpoint cut short
        if damage is not None:
            raise CheckpointError(f"checkpoint {path!r} is damaged or truncated: {damage}") from None
        # weights_only refuses pickled code (foreign checkpoints with custom classes) as well as
        # files that are not PyTorch archives at all; say which.
        message = load_error_text(exc)
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path!r} is not a fastmde checkpoint: it holds pickled Python objects "
                f"(a checkpoint of another library?) ({message[:200]})"
            ) from None
        raise CheckpointError(
            f"{path!r} is not a fastmde checkpoint: it cannot be read as a PyTorch file ({message[:200]})"
        ) from None


def _validate(obj, path: str) -> dict:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a fastmde checkpoint: it is {_describe_foreign(obj, path)}")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path!r} is a damaged fastmde checkpoint: its version is {_short(version)} "
                              "(a whole number from 1)")
    if version > VERSION:
        raise CheckpointError(
            f"{path!r} is a fastmde checkpoint of version {version!r}; this fastmde reads up to "
            f"version {VERSION} (upgrade fastmde)"
        )
    for key in ("model_spec", "model"):
        if key not in obj:
            raise CheckpointError(f"{path!r} is a damaged fastmde checkpoint: no {key!r} entry")
    spec = obj["model_spec"]
    size = spec.get("size") if isinstance(spec, dict) else None
    if (not isinstance(spec, dict) or not isinstance(spec.get("name"), str)
            or not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65536 for v in size)
            or not isinstance(spec.get("overrides", {}), dict)):
        raise CheckpointError(f"{path!r} is a damaged fastmde checkpoint: its model_spec is {_short(spec)} "
                              "(a dict of the network's name, size (H, W) and overrides)")
    if not isinstance(obj["model"], dict):
        raise CheckpointError(f"{path!r} is a damaged fastmde checkpoint: its model entry is "
                              f"{type(obj['model']).__name__}, not the network's state dict")
    ema = obj.get("ema")
    if ema is not None and not (isinstance(ema, dict) and isinstance(ema.get("model", {}), dict)):
        what = type(ema.get("model")).__name__ if isinstance(ema, dict) else type(ema).__name__
        raise CheckpointError(f"{path!r} is a damaged fastmde checkpoint: its ema model entry is {what}, "
                              "not a state dict")
    if not isinstance(obj.get("config", {}) or {}, dict):
        raise CheckpointError(f"{path!r} is a damaged fastmde checkpoint: its config is {_short(obj['config'])}, "
                              "not a dict of the training options")
    obj["path"] = path
    return obj


def _short(value, limit: int = 60) -> str:
    """``repr(value)`` on one line (a 2-D tensor's repr has several), cut to ``limit`` characters
    for a one-line message (:func:`fastmde._checks.brief_repr`)."""
    return brief_repr(value, limit)


def _weights_mismatch(model, weights: dict) -> str:
    """What keeps ``weights`` from loading into ``model`` strictly, in one line: the first few
    missing, unexpected and differently shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shaped = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in weights and hasattr(weights[k], "shape") and tuple(weights[k].shape) != tuple(own[k].shape)]
    untyped = [f"{k} is {type(weights[k]).__name__}" for k in own
               if k in weights and not isinstance(weights[k], torch.Tensor)]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", shaped),
                        ("not tensors", untyped)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    return "; ".join(parts)


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """Load and validate a fastmde checkpoint; raise :class:`CheckpointError` for anything else."""
    path = _resolve(path)
    return _validate(_read_file(path, map_location), path)


def external_source(obj) -> str | None:
    """``"freeman2021"`` or ``"hu2019"`` when ``obj`` (a loaded file) is a checkpoint of the paper
    authors' code or of Hu et al.'s code (recognised from its key names, see
    :mod:`fastmde.models.external`), else None. fastmde checkpoints and plain fastmde state
    dicts are not external (a plain state dict does not record the internal size or the input
    normalisation; :func:`fastmde.models.from_external` takes one with ``source="fastmde"``)."""
    from ..models import external

    if not isinstance(obj, dict) or obj.get("format") == FORMAT:
        return None
    try:
        source = external.recognise(external.unwrap(obj))
    except external.ExternalCheckpointError:
        return None
    return source if source in ("freeman2021", "hu2019") else None


def build_model_from_checkpoint(ckpt: dict):
    """The network described by ``ckpt["model_spec"]`` with the checkpoint's weights.

    A run trained with ``--ema`` keeps the moving average of its weights next to the training
    weights in ``last.pt``; the average is what validation scored, so it is the one loaded
    (``best.pt`` holds only the average, as ``model``).
    """
    from .. import models

    spec = ckpt["model_spec"]
    where = repr(ckpt.get("path", "checkpoint"))
    try:
        model = models.build(spec["name"], size=tuple(spec["size"]), pretrained=None, **spec.get("overrides", {}))
    except (ValueError, TypeError) as exc:   # a name or override this fastmde does not know
        raise CheckpointError(f"{where}: its model_spec names no network this fastmde builds: {exc}") from None
    average = ckpt.get("ema")
    weights = average["model"] if isinstance(average, dict) and "model" in average else ckpt["model"]
    load_weights(model, weights, where, spec["name"])
    return model


def load_weights(model, weights, where: str, name: str) -> None:
    """``model.load_state_dict(weights)`` (strict), or :class:`CheckpointError` in one line naming
    ``where`` (the file, as the message shows it): weights holding complex numbers where the
    model's are real (``load_state_dict`` would copy the real part with torch's warning, a model
    that is not the one saved) or true/false values where they are floating (copied as 0/1
    silently), and weights that do not fit ``name`` (the first missing,
    unexpected, differently shaped and not-a-tensor keys)."""
    damage = damaged_weights_message(model.state_dict(), weights) if isinstance(weights, dict) else None
    if damage:
        raise CheckpointError(f"{where} is a damaged fastmde checkpoint: {damage}")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:
        detail = _weights_mismatch(model, weights) if isinstance(weights, dict) else ""
        raise CheckpointError(
            f"{where}: its weights do not fit model {name!r}: {detail or str(exc).splitlines()[0]}"
        ) from None


def load(checkpoint: str, device="cpu", *, eval_mode: bool = True, warn_nonfinite: bool = True):
    """A ready model from a fastmde checkpoint file, a run directory (its best.pt, else
    last.pt), or a checkpoint of the paper authors' code or of Hu et al.'s code (recognised
    from its key names and loaded by :func:`fastmde.models.from_external`).

    The model takes (B, 3, H, W) float images in 0-255 at any size and returns (B, 1, H, W)
    depth in metres; it is moved to ``device`` and put in eval mode (``eval_mode=False``:
    training mode). Attributes say what was loaded:

    - ``fastmde_variant``: the name of the network it is (``fastmde.models.variant_name``: the
      variant with its ``--encoder``, e.g. ``unet18-k3-1x1``);
    - ``fastmde_spec``: ``{"name", "size", "overrides"}``; ``fastmde.models.build(spec["name"],
      size=spec["size"], **spec["overrides"])`` is a model the loaded ``state_dict()`` loads into
      strictly (what ``train --init-from`` needs);
    - ``fastmde_source``: ``{"source": "fastmde" | "freeman2021" | "hu2019", ...}`` (for an
      external file also what its model expects as input and returns, see
      :mod:`fastmde.models.external`);
    - ``fastmde_config``: the saved training configuration (``{}`` for an external file);
    - ``fastmde_checkpoint``: the file read.

    Weights holding NaN or inf (the last.pt of a diverged run: every prediction NaN, every δ 0)
    are looked for in the floating parameters and buffers: a warning (UserWarning) in one line
    names the file and how many tensors hold them (``warn_nonfinite=False``: no look).

    Raises FileNotFoundError for a missing path and :class:`CheckpointError` for a file that
    is neither (naming what it is, or, for an external checkpoint that fits no variant, the
    closest variant and the keys that differ, or complex weights where the model's are real).
    """
    from .. import models
    from ..models import external

    path = _resolve(checkpoint)
    obj = _read_file(path, "cpu")
    if external_source(obj) is not None:
        try:
            model = external.from_external(obj)
        except external.ExternalCheckpointError as exc:
            raise CheckpointError(f"{path!r}: {exc}") from None
        model.fastmde_config = {}
    else:
        ckpt = _validate(obj, path)
        model = build_model_from_checkpoint(ckpt)
        spec = ckpt["model_spec"]
        model.fastmde_variant = models.variant_name(spec["name"], **spec.get("overrides", {}))
        model.fastmde_spec = {"name": spec["name"], "size": spec.get("size"),
                              "overrides": dict(spec.get("overrides", {}))}
        model.fastmde_source = {"source": "fastmde"}
        model.fastmde_config = dict(ckpt.get("config") or {})
    model.fastmde_checkpoint = path
    broken = nonfinite_tensors(model) if warn_nonfinite else []
    if broken:
        warn_at_caller(f"{nonfinite_message(f'checkpoint {path!r}', broken)}: its predictions will be NaN")
    model.to(device)
    model.train(not eval_mode)
    return model
