"""The C++ depth metric kernel (csrc/depth_metrics.cpp) against the reference: per-image sums
and both aggregations over crops, masks (including all-invalid), depth ranges, non-finite
ground truth, odd and even sizes, half/bfloat16, non-contiguous input; opcheck, torch.compile."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmde
from fastmde.ops import depth_metric_sums_op
from fastmde.reference.depth_metrics import (
    CROPS,
    METRIC_NAMES,
    depth_metric_sums_reference,
    depth_metrics_reference,
    resolve_crop,
)
from native_kernel_helpers import depth_pair, random_mask, require_native_extension


pytestmark = pytest.mark.usefixtures("native_backend")


def assert_sums_close(got, want):
    assert got.dtype == torch.float64 and got.shape == want.shape
    # counts (n and the three deltas) are exact; the error sums agree to float64 rounding
    torch.testing.assert_close(got[:, [0, 4, 5, 6]], want[:, [0, 4, 5, 6]], rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


crops = st.one_of(
    st.none(),
    st.sampled_from(sorted(CROPS)),
    st.tuples(st.floats(0, 0.45), st.floats(0.55, 1.0), st.floats(0, 0.45), st.floats(0.55, 1.0)),
)


def crop_bounds(crop, h, w):
    if isinstance(crop, tuple):
        top, bottom = int(crop[0] * h), max(int(crop[0] * h) + 1, int(round(crop[1] * h)))
        left, right = int(crop[2] * w), max(int(crop[2] * w) + 1, int(round(crop[3] * w)))
        return (top, min(bottom, h), left, min(right, w))
    return crop


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 4), h=st.integers(3, 67), w=st.integers(3, 67), crop=crops,
    mask_kind=st.sampled_from(["none", "random", "all_invalid"]), bad=st.sampled_from([0.0, 0.1]),
    depth_range=st.sampled_from([(1e-3, None), (1e-3, 10.0), (1.0, 6.0), (0.5, math.inf)]),
    dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16),
)
def test_matches_reference(b, h, w, crop, mask_kind, bad, depth_range, dtype, seed):
    pred, target = depth_pair((b, h, w), seed, dtype=dtype, bad_fraction=bad, lo=0.0, hi=12.0)
    # predictions outside [min_depth, max_depth] exercise the clamp
    pred = torch.where(torch.arange(w) % 5 == 0, pred * 3.0, pred)
    mask = random_mask((b, h, w), seed, mask_kind)
    crop = crop_bounds(crop, h, w)
    lo, hi = depth_range
    bounds = resolve_crop(crop, h, w)
    hi_f = math.inf if hi is None else hi
    want = depth_metric_sums_reference(pred, target, mask, lo, hi_f, bounds)
    got = fastmde.depth_metric_sums(pred, target, mask=mask, min_depth=lo, max_depth=hi, crop=crop)
    assert_sums_close(got, want)
    if mask_kind == "all_invalid":
        assert torch.all(got == 0)
    for aggregate in ("per_image", "pooled"):
        ref = depth_metrics_reference(pred, target, mask, min_depth=lo, max_depth=hi, crop=crop, aggregate=aggregate)
        out = fastmde.depth_metrics(pred, target, mask=mask, min_depth=lo, max_depth=hi, crop=crop, aggregate=aggregate)
        for name in METRIC_NAMES:
            torch.testing.assert_close(out[name], ref[name], rtol=1e-9, atol=1e-12)
            assert torch.isfinite(out[name])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    pred, target = depth_pair((3, 21, 34), 8, dtype=dtype, bad_fraction=0.05)
    mask = random_mask((3, 21, 34), 8, "random")
    bounds = resolve_crop("eigen", 21, 34)
    # both read the same half values and compute in float64
    want = depth_metric_sums_reference(pred, target, mask, 1e-3, 10.0, bounds)
    got = depth_metric_sums_op(pred, target, mask, 1e-3, 10.0, list(bounds))
    assert_sums_close(got, want)


def test_non_contiguous_and_four_dim_inputs():
    pred, target = depth_pair((2, 30, 41), 12, bad_fraction=0.05)
    want = depth_metric_sums_reference(pred, target, None, 1e-3, 10.0, resolve_crop("densedepth", 30, 41))
    p_nc = pred.transpose(1, 2).contiguous().transpose(1, 2)[:, None]
    t_nc = target.transpose(1, 2).contiguous().transpose(1, 2)[:, None]
    assert not p_nc.is_contiguous()
    got = fastmde.depth_metric_sums(p_nc, t_nc, max_depth=10.0, crop="densedepth")
    assert_sums_close(got, want)


def test_independent_of_thread_count():
    pred, target = depth_pair((4, 97, 70), 13, bad_fraction=0.02)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = depth_metric_sums_op(pred, target, None, 1e-3, 10.0, [0, 97, 0, 70])
        torch.set_num_threads(max(2, threads))
        many = depth_metric_sums_op(pred, target, None, 1e-3, 10.0, [0, 97, 0, 70])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_opcheck():
    pred, target = depth_pair((2, 7, 9), 14, bad_fraction=0.1)
    mask = random_mask((2, 7, 9), 14, "random")
    torch.library.opcheck(depth_metric_sums_op, (pred, target, mask, 1e-3, 10.0, [1, 6, 0, 8]))
    torch.library.opcheck(depth_metric_sums_op, (pred, target, None, 1e-3, float("inf"), [0, 7, 0, 9]))


def test_torch_compile_fullgraph():
    pred, target = depth_pair((2, 12, 17), 15, bad_fraction=0.05)

    def rms(p, t):
        return fastmde.depth_metrics(p, t, max_depth=10.0, crop="eigen")["rms"]

    compiled = torch.compile(rms, fullgraph=True)
    torch.testing.assert_close(compiled(pred, target), rms(pred, target))


def test_backends_report_native():
    assert fastmde.backends(("cpu",))["depth_metrics"]["cpu"] == "native"


def test_bad_crop_is_named():
    C = require_native_extension()
    pred, target = depth_pair((1, 5, 5), 0)
    with pytest.raises(RuntimeError, match="crop"):
        C.depth_metric_sums(pred, target, None, 1e-3, 10.0, [0, 6, 0, 5])
