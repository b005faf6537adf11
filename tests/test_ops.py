"""The fastmde:: custom ops: opcheck, float64 gradcheck, torch.compile(fullgraph=True), and
agreement with the differentiable references, on whichever backend serves the CPU. (The depth
loss's checks, on every backend, are in test_depth_loss.py.)"""
import pytest
import torch

import fastmde


def loss_args(dtype=torch.float32, mask=True, requires_grad=True, shape=(2, 7, 9)):
    g = torch.Generator().manual_seed(0)
    pred = (torch.rand(shape, generator=g) * 5 + 0.5).to(dtype).requires_grad_(requires_grad)
    target = (torch.rand(shape, generator=g) * 5 + 0.5).to(dtype)
    m = torch.rand(shape, generator=g) > 0.2 if mask else None
    return pred, target, m


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


@pytest.mark.parametrize("backend", ["reference", None])
def test_ops_ignore_an_enclosing_autocast(backend):
    """Inside torch.autocast the ops still compute in their inputs' dtypes (the fake kernels
    promise that), on the reference and on the default backend. (The up-projection's: in
    test_up_projection.py.)"""
    fastmde.set_backend(backend)
    try:
        pred, target, m = loss_args(requires_grad=False)
        plain = fastmde.depth_loss(pred, target, mask=m)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = fastmde.depth_loss(pred, target, mask=m)
        assert plain.dtype == auto.dtype == torch.float32 and torch.equal(plain, auto)
    finally:
        fastmde.set_backend(None)
