"""The up-projection backward ops take the incoming gradient in whatever layout autograd hands
them: from ATen (an unpatched block downstream) it may be channels_last, expanded (a sum's or
mean's gradient) or a strided view, not only what fastmde's own ops produce. Each backend's
``upsample_conv2d_backward`` and ``upsample_conv2d_bn_backward`` must give, for every such
grad_out, the gradients of the same values in a plain contiguous tensor, and the reference's.
float64, the smallest shapes that upsample (the Triton interpreter is slow)."""
import pytest
import torch

from fastmde import _backend
from fastmde.ops.up_projection import upsample_conv2d_backward_op
from fastmde.ops.up_projection_bn import upsample_conv2d_bn_backward_op

SHAPE = (2, 3, 5, 6)  # grad_out: (B, Cout, H, W) for x (2, 2, 3, 4) upsampled to 5 x 6


def _grad_outs(g):
    base = torch.randn(SHAPE, dtype=torch.float64, generator=g)
    wide = torch.randn(SHAPE[0], 2 * SHAPE[1], SHAPE[2], SHAPE[3] + 1, dtype=torch.float64, generator=g)
    return {
        "contiguous": base,
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "expanded": torch.randn(1, SHAPE[1], 1, 1, dtype=torch.float64, generator=g).expand(SHAPE),
        "strided_view": wide[:, ::2, :, 1:],
        "transposed_hw": base.transpose(2, 3).contiguous().transpose(2, 3),
    }


def _backwards(grad_out, x, weight, scale, shift):
    """(grad_x, grad_w) of the plain op and (grad_a, grad_w) of the BatchNorm-folded stage."""
    plain = upsample_conv2d_backward_op(grad_out, x, weight, list(SHAPE[2:]), True)
    folded = upsample_conv2d_bn_backward_op(grad_out, x, scale, shift, weight, list(SHAPE[2:]), False)
    return (*plain, *folded)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "expanded", "strided_view", "transposed_hw"])
def test_backward_takes_any_grad_out_layout(backend, device, kind):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(SHAPE[0], 2, 3, 4, dtype=torch.float64, generator=g).to(device)
    weight = torch.randn(SHAPE[1], 2, 3, 3, dtype=torch.float64, generator=g).to(device)
    scale = (torch.rand(2, dtype=torch.float64, generator=g) + 0.5).to(device)
    shift = torch.randn(2, dtype=torch.float64, generator=g).to(device)
    grad_out = _grad_outs(g)[kind].to(device)
    assert kind == "contiguous" or not grad_out.is_contiguous()

    got = _backwards(grad_out, x, weight, scale, shift)
    same_values = _backwards(grad_out.contiguous(), x, weight, scale, shift)
    _backend.set_backend("reference")
    expected = _backwards(grad_out.contiguous(), x, weight, scale, shift)
    # the Triton bilinear adjoint accumulates in float32 (grad_x, grad_a): float32's precision there
    rtol = 1e-6 if backend == "triton" else 1e-12
    for name, a, b, r in zip(("grad_x", "grad_w", "grad_a", "grad_w (folded)"), got, same_values, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"{name}: {kind} vs contiguous")
        torch.testing.assert_close(a, r, rtol=rtol, atol=rtol, msg=f"{name}: {kind} vs reference")
