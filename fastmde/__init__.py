"""fastmde: train monocular depth estimation models fast and cheaply.

Public API::

    fastmde.depth_loss(pred, target, preset="hu_blurred")      # scalar, fused forward+backward
    fastmde.depth_loss_terms(pred, target, ...)                # {"total", "depth", "gradient", "normal"}
    fastmde.depth_metrics(pred, target, crop="eigen")          # rms, rel, log10, delta1..3, sq_rel, rmse_log, silog
    fastmde.scale_invariant_loss(pred, target, preset="silog") # SILog (BTS/AdaBins/DAV2) or MiDaS ssi, fused
    fastmde.nn.DepthLoss, fastmde.nn.DepthMetrics, fastmde.nn.UpProjection, fastmde.nn.ScaleInvariantLoss
    fastmde.backends()                                         # which kernel serves what
    fastmde.load("runs/train/best.pt", device="cpu")           # a trained model, ready to run
    fastmde.patch(model)                                       # fused up-projections in any depth model
    fastmde.export(model, "depth.onnx")                        # ONNX / torch.export (.pt2), verified
    fastmde.depth_to_points(depth, (fx, fy, cx, cy))           # (N, 3) points in metres
"""
from . import nn, ops, reference
from ._backend import BackendUnavailableError, backends, set_backend
from .functional import depth_loss, depth_loss_terms, depth_metric_sums, depth_metrics, scale_invariant_loss
from .patch import PatchReport, patch, unpatch
from .pointcloud import depth_to_points

# ``fastmde.export`` is the function: the import below loads the module fastmde/export.py (which
# sets the attribute to the module) and then rebinds the name to its function; the module stays
# importable as ``fastmde.export`` through sys.modules (``from fastmde.export import ExportError``).
from .export import export  # noqa: E402

__version__ = "0.1.0"


def load(checkpoint, device="cpu"):
    """A ready model (eval mode, on ``device``) from a fastmde checkpoint, a run directory, or
    a checkpoint of the paper authors' code or of Hu et al.'s code (recognised from its key
    names; see ``fastmde.models.from_external``).

    The model maps (B, 3, H, W) float images in 0-255 to (B, 1, H, W) depth in metres; its
    ``fastmde_variant`` and ``fastmde_spec`` attributes name the variant it is (see
    ``fastmde.engine.checkpoint.load``). Any other file raises ``fastmde.engine.CheckpointError``.
    """
    from .engine.checkpoint import load as _load

    return _load(checkpoint, device=device)


# The heavier sub-packages load on first use (``fastmde.engine.get_protocol(...)``,
# ``fastmde.models.build(...)``, ``fastmde.data.NYUFrames(...)``) so ``import fastmde`` stays light.
_LAZY_SUBMODULES = ("data", "engine", "models")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BackendUnavailableError",
    "backends",
    "depth_loss",
    "depth_loss_terms",
    "depth_metric_sums",
    "depth_metrics",
    "scale_invariant_loss",
    "depth_to_points",
    "export",
    "load",
    "PatchReport",
    "patch",
    "unpatch",
    "nn",
    "ops",
    "reference",
    "set_backend",
    "data",
    "engine",
    "models",
    "__version__",
]
