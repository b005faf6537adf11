"""fastmde::upsample_conv2d_bn (the up-projection with BatchNorm folded in) against the reference:
the Triton kernels (interpreter on CPU), the op on every backend, and the fused block."""
import copy
import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmde
from fastmde import _backend
from fastmde.ops.up_projection_bn import upsample_conv2d_bn_backward_op, upsample_conv2d_bn_op
from fastmde.reference.up_projection import (
    activate_reference,
    up_projection_block_reference,
    upsample_conv2d_bn_reference,
)

from conftest import requires_cuda

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (B, Cin, h, w, Cout, k, size): upsampled (odd target, masked K/N tiles), same size (the
# branch's second conv), the 1x1 reduction, a 1x1 map, more rows than one 32-row tile (so the
# statistics merge several tiles, the last one partial)
CASES = [
    (2, 5, 3, 4, 6, 3, (7, 9)),
    (1, 3, 5, 6, 4, 3, (5, 6)),
    (2, 6, 3, 5, 3, 1, (3, 5)),
    (1, 4, 1, 1, 3, 3, (2, 3)),
    (3, 3, 6, 7, 2, 3, (6, 7)),
]
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _rel_err(a, b):
    return ((a.double().cpu() - b.double().cpu()).abs().max() / (b.double().abs().max() + 1e-12)).item()


def _inputs(case, affine, dtype, channels_last, seed):
    B, cin, h, w, cout, k, size = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cin, h, w, generator=g).to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (0.3 * torch.randn(cout, cin, k, k, generator=g)).to(DEVICE, dtype)
    scale = shift = None
    if affine:
        # a negative scale and shifts of both signs: the ReLU cuts some channels partly, one wholly
        scale = torch.tensor([1.5, -0.7, 0.3, 2.0, 0.9, -1.1])[:cin].to(DEVICE)
        shift = (0.5 * torch.randn(cin, generator=g)).to(DEVICE)
        shift[0] = -50.0
    return x, scale, shift, weight, list(size)


@pytest.fixture(scope="module")
def kernels():
    return pytest.importorskip("fastmde.kernels.up_projection")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_forward_backward_match_reference(kernels, case, affine, dtype):
    channels_last = case[0] == 2  # both layouts across the cases
    align = sum(case[:4]) % 2 == 0  # both align_corners across the upsampled cases
    x, s, t, w, size = _inputs(case, affine, dtype, channels_last, seed=hash((case, affine)) % 2**31)
    out, mean, var = kernels.upsample_conv2d_bn_forward(x, s, t, w, size, align)
    x64, w64 = x.double().cpu(), w.double().cpu()
    s64 = None if s is None else s.double().cpu()
    t64 = None if t is None else t.double().cpu()
    ref, ref_mean, ref_var = upsample_conv2d_bn_reference(x64, s64, t64, w64, size, align)
    assert out.dtype == dtype and out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert mean.dtype == var.dtype == torch.float32
    assert _rel_err(out, ref) < TOL[dtype]
    # statistics of the stored (rounded) output, so compare with those of `out` itself
    rounded_var, rounded_mean = torch.var_mean(out.double().cpu(), dim=(0, 2, 3), unbiased=False)
    scale = ref.abs().max().item() ** 2 + 1e-12
    assert (mean.double().cpu() - rounded_mean).abs().max().item() < 1e-5 * scale ** 0.5
    assert (var.double().cpu() - rounded_var).abs().max().item() < 1e-5 * scale
    if dtype == torch.float32:
        assert _rel_err(mean, ref_mean) < 1e-5 and _rel_err(var, ref_var) < 1e-5

    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE, dtype)
    grad_a, grad_w = kernels.upsample_conv2d_bn_backward(grad_out, x, s, t, w, size, align)
    a = activate_reference(x64, s64, t64).detach().requires_grad_()
    w_ref = w64.clone().requires_grad_()
    up = a if tuple(size) == tuple(a.shape[-2:]) else F.interpolate(a, size=size, mode="bilinear", align_corners=align)
    F.conv2d(up, w_ref, padding=w.shape[-1] // 2).backward(grad_out.double().cpu())
    assert grad_a.dtype == dtype and grad_a.stride() == x.stride() and grad_w.shape == w.shape
    assert _rel_err(grad_a, a.grad) < TOL[dtype]
    assert _rel_err(grad_w, w_ref.grad) < TOL[dtype]


@settings(max_examples=8, deadline=None)
@given(
    b=st.integers(1, 2), cin=st.integers(1, 5), h=st.integers(1, 5), w=st.integers(1, 5), cout=st.integers(1, 5),
    k=st.sampled_from([1, 3, 5]), grow=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    affine=st.booleans(), align=st.booleans(), seed=st.integers(0, 2**31 - 1),
)
def test_kernel_random_shapes(kernels, b, cin, h, w, cout, k, grow, affine, align, seed):
    """Random shapes, sizes (equal: plain conv; larger: upsampled), kernels and affines, float32:
    out, mean, var, grad_a and grad_weight against the float64 reference."""
    size = [h + grow[0], w + grow[1]]
    x, s, t, weight, _ = _inputs((b, cin, h, w, cout, k, size), affine, torch.float32, False, seed)
    out, mean, var = kernels.upsample_conv2d_bn_forward(x, s, t, weight, size, align)
    x64, w64 = x.double().cpu(), weight.double().cpu()
    s64, t64 = (None, None) if s is None else (s.double().cpu(), t.double().cpu())
    ref, ref_mean, ref_var = upsample_conv2d_bn_reference(x64, s64, t64, w64, size, align)
    assert _rel_err(out, ref) < 1e-5
    # means and variances near 0 are judged on the output's scale
    scale = ref.abs().max().item() + 1e-12
    assert (mean.double().cpu() - ref_mean).abs().max().item() < 1e-5 * scale
    assert (var.double().cpu() - ref_var).abs().max().item() < 1e-5 * scale ** 2
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    grad_a, grad_w = kernels.upsample_conv2d_bn_backward(grad_out, x, s, t, weight, size, align)
    a = activate_reference(x64, s64, t64).detach().requires_grad_()
    w_ref = w64.clone().requires_grad_()
    up = a if size == [h, w] else F.interpolate(a, size=size, mode="bilinear", align_corners=align)
    F.conv2d(up, w_ref, padding=k // 2).backward(grad_out.double().cpu())
    assert _rel_err(grad_a, a.grad) < 1e-5 and _rel_err(grad_w, w_ref.grad) < 1e-5


def test_tile_statistics_merge_matches_var_mean(kernels):
    """Chan's merge of per-tile (sum, M2) with a partial last tile, at an offset mean (1e3) where
    E[v^2] - mean^2 in float32 would lose every digit of a variance of 1e-2."""
    g = torch.Generator().manual_seed(0)
    values = 1e3 + 0.1 * torch.randn(103, 4, generator=g, dtype=torch.float64)
    tile = 16
    tiles = values.split(tile)
    partial = torch.stack([torch.stack((v.sum(0), ((v - v.mean(0)) ** 2).sum(0))) for v in tiles]).float()
    mean, var = kernels.merge_tile_stats(partial, 103, tile)
    ref_var, ref_mean = torch.var_mean(values, dim=0, unbiased=False)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-4, atol=0)


BACKENDS = ["reference", "native", "triton"]


@pytest.fixture(params=BACKENDS)
def any_backend(request):
    if request.param == "native" and _backend.native_module() is None:
        pytest.fail("fastmde._C is not built")
    if request.param == "triton":
        pytest.importorskip("fastmde.kernels.up_projection")
    _backend.set_backend(request.param)
    try:
        yield request.param
    finally:
        _backend.set_backend(None)


def _loss_of_outputs(out, mean, var):
    # weights every output, including the statistics, so each gradient path is exercised
    g = torch.Generator().manual_seed(3)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    return (out * w_out).sum() + (mean * torch.arange(1.0, mean.numel() + 1, device=mean.device)).sum() + 3.0 * var.sum()


@pytest.mark.parametrize("case", [CASES[0], CASES[1]])
def test_op_gradients_match_reference(any_backend, case):
    """Values and every gradient (x, in_scale, in_shift, weight) through out, mean and var."""
    x, s, t, w, size = _inputs(case, True, torch.float32, False, seed=11)
    leaves = [v.clone().requires_grad_() for v in (x, s, t, w)]
    refs = [v.double().clone().requires_grad_() for v in (x, s, t, w)]
    out = upsample_conv2d_bn_op(*leaves[:3], leaves[3], size, True)
    ref = upsample_conv2d_bn_reference(*refs[:3], refs[3], size, True)
    for got, want in zip(out, ref):
        assert _rel_err(got, want) < 1e-5
    _loss_of_outputs(*out).backward()
    _loss_of_outputs(*ref).backward()
    for got, want in zip(leaves, refs):
        assert _rel_err(got.grad, want.grad) < 1e-4


def test_op_gradcheck_float64(any_backend):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 2, 3, generator=g, dtype=torch.float64)
    s = torch.tensor([1.3, -0.8], dtype=torch.float64)
    t = torch.tensor([0.2, -0.1], dtype=torch.float64)
    # keep x s + t away from ReLU's kink, so finite differences do not straddle it
    pre = x * s[:, None, None] + t[:, None, None]
    x = torch.where(pre.abs() < 0.05, x + 0.1 * torch.sign(s)[:, None, None], x)
    w = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
    inputs = tuple(v.to(DEVICE).requires_grad_() for v in (x, s, t, w))
    # Under the interpreter a full Jacobian takes a minute: random projections (fast_mode) there.
    # The kernels compute interpolation coordinates in float32, hence the looser tolerance.
    options = dict(atol=1e-5, rtol=1e-4, fast_mode=True) if any_backend == "triton" else {}
    torch.autograd.gradcheck(lambda *v: upsample_conv2d_bn_op(*v, [3, 5], True), inputs, **options)


def test_op_opcheck_and_clear_errors(any_backend):
    x, s, t, w, size = _inputs(CASES[0], True, torch.float32, False, seed=2)
    torch.library.opcheck(upsample_conv2d_bn_op, (x, s.requires_grad_(), t.requires_grad_(), w.requires_grad_(), size, True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    torch.library.opcheck(upsample_conv2d_bn_backward_op, (torch.randn(2, 6, 7, 9, device=DEVICE), x, s.detach(), t.detach(), w.detach(), size, True),
                          test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(ValueError, match="in_scale and in_shift"):
        upsample_conv2d_bn_op(x, s, None, w, size, True)


# ---------------------------------------------------------------- the fused block


@pytest.mark.parametrize("reduce,stack,momentum", [(True, True, 0.1), (True, False, None), (False, True, 0.3)])
def test_fused_block_matches_plain_block(any_backend, reduce, stack, momentum):
    """Training mode: output, input and parameter gradients, running statistics after two steps;
    then eval mode with the running statistics."""
    torch.manual_seed(0)
    block = fastmde.nn.UpProjection(6, 5, kernel_size=3, reduce=reduce, stack_convs=stack, fuse_batchnorm=True)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.3, 0.3)
    block = block.to(DEVICE)
    plain = copy.deepcopy(block)
    for step in range(2):
        x = torch.randn(2, 6, 3, 4, device=DEVICE, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_()
        out = block(x, size=(7, 9))
        ref = up_projection_block_reference(plain, x_ref, size=(7, 9))
        weight = torch.randn(out.shape, device=DEVICE)
        (out * weight).sum().backward()
        (ref * weight).sum().backward()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
        for (name, p), q in zip(block.named_parameters(), plain.parameters()):
            assert _rel_err(p.grad, q.grad) < 1e-4, name
        for (name, b), c in zip(block.named_buffers(), plain.buffers()):
            torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)
    block.eval()
    plain.eval()
    with torch.no_grad():
        x = torch.randn(1, 6, 3, 4, device=DEVICE)
        torch.testing.assert_close(block(x, size=(6, 8)), up_projection_block_reference(plain, x, size=(6, 8)),
                                   rtol=1e-4, atol=1e-5)


def test_fused_block_default_follows_the_backend(monkeypatch):
    """fuse_batchnorm=None: fused where the up-projection runs on Triton, plain elsewhere."""
    import fastmde.ops.up_projection_block as module

    calls = []
    real = module.upsample_conv2d_bn_op
    monkeypatch.setattr(module, "upsample_conv2d_bn_op", lambda *args: calls.append(1) or real(*args))
    block = fastmde.nn.UpProjection(4, 3, stack_convs=True)
    x = torch.randn(2, 4, 3, 3)
    block(x)
    assert bool(calls) == (_backend.choose("up_projection", "cpu") == "triton")
    calls.clear()
    pytest.importorskip("fastmde.kernels.up_projection")
    _backend.set_backend("triton")
    try:
        block(x)
    finally:
        _backend.set_backend(None)
    assert len(calls) == 3  # reduce, the stacked branch + shortcut, the branch's second conv


def test_fused_block_saves_less_activation_memory(any_backend):
    """Bytes kept for backward by one training forward (each storage once), fused against
    plain: no BatchNorm or ReLU output is kept, only the convs' raw outputs (at the upsampled
    size: branch + shortcut and the second conv's, 3 maps of Cout against 5)."""
    torch.manual_seed(0)

    def saved_bytes(fuse):
        block = fastmde.nn.UpProjection(16, 8, fuse_batchnorm=fuse).to(DEVICE)
        x = torch.randn(2, 16, 6, 8, device=DEVICE, requires_grad=True)
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


def test_fused_block_compiles_without_graph_break(triton_backend):
    torch.manual_seed(1)
    block = fastmde.nn.UpProjection(4, 3, kernel_size=3, fuse_batchnorm=True).to(triton_backend)
    plain = copy.deepcopy(block)
    x = torch.randn(2, 4, 2, 3, device=triton_backend)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(x1).sum().backward()
    up_projection_block_reference(plain, x2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    for b, c in zip(block.buffers(), plain.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6)


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
