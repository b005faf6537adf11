"""The ``fastmde::`` custom ops, one file per hot path (fake kernel, autograd, device choice).

Beside each op ``X_op`` its file defines ``X``, what callers use: the op itself under
torch.compile, export, tracing, functorch transforms and Python modes, and its implementation
called directly (same values and gradients) in plain eager mode, where the op's Python dispatch
would cost more than a small kernel (``_dispatch.with_eager_path``). Those are imported from the
files (``from fastmde.ops.depth_loss import depth_loss``), not re-exported here, where two of
them would shadow their files' names."""
from .depth_loss import depth_loss_backward_op, depth_loss_op
from .depth_metrics import depth_metric_sums_op
from .scale_invariant_loss import scale_invariant_loss_backward_op, scale_invariant_loss_op
from .up_projection import upsample_conv2d_backward_op, upsample_conv2d_op
from .up_projection_bn import batchnorm_add_relu, upsample_conv2d_bn_backward_op, upsample_conv2d_bn_op
from .up_projection_block import UpProjectionLayers, up_projection

__all__ = [
    "UpProjectionLayers",
    "batchnorm_add_relu",
    "depth_loss_backward_op",
    "depth_loss_op",
    "depth_metric_sums_op",
    "scale_invariant_loss_backward_op",
    "scale_invariant_loss_op",
    "upsample_conv2d_backward_op",
    "upsample_conv2d_bn_backward_op",
    "upsample_conv2d_bn_op",
    "upsample_conv2d_op",
    "up_projection",
]
