"""The depth loss on every implementation this machine has (``backend`` fixture: reference,
native C++, Triton, under the interpreter without a GPU): the spec's hand-computed cases, values
and every gradient against the differentiable reference (presets, masks with holes, non-finite
ground truth, odd and tiny maps, float16/bfloat16/float32/float64, non-contiguous input), the
masked-stencil rule (issue 15 §1), today's unmasked values pinned, float64 blur weights,
opcheck, float64 gradcheck, torch.compile(fullgraph=True), determinism, bad input.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastmde
from compile_helpers import assert_compiled_matches_eager, compile_counting
from conftest import requires_cuda
from fastmde.ops import depth_loss_op
from fastmde.reference.depth_loss import (
    PRESETS,
    depth_loss_forward_reference,
    depth_loss_terms_reference,
    gaussian_blur_reference,
    gaussian_weights_1d,
    reflect_index,
    sobel_reference,
    stencil_validity,
)
from native_kernel_helpers import depth_pair, loss_kink_pixels, random_mask

TERMS = ("depth", "gradient", "normal", "total")
FIXTURE_HEALTH = [HealthCheck.function_scoped_fixture]
ALPHA = 0.5


def as_device(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


def oracle(pred, target, mask, options, alpha=ALPHA, weights=(1.0, 1.0, 1.0)):
    """Differentiable reference: terms (4,) and d total / d pred, in the compute dtype, on the CPU."""
    cdtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    p = pred.detach().cpu().to(cdtype).requires_grad_()
    mask = None if mask is None else mask.cpu()
    terms = depth_loss_terms_reference(p, target.cpu().to(cdtype), mask, alpha=alpha, weights=weights, **options)
    (grad,) = torch.autograd.grad(terms["total"], p)
    return torch.stack([terms[k].detach() for k in TERMS]), grad


def loss(pred, target, mask, preset=None, alpha=ALPHA, weights=(1.0, 1.0, 1.0), **options):
    """The public API on the forced backend: terms (4,) and d total / d pred (like pred)."""
    p = pred.detach().clone().requires_grad_()
    out = fastmde.depth_loss_terms(p, target, preset=preset, mask=mask, alpha=alpha, weights=weights, **options)
    out["total"].backward()
    return torch.stack([out[k].detach() for k in TERMS]), p.grad


def assert_grad_close(got, want, rtol, ignore=None):
    """Max error within rtol of the largest gradient; ``ignore``: pixels left out (kinks)."""
    got, want = got.cpu(), want.cpu()
    scale = want.abs().max().clamp_min(1e-12)
    err = (got.to(want.dtype) - want).abs()
    if ignore is not None:
        # maps under 16x16 are mostly border (and its 3x3 neighbourhood), so the bound skips them
        if min(ignore.shape[-2:]) >= 16:
            assert ignore.double().mean() < 0.5, "too many ambiguous pixels for a meaningful comparison"
        err = torch.where(ignore.cpu(), torch.zeros_like(err), err)
    err = err.max()
    assert err <= rtol * scale, f"gradient error {err.item():.3g} vs scale {scale.item():.3g}"


def hole_mask(shape, seed):
    """A mask with a few rectangular holes (sensor dropouts, augmentation fill) and some noise."""
    g = torch.Generator().manual_seed(seed)
    b, h, w = shape
    mask = torch.rand(shape, generator=g) > 0.03
    for k in range(b):
        for _ in range(2):
            r, c = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
            mask[k, r : r + 1 + h // 4, c : c + 1 + w // 4] = False
    return mask


def make_mask(shape, seed, kind):
    return hole_mask(shape, seed) if kind == "holes" else random_mask(shape, seed, kind)


# ---------------------------------------------------------------- the spec, by hand


def plane(a, b, h=9, w=11, c=3.0, dtype=torch.float64):
    i = torch.arange(h, dtype=dtype)[:, None]
    j = torch.arange(w, dtype=dtype)[None, :]
    return (c + a * j + b * i)[None]


def test_sobel_of_tilted_plane_is_constant_inside():
    a, b = 0.3, -0.7
    gx, gy = sobel_reference(plane(a, b))
    # kx sums (1,2,1)-weighted left-minus-right differences: 4 * (-2a); ky top-minus-bottom: 4 * (-2b)
    assert torch.allclose(gx[:, 1:-1, 1:-1], torch.full_like(gx[:, 1:-1, 1:-1], -8 * a))
    assert torch.allclose(gy[:, 1:-1, 1:-1], torch.full_like(gy[:, 1:-1, 1:-1], -8 * b))


def test_loss_terms_of_two_planes_by_hand(backend, device):
    """Tilted planes: on the interior 7x9 pixels (the mask) the depth term is a mean of logs of
    known errors, and since the stencil rule leaves out the 5x7 pixels whose 3x3 window is all
    inside the mask, the gradient and normal terms are exactly those of two planes."""
    a, b, a2, b2 = 0.3, -0.7, 0.1, 0.25
    pred, target = plane(a, b, c=3.5), plane(a2, b2, c=3.0)
    m = torch.zeros(1, 9, 11, dtype=torch.bool)
    m[:, 1:-1, 1:-1] = True
    pred, target, m = as_device(device, pred, target, m)
    terms, _ = loss(pred, target, m, preset="hu")
    depth, grad_term, normal_term, total = terms.cpu().tolist()
    i = torch.arange(1, 8, dtype=torch.float64)[:, None]
    j = torch.arange(1, 10, dtype=torch.float64)[None, :]
    diff = 0.5 + (a - a2) * j + (b - b2) * i
    assert depth == pytest.approx(torch.log(diff.abs() + ALPHA).mean().item(), rel=1e-12)
    expected_grad = math.log(8 * abs(a - a2) + ALPHA) + math.log(8 * abs(b - b2) + ALPHA)
    assert grad_term == pytest.approx(expected_grad, rel=1e-12)
    n_hat = torch.tensor([8 * a, 8 * b, 1.0], dtype=torch.float64)
    n = torch.tensor([8 * a2, 8 * b2, 1.0], dtype=torch.float64)
    cos = (n_hat @ n) / (n_hat.norm() * n.norm())
    assert normal_term == pytest.approx(abs(1 - cos.item()), rel=1e-9)
    assert total == pytest.approx(depth + grad_term + normal_term, rel=1e-12)


def test_gaussian_weights_and_blur_match_padded_convolution():
    w = gaussian_weights_1d(dtype=torch.float64)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-15)
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


def test_stencil_validity_is_the_clipped_window():
    valid = torch.ones(1, 12, 14, dtype=torch.bool)
    valid[0, 6, 7] = False
    for blur, r in ((False, 1), (True, 4)):
        s = stencil_validity(valid, blur)
        expected = torch.ones_like(valid)
        expected[0, 6 - r : 6 + r + 1, 7 - r : 7 + r + 1] = False
        assert torch.equal(s, expected)
    # a hole at the image border removes a clipped window; an all-valid map keeps every pixel
    valid = torch.ones(1, 12, 14, dtype=torch.bool)
    valid[0, 0, 0] = False
    assert stencil_validity(valid, True).logical_not().sum().item() == 25
    assert stencil_validity(torch.ones(2, 1, 1, dtype=torch.bool), True).all()


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 2), h=st.integers(1, 12), w=st.integers(1, 12),
    preset=st.sampled_from(sorted(PRESETS)), mask_kind=st.sampled_from(["none", "random", "holes"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_analytic_gradient_matches_autograd(b, h, w, preset, mask_kind, seed):
    """The reference's analytic gradients (the kernels' contract) against autograd of the spec."""
    g = torch.Generator().manual_seed(seed)
    pred = (torch.rand(b, h, w, generator=g, dtype=torch.float64) * 4 + 0.5).requires_grad_()
    target = torch.rand(b, h, w, generator=g, dtype=torch.float64) * 4 + 0.5
    mask = make_mask((b, h, w), seed % 1000, mask_kind)
    weights = (1.0, 0.7, 1.3)
    options = PRESETS[preset]
    terms = depth_loss_terms_reference(pred, target, mask, weights=weights, **options)
    (expected_grad,) = torch.autograd.grad(terms["total"], pred)
    values, grad, counts = depth_loss_forward_reference(
        pred.detach(), target, mask, alpha=ALPHA, weights=weights, **options
    )
    expected_values = torch.stack([terms[k] for k in TERMS])
    assert torch.allclose(values, expected_values.detach(), rtol=1e-12, atol=1e-12)
    valid = torch.ones(b, h, w, dtype=torch.bool) if mask is None else mask
    n_s = stencil_validity(valid, options["blur"]).sum().item()
    assert counts.tolist() == [valid.sum().item(), n_s if options["gradient"] else 0, n_s if options["normal"] else 0]
    assert grad.dtype == torch.float64
    assert torch.allclose(grad, expected_grad, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- values and gradients


def _check_against_oracle(pred, target, mask, options, alpha, weights, term_tol, grad_tol, kinks=True):
    want_terms, want_grad = oracle(pred, target, mask, options, alpha, weights)
    got_terms, got_grad = loss(pred, target, mask, alpha=alpha, weights=weights, **options)
    cdtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    assert got_terms.dtype == cdtype and got_grad.dtype == pred.dtype and got_grad.shape == pred.shape
    torch.testing.assert_close(got_terms.cpu(), want_terms, rtol=term_tol, atol=term_tol)
    # pixels next to a tie (an |.| of ~0) may take either one-sided derivative in float32
    ignore = None
    if kinks and pred.dtype != torch.float64:
        ignore = loss_kink_pixels(pred.cpu(), target.cpu(), None if mask is None else mask.cpu(), options)
    assert_grad_close(got_grad, want_grad, grad_tol, ignore=ignore)
    return got_terms, got_grad


@settings(max_examples=12, deadline=None, suppress_health_check=FIXTURE_HEALTH)
@given(
    b=st.integers(1, 3), h=st.integers(1, 24), w=st.integers(1, 24),
    preset=st.sampled_from(sorted(PRESETS)), mask_kind=st.sampled_from(["none", "random", "holes", "all_invalid"]),
    bad=st.sampled_from([0.0, 0.1]), alpha=st.sampled_from([0.5, 0.1, 2.0]),
    weights=st.sampled_from([(1.0, 1.0, 1.0), (0.3, 2.0, 0.7)]), seed=st.integers(0, 2**16),
)
def test_values_match_reference(backend, device, b, h, w, preset, mask_kind, bad, alpha, weights, seed):
    """float32 terms and d total / d pred on random shapes, presets, masks (holes included),
    NaN/±inf ground truth, alphas and weights."""
    pred, target = depth_pair((b, h, w), seed, bad_fraction=bad)
    mask = make_mask((b, h, w), seed, mask_kind)
    pred, target, mask = as_device(device, pred, target, mask)
    got_terms, got_grad = _check_against_oracle(pred, target, mask, PRESETS[preset], alpha, weights, 2e-5, 1e-4)
    if mask_kind == "all_invalid":
        assert torch.all(got_terms == 0) and torch.all(got_grad == 0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(2, 9, 13), (1, 23, 37)])
@pytest.mark.parametrize("mask_kind", ["none", "holes"])
def test_presets_match_reference(backend, device, preset, shape, mask_kind):
    pred, target = depth_pair(shape, 3, bad_fraction=0.05)
    mask = make_mask(shape, 3, mask_kind)
    _check_against_oracle(*as_device(device, pred, target, mask), PRESETS[preset], ALPHA, (1.0, 0.7, 1.3), 2e-5, 1e-4)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("mask_kind", ["random", "holes"])
def test_values_match_reference_float64(backend, device, preset, mask_kind):
    pred, target = depth_pair((3, 11, 8), 2, dtype=torch.float64, bad_fraction=0.05)
    mask = make_mask((3, 11, 8), 2, mask_kind)
    _check_against_oracle(*as_device(device, pred, target, mask), PRESETS[preset], ALPHA, (1.0, 0.7, 1.3), 1e-10, 1e-10)


@pytest.mark.parametrize("preset", ["hu_blurred", "l1", "hu"])
def test_half_inputs_accumulate_in_float32(backend, device, dtype, preset):
    pred, target = depth_pair((2, 19, 22), 3, dtype=dtype, bad_fraction=0.05)
    mask = hole_mask((2, 19, 22), 3)
    pred, target, mask = as_device(device, pred, target, mask)
    # the reference computes in float32 from the same half values
    want_terms, want_grad = oracle(pred, target, mask, PRESETS[preset])
    got_terms, got_grad = loss(pred, target, mask, preset=preset)
    assert got_terms.dtype == torch.float32 and got_grad.dtype == dtype
    torch.testing.assert_close(got_terms.cpu(), want_terms, rtol=2e-5, atol=2e-5)
    # the gradient's two parts are each rounded to the half type once
    eps = torch.finfo(dtype).eps if dtype != torch.float32 else 5e-5
    ignore = loss_kink_pixels(pred.cpu(), target.cpu(), mask.cpu(), preset) if dtype == torch.float32 else None
    assert_grad_close(got_grad, want_grad, 2 * eps, ignore=ignore)


def test_non_contiguous_and_four_dim_inputs(backend, device):
    pred, target = depth_pair((2, 23, 30), 5, bad_fraction=0.05)
    mask = hole_mask((2, 23, 30), 5)
    want_terms, want_grad = oracle(pred, target, mask, PRESETS["hu_blurred"])
    # (B, 1, H, W) built from transposed storage: neither pred nor target is contiguous
    p_nc, t_nc, m_nc = (x.transpose(1, 2).contiguous().transpose(1, 2)[:, None] for x in (pred, target, mask))
    p_nc, t_nc, m_nc = as_device(device, p_nc, t_nc, m_nc)
    assert not p_nc.is_contiguous()
    p = p_nc.detach().requires_grad_()
    out = fastmde.depth_loss_terms(p, t_nc, preset="hu_blurred", mask=m_nc)
    out["total"].backward()
    got = torch.stack([out[k].detach() for k in TERMS])
    torch.testing.assert_close(got.cpu(), want_terms, rtol=2e-5, atol=2e-5)
    assert_grad_close(p.grad[:, 0], want_grad, 1e-4, ignore=loss_kink_pixels(pred, target, mask, "hu_blurred"))


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 3), (3, 1, 6), (1, 5, 1), (1, 3, 3), (2, 1, 9), (1, 8, 1), (3, 2, 5)])
def test_tiny_maps_fold_the_blur_reflection(backend, device, shape):
    """Maps smaller than the 7-tap blur: the reflection folds more than once."""
    pred, target = depth_pair(shape, 11)
    mask = torch.ones(shape, dtype=torch.bool)
    mask.view(-1)[0] = shape[1] * shape[2] < 4  # a hole where there is room for valid stencils
    for m in (None, mask):
        _check_against_oracle(*as_device(device, pred, target, m), PRESETS["hu_blurred"], ALPHA, (1.0, 1.0, 1.0), 2e-5, 1e-4)


def test_tile_boundaries_large_map(backend, device):
    """Taller and wider than several tiles of every implementation, holes across tile edges."""
    shape = (2, 131, 45) if backend != "triton" or device.type == "cuda" else (1, 41, 67)
    pred, target = depth_pair(shape, 9, bad_fraction=0.02)
    mask = hole_mask(shape, 9)
    _check_against_oracle(*as_device(device, pred, target, mask), PRESETS["l1_hu_blurred"], ALPHA, (1.0, 1.0, 1.0), 2e-5, 1e-4)


def test_non_finite_ground_truth_is_left_out(backend, device):
    """NaN/inf ground truth is invalid: the same loss as finite values masked out there."""
    pred = torch.full((1, 9, 9), 2.0, dtype=torch.float64)
    target = torch.full((1, 9, 9), 1.0, dtype=torch.float64)
    target[0, 4, 4] = float("nan")
    target[0, 0, 8] = float("inf")
    clean = torch.where(torch.isfinite(target), target, torch.full_like(target, 7.0))
    finite = torch.isfinite(target)
    pred, target, clean, finite = as_device(device, pred, target, clean, finite)
    for preset in ("l1_hu_blurred", "hu"):
        values, grad = loss(pred, target, None, preset=preset)
        assert torch.isfinite(values).all() and torch.isfinite(grad).all()
        expected, expected_grad = loss(pred, clean, finite, preset=preset)
        assert torch.equal(values, expected) and torch.equal(grad, expected_grad)


def test_all_invalid_gives_zero_loss_and_gradient(backend, device):
    pred, target = depth_pair((2, 6, 7), 1)
    mask = torch.zeros(2, 6, 7, dtype=torch.bool)
    pred, target, mask = as_device(device, pred, target, mask)
    for preset in ("hu_blurred", "l1_hu"):
        terms, _, counts = depth_loss_op(pred, target, mask, "log", 0.5, True, True, PRESETS[preset]["blur"], [1.0, 1.0, 1.0])
        values, grad = loss(pred, target, mask, preset=preset)
        assert torch.count_nonzero(values) == 0 and torch.count_nonzero(grad) == 0
        assert torch.count_nonzero(terms) == 0 and torch.count_nonzero(counts) == 0


def test_sign_of_zero_gives_zero_gradient(backend, device):
    """pred == target on a constant map (float64): every error is exactly 0, sign(0) = 0."""
    target = torch.full((1, 5, 6), 2.0, dtype=torch.float64, device=device)
    terms, grad = loss(target, target, None, preset="l1_hu")
    assert torch.count_nonzero(grad) == 0
    torch.testing.assert_close(terms.cpu(), torch.tensor([0.0, 2 * math.log(ALPHA), 0.0, 2 * math.log(ALPHA)], dtype=torch.float64))


@settings(max_examples=8, deadline=None, suppress_health_check=FIXTURE_HEALTH)
@given(h=st.integers(2, 10), w=st.integers(2, 10), seed=st.integers(0, 2**31 - 1))
def test_terms_at_minimum_when_pred_equals_target(backend, device, h, w, seed):
    y = torch.rand(1, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    y = y.to(device)
    terms, _ = loss(y, y, None, depth_term="l1")
    assert terms[0].item() == 0.0
    assert terms[2].item() == pytest.approx(0.0, abs=1e-12)
    # log-error terms are ln(alpha) at equality
    assert terms[1].item() == pytest.approx(2 * math.log(ALPHA), abs=1e-12)


# ---------------------------------------------------------------- masked stencils (issue 15 §1)


def wall_with_hole(dtype=torch.float32):
    """A 32x32 wall at 3 m with an 8x8 hole of zeros, its mask, and the true wall."""
    wall = torch.full((1, 32, 32), 3.0, dtype=dtype)
    target = wall.clone()
    target[:, 10:18, 12:20] = 0.0
    return wall, target, target > 0


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_wall_with_hole_has_every_term_at_its_minimum(backend, device, preset, dtype):
    """The issue's instance: with mask = target > 0 and the true wall as prediction, depth is
    ln(alpha) (or 0 for L1), gradient 2 ln(alpha), normal 0, and no pixel is pulled: the
    gradient is the hole-free wall's, whose only non-zero values sit on the image border of
    the blurred presets (there the float blur of a constant is off by an ulp, a kink of |.|)."""
    options = PRESETS[preset]
    wall, target, mask = as_device(device, *wall_with_hole(dtype))
    terms, grad = loss(wall, target, mask, preset=preset)
    depth_min = math.log(ALPHA) if options["depth_term"] == "log" else 0.0
    stencil = options["gradient"] or options["normal"]
    expected = torch.tensor([depth_min, 2 * math.log(ALPHA) if stencil else 0.0, 0.0, 0.0], dtype=torch.float64)
    expected[3] = expected[:3].sum()
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(terms.cpu().double(), expected, rtol=tol, atol=tol)
    grad = grad.cpu().double()
    # inside the image border band no valid pixel is pulled, the hole's neighbourhood included
    # (|1 - cos| at cos = 1 to rounding leaves derivatives of ~1e-20 in float64, ~1e-11 in float32)
    zero_tol = 1e-8 if dtype == torch.float32 else 1e-15
    assert grad[:, 2:-2, 2:-2][mask.cpu()[:, 2:-2, 2:-2]].abs().max() <= zero_tol
    # everywhere: the hole-free wall's gradient, rescaled by the stencil counts
    _, grad_free = loss(wall, wall, None, preset=preset)
    n_s = stencil_validity(mask.cpu(), options["blur"]).sum().item()
    n_free = 32 * 32
    torch.testing.assert_close(grad * n_s, grad_free.cpu().double() * n_free, rtol=1e-5, atol=zero_tol * n_free)
    if not options["blur"]:
        assert grad.abs().max() <= zero_tol


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_prediction_inside_the_hole_does_not_matter(backend, device, preset):
    wall, target, mask = wall_with_hole()
    pred = wall + 0.3 * torch.randn(wall.shape, generator=torch.Generator().manual_seed(0))
    other = pred.clone()
    other[:, 10:18, 12:20] = torch.rand(8, 8, generator=torch.Generator().manual_seed(1)) * 9
    hole_values = target.clone()
    hole_values[:, 10:18, 12:20] = 50.0  # what the ground truth holds in a masked-out hole does not matter either
    pred, other, target, hole_values, mask = as_device(device, pred, other, target, hole_values, mask)
    terms, grad = loss(pred, target, mask, preset=preset)
    terms_other, grad_other = loss(other, target, mask, preset=preset)
    terms_hv, grad_hv = loss(pred, hole_values, mask, preset=preset)
    assert torch.equal(terms, terms_other) and torch.equal(terms, terms_hv)
    assert torch.equal(grad[mask], grad_other[mask]) and torch.equal(grad, grad_hv)
    assert torch.count_nonzero(grad_other[~mask]) == 0


@pytest.mark.parametrize("blur", [False, True])
def test_counts_per_term(backend, device, blur):
    """The op returns a count per term: N_d valid pixels, N_s pixels with a valid stencil."""
    wall, target, mask = as_device(device, *wall_with_hole())
    _, _, counts = depth_loss_op(wall, target, mask, "log", 0.5, True, True, blur, [1.0, 1.0, 1.0])
    side = 8 + 2 * (4 if blur else 1)
    assert counts.cpu().tolist() == [32 * 32 - 64, 32 * 32 - side * side, 32 * 32 - side * side]
    _, _, counts = depth_loss_op(wall, target, mask, "l1", 0.5, False, True, blur, [1.0, 1.0, 1.0])
    assert counts.cpu().tolist() == [32 * 32 - 64, 0, 32 * 32 - side * side]
    _, grad, counts = depth_loss_op(wall, target, mask, "l1", 0.5, False, False, blur, [1.0, 1.0, 1.0])
    assert counts.cpu().tolist() == [32 * 32 - 64, 0, 0] and grad.shape == wall.shape


# ---------------------------------------------------------------- unmasked values of before (pinned)

# Computed at commit 4d367ae (before masked stencils) on each backend: inputs of
# ``pinned_inputs``; per (backend, dtype, preset): terms [depth, gradient, normal, total],
# d total / d pred at PINNED_PIXELS, and sum |d total / d pred|.
PINNED_PIXELS = [(0, 0, 0), (0, 5, 6), (1, 10, 12), (1, 0, 12), (0, 10, 0), (1, 3, 9)]
PINNED = {
    ('native', 'float32', 'hu'): (
        [-0.25975561141967773, 0.5353439450263977, 0.02002965658903122, 0.2956179976463318],
        [0.010862035676836967, 0.037497058510780334, 0.00019221205729991198, -0.014171220362186432, -0.014562739990651608, 0.03320702910423279],
        5.470548939068976,
    ),
    ('native', 'float32', 'hu_blurred'): (
        [-0.25975561141967773, 3.1485512256622314, 0.31989821791648865, 3.208693742752075],
        [-0.016543108969926834, 0.010536577552556992, 0.0055999779142439365, -0.0031287462916225195, -0.0089137377217412, -0.020878955721855164],
        2.205045499766129,
    ),
    ('native', 'float32', 'l1'): (
        [0.3051741123199463, 0.0, 0.0, 0.3051741123199463],
        [-0.003496503457427025, 0.003496503457427025, 0.003496503457427025, -0.003496503457427025, -0.003496503457427025, 0.003496503457427025],
        0.9999999888241291,
    ),
    ('native', 'float32', 'l1_hu'): (
        [0.3051741123199463, 0.5353439450263977, 0.02002965658903122, 0.8605477213859558],
        [0.01139026042073965, 0.037621382623910904, -0.002609685529023409, -0.014779074117541313, -0.013793719932436943, 0.0340505950152874],
        5.3791500386432745,
    ),
    ('native', 'float32', 'l1_hu_blurred'): (
        [0.3051741123199463, 3.1485512256622314, 0.31989821791648865, 3.773623466491699],
        [-0.016014883294701576, 0.010660902597010136, 0.0027980804443359375, -0.0037366009782999754, -0.008144717663526535, -0.020035389810800552],
        2.0110981946563697,
    ),
    ('native', 'float64', 'hu'): (
        [-0.25975558566276674, 0.5353440346266307, 0.020029654478703206, 0.29561810344256717],
        [0.010862036409660112, 0.037497106876324786, 0.00019217021536865731, -0.014171218423458075, -0.014562733698118602, 0.033207040723109996],
        5.470548049839403,
    ),
    ('native', 'float64', 'hu_blurred'): (
        [-0.25975558566276674, 3.14855127081642, 0.31989821077893543, 3.2086938959325884],
        [-0.016543143933193154, 0.010536595792863054, 0.005599973380724641, -0.003128746231206591, -0.0089137318565089, -0.02087893519190755],
        2.2050452723149006,
    ),
    ('native', 'float64', 'l1'): (
        [0.3051741348156636, 0.0, 0.0, 0.3051741348156636],
        [-0.0034965034965034965, 0.0034965034965034965, 0.0034965034965034965, -0.0034965034965034965, -0.0034965034965034965, 0.0034965034965034965],
        0.9999999999999999,
    ),
    ('native', 'float64', 'l1_hu'): (
        [0.3051741348156636, 0.5353440346266307, 0.020029654478703206, 0.8605478239209975],
        [0.011390261277720679, 0.037621432150805996, -0.0026097260482727228, -0.01477907327237245, -0.01379371546965986, 0.034050606032765364],
        5.379149233998017,
    ),
    ('native', 'float64', 'l1_hu_blurred'): (
        [0.3051741348156636, 3.14855127081642, 0.31989821077893543, 3.773623616411019],
        [-0.01601491906513259, 0.010660921067344268, 0.0027980771170832614, -0.003736601080120966, -0.008144713628050158, -0.02003536988225218],
        2.0110980648276175,
    ),
    ('reference', 'float32', 'hu'): (
        [-0.25975558161735535, 0.535344123840332, 0.020029660314321518, 0.2956182062625885],
        [0.010862031951546669, 0.037497054785490036, 0.00019220163812860847, -0.014171218499541283, -0.014562741853296757, 0.03320702910423279],
        5.47054738485167,
    ),
    ('reference', 'float32', 'hu_blurred'): (
        [-0.25975558161735535, 3.1485512256622314, 0.31989815831184387, 3.208693742752075],
        [-0.016543129459023476, 0.010536594316363335, 0.005599976517260075, -0.003128747222945094, -0.008913742378354073, -0.02087894268333912],
        2.2050451829818485,
    ),
    ('reference', 'float32', 'l1'): (
        [0.3051741421222687, 0.0, 0.0, 0.3051741421222687],
        [-0.003496503457427025, 0.003496503457427025, 0.003496503457427025, -0.003496503457427025, -0.003496503457427025, 0.003496503457427025],
        0.9999999888241291,
    ),
    ('reference', 'float32', 'l1_hu'): (
        [0.3051741421222687, 0.535344123840332, 0.020029660314321518, 0.8605479001998901],
        [0.011390257626771927, 0.037621382623910904, -0.0026096960064023733, -0.014779074117541313, -0.013793721795082092, 0.0340505950152874],
        5.379148664868808,
    ),
    ('reference', 'float32', 'l1_hu_blurred'): (
        [0.3051741421222687, 3.1485512256622314, 0.31989815831184387, 3.773623466491699],
        [-0.016014903783798218, 0.010660919360816479, 0.0027980785816907883, -0.00373660190962255, -0.008144723251461983, -0.020035378634929657],
        2.0110980048120837,
    ),
    ('reference', 'float64', 'hu'): (
        [-0.2597555856627668, 0.5353440346266308, 0.020029654478703196, 0.2956181034425672],
        [0.010862036409660094, 0.03749710687632482, 0.00019217021536875747, -0.014171218423458077, -0.014562733698118608, 0.03320704072310996],
        5.470548049839403,
    ),
    ('reference', 'float64', 'hu_blurred'): (
        [-0.2597555856627668, 3.1485512708164194, 0.31989821077893554, 3.208693895932588],
        [-0.0165431439331932, 0.010536595792863064, 0.005599973380724649, -0.0031287462312065933, -0.008913731856508898, -0.020878935191907564],
        2.2050452723149006,
    ),
    ('reference', 'float64', 'l1'): (
        [0.3051741348156636, 0.0, 0.0, 0.3051741348156636],
        [-0.0034965034965034965, 0.0034965034965034965, 0.0034965034965034965, -0.0034965034965034965, -0.0034965034965034965, 0.0034965034965034965],
        0.9999999999999999,
    ),
    ('reference', 'float64', 'l1_hu'): (
        [0.3051741348156636, 0.5353440346266308, 0.020029654478703196, 0.8605478239209976],
        [0.011390261277720661, 0.03762143215080603, -0.0026097260482726226, -0.014779073272372455, -0.013793715469659866, 0.03405060603276533],
        5.3791492339980165,
    ),
    ('reference', 'float64', 'l1_hu_blurred'): (
        [0.3051741348156636, 3.1485512708164194, 0.31989821077893554, 3.7736236164110184],
        [-0.01601491906513263, 0.01066092106734428, 0.0027980771170832692, -0.0037366010801209684, -0.008144713628050157, -0.02003536988225219],
        2.011098064827618,
    ),
    ('triton', 'float32', 'hu'): (
        [-0.25975561141967773, 0.5353440046310425, 0.020029664039611816, 0.2956180274486542],
        [0.010862035676836967, 0.037497058510780334, 0.00019221205729991198, -0.014171220362186432, -0.014562739990651608, 0.03320703282952309],
        5.470548958073778,
    ),
    ('triton', 'float32', 'hu_blurred'): (
        [-0.25975558161735535, 3.1485512256622314, 0.31989821791648865, 3.208693742752075],
        [-0.016543131321668625, 0.010536576621234417, 0.005599974654614925, -0.003128747921437025, -0.0089137377217412, -0.020878948271274567],
        2.205045428014273,
    ),
    ('triton', 'float32', 'l1'): (
        [0.3051741123199463, 0.0, 0.0, 0.3051741123199463],
        [-0.003496503457427025, 0.003496503457427025, 0.003496503457427025, -0.003496503457427025, -0.003496503457427025, 0.003496503457427025],
        0.9999999888241291,
    ),
    ('triton', 'float32', 'l1_hu'): (
        [0.3051741123199463, 0.5353440046310425, 0.020029664039611816, 0.8605477809906006],
        [0.01139026042073965, 0.037621382623910904, -0.002609685529023409, -0.014779074117541313, -0.013793719932436943, 0.0340505987405777],
        5.379150053330704,
    ),
    ('triton', 'float32', 'l1_hu_blurred'): (
        [0.3051741421222687, 3.1485512256622314, 0.31989821791648865, 3.773623466491699],
        [-0.016014905646443367, 0.010660901665687561, 0.00279807741753757, -0.0037366021424531937, -0.008144717663526535, -0.020035382360219955],
        2.0110980815661605,
    ),
    ('triton', 'float64', 'hu'): (
        [-0.2597555856627668, 0.5353440346266307, 0.020029654478703182, 0.2956181034425671],
        [0.010862036409660113, 0.037497106876324786, 0.00019217021536865886, -0.014171218423458075, -0.014562733698118602, 0.03320704072310999],
        5.470548049839403,
    ),
    ('triton', 'float64', 'hu_blurred'): (
        [-0.2597555856627668, 3.1485512708164194, 0.31989821077893554, 3.208693895932588],
        [-0.016543143933193154, 0.01053659579286306, 0.005599973380724645, -0.003128746231206591, -0.0089137318565089, -0.02087893519190757],
        2.2050452723148997,
    ),
    ('triton', 'float64', 'l1'): (
        [0.3051741348156635, 0.0, 0.0, 0.3051741348156635],
        [-0.0034965034965034965, 0.0034965034965034965, 0.0034965034965034965, -0.0034965034965034965, -0.0034965034965034965, 0.0034965034965034965],
        0.9999999999999999,
    ),
    ('triton', 'float64', 'l1_hu'): (
        [0.3051741348156635, 0.5353440346266307, 0.020029654478703182, 0.8605478239209975],
        [0.01139026127772068, 0.037621432150805996, -0.0026097260482727228, -0.01477907327237245, -0.01379371546965986, 0.034050606032765364],
        5.379149233998017,
    ),
    ('triton', 'float64', 'l1_hu_blurred'): (
        [0.3051741348156635, 3.1485512708164194, 0.31989821077893554, 3.7736236164110184],
        [-0.01601491906513259, 0.010660921067344273, 0.0027980771170832653, -0.0037366010801209667, -0.008144713628050157, -0.020035369882252196],
        2.011098064827617,
    ),
}


def pinned_inputs(dtype):
    g = torch.Generator().manual_seed(1234)
    target = torch.rand(2, 11, 13, generator=g, dtype=torch.float64) * 9.5 + 0.5
    pred = (target + 0.4 * torch.randn(2, 11, 13, generator=g, dtype=torch.float64)).clamp_min(0.05)
    return pred.to(dtype), target.to(dtype)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_unmasked_values_are_those_of_before(backend, device, preset, dtype):
    """Without a mask, and with a mask of all true, the terms and gradients of before the
    masked stencils (1e-6 close; float64 blurred presets moved by ~2e-7 with float64 weights)."""
    pred, target = as_device(device, *pinned_inputs(dtype))
    want_terms, want_pixels, want_abs = PINNED[(backend, str(dtype).split(".")[-1], preset)]
    for mask in (None, torch.ones(pred.shape, dtype=torch.bool, device=device)):
        terms, grad = loss(pred, target, mask, preset=preset)
        grad = grad.cpu().double()
        torch.testing.assert_close(terms.cpu().double(), torch.tensor(want_terms, dtype=torch.float64), rtol=1e-6, atol=1e-7)
        scale = grad.abs().max().item()
        got_pixels = torch.tensor([grad[p].item() for p in PINNED_PIXELS], dtype=torch.float64)
        torch.testing.assert_close(got_pixels, torch.tensor(want_pixels, dtype=torch.float64), rtol=1e-6, atol=1e-6 * scale)
        assert grad.abs().sum().item() == pytest.approx(want_abs, rel=1e-6)


# ---------------------------------------------------------------- float64 blur weights (issue 15 §7)


def float64_blurred_loss(pred, target):
    """hu_blurred in float64 built independently: float64 Gaussian from math.exp, conv2d with
    reflect padding, conv2d Sobel; no mask."""
    r = [math.exp(-(i - 3) ** 2 / (2 * 1.4**2)) for i in range(7)]
    w = torch.tensor(r, dtype=torch.float64)
    w = w / w.sum()
    yb = F.conv2d(F.pad(target[:, None], (3, 3, 3, 3), mode="reflect"), (w[:, None] * w[None, :])[None, None])
    k = torch.tensor([[[[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]], [[[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]]]], dtype=torch.float64)
    g = F.conv2d(yb, k, padding=1)
    p = F.conv2d(pred[:, None], k, padding=1)
    depth = torch.log((pred - target).abs() + ALPHA).mean()
    grad_term = torch.log((p - g).abs() + ALPHA).sum(1).mean()
    cos = (p[:, 0] * g[:, 0] + p[:, 1] * g[:, 1] + 1) / torch.sqrt((p * p).sum(1) + 1) / torch.sqrt((g * g).sum(1) + 1)
    normal = (1 - cos).abs().mean()
    return torch.stack((depth, grad_term, normal, depth + grad_term + normal))


def test_float64_uses_float64_blur_weights(backend, device):
    w = gaussian_weights_1d(dtype=torch.float64)
    w32 = gaussian_weights_1d(dtype=torch.float32)
    assert w.dtype == torch.float64 and (w - w32.double()).abs().max() > 0  # not float32 values
    pred, target = depth_pair((2, 13, 17), 8, dtype=torch.float64)
    p = pred.clone().requires_grad_()
    want = float64_blurred_loss(p, target)
    (want_grad,) = torch.autograd.grad(want[3], p)
    terms, grad = loss(*as_device(device, pred, target), None, preset="hu_blurred")
    torch.testing.assert_close(terms.cpu(), want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad.cpu(), want_grad, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- op contract, autograd, compile


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("blur", [True, False])
def test_opcheck(backend, device, masked, blur):
    pred, target = depth_pair((2, 7, 9), 4, bad_fraction=0.1)
    mask = hole_mask((2, 7, 9), 4) if masked else None
    pred, target, mask = as_device(device, pred, target, mask)
    pred.requires_grad_()
    torch.library.opcheck(depth_loss_op, (pred, target, mask, "log", 0.5, True, True, blur, [1.0, 1.0, 1.0]))
    torch.library.opcheck(depth_loss_op, (pred, target, mask, "l1", 0.5, False, True, blur, [1.0, 0.5, 2.0]))
    torch.library.opcheck(depth_loss_op, (pred, target, mask, "l1", 0.5, False, False, blur, [1.0, 0.5, 2.0]))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_gradcheck_float64(backend, device, preset):
    shape = (2, 5, 6) if backend != "triton" or device.type == "cuda" else (1, 4, 5)
    pred, target = depth_pair(shape, 2, dtype=torch.float64, bad_fraction=0.1)
    mask = random_mask(shape, 2, "random")
    pred, target, mask = as_device(device, pred, target, mask)
    pred.requires_grad_()
    assert torch.autograd.gradcheck(lambda p: fastmde.depth_loss(p, target, preset=preset, mask=mask), (pred,))


def test_compile_fullgraph(backend, device):
    pred, target = depth_pair((2, 12, 17), 6, bad_fraction=0.05)
    mask = hole_mask((2, 12, 17), 6)
    pred, target, mask = as_device(device, pred, target, mask)
    torch._dynamo.reset()

    def f(p, t, m):
        return fastmde.depth_loss(p, t, preset="hu_blurred", mask=m) * 2.0

    compiled = torch.compile(f, fullgraph=True)
    assert_compiled_matches_eager(compiled, f, pred, target, mask)


def test_deterministic(backend, device):
    """Same value run to run and, for the C++ kernels, whatever the thread count."""
    pred, target = depth_pair((3, 37, 29), 1, bad_fraction=0.02)
    mask = hole_mask((3, 37, 29), 1)
    pred, target, mask = as_device(device, pred, target, mask)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = loss(pred, target, mask, preset="hu_blurred")
        torch.set_num_threads(max(2, threads))
        many = loss(pred, target, mask, preset="hu_blurred")
    finally:
        torch.set_num_threads(threads)
    again = loss(pred, target, mask, preset="hu_blurred")
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])
    assert torch.equal(again[0], many[0]) and torch.equal(again[1], many[1])


def test_backends_report(backend, device):
    assert fastmde.backends()["depth_loss"][device.type] == backend


def test_bad_input_is_named(backend, device):
    pred, target = as_device(device, *depth_pair((1, 5, 5), 0))
    with pytest.raises(ValueError, match="preset"):
        fastmde.depth_loss(pred, target, preset="hu2")
    with pytest.raises(ValueError, match="depth_term"):
        fastmde.depth_loss(pred, target, depth_term="l2")
    with pytest.raises(ValueError, match="alpha"):
        fastmde.depth_loss(pred, target, alpha=0.0)
    with pytest.raises(ValueError, match="weights"):
        fastmde.depth_loss(pred, target, weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="shapes differ"):
        fastmde.depth_loss(pred, target[:, :4])
    with pytest.raises(ValueError, match="mask shape"):
        fastmde.depth_loss(pred, target, mask=torch.ones(1, 4, 5, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="target requires grad"):
        fastmde.depth_loss(pred, target.clone().requires_grad_())
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        fastmde.depth_loss(pred.int(), target)
    # the implementation itself, called with a bad option, names it too
    with pytest.raises((ValueError, RuntimeError), match="depth_term"):
        depth_loss_op(pred, target, None, "l2", 0.5, True, True, False, [1.0, 1.0, 1.0])


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_realistic_shape(dtype):
    fastmde.set_backend("triton")
    try:
        pred, target = depth_pair((4, 480, 640), 0, dtype=dtype, bad_fraction=0.01)
        mask = hole_mask((4, 480, 640), 0)
        pred, target, mask = pred.cuda(), target.cuda(), mask.cuda()
        terms, grad, counts = depth_loss_op(pred, target, mask, "log", 0.5, True, True, True, [1.0, 1.0, 1.0])
        ref = depth_loss_forward_reference(pred.float(), target.float(), mask, "log", 0.5, True, True, True, (1.0, 1.0, 1.0))
        assert torch.equal(counts, ref[2])
        torch.testing.assert_close(terms, ref[0], rtol=1e-4, atol=1e-5)
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-4
        assert grad.dtype == dtype
        torch.testing.assert_close(grad.float(), ref[1], rtol=tol, atol=tol * float(ref[1].abs().max()))
    finally:
        fastmde.set_backend(None)


# ---------------------------------------------------------------- input conventions (issue 22 §1, 21 §2, 23)


def precision_instance(dtype):
    """A half-precision prediction beside a float32 ground truth (1 x 32 x 64 = 2048 pixels, a
    tilted plane with noise, four pixels at 10.01-10.04 m): pytorch-lightning#4840's setting."""
    g = torch.Generator().manual_seed(22)
    i = torch.arange(32, dtype=torch.float64)[:, None]
    j = torch.arange(64, dtype=torch.float64)[None, :]
    target = (2.0 + 0.1 * j + 0.05 * i + 0.3 * torch.rand(32, 64, generator=g, dtype=torch.float64)).float()[None]
    target.view(-1)[:4] = torch.tensor([10.01, 10.02, 10.03, 10.04])
    pred = (target.double() + 0.2 * torch.randn(1, 32, 64, generator=g, dtype=torch.float64)).to(dtype)
    return pred, target


# hu loss of precision_instance in float64 from the half values of pred and the float32 ground
# truth, and what it was while the ground truth was rounded to pred's dtype first
PRECISION_VALUES = {torch.bfloat16: (-0.3507346051689185, -0.3484748226801929),
                    torch.float16: (-0.3490785340529584, -0.34910158967793936)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_ground_truth_keeps_its_precision(backend, device, dtype):
    """Issue 22 §1: a float32 ground truth is never rounded to the prediction's half dtype."""
    pred, target = precision_instance(dtype)
    right, rounded = PRECISION_VALUES[dtype]
    want = depth_loss_terms_reference(pred.double(), target.double(), **PRESETS["hu"])["total"].item()
    assert want == pytest.approx(right, abs=1e-12)
    assert abs(right - rounded) > 2e-5   # the two conventions differ by far more than the tolerance
    p, t = as_device(device, pred, target)
    assert t.dtype == torch.float32
    terms, grad = loss(p, t, None, preset="hu")
    assert terms[3].item() == pytest.approx(right, abs=2e-6)
    assert fastmde.nn.DepthLoss("hu")(p, t).item() == pytest.approx(right, abs=2e-6)
    # the gradient too: the float32 oracle on the float32 ground truth
    want_terms, want_grad = oracle(pred, target, None, PRESETS["hu"])
    assert grad.dtype == dtype
    assert_grad_close(grad, want_grad, 2 * torch.finfo(dtype).eps)


def test_ground_truth_dtype_mixes(backend, device):
    """Every pairing of dtypes is read in the compute dtype: the result is that of the float32 (or
    float64) reference on the ground truth's own values."""
    pred, target = depth_pair((2, 7, 9), 5, dtype=torch.float64, bad_fraction=0.1)
    mask = hole_mask((2, 7, 9), 5)
    pairs = [(torch.float16, torch.float32), (torch.bfloat16, torch.float64), (torch.float32, torch.float16),
             (torch.float32, torch.float64), (torch.float64, torch.float32)]
    for pdt, tdt in pairs:
        p, t = pred.to(pdt), target.to(tdt)
        want_terms, _ = oracle(p, t, mask, PRESETS["hu_blurred"])
        got_terms, got_grad = loss(*as_device(device, p, t, mask), preset="hu_blurred")
        assert got_grad.dtype == pdt
        tol = 1e-12 if pdt == torch.float64 else 2e-5
        torch.testing.assert_close(got_terms.cpu(), want_terms, rtol=tol, atol=tol, msg=f"{pdt} / {tdt}")


def test_opcheck_mixed_dtypes(backend, device):
    pred, target = depth_pair((2, 7, 9), 4, bad_fraction=0.1)
    mask = hole_mask((2, 7, 9), 4)
    pred, target, mask = as_device(device, pred.to(torch.bfloat16), target, mask)
    pred.requires_grad_()
    torch.library.opcheck(depth_loss_op, (pred, target, mask, "log", 0.5, True, True, True, [1.0, 1.0, 1.0]))


def test_millimetre_ground_truth_is_named_on_the_first_call(backend, device):
    """Issue 23: ground truth in millimetres (loss 23.4 without a word) gets one warning, at the
    caller's line, on the first call of the process."""
    from fastmde import _checks

    pred, target = as_device(device, *depth_pair((1, 9, 11), 3))
    _checks.reset_depth_unit_check()
    with pytest.warns(UserWarning, match=r"median .* millimetres") as record:
        fastmde.depth_loss(pred, target * 1000.0)
    assert [w.filename for w in record] == [__file__]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastmde.depth_loss(pred, target * 1000.0)   # checked once: no synchronisation per call
    _checks.reset_depth_unit_check()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastmde.depth_loss(pred, target)            # metres: nothing to say


@pytest.mark.parametrize("preset", ["hu", "hu_blurred", "l1"])
def test_a_term_with_no_counted_pixel_is_named(backend, device, preset):
    """Issue 21 §2: sparse ground truth (no whole valid stencil) leaves the gradient and normal
    terms at 0; a warning says so, at the caller's line (CPU tensors: at once)."""
    import warnings

    pred, target = depth_pair((2, 9, 11), 8)
    sparse = torch.zeros(2, 9, 11, dtype=torch.bool)
    sparse[:, ::3, ::3] = True            # isolated valid pixels, like projected LiDAR points
    pred, target, sparse = as_device(device, pred, target, sparse)
    if preset == "l1":
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fastmde.depth_loss(pred, target, preset=preset, mask=sparse)   # no stencil term requested
    else:
        with pytest.warns(UserWarning, match="gradient and normal terms count nothing") as record:
            terms, _ = loss(pred, target, sparse, preset=preset)
        assert terms[1] == 0 and terms[2] == 0 and terms[0] != 0
        window = "9x9" if preset == "hu_blurred" else "3x3"
        assert window in str(record[0].message) and record[0].filename == __file__
    with pytest.warns(UserWarning, match="no valid ground-truth pixel"):
        fastmde.nn.DepthLoss(preset)(pred, target, torch.zeros_like(sparse))


def test_count_checks_never_synchronise_cuda():
    """On CUDA the counts are checked once their copy has arrived, on a later call (here faked
    with a tensor whose event completes at the next poll)."""
    from fastmde._warn import HostValues

    checks = HostValues()
    seen = []
    assert checks.submit(torch.zeros(3), lambda c: seen.append(c) or "cpu: at once") == ["cpu: at once"]

    class Done:
        def query(self):
            return True

    checks._pending.append((Done(), torch.zeros(3), lambda c: "arrived"))
    assert checks.poll() == ["arrived"] and checks.poll() == []


# ---------------------------------------------------------------- dynamic shapes (issue 22 §3)


@pytest.mark.parametrize("entry", ["depth_loss", "depth_loss_terms", "DepthLoss"])
def test_compile_dynamic_one_graph_for_every_size(backend, device, entry, monkeypatch):
    """pytorch#121080: under dynamic=True the option checks (math.isfinite of a symbolic float)
    broke the graph; one graph now serves several sizes (sizes >= 2: dynamo specialises 0 and 1)."""
    module = fastmde.nn.DepthLoss("hu_blurred", weights=(1.0, 0.5, 2.0))

    def f(p, t, m):
        if entry == "depth_loss":
            return fastmde.depth_loss(p, t, preset="hu_blurred", mask=m, weights=(1.0, 0.5, 2.0))
        if entry == "depth_loss_terms":
            return fastmde.depth_loss_terms(p, t, preset="hu_blurred", mask=m, weights=(1.0, 0.5, 2.0))["total"]
        return module(p, t, m)

    compiled, counter = compile_counting(f)
    shapes = [(2, 6, 9), (3, 7, 5), (2, 11, 8)] if backend == "triton" and device.type == "cpu" else \
        [(2, 9, 13), (3, 16, 11), (4, 23, 30)]
    for k, shape in enumerate(shapes):
        pred, target = depth_pair(shape, k, bad_fraction=0.05)
        mask = hole_mask(shape, k)
        pred, target, mask = as_device(device, pred, target, mask)
        assert_compiled_matches_eager(compiled, f, pred, target, mask)
        # the first call may count two backend calls (dynamo restarts its analysis once to
        # specialise the float options); later sizes add none
        first = counter.frame_count if k == 0 else first
    assert counter.frame_count == first <= 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["fp32", "fp64", "bf16", "fp16"])
def test_backward_pass_matches_its_reference(backend, device, dtype):
    """``fastmde::depth_loss_backward`` (one elementwise pass, g * grad) against
    ``depth_loss_backward_reference``: bit for bit on the reference and the C++ kernel; Triton
    within one rounding of the output dtype. The map is in the gradient dtype (float32 for a
    float16 prediction), the result in the prediction's; odd sizes, g = 1 (the result is the map
    itself), a negative g, g = 0, and a map holding 1/N-sized values (subnormal in float16)."""
    from fastmde.ops.depth_loss import _depth_loss_backward
    from fastmde.reference.depth_loss import depth_loss_backward_reference, gradient_dtype

    compute = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(3)
    for scale in (3.0, 1e-6):
        grad = (torch.randn(3, 5, 7, generator=g) * scale).to(gradient_dtype(dtype)).to(device)
        for grad_total in (1.0, -0.37, 0.0, 65536.0):
            args = (torch.tensor(grad_total, dtype=compute, device=device), grad, dtype)
            want = depth_loss_backward_reference(*args)
            got = _depth_loss_backward(*args)
            assert got.dtype == dtype and got.shape == grad.shape
            if grad_total == 1.0:
                assert torch.equal(want, grad.to(dtype))
            if backend == "triton":
                eps = torch.finfo(dtype).eps
                torch.testing.assert_close(got.cpu(), want.cpu(), rtol=eps, atol=eps * float(want.abs().max()))
            else:
                assert torch.equal(got, want), (scale, grad_total)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["fp32", "fp64", "bf16", "fp16"])
def test_forward_gradient_is_the_normalised_sum_of_its_parts(backend, device, dtype):
    """The forward's gradient map is d total / d pred: against autograd of the spec (float64),
    and, per twin, the normalisation's rounding (each product and the sum in the compute dtype)
    is the reference's: the float16 map is float32, where 1/N for 2048 pixels keeps its digits
    (in float16 it would be subnormal); the map's dtype is ``gradient_dtype``."""
    from fastmde.reference.depth_loss import gradient_dtype

    pred, target = depth_pair((2, 32, 32), 5, dtype=dtype)
    mask = hole_mask((2, 32, 32), 5)
    options = PRESETS["hu_blurred"]
    p64 = pred.double().requires_grad_()     # the spec at the inputs as the kernel reads them
    (expected,) = torch.autograd.grad(depth_loss_terms_reference(p64, target.double(), mask, **options)["total"], p64)
    p, t, m = as_device(device, pred, target, mask)
    terms, grad, counts = depth_loss_op(p, t, m, "log", 0.5, True, True, True, [1.0, 1.0, 1.0])
    assert grad.dtype == gradient_dtype(dtype) and grad.shape == p.shape
    tol = {torch.float64: 1e-9, torch.float32: 2e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}[dtype]
    torch.testing.assert_close(grad.cpu().double(), expected, rtol=tol, atol=tol * float(expected.abs().max()))


def test_loss_backward_hands_over_its_map_safely():
    """``loss.backward()`` (incoming gradient 1) gets the forward's map without a pass, equal to
    the registered op's gradient (the path torch.compile takes) to the bit; a scaled loss takes
    the scaling pass. The handed-over map is the caller's: backwards through a retained graph
    recompute it, so repeated ``retain_graph=True`` backwards accumulate right, also after the
    caller changed the first gradient in place (``clip_grad_norm_``, ``zero_grad(set_to_none=
    False)``, through ``.data``), for (B, H, W) and (B, 1, H, W) leaves and network outputs."""
    from fastmde.ops.depth_loss import depth_loss_op as registered

    pred, target = depth_pair((2, 24, 20), 1)
    mask = hole_mask((2, 24, 20), 1)
    p_op = pred.clone().requires_grad_()
    registered(p_op, target, mask, "log", 0.5, True, True, True, [1.0, 1.0, 1.0])[0][3].backward()
    want = p_op.grad
    for shape in ((2, 24, 20), (2, 1, 24, 20)):
        p = pred.clone().reshape(shape).requires_grad_()
        m = mask.reshape(shape)
        loss = fastmde.depth_loss(p, target.reshape(shape), mask=m, preset="hu_blurred")
        loss.backward(retain_graph=True)
        assert torch.equal(p.grad.reshape(want.shape), want)
        loss.backward(retain_graph=True)
        loss.backward(retain_graph=True)
        torch.testing.assert_close(p.grad.reshape(want.shape), want * 3)
        p.grad.data.zero_()                          # the caller's gradient, changed in place
        loss.backward(retain_graph=True)
        torch.testing.assert_close(p.grad.reshape(want.shape), want)
        p.grad.mul_(100.0)
        p.grad = None
        (g,) = torch.autograd.grad(loss, p, retain_graph=True)
        g.mul_(10.0)
        (g2,) = torch.autograd.grad(loss, p)
        assert torch.equal(g2.reshape(want.shape), want)
    p = pred.clone().requires_grad_()
    (fastmde.depth_loss(p, target, mask=mask, preset="hu_blurred") * 3.0).backward()
    assert torch.equal(p.grad, want * 3.0)
    # a non-leaf prediction (a network's output): the map flows on into the network's backward
    w = torch.tensor(1.0, requires_grad=True)
    fastmde.depth_loss(pred * w, target, mask=mask, preset="hu_blurred").backward()
    torch.testing.assert_close(w.grad, (want * pred).sum())


@pytest.mark.parametrize("spike", [1e19, 1e20, 1e30])
def test_a_diverged_prediction_keeps_the_loss_finite(backend, device, spike):
    """One float32 prediction of 1e19-1e30 m (a diverged network): the C++ kernel took 1/|n̂||n|
    as one inverse square root of |n̂|²|n|², which overflowed float32, and returned inf with NaN
    gradients where the reference and Triton give a finite loss (cos = 0 once |n̂| is inf)."""
    g = torch.Generator().manual_seed(5)
    target = torch.rand(1, 9, 11, generator=g) * 5 + 0.5
    pred = torch.rand(1, 9, 11, generator=g) * 5 + 0.5
    pred[0, 4, 4] = spike
    for preset in ("hu_blurred", "hu", "l1_hu"):
        terms, grad = loss(*as_device(device, pred, target), None, preset=preset)
        want_terms, want_grad = oracle(pred, target, None, PRESETS[preset])
        assert torch.isfinite(terms).all() and torch.isfinite(grad).all(), (preset, terms)
        torch.testing.assert_close(terms.cpu(), want_terms, rtol=1e-5, atol=1e-5)
        assert_grad_close(grad, want_grad, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("preset", ["hu_blurred", "l1"])
def test_all_valid_batches_take_one_pass_with_the_same_bits(dtype, preset):
    """C++: a batch whose every pixel is valid is written as d total / d pred in the tile pass
    itself (N_d = N_s = B H W known up front), expected when the thread's last batch was all
    valid; a batch with an invalid pixel is redone in two parts. The one-pass map, terms and
    counts are the two-part pass's to the bit, and a batch with holes right after an all-valid
    one (the expectation wrong) gives the two-part result."""
    fastmde.set_backend("native")
    try:
        options = PRESETS[preset]
        args = ("log" if options["depth_term"] == "log" else "l1", 0.5, options["gradient"], options["normal"],
                options["blur"], [1.0, 0.7, 1.3])
        pred, target = depth_pair((2, 21, 19), 4, dtype=dtype)
        holes = target.clone()
        holes[1, 5, 7] = float("nan")
        ones = torch.ones(pred.shape, dtype=torch.bool)
        depth_loss_op(pred, holes, None, *args)                  # expectation: holes
        two_part = depth_loss_op(pred, target, None, *args)      # so this takes two parts
        one_pass = depth_loss_op(pred, target, None, *args)      # and this one pass
        with_mask = depth_loss_op(pred, target, ones, *args)
        for got in (one_pass, with_mask):
            for a, b in zip(got, two_part):
                assert torch.equal(a, b)
        assert two_part[2][0].item() == pred.numel()
        after = depth_loss_op(pred, holes, None, *args)          # expectation wrong: redone in two parts
        again = depth_loss_op(pred, holes, None, *args)
        for a, b in zip(after, again):
            assert torch.equal(a, b)
        assert after[2][0].item() == pred.numel() - 1
    finally:
        fastmde.set_backend(None)


def test_the_ops_map_and_counts_are_not_differentiable(backend, device):
    """The raw op's d total / d pred map and valid counts are results, not functions of pred: no
    grad_fn (a gradient through them used to be dropped silently); the total still is."""
    from fastmde.ops.depth_loss import depth_loss as eager_path
    pred = (torch.rand(2, 8, 9, device=device) + 0.5).requires_grad_()
    target = torch.rand(2, 8, 9, device=device) + 0.5
    args = (pred, target, None, "l1", 0.5, True, True, False, [1.0, 1.0, 1.0])
    for fn in (torch.ops.fastmde.depth_loss, eager_path):
        terms, grad, counts = fn(*args)
        assert terms.requires_grad and not grad.requires_grad and not counts.requires_grad
        assert grad.grad_fn is None and counts.grad_fn is None
        (got,) = torch.autograd.grad(terms[3], pred)
        torch.testing.assert_close(got, grad)
