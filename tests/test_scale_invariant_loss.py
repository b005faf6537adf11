"""The scale-invariant losses on every implementation this machine has (``backend`` fixture:
reference, native C++, Triton under the interpreter without a GPU): each preset against a
plain-PyTorch rendition of its source's code written here (BTS ``silog_loss``, AdaBins
``SILogLoss``, Depth-Anything-V2 / GLPDepth ``SiLogLoss``, MiDaS ``ScaleAndShiftInvariantLoss``),
value and gradient, float64 and float32/float16/bfloat16, masks, empty masks, odd shapes,
channels_last; the edge cases the sources leave NaN (empty masks, all-invalid ground truth,
predictions <= 0, a rounding-negative variance); the ground truth's precision; hypothesis
value and gradient tests; opcheck; float64 gradcheck; torch.compile(fullgraph=True), also
dynamic=True at two sizes without recompiling; bad input named; the drop-in replacements;
``fastmde train --loss silog``.
"""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fastmde
from compile_helpers import assert_compiled_matches_eager
from fastmde.ops import scale_invariant_loss_backward_op, scale_invariant_loss_op
from fastmde.reference import scale_invariant_loss as si
from native_kernel_helpers import depth_pair

FIXTURE_HEALTH = [HealthCheck.function_scoped_fixture]
PRESETS = ("silog", "silog_adabins", "silog_dav2", "ssi")
KINDS = {"silog": "silog", "silog_adabins": "silog_unbiased", "silog_dav2": "silog", "ssi": "ssi"}


# ---------------------------------------------------------------- the sources, as their code computes


def bts_silog_loss(depth_est, depth_gt, mask, variance_focus=0.85):
    """BTS pytorch/bts.py ``silog_loss.forward`` (NeWCRFs copies it)."""
    d = torch.log(depth_est[mask]) - torch.log(depth_gt[mask])
    return torch.sqrt((d**2).mean() - variance_focus * (d.mean() ** 2)) * 10.0


def adabins_silog_loss(input, target, mask=None, interpolate=True):
    """AdaBins loss.py ``SILogLoss.forward`` ((B, 1, H, W) tensors)."""
    if interpolate:
        input = F.interpolate(input, target.shape[-2:], mode="bilinear", align_corners=True)
    if mask is not None:
        input = input[mask]
        target = target[mask]
    g = torch.log(input) - torch.log(target)
    dg = torch.var(g) + 0.15 * torch.pow(torch.mean(g), 2)
    return 10 * torch.sqrt(dg)


def dav2_silog_loss(pred, target, valid_mask, lambd=0.5):
    """Depth-Anything-V2 metric_depth/util/loss.py ``SiLogLoss.forward`` (GLPDepth's is the same)."""
    valid_mask = valid_mask.detach()
    diff_log = torch.log(target[valid_mask]) - torch.log(pred[valid_mask])
    return torch.sqrt(torch.pow(diff_log, 2).mean() - lambd * torch.pow(diff_log.mean(), 2))


def midas_scale_and_shift(prediction, target, mask):
    a_00 = torch.sum(mask * prediction * prediction, (1, 2))
    a_01 = torch.sum(mask * prediction, (1, 2))
    a_11 = torch.sum(mask, (1, 2))
    b_0 = torch.sum(mask * prediction * target, (1, 2))
    b_1 = torch.sum(mask * target, (1, 2))
    x_0 = torch.zeros_like(b_0)
    x_1 = torch.zeros_like(b_1)
    det = a_00 * a_11 - a_01 * a_01
    valid = det.nonzero()
    x_0[valid] = (a_11[valid] * b_0[valid] - a_01[valid] * b_1[valid]) / det[valid]
    x_1[valid] = (-a_01[valid] * b_0[valid] + a_00[valid] * b_1[valid]) / det[valid]
    return x_0, x_1


def midas_reduce(image_loss, m, batch_based):
    if batch_based:
        divisor = torch.sum(m)
        return image_loss.sum() * 0.0 if divisor == 0 else torch.sum(image_loss) / divisor
    valid = m.nonzero()
    image_loss = image_loss.clone()
    image_loss[valid] = image_loss[valid] / m[valid]
    return torch.mean(image_loss)


def midas_ssi_loss(prediction, target, mask, alpha=0.5, scales=4, batch_based=True):
    """MiDaS's published midas_loss.py ``ScaleAndShiftInvariantLoss(alpha, scales, reduction)``
    on (B, H, W) maps: mse_loss + alpha * GradientLoss of the aligned prediction."""
    mask = mask.to(prediction.dtype)
    scale, shift = midas_scale_and_shift(prediction, target, mask)
    ssi = scale.view(-1, 1, 1) * prediction + shift.view(-1, 1, 1)
    res = ssi - target
    total = midas_reduce(torch.sum(mask * res * res, (1, 2)), 2 * torch.sum(mask, (1, 2)), batch_based)
    for k in range(scales):
        step = 2**k
        p, t, m = ssi[:, ::step, ::step], target[:, ::step, ::step], mask[:, ::step, ::step]
        diff = m * (p - t)
        grad_x = torch.abs(diff[:, :, 1:] - diff[:, :, :-1]) * (m[:, :, 1:] * m[:, :, :-1])
        grad_y = torch.abs(diff[:, 1:, :] - diff[:, :-1, :]) * (m[:, 1:, :] * m[:, :-1, :])
        image_loss = torch.sum(grad_x, (1, 2)) + torch.sum(grad_y, (1, 2))
        total = total + alpha * midas_reduce(image_loss, torch.sum(m, (1, 2)), batch_based)
    return total


def source_loss(preset, pred, target, mask, **options):
    """The source's loss of (B, H, W) maps and a bool mask (its usual call)."""
    if preset == "silog":
        return bts_silog_loss(pred, target, mask, **options)
    if preset == "silog_adabins":
        return adabins_silog_loss(pred[:, None], target[:, None], mask[:, None], **options)
    if preset == "silog_dav2":
        return dav2_silog_loss(pred, target, mask, **options)
    return midas_ssi_loss(pred, target, mask, **options)


# ---------------------------------------------------------------- helpers


def as_device(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


def inputs(shape, seed, dtype=torch.float64, mask_kind="holes"):
    """Positive (pred, target) depth maps and a mask: ``holes`` (rectangles and noise), ``none``
    (all true: the sources need one), ``empty``, or ``gt_zero`` (mask = target > 0 over a target
    with zeros, the projects' usual call)."""
    pred, target = depth_pair(shape, seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 101)
    b, h, w = shape
    mask = torch.rand(shape, generator=g) > 0.15
    for k in range(b):
        r, c = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
        mask[k, r : r + 1 + h // 3, c : c + 1 + w // 3] = False
    if mask_kind == "none":
        mask = torch.ones(shape, dtype=torch.bool)
    elif mask_kind == "empty":
        mask = torch.zeros(shape, dtype=torch.bool)
    elif mask_kind == "gt_zero":
        target = torch.where(mask, target, torch.zeros_like(target))
        mask = target > 0
    return pred.to(dtype), target.to(dtype), mask


def fused(pred, target, mask, preset, **options):
    """The public API on the forced backend: (loss, d loss / d pred)."""
    p = pred.detach().clone().requires_grad_()
    loss = fastmde.scale_invariant_loss(p, target, preset=preset, mask=mask, **options)
    loss.backward()
    return loss.detach(), p.grad


def source(pred, target, mask, preset, **options):
    """The source rendition in float64 on the CPU: (loss, d loss / d pred)."""
    p = pred.detach().cpu().double().requires_grad_()
    loss = source_loss(preset, p, target.cpu().double(), mask.cpu(), **options)
    (grad,) = torch.autograd.grad(loss, p)
    return loss.detach(), grad


def oracle(pred, target, mask, preset, **options):
    """The differentiable reference in the compute dtype of the inputs, on the CPU."""
    kw = dict(si.PRESETS[preset])
    kw.pop("interpolate")
    if kw.pop("reduction", "batch") == "image":
        kw["image_reduction"] = True
    kw.update(options)
    p = pred.detach().cpu().requires_grad_()
    loss = si.scale_invariant_loss_reference(p, target.cpu(), None if mask is None else mask.cpu(), **kw)
    (grad,) = torch.autograd.grad(loss, p)
    return loss.detach(), grad


def ssi_ties(pred, target, mask, tol=1e-4):
    """Pixels next to a near-tie |r - r'| < tol of a gradient-matching pair (float64 residual):
    float32 rounding decides the sign of |.|'s derivative there, either answer is right."""
    p, y = pred.double().cpu(), target.double().cpu()
    valid = mask.cpu() & torch.isfinite(y)
    st_, _ = si.ssi_solve(si.ssi_moments(p, y, valid), torch.float64)
    r = torch.where(valid, st_[:, 0, None, None] * p + st_[:, 1, None, None] - torch.where(valid, y, 0.0), 0.0)
    near = torch.zeros_like(valid)
    for k in range(si.SSI_SCALES):
        s = 2**k
        for axis in (1, 2):
            n = r.shape[axis]
            if n <= s:
                continue
            a, b = r.narrow(axis, 0, n - s), r.narrow(axis, s, n - s)
            tie = (a - b).abs() < tol
            near.narrow(axis, 0, n - s).logical_or_(tie)
            near.narrow(axis, s, n - s).logical_or_(tie)
    return near


def assert_grad_close(got, want, rtol, ignore=None, atol=0.0):
    """Every entry within ``rtol`` of the largest, or ``atol`` (for a gradient that is zero up to
    rounding, e.g. ssi on an image of two pixels, which the scale and shift fit exactly)."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    assert got.shape == want.shape
    err = (got - want).abs()
    if ignore is not None:
        err = torch.where(ignore, torch.zeros_like(err), err)
    scale = want.abs().max().clamp_min(1e-30)
    assert err.max() <= rtol * scale + atol, f"gradient error {err.max().item():.3g} vs scale {scale.item():.3g}"


# ---------------------------------------------------------------- against the sources


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("shape, mask_kind", [((2, 9, 11), "holes"), ((2, 9, 11), "gt_zero"), ((2, 9, 11), "none"),
                                              ((1, 19, 37), "holes")])
def test_presets_equal_their_sources_float64(backend, device, preset, shape, mask_kind):
    pred, target, mask = inputs(shape, 1, mask_kind=mask_kind)
    want, want_grad = source(pred, target, mask, preset)
    got, got_grad = fused(*as_device(device, pred, target, mask), preset)
    assert got.dtype == torch.float64 and got_grad.dtype == torch.float64
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert_grad_close(got_grad, want_grad, 1e-9)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_equal_their_sources_float32(backend, device, preset):
    pred, target, mask = inputs((2, 13, 17), 2, dtype=torch.float32)
    want, want_grad = source(pred, target, mask, preset)
    got, got_grad = fused(*as_device(device, pred, target, mask), preset)
    assert got.dtype == torch.float32 and got_grad.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=2e-5)
    ignore = ssi_ties(pred, target, mask) if preset == "ssi" else None
    assert_grad_close(got_grad, want_grad, 2e-4, ignore=ignore)


@pytest.mark.parametrize("preset", ["silog", "ssi"])
def test_ssi_and_silog_options_equal_the_sources(backend, device, preset):
    """BTS variance_focus, and MiDaS's image-based reduction and alpha."""
    pred, target, mask = inputs((3, 10, 12), 5)
    mask[1] = False  # an image with no valid pixel: the image-based mean still counts it
    pred, target, mask = as_device(device, pred, target, mask)
    cases = ([dict(lambd=0.6), dict(lambd=1.0)] if preset == "silog"
             else [dict(reduction="image"), dict(alpha=0.0), dict(alpha=2.0, reduction="image")])
    for options in cases:
        src = {"variance_focus": options["lambd"]} if preset == "silog" else {
            "alpha": options.get("alpha", 0.5), "batch_based": options.get("reduction", "batch") == "batch"}
        want, want_grad = source(pred, target, mask, preset, **src)
        got, got_grad = fused(pred, target, mask, preset, **options)
        assert got.item() == pytest.approx(want.item(), rel=1e-10), options
        assert_grad_close(got_grad, want_grad, 1e-9)


@pytest.mark.parametrize("preset", PRESETS)
def test_half_inputs_compute_in_float32(backend, device, dtype, preset):
    """fp16/bf16 (and fp32) predictions with a ground truth of the same dtype: float32 loss
    equal to the float32 computation of the same values; the gradient in pred's dtype."""
    pred, target, mask = inputs((2, 11, 14), 3, dtype=dtype)
    want, want_grad = oracle(pred.float(), target.float(), mask, preset)
    got, got_grad = fused(*as_device(device, pred, target, mask), preset)
    assert got.dtype == torch.float32 and got_grad.dtype == dtype
    assert got.item() == pytest.approx(want.item(), rel=2e-5)
    eps = 4e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
    ignore = ssi_ties(pred, target, mask) if preset == "ssi" else None
    assert_grad_close(got_grad, want_grad, 2 * eps, ignore=ignore)


@pytest.mark.parametrize("preset", ["silog", "ssi"])
def test_ground_truth_keeps_its_precision(backend, device, preset):
    """issue 22 §1's kind: a bfloat16 prediction beside a float32 ground truth at 10.01-10.04 m
    (which bf16 would round to 10.0): the loss is the float32 one of those values, not of the
    rounded ground truth."""
    pred, target, mask = inputs((1, 8, 9), 4, dtype=torch.float32)
    target[0, :4] = 10.0 + 0.04 * torch.rand(4, 9, generator=torch.Generator().manual_seed(4))
    mask[0, :4] = True
    pred_bf = pred.bfloat16()
    want, want_grad = oracle(pred_bf.float(), target, mask, preset)
    rounded, _ = oracle(pred_bf.float(), target.bfloat16().float(), mask, preset)
    got, got_grad = fused(*as_device(device, pred_bf, target, mask), preset)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert abs(got.item() - rounded.item()) > 50 * abs(got.item() - want.item())
    # float64 ground truth beside float32 prediction: float64 throughout
    got64, _ = fused(*as_device(device, pred, target.double(), mask), preset)
    want64, _ = oracle(pred.double(), target.double(), mask, preset)
    assert got64.dtype == torch.float64 and got64.item() == pytest.approx(want64.item(), rel=1e-12)


# ---------------------------------------------------------------- edge cases the sources leave NaN


@pytest.mark.parametrize("preset", PRESETS)
def test_no_valid_pixel_gives_zero_and_warns(backend, device, preset):
    pred, target, mask = inputs((2, 5, 6), 6, mask_kind="empty")
    nan_target = torch.full_like(target, float("nan"))
    cases = [(target, mask), (nan_target, None)]
    if preset != "ssi":
        cases.append((torch.zeros_like(target), None))  # all "no measurement"
    for t, m in cases:
        t, m, p = as_device(device, t, m, pred)
        with pytest.warns(UserWarning, match="no valid ground-truth pixel"):
            loss, grad = fused(p, t, m, preset)
        assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's discarded branches
def test_invalid_ground_truth_is_left_out(backend, device, preset):
    """NaN / inf ground truth (and <= 0 for SILog) counts as masked out, whatever it holds."""
    pred, target, mask = inputs((2, 9, 10), 7)
    bad = target.clone()
    bad = torch.where(mask, bad, torch.tensor(float("nan"), dtype=bad.dtype))
    bad[0, 0, 0], bad[1, 2, 3] = float("inf"), float("-inf")
    valid = torch.isfinite(bad)
    if preset != "ssi":
        bad[0, 1, 1] = 0.0
        bad[1, 1, 1] = -3.0
        valid = valid & (bad > 0)
    pred, target, bad, valid = as_device(device, pred, target, bad, valid)
    got, got_grad = fused(pred, bad, None, preset)
    want, want_grad = fused(pred, torch.where(valid, bad, target), valid, preset)
    assert torch.isfinite(got) and got.item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-15)
    assert torch.count_nonzero(got_grad[~valid]) == 0
    # nor does what the prediction holds there (NaN, inf, <= 0)
    wild = torch.where(valid, pred, torch.tensor([float("nan"), float("inf"), -2.0], dtype=pred.dtype,
                                                 device=pred.device).repeat(pred.numel())[: pred.numel()].view_as(pred))
    got_w, grad_w = fused(wild, bad, None, preset)
    assert got_w.item() == got.item() and torch.equal(grad_w, got_grad)


@pytest.mark.parametrize("preset", ["silog", "silog_adabins", "silog_dav2"])
def test_nonpositive_predictions_are_floored(backend, device, preset):
    """ln max(pred, eps): a prediction <= 0 gives a finite loss and passes no gradient."""
    pred, target, mask = inputs((1, 7, 8), 8)
    pred[0, 0, :3] = torch.tensor([0.0, -1.0, 1e-9])
    want, want_grad = oracle(pred, target, mask, preset)
    got, got_grad = fused(*as_device(device, pred, target, mask), preset)
    assert math.isfinite(got.item()) and got.item() == pytest.approx(want.item(), rel=1e-12)
    assert_grad_close(got_grad, want_grad, 1e-10)
    assert torch.count_nonzero(got_grad[0, 0, :3]) == 0
    # the floor is the log of eps: a larger eps floors more
    got2, _ = fused(*as_device(device, pred, target, mask), preset, eps=1e-3)
    assert got2.item() < got.item()


def test_rounding_negative_variance_is_clamped(backend, device):
    """lambd = 1 and a prediction that is the ground truth times 2: d is the same everywhere up
    to rounding, the variance is 0 or a rounding error either side: the loss is 0 or tiny and
    finite, with a finite gradient (sqrt of a negative would be NaN)."""
    target = torch.linspace(0.5, 9.0, 99, dtype=torch.float32).reshape(1, 9, 11)
    pred, target = as_device(device, target * 2, target)
    loss, grad = fused(pred, target, None, "silog", lambd=1.0)
    assert math.isfinite(loss.item()) and 0.0 <= loss.item() < 1e-2
    assert torch.isfinite(grad).all()
    # the rule itself: a negative argument gives 0 and zero coefficients
    sums = torch.tensor([[4.0, 2.0, 0.99]], dtype=torch.float64)  # mean(d^2) 0.2475 < mean(d)^2 0.25
    value, coeffs = si.silog_combine(sums, "silog", 1.0, 10.0)
    assert value.item() == 0.0 and torch.count_nonzero(coeffs) == 0


def test_adabins_variance_of_one_pixel_is_zero(backend, device):
    pred, target, mask = inputs((1, 4, 5), 9, mask_kind="empty")
    mask[0, 2, 3] = True
    pred, target, mask = as_device(device, pred, target, mask)
    loss, grad = fused(pred, target, mask, "silog_adabins")
    d = math.log(pred[0, 2, 3].item()) - math.log(target[0, 2, 3].item())
    assert loss.item() == pytest.approx(10 * math.sqrt(0.15 * d * d), rel=1e-12)
    assert grad[0, 2, 3].item() == pytest.approx(10 * math.sqrt(0.15) * math.copysign(1, d) / pred[0, 2, 3].item(),
                                                 rel=1e-10)


def test_ssi_degenerate_image_has_no_scale_and_no_gradient(backend, device):
    """An image whose prediction is constant (or has one valid pixel): s = t = 0 as in MiDaS, so
    its residual is -y and its gradient 0; the other image is untouched."""
    pred, target, mask = inputs((3, 8, 9), 10)
    pred[0] = 2.5
    mask[2] = False
    mask[2, 3, 4] = True
    pred, target, mask = as_device(device, pred, target, mask)
    loss, grad = fused(pred, target, mask, "ssi")
    want, want_grad = source(pred, target, mask, "ssi")
    assert loss.item() == pytest.approx(want.item(), rel=1e-10)
    assert_grad_close(grad, want_grad, 1e-9)
    assert torch.count_nonzero(grad[0]) == 0 and torch.count_nonzero(grad[2]) == 0
    st_, ok = si.ssi_solve(si.ssi_moments(pred.cpu(), target.cpu(), mask.cpu()), torch.float64)
    assert ok.tolist() == [False, True, False] and torch.count_nonzero(st_[[0, 2]]) == 0


# ---------------------------------------------------------------- shapes and layouts


def test_adabins_resizes_the_prediction_like_adabins(backend, device):
    """AdaBins predicts at half resolution and resizes bilinearly (align_corners=True) to the
    ground truth inside its loss; the other presets refuse different sizes, naming the option."""
    _, target, mask = inputs((2, 11, 14), 11)
    pred = torch.rand(2, 1, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 9 + 0.5
    p = pred.clone().requires_grad_()
    want = adabins_silog_loss(p, target[:, None], mask[:, None])
    (want_grad,) = torch.autograd.grad(want, p)
    pred, target, mask = as_device(device, pred, target, mask)
    p = pred.clone().requires_grad_()
    got = fastmde.nn.ScaleInvariantLoss("silog_adabins")(p, target[:, None], mask=mask[:, None], interpolate=True)
    got.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert_grad_close(p.grad, want_grad, 1e-9)
    for preset in ("silog", "ssi"):
        with pytest.raises(ValueError, match="interpolate=True"):
            fastmde.scale_invariant_loss(pred, target[:, None], preset=preset)
    with pytest.raises(ValueError, match="shapes differ"):
        fastmde.scale_invariant_loss(pred, target[:, None], preset="silog_adabins", interpolate=False)


@pytest.mark.parametrize("preset", PRESETS)
def test_channels_last_and_non_contiguous(backend, device, preset):
    pred, target, mask = inputs((2, 10, 13), 12, dtype=torch.float32)
    want, want_grad = fused(*as_device(device, pred, target, mask), preset)
    p4, t4, m4 = (x[:, None].contiguous(memory_format=torch.channels_last) for x in (pred, target, mask))
    p4, t4, m4 = as_device(device, p4, t4, m4)
    got, got_grad = fused(p4, t4, m4, preset)
    assert got.item() == want.item() and torch.equal(got_grad[:, 0], want_grad)
    pt, tt, mt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (pred, target, mask))
    pt, tt, mt = as_device(device, pt, tt, mt)
    assert not pt.is_contiguous()
    got, got_grad = fused(pt, tt, mt, preset)
    assert got.item() == want.item() and torch.equal(got_grad, want_grad)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 9), (2, 7, 1), (1, 2, 3), (1, 9, 17)])
def test_odd_and_tiny_maps(backend, device, shape):
    """Maps smaller than the coarsest grid step and than a tile, and tile edges (Triton's
    interpreter tiles are 8x16)."""
    pred, target, mask = inputs(shape, 13, mask_kind="none")
    if shape[1] * shape[2] > 4:
        mask.view(-1)[1] = False
    for preset in PRESETS:
        want, want_grad = oracle(pred, target, mask, preset)
        got, got_grad = fused(*as_device(device, pred, target, mask), preset)
        assert got.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-12), preset
        assert_grad_close(got_grad, want_grad, 1e-9)


# ---------------------------------------------------------------- hypothesis


@settings(max_examples=12, deadline=None, suppress_health_check=FIXTURE_HEALTH)
@given(
    b=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12), preset=st.sampled_from(PRESETS),
    mask_kind=st.sampled_from(["holes", "gt_zero", "none", "empty"]), seed=st.integers(0, 2**16),
)
def test_values_and_gradients_match_reference(backend, device, b, h, w, preset, mask_kind, seed):
    pred, target, mask = inputs((b, h, w), seed, mask_kind=mask_kind)
    want, want_grad = oracle(pred, target, mask, preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, got_grad = fused(*as_device(device, pred, target, mask), preset)
    assert got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12)
    assert_grad_close(got_grad, want_grad, 1e-8, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20), preset=st.sampled_from(PRESETS),
    mask_kind=st.sampled_from(["holes", "gt_zero", "none"]), seed=st.integers(0, 2**16),
    image=st.booleans(),
)
@example(b=1, h=1, w=2, preset="ssi", mask_kind="none", seed=0, image=False)
def test_analytic_passes_match_autograd_of_the_spec(b, h, w, preset, mask_kind, seed, image):
    """The reference passes and the algebra between them (the kernels' contract) against
    autograd of the plain formula, float64."""
    pred, target, mask = inputs((b, h, w), seed, mask_kind=mask_kind)
    options = dict(si.PRESETS[preset])
    options.pop("interpolate")
    options.pop("reduction", None)
    kind = options.pop("kind")
    p = pred.clone().requires_grad_()
    want = si.scale_invariant_loss_reference(p, target, mask, kind=kind, image_reduction=image, **options)
    (want_grad,) = torch.autograd.grad(want, p)
    loss, coeffs, count = si.scale_invariant_loss_forward(
        si, pred, target, mask, kind, options.get("lambd", 0.0), options.get("scale", 1.0),
        options.get("alpha", 0.5), image, si.DEFAULT_EPS,
    )
    if kind == "ssi":
        grad = si.ssi_backward(pred, target, mask, coeffs)
        assert count.item() == (mask & torch.isfinite(target)).sum().item()
    else:
        grad = si.silog_backward(pred, target, mask, coeffs, si.DEFAULT_EPS)
        assert count.item() == (mask & (target > 0)).sum().item()
    assert loss.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-14)
    # ssi on two pixels fits them exactly: a gradient of rounding noise (1e-15), compared absolutely
    assert_grad_close(grad, want_grad, 1e-9, atol=1e-12)


# ---------------------------------------------------------------- op contract, autograd, compile


@pytest.mark.parametrize("kind", ["silog", "silog_unbiased", "ssi"])
def test_opcheck(backend, device, kind):
    pred, target, mask = inputs((2, 5, 9), 14)
    pred, target, mask = as_device(device, pred, target, mask)
    pred.requires_grad_()
    # the op's contract does not depend on the mask; the interpreter is slow: masked only there
    for m in (mask, None) if backend != "triton" or device.type == "cuda" else (mask,):
        torch.library.opcheck(scale_invariant_loss_op, (pred, target, m, kind, 0.85, 10.0, 0.5, False, 1e-6))
        coeffs = torch.rand(2, si.num_coeffs(kind), dtype=torch.float64, device=device)
        torch.library.opcheck(scale_invariant_loss_backward_op, (pred.detach(), target, m, coeffs, kind, 1e-6))


@pytest.mark.parametrize("preset", PRESETS)
def test_gradcheck_float64(backend, device, preset):
    shape = (1, 3, 4) if backend == "triton" and device.type == "cpu" else (2, 4, 5)  # the interpreter is slow
    pred, target, mask = inputs(shape, 15)
    pred, target, mask = as_device(device, pred, target, mask)
    pred.requires_grad_()
    assert torch.autograd.gradcheck(lambda p: fastmde.scale_invariant_loss(p, target, preset=preset, mask=mask), (pred,))


def test_compile_fullgraph_and_dynamic_shapes(backend, device):
    """One graph, no break, for every preset; dynamic=True: two sizes, no recompilation."""
    from torch._dynamo.testing import CompileCounter

    for preset in PRESETS if backend != "triton" else ("silog", "ssi"):  # the interpreter is slow
        torch._dynamo.reset()
        counter = CompileCounter()

        module = fastmde.nn.ScaleInvariantLoss(preset)

        def f(p, t, m, preset=preset, module=module):
            return module(p, t, m) * 2.0 + fastmde.scale_invariant_loss(p, t, preset=preset, mask=m)

        compiled = torch.compile(f, backend=counter, fullgraph=True, dynamic=True)
        for shape in ((2, 1, 9, 11), (3, 1, 12, 7)):
            pred, target, mask = inputs((shape[0], shape[2], shape[3]), 16, dtype=torch.float32)
            pred, target, mask = as_device(device, pred[:, None], target[:, None], mask[:, None])
            assert_compiled_matches_eager(compiled, f, pred, target, mask)
        assert counter.frame_count == 1, f"{preset}: {counter.frame_count} graphs"


def test_compile_inductor(backend, device):
    pred, target, mask = inputs((2, 8, 9), 17, dtype=torch.float32)
    pred, target, mask = as_device(device, pred, target, mask)
    torch._dynamo.reset()

    def f(p, t, m):
        return fastmde.scale_invariant_loss(p, t, preset="ssi", mask=m) + fastmde.scale_invariant_loss(p, t, mask=m)

    compiled = torch.compile(f, fullgraph=True)
    assert_compiled_matches_eager(compiled, f, pred, target, mask)


def test_deterministic(backend, device):
    """Same value run to run and, for the C++ kernels, whatever the thread count."""
    shape = (1, 9, 17) if backend == "triton" and device.type == "cpu" else (3, 37, 29)
    pred, target, mask = inputs(shape, 18, dtype=torch.float32)
    pred, target, mask = as_device(device, pred, target, mask)
    threads = torch.get_num_threads()
    for preset in ("silog", "ssi"):
        try:
            torch.set_num_threads(1)
            one = fused(pred, target, mask, preset)
            torch.set_num_threads(max(2, threads))
            many = fused(pred, target, mask, preset)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_backends_report(backend, device):
    assert fastmde.backends()["scale_invariant_loss"][device.type] == backend


def test_bad_input_is_named(backend, device):
    pred, target, mask = as_device(device, *inputs((1, 5, 5), 19))
    loss = fastmde.scale_invariant_loss
    with pytest.raises(ValueError, match="preset must be one of"):
        loss(pred, target, preset="silog2")
    with pytest.raises(ValueError, match="a Hu et al. preset: use fastmde.depth_loss"):
        loss(pred, target, preset="hu")
    with pytest.raises(ValueError, match="fastmde.scale_invariant_loss"):
        fastmde.depth_loss(pred, target, preset="silog")
    with pytest.raises(ValueError, match="lambd"):
        loss(pred, target, lambd=1.5)
    with pytest.raises(ValueError, match="lambd applies to the silog presets"):
        loss(pred, target, preset="ssi", lambd=0.5)
    with pytest.raises(ValueError, match="alpha applies to the 'ssi' preset"):
        loss(pred, target, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        loss(pred, target, preset="ssi", alpha=float("nan"))
    with pytest.raises(ValueError, match="reduction"):
        loss(pred, target, preset="ssi", reduction="pixel")
    with pytest.raises(ValueError, match="scale"):
        loss(pred, target, scale=0.0)
    with pytest.raises(ValueError, match="eps"):
        loss(pred, target, eps=-1.0)
    with pytest.raises(ValueError, match="mask shape"):
        loss(pred, target, mask=mask[:, :4])
    with pytest.raises(ValueError, match="target requires grad"):
        loss(pred, target.clone().requires_grad_())
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        loss(pred.int(), target)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\) or \(B, H, W\)"):
        loss(pred[:, None].expand(1, 2, 5, 5), target[:, None].expand(1, 2, 5, 5))
    with pytest.raises(ValueError, match="preset"):
        fastmde.nn.ScaleInvariantLoss("silog3")
    # the implementation itself, called with a bad kind or coefficients, names it
    with pytest.raises((ValueError, RuntimeError), match="kind"):
        scale_invariant_loss_op(pred, target, None, "silog2", 0.85, 10.0, 0.5, False, 1e-6)
    with pytest.raises((ValueError, RuntimeError), match="coeffs"):
        scale_invariant_loss_backward_op(pred, target, None, torch.zeros(1, 3, dtype=torch.float64, device=device),
                                         "ssi", 1e-6)


# ---------------------------------------------------------------- drop-in (issue 21 §5)


def test_drop_in_for_bts_and_newcrfs_silog_loss():
    """``silog_criterion = silog_loss(variance_focus=0.85)``; ``silog_criterion.forward(depth_est,
    depth_gt, mask.to(torch.bool))`` -> ``fastmde.nn.ScaleInvariantLoss("silog")``, same call."""
    pred, target, mask = inputs((2, 12, 16), 20, mask_kind="gt_zero")
    mask = target > 1.0  # BTS's KITTI mask (NYU: > 0.1)
    est, gt, m = pred[:, None], target[:, None], mask[:, None]
    p1, p2 = est.clone().requires_grad_(), est.clone().requires_grad_()
    want = bts_silog_loss(p1, gt, m, variance_focus=0.85)
    got = fastmde.nn.ScaleInvariantLoss("silog", lambd=0.85)(p2, gt, m)
    want.backward()
    got.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert_grad_close(p2.grad, p1.grad, 1e-9)


def test_drop_in_for_adabins_silog_loss():
    """``criterion_ueff = SILogLoss()``; ``criterion_ueff(pred, depth, mask=mask.to(torch.bool),
    interpolate=True)`` -> ``fastmde.nn.ScaleInvariantLoss("silog_adabins")``, same call."""
    _, target, _ = inputs((2, 12, 16), 21, mask_kind="gt_zero")
    depth = target[:, None]
    mask = depth > 1e-3  # AdaBins: args.min_depth
    pred = torch.rand(2, 1, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 9 + 1
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    want = adabins_silog_loss(p1, depth, mask=mask, interpolate=True)
    got = fastmde.nn.ScaleInvariantLoss("silog_adabins")(p2, depth, mask=mask, interpolate=True)
    want.backward()
    got.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert_grad_close(p2.grad, p1.grad, 1e-9)


def test_drop_in_for_depth_anything_v2_and_glpdepth_silog_loss():
    """``criterion = SiLogLoss()``; ``criterion(pred, depth, (valid_mask == 1) & (depth >=
    min_depth) & (depth <= max_depth))`` -> ``fastmde.nn.ScaleInvariantLoss("silog_dav2")``."""
    pred, depth, _ = inputs((2, 12, 16), 22, mask_kind="gt_zero")
    valid = (depth >= 0.001) & (depth <= 8.0)
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    want = dav2_silog_loss(p1, depth, valid)
    got = fastmde.nn.ScaleInvariantLoss("silog_dav2")(p2, depth, valid)
    want.backward()
    got.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert_grad_close(p2.grad, p1.grad, 1e-9)


def test_drop_in_for_midas_scale_and_shift_invariant_loss():
    """``loss = ScaleAndShiftInvariantLoss()``; ``loss(prediction, target, mask)`` ->
    ``fastmde.nn.ScaleInvariantLoss("ssi")``; ``reduction='image-based'`` -> ``reduction="image"``."""
    pred, target, mask = inputs((2, 12, 16), 23, mask_kind="gt_zero")
    disparity = torch.where(mask, 1.0 / target.clamp_min(1e-3), torch.zeros_like(target))  # MiDaS trains on disparity
    for batch_based, reduction in ((True, "batch"), (False, "image")):
        p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
        want = midas_ssi_loss(p1, disparity, mask, batch_based=batch_based)
        got = fastmde.nn.ScaleInvariantLoss("ssi", reduction=reduction)(p2, disparity, mask)
        want.backward()
        got.backward()
        assert got.item() == pytest.approx(want.item(), rel=1e-10)
        assert_grad_close(p2.grad, p1.grad, 1e-9)


# ---------------------------------------------------------------- fastmde train --loss


def test_train_with_a_scale_invariant_loss(tmp_path_factory, tmp_path):
    """``fastmde train --loss silog`` trains (a finite, logged loss) and the choice is saved;
    --blur with it is refused as an option without effect."""
    import json
    import os

    from engine_helpers import cli_data_args, cli_model_args, synthetic_cache
    from fastmde.cli import main

    cache = synthetic_cache(tmp_path_factory)
    out = str(tmp_path / "run")
    assert main(["train", "--loss", "silog", "--epochs", "1", "--batch-size", "2", "--out", out]
                + cli_data_args(cache) + cli_model_args()) == 0
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert records and all(math.isfinite(r["train_loss"]) and r["train_loss"] > 0 for r in records)
    assert fastmde.engine.read_checkpoint(os.path.join(out, "last.pt"))["config"]["loss"] == "silog"
    from fastmde.engine.config import TrainConfig
    from fastmde.engine.train import make_loss

    for preset in PRESETS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = make_loss(TrainConfig(loss=preset))
        assert isinstance(module, fastmde.nn.ScaleInvariantLoss) and module.preset == preset
        assert any("relative depth" in str(w.message) for w in caught) == (preset == "ssi")
    with pytest.raises(ValueError, match="blur"):
        TrainConfig(loss="silog", blur=True)


@pytest.mark.parametrize("preset", ["silog", "silog_adabins", "silog_dav2", "ssi"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_or_infinite_prediction_gives_a_nan_loss(backend, device, preset, bad):
    """A diverged network is not hidden: one NaN (or +inf) prediction makes the loss NaN on every
    backend and in the reference (the SILog root returned 0 for a NaN variance, so the trainer's
    divergence check never fired for --loss silog)."""
    pred, target, mask = inputs((2, 6, 7), 5)
    pred[0, 0, 0] = bad
    p = pred.to(device).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = fastmde.scale_invariant_loss(p, target.to(device), preset=preset, mask=mask.to(device))
    assert math.isnan(loss.item())
    want = si.scale_invariant_loss_reference(pred, target, mask, **{
        k: v for k, v in si.PRESETS[preset].items() if k not in ("interpolate", "reduction")})
    assert math.isnan(want.item())



def test_the_ops_coefficients_and_count_are_not_differentiable(backend, device):
    """The raw op hands out its statistics (coefficients, valid count) with no grad_fn: its
    backward recomputes from pred and target, so a gradient through them would be dropped
    silently. The loss itself stays differentiable, on the registered op and the eager path."""
    from fastmde.ops.scale_invariant_loss import scale_invariant_loss as eager_path
    pred = (torch.rand(2, 8, 9, device=device) + 0.5).requires_grad_()
    target = torch.rand(2, 8, 9, device=device) + 0.5
    args = (pred, target, None, "silog", 0.85, 10.0, 0.0, False, 1e-7)
    grads = []
    for fn in (torch.ops.fastmde.scale_invariant_loss, eager_path):
        loss, coeffs, count = fn(*args)
        assert loss.requires_grad and loss.grad_fn is not None
        assert not coeffs.requires_grad and not count.requires_grad
        assert coeffs.grad_fn is None and count.grad_fn is None
        grads.append(torch.autograd.grad(loss, pred)[0])
    torch.testing.assert_close(grads[0], grads[1])
