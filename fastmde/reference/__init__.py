"""Plain-PyTorch reference implementations: the spec of every kernel and the last fallback."""
from .depth_loss import (
    PRESETS,
    depth_loss_forward_reference,
    depth_loss_terms_reference,
    gaussian_blur_reference,
    sobel_reference,
)
from .depth_metrics import (
    CROPS,
    combine,
    depth_metric_sums_reference,
    depth_metrics_reference,
    resolve_crop,
)
from .up_projection import (
    up_projection_block_reference,
    upsample_conv2d_backward_reference,
    upsample_conv2d_forward_reference,
    upsample_conv2d_reference,
)

__all__ = [
    "PRESETS",
    "CROPS",
    "combine",
    "depth_loss_forward_reference",
    "depth_loss_terms_reference",
    "depth_metric_sums_reference",
    "depth_metrics_reference",
    "gaussian_blur_reference",
    "resolve_crop",
    "sobel_reference",
    "up_projection_block_reference",
    "upsample_conv2d_backward_reference",
    "upsample_conv2d_forward_reference",
    "upsample_conv2d_reference",
]
