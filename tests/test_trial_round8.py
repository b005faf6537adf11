"""Faults found by using round 8's changes as a new user would, each with the right value.

* ``torch.autograd.grad(fastmde.depth_loss(pred, target), pred)`` returned the map the forward
  saved, still an output of the loss's node: a gradient with ``requires_grad=True`` and that node
  as its ``grad_fn`` (``.numpy()`` refused it; for a (B, 1, H, W) prediction an in-place change
  of it raised "a view was created in no_grad mode"), and a tensor hook on ``pred`` saw the same.
"""
from __future__ import annotations

import pytest
import torch

import fastmde
from fastmde.reference.depth_loss import depth_loss_terms_reference


def _pair(shape, dtype):
    g = torch.Generator().manual_seed(8)
    pred = (torch.rand(shape, generator=g) * 5 + 0.5).to(dtype)
    target = torch.rand(shape, generator=g) * 5 + 0.5
    return pred, target


def _reference_gradient(pred, target):
    p = pred.detach().clone().requires_grad_(True)
    three = lambda t: t.reshape(t.shape[0], *t.shape[-2:])  # noqa: E731
    depth_loss_terms_reference(three(p), three(target), blur=True)["total"].backward()
    return p.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 9, 11), (2, 1, 9, 11)], ids=["BHW", "B1HW"])
def test_autograd_grad_of_the_depth_loss_is_a_plain_gradient(shape, dtype):
    pred, target = _pair(shape, dtype)
    want = _reference_gradient(pred, target)
    p = pred.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(fastmde.depth_loss(p, target, preset="hu_blurred"), p)
    assert not got.requires_grad and got.grad_fn is None
    assert got.dtype == dtype and got.shape == shape
    torch.testing.assert_close(got, want)
    assert got.numpy().shape == shape                      # refused while it required grad
    got.mul_(2.0)                                          # raised for the (B, 1, H, W) view
    torch.testing.assert_close(got, want * 2)
    # a tensor hook on pred (a network's output) sees the same plain gradient
    w = torch.ones((), dtype=dtype, requires_grad=True)
    q = pred * w
    seen = []
    q.register_hook(lambda grad: seen.append((grad.requires_grad, grad.grad_fn)))
    fastmde.depth_loss(q, target, preset="hu_blurred").backward()
    assert seen == [(False, None)]
    torch.testing.assert_close(w.grad, (want * pred).sum())
