"""The up-projection hot path, one contract over every implementation (``backend`` fixture:
reference, native C++, Triton under the interpreter or on CUDA): ``fastmde::upsample_conv2d``,
the BatchNorm-folded stages ``fastmde::upsample_conv2d_bn``, and the block
(``fastmde.nn.UpProjection``) against the plain-PyTorch reference in
``fastmde/reference/up_projection.py``: values, every gradient, running statistics, opcheck,
float64 gradcheck, torch.compile(fullgraph=True), bad input. Implementation details that only
one backend has (the C++ band splitting, Triton's tile-statistics merge) have their own tests
at the end.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmde
from fastmde import _backend
from fastmde._checks import memory_format_of
from fastmde.ops import (
    upsample_conv2d_backward_op,
    upsample_conv2d_bn_backward_op,
    upsample_conv2d_bn_op,
    upsample_conv2d_op,
)
from fastmde.reference.up_projection import (
    activate_reference,
    up_projection_block_reference,
    upsample_conv2d_bn_reference,
    upsample_conv2d_reference,
)

from conftest import requires_cuda

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float64: 1e-12}
INTERPRETED = not torch.cuda.is_available()


def _rel_err(a, b):
    return ((a.double().cpu() - b.double().cpu()).abs().max() / (b.double().abs().max() + 1e-12)).item()


def _skip_interpreted_bf16(backend, dtype):
    if backend == "triton" and INTERPRETED and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter's bf16 tl.dot is inexact (DESIGN.md §2); bf16 runs on CUDA")


def _float64_rtol(backend, rtol):
    """float64 tolerance: the Triton kernels compute interpolation coordinates and weights in
    float32 (rounding 6e-8 relative), the others in float64."""
    return 1e-6 if backend == "triton" else rtol


def compare(x, w, size, align_corners, rtol):
    """Forward and (grad_x, grad_w) of the op against autograd through the reference.

    Each error is bounded by ``rtol`` times the largest sum of |terms| behind an output (the
    same computation on |x|, |w|, |g|: the interpolation weights are non-negative), not by
    the result itself: a sum whose terms cancel (e.g. the gradient of a 1x1 map upsampled to
    1x20, twenty terms of either sign) is as accurate as its terms, not as its value."""
    cpu = lambda t: t.detach().cpu().double() if t.dtype == torch.float64 else t.detach().cpu()  # noqa: E731
    xr, wr = cpu(x).clone().requires_grad_(), cpu(w).clone().requires_grad_()
    want = upsample_conv2d_reference(xr, wr, size, align_corners)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=want.dtype)
    want_gx, want_gw = torch.autograd.grad(want, (xr, wr), g)
    xa, wa = cpu(x).abs().requires_grad_(), cpu(w).abs().requires_grad_()
    bound = upsample_conv2d_reference(xa, wa, size, align_corners)
    bound_gx, bound_gw = torch.autograd.grad(bound, (xa, wa), g.abs())

    xn = x.detach().clone().requires_grad_()
    wn = w.detach().clone().requires_grad_()
    got = upsample_conv2d_op(xn, wn, list(size), align_corners)
    got.backward(g.to(x.device))
    for a, b, s, name in ((got, want, bound, "out"), (xn.grad, want_gx, bound_gx, "grad_x"),
                          (wn.grad, want_gw, bound_gw, "grad_w")):
        scale = s.abs().max().clamp_min(1e-6)
        err = (a.cpu() - b).abs().max()
        assert err <= rtol * scale, f"{name}: error {err.item():.3g} vs scale {scale.item():.3g}"
    return got, xn.grad


# ------------------------------------------------------------------ upsample_conv2d


def test_backend_table(backend, device):
    assert fastmde.backends((device.type,))["up_projection"][device.type] == backend


# (B, Cin, h, w, Cout, k, size): odd channel counts (masked K/N), scale 2, odd target sizes,
# k = 5 and 1, a 1x1 input, a downscale, a tall map spanning several row bands
CASES = [
    (2, 5, 3, 4, 6, 3, (6, 8)),
    (1, 3, 4, 5, 4, 5, (7, 11)),
    (1, 17, 1, 1, 3, 3, (1, 1)),
    (1, 4, 5, 6, 3, 1, (3, 4)),
    (2, 3, 2, 3, 5, 3, (5, 7)),
    (2, 6, 9, 7, 8, 3, (18, 14)),
    (1, 3, 34, 5, 8, 3, (68, 10)),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_values_and_gradients(backend, device, case, align_corners, channels_last):
    B, cin, h, w, cout, k, size = case
    g = torch.Generator().manual_seed(hash((case, align_corners)) % 2**31)
    x = torch.randn(B, cin, h, w, generator=g).to(device)
    weight = (0.3 * torch.randn(cout, cin, k, k, generator=g)).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out, grad_x = compare(x, weight, size, align_corners, 1e-5)
    assert out.dtype == x.dtype and out.shape == (B, cout, *size)
    if channels_last and cout > 1 and size[0] * size[1] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
    if channels_last and h * w > 1:
        assert grad_x.is_contiguous(memory_format=torch.channels_last)
    assert grad_x.shape == x.shape and grad_x.dtype == x.dtype


def test_values_and_gradients_non_contiguous_and_float64(backend, device):
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(6, 4, 3, 3, generator=g).to(device)
    x_nc = torch.randn(2, 8, 7, 9, generator=g).to(device)[:, ::2]
    assert not x_nc.is_contiguous()
    compare(x_nc, weight, (13, 18), False, 1e-5)
    for align_corners in (True, False):  # float64, 5x5, against the reference
        x = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=g).to(device)
        w = torch.randn(6, 3, 5, 5, dtype=torch.float64, generator=g).to(device)
        compare(x, w, (9, 8), align_corners, _float64_rtol(backend, 1e-10))


def test_values_any_size(backend, device):
    """Random sizes (up and down, odd and even), kernels 1/3/5, both align_corners, float32 and
    float64 (fewer examples under the Triton interpreter)."""

    @settings(max_examples=4 if backend == "triton" else 40, deadline=None)  # the interpreter: ~20 s each
    @given(
        b=st.integers(1, 3), cin=st.integers(1, 5), cout=st.integers(1, 6), k=st.sampled_from([1, 3, 5]),
        h=st.integers(1, 12), w=st.integers(1, 12), big_h=st.integers(1, 26), big_w=st.integers(1, 26),
        align_corners=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
        seed=st.integers(0, 2**16),
    )
    def check(b, cin, cout, k, h, w, big_h, big_w, align_corners, dtype, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(b, cin, h, w, generator=g, dtype=dtype).to(device)
        weight = torch.randn(cout, cin, k, k, generator=g, dtype=dtype).to(device)
        compare(x, weight, (big_h, big_w), align_corners, 1e-5 if dtype == torch.float32 else _float64_rtol(backend, 1e-12))

    check()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", CASES[:5], ids=[f"case{i}" for i in range(5)])
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtypes(backend, device, dtype, case, align_corners, channels_last):
    """Half-precision outputs and gradients keep the input dtype and layout, within the dtype's
    tolerance of the float64 result (float32 accumulation: about one rounding of the output).
    float32 and float64: test_values_and_gradients, test_values_any_size."""
    _skip_interpreted_bf16(backend, dtype)
    B, cin, h, w, cout, k, size = case
    g = torch.Generator().manual_seed(hash((case, align_corners)) % 2**31)
    x = torch.randn(B, cin, h, w, generator=g).to(device, dtype)
    weight = (0.3 * torch.randn(cout, cin, k, k, generator=g)).to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # one rounding of the float32 result on the CPU backends; Triton's tile sums: its tolerance
    tol = TOL[dtype] if backend == "triton" else 2 * torch.finfo(dtype).eps
    got = upsample_conv2d_op(x, weight, list(size), align_corners)
    want = upsample_conv2d_reference(x.double().cpu(), weight.double().cpu(), size, align_corners)
    assert got.dtype == dtype and got.shape == want.shape
    assert got.is_contiguous(memory_format=memory_format_of(x))
    assert _rel_err(got, want) <= tol
    grad = torch.randn(want.shape, generator=g).to(device, dtype)
    gx, gw = upsample_conv2d_backward_op(grad, x, weight, list(size), align_corners)
    xr, wr = x.double().cpu().requires_grad_(), weight.double().cpu().requires_grad_()
    want_gx, want_gw = torch.autograd.grad(upsample_conv2d_reference(xr, wr, size, align_corners), (xr, wr),
                                           grad.double().cpu())
    assert gx.dtype == dtype and gw.dtype == dtype and gw.shape == weight.shape
    assert gx.is_contiguous(memory_format=memory_format_of(x))
    assert _rel_err(gx, want_gx) <= tol
    assert _rel_err(gw, want_gw) <= tol


def test_ignores_enclosing_autocast(backend, device):
    """Inside torch.autocast the op still computes in its inputs' dtype (the fake kernel
    promises that)."""
    x = torch.randn(1, 3, 4, 5).to(device)
    w = torch.randn(4, 3, 3, 3).to(device)
    plain = upsample_conv2d_op(x, w, [8, 10], True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        auto = upsample_conv2d_op(x, w, [8, 10], True)
    assert plain.dtype == auto.dtype == torch.float32 and torch.equal(plain, auto)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(backend, device, align_corners, channels_last):
    # the interpreter is slow: its opcheck leaves out the dynamic-shape AOT pass
    utils = ("test_schema", "test_faketensor", "test_autograd_registration") if backend == "triton" else None
    kw = {} if utils is None else {"test_utils": utils}
    x = torch.randn(2, 3, 4, 5).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(4, 3, 3, 3).to(device).requires_grad_()
    torch.library.opcheck(upsample_conv2d_op, (x, w, [8, 11], align_corners), **kw)
    g = torch.randn(2, 4, 8, 11).to(device)
    kw_back = {} if utils is None else {"test_utils": ("test_schema", "test_faketensor")}
    torch.library.opcheck(upsample_conv2d_backward_op, (g, x.detach(), w.detach(), [8, 11], align_corners), **kw_back)


@pytest.mark.parametrize("align_corners", [True, False])
def test_gradcheck_float64(backend, device, align_corners):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    # the Triton kernels compute interpolation coordinates in float32: looser there, and random
    # projections (fast_mode) under the interpreter
    options = dict(atol=1e-5, rtol=1e-4, fast_mode=True) if backend == "triton" else {}
    assert torch.autograd.gradcheck(lambda a, b: upsample_conv2d_op(a, b, [7, 6], align_corners), (x, w), **options)


def test_bad_input(backend, device):
    """Each implementation names the problem: channels of x and weight differ; an even kernel."""
    module = _backend.native_module() if backend == "native" else (
        _backend.triton_module("up_projection") if backend == "triton" else None)
    x = torch.randn(1, 3, 4, 4).to(device)
    if module is None:  # the reference is ATen's: its own messages
        with pytest.raises(RuntimeError, match="channels"):
            upsample_conv2d_op(x, torch.randn(2, 4, 3, 3).to(device), [8, 8], True)
    else:
        with pytest.raises((RuntimeError, ValueError), match="input channels|weight"):
            module.upsample_conv2d_forward(x, torch.randn(2, 4, 3, 3).to(device), [8, 8], True)
        with pytest.raises((RuntimeError, ValueError), match="k odd"):
            module.upsample_conv2d_forward(x, torch.randn(2, 3, 2, 2).to(device), [8, 8], True)
    with pytest.raises(ValueError, match="in_scale and in_shift"):
        upsample_conv2d_bn_op(x, torch.ones(3).to(device), None, torch.randn(2, 3, 3, 3).to(device), [8, 8], True)


# ------------------------------------------------------------------ BatchNorm-folded stages

# (B, Cin, h, w, Cout, k, size): upsampled (odd target, masked K/N tiles), same size (the
# branch's second conv), the 1x1 reduction, a 1x1 map, more rows than one 32-row tile (so the
# statistics merge several tiles, the last one partial)
BN_CASES = [
    (2, 5, 3, 4, 6, 3, (7, 9)),
    (1, 3, 5, 6, 4, 3, (5, 6)),
    (2, 6, 3, 5, 3, 1, (3, 5)),
    (1, 4, 1, 1, 3, 3, (2, 3)),
    (3, 3, 6, 7, 2, 3, (6, 7)),
]


def _bn_inputs(case, affine, dtype, channels_last, seed, device):
    B, cin, h, w, cout, k, size = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cin, h, w, generator=g).to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (0.3 * torch.randn(cout, cin, k, k, generator=g)).to(device, dtype)
    scale = shift = None
    if affine:
        # a negative scale and shifts of both signs: the ReLU cuts some channels partly, one wholly
        scale = torch.tensor([1.5, -0.7, 0.3, 2.0, 0.9, -1.1])[:cin].to(device)
        shift = (0.5 * torch.randn(cin, generator=g)).to(device)
        shift[0] = -50.0
    return x, scale, shift, weight, list(size)


def _check_bn_stage(x, s, t, w, size, align, tol, stats_tol):
    """out, mean, var and the backward op's (grad_a, grad_weight) against the float64 reference."""
    out, mean, var = upsample_conv2d_bn_op(x, s, t, w, size, align)
    x64, w64 = x.double().cpu(), w.double().cpu()
    s64, t64 = (None, None) if s is None else (s.double().cpu(), t.double().cpu())
    ref, ref_mean, ref_var = upsample_conv2d_bn_reference(x64, s64, t64, w64, size, align)
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert mean.dtype == var.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    assert _rel_err(out, ref) < tol
    # statistics of the stored (rounded) output, judged on the output's scale
    rounded_var, rounded_mean = torch.var_mean(out.double().cpu(), dim=(0, 2, 3), unbiased=False)
    scale = ref.abs().max().item() + 1e-12
    assert (mean.double().cpu() - rounded_mean).abs().max().item() < stats_tol * scale
    assert (var.double().cpu() - rounded_var).abs().max().item() < stats_tol * scale ** 2
    if x.dtype == torch.float32:
        assert (mean.double().cpu() - ref_mean).abs().max().item() < 1e-5 * scale
        assert (var.double().cpu() - ref_var).abs().max().item() < 1e-5 * scale ** 2
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7)).to(x.device, x.dtype)
    grad_a, grad_w = upsample_conv2d_bn_backward_op(grad_out, x, s, t, w, size, align)
    a = activate_reference(x64, s64, t64).detach().requires_grad_()
    w_ref = w64.clone().requires_grad_()
    up = a if list(size) == list(a.shape[-2:]) else F.interpolate(a, size=size, mode="bilinear", align_corners=align)
    F.conv2d(up, w_ref, padding=w.shape[-1] // 2).backward(grad_out.double().cpu())
    assert grad_a.dtype == x.dtype and grad_a.shape == x.shape and grad_w.shape == w.shape
    assert grad_a.is_contiguous(memory_format=memory_format_of(x))
    assert _rel_err(grad_a, a.grad) < tol
    assert _rel_err(grad_w, w_ref.grad) < tol
    return out


@pytest.mark.parametrize("case", BN_CASES, ids=[f"case{i}" for i in range(len(BN_CASES))])
@pytest.mark.parametrize("affine", [False, True])
def test_bn_stage_values(backend, device, dtype, case, affine):
    """out, batch mean and variance, and the backward op, for both layouts and align_corners."""
    _skip_interpreted_bf16(backend, dtype)
    channels_last = case[0] == 2  # both layouts across the cases
    align = sum(case[:4]) % 2 == 0  # both align_corners across the upsampled cases
    x, s, t, w, size = _bn_inputs(case, affine, dtype, channels_last, hash((case, affine)) % 2**31, device)
    out = _check_bn_stage(x, s, t, w, size, align, TOL[dtype], 1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_bn_stage_any_size(backend, device):
    """Random shapes, sizes (equal: plain conv; larger: upsampled), kernels and affines, float32."""

    @settings(max_examples=8, deadline=None)
    @given(
        b=st.integers(1, 2), cin=st.integers(1, 5), h=st.integers(1, 5), w=st.integers(1, 5), cout=st.integers(1, 5),
        k=st.sampled_from([1, 3, 5]), grow=st.tuples(st.integers(0, 5), st.integers(0, 5)),
        affine=st.booleans(), align=st.booleans(), seed=st.integers(0, 2**31 - 1),
    )
    def check(b, cin, h, w, cout, k, grow, affine, align, seed):
        size = [h + grow[0], w + grow[1]]
        x, s, t, weight, _ = _bn_inputs((b, cin, h, w, cout, k, size), affine, torch.float32, False, seed, device)
        _check_bn_stage(x, s, t, weight, size, align, 1e-5, 1e-5)

    check()


def _loss_of_outputs(out, mean, var):
    # weights every output, including the statistics, so each gradient path is exercised
    g = torch.Generator().manual_seed(3)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    return (out * w_out).sum() + (mean * torch.arange(1.0, mean.numel() + 1, device=mean.device)).sum() + 3.0 * var.sum()


@pytest.mark.parametrize("case", BN_CASES[:2], ids=["upsampled", "same_size"])
def test_bn_stage_gradients(backend, device, case):
    """Values and every gradient (x, in_scale, in_shift, weight) through out, mean and var."""
    x, s, t, w, size = _bn_inputs(case, True, torch.float32, False, 11, device)
    leaves = [v.clone().requires_grad_() for v in (x, s, t, w)]
    refs = [v.double().cpu().clone().requires_grad_() for v in (x, s, t, w)]
    out = upsample_conv2d_bn_op(*leaves[:3], leaves[3], size, True)
    ref = upsample_conv2d_bn_reference(*refs[:3], refs[3], size, True)
    for got, want in zip(out, ref):
        assert _rel_err(got, want) < 1e-5
    _loss_of_outputs(*out).backward()
    _loss_of_outputs(*ref).backward()
    for got, want in zip(leaves, refs):
        assert _rel_err(got.grad, want.grad) < 1e-4


def test_bn_stage_gradcheck_float64(backend, device):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 2, 3, generator=g, dtype=torch.float64)
    s = torch.tensor([1.3, -0.8], dtype=torch.float64)
    t = torch.tensor([0.2, -0.1], dtype=torch.float64)
    # keep x s + t away from ReLU's kink, so finite differences do not straddle it
    pre = x * s[:, None, None] + t[:, None, None]
    x = torch.where(pre.abs() < 0.05, x + 0.1 * torch.sign(s)[:, None, None], x)
    w = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    inputs = tuple(v.to(device).requires_grad_() for v in (x, s, t, w))
    options = dict(atol=1e-5, rtol=1e-4, fast_mode=True) if backend == "triton" else {}
    assert torch.autograd.gradcheck(lambda *v: upsample_conv2d_bn_op(*v, [3, 5], True), inputs, **options)


def test_bn_stage_opcheck(backend, device):
    x, s, t, w, size = _bn_inputs(BN_CASES[0], True, torch.float32, False, 2, device)
    torch.library.opcheck(upsample_conv2d_bn_op, (x, s.requires_grad_(), t.requires_grad_(), w.requires_grad_(), size, True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    torch.library.opcheck(upsample_conv2d_bn_backward_op,
                          (torch.randn(2, 6, 7, 9, device=device), x, s.detach(), t.detach(), w.detach(), size, True),
                          test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------ the block

BLOCKS = [  # (reduce, kernel_size, channels_last, stack_convs, fuse_batchnorm, momentum)
    (True, 3, False, None, None, 0.1), (True, 3, True, None, None, 0.1),
    (False, 5, False, None, None, 0.1), (False, 5, True, None, None, 0.1),
    (True, 3, False, True, None, 0.1), (True, 3, True, True, None, 0.1),
    (False, 5, False, True, None, 0.1), (False, 5, True, True, None, 0.1),
    (True, 3, False, True, True, 0.1), (True, 3, False, False, True, None), (False, 3, False, True, True, 0.3),
]


@pytest.mark.parametrize("reduce,k,channels_last,stack,fuse,momentum", BLOCKS,
                         ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_block_matches_plain_block(backend, device, reduce, k, channels_last, stack, fuse, momentum):
    """Training mode, two steps: output, input and parameter gradients, running statistics;
    then eval mode with the running statistics. Every stack/fuse choice, both layouts."""
    torch.manual_seed(0)
    block = fastmde.nn.UpProjection(6, 5, kernel_size=k, reduce=reduce, stack_convs=stack, fuse_batchnorm=fuse)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.3, 0.3)
    block = block.to(device)
    plain = copy.deepcopy(block)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for step in range(2):
        x = torch.randn(2, 6, 3, 4, device=device).contiguous(memory_format=fmt).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        out = block(x, size=(7, 9))
        ref = up_projection_block_reference(plain, x_ref, size=(7, 9))
        weight = torch.randn(out.shape, device=device)
        (out * weight).sum().backward()
        (ref * weight).sum().backward()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        assert _rel_err(x.grad, x_ref.grad) < 1e-4
        for (name, p), q in zip(block.named_parameters(), plain.parameters()):
            assert _rel_err(p.grad, q.grad) < 1e-4, name
        for (name, b), c in zip(block.named_buffers(), plain.buffers()):
            torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)
    block.eval()
    plain.eval()
    with torch.no_grad():
        x = torch.randn(1, 6, 3, 4, device=device)
        torch.testing.assert_close(block(x, size=(6, 8)), up_projection_block_reference(plain, x, size=(6, 8)),
                                   rtol=1e-4, atol=1e-5)


def test_block_gradcheck_float64(backend, device):
    torch.manual_seed(2)
    block = fastmde.nn.UpProjection(4, 3, kernel_size=3).double().to(device)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    options = dict(atol=1e-5, rtol=1e-4, fast_mode=True) if backend == "triton" else {}
    assert torch.autograd.gradcheck(lambda a: block(a), (x,), **options)


@pytest.mark.parametrize("fuse", [None, True])
def test_compile_fullgraph(backend, device, fuse):
    """The block with a skip input, compiled whole: values, input gradient, running statistics."""
    torch.manual_seed(1)
    block = fastmde.nn.UpProjection(6, 4, kernel_size=3, fuse_batchnorm=fuse).to(device)
    plain = copy.deepcopy(block)
    x = torch.randn(2, 3, 5, 6, device=device)
    skip = torch.randn(2, 3, 5, 6, device=device)
    torch._dynamo.reset()
    # inductor on the CPU backends; AOT autograd without code generation for Triton, whose
    # kernels run interpreted here (as its tests did before)
    compiled = torch.compile(lambda a, s: block(a, skip=s), fullgraph=True,
                             backend="aot_eager" if backend == "triton" else "inductor")
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = compiled(x1, skip)
    out.sum().backward()
    out2 = up_projection_block_reference(plain, x2, skip=skip)
    out2.sum().backward()
    torch.testing.assert_close(out, out2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    for b, c in zip(block.buffers(), plain.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6)


def test_fused_block_saves_less_activation_memory(backend, device):
    """Bytes kept for backward by one training forward (each storage once), fused against
    plain: no BatchNorm or ReLU output is kept, only the convs' raw outputs (at the upsampled
    size: branch + shortcut and the second conv's, 3 maps of Cout against 5)."""
    torch.manual_seed(0)

    def saved_bytes(fuse):
        block = fastmde.nn.UpProjection(16, 8, fuse_batchnorm=fuse).to(device)
        x = torch.randn(2, 16, 6, 8, device=device, requires_grad=True)
        storages = {}
        weights = {p.untyped_storage().data_ptr() for p in block.parameters()}

        def pack(t):
            if t.untyped_storage().data_ptr() not in weights:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x)
        return sum(storages.values())

    fused, plain = saved_bytes(True), saved_bytes(False)
    assert fused < 0.7 * plain, (fused, plain)  # 3 maps of 5 at the upsampled size, plus x and r


def test_block_path_follows_the_backend(monkeypatch):
    """stack_convs/fuse_batchnorm=None: fused where the up-projection runs on Triton, plain
    elsewhere; the choice is taken in fastmde.ops.up_projection_block."""
    import fastmde.ops.up_projection_block as module

    calls = []
    real = module.upsample_conv2d_bn
    monkeypatch.setattr(module, "upsample_conv2d_bn", lambda *args: calls.append(1) or real(*args))
    block = fastmde.nn.UpProjection(4, 3, stack_convs=True)
    x = torch.randn(2, 4, 3, 3)
    block(x)
    assert bool(calls) == (_backend.choose("up_projection", "cpu") == "triton")
    calls.clear()
    _backend.set_backend("triton")
    try:
        block(x)
    finally:
        _backend.set_backend(None)
    assert len(calls) == 3  # reduce, the stacked branch + shortcut, the branch's second conv


# ------------------------------------------------------------------ one implementation's details


@pytest.mark.parametrize("align_corners", [True, False])
def test_native_band_splitting_large_channels(native_backend, align_corners):
    # enough channels x width that the C++ kernels' per-band buffers split the image into bands
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 16, 40, 48, generator=g)
    weight = torch.randn(256, 16, 3, 3, generator=g) * 0.1
    compare(x, weight, (80, 96), align_corners, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_backward_reads_a_channels_last_gradient_in_place(native_backend, dtype):
    """Over several row bands, the C++ backward reads a channels_last output gradient in place
    and copies a channel-major one row by row first: the same numbers reach the same sums, so
    the two gradients are bitwise equal (bfloat16 too: there t is rounded once, as before the
    GEMMs)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 16, 40, 48, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(256, 16, 3, 3, generator=g) * 0.1).to(dtype)
    grad = torch.randn(1, 256, 80, 96, generator=g).to(dtype)
    by_rows = upsample_conv2d_backward_op(grad, x, weight, [80, 96], True)
    in_place = upsample_conv2d_backward_op(grad.contiguous(memory_format=torch.channels_last), x, weight, [80, 96], True)
    for a, b in zip(in_place, by_rows):
        assert torch.equal(a, b)
    # and both are the gradients of the reference (float32: tight; bfloat16: its rounding)
    xr, wr = x.double().requires_grad_(), weight.double().requires_grad_()
    want = torch.autograd.grad(upsample_conv2d_reference(xr, wr, (80, 96), True), (xr, wr), grad.double())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for got, ref in zip(in_place, want):
        assert (got.double() - ref).abs().max() <= tol * ref.abs().max()


@pytest.mark.parametrize("cin, cout, h, w", [(64, 128, 16, 24), (48, 96, 20, 13)])
def test_native_decoder_sized_channels_are_exact_and_repeatable(native_backend, cin, cout, h, w):
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


def test_triton_tile_statistics_merge_matches_var_mean():
    """Chan's merge of per-tile (sum, M2) with a partial last tile, at an offset mean (1e3) where
    E[v^2] - mean^2 in float32 would lose every digit of a variance of 1e-2."""
    kernels = _backend.triton_module("up_projection")
    assert kernels is not None, _backend._triton_errors.get("up_projection")
    g = torch.Generator().manual_seed(0)
    values = 1e3 + 0.1 * torch.randn(103, 4, generator=g, dtype=torch.float64)
    tile = 16
    partial = torch.stack([torch.stack((v.sum(0), ((v - v.mean(0)) ** 2).sum(0))) for v in values.split(tile)]).float()
    mean, var = kernels.merge_tile_stats(partial, 103, tile)
    ref_var, ref_mean = torch.var_mean(values, dim=0, unbiased=False)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-4, atol=0)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_unet_decoder_shape(dtype):
    kernels = _backend.triton_module("up_projection")
    x = torch.randn(4, 128, 36, 48, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = 0.05 * torch.randn(128, 128, 3, 3, device="cuda", dtype=dtype)
    out = kernels.upsample_conv2d_forward(x, weight, [72, 96], True)
    ref = upsample_conv2d_reference(x.float(), weight.float(), (72, 96), True)
    assert _rel_err(out, ref) < TOL[dtype]
    grad_out = torch.randn_like(ref).to(dtype)
    gx, gw = kernels.upsample_conv2d_backward(grad_out, x, weight, [72, 96], True)
    xr, wr = x.float().requires_grad_(), weight.float().requires_grad_()
    rx, rw = torch.autograd.grad(upsample_conv2d_reference(xr, wr, (72, 96), True), (xr, wr), grad_out.float())
    assert _rel_err(gx, rx) < TOL[dtype] and _rel_err(gw, rw) < TOL[dtype]


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_fused_block_unet_decoder_shape(dtype):
    torch.manual_seed(0)
    block = fastmde.nn.UpProjection(256, 64, fuse_batchnorm=True).cuda()
    plain = copy.deepcopy(block)
    x = torch.randn(8, 256, 36, 48, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out = block(x, size=(72, 96))
        ref = up_projection_block_reference(plain, x, size=(72, 96))
    assert _rel_err(out.float(), ref.float()) < 5 * TOL[dtype]
