"""fastmde: train monocular depth estimation models fast and cheaply.

Public API::

    fastmde.depth_loss(pred, target, preset="hu_blurred")      # scalar, fused forward+backward
    fastmde.depth_loss_terms(pred, target, ...)                # {"total", "depth", "gradient", "normal"}
    fastmde.depth_metrics(pred, target, crop="eigen")          # {"rms", "rel", "log10", "delta1..3"}
    fastmde.nn.DepthLoss, fastmde.nn.DepthMetrics, fastmde.nn.UpProjection
    fastmde.backends()                                         # which kernel serves what
    fastmde.load("runs/train/best.pt", device="cpu")           # a trained model, ready to run
"""
from . import _backend

_backend.install_kernels_package()

from . import nn, ops, reference  # noqa: E402
from ._backend import BackendUnavailableError, backends, set_backend  # noqa: E402
from .functional import depth_loss, depth_loss_terms, depth_metric_sums, depth_metrics  # noqa: E402

__version__ = "0.1.0"


def load(checkpoint, device="cpu"):
    """A ready model (eval mode, on ``device``) from a fastmde checkpoint or run directory.

    The model maps (B, 3, H, W) float images in 0-255 to (B, 1, H, W) depth in metres. A file
    that is not a fastmde checkpoint raises ``fastmde.engine.CheckpointError``.
    """
    from .engine.checkpoint import load as _load

    return _load(checkpoint, device=device)


__all__ = [
    "BackendUnavailableError",
    "backends",
    "depth_loss",
    "depth_loss_terms",
    "depth_metric_sums",
    "depth_metrics",
    "load",
    "nn",
    "ops",
    "reference",
    "set_backend",
    "__version__",
]
