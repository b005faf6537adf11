"""The fastmde:: custom ops: opcheck, float64 gradcheck, torch.compile(fullgraph=True), and
agreement with the differentiable references, on whichever backend serves the CPU. (The depth
loss's checks, on every backend, are in test_depth_loss.py.)"""
import pytest
import torch

import fastmde
from fastmde.ops import depth_metric_sums_op, upsample_conv2d_backward_op, upsample_conv2d_op
from fastmde.reference.depth_metrics import depth_metrics_reference
from fastmde.reference.up_projection import upsample_conv2d_reference


def loss_args(dtype=torch.float32, mask=True, requires_grad=True, shape=(2, 7, 9)):
    g = torch.Generator().manual_seed(0)
    pred = (torch.rand(shape, generator=g) * 5 + 0.5).to(dtype).requires_grad_(requires_grad)
    target = (torch.rand(shape, generator=g) * 5 + 0.5).to(dtype)
    m = torch.rand(shape, generator=g) > 0.2 if mask else None
    return pred, target, m


def test_opcheck_depth_metric_sums():
    pred, target, m = loss_args(requires_grad=False)
    torch.library.opcheck(depth_metric_sums_op, (pred, target, m, 1e-3, 10.0, [1, 6, 0, 8]))
    torch.library.opcheck(depth_metric_sums_op, (pred, target, None, 1e-3, float("inf"), [0, 7, 0, 9]))


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_upsample_conv2d(align_corners, channels_last):
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    torch.library.opcheck(upsample_conv2d_op, (x, w, [8, 11], align_corners))
    g = torch.randn(2, 4, 8, 11)
    torch.library.opcheck(upsample_conv2d_backward_op, (g, x.detach(), w.detach(), [8, 11], align_corners))


@pytest.mark.parametrize("align_corners", [True, False])
def test_gradcheck_upsample_conv2d_float64(align_corners):
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: upsample_conv2d_op(a, b, [6, 7], align_corners), (x, w))


def test_gradcheck_up_projection_block_float64():
    block = fastmde.nn.UpProjection(4, 3, kernel_size=3).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: block(a), (x,))


def test_metrics_op_matches_reference():
    pred, target, m = loss_args(dtype=torch.float64, requires_grad=False, shape=(3, 10, 12))
    for aggregate in ("per_image", "pooled"):
        got = fastmde.depth_metrics(pred, target, mask=m, crop=(1, 9, 2, 11), max_depth=4.0, aggregate=aggregate)
        expected = depth_metrics_reference(pred, target, m, crop=(1, 9, 2, 11), max_depth=4.0, aggregate=aggregate)
        for k in expected:
            assert torch.allclose(got[k], expected[k], rtol=1e-9, atol=1e-12), k


def test_torch_compile_fullgraph_depth_loss_and_metrics():
    torch._dynamo.reset()
    pred, target, m = loss_args()

    def step(p, t, mask):
        loss = fastmde.depth_loss(p, t, preset="hu_blurred", mask=mask)
        metrics = fastmde.depth_metrics(p.detach(), t, mask=mask, crop=(1, 6, 1, 8), max_depth=10.0)
        return loss, metrics["rms"]

    compiled = torch.compile(step, fullgraph=True)
    loss, rms = compiled(pred, target, m)
    loss.backward()
    p2 = pred.detach().clone().requires_grad_()
    loss2, rms2 = step(p2, target, m)
    loss2.backward()
    assert torch.allclose(loss, loss2) and torch.allclose(rms, rms2)
    assert torch.allclose(pred.grad, p2.grad, rtol=1e-5, atol=1e-7)


def test_torch_compile_fullgraph_up_projection():
    torch._dynamo.reset()
    block = fastmde.nn.UpProjection(6, 4, kernel_size=3)
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    skip = torch.randn(2, 3, 5, 6)
    compiled = torch.compile(lambda a, s: block(a, skip=s), fullgraph=True)
    out = compiled(x, skip)
    out.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    out2 = block(x2, skip=skip)
    out2.sum().backward()
    assert torch.allclose(out, out2, rtol=1e-4, atol=1e-5)
    assert torch.allclose(x.grad, x2.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("align_corners", [True, False])
def test_upsample_conv2d_matches_reference(align_corners):
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    out = upsample_conv2d_op(x, w, [9, 8], align_corners)
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, w), g)
    expected = upsample_conv2d_reference(x, w, (9, 8), align_corners)
    ex, ew = torch.autograd.grad(expected, (x, w), g)
    assert torch.allclose(out, expected, atol=1e-10)
    assert torch.allclose(gx, ex, atol=1e-10) and torch.allclose(gw, ew, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", None])
def test_ops_ignore_an_enclosing_autocast(backend):
    """Inside torch.autocast the ops still compute in their inputs' dtypes (the fake kernels
    promise that), on the reference and on the default backend."""
    fastmde.set_backend(backend)
    try:
        x = torch.randn(1, 3, 4, 5)
        w = torch.randn(4, 3, 3, 3)
        pred, target, m = loss_args(requires_grad=False)
        plain = (upsample_conv2d_op(x, w, [8, 10], True), fastmde.depth_loss(pred, target, mask=m))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = (upsample_conv2d_op(x, w, [8, 10], True), fastmde.depth_loss(pred, target, mask=m))
        for a, b in zip(plain, auto):
            assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    finally:
        fastmde.set_backend(None)
