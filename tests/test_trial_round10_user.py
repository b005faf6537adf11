"""Faults found by using today's loss, up-projection and option changes as a user would, each
with the right value:

* the ops-level eager depth loss kept the caller's weights list, so a list changed between the
  forward and the backward changed the gradient into terms[0..2] and the recompute of a second
  backward (retain_graph) of the total;
* ``upsample_conv2d`` / ``UpProjection`` quoted a 2-D array or tensor ``size`` on two lines;
* a ``preset``, ``depth_term`` or ``reduction`` given as a list or an array failed as Python's
  "unhashable type" or numpy's "truth value ... is ambiguous", naming no argument;
* an integer beyond float's range (``alpha=10**400``) failed as "int too large to convert to
  float", naming no argument.

And what held up, kept as a guard: the C++ loss's per-thread tile scratch gives every Python
thread the bits of a single-threaded call.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import fastmde
from fastmde.nn import UpProjection
from fastmde.ops.depth_loss import depth_loss
from fastmde.ops.up_projection import upsample_conv2d
from fastmde.reference.depth_loss import PRESETS
from test_trial_round10_losses import maps as loss_maps, reference_gradient as loss_reference_gradient

OPTIONS = ("log", 0.5, True, True, False)   # depth_term, alpha, gradient, normal, blur


def maps(shape=(1, 9, 11), dtype=torch.float64, seed=0):
    """The loss module's maps, without its mask."""
    pred, target, _ = loss_maps(shape, dtype, seed)
    return pred, target


def reference_gradient(pred, target, weights, incoming):
    """d/d pred of Σ_k incoming[k] * terms[k] for ``weights``, unmasked, without the blur (OPTIONS)."""
    return loss_reference_gradient(pred, target, None, incoming, weights=weights, blur=False)


@pytest.mark.parametrize("op", [depth_loss, torch.ops.fastmde.depth_loss], ids=["eager", "registered"])
def test_raw_op_backward_uses_the_forwards_weights(op):
    pred, target = maps()
    incoming = torch.tensor([0.3, -2.0, 0.5, 1.0], dtype=torch.float64)
    want = reference_gradient(pred, target, [1.0, 0.7, 1.3], incoming.tolist())
    weights = [1.0, 0.7, 1.3]
    x = pred.clone().requires_grad_()
    terms, _, _ = op(x, target, None, *OPTIONS, weights)
    weights[0] = 100.0        # the caller reuses its list before the backward
    (terms * incoming).sum().backward()
    torch.testing.assert_close(x.grad, want, rtol=1e-9, atol=1e-12)


def test_second_backward_of_the_total_recomputes_with_the_forwards_weights():
    """The first backward hands the map over (the caller dropped it); the second recomputes it."""
    pred, target = maps()
    want = reference_gradient(pred, target, [1.0, 0.7, 1.3], [0.0, 0.0, 0.0, 1.0])
    weights = [1.0, 0.7, 1.3]
    x = pred.clone().requires_grad_()
    total = depth_loss(x, target, None, *OPTIONS, weights)[0][3]
    weights[1] = 0.0
    (first,) = torch.autograd.grad(total, x, retain_graph=True)
    (second,) = torch.autograd.grad(total, x)
    torch.testing.assert_close(first, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(second, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("size", [np.array([[6], [10]]), torch.tensor([[6], [10]])], ids=["numpy", "tensor"])
def test_up_projection_size_message_is_one_line(size):
    x, w = torch.randn(1, 4, 3, 5), torch.randn(2, 4, 3, 3)
    for call, what in ((lambda: upsample_conv2d(x, w, size, False), "upsample_conv2d"),
                       (lambda: UpProjection(4, 2)(x, size=size), "UpProjection")):
        with pytest.raises(ValueError, match=f"^{what}: size must be \\(H, W\\)") as info:
            call()
        assert "\n" not in str(info.value) and "[[ 6], [10]]" in str(info.value)


@pytest.mark.parametrize("bad", [["hu"], np.array(["hu"]), ("hu",)], ids=["list", "array", "tuple"])
def test_name_arguments_of_another_type_are_named(bad):
    pred, target = maps((1, 5, 6), torch.float32)
    calls = {
        "preset": lambda: fastmde.depth_loss(pred, target, preset=bad),
        "depth_term": lambda: fastmde.depth_loss(pred, target, depth_term=bad),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=f"^{name} must be a name \\(str\\)"):
            call()
    with pytest.raises(TypeError, match="^preset must be a name \\(str\\), got"):
        fastmde.scale_invariant_loss(pred, target, preset=bad)
    with pytest.raises(TypeError, match="^reduction must be a name \\(str\\), got"):
        fastmde.scale_invariant_loss(pred, target, preset="ssi", reduction=bad)
    with pytest.raises(TypeError, match="^preset must be a name"):
        fastmde.nn.DepthLoss(preset=bad)
    # the names themselves still work
    assert torch.isfinite(fastmde.depth_loss(pred, target, preset="hu"))
    assert torch.isfinite(fastmde.scale_invariant_loss(pred, target, preset="ssi", reduction="image"))


def test_numbers_beyond_float_are_named():
    pred, target = maps((1, 5, 6), torch.float32)
    with pytest.raises(ValueError, match="^alpha must be a finite number, got an integer of 1329 bits"):
        fastmde.depth_loss(pred, target, alpha=10**400)
    with pytest.raises(ValueError, match="^weights must be a finite number"):
        fastmde.depth_loss(pred, target, weights=(1.0, 10**400, 1.0))
    with pytest.raises(ValueError, match="^lambd must be a finite number"):
        fastmde.scale_invariant_loss(pred, target, lambd=-10**5000)


def test_loss_from_several_python_threads_matches_one_thread():
    """The C++ loss keeps its tile rows per thread: threads running different shapes, presets,
    dtypes and holes at once get the bits of a call made alone."""
    cases = []
    for i, (shape, preset, dtype) in enumerate([((1, 3, 5), "hu_blurred", torch.float32), ((2, 35, 9), "hu", torch.float64),
                                                ((1, 1, 40), "l1_hu", torch.bfloat16), ((1, 33, 2), "l1", torch.float32)]):
        pred, target = maps(shape, dtype, seed=i)
        if i % 2:
            target.view(-1)[::7] = float("nan")    # holes: the two-part pass
        o = PRESETS[preset]
        cases.append((pred, target, None, o["depth_term"], 0.5, o["gradient"], o["normal"], o["blur"], [1.0, 0.7, 1.3]))
    want = [depth_loss(*case) for case in cases]
    wrong = []

    def work(k):
        for j in range(24):
            case = (k + j) % len(cases)
            got = depth_loss(*cases[case])
            if not all(torch.equal(a, b) for a, b in zip(got, want[case])):
                wrong.append((k, j, case))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
