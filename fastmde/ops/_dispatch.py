"""Helpers shared by the op files: pick the implementation module for a call, keep autocast out."""
from __future__ import annotations

import contextlib
import functools

import torch

from .. import _backend


def implementation(hot_path: str, device: torch.device, like: torch.Tensor | None = None):
    """(backend name, module) that serves ``hot_path`` on ``device``, for the dtype and layout of
    ``like`` when given (see ``_backend.choose``); module is None for reference."""
    setting = _backend.setting_of(like) if like is not None else (None, None)
    backend = _backend.choose(hot_path, device.type, *setting)
    if backend == "native":
        return backend, _backend.native_module()
    if backend == "triton":
        return backend, _backend.triton_module(hot_path)
    return backend, None


_NOTHING_TO_DISABLE = contextlib.nullcontext()


def no_autocast(device: torch.device):
    """Op implementations compute in their inputs' dtypes: an autocast region around the op
    must not re-type the ATen calls inside them (the op's output dtype is fixed by its inputs).
    Outside autocast nothing is entered (torch.autocast's enter and exit are a dozen calls)."""
    if device.type in ("cpu", "cuda") and not torch.is_autocast_enabled(device.type):
        return _NOTHING_TO_DISABLE
    return torch.autocast(device_type=device.type, enabled=False)


def runs_eagerly(args) -> bool:
    """Whether a call may skip torch.library and run the op's implementation as a Python call:
    plain eager execution (not under torch.compile / torch.export tracing, torch.jit tracing, a
    functorch transform, or a Python dispatch or function mode) with plain CPU or CUDA tensors (no
    subclass such as FakeTensor, no meta tensor). Everything else goes through the registered op,
    which those need."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    # meta tensors (shape-only runs, e.g. counting a model's FLOPs) take the op's fake kernel
    return all(type(a) is torch.Tensor and a.device.type in ("cpu", "cuda")
               for a in args if isinstance(a, torch.Tensor))


def not_differentiable_again(backward):
    """``backward`` (ctx, *grads) -> grads, refusing ``create_graph=True``: the ops' backward
    passes are kernels over saved maps, so a graph of them would hold no second derivative, and
    a gradient penalty, ``autograd.functional.jvp`` / ``hvp`` / ``hessian`` would silently get 0
    (an error node hung on the results is not on the path ``autograd.grad`` follows to the
    inputs, so it cannot catch every such use: the refusal comes here, in one line)."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "fastmde's losses, metrics and up-projection are differentiable once: their backward is a "
                "kernel, so create_graph=True (second derivatives, gradient penalties, "
                "torch.autograd.functional.jvp/hvp/hessian) is not supported")
        return backward(ctx, *grads)

    return wrapper


def with_eager_path(op, impl, backward=None, setup_context=None):
    """``op`` (a ``torch.library.custom_op`` of ``impl``, with ``backward`` / ``setup_context``
    registered as its autograd) as a function that, where :func:`runs_eagerly` allows, calls
    ``impl`` directly, under an ``autograd.Function`` of the same ``setup_context`` and
    ``backward`` when a gradient is needed. Same values and gradients as the op (tests compare
    them); the op's Python dispatch costs about 60 µs a forward and backward on this project's
    2-core CPU when warm, and several times that when a large kernel has just evicted the
    interpreter's caches (the bench's "fastmde" rows and a training step's loss)."""
    direct = None
    if backward is not None:
        def forward(ctx, *args):
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        # the backward computes from saved maps with the kernels: a second derivative through it
        # would be silently wrong, so it raises instead
        direct = type(f"{op._name}_eager", (torch.autograd.Function,), {
            "forward": staticmethod(forward), "backward": staticmethod(not_differentiable_again(backward))})

    def call(*args):
        if not runs_eagerly(args):
            return op(*args)
        if direct is not None and torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return direct.apply(*args)
        return impl(*args)

    call.__name__ = call.__qualname__ = impl.__name__
    call.__doc__ = impl.__doc__
    return call
