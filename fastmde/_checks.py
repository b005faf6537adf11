"""Input checks shared by the public functions: clear errors instead of crashes or silent NaNs."""
from __future__ import annotations

import math
import numbers
import operator
import re

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_depth_maps(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    what: str,
    *,
    cast_target: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Check a prediction / ground-truth pair and return them as (B, H, W) views.

    ``pred`` and ``target`` are (B, 1, H, W) or (B, H, W) floating tensors of the same shape on
    the same device. ``cast_target=True`` casts ``target`` to ``pred``'s dtype; ``False`` keeps
    its own dtype, so a float32 ground truth beside a bfloat16 prediction is not rounded (the
    op then reads it in :func:`compute_dtype`). ``mask`` (optional) has the same shape and is
    bool, integers (nonzero = valid) or floating 0/1 (any other floating value, NaN included, is
    refused: ValueError; under torch.compile too, when the compiled code runs).
    """
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{what}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
            )
        if t.dim() not in (3, 4) or (t.dim() == 4 and t.shape[1] != 1):
            raise ValueError(
                f"{what}: {name} must have shape (B, 1, H, W) or (B, H, W), got {tuple(t.shape)}"
            )
        if t.numel() == 0:
            raise ValueError(f"{what}: {name} is empty (shape {tuple(t.shape)})")
    if pred.shape != target.shape:
        raise ValueError(
            f"{what}: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if pred.device != target.device:
        raise ValueError(f"{what}: pred is on {pred.device} but target is on {target.device}")
    pred3 = pred.reshape(pred.shape[0], pred.shape[-2], pred.shape[-1]) if pred.dim() == 4 else pred
    target3 = target.reshape(pred3.shape) if target.dim() == 4 else target
    if cast_target and target3.dtype != pred3.dtype:
        target3 = target3.to(pred3.dtype)
    mask3 = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{what}: mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.shape != pred.shape and mask.shape != pred3.shape:
            raise ValueError(
                f"{what}: mask shape {tuple(mask.shape)} does not match pred shape {tuple(pred.shape)}"
            )
        if mask.device != pred.device:
            raise ValueError(f"{what}: mask is on {mask.device} but pred is on {pred.device}")
        if mask.is_complex():
            raise TypeError(f"{what}: mask must be bool or real numbers, got {mask.dtype}")
        mask3 = mask.reshape(pred3.shape)
        if mask3.dtype != torch.bool:
            if not mask3.is_floating_point() or mask3.device.type == "meta":
                mask3 = mask3 != 0
            elif torch.compiler.is_compiling() or type(mask3) is not torch.Tensor:
                # traced (torch.compile, export, FakeTensor): the values exist only when the graph
                # runs, so the op checks them then, with the same error as below
                mask3 = floating_mask_op(mask3, what)
            else:
                mask3 = _floating_mask_as_bool(mask3, what)
    return pred3, target3, mask3


def _floating_mask_as_bool(mask: torch.Tensor, what: str) -> torch.Tensor:
    """``mask != 0`` for a floating mask holding only 0 and 1; ValueError for any other value (a
    probability mask (0.3, 0.7) or NaN-marked holes would all read as valid)."""
    odd = (mask != 0) & (mask != 1)
    if bool(odd.any()):
        value = mask[odd].flatten()[0].item()
        raise ValueError(
            f"{what}: a floating mask must hold only 0 and 1 (1 = valid), found {value:g}: "
            "threshold a probability mask (mask > 0.5) and mark holes with 0, not NaN"
        )
    return mask != 0


# The same check as an op, for traced code: torch.compile runs its Python body at run time.
floating_mask_op = torch.library.custom_op("fastmde::floating_mask_as_bool", mutates_args=())(_floating_mask_as_bool)


@floating_mask_op.register_fake
def _(mask, what):
    return torch.empty_like(mask, dtype=torch.bool)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the hot paths accumulate and return statistics in: float64 stays float64, every
    other floating dtype (float32, float16, bfloat16) computes in float32 (DESIGN.md §2)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last when ``x`` is laid out so (and not also plain contiguous), else contiguous:
    the layout the ops give their outputs and input gradients."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# ---------------------------------------------------------------- units and value ranges
# Checks of an input's convention that need its values on the host (one synchronisation): the
# callers run them once (the first call, the first batch), never per step.

#: a ground-truth median above this many metres is taken for another unit (indoor scenes in
#: millimetres have medians of 2000-4000, KITTI's unscaled 16-bit PNGs about 5000; outdoor
#: depths in metres stay well below)
DEPTH_UNIT_LIMIT_M = 100.0

_depth_units_checked = False


def depth_unit_problem(target: torch.Tensor, mask: torch.Tensor | None = None) -> str | None:
    """A sentence when ``target`` (depth, supposed metres) looks like another unit: the median of
    its valid pixels (finite, > 0, ``mask`` true) above :data:`DEPTH_UNIT_LIMIT_M`; else None."""
    valid = torch.isfinite(target) & (target > 0)
    if mask is not None:
        valid = valid & mask.reshape(valid.shape).bool()
    values = target.detach()[valid]
    if values.numel() == 0:
        return None
    median = float(values.float().median())
    if median <= DEPTH_UNIT_LIMIT_M:
        return None
    return (f"the ground truth's median over its valid pixels is {median:.4g}, but fastmde takes depth in metres "
            f"(a median above {DEPTH_UNIT_LIMIT_M:g} m): millimetres (divide by 1000) or a 16-bit depth PNG "
            f"read without its scale (NYU 1000, KITTI 256)?")


def check_depth_units(target: torch.Tensor, mask: torch.Tensor | None = None, *, force: bool = False) -> str | None:
    """:func:`depth_unit_problem` on the first call of the process (or with ``force``), else None.

    One check per process keeps the synchronisation off the training step; the trainer forces
    it on its first batch (and so takes the place of the loss's first-call check)."""
    global _depth_units_checked
    if _depth_units_checked and not force:
        return None
    _depth_units_checked = True
    return depth_unit_problem(target, mask)


def reset_depth_unit_check() -> None:
    """Let the next :func:`check_depth_units` check again (tests)."""
    global _depth_units_checked
    _depth_units_checked = False


def image_range_problem(images: torch.Tensor) -> str | None:
    """A sentence when float ``images`` meant to be RGB in 0-255 hold another convention: values
    all in (0, 1] (torchvision's ``ToTensor``), negative values (ImageNet-normalised), or values
    above 255 (16-bit); else None. One ``aminmax`` (one synchronisation)."""
    lo, hi = (float(v) for v in torch.aminmax(images.detach()))
    if lo != lo or hi != hi:
        return "the image holds NaN"
    if lo < -0.5:
        return (f"the image has negative values (min {lo:.3g}): ImageNet-normalised? fastmde's models take raw "
                f"RGB in 0-255 (build(..., normalize=True) applies the ImageNet mean/std itself)")
    if hi > 255.5:
        return f"the image has values above 255 (max {hi:.4g}): a 16-bit image? fastmde's models take 8-bit RGB in 0-255"
    if 0.0 < hi <= 1.0:
        return (f"the image's values all lie in [{lo:.3g}, {hi:.3g}]: a 0-1 image (torchvision's ToTensor)? "
                f"fastmde's models take RGB in 0-255: multiply by 255")
    return None


# ---------------------------------------------------------------- values quoted in messages

def brief_repr(value, limit: int = 80) -> str:
    """``repr(value)`` for a one-line message: the line breaks of a multi-line repr (a 2-D numpy
    array's or tensor's, a nested container's) and the indentation after them become one space,
    and a repr longer than ``limit`` characters is cut with ``...``. (A string's repr holds no
    line break: its own newlines are escaped, so its spaces are kept as they are.)"""
    text = repr(value)
    if "\n" in text:
        text = re.sub(r"\s*\n\s*", " ", text.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- numbers given as arguments
# Counts and pixel bounds come as Python ints, numpy scalars (an index read from an array) or
# whole floats (a size computed as 0.4 * 480); bools are refused: True is not a count of pixels.

def whole_number(value) -> int | None:
    """``value`` as an ``int`` when it is a whole real number, else None.

    Whole: an integer of any kind (``int``, numpy integers, a 0-d integer tensor: anything with
    ``__index__``), or a finite real (``float``, numpy floats, ``fractions.Fraction``, a 0-d
    floating tensor) with no fractional part. Not whole: bools, 0.9, NaN, infinities, strings."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and (value.dtype == torch.bool or value.is_meta)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or not value.is_floating_point():
            return None
        value = value.item()
    if not isinstance(value, numbers.Real):
        return None
    number = float(value)
    if not math.isfinite(number) or not number.is_integer():
        return None
    return int(number)


def integer_argument(value, name: str, *, minimum: int | None = None, odd: bool = False) -> int:
    """``value`` as an ``int`` for an argument that is a count or a size (channels, a kernel size):
    a Python or numpy integer or a 0-d integer tensor (anything with ``__index__``), never a bool
    (``True``, ``numpy.True_``, a bool tensor) or a float. TypeError naming ``name`` for another
    type; ValueError, naming ``name`` and the value, below ``minimum`` or, with ``odd``, for an
    even number (a "same" convolution's kernel size: padding k // 2 keeps the size only for odd k)."""
    if bool_like(value) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer, got the bool {brief_repr(value)}")
    if isinstance(value, torch.Tensor) and (value.dim() != 0 or value.is_meta):
        # a one-element (1,) tensor has __index__ too: a shape-(1,) count is a slip, not a number
        what = "a meta tensor (no value)" if value.dim() == 0 else f"a tensor of shape {tuple(value.shape)}"
        raise TypeError(f"{name} must be an integer, got {what}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {brief_repr(value)} ({type(value).__name__})") from None
    if (minimum is not None and number < minimum) or (odd and number % 2 != 1):
        kind = "odd integer" if odd else "integer"
        wanted = (f"an {kind}" if minimum is None else f"a positive {kind}" if minimum == 1
                  else f"an {kind} >= {minimum}")
        raise ValueError(f"{name} must be {wanted}, got {number}")
    return number


def real_argument(value, name: str) -> float:
    """``float(value)`` for an argument that is a quantity (metres, a weight, a factor): any real
    number (numpy's too, a symbolic float under torch.compile), never a bool or a string (True
    would read as 1.0, "0.5" as 0.5). TypeError naming ``name``; the caller checks the range."""
    if (isinstance(value, (bool, str, bytes, complex)) or bool_like(value)
            or (isinstance(value, torch.Tensor) and (value.dtype == torch.bool or value.is_complex()))):
        raise TypeError(f"{name} must be a number, got {brief_repr(value)} ({type(value).__name__})")
    try:
        return float(value)
    except (TypeError, ValueError):   # a numpy complex, a list, None...
        raise TypeError(f"{name} must be a real number, got {brief_repr(value)} ({type(value).__name__})") from None
    except OverflowError:             # an int beyond float's range (10**400; its repr may be refused)
        shown = f"an integer of {value.bit_length()} bits" if isinstance(value, int) else brief_repr(value, 40)
        raise ValueError(f"{name} must be a finite number, got {shown}, beyond float's range") from None


def bool_like(value) -> bool:
    """Whether ``value`` is a Python or numpy bool (numpy's ``bool_``, named ``bool`` since numpy 2,
    recognised without importing numpy)."""
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))


def bool_argument(value, name: str, *, allow_none: bool = False) -> bool | None:
    """``value`` for a switch: ``True`` / ``False`` (numpy bools too), or None with ``allow_none``;
    TypeError naming ``name`` for anything else (a string "False" would read as true)."""
    if value is None and allow_none:
        return None
    if bool_like(value):
        return bool(value)
    allowed = "True, False or None" if allow_none else "True or False"
    raise TypeError(f"{name} must be {allowed}, got {brief_repr(value)} ({type(value).__name__})")


# ---------------------------------------------------------------- weights read from a file

def damaged_weights_message(own: dict, weights: dict, names: dict | None = None) -> str | None:
    """What makes ``weights`` a damaged file for a model whose ``state_dict()`` is ``own``, in one
    line, or None: ``"2 of its weights hold complex numbers where the model's are real: a is
    complex64 (the model's is float32), ..."`` (the first three; :func:`complex_weights`), likewise
    true/false or integer values where the model's are floating (:func:`non_floating_weights`)
    and tensors that are not plain dense ones (:func:`unusual_tensors`: quantized, sparse, meta);
    the caller names the file in front."""
    parts = []
    for found, what in ((complex_weights(own, weights, names), "complex numbers where the model's are real"),
                        (non_floating_weights(own, weights, names),
                         "true/false or integer values where the model's are floating"),
                        (unusual_tensors(own, weights, names), "no plain dense values")):
        if found:
            n, more = len(found), f" (+{len(found) - 3} more)" if len(found) > 3 else ""
            parts.append(f"{n} of its weights {'hold' if n > 1 else 'holds'} {what}: {', '.join(found[:3])}{more}")
    return "; ".join(parts) or None


def _kind_mismatches(own: dict, weights: dict, names: dict | None, wrong) -> list[str]:
    names = names or {}
    return [f"{names.get(k, k)} is {str(weights[k].dtype).replace('torch.', '')} (the model's is "
            f"{str(own[k].dtype).replace('torch.', '')})"
            for k in own if isinstance(weights.get(k), torch.Tensor) and isinstance(own[k], torch.Tensor)
            and wrong(weights[k], own[k])]


def complex_weights(own: dict, weights: dict, names: dict | None = None) -> list[str]:
    """``"key is complex64 (the model's is float32)"`` for each tensor of ``weights`` that holds
    complex numbers where the same key of ``own`` (a model's ``state_dict()``) is real; ``names``
    maps a key to the name shown (the file's own). ``load_state_dict`` would copy it with only
    torch's "discards the imaginary part" warning, giving a model that is not the one saved, so a
    file holding one is damaged. (Other dtype changes load faithfully: a float16 or float64 file
    into float32 weights, whole numbers into an integer buffer.)"""
    return _kind_mismatches(own, weights, names, lambda saved, model: saved.is_complex() and not model.is_complex())


def non_floating_weights(own: dict, weights: dict, names: dict | None = None) -> list[str]:
    """``"key is bool (the model's is float32)"`` for each bool or integer tensor of ``weights``
    where the same key of ``own`` is floating: ``load_state_dict`` copies it as whole numbers
    without a word (a 0/1 mask saved in a weight's place, a quantised export), a model that was
    never trained. (An integer buffer such as BatchNorm's ``num_batches_tracked`` is integer in
    the model too.)"""
    return _kind_mismatches(own, weights, names, lambda saved, model: model.is_floating_point() and not (
        saved.is_floating_point() or saved.is_complex() or saved.is_quantized))


def unusual_tensors(own: dict, weights: dict, names: dict | None = None) -> list[str]:
    """``"key is a quantized tensor"`` (or sparse, or meta: no values) for each tensor of
    ``weights`` that is not a plain dense one where ``own`` has a tensor: ``load_state_dict``
    stops on these with a multi-line error, or, for a meta tensor, copies nothing."""
    names = names or {}
    found = []
    for k in own:
        t = weights.get(k)
        if not isinstance(t, torch.Tensor) or not isinstance(own[k], torch.Tensor):
            continue
        kind = ("quantized" if t.is_quantized else "sparse" if t.layout != torch.strided
                else "meta (no values)" if t.is_meta else None)
        if kind:
            found.append(f"{names.get(k, k)} is a {kind} tensor")
    return found


def nonfinite_tensors(module: torch.nn.Module, *, buffers: str = "all") -> list[str]:
    """The names of ``module``'s floating (or complex) parameters and buffers holding NaN or an
    infinity: the weights of a diverged run, whose every prediction is NaN. One pass over the
    weights (a host synchronisation per tensor on a GPU): for a model just loaded, not per step.

    ``buffers``: ``"all"`` (the loaders: a fastmde model's buffers are normalisation statistics
    and constants it needs finite) or ``"statistics"``: only the running statistics of the
    normalisation layers (BatchNorm's / InstanceNorm's ``running_mean``, ``running_var``), the
    buffers training writes besides the parameters; another buffer is a constant the module
    registered itself, where -inf or inf can be meant (an attention-style mask filled with -inf,
    an unbounded clamp): ``fastmde.export`` of any module."""
    if buffers not in ("all", "statistics"):
        raise ValueError(f"buffers must be 'all' or 'statistics', got {buffers!r}")
    named = list(module.named_parameters())
    if buffers == "all":
        named += list(module.named_buffers())
    else:
        for prefix, m in module.named_modules():
            if isinstance(m, torch.nn.modules.batchnorm._NormBase):
                named += [(f"{prefix}.{key}" if prefix else key, t) for key in ("running_mean", "running_var")
                          if isinstance(t := getattr(m, key, None), torch.Tensor)]
    return [name for name, t in named
            if (t.is_floating_point() or t.is_complex()) and t.device.type != "meta"
            and not bool(torch.isfinite(t.detach()).all())]


def nonfinite_message(what: str, names: list[str]) -> str:
    """``"<what>: 3 weight tensors hold NaN/inf (net.x.weight, +2 more; a diverged run?)"`` for
    the ``names`` :func:`nonfinite_tensors` found; the caller adds the consequence."""
    n = len(names)
    more = f", +{n - 1} more" if n > 1 else ""
    return f"{what}: {n} weight tensor{'s hold' if n != 1 else ' holds'} NaN/inf ({names[0]}{more}; a diverged run?)"
