"""Intermediate resolution: run a depth network at a smaller internal size than its input.

``IntermediateResolution(net, size=(288, 384))``, for an input x (B, 3, H, W)::

    x_s  = area_resize(x, size)                              (B, 3, 288, 384)
    d_s  = net(x_s)                                          (B, 1, h', w')
    out  = bicubic_resize(d_s, (H, W), align_corners=True)   (B, 1, H, W)

so the loss and the metrics are taken at the input's full resolution (480x640 for NYU) while
the network costs what it costs at 288x384. Any H, W and any internal size work (the networks
size their upsamples from the feature maps). A resize whose source and target sizes are equal
is skipped; an internal size larger than the input is reached with bilinear (area averaging
only shrinks). With ``size=None`` the network runs at the input's size and only its output is
brought to the input size if it differs (Hu et al.'s original model predicts at half size).

Named sizes of the paper (HxW): 480x640, 384x512, 288x384, 192x256, 96x128.

``aspect="keep"`` scales the input instead of stretching it: by the smallest factor that
makes it cover ``size``, ``s = max(size_h / H, size_w / W)``, to ``(round(H s), round(W s))``.
For an input of ``size``'s aspect ratio both give ``size``; an input of another aspect keeps
the scale of the training input. KITTI needs it: a model trained on 352x704 crops at 176x352
inside runs a 352x1216 evaluation frame at 176x608 (the same pixel scale), where stretching to
176x352 would squeeze the frame 1.7 times sideways.
"""
from __future__ import annotations

import contextlib
import contextvars
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import image_range_problem
from .._text import PAPER_SIZES, parse_size  # noqa: F401  (PAPER_SIZES: re-exported)
from .._warn import HostValues, warn_at_caller
from ..nn.bicubic import bicubic_resize
from .trainable import untrainable_message

# The range check of each model's calls after its first: pending device copies of (min, max), kept
# outside the module so that deepcopy / pickling a model never meets a CUDA event.
_RANGE_CHECKS: "weakref.WeakKeyDictionary[nn.Module, HostValues]" = weakref.WeakKeyDictionary()
# Set while a caller runs models on images it made from 8-bit files (fastmde's eval and predict)
_RANGE_KNOWN: contextvars.ContextVar[bool] = contextvars.ContextVar("fastmde_image_range_known", default=False)


@contextlib.contextmanager
def image_range_known():
    """Calls of the models inside this block skip the input-range check (the 0-1 / ImageNet /
    16-bit warning): for a caller whose images are 8-bit files converted to float 0-255 (fastmde's
    readers, ``eval``, ``predict``), where a dark photo whose values all lie in [0, 1] is what it
    is, not a ToTensor image."""
    token = _RANGE_KNOWN.set(True)
    try:
        yield
    finally:
        _RANGE_KNOWN.reset(token)

def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-downscale ``x`` to ``size`` (bilinear where a dimension grows); identity if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def internal_size(height: int, width: int, size: tuple[int, int], aspect: str) -> tuple[int, int]:
    """The size the network runs at for a ``height`` x ``width`` input (see the module doc)."""
    if aspect == "stretch":
        return tuple(size)
    s = max(size[0] / height, size[1] / width)
    return max(1, round(height * s)), max(1, round(width * s))


def resize_depth(d: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic (align_corners=True) resize of a prediction to ``size``; identity if equal
    (:func:`fastmde.nn.bicubic.bicubic_resize`: F.interpolate, its CPU backward two GEMMs)."""
    if tuple(d.shape[-2:]) == tuple(size):
        return d
    return bicubic_resize(d, size)


def _eager(x: torch.Tensor) -> bool:
    """Whether ``x``'s values can be read now: not under torch.compile / export / jit tracing, not
    a shape-only (meta) tensor."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or x.device.type == "meta")


class IntermediateResolution(nn.Module):
    """Wraps ``net`` (image -> depth) to run at ``size`` = (H, W) internally; see the module doc.

    ``aspect``: ``"stretch"`` (resize to ``size``) or ``"keep"`` (scale to cover ``size``, the
    input's aspect ratio kept). ``forward(x)``: x (B, 3, H, W) float image in 0-255 ->
    (B, 1, H, W) depth in metres.

    Conventions checked: every eager call (not under torch.compile, export or tracing) looks at
    the image's range and warns, at the caller's line, about a 0-1 image (torchvision's
    ``ToTensor``), an ImageNet-normalised one or values above 255 (Python's warning filter shows a
    message once per line; images of another range give another message). The cost is one
    ``aminmax`` of the input: on the CPU it is read at once; on CUDA the model's first call reads it
    at once (one synchronisation) and later calls queue a non-blocking copy of the two values that
    a later call reads once it has arrived (:class:`fastmde._warn.HostValues`: no synchronisation,
    the warning comes a call or two late). In training
    mode a batch that BatchNorm cannot take (a 1x1 deepest map at batch 1: an internal size of at
    most 32x32 with a ResNet encoder) is refused with a ValueError that names the size, the
    batch and the smallest size that trains (:mod:`fastmde.models.trainable`), a shape check
    with no synchronisation.
    """

    ASPECTS = ("stretch", "keep")

    def __init__(self, net: nn.Module, size=(288, 384), aspect: str = "stretch"):
        super().__init__()
        if aspect not in self.ASPECTS:
            raise ValueError(f"aspect must be one of {self.ASPECTS}, got {aspect!r}")
        self.net = net
        self.size = parse_size(size, allow_none=True)
        self.aspect = aspect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch (B, 3, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{self._name()}: expected a float image in 0-255, got {x.dtype} (convert it with .float())")
        out_size = tuple(x.shape[-2:])
        if _eager(x) and not _RANGE_KNOWN.get():     # under torch.compile nothing is read (no guard, no graph break)
            for problem in self._range_problems(x):
                warn_at_caller(f"{self._name()}: {problem}")
        size = out_size if self.size is None else internal_size(out_size[0], out_size[1], self.size, self.aspect)
        if self.training:
            self._check_trainable(x.shape[0], size)
        if self.size is not None:
            x = resize_image(x, size)
        return resize_depth(self.net(x), out_size)

    def _range_problems(self, x: torch.Tensor) -> list[str]:
        """What :func:`fastmde._checks.image_range_problem` says of this call's image (a CPU or
        other non-CUDA device, or a model's first call), or of an earlier call's whose (min, max)
        copy has arrived (CUDA)."""
        checks = _RANGE_CHECKS.get(self)
        if checks is None or x.device.type != "cuda":
            if checks is None:
                _RANGE_CHECKS[self] = HostValues(limit=2)
            problem = image_range_problem(x)
            return [] if problem is None else [problem]
        if x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return []                     # a CUDA graph being captured: no copy may be queued
        bounds = torch.stack(torch.aminmax(x.detach()))
        # image_range_problem of the two values is that of the image (the same min and max)
        return checks.submit(bounds, image_range_problem)

    def _name(self) -> str:
        return getattr(self, "fastmde_variant", None) or type(self.net).__name__

    def _check_trainable(self, batch: int, size: tuple[int, int]) -> None:
        """Refuse a training batch BatchNorm cannot take, in the Python API's words."""
        stride = getattr(getattr(self.net, "encoder", None), "total_stride", None)
        if stride is None:
            return
        if self.size is None:
            words = lambda h, w: f"an input of {h}x{w}"  # noqa: E731  (size=None: the network runs at it)
        elif self.aspect == "keep":
            words = lambda h, w: f"an internal size of {h}x{w}"  # noqa: E731
        else:
            words = lambda h, w: f"size=({h}, {w})"  # noqa: E731
        message = untrainable_message(
            self._name(), size[0], size[1], batch, stride, size_words=words,
            batch_words=lambda b: f"a training batch of {b}",
            larger_batch="train on batches of 2 or more images (inference: call .eval() first)")
        if message is not None:
            raise ValueError(message)

    def extra_repr(self) -> str:
        return f"size={self.size}" + (f", aspect={self.aspect!r}" if self.aspect != "stretch" else "")
