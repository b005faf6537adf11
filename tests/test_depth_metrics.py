"""The depth metrics on every implementation this machine has (``backend`` fixture: reference,
native C++, Triton, under the interpreter without a GPU): hand-computed values, every rule of
``MetricRules`` against the reference, the named protocols against hand derivations from their
sources' code and against plain renditions of BTS's evaluation code per image (the nine
metrics of ``compute_errors``, NYU and KITTI crops), ground truth kept in its own dtype beside a
half-precision prediction, empty evaluations (NaN and the units warning), predictions <= 0
counted as δ hits (the warning), opcheck, torch.compile (also dynamic=True), bad input.
"""
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fastmde
from conftest import requires_cuda
from fastmde.engine.protocols import PROTOCOLS
from fastmde.ops import depth_metric_sums_op
from fastmde.reference.depth_metrics import (
    METRIC_NAMES,
    NUM_SUMS,
    PAPER_METRIC_NAMES,
    SUM_INDEX,
    MetricRules,
    combine,
    crop_names,
    depth_metric_sums_reference,
    resolve_crop,
)
from native_kernel_helpers import depth_pair, random_mask

FIXTURE_HEALTH = [HealthCheck.function_scoped_fixture]


def per_pixel_eps(backend, dtype=torch.float32) -> float:
    """The precision each pixel's error terms are computed in: float32 on Triton (except float64
    input), float64 on the reference and the C++ kernels."""
    return 2.0**-23 if backend == "triton" and dtype != torch.float64 else 2.0**-52


def assert_silog_close(got, want, rmse_log, tol, eps):
    """SILog = 100 sqrt(E[e²] - E[e]²) loses digits to cancellation where the log errors are nearly
    constant (one pixel: 0 in exact arithmetic, the rounding of E[e²] in any other): its square is
    compared, within ``tol`` plus the rounding of E[e²] (= rmse_log²) at ``eps`` per term."""
    # a non-finite RMSE-log (a prediction clamped to 0 m: ln 0) leaves SILog non-finite: no floor
    floor = 64 * eps * float(torch.as_tensor(rmse_log).double().nan_to_num(0.0, posinf=0.0, neginf=0.0).max()) ** 2
    torch.testing.assert_close((torch.as_tensor(got).cpu().double() / 100) ** 2,
                               (torch.as_tensor(want).cpu().double() / 100) ** 2, rtol=tol, atol=tol + floor,
                               equal_nan=True)


def test_silog_comparison_takes_a_non_finite_rmse_log():
    """min_depth=0 with the clamp: a negative prediction becomes 0 m, ln 0 = -inf, RMSE-log inf and
    SILog NaN on every backend; the comparison must not overflow squaring the floor (a hypothesis
    example of test_values_match_reference on Triton did)."""
    inf, nan = torch.tensor(math.inf, dtype=torch.float64), torch.tensor(math.nan, dtype=torch.float64)
    assert_silog_close(nan, nan, inf, 1e-9, 2.0**-23)


def close(got, want, tol, eps=2.0**-52):
    """Metrics dicts equal within ``tol`` (relative and absolute), NaN where the other is NaN;
    SILog through :func:`assert_silog_close` (``eps``: the per-pixel precision)."""
    for name in want:
        if name == "silog" and "rmse_log" in want:
            assert_silog_close(got[name], want[name], want["rmse_log"], tol, eps)
            continue
        torch.testing.assert_close(got[name].cpu().double(), want[name].double(), rtol=tol, atol=tol, equal_nan=True)


def assert_sums_close(got, want, backend):
    """Counts (n, δ hits, out-of-range and non-positive-hit counts) exact; error sums to float64
    rounding (reference, C++: both accumulate in float64) or float32 rounding (Triton computes per
    pixel in float32)."""
    got = got.cpu()
    assert got.dtype == torch.float64 and got.shape == want.shape
    counts = [SUM_INDEX[name] for name in ("n", "delta1", "delta2", "delta3", "below_range", "above_range",
                                           "nonpositive_hits")]
    torch.testing.assert_close(got[:, counts], want[:, counts], rtol=0, atol=0)
    tol = 2e-6 if backend == "triton" else 1e-10
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * 10, equal_nan=True)


def metric_tol(backend):
    return 2e-6 if backend == "triton" else 1e-9


def as_device(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


# ---------------------------------------------------------------- values by hand


def test_a_close_prediction_keeps_its_digits(backend, device):
    """ŷ = 1.5 m against y = 1.4836440944449447 m in float64 (a CI hypothesis example): the Triton
    kernel subtracted and took logarithms of the two values rounded to float32, so REL was off
    by 2e-6 relative and RMSE-log by 5e-6; ŷ - y and ŷ/y are now formed in float64 first."""
    pred = torch.tensor([[[1.5, 0.5]]], dtype=torch.float64)
    target = torch.tensor([[[1.4836440944449447, 0.5000001]]], dtype=torch.float64)
    m = fastmde.depth_metrics(*as_device(device, pred, target))
    diff = (pred - target).flatten().tolist()
    ys = target.flatten().tolist()
    rel = sum(abs(d) / y for d, y in zip(diff, ys)) / 2
    sq_rel = sum(d * d / y for d, y in zip(diff, ys)) / 2
    e = [math.log(p / y) for p, y in zip(pred.flatten().tolist(), ys)]
    tol = 5e-7 if backend == "triton" else 1e-12   # one float32 rounding per term on Triton
    assert m["rel"].item() == pytest.approx(rel, rel=tol)
    assert m["sq_rel"].item() == pytest.approx(sq_rel, rel=tol)
    assert m["rmse_log"].item() == pytest.approx(math.sqrt(sum(v * v for v in e) / 2), rel=tol)
    assert m["log10"].item() == pytest.approx(sum(abs(v) for v in e) / 2 / math.log(10), rel=tol)


def test_log_error_of_a_ratio_beyond_float32(backend, device):
    """ŷ/y beyond float32's range (1e36 m over 2 mm; 1e-37 m over 20 m) still gives the finite
    ln ŷ - ln y (Triton falls back to the difference of the logarithms there)."""
    pred = torch.tensor([[[1e36, 1e-37]]], dtype=torch.float64)
    target = torch.tensor([[[2e-3, 20.0]]], dtype=torch.float64)
    m = fastmde.depth_metrics(*as_device(device, pred, target), clamp=False)
    e = [math.log(1e36 / 2e-3), math.log(1e-37 / 20.0)]
    tol = 1e-6 if backend == "triton" else 1e-12
    assert m["rmse_log"].item() == pytest.approx(math.sqrt((e[0] ** 2 + e[1] ** 2) / 2), rel=tol)
    assert m["log10"].item() == pytest.approx((abs(e[0]) + abs(e[1])) / 2 / math.log(10), rel=tol)


@pytest.mark.parametrize("dtype, preds", [
    (torch.float64, [1e-310, 5e-324, 1e-300, 2.5e-308, 1e20, 1e150]),
    # ŷ/y beyond float64's range: 2 m over a 1e-310 m ground truth, 5e-324 m over 2 m (the C++
    # kernel took ln(ŷ/y) as one logarithm of a ratio that over- or underflowed: ±inf)
    (torch.float64, [2.0, 5e-324, 1e-300, 2.0, 1e20, 1e150]),
    (torch.float32, [1e-40, 1e-45, 1e20, 3e38, 1.5, 0.25]),
])
def test_extreme_values_match_the_reference(backend, device, dtype, preds):
    """Predictions (and ground truth) far outside everyday depths keep the reference's values on
    every backend: subnormal ones (the C++ logarithm read their exponent field as it was: ln of
    1e-310 m came out 4.2 units off, of 5e-324 m as -inf) and ones beyond 1e18 m (a diverged
    network; Triton's float32 terms squared 1e20 to inf)."""
    pred = torch.tensor([preds], dtype=dtype).reshape(1, 2, 3)
    tiny = 1e-39 if dtype == torch.float32 else 1e-310
    target = torch.tensor([[tiny, 2.0, 7.5, tiny, 3.0, 1e25]], dtype=dtype).reshape(1, 2, 3)
    for aggregate in ("per_image", "pooled"):
        want = combine(depth_metric_sums_reference(pred, target, None, 0.0, math.inf, (0, 2, 0, 3),
                                                   False, True, -math.inf, math.inf, math.nan,
                                                   False, False, False), aggregate)
        got = fastmde.depth_metrics(*as_device(device, pred, target), min_depth=0.0, max_depth=math.inf,
                                    clamp=False, aggregate=aggregate)
        for name, value in want.items():
            if name in ("rmse_log", "log10", "silog"):   # (REL over a 1e-310 m ground truth is inf)
                assert math.isfinite(value.item()), name
            assert got[name].item() == pytest.approx(value.item(), rel=1e-6 if backend == "triton" else 1e-12), name


def test_small_arrays_by_hand(backend, device):
    pred = torch.tensor([[[1.0, 2.0], [4.0, 3.0]]], dtype=torch.float64)
    target = torch.tensor([[[2.0, 2.0], [2.0, 3.0]]], dtype=torch.float64)
    m = fastmde.depth_metrics(*as_device(device, pred, target))
    assert m["rms"].item() == pytest.approx(math.sqrt((1 + 0 + 4 + 0) / 4))
    assert m["rel"].item() == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert m["log10"].item() == pytest.approx((math.log10(2) + 0 + math.log10(2) + 0) / 4)
    # ratios 2, 1, 2, 1: below 1.25 twice, below 1.5625 twice, below 1.953 twice
    assert m["delta1"].item() == pytest.approx(0.5)
    assert m["delta2"].item() == pytest.approx(0.5)
    assert m["delta3"].item() == pytest.approx(0.5)
    # the three of BTS compute_errors: e = ln ŷ - ln y = [-ln 2, 0, ln 2, 0]
    assert m["sq_rel"].item() == pytest.approx((1 / 2 + 0 + 4 / 2 + 0) / 4)
    assert m["rmse_log"].item() == pytest.approx(math.sqrt(2 * math.log(2) ** 2 / 4))
    assert m["silog"].item() == pytest.approx(100 * math.sqrt(2 * math.log(2) ** 2 / 4 - 0.0))


def test_per_image_and_pooled_differ_as_defined(backend, device):
    pred = torch.tensor([[[1.0, 1.0]], [[3.0, 1.0]]], dtype=torch.float64)
    target = torch.ones(2, 1, 2, dtype=torch.float64)
    target[1, 0, 1] = 0.0  # invalid: image 2 has one valid pixel with error 2
    pred, target = as_device(device, pred, target)
    per_image = fastmde.depth_metrics(pred, target, aggregate="per_image")
    pooled = fastmde.depth_metrics(pred, target, aggregate="pooled")
    per_image_mse = fastmde.depth_metrics(pred, target, aggregate={**{k: "per_image" for k in METRIC_NAMES},
                                                                   "rms": "per_image_mse"})
    assert per_image["rms"].item() == pytest.approx((0.0 + 2.0) / 2)
    assert pooled["rms"].item() == pytest.approx(math.sqrt(4.0 / 3))
    assert per_image_mse["rms"].item() == pytest.approx(math.sqrt((0.0 + 4.0) / 2))


def test_images_without_valid_pixels_are_left_out_and_nothing_scored_is_nan(backend, device):
    pred = torch.ones(2, 3, 3, dtype=torch.float64)
    target = torch.ones(2, 3, 3, dtype=torch.float64) * 2
    target[1] = float("nan")
    pred, target = as_device(device, pred, target)
    m = fastmde.depth_metrics(pred, target)
    assert m["rel"].item() == pytest.approx(0.5)
    for aggregate in ("per_image", "pooled"):
        nothing = fastmde.depth_metrics(pred, torch.zeros_like(target), aggregate=aggregate)
        assert set(nothing) == set(METRIC_NAMES)
        assert all(math.isnan(v.item()) for v in nothing.values())


def test_min_max_depth_and_pred_clamp(backend, device):
    pred = torch.tensor([[[0.0, 20.0, 5.0]]], dtype=torch.float64)
    target = torch.tensor([[[1.0, 9.0, 11.0]]], dtype=torch.float64)
    sums = fastmde.depth_metric_sums(*as_device(device, pred, target), max_depth=10.0).cpu()
    assert sums[0, 0].item() == 2  # 11 m is beyond max_depth
    assert sums[0, SUM_INDEX["above_range"]].item() == 1  # ... and counted above the range
    # pred 0 clamps to 1e-3, pred 20 clamps to 10
    assert sums[0, 1].item() == pytest.approx((1 - 1e-3) ** 2 + 1.0)


def test_named_crops_and_scaling():
    assert resolve_crop("eigen", 480, 640) == (45, 471, 41, 601)
    assert resolve_crop("densedepth", 480, 640) == (20, 460, 24, 616)
    assert resolve_crop("eigen", 240, 320) == (22, 236, 20, 300)  # halves, rounded half to even
    assert resolve_crop(None, 5, 7) == (0, 5, 0, 7)
    # KITTI crops are fractions of the frame, truncated (BTS eval_with_pngs.py:199, 203): a
    # 375x1242 frame and its 352x1216 kb crop select different pixels
    assert resolve_crop("garg", 375, 1242) == (153, 371, 44, 1197)
    assert resolve_crop("garg", 352, 1216) == (143, 349, 43, 1172)
    assert resolve_crop("eigen_kitti", 375, 1242) == (124, 342, 44, 1197)
    assert resolve_crop("garg", 370, 1224) == (int(0.40810811 * 370), int(0.99189189 * 370),
                                               int(0.03594771 * 1224), int(0.96405229 * 1224))
    with pytest.raises(ValueError, match="does not fit"):
        resolve_crop((0, 6, 0, 7), 5, 7)
    with pytest.raises(ValueError, match="crop must be one of"):
        resolve_crop("nope", 5, 7)


finite_depth = st.floats(0.05, 20.0, allow_nan=False)


def test_properties(backend, device):
    @settings(max_examples=30 if backend != "triton" else 10, deadline=None)
    @given(
        st.lists(st.tuples(finite_depth, finite_depth), min_size=1, max_size=30),
        st.floats(0.1, 10.0),
        st.sampled_from(["per_image", "pooled"]),
    )
    # one pixel: SILog is 0 in exact arithmetic (Triton gave 0.024 when it summed e² in float32)
    @example(pairs=[(4.0, 1.125)], scale=1.125, aggregate="per_image")
    # a close pair in float64: Triton rounded both to float32 before subtracting (REL off 2e-6)
    @example(pairs=[(1.5, 1.4836440944449447)], scale=3.0, aggregate="per_image")
    def check(pairs, scale, aggregate):
        pred = torch.tensor([p for p, _ in pairs], dtype=torch.float64).reshape(1, 1, -1).to(device)
        target = torch.tensor([t for _, t in pairs], dtype=torch.float64).reshape(1, 1, -1).to(device)
        m = fastmde.depth_metrics(pred, target, aggregate=aggregate)
        assert 0 <= m["delta1"] <= m["delta2"] <= m["delta3"] <= 1
        scaled = fastmde.depth_metrics(pred * scale, target * scale, aggregate=aggregate)
        tol = metric_tol(backend)   # Triton's error terms are float32
        assert scaled["rel"].item() == pytest.approx(m["rel"].item(), rel=tol, abs=tol * 1e-3)
        assert scaled["sq_rel"].item() == pytest.approx(m["sq_rel"].item() * scale, rel=tol, abs=tol * 1e-3)
        # SILog and RMSE-log are scale-invariant and shift-dependent in log space respectively
        assert_silog_close(scaled["silog"].cpu(), m["silog"].cpu(), m["rmse_log"].cpu(), tol, per_pixel_eps(backend))
        assert scaled["rmse_log"].item() == pytest.approx(m["rmse_log"].item(), rel=tol, abs=tol)
        assert scaled["rms"].item() == pytest.approx(m["rms"].item() * scale, rel=tol, abs=tol * 1e-3)
        assert scaled["log10"].item() == pytest.approx(m["log10"].item(), rel=tol, abs=tol)

    check()


def test_combine_rejects_unknown_aggregation():
    with pytest.raises(ValueError, match="aggregate"):
        combine(torch.zeros(1, NUM_SUMS, dtype=torch.float64), "mean")
    with pytest.raises(ValueError, match="per_image_mse"):
        combine(torch.zeros(1, NUM_SUMS, dtype=torch.float64), {**{k: "pooled" for k in METRIC_NAMES},
                                                               "rel": "per_image_mse"})


# ---------------------------------------------------------------- against the reference

crops = st.one_of(
    st.none(),
    st.sampled_from(crop_names()),
    st.tuples(st.floats(0, 0.45), st.floats(0.55, 1.0), st.floats(0, 0.45), st.floats(0.55, 1.0)),
)
rules_strategy = st.builds(
    dict,
    min_inclusive=st.booleans(), max_inclusive=st.booleans(),
    clamp=st.sampled_from([True, False, (0.5, 8.0), (None, 6.0)]),
    nan_prediction=st.sampled_from([None, 1e-3, 2.0]), delta_inclusive=st.booleans(),
    rel_denominator=st.sampled_from(["target", "prediction"]),
    log10_nonfinite=st.sampled_from(["propagate", "zero"]),
)


def crop_bounds(crop, h, w):
    if isinstance(crop, tuple):
        top, bottom = int(crop[0] * h), max(int(crop[0] * h) + 1, int(round(crop[1] * h)))
        left, right = int(crop[2] * w), max(int(crop[2] * w) + 1, int(round(crop[3] * w)))
        return (top, min(bottom, h), left, min(right, w))
    return crop


def test_values_match_reference(backend, device):
    """Sums and both aggregations over crops, masks (including all-invalid), depth ranges,
    non-finite ground truth, NaN / negative / out-of-range predictions, every rule, odd sizes."""

    @settings(max_examples=40 if backend != "triton" else 12, deadline=None, suppress_health_check=FIXTURE_HEALTH)
    @given(
        b=st.integers(1, 4), h=st.integers(3, 67 if backend != "triton" else 19),
        w=st.integers(3, 67 if backend != "triton" else 37), crop=crops,
        mask_kind=st.sampled_from(["none", "random", "all_invalid"]), bad=st.sampled_from([0.0, 0.1]),
        depth_range=st.sampled_from([(1e-3, None), (1e-3, 10.0), (1.0, 6.0), (0.5, math.inf), (0.0, None)]),
        dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16), rules=rules_strategy,
    )
    def check(b, h, w, crop, mask_kind, bad, depth_range, dtype, seed, rules):
        pred, target = depth_pair((b, h, w), seed, dtype=dtype, bad_fraction=bad, lo=0.0, hi=12.0)
        # predictions outside [min_depth, max_depth] exercise the clamp; NaN and negative ones
        # the NaN rule and the logarithms; exact multiples of 1.25 the δ ties
        pred = torch.where(torch.arange(w) % 5 == 0, pred * 3.0, pred)
        pred = torch.where(torch.arange(w) % 7 == 1, target * 1.25, pred)
        pred = torch.where(torch.arange(w) % 11 == 2, torch.full_like(pred, float("nan")), pred)
        pred = torch.where(torch.arange(w) % 13 == 3, -pred, pred)
        mask = random_mask((b, h, w), seed, mask_kind)
        crop = crop_bounds(crop, h, w)
        lo, hi = depth_range
        checked = fastmde.functional.metric_rules(lo, hi, **rules)
        bounds = resolve_crop(crop, h, w)
        want = depth_metric_sums_reference(pred, target, mask, checked.min_depth, checked.max_depth, bounds,
                                           *checked.op_args())
        pred_d, target_d, mask_d = as_device(device, pred, target, mask)
        got = fastmde.depth_metric_sums(pred_d, target_d, mask=mask_d, min_depth=lo, max_depth=hi, crop=crop, **rules)
        assert_sums_close(got, want, backend)
        if mask_kind == "all_invalid":
            assert torch.all(got == 0)
        for aggregate in ("per_image", "pooled"):
            ref = combine(want, aggregate)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = fastmde.depth_metrics(pred_d, target_d, mask=mask_d, min_depth=lo, max_depth=hi, crop=crop,
                                            aggregate=aggregate, **rules)
            close(out, ref, metric_tol(backend) if dtype == torch.float64 or backend != "triton" else 2e-5,
                  per_pixel_eps(backend, dtype))

    check()


@pytest.mark.parametrize("shape", [(2, 9, 13), (3, 37, 45), (1, 1, 1)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("max_depth", [10.0, math.inf])
def test_sums_match_reference(backend, device, shape, masked, max_depth):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(shape, generator=g) * 12.0  # some above max_depth, a few near 0
    pred = target + 0.5 * torch.randn(shape, generator=g)  # some negative: clamped to min_depth
    flat = target.view(-1)
    flat[::13] = float("nan")
    flat[5::17] = float("inf")
    flat[7::19] = 0.0
    mask = torch.rand(shape, generator=g) > 0.2
    B, H, W = shape
    for crop in ([0, H, 0, W], [H // 3, H, W // 4, max(W - W // 5, W // 4 + 1)]):
        m = mask if masked else None
        rules = MetricRules(max_depth=max_depth, pred_max=max_depth).op_args()
        got = depth_metric_sums_op(*as_device(device, pred, target, m), 1e-3, max_depth, crop, *rules)
        ref = depth_metric_sums_reference(pred, target, m, 1e-3, max_depth, tuple(crop))
        assert got.shape == (B, NUM_SUMS)
        assert_sums_close(got, ref, backend)


def test_half_inputs(backend, device, dtype):
    pred, target = depth_pair((3, 21, 34), 8, dtype=dtype, bad_fraction=0.05)
    mask = random_mask((3, 21, 34), 8, "random")
    bounds = resolve_crop("eigen", 21, 34)
    # all read the same half values; the reference and C++ compute in float64
    want = depth_metric_sums_reference(pred, target, mask, 1e-3, 10.0, bounds)
    got = depth_metric_sums_op(*as_device(device, pred, target, mask), 1e-3, 10.0, list(bounds),
                               *MetricRules(max_depth=10.0, pred_max=10.0).op_args())
    assert_sums_close(got, want, backend)
    none = depth_metric_sums_op(*as_device(device, pred, target, torch.zeros_like(mask)), 1e-3, 10.0, list(bounds),
                                *MetricRules(max_depth=10.0, pred_max=10.0).op_args())
    assert torch.equal(none.cpu(), torch.zeros(3, NUM_SUMS, dtype=torch.float64))


def test_non_contiguous_and_four_dim_inputs(backend, device):
    pred, target = depth_pair((2, 30, 41), 12, bad_fraction=0.05)
    want = depth_metric_sums_reference(pred, target, None, 1e-3, 10.0, resolve_crop("densedepth", 30, 41))
    p_nc = pred.transpose(1, 2).contiguous().transpose(1, 2)[:, None].to(device)
    t_nc = target.transpose(1, 2).contiguous().transpose(1, 2)[:, None].to(device)
    assert not p_nc.is_contiguous()
    got = fastmde.depth_metric_sums(p_nc, t_nc, max_depth=10.0, crop="densedepth")
    assert_sums_close(got, want, backend)


def test_independent_of_thread_count(backend, device):
    pred, target = as_device(device, *depth_pair((4, 97, 70) if backend != "triton" else (2, 21, 40), 13,
                                                  bad_fraction=0.02))
    shape = pred.shape
    args = (1e-3, 10.0, [0, shape[1], 0, shape[2]], *MetricRules(max_depth=10.0, pred_max=10.0).op_args())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = depth_metric_sums_op(pred, target, None, *args)
        torch.set_num_threads(max(2, threads))
        many = depth_metric_sums_op(pred, target, None, *args)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


# ---------------------------------------------------------------- empty evaluations


def millimetre_maps(device):
    """Ground truth stored in millimetres (500-4500), scored as metres with max_depth=10."""
    g = torch.Generator().manual_seed(5)
    target = 500.0 + 4000.0 * torch.rand(2, 1, 12, 16, generator=g)
    pred = target / 1000.0  # a model that predicts metres
    return pred.to(device), target.to(device)


def test_millimetres_scored_as_metres_give_nan_and_a_warning(backend, device):
    pred, target = millimetre_maps(device)
    for aggregate in ("per_image", "pooled"):
        with pytest.warns(UserWarning, match=r"above max_depth=10 m.*millimetres"):
            m = fastmde.depth_metrics(pred, target, max_depth=10.0, aggregate=aggregate)
        assert all(math.isnan(v.item()) for v in m.values()), m
        acc = fastmde.nn.DepthMetrics(max_depth=10.0, aggregate=aggregate)
        acc.update(pred, target)
        with pytest.warns(UserWarning, match="millimetres"):
            values = acc.compute()
        assert values["count"].item() == 0
        assert all(math.isnan(values[k].item()) for k in METRIC_NAMES)
    # the same maps in metres: scored, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = fastmde.depth_metrics(pred, target / 1000.0, max_depth=10.0)
    assert m["rms"].item() == pytest.approx(0.0, abs=1e-6) and m["delta1"].item() == 1.0


def test_warning_names_the_low_side_and_needs_a_majority(backend, device):
    target = torch.full((1, 4, 4), 0.5, dtype=torch.float64)
    target[0, 0] = 0.0  # missing depth: neither scored nor evidence of a units mistake
    pred, target = as_device(device, target.clone(), target)
    with pytest.warns(UserWarning, match="below min_depth=1 m"):
        m = fastmde.depth_metrics(pred, target, min_depth=1.0)
    assert math.isnan(m["rms"].item())
    target[0, 1:3] = 2.0  # 8 in range, 4 below: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = fastmde.depth_metrics(target.clone(), target, min_depth=1.0)
    assert m["rms"].item() == 0.0


def test_trainer_never_takes_nan_as_best():
    from fastmde.engine.train import metric_improved

    assert not metric_improved(float("nan"), None, "rms")
    assert not metric_improved(float("nan"), 0.5, "rms")
    assert not metric_improved(float("nan"), 0.5, "delta1")
    assert metric_improved(0.7, float("nan"), "rms")
    assert metric_improved(0.4, 0.5, "rms") and not metric_improved(0.6, 0.5, "rms")


class _DepthScaled(torch.utils.data.Dataset):
    """A dataset whose depth maps are multiplied by ``factor`` (1000: millimetres; 0: all missing)."""

    def __init__(self, base, factor):
        self.base, self.factor = base, factor

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = dict(self.base[i])
        item["depth"] = item["depth"] * self.factor
        return item


def test_trainer_validation_with_nothing_scored_never_becomes_best(tmp_path_factory, tmp_path, monkeypatch):
    """Every validation depth missing (0): the validation metrics are NaN with count 0, the
    history records them, and no epoch becomes best (no best.pt)."""
    import os

    from engine_helpers import synthetic_cache, tiny_config

    import fastmde.engine.datasets as datasets
    from fastmde.engine import train

    cache = synthetic_cache(tmp_path_factory)
    build = datasets.build_datasets

    def without_validation_depth(cfg, **options):
        train_set, val_set, test_set = build(cfg, **options)
        return train_set, _DepthScaled(val_set, 0.0), test_set

    monkeypatch.setattr(datasets, "build_datasets", without_validation_depth)
    out = str(tmp_path / "run")
    summary = train(tiny_config(cache, out, epochs=2, max_steps=2))
    records = summary["history"]
    assert records and all(r["val"]["count"] == 0 and math.isnan(r["val"]["delta1"]) for r in records)
    assert summary["best"] is None and not os.path.exists(os.path.join(out, "best.pt"))


def test_eval_cli_fails_when_nothing_is_scored(tmp_path_factory, tmp_path, monkeypatch, capsys):
    from engine_helpers import synthetic_cache, tiny_config

    import fastmde.engine.datasets as datasets
    from fastmde.cli import main
    from fastmde.engine import train

    cache = synthetic_cache(tmp_path_factory)
    out = str(tmp_path / "run")
    train(tiny_config(cache, out, epochs=1, max_steps=1))
    open_split = datasets.open_split
    monkeypatch.setattr(datasets, "open_split", lambda *a, **k: _DepthScaled(open_split(*a, **k), 1000.0))
    json_path = tmp_path / "eval.json"
    with pytest.warns(UserWarning, match="millimetres"):
        code = main(["eval", "--checkpoint", out, "--protocol", "bts", "--device", "cpu", "--out", str(json_path)])
    assert code == 1 and not json_path.exists()
    assert "nothing was scored" in capsys.readouterr().err


# ---------------------------------------------------------------- protocols


def test_hu_protocol_instance(backend, device):
    """Two 8x8 images at 2 m, errors +1 m and +3 m. Hu et al.'s test.py averages per-image MSE
    (util.addErrors/averageErrors) and takes the square root at the end: sqrt((1 + 9) / 2)."""
    target = torch.full((2, 1, 8, 8), 2.0)
    pred = target.clone()
    pred[0] += 1.0
    pred[1] += 3.0
    pred, target = as_device(device, pred, target)
    hu = fastmde.depth_metrics(pred, target, **PROTOCOLS["hu"].metric_options())
    assert hu["rms"].item() == pytest.approx(math.sqrt(5.0), rel=1e-6)   # 2.236, not 2.000
    assert fastmde.depth_metrics(pred, target, **PROTOCOLS["paper"].metric_options())["rms"].item() == \
        pytest.approx(2.0, rel=1e-6)
    # exactly 1.25 x the ground truth (2.5 / 2 = 1.25 exactly in binary): Hu's torch.le counts it
    ties = fastmde.depth_metrics(target * 1.25, target, **PROTOCOLS["hu"].metric_options())
    assert ties["delta1"].item() == 1.0
    for name in ("paper", "bts", "densedepth"):  # `<` everywhere else
        assert fastmde.depth_metrics(target * 1.25, target, **PROTOCOLS[name].metric_options())["delta1"].item() == 0.0


def test_hu_protocol_by_hand(backend, device):
    """Hu et al. util.evaluateError per image, averaged by test.py (batch size 1):
    image 1: y = 2, ŷ = 3 everywhere; image 2: y = 2, ŷ = 5; one pixel of image 2 has y = 0,
    ŷ = 5 (counted: only NaN ground truth is dropped, util.setNanToZero) and one NaN ground truth.
    image 1: MSE 1, REL 0.5, LG10 log10 1.5, ratio 1.5: δ1 0, δ2 1 (1.5 <= 1.5625), δ3 1.
    image 2 (n = 15 of 16 pixels): MSE (14 * 9 + 25) / 15, REL inf (5 / 0), ratio inf at y = 0."""
    target = torch.full((2, 1, 4, 4), 2.0, dtype=torch.float64)
    pred = torch.full_like(target, 3.0)
    pred[1] = 5.0
    target[1, 0, 0, 0] = 0.0
    target[1, 0, 3, 3] = float("nan")
    m = fastmde.depth_metrics(*as_device(device, pred, target), **PROTOCOLS["hu"].metric_options())
    mse2 = (14 * 9 + 25) / 15
    assert m["rms"].item() == pytest.approx(math.sqrt((1 + mse2) / 2), rel=1e-6)
    assert m["rel"].item() == math.inf
    assert m["log10"].item() == math.inf       # |log10 5 - log10 0|
    assert m["delta1"].item() == pytest.approx((0 + 0) / 2)   # ratio 2.5 in image 2
    assert m["delta2"].item() == pytest.approx((1 + 0) / 2)
    assert m["delta3"].item() == pytest.approx((1 + 0) / 2)
    # a NaN prediction stays NaN (util.evaluateError has no guard)
    pred[0, 0, 1, 1] = float("nan")
    m = fastmde.depth_metrics(*as_device(device, pred, target), **PROTOCOLS["hu"].metric_options())
    assert math.isnan(m["rms"].item()) and math.isnan(m["rel"].item())
    assert m["delta1"].item() == 0.0   # NaN <= 1.25 is false (torch.le)


def test_paper_protocol_by_hand(backend, device):
    """The paper's test.py (batch size 1): image 1 y = [2, 11, 4, 1], ŷ = [2, 12, -1, 10];
    image 2 y = [1, 1, 1, 1], ŷ = [1, 1, 1, 3]. No range (11 m counts), no clamp (-1 stays),
    removeNans sets log10(-1) = NaN to 0, and max(-1/4, 4/-1) = -0.25 < 1.25 counts as a hit.
    image 1: MSE (0 + 1 + 25 + 81) / 4, REL (0 + 1/11 + 5/4 + 9) / 4,
             LG10 (0 + log10(12/11) + |0 - log10 4| + 1) / 4, δ1 = δ2 = δ3 = 3/4 (ratio 10 misses)
    image 2: MSE 4/4, REL (2/1) / 4, LG10 log10(3) / 4, δ = 3/4; then the mean of the two images,
    RMS as the mean of the per-image RMSE."""
    pred = torch.tensor([[[2.0, 12.0, -1.0, 10.0]], [[1.0, 1.0, 1.0, 3.0]]], dtype=torch.float64)
    target = torch.tensor([[[2.0, 11.0, 4.0, 1.0]], [[1.0, 1.0, 1.0, 1.0]]], dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"12.5% of the scored predictions are <= 0"):  # the -1 of 8 pixels
        m = fastmde.depth_metrics(*as_device(device, pred, target), **PROTOCOLS["paper"].metric_options())
    tol = dict(rel=1e-6)
    assert m["rms"].item() == pytest.approx((math.sqrt(107 / 4) + 1.0) / 2, **tol)
    assert m["rel"].item() == pytest.approx(((1 / 11 + 5 / 4 + 9) / 4 + 0.5) / 2, **tol)
    assert m["log10"].item() == pytest.approx(((math.log10(12 / 11) + math.log10(4) + 1) / 4
                                               + math.log10(3) / 4) / 2, **tol)
    for k in ("delta1", "delta2", "delta3"):
        assert m[k].item() == pytest.approx(0.75)


def test_bts_protocol_by_hand(backend, device):
    """BTS eval_with_pngs.py on one 48x64 image (Eigen crop scaled: rows 4:47, cols 4:60, 43 x 56
    = 2408 pixels): y = 2, ŷ = 2 except: rows 0-3 ŷ = 100 (outside the crop: not scored);
    A: y = 10 (dropped: gt < max_depth_eval), B: y = 5, ŷ = 20 -> clamped to 10, C: y = 4, ŷ = NaN
    -> min_depth_eval 1e-3 (bts_eval.py), D: y = 2, ŷ = 2.5 (1.25 x: `<` misses δ1).
    n = 2407; Σ(ŷ-y)² = 25 + 3.999² + 0.25; ΣREL = 1 + 3.999/4 + 0.25;
    Σlog10 = log10 2 + log10(4000) + log10 1.25; δ1 misses B, C, D; δ2, δ3 miss B (2 > 1.953), C."""
    target = torch.full((1, 48, 64), 2.0, dtype=torch.float64)
    pred = target.clone()
    pred[0, :4] = 100.0
    target[0, 10, 10] = 10.0
    target[0, 11, 11], pred[0, 11, 11] = 5.0, 20.0
    target[0, 12, 12], pred[0, 12, 12] = 4.0, float("nan")
    pred[0, 13, 13] = 2.5
    assert resolve_crop("eigen", 48, 64) == (4, 47, 4, 60)
    m = fastmde.depth_metrics(*as_device(device, pred, target), **PROTOCOLS["bts"].metric_options())
    n = 43 * 56 - 1
    tol = dict(rel=1e-6)
    assert m["rms"].item() == pytest.approx(math.sqrt((25 + 3.999**2 + 0.25) / n), **tol)
    assert m["rel"].item() == pytest.approx((1 + 3.999 / 4 + 0.25) / n, **tol)
    assert m["log10"].item() == pytest.approx((math.log10(2) + math.log10(4000) + math.log10(1.25)) / n, **tol)
    assert m["delta1"].item() == pytest.approx((n - 3) / n, **tol)
    assert m["delta2"].item() == pytest.approx((n - 2) / n, **tol)
    assert m["delta3"].item() == pytest.approx((n - 2) / n, **tol)
    # compute_errors' other three (eval_with_pngs.py:59-66): e = ln 2, ln(1e-3 / 4), ln 1.25
    e = [math.log(2), math.log(1e-3 / 4), math.log(1.25)]
    assert m["sq_rel"].item() == pytest.approx((25 / 5 + 3.999**2 / 4 + 0.25 / 2) / n, **tol)
    assert m["rmse_log"].item() == pytest.approx(math.sqrt(sum(v * v for v in e) / n), **tol)
    assert m["silog"].item() == pytest.approx(100 * math.sqrt(sum(v * v for v in e) / n - (sum(e) / n) ** 2), **tol)


def test_densedepth_protocol_by_hand(backend, device):
    """DenseDepth utils.evaluate: every pixel of the set pooled, no ground-truth test (15 m counts),
    ŷ clipped to [0.1, 10], and compute_errors(predictions, testSetDepths) against its signature
    (gt, pred): REL divides by the prediction. Image 1: y = [2, 15], ŷ = [4, 12 -> 10];
    image 2: y = [1, 1], ŷ = [0.05 -> 0.1, 1], second pixel masked out (the engine's mask).
    Pixels (2, 4), (15, 10), (1, 0.1): Σ(ŷ-y)² = 4 + 25 + 0.81, ΣREL = 2/4 + 5/10 + 0.9/0.1,
    Σlog10 = log10 2 + log10 1.5 + 1, ratios 2, 1.5, 10: δ1 0, δ2 = δ3 = 1/3."""
    pred = torch.tensor([[[4.0, 12.0]], [[0.05, 1.0]]], dtype=torch.float64)
    target = torch.tensor([[[2.0, 15.0]], [[1.0, 1.0]]], dtype=torch.float64)
    mask = torch.tensor([[[True, True]], [[True, False]]])
    m = fastmde.depth_metrics(*as_device(device, pred, target), mask=mask.to(device),
                              **PROTOCOLS["densedepth"].metric_options())
    tol = dict(rel=1e-6)
    assert m["rms"].item() == pytest.approx(math.sqrt((4 + 25 + 0.81) / 3), **tol)
    assert m["rel"].item() == pytest.approx((0.5 + 0.5 + 9) / 3, **tol)
    assert m["log10"].item() == pytest.approx((math.log10(2) + math.log10(1.5) + 1) / 3, **tol)
    assert m["delta1"].item() == 0.0
    assert m["delta2"].item() == pytest.approx(1 / 3) and m["delta3"].item() == pytest.approx(1 / 3)


# The protocols as they were defined before each rule became a field (aggregate, crop, range
# (min, max], clamp to that range, `<`), and the formula they used, kept to show that inputs
# without ties or out-of-range values give the values they gave then.
PROTOCOLS_BEFORE = {
    "fastmde": ("per_image", None, 1e-3, 10.0),  # the rules "paper" had then, kept under this name
    "paper": ("per_image", None, 1e-3, 10.0),
    "hu": ("per_image", None, 1e-3, None),
    "bts": ("per_image", "eigen", 1e-3, 10.0),
    "densedepth": ("pooled", "densedepth", 0.1, 10.0),
}
CHANGED_BY_DESIGN = {"hu": {"rms"}, "densedepth": {"rel"}}  # Hu's sqrt(mean MSE); DenseDepth's REL / ŷ


def metrics_before(pred, target, mask, min_depth, max_depth, crop, aggregate):
    d, y = pred.double(), target.double()
    top, bottom, left, right = resolve_crop(crop, y.shape[-2], y.shape[-1])
    hi = math.inf if max_depth is None else max_depth
    valid = torch.isfinite(y) & (y > min_depth) & (y <= hi) & (mask if mask is not None else True)
    inside = torch.zeros_like(valid)
    inside[:, top:bottom, left:right] = True
    valid &= inside
    d = d.clamp(min_depth, hi)
    y = torch.where(valid, y, torch.ones_like(y))
    ratio = torch.maximum(d / y, y / d)
    per_pixel = [(d - y) ** 2, (d - y).abs() / y, (d.log10() - y.log10()).abs(),
                 *((ratio < 1.25 ** k).double() for k in (1, 2, 3))]
    m = valid.double()
    sums = torch.stack([(v * m).sum(dim=(1, 2)) for v in per_pixel], dim=1)
    n = m.sum(dim=(1, 2))
    if aggregate == "pooled":
        values = sums.sum(0) / n.sum()
        values[0] = values[0].sqrt()
    else:
        has = n > 0
        per = sums[has] / n[has, None]
        per[:, 0] = per[:, 0].sqrt()
        values = per.mean(0)
    return dict(zip(METRIC_NAMES, values))


@pytest.mark.parametrize("name", sorted(PROTOCOLS_BEFORE))
def test_protocols_without_ties_give_the_values_of_before(backend, device, name):
    g = torch.Generator().manual_seed(11)
    target = 0.5 + 9.0 * torch.rand(3, 48, 64, generator=g, dtype=torch.float64)   # inside every range
    pred = (target * torch.exp(0.3 * torch.randn(3, 48, 64, generator=g, dtype=torch.float64))).clamp(0.2, 9.9)
    mask = torch.rand(3, 48, 64, generator=g) > 0.1
    aggregate, crop, lo, hi = PROTOCOLS_BEFORE[name]
    want = metrics_before(pred, target, mask, lo, hi, crop, aggregate)
    pred_d, target_d, mask_d = as_device(device, pred, target, mask)
    got = fastmde.depth_metrics(pred_d, target_d, mask=mask_d, **PROTOCOLS[name].metric_options())
    for metric in PAPER_METRIC_NAMES:
        if metric in CHANGED_BY_DESIGN.get(name, ()):
            assert abs(got[metric].item() - want[metric].item()) > 1e-5   # the rule changed it
        else:
            assert got[metric].item() == pytest.approx(want[metric].item(), rel=1e-6, abs=1e-6), metric


def test_default_convention_gives_the_values_of_before(backend, device):
    """Without a protocol nothing changed: messy input (NaN/inf ground truth, out-of-range
    predictions, masks, crops) gives the values of before wherever something is scored."""
    pred, target = depth_pair((3, 20, 27), 21, bad_fraction=0.1, lo=0.0, hi=12.0)
    pred = torch.where(torch.arange(27) % 5 == 0, pred * 3.0, pred)
    mask = random_mask((3, 20, 27), 21, "random")
    pred_d, target_d, mask_d = as_device(device, pred, target, mask)
    for aggregate in ("per_image", "pooled"):
        for crop, hi in ((None, None), ("eigen", 10.0), ((2, 18, 3, 25), 6.0)):
            want = metrics_before(pred, target, mask, 1e-3, hi, crop, aggregate)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # half the ground truth lies above 6 m
                got = fastmde.depth_metrics(pred_d, target_d, mask=mask_d, max_depth=hi, crop=crop,
                                            aggregate=aggregate)
            for metric in PAPER_METRIC_NAMES:
                assert got[metric].item() == pytest.approx(want[metric].item(), rel=1e-6, abs=1e-6), metric


def test_protocol_fields_are_explicit():
    for p in PROTOCOLS.values():
        assert set(p.aggregate) == set(METRIC_NAMES)
        assert p.source and p.rel_denominator in ("target", "prediction")
        fastmde.functional.metric_rules(p.min_depth, p.max_depth, **{
            k: v for k, v in p.metric_options().items() if k not in ("min_depth", "max_depth", "crop", "aggregate")})
    assert PROTOCOLS["hu"].aggregate["rms"] == "per_image_mse" and PROTOCOLS["hu"].delta_inclusive
    assert PROTOCOLS["bts"].nan_prediction == 1e-3 and not PROTOCOLS["bts"].max_inclusive
    assert PROTOCOLS["densedepth"].rel_denominator == "prediction"
    assert PROTOCOLS["paper"].log10_nonfinite == "zero" and PROTOCOLS["paper"].clamp is None
    for name in ("kitti_garg", "kitti_eigen", "kitti_garg_kb"):
        p = PROTOCOLS[name]
        assert (p.min_depth, p.max_depth, p.min_inclusive, p.max_inclusive) == (1e-3, 80.0, False, False)
        assert p.clamp == (1e-3, 80.0) and p.nan_prediction == 1e-3 and set(p.aggregate.values()) == {"per_image"}
    assert PROTOCOLS["kitti_garg"].crop == PROTOCOLS["kitti_garg_kb"].crop == "garg"
    assert PROTOCOLS["kitti_eigen"].crop == "eigen_kitti"
    assert [PROTOCOLS[n].frame for n in ("kitti_garg", "kitti_eigen", "kitti_garg_kb", "bts")] == [
        "kitti_full", "kitti_full", "kitti_kb", "any"]


def test_trainer_protocol_does_not_count_negative_predictions_as_hits(backend, device):
    """The paper authors' code scores max(ŷ/y, y/ŷ) < 1.25 unclamped, so ŷ = -1 m everywhere is a
    δ1 hit there; the protocol the trainer validates with clamps ŷ to 1e-3 m first (ratio 2000)."""
    from fastmde.engine.train import VALIDATION_PROTOCOL

    target = torch.full((2, 8, 8), 2.0, dtype=torch.float64)
    pred = torch.full_like(target, -1.0)
    pred_d, target_d = as_device(device, pred, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paper = fastmde.depth_metrics(pred_d, target_d, **PROTOCOLS["paper"].metric_options())
    ours = fastmde.depth_metrics(pred_d, target_d, **PROTOCOLS[VALIDATION_PROTOCOL].metric_options())
    assert VALIDATION_PROTOCOL == "fastmde"
    assert paper["delta1"].item() == 1.0                # the source's rule, reproduced
    assert ours["delta1"].item() == 0.0 and ours["delta3"].item() == 0.0
    assert ours["rms"].item() == pytest.approx(2.0 - 1e-3, rel=1e-7)   # |1e-3 - 2| (1e-3 in float32 on Triton)


# ---------------------------------------------------------------- BTS's evaluation, rendered plainly


def compute_errors(gt, pred):
    """BTS utils/eval_with_pngs.py@118a9da compute_errors (lines 50-71), in torch float64."""
    thresh = torch.maximum(gt / pred, pred / gt)
    d1 = (thresh < 1.25).double().mean()
    d2 = (thresh < 1.25**2).double().mean()
    d3 = (thresh < 1.25**3).double().mean()
    rmse = ((gt - pred) ** 2).mean().sqrt()
    rmse_log = ((gt.log() - pred.log()) ** 2).mean().sqrt()
    abs_rel = ((gt - pred).abs() / gt).mean()
    sq_rel = (((gt - pred) ** 2) / gt).mean()
    err = pred.log() - gt.log()
    silog = ((err**2).mean() - err.mean() ** 2).sqrt() * 100
    log10 = (pred.log10() - gt.log10()).abs().mean()
    return dict(silog=silog, log10=log10, rel=abs_rel, sq_rel=sq_rel, rms=rmse, rmse_log=rmse_log,
                delta1=d1, delta2=d2, delta3=d3)


def bts_eval(pred_depths, gt_depths, min_depth_eval, max_depth_eval, crop):
    """BTS's evaluation loop, image by image (eval_with_pngs.py eval(), lines 172-215, with the NaN
    rule of pytorch/bts_eval.py:273 and bts_main.py online_eval 275-300): clamp, ground-truth range,
    crop mask from the map's own size, compute_errors, then the mean over images."""
    per_image = []
    for pred_depth, gt_depth in zip(pred_depths.double().clone(), gt_depths.double().clone()):
        pred_depth[pred_depth < min_depth_eval] = min_depth_eval
        pred_depth[pred_depth > max_depth_eval] = max_depth_eval
        pred_depth[torch.isinf(pred_depth)] = max_depth_eval
        pred_depth[torch.isnan(pred_depth)] = min_depth_eval
        gt_depth[torch.isinf(gt_depth)] = 0
        gt_depth[torch.isnan(gt_depth)] = 0
        valid_mask = (gt_depth > min_depth_eval) & (gt_depth < max_depth_eval)
        gt_height, gt_width = gt_depth.shape
        eval_mask = torch.zeros_like(valid_mask)
        if crop == "garg":
            eval_mask[int(0.40810811 * gt_height):int(0.99189189 * gt_height),
                      int(0.03594771 * gt_width):int(0.96405229 * gt_width)] = 1
        elif crop == "eigen_kitti":
            eval_mask[int(0.3324324 * gt_height):int(0.91351351 * gt_height),
                      int(0.0359477 * gt_width):int(0.96405229 * gt_width)] = 1
        else:   # NYU (eval_with_pngs.py:205), bounds given for the map size
            top, bottom, left, right = crop
            eval_mask[top:bottom, left:right] = 1
        valid_mask &= eval_mask
        per_image.append(compute_errors(gt_depth[valid_mask], pred_depth[valid_mask]))
    return {k: torch.stack([m[k] for m in per_image]).mean() for k in per_image[0]}


def sparse_frames(shape, seed, max_depth):
    """LiDAR-like ground truth (about 25% of the pixels, 0 elsewhere; some beyond ``max_depth``, a
    few NaN/inf) and predictions with NaN, inf, negative, zero and out-of-range values."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(shape, generator=g, dtype=torch.float64) * 1.1 * max_depth
    gt = torch.where(torch.rand(shape, generator=g) < 0.25, gt, torch.zeros_like(gt)).float()
    pred = (gt.double() * torch.exp(0.3 * torch.randn(shape, generator=g, dtype=torch.float64))
            + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)).float()
    flat_gt, flat_pred = gt.view(-1), pred.view(-1)
    flat_gt[7::211] = float("nan")
    flat_gt[9::223] = float("inf")
    for k, value in enumerate((float("nan"), float("inf"), -1.0, 0.0, 2.0 * max_depth)):
        flat_pred[3 + k::97] = value
    return pred, gt


KITTI_FULL, KITTI_KB = (375, 1242), (352, 1216)


@pytest.mark.parametrize("name", ["bts", "kitti_garg", "kitti_eigen", "kitti_garg_kb"])
def test_protocols_equal_bts_evaluation_code_per_image(backend, device, name):
    """Each BTS-family protocol gives the nine numbers of a plain rendition of BTS's evaluation
    code (``bts_eval`` above) on the same maps: NYU's Eigen crop on 480x640; KITTI's Garg or Eigen
    crop on whole 375x1242 frames (eval_with_pngs.py); the Garg crop on the kb-cropped 352x1216
    array (BTS's online evaluation, its loader having kb-cropped the ground truth). Under the
    Triton interpreter the frames are small (the crops are fractions, or scaled for NYU)."""
    protocol = PROTOCOLS[name]
    small = backend == "triton"
    size = {"bts": (48, 64) if small else (480, 640), "kitti_garg_kb": (22, 76) if small else KITTI_KB}.get(
        name, (25, 83) if small else KITTI_FULL)
    pred, gt = sparse_frames((2, *size), 3, protocol.max_depth)
    crop = resolve_crop("eigen", *size) if name == "bts" else protocol.crop
    if not small and name == "bts":
        assert crop == (45, 471, 41, 601)   # the source's own bounds
    want = bts_eval(pred, gt, protocol.min_depth, protocol.max_depth, crop)
    pred_d, gt_d = as_device(device, pred, gt)
    got = fastmde.depth_metrics(pred_d, gt_d, mask=gt_d > 0, **protocol.metric_options())
    assert set(got) == set(want) == set(METRIC_NAMES)
    tol = 2e-5 if backend == "triton" else 1e-9
    for k in METRIC_NAMES:
        assert got[k].item() == pytest.approx(want[k].item(), rel=tol, abs=tol), k


def test_kitti_full_frame_and_kb_crop_give_different_numbers():
    """The same KITTI frames scored the two ways BTS does (NeWCRFs#7): the Garg crop on whole
    frames (eval_with_pngs.py --do_kb_crop pastes the kb-cropped prediction into the frame) and on
    the kb-cropped array (online evaluation). Each protocol equals its rendition; they differ."""
    pred, gt = sparse_frames((2, *KITTI_FULL), 4, 80.0)
    top, left = KITTI_FULL[0] - 352, (KITTI_FULL[1] - 1216) // 2   # bts_dataloader.py:171-172
    kb = (slice(None), slice(top, top + 352), slice(left, left + 1216))
    pasted = torch.zeros_like(pred)          # eval_with_pngs.py:190-192
    pasted[kb] = pred[kb]
    full = fastmde.depth_metrics(pasted, gt, mask=gt > 0, **PROTOCOLS["kitti_garg"].metric_options())
    on_kb = fastmde.depth_metrics(pred[kb], gt[kb], mask=gt[kb] > 0, **PROTOCOLS["kitti_garg_kb"].metric_options())
    want_full = bts_eval(pasted, gt, 1e-3, 80.0, "garg")
    want_kb = bts_eval(pred[kb], gt[kb], 1e-3, 80.0, "garg")
    for k in METRIC_NAMES:
        assert full[k].item() == pytest.approx(want_full[k].item(), rel=1e-9, abs=1e-12), k
        assert on_kb[k].item() == pytest.approx(want_kb[k].item(), rel=1e-9, abs=1e-12), k
    assert abs(full["rms"].item() - on_kb["rms"].item()) > 1e-3


def test_frame_warning_names_a_kitti_frame_mismatch():
    assert "kitti_garg_kb" in PROTOCOLS["kitti_garg"].frame_warning(*KITTI_KB)
    assert "kitti_garg_kb" in PROTOCOLS["kitti_eigen"].frame_warning(*KITTI_KB)
    assert PROTOCOLS["kitti_garg"].frame_warning(*KITTI_FULL) is None
    assert PROTOCOLS["kitti_garg"].frame_warning(370, 1224) is None
    assert "kitti_garg" in PROTOCOLS["kitti_garg_kb"].frame_warning(*KITTI_FULL)
    assert PROTOCOLS["kitti_garg_kb"].frame_warning(*KITTI_KB) is None
    assert all(PROTOCOLS[n].frame_warning(*KITTI_KB) is None for n in ("fastmde", "paper", "bts"))


# ---------------------------------------------------------------- input conventions


@pytest.mark.parametrize("pred_dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_ground_truth_keeps_its_precision_beside_a_half_prediction(backend, device, pred_dtype):
    """Issue 22 (pytorch-lightning#4840): a half-precision prediction must not round the float32
    ground truth. 2048 pixels at 2 m, 72 predicted 3 m (δ1 misses), and four at 10.01-10.04 m,
    beyond max_depth = 10 under the fastmde protocol. Rounded to bfloat16 three of them became
    10.0 m and were scored (2047 valid, δ1 1973/2047 = 0.9638); right: 2044 valid, δ1
    1972/2044 = 0.9648, on every backend and through DepthMetrics."""
    target = torch.full((1, 1, 32, 64), 2.0)
    pred = target.clone()
    pred.view(-1)[:72] = 3.0
    target.view(-1)[-4:] = torch.tensor([10.01, 10.02, 10.03, 10.04])
    pred.view(-1)[-4:] = torch.tensor([10.0, 2.0, 2.0, 2.0])   # the first would be a δ1 hit
    pred, target = as_device(device, pred.to(pred_dtype), target)
    options = PROTOCOLS["fastmde"].metric_options()
    sums = fastmde.depth_metric_sums(pred, target, **{k: v for k, v in options.items() if k != "aggregate"})
    assert sums[0, SUM_INDEX["n"]].item() == 2044
    assert sums[0, SUM_INDEX["above_range"]].item() == 4
    m = fastmde.depth_metrics(pred, target, **options)
    assert m["delta1"].item() == pytest.approx(1972 / 2044, abs=1e-12)
    assert round(m["delta1"].item(), 4) == 0.9648
    acc = PROTOCOLS["fastmde"].metrics().to(device)
    acc.update(pred, target)
    assert acc.compute()["delta1"].item() == pytest.approx(1972 / 2044, abs=1e-12)
    # the op itself, given the two dtypes, reads each as it is
    rules = MetricRules(max_depth=10.0, pred_max=10.0).op_args()
    op_sums = depth_metric_sums_op(pred[:, 0], target[:, 0], None, 1e-3, 10.0, [0, 32, 0, 64], *rules)
    assert op_sums[0, SUM_INDEX["n"]].item() == 2044


# ---------------------------------------------------------------- predictions <= 0 counted as hits


def negative_maps(device):
    """2 x 4 x 8 maps at 2 m; three quarters of the predictions are -1 m."""
    target = torch.full((2, 1, 4, 8), 2.0)
    pred = target.clone()
    pred[:, :, :3] = -1.0
    return as_device(device, pred, target)


def test_protocols_counting_nonpositive_predictions_as_hits_warn_with_their_share(backend, device):
    """Issue 23: the paper authors' code (and Hu et al.'s) count max(ŷ/y, y/ŷ) < 1.25 for ŷ < 0,
    so an untrained network's negative output looks accurate. The faithful protocols keep the
    rule and warn with the share, attributed to the caller's line; the clamping ones do not."""
    pred, target = negative_maps(device)
    for name in ("paper", "hu"):
        acc = PROTOCOLS[name].metrics().to(device)
        acc.update(pred, target)
        with pytest.warns(UserWarning, match=rf"75% of the scored predictions are <= 0 and count as δ hits "
                                             rf"under protocol '{name}'") as caught:
            values = acc.compute()
        assert values["delta1"].item() == 1.0                 # the source's rule, reproduced
        assert [w.filename for w in caught if "δ hits" in str(w.message)] == [__file__]
        with pytest.warns(UserWarning, match=r"75% .* under these metric rules") as caught:
            fastmde.depth_metrics(pred, target, **PROTOCOLS[name].metric_options())
        assert [w.filename for w in caught if "δ hits" in str(w.message)] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in sorted(set(PROTOCOLS) - {"paper", "hu"}):
            acc = PROTOCOLS[name].metrics().to(device)
            acc.update(pred, target)
            assert acc.compute()["delta1"].item() <= 0.25, name   # only the exact row (2 m) hits
    # ŷ = +0 is a miss (y/ŷ = inf) and not counted; ŷ = -0.0 is a hit (max(-0, -inf) = -0)
    sums = fastmde.depth_metric_sums(torch.tensor([[[0.0, -0.0, 2.0]]], device=device),
                                     torch.full((1, 1, 3), 2.0, device=device), clamp=False)
    assert sums[0, SUM_INDEX["nonpositive_hits"]].item() == 1 and sums[0, SUM_INDEX["delta1"]].item() == 2


def test_eval_defaults_to_the_fastmde_protocol_and_paper_warns(tmp_path_factory, tmp_path, monkeypatch, capsys):
    """``fastmde eval`` without --protocol scores under 'fastmde' (its --help says so) and writes
    all nine metrics; under --protocol paper a model whose predictions are all negative gets
    δ1 = 1 and the warning with its share, from fastmde's evaluate.py line."""
    import importlib
    import json

    from engine_helpers import synthetic_cache, tiny_config

    from fastmde.cli import main
    from fastmde.engine import train

    for command in ("eval", "sweep"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "default: fastmde" in " ".join(capsys.readouterr().out.split()), command
    cache = synthetic_cache(tmp_path_factory)
    out = str(tmp_path / "run")
    train(tiny_config(cache, out, epochs=1, max_steps=1))
    code = main(["eval", "--checkpoint", out, "--device", "cpu", "--out", str(tmp_path / "default.json")])
    assert code == 0
    result = json.loads((tmp_path / "default.json").read_text())
    assert result["protocol"]["name"] == "fastmde" and set(METRIC_NAMES) <= set(result["metrics"])
    printed = capsys.readouterr().out
    assert all(name in printed for name in METRIC_NAMES), printed
    evaluate_module = importlib.import_module("fastmde.engine.evaluate")   # (fastmde.engine.evaluate: the function)
    monkeypatch.setattr(evaluate_module, "predict_depth", lambda model, images, **kw: -torch.ones_like(images[:, :1]))
    with pytest.warns(UserWarning, match=r"100% of the scored predictions are <= 0 .* protocol 'paper'") as caught:
        code = main(["eval", "--checkpoint", out, "--device", "cpu", "--protocol", "paper",
                     "--out", str(tmp_path / "paper.json")])
    assert code == 0 and json.loads((tmp_path / "paper.json").read_text())["metrics"]["delta1"] == 1.0
    assert [w.filename for w in caught if "δ hits" in str(w.message)] == [evaluate_module.__file__]


# ---------------------------------------------------------------- op contract


def test_opcheck(backend, device):
    pred, target = depth_pair((2, 7, 9), 14, bad_fraction=0.1)
    mask = random_mask((2, 7, 9), 14, "random")
    pred, target, mask = as_device(device, pred, target, mask)
    rules = MetricRules(max_depth=10.0, pred_max=10.0).op_args()
    utils = ("test_schema", "test_faketensor") if backend == "triton" else None
    kwargs = {} if utils is None else {"test_utils": utils}
    torch.library.opcheck(depth_metric_sums_op, (pred, target, mask, 1e-3, 10.0, [1, 6, 0, 8], *rules), **kwargs)
    torch.library.opcheck(depth_metric_sums_op, (pred, target, None, 1e-3, float("inf"), [0, 7, 0, 9],
                                                 *MetricRules().op_args()), **kwargs)
    hu = (True, True, -math.inf, math.inf, math.nan, True, True, True)
    torch.library.opcheck(depth_metric_sums_op, (pred, target, mask, 0.0, float("inf"), [0, 7, 0, 9], *hu), **kwargs)


def test_torch_compile_fullgraph(backend, device):
    pred, target = as_device(device, *depth_pair((2, 12, 17), 15, bad_fraction=0.05))
    torch._dynamo.reset()

    def rms(p, t):
        return fastmde.depth_metrics(p, t, max_depth=10.0, crop="eigen")["rms"]

    def hu(p, t):
        return fastmde.depth_metrics(p, t, **PROTOCOLS["hu"].metric_options())["rms"]

    compile_backend = "aot_eager" if backend == "triton" and device.type == "cpu" else "inductor"
    for f in (rms, hu):
        compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
        torch.testing.assert_close(compiled(pred, target), f(pred, target), equal_nan=True)


def test_torch_compile_dynamic_is_one_graph(backend, device):
    """Issue 22 (pytorch#121080): under torch.compile(dynamic=True, fullgraph=True) the option
    checks see symbolic floats (min_depth, max_depth as arguments) and the crops symbolic sizes;
    depth_metrics and DepthMetrics.update trace into one graph that serves several sizes without
    recompiling, with the eager values. (Sizes 0 and 1 are specialised by dynamo, so batches of
    2 and more; the rule values reach the op as constants: another max_depth compiles again.)"""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    # (the op is opaque to dynamo, so the Triton interpreter's run checks one crop kind)
    for crop in ("garg",) if backend == "triton" else ("eigen", "garg"):
        graphs.clear()
        compiled = torch.compile(fastmde.depth_metrics, dynamic=True, fullgraph=True, backend=counting_backend)
        for k, shape in enumerate(((2, 1, 9, 11), (3, 1, 12, 17), (2, 1, 20, 30))):
            pred, target = as_device(device, *depth_pair(shape, 20 + k, bad_fraction=0.05))
            got = compiled(pred, target, min_depth=1e-3, max_depth=8.0, crop=crop)
            want = fastmde.depth_metrics(pred, target, min_depth=1e-3, max_depth=8.0, crop=crop)
            close(got, want, 1e-12)
        assert len(graphs) == 1, crop
    graphs.clear()
    acc = PROTOCOLS["kitti_garg"].metrics().to(device)
    update = torch.compile(acc.update, dynamic=True, fullgraph=True, backend=counting_backend)
    for k, shape in enumerate(((2, 9, 11), (3, 12, 17), (2, 20, 30))):
        update(*as_device(device, *depth_pair(shape, 30 + k, hi=90.0)))
    assert len(graphs) == 1
    eager = PROTOCOLS["kitti_garg"].metrics().to(device)
    for k, shape in enumerate(((2, 9, 11), (3, 12, 17), (2, 20, 30))):
        eager.update(*as_device(device, *depth_pair(shape, 30 + k, hi=90.0)))
    close(acc.compute(), eager.compute(), 1e-12)


def test_backends_report(backend, device):
    assert fastmde.backends((device.type,))["depth_metrics"][device.type] == backend


def test_bad_input_is_named(backend, device):
    pred, target = as_device(device, *depth_pair((1, 5, 5), 0))
    with pytest.raises(ValueError, match="crop"):
        depth_metric_sums_op(pred, target, None, 1e-3, 10.0, [0, 6, 0, 5], *MetricRules().op_args())
    with pytest.raises(ValueError, match="aggregate"):
        fastmde.depth_metrics(pred, target, aggregate="mean")
    with pytest.raises(ValueError, match="exactly"):
        fastmde.depth_metrics(pred, target, aggregate={"rms": "pooled"})
    with pytest.raises(ValueError, match="max_depth"):
        fastmde.depth_metrics(pred, target, min_depth=5, max_depth=1)
    with pytest.raises(ValueError, match="min_depth"):
        fastmde.depth_metrics(pred, target, min_depth=-1.0)
    with pytest.raises(ValueError, match="clamp"):
        fastmde.depth_metrics(pred, target, clamp=(5.0, 1.0))
    with pytest.raises(ValueError, match="rel_denominator"):
        fastmde.depth_metrics(pred, target, rel_denominator="pred")
    with pytest.raises(ValueError, match="log10_nonfinite"):
        fastmde.depth_metrics(pred, target, log10_nonfinite="nan")
    with pytest.raises(ValueError, match="shapes differ"):
        fastmde.depth_metrics(pred, target[:, :4])


@requires_cuda
def test_cuda_realistic_shape():
    from fastmde.kernels import depth_metrics as kernels

    pred, target = depth_pair((8, 480, 640), 3, bad_fraction=0.05)
    mask = random_mask((8, 480, 640), 3, "random")
    rules = MetricRules(max_depth=10.0, pred_max=10.0).op_args()
    got = kernels.depth_metric_sums(pred.cuda(), target.cuda(), mask.cuda(), 1e-3, 10.0, [45, 471, 41, 601], *rules)
    ref = depth_metric_sums_reference(pred, target, mask, 1e-3, 10.0, (45, 471, 41, 601))
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-5, atol=1e-3)
