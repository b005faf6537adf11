"""Drop-in ``nn.Module``s over the fastmde ops."""
from .depth_loss import DepthLoss
from .depth_metrics import DepthMetrics
from .scale_invariant_loss import ScaleInvariantLoss
from .up_projection import UpProjection

__all__ = ["DepthLoss", "DepthMetrics", "ScaleInvariantLoss", "UpProjection"]
