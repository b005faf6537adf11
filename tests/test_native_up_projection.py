"""The C++ up-projection kernels (csrc/up_projection.cpp) against the differentiable reference:
forward and both gradients for any sizes (up and down, odd and even), kernel sizes 1/3/5, both
align_corners settings, channels_last and non-contiguous input, float32/float64/bfloat16;
the UpProjection block; float64 gradcheck, opcheck, torch.compile."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmde
from fastmde.ops import upsample_conv2d_backward_op, upsample_conv2d_op
from fastmde.reference.up_projection import up_projection_block_reference, upsample_conv2d_reference
from native_kernel_helpers import require_native_extension


pytestmark = pytest.mark.usefixtures("native_backend")


def compare(x, w, size, align_corners, rtol):
    """Forward and (grad_x, grad_w) of the op against autograd through the reference.

    Each error is bounded by ``rtol`` times the largest sum of |terms| behind an output (the
    same computation on |x|, |w|, |g|: the interpolation weights are non-negative), not by
    the result itself: a sum whose terms cancel (e.g. the gradient of a 1x1 map upsampled to
    1x20, twenty terms of either sign) is as accurate as its terms, not as its value."""
    xr = x.detach().clone().requires_grad_()
    wr = w.detach().clone().requires_grad_()
    want = upsample_conv2d_reference(xr, wr, size, align_corners)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=want.dtype)
    want_gx, want_gw = torch.autograd.grad(want, (xr, wr), g)
    xa = x.detach().abs().requires_grad_()
    wa = w.detach().abs().requires_grad_()
    bound = upsample_conv2d_reference(xa, wa, size, align_corners)
    bound_gx, bound_gw = torch.autograd.grad(bound, (xa, wa), g.abs())

    xn = x.detach().clone().requires_grad_()
    wn = w.detach().clone().requires_grad_()
    got = upsample_conv2d_op(xn, wn, list(size), align_corners)
    got.backward(g)
    for a, b, s, name in ((got, want, bound, "out"), (xn.grad, want_gx, bound_gx, "grad_x"),
                          (wn.grad, want_gw, bound_gw, "grad_w")):
        scale = s.abs().max().clamp_min(1e-6)
        err = (a - b).abs().max()
        assert err <= rtol * scale, f"{name}: error {err.item():.3g} vs scale {scale.item():.3g}"
    return got, xn.grad


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3), cin=st.integers(1, 5), cout=st.integers(1, 6), k=st.sampled_from([1, 3, 5]),
    h=st.integers(1, 12), w=st.integers(1, 12), big_h=st.integers(1, 26), big_w=st.integers(1, 26),
    align_corners=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference_any_size(b, cin, cout, k, h, w, big_h, big_w, align_corners, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cin, h, w, generator=g, dtype=dtype)
    weight = torch.randn(cout, cin, k, k, generator=g, dtype=dtype)
    compare(x, weight, (big_h, big_w), align_corners, 1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("shape", [(2, 6, 9, 7), (1, 3, 34, 5)])
def test_scale_two_and_tall_maps(align_corners, shape):
    # x2 as in the networks; the tall map spans several row bands of the kernels
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    weight = torch.randn(8, shape[1], 3, 3, generator=g)
    compare(x, weight, (2 * shape[2], 2 * shape[3]), align_corners, 1e-5)


@pytest.mark.parametrize("align_corners", [True, False])
def test_band_splitting_large_channels(align_corners):
    # enough channels x width that the per-band buffers split the image into several bands
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 16, 40, 48, generator=g)
    weight = torch.randn(256, 16, 3, 3, generator=g) * 0.1
    compare(x, weight, (80, 96), align_corners, 1e-5)


def test_channels_last_and_non_contiguous():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(2, 4, 7, 9, generator=g)
    weight = torch.randn(6, 4, 3, 3, generator=g)
    x_cl = base.contiguous(memory_format=torch.channels_last)
    out, grad_x = compare(x_cl, weight, (14, 17), True, 1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grad_x.is_contiguous(memory_format=torch.channels_last)
    x_nc = torch.randn(2, 8, 7, 9, generator=g)[:, ::2]
    assert not x_nc.is_contiguous()
    compare(x_nc, weight, (13, 18), False, 1e-5)


def test_bfloat16_computes_in_float32():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 6, 5, generator=g).to(torch.bfloat16)
    weight = torch.randn(5, 4, 3, 3, generator=g).to(torch.bfloat16)
    got = upsample_conv2d_op(x, weight, [12, 10], True)
    assert got.dtype == torch.bfloat16
    want = upsample_conv2d_reference(x.float(), weight.float(), (12, 10), True)
    # one bfloat16 rounding of a float32 result
    assert (got.float() - want).abs().max() <= 2 * torch.finfo(torch.bfloat16).eps * want.abs().max()
    grad = torch.randn(2, 5, 12, 10, generator=g)
    gx, gw = upsample_conv2d_backward_op(grad.to(torch.bfloat16), x, weight, [12, 10], True)
    xr = x.float().requires_grad_()
    wr = weight.float().requires_grad_()
    want_gx, want_gw = torch.autograd.grad(upsample_conv2d_reference(xr, wr, (12, 10), True), (xr, wr),
                                           grad.to(torch.bfloat16).float())
    tol = 2 * torch.finfo(torch.bfloat16).eps
    assert gx.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    assert (gx.float() - want_gx).abs().max() <= tol * want_gx.abs().max()
    assert (gw.float() - want_gw).abs().max() <= tol * want_gw.abs().max()


@pytest.mark.parametrize("reduce,kernel_size", [(True, 3), (False, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stack_convs", [None, True])   # None: one op per conv on CPU
def test_up_projection_block_matches_plain_block(reduce, kernel_size, channels_last, stack_convs):
    torch.manual_seed(7)
    block = fastmde.nn.UpProjection(6, 4, kernel_size=kernel_size, reduce=reduce, stack_convs=stack_convs)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=fmt)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    out1 = block(x1, size=(11, 13))
    out2 = up_projection_block_reference(block, x2, size=(11, 13))
    torch.testing.assert_close(out1, out2, rtol=1e-5, atol=1e-5)
    grads1 = torch.autograd.grad(out1.square().sum(), [x1] + list(block.parameters()))
    grads2 = torch.autograd.grad(out2.square().sum(), [x2] + list(block.parameters()))
    for a, b in zip(grads1, grads2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("align_corners", [True, False])
def test_gradcheck_float64(align_corners):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: upsample_conv2d_op(a, b, [7, 6], align_corners), (x, w))


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(align_corners, channels_last):
    x = torch.randn(2, 3, 4, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    torch.library.opcheck(upsample_conv2d_op, (x, w, [8, 11], align_corners))
    g = torch.randn(2, 4, 8, 11)
    torch.library.opcheck(upsample_conv2d_backward_op, (g, x.detach(), w.detach(), [8, 11], align_corners))


def test_torch_compile_fullgraph():
    torch.manual_seed(9)
    block = fastmde.nn.UpProjection(4, 3, kernel_size=3)
    x = torch.randn(1, 4, 5, 6)

    def f(inp):
        return block(inp).sum()

    compiled = torch.compile(f, fullgraph=True)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    v1 = compiled(x1)
    v1.backward()
    v2 = f(x2)
    v2.backward()
    torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)


def test_backends_report_native():
    assert fastmde.backends(("cpu",))["up_projection"]["cpu"] == "native"


def test_bad_input_errors_name_the_problem():
    C = require_native_extension()
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(RuntimeError, match="input channels"):
        C.upsample_conv2d_forward(x, torch.randn(2, 4, 3, 3), [8, 8], True)
    with pytest.raises(RuntimeError, match="k odd"):
        C.upsample_conv2d_forward(x, torch.randn(2, 3, 2, 2), [8, 8], True)


@pytest.mark.parametrize("cin, cout, h, w", [(64, 128, 16, 24), (48, 96, 20, 13)])
def test_decoder_sized_channels_are_exact_and_repeatable(cin, cout, h, w):
    """Channel counts of real decoders, on every thread: a regression test for the ATen
    convolutions once called from inside a parallel region, which returned garbage."""
    torch.set_num_threads(max(2, torch.get_num_threads()))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, cin, h, w, generator=g)
    wt = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
    compare(x, wt, (2 * h, 2 * w), True, rtol=1e-4)
    first = torch.autograd.grad(upsample_conv2d_op(x.requires_grad_(), wt, [2 * h, 2 * w], True).sum(), x)[0]
    again = torch.autograd.grad(upsample_conv2d_op(x, wt, [2 * h, 2 * w], True).sum(), x)[0]
    assert torch.equal(first, again)
