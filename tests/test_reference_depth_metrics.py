"""The reference metrics: hand-computed values, conventions and properties."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from fastmde.reference.depth_metrics import (
    combine,
    depth_metric_sums_reference,
    depth_metrics_reference,
    resolve_crop,
)


def test_small_arrays_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [4.0, 3.0]]], dtype=torch.float64)
    target = torch.tensor([[[2.0, 2.0], [2.0, 3.0]]], dtype=torch.float64)
    m = depth_metrics_reference(pred, target)
    assert m["rms"].item() == pytest.approx(math.sqrt((1 + 0 + 4 + 0) / 4))
    assert m["rel"].item() == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert m["log10"].item() == pytest.approx((math.log10(2) + 0 + math.log10(2) + 0) / 4)
    # ratios 2, 1, 2, 1: below 1.25 twice, below 1.5625 twice, below 1.953 twice
    assert m["delta1"].item() == pytest.approx(0.5)
    assert m["delta2"].item() == pytest.approx(0.5)
    assert m["delta3"].item() == pytest.approx(0.5)


def test_per_image_and_pooled_differ_as_defined():
    pred = torch.tensor([[[1.0, 1.0]], [[3.0, 1.0]]], dtype=torch.float64)
    target = torch.ones(2, 1, 2, dtype=torch.float64)
    target[1, 0, 1] = 0.0  # invalid: image 2 has one valid pixel with error 2
    per_image = depth_metrics_reference(pred, target, aggregate="per_image")
    pooled = depth_metrics_reference(pred, target, aggregate="pooled")
    assert per_image["rms"].item() == pytest.approx((0.0 + 2.0) / 2)
    assert pooled["rms"].item() == pytest.approx(math.sqrt(4.0 / 3))


def test_images_without_valid_pixels_are_left_out_and_never_nan():
    pred = torch.ones(2, 3, 3, dtype=torch.float64)
    target = torch.ones(2, 3, 3, dtype=torch.float64) * 2
    target[1] = float("nan")
    m = depth_metrics_reference(pred, target)
    assert m["rel"].item() == pytest.approx(0.5)
    nothing = depth_metrics_reference(pred, torch.zeros_like(target))
    assert all(v.item() == 0.0 for v in nothing.values())


def test_named_crops_and_scaling():
    assert resolve_crop("eigen", 480, 640) == (45, 471, 41, 601)
    assert resolve_crop("densedepth", 480, 640) == (20, 460, 24, 616)
    assert resolve_crop("eigen", 240, 320) == (22, 236, 20, 300)  # halves, rounded half to even
    assert resolve_crop(None, 5, 7) == (0, 5, 0, 7)
    with pytest.raises(ValueError, match="does not fit"):
        resolve_crop((0, 6, 0, 7), 5, 7)
    with pytest.raises(ValueError, match="crop must be one of"):
        resolve_crop("nope", 5, 7)


def test_min_max_depth_and_pred_clamp():
    pred = torch.tensor([[[0.0, 20.0, 5.0]]], dtype=torch.float64)
    target = torch.tensor([[[1.0, 9.0, 11.0]]], dtype=torch.float64)
    sums = depth_metric_sums_reference(pred, target, None, 1e-3, 10.0, (0, 1, 0, 3))
    assert sums[0, 0].item() == 2  # 11 m is beyond max_depth
    # pred 0 clamps to 1e-3, pred 20 clamps to 10
    assert sums[0, 1].item() == pytest.approx((1 - 1e-3) ** 2 + 1.0)


finite_depth = st.floats(0.05, 20.0, allow_nan=False)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(finite_depth, finite_depth), min_size=1, max_size=30),
    st.floats(0.1, 10.0),
    st.sampled_from(["per_image", "pooled"]),
)
def test_properties(pairs, scale, aggregate):
    pred = torch.tensor([p for p, _ in pairs], dtype=torch.float64).reshape(1, 1, -1)
    target = torch.tensor([t for _, t in pairs], dtype=torch.float64).reshape(1, 1, -1)
    m = depth_metrics_reference(pred, target, aggregate=aggregate)
    assert 0 <= m["delta1"] <= m["delta2"] <= m["delta3"] <= 1
    scaled = depth_metrics_reference(pred * scale, target * scale, aggregate=aggregate)
    assert scaled["rel"].item() == pytest.approx(m["rel"].item(), rel=1e-9, abs=1e-12)
    assert scaled["rms"].item() == pytest.approx(m["rms"].item() * scale, rel=1e-9, abs=1e-12)
    assert scaled["log10"].item() == pytest.approx(m["log10"].item(), rel=1e-9, abs=1e-9)


def test_combine_rejects_unknown_aggregation():
    with pytest.raises(ValueError, match="aggregate"):
        combine(torch.zeros(1, 7, dtype=torch.float64), "mean")
