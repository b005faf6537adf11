"""``fastmde.patch(model)``: the fused up-projection for up-projection blocks of any depth model.

Depth projects write the up-projection block (Laina et al.'s, as Hu et al. and the paper's
authors use it) as their own ``nn.Module``::

    [cat(x, skip) ->] [conv -> BN -> ReLU ->] bilinear upsample
        -> {conv_a -> BN -> ReLU -> conv_b -> BN} + {conv_s -> BN} -> ReLU

(Hu et al.'s ``_UpProjection`` in ``JunjH/Revisiting_Single_Depth_Estimation``
``models/modules.py``, upsampled to a ``size`` argument; the paper authors' ``UpProjection`` in
``thatcherfreeman/CS231A-FinalProject`` ``models.py``, upsampled by ``self.scale`` after
concatenating an optional skip tensor, with or without the 1x1 ``conv0``/``bn0`` reduction; in
both, ``conv1``/``bn1`` -> ``conv1_2``/``bn1_2`` is the branch and ``conv2``/``bn2`` the
shortcut). :func:`patch` walks a model and gives every such block the forward of
:func:`fastmde.ops.up_projection` (the upsampled tensor never written; the BatchNorms folded
into the convs where the Triton kernels serve), reading the block's own parameters and buffers:
the ``state_dict`` (keys and values), the parameters an optimiser holds and the BatchNorm
running statistics it updates are the block's own, unchanged. :func:`unpatch` restores the
original forwards. A patched model pickles (``torch.save(model)``, then ``torch.load(...,
weights_only=False)`` gives it back patched) and deep-copies with its patch.

Recognition is structural, not by class name: the block's ``forward`` is traced with
``torch.fx`` (child modules as leaves) and its graph must be exactly the structure above: which
conv is the shortcut is read from the data flow, and every conv must be an ``nn.Conv2d`` with
stride 1, padding k // 2 (k odd), no dilation, one group, zero padding and no bias; every norm
an ``nn.BatchNorm2d``; the upsample bilinear (``F.interpolate``/``F.upsample`` or
``nn.Upsample``) to a ``size`` argument, a fixed size or a scale factor. A block that traces to
something else (a transposed-conv up-sampler, an unpooling one) is left alone; a block that
looks like an up-projection (an upsample and three or more convs, or the known attribute
names) but differs is reported in ``skipped`` with the reason. ``fastmde.nn.UpProjection``
already runs the fused ops and is reported as skipped.

A patched forward accepts the original's arguments (positional or by name). Calls the fused
path cannot reproduce exactly fall back to the original forward: a non-integer scale factor
with ``align_corners=False`` whose output size is not an exact multiple (PyTorch then maps
coordinates by the scale factor, the kernels by the sizes).
"""
from __future__ import annotations

import functools
import inspect
import math
import operator
import types
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .nn.banded_conv import BandedConv2d
from .nn.up_projection import UpProjection, check_block_inputs
from .ops.up_projection import output_size
from .ops.up_projection_block import UpProjectionLayers, up_projection

__all__ = ["PatchReport", "patch", "unpatch"]

_PLAN_ATTR = "_fastmde_patch"
_INTERPOLATE = inspect.signature(F.interpolate)
# The attribute names of the two known codebases' blocks (used for kinds and to report blocks
# that look like theirs but could not be patched).
_FAMILY_NAMES = {"conv1", "bn1", "conv1_2", "bn1_2", "conv2", "bn2"}


@dataclass
class PatchReport:
    """What :func:`patch` did: ``replaced`` maps each patched block's module path to its kind
    (``"hu2019"``, ``"freeman2021"``, ``"freeman2021_1x1"``, or ``"up_projection"`` for another
    block of the same structure); ``skipped`` maps each block recognised as an up-projection
    but not patched to the reason."""

    replaced: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"fastmde.patch: {len(self.replaced)} up-projection block(s) replaced, {len(self.skipped)} skipped"]
        lines += [f"  replaced {path or '<model>'}: {kind}" for path, kind in self.replaced.items()]
        lines += [f"  skipped  {path or '<model>'}: {why}" for path, why in self.skipped.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Argument:
    """Where a forward argument is found in a call: position (after self) and name, default."""

    index: int
    name: str
    default: Any = None

    def read(self, args, kwargs):
        if self.index < len(args):
            return args[self.index]
        return kwargs.get(self.name, self.default)


@dataclass(frozen=True)
class _Plan:
    """A recognised block: the child names of its layers (``UpProjectionLayers`` order), where
    x / skip / size come from, and the upsample's constants. Plain data, kept on the module
    (so ``copy.deepcopy`` and pickling carry it with the block)."""

    kind: str
    layer_names: tuple
    x: _Argument
    skip: _Argument | None
    size: _Argument | None
    fixed_size: tuple | None
    scale: tuple | None
    align_corners: bool
    scale_maps_coordinates: bool  # align_corners=False with a scale factor, not recomputed
    original_forward: Any = None  # an instance-level forward the block had before patching


class _NotAnUpProjection(Exception):
    """The traced forward is not the up-projection structure; ``looks_like``: report it."""

    def __init__(self, reason: str, looks_like: bool = True):
        super().__init__(reason)
        self.looks_like = looks_like


class _LeafTracer(torch.fx.Tracer):
    """Traces only the block's own forward: every child module call is one node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def patch(model: nn.Module) -> PatchReport:
    """Give every up-projection block in ``model`` (``model`` itself included) fastmde's fused
    forward and backward, in place; returns a :class:`PatchReport`.

    Values, gradients and BatchNorm running statistics equal the unpatched block's (within
    float rounding: the fused kernels sum in another order); the ``state_dict`` is untouched.
    Patching twice is harmless (a patched block is reported once). Undo with :func:`unpatch`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastmde.patch expects an nn.Module, got {type(model).__name__}")
    report = PatchReport()
    inside: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(p + ".") or p == "" for p in inside) and path != "":
            continue  # a child of a recognised block (e.g. its convs)
        plan = module.__dict__.get(_PLAN_ATTR)
        if plan is not None:
            report.replaced[path] = plan.kind
            inside.append(path)
            continue
        if isinstance(module, UpProjection):
            report.skipped[path] = "fastmde.nn.UpProjection already runs the fused ops"
            inside.append(path)
            continue
        if not _worth_tracing(module):
            continue
        try:
            plan = _recognise(module)
        except _NotAnUpProjection as exc:
            if exc.looks_like or _FAMILY_NAMES <= set(dict(module.named_children())):
                report.skipped[path] = str(exc)
                inside.append(path)
            continue
        plan = _Plan(**{**plan.__dict__, "original_forward": module.__dict__.get("forward")})
        object.__setattr__(module, _PLAN_ATTR, plan)
        # functools.partial, not types.MethodType: a bound method pickles as getattr(block,
        # "_fused_forward"), which the unpickled block does not have; a partial of the module-level
        # function pickles by name, so torch.save(model) / torch.load give a patched model.
        object.__setattr__(module, "forward", functools.partial(_fused_forward, module))
        report.replaced[path] = plan.kind
        inside.append(path)
    return report


def unpatch(model: nn.Module) -> dict[str, str]:
    """Restore the original forward of every block :func:`patch` replaced in ``model``; returns
    the restored blocks (module path -> kind)."""
    restored = {}
    for path, module in model.named_modules():
        plan = module.__dict__.get(_PLAN_ATTR)
        if plan is None:
            continue
        del module.__dict__[_PLAN_ATTR]
        if plan.original_forward is None:
            module.__dict__.pop("forward", None)
        else:
            module.__dict__["forward"] = plan.original_forward
        restored[path] = plan.kind
    return restored


def _fused_forward(self: nn.Module, *args, **kwargs):
    """The forward :func:`patch` installs: the block's arguments read as the original forward
    reads them, then :func:`fastmde.ops.up_projection` over the block's own modules."""
    plan: _Plan = self.__dict__[_PLAN_ATTR]
    x = plan.x.read(args, kwargs)
    layers = UpProjectionLayers(*(None if name is None else getattr(self, name) for name in plan.layer_names))
    skip = plan.skip.read(args, kwargs) if plan.skip is not None else None
    # the original forward's torch.cat / conv would refuse these in PyTorch's words
    check_block_inputs(x, skip, layers.conv1.weight, type(self).__name__)
    if skip is not None:
        x = torch.cat((x, skip), dim=1)
    if plan.size is not None:
        size = _pair(plan.size.read(args, kwargs))
    elif plan.fixed_size is not None:
        size = plan.fixed_size
    else:
        h, w = x.shape[-2:]
        size = (math.floor(float(h) * plan.scale[0]), math.floor(float(w) * plan.scale[1]))
        if plan.scale_maps_coordinates and (size[0] != h * plan.scale[0] or size[1] != w * plan.scale[1]):
            # PyTorch maps coordinates by 1/scale here, the kernels by the sizes: run the original
            return _original_forward(self, plan)(*args, **kwargs)
    return up_projection(x, layers, size, plan.align_corners)


def _original_forward(module: nn.Module, plan: _Plan):
    if plan.original_forward is not None:
        return plan.original_forward
    return types.MethodType(type(module).forward, module)


def _pair(size) -> tuple[int, int]:
    """An upsample's ``size`` as (H, W): one number for both sides, or a pair, each a whole number
    (``ops.up_projection.output_size``: 9.7 is refused, as F.interpolate refuses it; never truncated)."""
    pair = size if isinstance(size, (tuple, list, torch.Size)) else (size, size)
    return tuple(output_size(pair, "up-projection"))


def _worth_tracing(module: nn.Module) -> bool:
    children = list(module.children())
    convs = sum(isinstance(c, nn.Conv2d) for c in children)
    norms = sum(isinstance(c, nn.modules.batchnorm._BatchNorm) for c in children)
    return convs >= 3 and norms >= 3


# ---------------------------------------------------------------- recognition


def _recognise(module: nn.Module) -> _Plan:
    """The block's :class:`_Plan`, or :class:`_NotAnUpProjection` with the reason."""
    try:
        graph = _LeafTracer().trace(module)
    except Exception as exc:  # data-dependent control flow, unsupported Python, ...
        raise _NotAnUpProjection(f"its forward could not be traced ({type(exc).__name__}: {exc})",
                                 looks_like=False) from None
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    output = next(n for n in graph.nodes if n.op == "output")
    kinds = {n: _classify(module, n) for n in nodes}
    upsamples = [n for n, k in kinds.items() if k == "upsample"]
    convs = [n for n, k in kinds.items() if k == "conv"]
    looks_like = len(upsamples) == 1 and len(convs) >= 3
    unknown = [n for n, k in kinds.items() if k is None]
    if unknown:
        raise _NotAnUpProjection(f"its forward calls {_describe(module, unknown[0])}, not part of an "
                                 "up-projection (conv, BatchNorm2d, ReLU, bilinear upsample, add, cat)",
                                 looks_like)
    if len(upsamples) != 1:
        raise _NotAnUpProjection(f"its forward has {len(upsamples)} bilinear upsamples, not 1", looks_like=False)
    up = upsamples[0]

    def one(node, kind, what):
        """``node`` checked to be of ``kind`` with one tensor input; returns that input."""
        if kinds.get(node) != kind:
            raise _NotAnUpProjection(f"expected {what}, found {_describe(module, node)}", looks_like)
        return node.args[0]

    def conv_bn(node, what):
        """node = bn(conv(input)); returns (conv name, bn name, input node)."""
        conv = one(node, "bn", f"the BatchNorm after {what}")
        inp = one(conv, "conv", f"the conv of {what}")
        _check_conv(module, conv.target, what)
        _check_bn(module, node.target, getattr(module, conv.target).out_channels, what)
        return conv.target, node.target, inp

    # the end: relu(add(a, b))
    result = output.args[0]
    if not isinstance(result, torch.fx.Node):
        raise _NotAnUpProjection("its forward does not return one tensor", looks_like)
    total = one(result, "relu", "the final ReLU")
    if kinds.get(total) != "add" or len(total.args) != 2 or not all(isinstance(a, torch.fx.Node) for a in total.args):
        raise _NotAnUpProjection(f"expected the sum of branch and shortcut, found {_describe(module, total)}", looks_like)
    ends = []
    for side in total.args:
        conv_name, bn_name, inp = conv_bn(side, "a branch")
        ends.append((conv_name, bn_name, inp))
    # the shortcut's conv reads the upsampled tensor; the branch's second conv a ReLU
    shortcut = [e for e in ends if e[2] is up]
    branch = [e for e in ends if e[2] is not up]
    if len(shortcut) != 1 or len(branch) != 1:
        raise _NotAnUpProjection("expected one shortcut conv reading the upsampled tensor and one branch "
                                 "of two convs", looks_like)
    (s_conv, s_bn, _), (b2_conv, b2_bn, mid) = shortcut[0], branch[0]
    b1_out = one(mid, "relu", "the ReLU inside the branch")
    b1_conv, b1_bn, b1_in = conv_bn(b1_out, "the branch's first conv")
    if b1_in is not up:
        raise _NotAnUpProjection("the branch's first conv does not read the upsampled tensor", looks_like)

    # before the upsample: [cat(x, skip) ->] [conv -> BN -> ReLU ->]
    src = one(up, "upsample", "the upsample")
    reduce_conv = reduce_bn = None
    if kinds.get(src) == "relu":
        reduce_conv, reduce_bn, src = conv_bn(one(src, "relu", "the ReLU before the upsample"), "the reduction")
    skip = None
    if kinds.get(src) == "cat":
        tensors, dim = _cat_args(src)
        if dim != 1 or len(tensors) != 2 or not all(t.op == "placeholder" for t in tensors):
            raise _NotAnUpProjection("its concatenation is not cat((x, skip), dim=1) of two arguments", looks_like)
        src, skip = tensors
    if src.op != "placeholder":
        raise _NotAnUpProjection(f"the block's input reaches the upsample through {_describe(module, src)}", looks_like)

    # every node used: exactly the structure, each intermediate read once
    used = {result, total, *[n for n in nodes if kinds[n] in ("conv", "bn", "relu", "upsample", "cat")]}
    for n in nodes:
        if n not in used and kinds[n] != "getattr":
            raise _NotAnUpProjection(f"its forward also computes {_describe(module, n)}", looks_like)
    for n in nodes:
        expected = 2 if n is up else 1
        if kinds[n] != "getattr" and len(n.users) != expected:
            raise _NotAnUpProjection(f"{_describe(module, n)} is read {len(n.users)} times", looks_like)

    # channels line up
    c = lambda name: getattr(module, name)  # noqa: E731
    if c(b1_conv).in_channels != c(s_conv).in_channels or c(b2_conv).in_channels != c(b1_conv).out_channels \
            or c(b2_conv).out_channels != c(s_conv).out_channels:
        raise _NotAnUpProjection("the branch's and the shortcut's channel counts do not line up", looks_like)

    size_arg, fixed_size, scale, align_corners, by_scale = _upsample_settings(module, up)
    arguments = _arguments(module)
    plan = _Plan(
        kind="",
        layer_names=(b1_conv, b1_bn, b2_conv, b2_bn, s_conv, s_bn, reduce_conv, reduce_bn),
        x=arguments[src.target],
        skip=None if skip is None else arguments[skip.target],
        size=size_arg if size_arg is None else arguments[size_arg],
        fixed_size=fixed_size,
        scale=scale,
        align_corners=align_corners,
        scale_maps_coordinates=by_scale,
    )
    return _Plan(**{**plan.__dict__, "kind": _kind(plan)})


def _kind(plan: _Plan) -> str:
    names = set(n for n in plan.layer_names if n is not None)
    if _FAMILY_NAMES <= names and plan.layer_names[:6] == ("conv1", "bn1", "conv1_2", "bn1_2", "conv2", "bn2"):
        if plan.layer_names[6:] == ("conv0", "bn0"):
            return "freeman2021_1x1"
        if plan.layer_names[6] is None:
            return "hu2019" if plan.size is not None else "freeman2021"
    return "up_projection"


# forwards that compute nn.Conv2d's function (BandedConv2d only changes how its backward sums)
_CONV_FORWARDS = (nn.Conv2d.forward, BandedConv2d.forward)


def _classify(module: nn.Module, node: torch.fx.Node) -> str | None:
    """The node's role: conv, bn, relu, upsample, add, cat, getattr; None for anything else."""
    if node.op == "get_attr":
        return "getattr"
    if node.op == "call_module":
        m = module.get_submodule(node.target)
        if type(m) is nn.Conv2d or (isinstance(m, nn.Conv2d) and type(m).forward in _CONV_FORWARDS):
            return "conv"
        if isinstance(m, nn.BatchNorm2d) and type(m).forward is nn.BatchNorm2d.forward:
            return "bn"
        if type(m) is nn.ReLU:
            return "relu"
        if isinstance(m, nn.Upsample) and m.mode == "bilinear":
            return "upsample"
        return None
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu, torch.relu_, F.relu_):
            return "relu"
        if node.target in (operator.add, operator.iadd, torch.add) and not node.kwargs:
            return "add"
        if node.target is torch.cat:
            return "cat"
        if node.target is F.interpolate:
            bound = _INTERPOLATE.bind(*node.args, **node.kwargs)
            return "upsample" if bound.arguments.get("mode") == "bilinear" else None
        return None
    if node.op == "call_method":
        if node.target in ("relu", "relu_") and len(node.args) == 1:
            return "relu"
        if node.target in ("add", "add_", "__add__") and len(node.args) == 2 and not node.kwargs:
            return "add"
    return None


def _describe(module: nn.Module, node) -> str:
    if not isinstance(node, torch.fx.Node):
        return repr(node)
    if node.op == "call_module":
        return f"{node.target} ({type(module.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f".{node.target}()"
    return f"{node.op} {node.target}"


def _check_conv(module: nn.Module, name: str, what: str) -> None:
    conv = getattr(module, name)
    k = conv.kernel_size
    padding = conv.padding if conv.padding != "same" else (k[0] // 2, k[1] // 2)
    problems = []
    if k[0] != k[1] or k[0] % 2 != 1:
        problems.append(f"kernel {tuple(k)} (square and odd needed)")
    if tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
        problems.append("stride, dilation or groups other than 1")
    if tuple(padding) != (k[0] // 2, k[1] // 2) or conv.padding_mode != "zeros":
        problems.append(f"padding {conv.padding} ({conv.padding_mode}), not zero padding k // 2")
    if conv.bias is not None:
        problems.append("a bias (the fused kernels take none)")
    if problems:
        raise _NotAnUpProjection(f"{name} ({what}) has " + "; ".join(problems))


def _check_bn(module: nn.Module, name: str, channels: int, what: str) -> None:
    bn = getattr(module, name)
    if bn.num_features != channels:
        raise _NotAnUpProjection(f"{name} ({what}) normalises {bn.num_features} channels, its conv gives {channels}")


def _cat_args(node: torch.fx.Node):
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return list(tensors), dim


def _upsample_settings(module: nn.Module, up: torch.fx.Node):
    """(size placeholder name or None, fixed size or None, scale (sh, sw) or None, align_corners,
    whether PyTorch maps coordinates by the scale factor rather than by the sizes)."""
    if up.op == "call_module":
        m = module.get_submodule(up.target)
        size, scale, align, recompute, antialias = m.size, m.scale_factor, m.align_corners, m.recompute_scale_factor, False
    else:
        bound = _INTERPOLATE.bind(*up.args, **up.kwargs)
        get = bound.arguments.get
        size, scale, align = get("size"), get("scale_factor"), get("align_corners")
        recompute, antialias = get("recompute_scale_factor"), get("antialias", False)
    if antialias:
        raise _NotAnUpProjection("its upsample is antialiased")
    align = bool(align)
    if isinstance(size, torch.fx.Node):
        if size.op != "placeholder":
            raise _NotAnUpProjection(f"its upsample size is computed in the forward ({_describe(module, size)})")
        return size.target, None, None, align, False
    if size is not None:
        return None, _pair(size), None, align, False
    if scale is None:
        raise _NotAnUpProjection("its upsample has neither size nor scale_factor")
    if isinstance(scale, torch.fx.Node):
        raise _NotAnUpProjection("its upsample scale_factor is computed in the forward")
    sh, sw = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
    # with align_corners=True, or recompute_scale_factor, coordinates follow the sizes (as in
    # the kernels); otherwise they follow 1/scale, equal only where the sizes are exact multiples
    return None, None, (float(sh), float(sw)), align, not align and not recompute


def _arguments(module: nn.Module) -> dict[str, _Argument]:
    """The forward's parameters (after self) by name: position and default."""
    params = list(inspect.signature(type(module).forward).parameters.values())[1:]
    out = {}
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        index = i if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else 1 << 30
        out[p.name] = _Argument(index, p.name, default)
    return out
