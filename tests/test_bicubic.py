"""bicubic_resize against F.interpolate(mode="bicubic", align_corners=True): the same values, and
its two-GEMM CPU backward against autograd through F.interpolate (float64, float32, bfloat16;
up- and downscales, a 1x1 map, channels_last, drawn sizes); the paths that stay F.interpolate's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmde.nn.bicubic import axis_matrix, bicubic_resize


def _grads(x, size, g):
    x = x.detach().clone().requires_grad_(True)
    want = F.interpolate(x, size=size, mode="bicubic", align_corners=True)
    (want_grad,) = torch.autograd.grad(want, x, g)
    x2 = x.detach().clone().requires_grad_(True)
    got = bicubic_resize(x2, size)
    assert type(got.grad_fn).__name__ == "_BicubicResizeBackward"
    (got_grad,) = torch.autograd.grad(got, x2, g)
    assert torch.equal(got, want)          # the forward is the same call
    return got_grad, want_grad


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("shape,size", [((1, 1, 12, 16), (20, 27)),   # up, as 288x384 -> 480x640
                                        ((2, 3, 9, 8), (4, 5)),       # down
                                        ((1, 1, 1, 1), (3, 4)),       # one pixel
                                        ((1, 2, 5, 6), (5, 6)),       # same size: weights 1
                                        ((2, 1, 7, 1), (3, 9))])      # one column, mixed
def test_gradient_matches_interpolate(dtype, tol, shape, size):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype)
    g = torch.randn(*shape[:2], *size, dtype=dtype)
    got, want = _grads(x, size, g)
    assert got.dtype == dtype and got.shape == x.shape
    assert (got - want).abs().max() <= tol * want.abs().max().clamp_min(1)


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), big_h=st.integers(1, 15), big_w=st.integers(1, 15),
       b=st.integers(1, 2), c=st.integers(1, 2))
def test_gradient_matches_interpolate_drawn(h, w, big_h, big_w, b, c):
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    g = torch.randn(b, c, big_h, big_w, dtype=torch.float64)
    got, want = _grads(x, (big_h, big_w), g)
    assert (got - want).abs().max() <= 1e-12 * want.abs().max().clamp_min(1)


def test_bfloat16_gradient_is_computed_in_float32():
    torch.manual_seed(1)
    x = torch.randn(2, 1, 12, 16)
    g = torch.randn(2, 1, 20, 27)
    xd = x.double().requires_grad_()
    (exact,) = torch.autograd.grad(F.interpolate(xd, size=(20, 27), mode="bicubic", align_corners=True), xd,
                                   g.bfloat16().double())
    got, want = _grads(x.bfloat16(), (20, 27), g.bfloat16())
    assert got.dtype == torch.bfloat16
    # one rounding to bfloat16 of the float32 sum: within half a bf16 ulp of the exact gradient
    assert ((got.double() - exact).abs() <= exact.abs() * 2 ** -8 + 1e-6).all()
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_channels_last_input_and_autocast():
    torch.manual_seed(2)
    x = torch.randn(1, 3, 6, 8).contiguous(memory_format=torch.channels_last)
    g = torch.randn(1, 3, 11, 13)
    got, want = _grads(x, (11, 13), g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb = x.bfloat16().requires_grad_()
        y = bicubic_resize(xb, (11, 13))
        assert y.dtype == F.interpolate(xb, size=(11, 13), mode="bicubic", align_corners=True).dtype
    y.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and xb.grad.shape == xb.shape


def test_axis_matrix_rows_sum_to_one():
    for n_in, n_out in ((384, 640), (7, 3), (1, 5), (5, 1)):
        r = axis_matrix(n_in, n_out, torch.float64, torch.device("cpu"))
        assert r.shape == (n_out, n_in)
        torch.testing.assert_close(r.sum(1), torch.ones(n_out, dtype=torch.float64))


def test_other_calls_stay_interpolate():
    x = torch.randn(1, 1, 4, 5)
    # no gradient wanted, grad mode off, or a traced/compiled call: F.interpolate itself
    assert bicubic_resize(x, (7, 9)).grad_fn is None
    with torch.no_grad():
        assert bicubic_resize(x.requires_grad_(), (7, 9)).grad_fn is None
    compiled = torch.compile(lambda t: bicubic_resize(t, (7, 9)), backend="eager")
    xr = torch.randn(1, 1, 4, 5, requires_grad=True)
    out = compiled(xr)
    out.sum().backward()
    want = torch.autograd.grad(F.interpolate(xr, size=(7, 9), mode="bicubic", align_corners=True).sum(), xr)[0]
    torch.testing.assert_close(xr.grad, want)


@pytest.mark.parametrize("size", [9, [9, 7], (9.7, 7), (9, 7, 5), [9]])
def test_size_is_taken_as_interpolate_takes_it(size):
    """``size`` goes to F.interpolate as given: the same result, or the same error."""
    d = torch.randn(1, 1, 4, 5, requires_grad=True)
    try:
        want = F.interpolate(d, size=size, mode="bicubic", align_corners=True)
    except Exception as exc:
        with pytest.raises(type(exc)):
            bicubic_resize(d, size)
        return
    got = bicubic_resize(d, size)
    assert torch.equal(got, want)
    got.sum().backward()
