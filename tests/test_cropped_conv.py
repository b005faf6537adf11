"""TapCroppedConv2d against nn.Conv2d: values and both gradients on small maps, where taps are cropped."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fastmde.nn.cropped_conv import TapCroppedConv2d, live_taps


def brute_force_live(n, k, s, p, d):
    m = (n + 2 * p - d * (k - 1) - 1) // s + 1
    return [i for i in range(k) if any(0 <= o * s - p + i * d < n for o in range(m))]


@pytest.mark.parametrize("n,k,s,p,d", [(1, 3, 1, 1, 1), (2, 3, 2, 1, 1), (1, 5, 1, 2, 1), (3, 3, 1, 1, 1),
                                       (1, 3, 1, 2, 2), (2, 5, 1, 2, 1), (1, 7, 2, 3, 1)])
def test_live_taps_match_brute_force(n, k, s, p, d):
    live = brute_force_live(n, k, s, p, d)
    i0, i1, before, after = live_taps(n, k, s, p, d)
    assert (i0, i1) == (live[0], live[-1] + 1)
    if (i0, i1) != (0, k):
        assert before == p - i0 * d and before >= 0


def test_one_by_one_map_uses_the_centre_tap_only():
    assert live_taps(1, 3, 1, 1, 1) == (1, 2, 0, 0)
    assert live_taps(2, 3, 2, 1, 1) == (1, 3, 0, 0)   # ResNet's strided 3x3 from 2x2 to 1x1
    assert live_taps(8, 3, 1, 1, 1) == (0, 3, 1, 1)   # big enough: nothing cropped


def _pair(cin, cout, k, stride, padding, dilation, bias, groups=1):
    torch.manual_seed(0)
    ref = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=bias, groups=groups)
    fast = TapCroppedConv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=bias, groups=groups)
    fast.load_state_dict(ref.state_dict())
    return ref.double(), fast.double()


def _check(ref, fast, x):
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yr, yf = ref(xr), fast(xf)
    assert yf.shape == yr.shape
    torch.testing.assert_close(yf, yr, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-12, atol=1e-12)
    if ref.bias is not None:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 4), w=st.integers(1, 4), k=st.sampled_from([3, 5]), stride=st.integers(1, 2),
       dilation=st.integers(1, 2), bias=st.booleans(), batch=st.integers(1, 3))
def test_matches_conv2d_values_and_gradients(h, w, k, stride, dilation, bias, batch):
    padding = dilation * (k // 2)
    ref, fast = _pair(3, 4, k, stride, padding, dilation, bias)
    _check(ref, fast, torch.randn(batch, 3, h, w, dtype=torch.float64))


@pytest.mark.parametrize("padding", [0, 1, (1, 0), (0, 2)])
def test_uneven_and_zero_padding(padding):
    ref, fast = _pair(2, 3, 3, 1, padding, 1, True)
    for h, w in [(1, 3), (3, 1), (2, 2), (1, 1)]:
        if (h + 2 * ref.padding[0] >= 3) and (w + 2 * ref.padding[1] >= 3):
            _check(ref, fast, torch.randn(2, 2, h, w, dtype=torch.float64))


def test_groups_channels_last_and_float32():
    ref, fast = _pair(4, 4, 3, 1, 1, 1, False, groups=2)
    _check(ref, fast, torch.randn(2, 4, 1, 2, dtype=torch.float64).to(memory_format=torch.channels_last))
    ref32, fast32 = ref.float(), fast.float()
    x = torch.randn(5, 4, 1, 1)
    torch.testing.assert_close(fast32(x), ref32(x), rtol=1e-5, atol=1e-6)


def test_dead_taps_get_zero_weight_gradient_and_the_crop_really_happens(monkeypatch):
    _, fast = _pair(3, 2, 3, 1, 1, 1, False)
    seen = []
    real = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda x, w, *a, **k: seen.append(tuple(w.shape[-2:])) or real(x, w, *a, **k))
    fast(torch.randn(2, 3, 1, 1, dtype=torch.float64)).sum().backward()
    assert seen == [(1, 1)]
    grad = fast.weight.grad
    assert grad[:, :, 1, 1].abs().sum() > 0
    grad[:, :, 1, 1] = 0
    assert not grad.any()


def test_resnet_encoder_uses_it_and_keeps_torchvision_keys():
    from fastmde.models.resnet import ResNetEncoder

    enc = ResNetEncoder(18)
    assert isinstance(enc.layer4[1].conv2, TapCroppedConv2d) and isinstance(enc.layer4[1].conv2, nn.Conv2d)
    assert "layer4.1.conv2.weight" in enc.state_dict()
