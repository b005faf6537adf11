"""kernels/up_projection.py against the reference: forward, grad_x, grad_weight; layouts, dtypes."""
import pytest
import torch

import fastmde
from fastmde.ops.up_projection import upsample_conv2d_backward_op, upsample_conv2d_op
from fastmde.reference.up_projection import (
    up_projection_block_reference,
    upsample_conv2d_backward_reference,
    upsample_conv2d_forward_reference,
)

from conftest import requires_cuda

kernels = pytest.importorskip("fastmde.kernels.up_projection")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (B, Cin, h, w, Cout, k, size): odd channel counts (masked K/N), scale 2, odd target sizes,
# k = 5 and 1, a 1x1 input, a downscale
CASES = [
    (2, 5, 3, 4, 6, 3, (6, 8)),
    (1, 3, 4, 5, 4, 5, (7, 11)),
    (1, 17, 1, 1, 3, 3, (1, 1)),
    (1, 4, 5, 6, 3, 1, (3, 4)),
    (2, 3, 2, 3, 5, 3, (5, 7)),
]
# fp16 through tl.dot; bf16 only natively (the interpreter's bf16 dot is not exact)
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _rel_err(a, b):
    return ((a.double().cpu() - b.double().cpu()).abs().max() / (b.double().abs().max() + 1e-12)).item()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_match_reference(case, align_corners, channels_last, dtype):
    B, cin, h, w, cout, k, size = case
    g = torch.Generator().manual_seed(hash((case, align_corners)) % 2**31)
    x = torch.randn(B, cin, h, w, generator=g).to(DEVICE, dtype)
    weight = (0.3 * torch.randn(cout, cin, k, k, generator=g)).to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = kernels.upsample_conv2d_forward(x, weight, list(size), align_corners)
    ref = upsample_conv2d_forward_reference(x.double().cpu(), weight.double().cpu(), size, align_corners)
    assert out.dtype == dtype and out.shape == ref.shape
    if channels_last and out.shape[1] > 1 and out.shape[-1] * out.shape[-2] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert _rel_err(out, ref) < TOL[dtype]
    grad_out = torch.randn(ref.shape, generator=g).to(DEVICE, dtype)
    gx, gw = kernels.upsample_conv2d_backward(grad_out, x, weight, list(size), align_corners)
    rx, rw = upsample_conv2d_backward_reference(grad_out.double().cpu(), x.double().cpu(), weight.double().cpu(), size, align_corners)
    assert gx.dtype == dtype and gx.stride() == x.stride() and gw.dtype == dtype and gw.shape == weight.shape
    assert _rel_err(gx, rx) < TOL[dtype]
    assert _rel_err(gw, rw) < TOL[dtype]


def test_bad_input_is_a_clear_error():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="weight"):
        kernels.upsample_conv2d_forward(x, torch.randn(2, 4, 3, 3), [8, 8], True)
    with pytest.raises(ValueError, match="odd"):
        kernels.upsample_conv2d_forward(x, torch.randn(2, 3, 2, 2), [8, 8], True)


def test_block_and_opcheck(triton_backend):
    """fastmde.nn.UpProjection with the Triton backend against the plain block, values and grads."""
    assert fastmde.backends()["up_projection"][triton_backend.type] == "triton"
    torch.manual_seed(0)
    block = fastmde.nn.UpProjection(6, 5, kernel_size=3).to(triton_backend)
    x = torch.randn(2, 6, 3, 4, device=triton_backend, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out = block(x, size=(7, 9))
    out.square().sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    ref = up_projection_block_reference(block, x_ref, size=(7, 9))
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for g, p in zip(grads, block.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
    xs = torch.randn(1, 3, 2, 3, device=triton_backend, requires_grad=True)
    ws = torch.randn(4, 3, 3, 3, device=triton_backend, requires_grad=True)
    torch.library.opcheck(upsample_conv2d_op, (xs, ws, [4, 5], True), test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    torch.library.opcheck(
        upsample_conv2d_backward_op, (torch.randn(1, 4, 4, 5, device=triton_backend), xs.detach(), ws.detach(), [4, 5], False),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_compile_fullgraph(triton_backend):
    torch.manual_seed(1)
    block = fastmde.nn.UpProjection(4, 3, kernel_size=3).to(triton_backend)
    x = torch.randn(1, 4, 2, 3, device=triton_backend)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(x1).sum().backward()
    block(x2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_unet_decoder_shape(dtype):
    x = torch.randn(4, 128, 36, 48, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = 0.05 * torch.randn(128, 128, 3, 3, device="cuda", dtype=dtype)
    out = kernels.upsample_conv2d_forward(x, weight, [72, 96], True)
    ref = upsample_conv2d_forward_reference(x.float(), weight.float(), (72, 96), True)
    assert _rel_err(out, ref) < TOL[dtype]
    grad_out = torch.randn_like(ref).to(dtype)
    gx, gw = kernels.upsample_conv2d_backward(grad_out, x, weight, [72, 96], True)
    rx, rw = upsample_conv2d_backward_reference(grad_out.float(), x.float(), weight.float(), (72, 96), True)
    assert _rel_err(gx, rx) < TOL[dtype] and _rel_err(gw, rw) < TOL[dtype]
