"""kernels/depth_loss.py against the reference: terms, gradient, presets, masks, NaN ground truth."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import fastmde
from fastmde.ops.depth_loss import depth_loss_op
from fastmde.reference.depth_loss import PRESETS, depth_loss_forward_reference, depth_loss_terms_reference

from conftest import requires_cuda
from native_kernel_helpers import loss_kink_pixels

kernels = pytest.importorskip("fastmde.kernels.depth_loss")


def _inputs(shape, device, dtype=torch.float32, seed=0, nan=True):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=torch.float64) * 9.5 + 0.5
    pred = (target + 0.4 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp_min(0.05)
    if nan:
        target.view(-1)[:: 7] = float("nan")
        target.view(-1)[3 :: 11] = float("inf")
    mask = torch.rand(shape, generator=g) > 0.25
    return pred.to(device, dtype), target.to(device, dtype), mask.to(device)


def _compare(pred, target, mask, options, weights=(1.0, 0.7, 1.3), rtol=2e-5, atol=1e-6):
    args = (options["depth_term"], 0.5, options["gradient"], options["normal"], options["blur"], list(weights))
    terms, grad, count = kernels.depth_loss_forward(pred, target, mask, *args)
    ref_terms, ref_grad, ref_count = depth_loss_forward_reference(
        pred.cpu().double(), target.cpu().double(), None if mask is None else mask.cpu(), *args[:-1], tuple(weights)
    )
    assert terms.dtype == count.dtype == (torch.float64 if pred.dtype == torch.float64 else torch.float32)
    assert count.shape == () and count.item() == ref_count.item()  # N is exact
    assert grad.dtype == pred.dtype and grad.shape == pred.shape
    torch.testing.assert_close(terms.cpu().double(), ref_terms, rtol=rtol, atol=atol)
    scale = ref_grad.abs().max().item() + 1e-12
    grad = grad.cpu().double()
    if pred.dtype != torch.float64:
        # pixels next to a tie (an |.| of ~0) may take either one-sided derivative in float32
        kinks = loss_kink_pixels(pred.cpu(), target.cpu(), None if mask is None else mask.cpu(), options)
        grad, ref_grad = grad.masked_fill(kinks, 0.0), ref_grad.masked_fill(kinks, 0.0)
    torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=atol * scale * 1e2 if pred.dtype != torch.float64 else 1e-10)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(2, 9, 13), (1, 23, 37)])
def test_presets_match_reference(preset, shape):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pred, target, mask = _inputs(shape, device)
    _compare(pred, target, mask, PRESETS[preset])
    if shape == (2, 9, 13):
        _compare(pred, target, None, PRESETS[preset])


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 3), (3, 1, 6), (1, 5, 1)])
def test_tiny_maps_reflect_folding(shape):
    """Blur on maps smaller than the 7-tap kernel (reflect folded several times)."""
    pred, target, _ = _inputs(shape, "cuda" if torch.cuda.is_available() else "cpu", nan=False)
    _compare(pred, target, None, PRESETS["hu_blurred"])


def test_all_invalid_gives_zeros():
    pred, target, mask = _inputs((2, 6, 7), "cuda" if torch.cuda.is_available() else "cpu")
    terms, grad, count = kernels.depth_loss_forward(pred, target, torch.zeros_like(mask), "log", 0.5, True, True, True, [1.0, 1.0, 1.0])
    assert torch.equal(terms.cpu(), torch.zeros(4)) and torch.equal(grad.cpu(), torch.zeros_like(grad.cpu()))
    assert count.item() == 0


def test_sign_of_zero_and_float64():
    """pred == target on a constant map: every error is exactly 0, sign(0) = 0 -> zero gradient."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.full((1, 5, 6), 2.0, dtype=torch.float64, device=device)
    _compare(target.clone(), target, None, PRESETS["l1_hu"], rtol=1e-12, atol=1e-12)
    pred, target, mask = _inputs((2, 7, 9), device, dtype=torch.float64)
    _compare(pred, target, mask, PRESETS["hu_blurred"], rtol=1e-6, atol=1e-7)


def test_half_inputs_compute_in_float32():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pred, target, mask = _inputs((2, 8, 11), device, dtype=torch.float16, nan=False)
    terms, grad, _ = kernels.depth_loss_forward(pred, target, mask, "log", 0.5, True, True, True, [1.0, 1.0, 1.0])
    ref_terms, ref_grad, _ = depth_loss_forward_reference(pred.float(), target.float(), mask, "log", 0.5, True, True, True, (1.0, 1.0, 1.0))
    assert terms.dtype == torch.float32 and grad.dtype == torch.float16
    torch.testing.assert_close(terms, ref_terms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=2e-3, atol=1e-5)


@settings(max_examples=6, deadline=None)
@given(
    h=st.integers(1, 20), w=st.integers(1, 20), b=st.integers(1, 2),
    preset=st.sampled_from(sorted(PRESETS)), seed=st.integers(0, 1000), masked=st.booleans(),
)
def test_random_shapes(h, w, b, preset, seed, masked):
    pred, target, mask = _inputs((b, h, w), "cuda" if torch.cuda.is_available() else "cpu", seed=seed)
    _compare(pred, target, mask if masked else None, PRESETS[preset])


def test_deterministic():
    pred, target, mask = _inputs((2, 19, 21), "cuda" if torch.cuda.is_available() else "cpu")
    a = kernels.depth_loss_forward(pred, target, mask, "log", 0.5, True, True, True, [1.0, 1.0, 1.0])
    b = kernels.depth_loss_forward(pred, target, mask, "log", 0.5, True, True, True, [1.0, 1.0, 1.0])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_op_gradient_and_public_api(triton_backend):
    """Through fastmde.depth_loss with the triton backend forced: value and autograd gradient."""
    assert fastmde.backends()["depth_loss"][triton_backend.type] == "triton"
    pred, target, mask = _inputs((2, 1, 10, 12), triton_backend)
    p = pred.clone().requires_grad_()
    loss = fastmde.depth_loss(p, target, preset="hu_blurred", mask=mask)
    (loss * 2.0).backward()
    p_ref = pred.double().cpu().requires_grad_()
    ref = depth_loss_terms_reference(p_ref[:, 0], target.double().cpu()[:, 0], mask.cpu()[:, 0], **PRESETS["hu_blurred"])["total"]
    (ref * 2.0).backward()
    torch.testing.assert_close(loss.double().cpu(), ref.detach(), rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(p.grad.double().cpu(), p_ref.grad, rtol=1e-4, atol=1e-7)


def test_opcheck(triton_backend):
    pred, target, mask = _inputs((1, 5, 6), triton_backend)
    args = (pred.requires_grad_(), target, mask, "log", 0.5, True, True, True, [1.0, 1.0, 1.0])
    torch.library.opcheck(depth_loss_op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_compile_fullgraph(triton_backend):
    pred, target, mask = _inputs((1, 1, 6, 7), triton_backend)
    torch._dynamo.reset()

    def f(p):
        return fastmde.depth_loss(p, target, preset="hu", mask=mask)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    compiled(p1).backward()
    f(p2).backward()
    torch.testing.assert_close(p1.grad, p2.grad)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_realistic_shape(dtype):
    pred, target, mask = _inputs((4, 480, 640), "cuda", dtype=dtype)
    terms, grad, count = kernels.depth_loss_forward(pred, target, mask, "log", 0.5, True, True, True, [1.0, 1.0, 1.0])
    ref_terms, ref_grad, ref_count = depth_loss_forward_reference(pred.float(), target.float(), mask, "log", 0.5, True, True, True, (1.0, 1.0, 1.0))
    assert count.item() == ref_count.item()
    torch.testing.assert_close(terms, ref_terms, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-4, atol=1e-5)
