"""Export a depth model to ONNX or a ``torch.export`` program (``.pt2``), verified before it is written.

::

    fastmde.export(model, "depth.onnx")                   # ONNX, opset 18, dynamic batch/height/width
    fastmde.export(model, "depth.pt2")                    # torch.export.save of an ExportedProgram
    fastmde export runs/train/best.pt --out depth.onnx    # the same from the command line

The exported graph takes ``image``: float32 (batch, 3, height, width) RGB in 0-255 at the
input's size and returns ``depth``: float32 (batch, 1, height, width) in metres, the whole
model included (the intermediate-resolution resize and the bicubic upscale). It is traced from
:func:`fastmde.models.plain.plain_copy`: the up-projection blocks as their reference
composition with BatchNorm folded, so it holds standard operators only (no ``fastmde::`` op;
checked) and runs in onnxruntime or in PyTorch without fastmde.

Steps: ``torch.export.export`` of the copy (batch, height and width as ``torch.export.Dim``;
traced with a batch of 2 so that batch 1 is not special-cased); for ONNX, ``torch.onnx.export``
of that program (the ``torch.export``-based exporter, ``dynamo=True``: the only one that is
not deprecated in torch 2.13; it needs ``onnxscript``) at opset :data:`OPSET`; the file is
written to a temporary name, loaded back (``onnxruntime`` CPU, or ``torch.export.load``), run
on random 0-255 images and compared with the model; only a match (relative difference
``max |exported - model| / max |model|`` within ``tolerance``) is renamed onto the target
(:mod:`fastmde._atomic`), so a refused export never leaves a file and never replaces one.

Sizes: the height and width are dynamic when one graph is right at every size (every fastmde
variant with an internal size). A model whose graph is only valid for some sizes (one built
with ``size=None``, whose network runs at the input's size: its up-sampling and layer shapes
assume feature maps of at least 2x2) is exported as a ``.pt2`` with dynamic sizes whose
conditions ``torch.export`` checks when the program runs, and as ONNX at the fixed example
size (an ONNX runtime cannot check such conditions; it refuses other sizes itself). A wrapper
with ``aspect="keep"`` (internal size from float rounding) is exported at the fixed example size.

Refused (:class:`ExportError`, nothing written): BatchNorm without running statistics, a
``fastmde::`` or other non-ATen op left in the graph, an ONNX node outside the standard
domain, a model ``torch.export`` cannot trace, an export that does not match the model, a
diverged model (NaN or inf in a parameter or a BatchNorm running statistic), a model that
predicts no finite value. A buffer the module registered itself may hold -inf or inf (an
attention-style mask): it is exported as it is, and the verification then asks for the same
infinities (and NaNs) at the same pixels as the model's, and the finite values within tolerance.
"""
from __future__ import annotations

import math

import contextlib
import copy
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ._checks import (bool_argument, brief_repr, integer_argument, nonfinite_message, nonfinite_tensors,
                      real_argument)

FORMATS = ("onnx", "pt2")
EXTENSIONS = {".onnx": "onnx", ".pt2": "pt2"}
# torch.onnx's translation library emits opset 18 natively (TORCHLIB_OPSET), so 18 needs no
# version conversion; it has every operator these models use (Resize with cubic + align_corners,
# GatherND, Where, ...) and onnxruntime >= 1.14, TensorRT >= 8.6 and OpenVINO read it.
OPSET = 18
TOLERANCE = 1e-4
EXTRA = "pip install 'fastmde[export]'"
INPUT_NAME, OUTPUT_NAME = "image", "depth"


class ExportError(ValueError):
    """The model cannot be exported faithfully, or the export did not match it (nothing written)."""


class MissingDependencyError(ImportError, ValueError):
    """An optional package of the ``export`` extra is not installed."""


def require(*modules: str):
    """Import ``modules`` (e.g. ``"onnx", "onnxruntime"``) or raise :class:`MissingDependencyError`
    naming the missing ones and the extra that installs them."""
    import importlib

    loaded, missing = [], []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(
            f"ONNX export needs {', '.join(missing)} (not installed): {EXTRA} "
            "(onnx, onnxruntime, onnxscript)")
    return loaded


# ---------------------------------------------------------------- report


@dataclass
class Check:
    """One verification run: input shape, max |exported - model| (metres), that over max |model|."""

    shape: tuple
    max_abs: float
    relative: float


@dataclass
class ExportReport:
    """What :func:`export` wrote: ``path``, ``format``, ``opset`` (ONNX), the valid ``sizes``
    (``{"batch", "height", "width"}``: ``"1.."``, ``"17.."`` or a fixed number), the
    verification runs ``checks`` and ``notes`` (why a dimension is fixed, ...)."""

    path: str
    format: str
    model: str
    opset: int | None = None
    sizes: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    tolerance: float = TOLERANCE
    notes: list = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.checks), default=0.0)

    @property
    def relative(self) -> float:
        return max((c.relative for c in self.checks), default=0.0)

    def lines(self) -> list[str]:
        kind = f"ONNX opset {self.opset}" if self.format == "onnx" else "torch.export program (.pt2)"
        dims = ", ".join(f"{k} {v}" for k, v in self.sizes.items())
        out = [f"export: {self.model} -> {self.path} ({kind})",
               f"export: input '{INPUT_NAME}' float32 (batch, 3, height, width) RGB 0-255; output "
               f"'{OUTPUT_NAME}' float32 (batch, 1, height, width) metres; sizes: {dims}"]
        out += [f"export: note: {n}" for n in self.notes]
        for c in self.checks:
            out.append(f"export: check {'x'.join(map(str, c.shape))}: max |difference| {c.max_abs:.3g} m, "
                       f"relative {c.relative:.3g}")
        out.append(f"export: verified: max difference {self.max_abs:.3g} m (relative {self.relative:.3g} "
                   f"<= {self.tolerance:g})")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


# ---------------------------------------------------------------- tracing


@contextlib.contextmanager
def _quiet_exporters():
    """The exporters' progress lines and warnings (missing torchvision ops, deprecations) are
    not the user's business; errors still propagate."""
    names = ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes",
             "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_lines(exc: BaseException, n: int = 3) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return " ".join(lines[:n])[:600] or type(exc).__name__


def _images(batch: int, size, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *size, generator=g) * 255


def _input_ranges(program) -> dict:
    """``{"batch", "height", "width"}`` -> ``(lo, hi)`` (hi None = unbounded) or an int (fixed)."""
    node = next(n for n in program.graph.nodes if n.op == "placeholder"
                and n.name in program.graph_signature.user_inputs)
    out = {}
    for name, dim in zip(("batch", None, "height", "width"), node.meta["val"].shape):
        if name is None:
            continue
        if isinstance(dim, torch.SymInt):
            vr = program.range_constraints.get(dim.node.expr)
            lo = int(vr.lower) if vr is not None else 1
            hi = int(vr.upper) if vr is not None and vr.upper.is_Integer else None   # else int_oo
            out[name] = (lo, hi)
        else:
            out[name] = int(dim)
    return out


def _describe(value) -> str:
    if isinstance(value, int):
        return f"{value} (fixed)"
    lo, hi = value
    return f"{lo}.." + ("" if hi is None else str(hi))


def _trace(plain: nn.Module, example: torch.Tensor, dynamic_size, want_guard_free: bool):
    """``(program, notes)``: ``torch.export.export`` of ``plain`` with a dynamic batch and, as
    ``dynamic_size`` asks, dynamic height/width (see :func:`export`)."""
    from torch.export import Dim

    notes = []
    batch = Dim("batch", min=1)
    attempts = []
    reasons = [m.fixed_size_reason for m in plain.modules() if getattr(m, "fixed_size_reason", None)]
    if reasons and dynamic_size is True:
        raise ExportError(f"the model cannot be exported with a dynamic height and width: {reasons[0]}; export at a "
                          "fixed size instead (dynamic_size=False, fastmde export --fixed-size)")
    if reasons and dynamic_size is None:
        dynamic_size = False
        notes.append(f"height and width fixed at the example size ({reasons[0]})")
    if dynamic_size is not False:
        attempts.append(("every size", {0: batch, 2: Dim("height", min=1), 3: Dim("width", min=1)}))
        if dynamic_size is None and not want_guard_free:
            attempts.append(("checked sizes", {0: batch, 2: Dim.AUTO, 3: Dim.AUTO}))
    if dynamic_size is not True:
        attempts.append(("fixed size", {0: batch}))
    errors = []
    for what, shapes in attempts:
        try:
            with _quiet_exporters():
                program = torch.export.export(plain, (example,), dynamic_shapes=(shapes,))
        except Exception as exc:  # constraint violations, data-dependent control flow, unsupported code
            errors.append(f"{what}: {_first_lines(exc)}")
            continue
        if errors and what == "checked sizes":
            notes.append("height and width are dynamic with conditions the program checks when it runs "
                         f"(one graph is not right at every size: {errors[0]})")
        elif errors:
            notes.append(f"height and width fixed at the example size ({errors[0]})")
        return program, notes
    if dynamic_size is True:
        raise ExportError("the model cannot be exported with a dynamic height and width (its graph is not "
                          f"the same at every input size): {errors[0]}; export at a fixed size instead "
                          "(dynamic_size=False, fastmde export --fixed-size)")
    raise ExportError(f"torch.export cannot trace the model: {errors[-1]}")


def _foreign_ops(program) -> list[str]:
    """Operators of ``program`` outside ATen (a ``fastmde::`` op, another library's op)."""
    found = set()
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        namespace = getattr(target, "namespace", None)
        if isinstance(target, torch._ops.OpOverload) and namespace not in ("aten", "prims"):
            found.add(target.name())
    return sorted(found)


# ---------------------------------------------------------------- writers and runners


def _write_pt2(program, path: str, meta: dict) -> None:
    # through file objects: torch.export's archive code wants a name ending in .pt2 or a buffer,
    # and the temporary file's name ends in .tmp
    with open(path, "wb") as f:
        torch.export.save(program, f, extra_files={"fastmde.json": _json(meta)})


def _json(meta: dict) -> str:
    import json

    return json.dumps(meta, indent=1, sort_keys=True)


def _run_pt2(path: str):
    with open(path, "rb") as f:
        loaded = torch.export.load(f).module()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(x)

    return run


def _write_onnx(program, example, path: str, opset: int, dynamic: dict, meta: dict) -> None:
    with _quiet_exporters():
        onnx_program = torch.onnx.export(
            program, (example,), dynamo=True, opset_version=opset, dynamic_shapes=(dynamic,),
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], optimize=True, verbose=False)
    model = onnx_program.model
    domains = {node.domain for node in model.graph.all_nodes()} | {
        node.domain for fn in model.functions.values() for node in fn}
    domains -= {"", "ai.onnx"}
    if domains:
        raise ExportError(f"the ONNX graph uses operators outside the standard domain "
                          f"({', '.join(sorted(domains))}); nothing was written")
    model.metadata_props.update({f"fastmde.{k}": str(v) for k, v in meta.items()})
    onnx_program.save(path, external_data=False)


def _run_onnx(path: str):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])

    return run


def _write(format: str, program, example, tmp: str, opset: int, meta: dict, report: ExportReport):
    """Write ``program`` to ``tmp`` in ``format`` and load it back: ``(input ranges, runner)``;
    the valid sizes go into ``report.sizes`` and the file's metadata."""
    ranges = _input_ranges(program)
    report.sizes = {k: _describe(v) for k, v in ranges.items()}
    meta = {**meta, "sizes": ", ".join(f"{k} {v}" for k, v in report.sizes.items())}
    if format == "onnx":
        from torch.export import Dim

        dims = {0: Dim("batch", min=1)}
        if not isinstance(ranges["height"], int):
            dims.update({2: Dim("height", min=1), 3: Dim("width", min=1)})
        _write_onnx(program, example, tmp, opset, dims, meta)
        return ranges, _run_onnx(tmp)
    _write_pt2(program, tmp, meta)
    return ranges, _run_pt2(tmp)


def _compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """``(max |out - ref|, that over max |ref|)`` over the pixels where both are finite; ``(inf,
    inf)`` unless the others agree exactly: NaN where ``ref`` has NaN, and the same infinity
    (+inf for +inf: a model may predict inf on purpose, e.g. through a mask buffer)."""
    if tuple(out.shape) != tuple(ref.shape):
        raise ExportError(f"the exported model returns shape {tuple(out.shape)} where the model returns "
                          f"{tuple(ref.shape)}")
    out, ref = out.double(), ref.double()
    same_nan = torch.equal(torch.isnan(out), torch.isnan(ref))
    finite = torch.isfinite(ref) & torch.isfinite(out)
    infinite = torch.isinf(ref)
    if (not same_nan or not torch.equal(torch.isfinite(out), torch.isfinite(ref))
            or not torch.equal(out[infinite], ref[infinite])):     # -inf where the model has +inf
        return float("inf"), float("inf")
    diff = float((out - ref)[finite].abs().max()) if finite.any() else 0.0
    scale = float(ref[finite].abs().max()) if finite.any() else 0.0
    return diff, (diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))


def _check_sizes(ranges: dict, size) -> list[tuple[int, int, int]]:
    """Verification inputs (batch, H, W): batch 2 at the example size, and batch 1 at a second
    size where height/width are dynamic (else at the example size)."""
    h, w = size

    def other(value, dim):
        r = ranges[dim]
        if isinstance(r, int):
            return r
        lo, hi = r
        candidate = value * 3 // 4 + (1 if dim == "height" else 3)
        candidate = max(candidate, lo)
        return min(candidate, hi) if hi is not None else candidate

    return [(2, h, w), (1, other(h, "height"), other(w, "width"))]


@contextlib.contextmanager
def _evaluated(model: nn.Module):
    """``model`` in eval mode on the CPU in float32, the reference the export is compared with:
    the model itself (each module's training flag restored afterwards) when its parameters are
    float32 CPU tensors already, else a copy."""
    on_cpu = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters()) and all(
        b.device.type == "cpu" and b.dtype not in (torch.float16, torch.bfloat16) for b in model.buffers())
    if not on_cpu:
        yield copy.deepcopy(model).cpu().float().eval()
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _model_name(model: nn.Module) -> str:
    """``unet34-k3-1x1 (internal 288x384)``: the variant (else the network's class) and internal size."""
    net = getattr(model, "net", None)
    name = getattr(model, "fastmde_variant", None) or type(net if isinstance(net, nn.Module) else model).__name__
    inner = getattr(model, "size", None)
    return name + (f" (internal {inner[0]}x{inner[1]})" if isinstance(inner, tuple) else "")


# ---------------------------------------------------------------- the entry point


def check_options(format: str, size, opset, tolerance, *, names=None) -> tuple[tuple[int, int], int, float]:
    """Refuse a bad ``format``, ``size``, ``opset`` or ``tolerance`` (``names`` maps them to the
    command line's flags) and a missing ONNX package; returns ``(size as (H, W), opset as an int,
    tolerance as a float)``. ``opset`` is any whole number (numpy's, a 0-d integer tensor), never
    a bool, float or string (TypeError), from 18 for ONNX (ValueError; a ``.pt2`` has no opset);
    ``tolerance`` a positive real number (numpy's too; ValueError). :func:`export` and ``fastmde
    export`` (before the checkpoint is read) share it."""
    from ._text import parse_size

    names = {"format": "format", "size": "export size", "opset": "opset", "tolerance": "tolerance", **(names or {})}
    if not isinstance(format, str) or format not in FORMATS:
        raise ValueError(f"{names['format']} must be one of {', '.join(FORMATS)}, got {brief_repr(format)}")
    size = parse_size(size, what=names["size"])
    try:
        value = real_argument(tolerance, names["tolerance"])   # numpy floats and 0-d tensors too, never True
    except TypeError:
        value = None
    if value is None or not 0 < value < math.inf:   # NaN fails the comparison; inf would verify nothing
        raise ValueError(f"{names['tolerance']} must be a positive finite number, got {brief_repr(tolerance)}")
    opset = integer_argument(opset, names["opset"])           # numpy ints too, never True or 18.0
    if format == "onnx":
        from torch.onnx._constants import ONNX_MAX_OPSET

        if not OPSET <= opset <= ONNX_MAX_OPSET:
            raise ValueError(f"{names['opset']} must be an integer from {OPSET} to {ONNX_MAX_OPSET} (torch.onnx's "
                             f"exporter emits opset {OPSET} and newer), got {opset!r}")
        require("onnx", "onnxruntime", "onnxscript")
    return size, opset, value


def export(model: nn.Module, path, format: str | None = None, *, size=(480, 640), dynamic_size: bool | None = None,
           opset: int = OPSET, tolerance: float = TOLERANCE, quiet: bool = False) -> ExportReport:
    """Export ``model`` (image -> depth) to ``path`` as ONNX or a ``torch.export`` program, verified.

    Args:
        model: a fastmde model (``fastmde.load``, ``fastmde.models.build``, ``from_external``) or
            any module mapping a float (B, 3, H, W) image to one tensor; exported in eval mode on
            the CPU in float32 (the model itself is not changed).
        path: the file to write (replaced only by a verified export).
        format: ``"onnx"`` or ``"pt2"``; None takes it from ``path``'s extension.
        size: (H, W) of the example input the graph is traced and verified with (480x640, NYU).
        dynamic_size: None (default): height and width dynamic where the model allows (see the
            module docstring), else fixed at ``size`` (a note says why); True: dynamic or
            refused; False: fixed at ``size``. The batch is always dynamic.
        opset: ONNX opset (18 and newer): a whole number (numpy's or a 0-d integer tensor too).
        tolerance: the largest accepted ``max |exported - model| / max |model|``.
        quiet: do not print the report (stderr).

    Returns an :class:`ExportReport` (path, format, opset, valid sizes, the verification runs).

    Raises:
        MissingDependencyError: ``onnx`` / ``onnxruntime`` / ``onnxscript`` missing (ONNX only;
            ``pip install 'fastmde[export]'``).
        ExportError: the model cannot be exported faithfully, or the exported file does not
            match it; nothing is written and an existing ``path`` is left as it was.
        ExportError (a ValueError) too for a model whose parameters or BatchNorm running
            statistics hold NaN or inf (a diverged run: its export would predict NaN), or whose
            prediction of the example holds no finite value (nothing to verify). Other buffers
            may hold inf or -inf (a mask a module registered): exported as they are.
        ValueError: a bad ``format``, ``size``, ``opset`` or ``tolerance``.
        TypeError: an ``opset`` that is a bool, a float or a string.
    """
    from .models.plain import PlainExportError, plain_copy
    from .patch import unpatch

    path = os.fspath(path)
    if format is None:
        format = EXTENSIONS.get(os.path.splitext(path)[1].lower())
        if format is None:
            raise ValueError(f"cannot tell the format from {path!r}: give format='onnx' or 'pt2' "
                             "(or a .onnx / .pt2 file name)")
    size, opset, tolerance = check_options(format, size, opset, tolerance)
    dynamic_size = bool_argument(dynamic_size, "dynamic_size", allow_none=True)   # "no" is no switch
    quiet = bool_argument(quiet, "quiet")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # a diverged run's weights (parameters, BatchNorm statistics): every prediction NaN; a buffer the
    # module registered itself may hold -inf or inf on purpose (a mask), and is exported as it is
    broken = nonfinite_tensors(model, buffers="statistics")
    if broken:
        source = getattr(model, "fastmde_checkpoint", None)
        what = f"checkpoint {source!r}" if isinstance(source, str) else "the model"
        raise ExportError(f"{nonfinite_message(what, broken)}: its export would predict NaN everywhere; "
                          "nothing was written")

    try:
        plain = plain_copy(model)
    except PlainExportError as exc:
        raise ExportError(f"cannot export the model faithfully: {exc}") from None
    unpatch(plain)   # blocks of other projects adopted by fastmde.patch: their own forward again
    with _evaluated(model) as reference:
        return _export(model, reference, plain, path, format, size, dynamic_size, opset, tolerance, quiet)


def _export(model, reference, plain, path, format, size, dynamic_size, opset, tolerance, quiet) -> ExportReport:
    from ._atomic import atomic_path

    example = _images(2, size, seed=0)
    with torch.no_grad():
        out = reference(example)
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[:2] != (2, 1):
        what = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ExportError(f"a depth model returns one (B, 1, H, W) tensor for a (B, 3, H, W) image; this one "
                          f"returns {what} for {tuple(example.shape)}")
    if not bool(torch.isfinite(out).any()):
        # NaN everywhere (NaN/inf in a buffer?) would verify as NaN = NaN: an export of nothing
        raise ExportError(f"the model's prediction of the {'x'.join(map(str, example.shape))} example holds no finite "
                          "value (NaN or inf at every pixel: a buffer holding NaN?): nothing was written")

    program, notes = _trace(plain, example, dynamic_size, want_guard_free=format == "onnx")
    foreign = _foreign_ops(program)
    if foreign:
        raise ExportError(f"the traced graph still calls {', '.join(foreign)}, which plain PyTorch and ONNX "
                          "runtimes do not have (a custom block fastmde does not know how to write in standard "
                          "operators?); nothing was written")
    name = _model_name(model)
    report = ExportReport(path=path, format=format, model=name, opset=opset if format == "onnx" else None,
                          tolerance=tolerance, notes=notes)
    meta = {"model": name, "input": f"{INPUT_NAME}: float32 (batch, 3, height, width) RGB 0-255",
            "output": f"{OUTPUT_NAME}: float32 (batch, 1, height, width) depth in metres"}
    source = getattr(model, "fastmde_source", None)
    if isinstance(source, dict) and source.get("source"):
        meta["source"] = source["source"]

    with atomic_path(path) as tmp:
        try:
            ranges, run = _write(format, program, example, tmp, opset, meta, report)
        except (ExportError, MissingDependencyError):
            raise
        except Exception as exc:
            if dynamic_size is not None or isinstance(_input_ranges(program)["height"], int):
                raise ExportError(f"exporting to {format} failed: {_first_lines(exc)}; nothing was written") from None
            # a dynamic program the writer cannot take (a size expression it cannot serialise): fixed size
            report.notes.append(f"height and width fixed at the example size (the {format} writer could not take "
                                f"the dynamic graph: {_first_lines(exc, 1)})")
            program, _ = _trace(plain, example, False, want_guard_free=True)
            try:
                ranges, run = _write(format, program, example, tmp, opset, meta, report)
            except Exception as exc:
                raise ExportError(f"exporting to {format} failed: {_first_lines(exc)}; nothing was written") from None
        for i, (b, h, w) in enumerate(_check_sizes(ranges, size)):
            x, ref = (example, out) if (b, h, w) == (2, *size) else (_images(b, (h, w), seed=1 + i), None)
            if ref is None:
                with torch.no_grad():
                    ref = reference(x)
            try:
                got = run(x)
            except Exception as exc:
                raise ExportError(f"the exported model fails on a {b}x3x{h}x{w} input: {_first_lines(exc)}; "
                                  "nothing was written") from None
            max_abs, relative = _compare(got, ref)
            report.checks.append(Check((b, 3, h, w), max_abs, relative))
            if not relative <= tolerance:
                raise ExportError(
                    f"the exported model does not match the model on a {b}x3x{h}x{w} input: max |difference| "
                    f"{max_abs:.3g} m, relative {relative:.3g} > tolerance {tolerance:g}; nothing was written")
    if not quiet:
        print(str(report), file=sys.stderr)
    return report


# ---------------------------------------------------------------- CLI


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help=("fastmde checkpoint, run directory, or a checkpoint of the paper "
                                            "authors' or Hu et al.'s code"))
    parser.add_argument("--out", required=True, help="the file to write (.onnx or .pt2); missing folders are created")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="onnx (onnxruntime, TensorRT, ...) or pt2 (torch.export program); default: from --out")
    parser.add_argument("--size", default="480x640",
                        help="HxW of the example input the graph is traced and verified with (default 480x640)")
    parser.add_argument("--internal-size", default=None,
                        help=("HxW the network runs at inside, each side >= 8 as train's --size (default: the "
                              "checkpoint's, e.g. 288x384); the paper's Table 2 trades accuracy for speed with it"))
    parser.add_argument("--fixed-size", action="store_true",
                        help="fix height and width at --size (default: dynamic where the model allows)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help="largest accepted max|exported - model| / max|model| (default 1e-4)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    from ._outputs import check_output_file
    from ._text import parse_internal_size
    from .engine.checkpoint import check_checkpoint_argument, load_checkpoint_argument

    implied = EXTENSIONS.get(os.path.splitext(args.out)[1].lower())
    format = args.format or implied
    if format is None:
        raise ValueError(f"cannot tell the format from --out {args.out!r}: give --format onnx or pt2")
    if implied is not None and format != implied:
        raise ValueError(f"--format {format} contradicts --out {args.out!r} (a .{implied} name): name the file "
                         f".{format} or drop --format")
    check_output_file(args.out, "--out")      # missing folders are created when the export is written
    if os.path.exists(args.out) and not args.overwrite:
        raise FileExistsError(f"{args.out!r} already exists; pass --overwrite to replace it (nothing was written)")
    # every option checked before the checkpoint is read: --internal-size by train's --size rule
    check_options(format, args.size, args.opset, args.tolerance,
                  names={"format": "--format", "size": "--size", "opset": "--opset", "tolerance": "--tolerance"})
    internal = None if args.internal_size is None else parse_internal_size(args.internal_size, what="--internal-size")
    check_checkpoint_argument(args.checkpoint, "checkpoint")
    model = load_checkpoint_argument(args.checkpoint, "checkpoint", warn_nonfinite=False)   # export() refuses it
    if internal is not None:
        from .models.resolution import IntermediateResolution

        if not isinstance(model, IntermediateResolution):
            raise ValueError(f"--internal-size: this checkpoint's model ({type(model).__name__}) has no internal size")
        model.size = internal
    export(model, args.out, format, size=args.size, dynamic_size=False if args.fixed_size else None,
           opset=args.opset, tolerance=args.tolerance)
    return 0
