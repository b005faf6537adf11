"""kernels/depth_metrics.py against the reference: crops, masks, min/max depth, non-finite ground truth."""
import math

import pytest
import torch

import fastmde
from fastmde.ops.depth_metrics import depth_metric_sums_op
from fastmde.reference.depth_metrics import depth_metric_sums_reference, depth_metrics_reference

from conftest import requires_cuda

kernels = pytest.importorskip("fastmde.kernels.depth_metrics")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(shape, device=DEVICE, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g) * 12.0  # some above max_depth, a few near 0
    pred = target + 0.5 * torch.randn(shape, generator=g)  # some negative: clamped to min_depth
    flat = target.view(-1)
    flat[::13] = float("nan")
    flat[5::17] = float("inf")
    flat[7::19] = 0.0
    mask = torch.rand(shape, generator=g) > 0.2
    return pred.to(device, dtype), target.to(device, dtype), mask.to(device)


@pytest.mark.parametrize("shape", [(2, 9, 13), (3, 37, 45), (1, 1, 1)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("max_depth", [10.0, math.inf])
def test_sums_match_reference(shape, masked, max_depth):
    pred, target, mask = _inputs(shape)
    B, H, W = shape
    for crop in ([0, H, 0, W], [H // 3, H, W // 4, max(W - W // 5, W // 4 + 1)]):
        got = kernels.depth_metric_sums(pred, target, mask if masked else None, 1e-3, max_depth, crop)
        ref = depth_metric_sums_reference(pred.cpu(), target.cpu(), mask.cpu() if masked else None, 1e-3, max_depth, tuple(crop))
        assert got.dtype == torch.float64 and got.shape == (B, 7)
        torch.testing.assert_close(got.cpu()[:, 0], ref[:, 0], rtol=0, atol=0)  # counts exact
        torch.testing.assert_close(got.cpu(), ref, rtol=2e-6, atol=1e-6)


def test_half_and_all_invalid():
    pred, target, mask = _inputs((2, 11, 14), dtype=torch.float16)
    got = kernels.depth_metric_sums(pred, target, mask, 1e-3, 10.0, [0, 11, 0, 14])
    ref = depth_metric_sums_reference(pred.cpu(), target.cpu(), mask.cpu(), 1e-3, 10.0, (0, 11, 0, 14))
    torch.testing.assert_close(got.cpu(), ref, rtol=2e-6, atol=1e-5)
    none = kernels.depth_metric_sums(pred, target, torch.zeros_like(mask), 1e-3, 10.0, [0, 11, 0, 14])
    assert torch.equal(none.cpu(), torch.zeros(2, 7, dtype=torch.float64))


def test_bad_crop_is_a_clear_error():
    pred, target, _ = _inputs((1, 4, 5))
    with pytest.raises(ValueError, match="crop"):
        kernels.depth_metric_sums(pred, target, None, 1e-3, 10.0, [0, 5, 0, 5])


def test_public_api_and_opcheck(triton_backend):
    assert fastmde.backends()["depth_metrics"][triton_backend.type] == "triton"
    pred, target, mask = _inputs((2, 1, 24, 32), triton_backend)
    for aggregate in ("per_image", "pooled"):
        got = fastmde.depth_metrics(pred, target, mask=mask, crop="eigen", max_depth=10.0, aggregate=aggregate)
        ref = depth_metrics_reference(pred.cpu()[:, 0], target.cpu()[:, 0], mask.cpu()[:, 0], crop="eigen", max_depth=10.0, aggregate=aggregate)
        for k in ref:
            torch.testing.assert_close(got[k].cpu(), ref[k], rtol=2e-6, atol=1e-6)
    torch.library.opcheck(
        depth_metric_sums_op, (pred[:, 0], target[:, 0], mask[:, 0], 1e-3, 10.0, [2, 20, 3, 30]),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_compile_fullgraph(triton_backend):
    pred, target, mask = _inputs((1, 1, 8, 9), triton_backend)
    torch._dynamo.reset()

    def f(p, t):
        return fastmde.depth_metrics(p, t, mask=mask, max_depth=10.0)["rms"]

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(pred, target)
    torch.testing.assert_close(got, f(pred, target))


@requires_cuda
def test_cuda_realistic_shape():
    pred, target, mask = _inputs((8, 480, 640), "cuda")
    got = kernels.depth_metric_sums(pred, target, mask, 1e-3, 10.0, [45, 471, 41, 601])
    ref = depth_metric_sums_reference(pred, target, mask, 1e-3, 10.0, (45, 471, 41, 601))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)
