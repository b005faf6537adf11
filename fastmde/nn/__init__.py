"""Drop-in ``nn.Module``s over the fastmde ops."""
from .depth_loss import DepthLoss
from .depth_metrics import DepthMetrics
from .up_projection import UpProjection

__all__ = ["DepthLoss", "DepthMetrics", "UpProjection"]
