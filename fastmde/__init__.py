"""fastmde: train monocular depth estimation models fast and cheaply.

Public API::

    fastmde.depth_loss(pred, target, preset="hu_blurred")      # scalar, fused forward+backward
    fastmde.depth_loss_terms(pred, target, ...)                # {"total", "depth", "gradient", "normal"}
    fastmde.depth_metrics(pred, target, crop="eigen")          # {"rms", "rel", "log10", "delta1..3"}
    fastmde.nn.DepthLoss, fastmde.nn.DepthMetrics, fastmde.nn.UpProjection
    fastmde.backends()                                         # which kernel serves what
"""
from . import _backend

_backend.install_kernels_package()

from . import nn, ops, reference  # noqa: E402
from ._backend import BackendUnavailableError, backends, set_backend  # noqa: E402
from .functional import depth_loss, depth_loss_terms, depth_metric_sums, depth_metrics  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "backends",
    "depth_loss",
    "depth_loss_terms",
    "depth_metric_sums",
    "depth_metrics",
    "nn",
    "ops",
    "reference",
    "set_backend",
    "__version__",
]
