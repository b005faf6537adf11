"""The reference depth loss: hand-computed cases, properties, and its analytic gradient."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from fastmde.reference.depth_loss import (
    PRESETS,
    depth_loss_forward_reference,
    depth_loss_terms_reference,
    gaussian_blur_reference,
    gaussian_weights_1d,
    reflect_index,
    sobel_reference,
)


def plane(a, b, h=9, w=11, c=3.0, dtype=torch.float64):
    i = torch.arange(h, dtype=dtype)[:, None]
    j = torch.arange(w, dtype=dtype)[None, :]
    return (c + a * j + b * i)[None]


def interior_mask(h=9, w=11):
    m = torch.zeros(1, h, w, dtype=torch.bool)
    m[:, 1:-1, 1:-1] = True
    return m


def test_sobel_of_tilted_plane_is_constant_inside():
    a, b = 0.3, -0.7
    gx, gy = sobel_reference(plane(a, b))
    # kx sums (1,2,1)-weighted left-minus-right differences: 4 * (-2a); ky top-minus-bottom: 4 * (-2b)
    assert torch.allclose(gx[:, 1:-1, 1:-1], torch.full_like(gx[:, 1:-1, 1:-1], -8 * a))
    assert torch.allclose(gy[:, 1:-1, 1:-1], torch.full_like(gy[:, 1:-1, 1:-1], -8 * b))


def test_loss_terms_of_two_planes_by_hand():
    a, b, a2, b2, alpha = 0.3, -0.7, 0.1, 0.25, 0.5
    pred, target = plane(a, b, c=3.5), plane(a2, b2, c=3.0)
    m = interior_mask()
    terms = depth_loss_terms_reference(pred, target, m, alpha=alpha)
    # depth: pred - target = 0.5 + (a-a2) j + (b-b2) i over the interior pixels
    i = torch.arange(1, 8, dtype=torch.float64)[:, None]
    j = torch.arange(1, 10, dtype=torch.float64)[None, :]
    diff = 0.5 + (a - a2) * j + (b - b2) * i
    assert terms["depth"].item() == pytest.approx(torch.log(diff.abs() + alpha).mean().item(), rel=1e-12)
    expected_grad = math.log(8 * abs(a - a2) + alpha) + math.log(8 * abs(b - b2) + alpha)
    assert terms["gradient"].item() == pytest.approx(expected_grad, rel=1e-12)
    n_hat = torch.tensor([8 * a, 8 * b, 1.0], dtype=torch.float64)
    n = torch.tensor([8 * a2, 8 * b2, 1.0], dtype=torch.float64)
    cos = (n_hat @ n) / (n_hat.norm() * n.norm())
    assert terms["normal"].item() == pytest.approx(abs(1 - cos.item()), rel=1e-12)
    assert terms["total"].item() == pytest.approx(
        terms["depth"].item() + terms["gradient"].item() + terms["normal"].item(), rel=1e-12
    )


def test_gaussian_weights_and_blur_match_padded_convolution():
    w = gaussian_weights_1d(dtype=torch.float64)
    assert w.sum().item() == pytest.approx(1.0)
    assert torch.allclose(w, w.flip(0))
    y = torch.rand(2, 10, 13, dtype=torch.float64)
    kernel = (w[:, None] * w[None, :])[None, None]
    expected = F.conv2d(F.pad(y[:, None], (3, 3, 3, 3), mode="reflect"), kernel)[:, 0]
    assert torch.allclose(gaussian_blur_reference(y), expected, atol=1e-12)
    # a constant map stays constant, also on maps smaller than the kernel
    for h, wd in [(1, 1), (2, 3), (3, 3), (4, 2)]:
        c = torch.full((1, h, wd), 2.5, dtype=torch.float64)
        assert torch.allclose(gaussian_blur_reference(c), c)


def test_reflect_index_folds_repeatedly():
    i = torch.arange(-7, 10)
    r = reflect_index(i, 3)  # period 4: ... 1 0 1 2 1 0 1 2 ...
    assert r.tolist() == [1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1]
    assert reflect_index(i, 1).tolist() == [0] * len(i)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 2), h=st.integers(1, 12), w=st.integers(1, 12),
    preset=st.sampled_from(sorted(PRESETS)), use_mask=st.booleans(), seed=st.integers(0, 2**31 - 1),
)
def test_analytic_gradient_matches_autograd(b, h, w, preset, use_mask, seed):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.rand(b, h, w, generator=g, dtype=torch.float64) * 4 + 0.5).requires_grad_()
    target = torch.rand(b, h, w, generator=g, dtype=torch.float64) * 4 + 0.5
    mask = torch.rand(b, h, w, generator=g) > 0.3 if use_mask else None
    weights = (1.0, 0.7, 1.3)
    terms = depth_loss_terms_reference(pred, target, mask, weights=weights, **PRESETS[preset])
    (expected_grad,) = torch.autograd.grad(terms["total"], pred)
    values, grad_sum, count = depth_loss_forward_reference(
        pred.detach(), target, mask, alpha=0.5, weights=weights, **PRESETS[preset]
    )
    expected_values = torch.stack([terms[k] for k in ("depth", "gradient", "normal", "total")])
    assert torch.allclose(values, expected_values.detach(), rtol=1e-12, atol=1e-12)
    assert count.item() == (b * h * w if mask is None else mask.sum().item())
    # grad_sum is the gradient of N * total
    assert torch.allclose(grad_sum / count.clamp_min(1), expected_grad, rtol=1e-10, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(h=st.integers(2, 10), w=st.integers(2, 10), seed=st.integers(0, 2**31 - 1))
def test_l1_term_is_zero_when_pred_equals_target(h, w, seed):
    y = torch.rand(1, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    terms = depth_loss_terms_reference(y, y, depth_term="l1")
    assert terms["depth"].item() == 0.0
    assert terms["normal"].item() == pytest.approx(0.0, abs=1e-12)
    # log-error terms are ln(alpha) at equality
    assert terms["gradient"].item() == pytest.approx(2 * math.log(0.5), abs=1e-12)


def test_non_finite_ground_truth_is_left_out():
    pred = torch.full((1, 5, 5), 2.0, dtype=torch.float64)
    target = torch.full((1, 5, 5), 1.0, dtype=torch.float64)
    target[0, 2, 2] = float("nan")
    target[0, 0, 4] = float("inf")
    values, grad, count = depth_loss_forward_reference(pred, target, None, "l1", 0.5, True, True, True, (1, 1, 1))
    assert torch.isfinite(values).all() and torch.isfinite(grad).all() and count.item() == 23
    clean = torch.where(torch.isfinite(target), target, torch.zeros_like(target))
    mask = torch.isfinite(target)
    expected, expected_grad, _ = depth_loss_forward_reference(pred, clean, mask, "l1", 0.5, True, True, True, (1, 1, 1))
    assert torch.equal(values, expected) and torch.equal(grad, expected_grad)


def test_all_invalid_mask_gives_zero_loss_and_gradient():
    pred = torch.rand(2, 6, 7, dtype=torch.float64)
    mask = torch.zeros(2, 6, 7, dtype=torch.bool)
    values, grad, count = depth_loss_forward_reference(pred, pred + 1, mask, "log", 0.5, True, True, True, (1, 1, 1))
    assert torch.count_nonzero(values) == 0 and torch.count_nonzero(grad) == 0 and count.item() == 0


def test_half_inputs_compute_in_float32():
    pred = torch.rand(1, 8, 8).to(torch.bfloat16)
    terms = depth_loss_terms_reference(pred, pred + 1)
    assert terms["total"].dtype == torch.float32
    values, grad, count = depth_loss_forward_reference(pred, pred + 1, None, "log", 0.5, True, True, False, (1, 1, 1))
    assert values.dtype == count.dtype == torch.float32 and grad.dtype == torch.bfloat16
