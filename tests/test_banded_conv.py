"""BandedConv2d against nn.Conv2d: values and the gradients of x, weight and bias, with the
banded weight gradient and the tap-GEMM backward forced on small maps (odd heights, a last
short band, k = 1, 3, 5, one and several output channels), the automatic choice, the paths that
must stay nn.Conv2d's, and a model's training step."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

from fastmde.nn import banded_conv
from fastmde.nn.banded_conv import (
    BandedConv2d,
    band_rows,
    forced,
    grads_by_taps,
    measured_choices,
    weight_grad_banded,
)

CL = torch.channels_last


def _pair(cin, cout, k, bias, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    ref = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias, **kw)
    fast = BandedConv2d(cin, cout, k, padding=k // 2, bias=bias, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref.to(dtype), fast.to(dtype)


def _run(conv, x, g):
    x = x.clone().requires_grad_(True)
    y = conv(x)
    y.backward(g)
    grads = [x.grad, conv.weight.grad] + ([conv.bias.grad] if conv.bias is not None else [])
    return y, grads


def _grad_fn_name(conv, x):
    return type(conv(x.requires_grad_(True)).grad_fn).__name__


def _assert_matches(ref, fast, x, tol, path="banded", rows=None):
    torch.manual_seed(1)
    g = torch.randn(x.shape[0], ref.out_channels, *x.shape[-2:], dtype=x.dtype)
    y_ref, grads_ref = _run(ref, x, g)
    with forced(path, rows):
        assert _grad_fn_name(fast, x.clone()) == "_BandedWeightGradConvBackward"
        y, grads = _run(fast, x, g)
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("batch", [1, 2])
def test_banded_matches_conv2d(dtype, tol, fmt, k, batch):
    ref, fast = _pair(3, 4, k, bias=k != 5, dtype=dtype)
    x = torch.randn(batch, 3, 9, 7, dtype=dtype).contiguous(memory_format=fmt)
    # 9 rows: bands of 4 (a last band of 1 row, shorter than a 5x5 kernel's halo), of 3 (exact)
    # and of 16 (one band, taller than the map)
    for rows in (4, 3, 16):
        ref.zero_grad(), fast.zero_grad()
        _assert_matches(ref, fast, x, tol, rows=rows)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 6), rows=st.integers(1, 7), k=st.sampled_from([1, 3, 5]),
       batch=st.integers(1, 2), bias=st.booleans(), layout=st.sampled_from(["nchw", "cl", "strided"]))
def test_banded_matches_conv2d_drawn(h, w, rows, k, batch, bias, layout):
    ref, fast = _pair(2, 3, k, bias=bias)
    x = torch.randn(batch, 2, h, 2 * w, dtype=torch.float64)
    x = x[..., ::2] if layout == "strided" else x[..., :w].contiguous(memory_format=CL if layout == "cl" else
                                                                      torch.contiguous_format)
    _assert_matches(ref, fast, x, 1e-12, rows=rows)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
@pytest.mark.parametrize("cout,k", [(1, 3), (1, 5), (2, 3), (1, 1), (4, 3)])
@pytest.mark.parametrize("batch", [1, 2])
def test_taps_match_conv2d(dtype, tol, fmt, cout, k, batch):
    """The tap-GEMM backward: every gradient, narrow outputs (the head's 1 channel) and a wider one."""
    ref, fast = _pair(5, cout, k, bias=cout != 2, dtype=dtype)
    _assert_matches(ref, fast, torch.randn(batch, 5, 9, 7, dtype=dtype).contiguous(memory_format=fmt), tol,
                    path="taps")


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 10), w=st.integers(1, 6), k=st.sampled_from([1, 3, 5]), cout=st.integers(1, 3),
       batch=st.integers(1, 2), bias=st.booleans(), layout=st.sampled_from(["nchw", "cl", "strided"]))
def test_taps_match_conv2d_drawn(h, w, k, cout, batch, bias, layout):
    """Maps smaller than the kernel (every tap partly outside), strided inputs."""
    ref, fast = _pair(3, cout, k, bias=bias)
    x = torch.randn(batch, 3, h, 2 * w, dtype=torch.float64)
    x = x[..., ::2] if layout == "strided" else x[..., :w].contiguous(memory_format=CL if layout == "cl" else
                                                                      torch.contiguous_format)
    _assert_matches(ref, fast, x, 1e-12, path="taps")


def test_grads_by_taps_leaves_out_what_is_not_asked_for():
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64)
    weight = torch.randn(1, 3, 3, 3, dtype=torch.float64)
    gx, gw, gb = grads_by_taps(torch.randn(1, 1, 5, 4, dtype=torch.float64), x, weight, need_x=False, need_b=False)
    assert gx is None and gb is None and gw.shape == weight.shape


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_one_call_path_of_the_function_matches_conv2d(fmt):
    ref, fast = _pair(3, 4, 3, bias=True)
    _assert_matches(ref, fast, torch.randn(2, 3, 6, 5, dtype=torch.float64).contiguous(memory_format=fmt),
                    1e-12, path="one_call")


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("cout", [5, 1])
def test_bfloat16_autocast_matches_conv2d(fmt, bias, cout):
    """As nn.Conv2d under CPU autocast: bf16 output, float32 gradients of x and the parameters."""
    ref, fast = _pair(4, cout, 3, bias=bias, dtype=torch.float32)
    ref, fast = ref.to(memory_format=fmt), fast.to(memory_format=fmt)
    x = torch.randn(2, 4, 11, 6).contiguous(memory_format=fmt)
    g = torch.randn(2, cout, 11, 6, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, grads_ref = _run(ref, x, g)
        for path in ("banded", "taps"):
            fast.zero_grad()
            with forced(path, 4):
                y, grads = _run(fast, x, g)
            assert y.dtype == y_ref.dtype == torch.bfloat16
            torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
            for got, want in zip(grads, grads_ref):
                assert got.dtype == want.dtype == torch.float32
                torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2, msg=path)


def test_weight_grad_banded_of_a_channels_last_map_is_a_view_of_its_bands():
    """A channels_last map whose height the bands divide: the output gradient's bands are a view."""
    x = torch.randn(1, 3, 8, 5).contiguous(memory_format=CL)
    g = torch.randn(1, 2, 8, 5).contiguous(memory_format=CL)
    bands = banded_conv._bands(g, 4, 0, CL)
    assert bands.data_ptr() == g.data_ptr() and bands.shape == (2, 2, 4, 5)
    w = torch.randn(2, 3, 3, 3).contiguous(memory_format=CL)
    want = torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                               [False, True, False])[1]
    torch.testing.assert_close(weight_grad_banded(g, x, w, 4), want)


def test_band_rows():
    assert band_rows(288) == 18          # divisors 16, 18, 24, 32: the one nearest 20
    assert band_rows(240) == 20
    assert 288 % band_rows(288) == 0 and 144 % band_rows(144) == 0
    assert band_rows(31) is None         # fewer than two bands of 16
    assert band_rows(37) == 19           # no divisor in 16..32: the fewest zero rows (1 of 38)


def _measured_once(monkeypatch, cin, cout, atol):
    """Two training calls of a conv on a 1x{cin}x256x256 map (B * H * W = MIN_PIXELS), each equal
    to nn.Conv2d's values and gradients: the one measured row they leave."""
    monkeypatch.setattr(banded_conv, "_CHOICES", {})
    ref, fast = _pair(cin, cout, 3, bias=True, dtype=torch.float32)
    x = torch.randn(1, cin, 256, 256)
    g = torch.randn(1, cout, 256, 256)
    y_ref, grads_ref = _run(ref, x, g)
    for _ in range(2):
        fast.zero_grad()
        y, grads = _run(fast, x, g)
        torch.testing.assert_close(y, y_ref)
        for got, want in zip(grads, grads_ref):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=atol)
    (row,) = measured_choices()
    assert row["shape"] == (1, cin, 256, 256) and row["dtype"] == "float32" and row["kernel_size"] == (3, 3)
    assert row["out_channels"] == cout and row["one_call_ms"] > 0 and row["other_ms"] > 0
    return row, fast


def test_automatic_choice_is_measured_once_and_cached(monkeypatch):
    row, _ = _measured_once(monkeypatch, 2, 4, atol=1e-4)   # 4 x 3 x 3 > TAPS_MAX_COLUMNS: bands
    assert row["choice"] in ("banded", "one_call")
    assert (row["choice"] == "banded") == (row["other_ms"] < banded_conv.WIN_RATIO * row["one_call_ms"])


def test_a_narrow_output_measures_the_tap_gemms(monkeypatch):
    """The head's conv to one channel: the tap GEMMs are timed against the whole one call, once."""
    row, fast = _measured_once(monkeypatch, 3, 1, atol=1e-3)
    assert row["choice"] in ("taps", "one_call")
    assert (row["choice"] == "taps") == (row["other_ms"] < banded_conv.WIN_RATIO * row["one_call_ms"])
    # a batch reaches the pixel count together; a smaller one is never measured
    assert _grad_fn_name(fast, torch.randn(2, 3, 128, 256)) == "_BandedWeightGradConvBackward"
    assert _grad_fn_name(fast, torch.randn(1, 3, 128, 256)) == "ConvolutionBackward0"


def test_the_cached_choice_picks_the_path(monkeypatch):
    x = torch.randn(1, 2, 256, 256)
    _, fast = _pair(2, 2, 3, bias=False, dtype=torch.float32)
    key = banded_conv._key(x, fast.weight, torch.float32)
    monkeypatch.setattr(banded_conv, "_CHOICES", {key: ("banded", 1.0, 0.5)})
    assert _grad_fn_name(fast, x.clone()) == "_BandedWeightGradConvBackward"
    monkeypatch.setattr(banded_conv, "_CHOICES", {key: ("one_call", 1.0, 0.95)})
    assert _grad_fn_name(fast, x.clone()) == "ConvolutionBackward0"
    # a map below MIN_PIXELS is never banded nor measured
    assert _grad_fn_name(fast, torch.randn(1, 2, 128, 256)) == "ConvolutionBackward0"
    assert len(banded_conv._CHOICES) == 1


def test_deterministic_algorithms_take_the_one_call_unmeasured(monkeypatch):
    monkeypatch.setattr(banded_conv, "_CHOICES", {})
    _, fast = _pair(2, 2, 3, bias=False, dtype=torch.float32)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert _grad_fn_name(fast, torch.randn(1, 2, 256, 256)) == "ConvolutionBackward0"
    finally:
        torch.use_deterministic_algorithms(was)
    assert banded_conv._CHOICES == {}


@pytest.mark.parametrize("kw", [dict(stride=2), dict(dilation=2, padding=2), dict(groups=2), dict(padding=0),
                                dict(padding="same"), dict(padding_mode="reflect")])
def test_other_convolutions_stay_conv2d(kw):
    kw = {"padding": 1, **kw}
    ref = nn.Conv2d(4, 4, 3, **kw).double()
    fast = BandedConv2d(4, 4, 3, **kw).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    with forced("banded", 2):
        assert _grad_fn_name(fast, x.clone()) != "_BandedWeightGradConvBackward"
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=0)


def test_no_grad_frozen_weight_and_unbatched_input_stay_conv2d():
    _, fast = _pair(3, 3, 3, bias=True)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    with forced("banded", 2):
        with torch.no_grad():
            assert fast(x).grad_fn is None
        assert _grad_fn_name(fast, x[0].clone()) == "SqueezeBackward1"    # nn.Conv2d's unbatched path
        fast.weight.requires_grad_(False)
        assert _grad_fn_name(fast, x.clone()) == "ConvolutionBackward0"


def test_dtype_mismatch_raises_conv2d_error():
    ref, fast = _pair(3, 3, 3, bias=False, dtype=torch.float32)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError) as want:
        ref(x)
    with forced("banded", 2), pytest.raises(RuntimeError) as got:
        fast(x)
    assert str(got.value) == str(want.value)


def test_forced_refuses_an_unknown_path():
    with pytest.raises(ValueError, match="path must be"):
        with forced("bands"):
            pass
    with pytest.raises(ValueError, match="rows must be"):
        with forced("banded", 0):
            pass


def test_state_dict_and_repr_are_conv2d_s():
    ref, fast = _pair(3, 4, 3, bias=True, dtype=torch.float32)
    assert list(fast.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    assert isinstance(fast, nn.Conv2d) and fast.extra_repr() == ref.extra_repr()
    plain = nn.Conv2d(3, 4, 3, padding=1)
    plain.load_state_dict(fast.state_dict())
    fast.load_state_dict(plain.state_dict())


def test_export_copy_holds_plain_conv2d():
    from fastmde.models import UNet
    from fastmde.models.plain import plain_copy

    copied = plain_copy(UNet(18, kernel_size=3))
    convs = [m for m in copied.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is nn.Conv2d or type(m).__name__ == "TapCroppedConv2d" for m in convs)
    assert type(copied.head_conv1) is nn.Conv2d and type(copied.up4.conv2) is nn.Conv2d


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_training_step_matches_eager(dynamic):
    """torch.compile(fullgraph=True) of the module in training mode (it takes nn.Conv2d's path)."""
    torch._dynamo.reset()
    ref, fast = _pair(2, 3, 3, bias=True, dtype=torch.float32)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    x = torch.randn(1, 2, 7, 5)
    g = torch.randn(1, 3, 7, 5)
    with forced("banded", 2):
        y, grads = _run(compiled, x, g)
    y_ref, grads_ref = _run(ref, x, g)
    torch.testing.assert_close(y, y_ref)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want)


def test_unet_trains_a_step_with_banded_weight_gradients(monkeypatch):
    """A tiny U-Net's gradients with every full-resolution conv banded, or through the tap GEMMs,
    equal the one call's."""
    from fastmde.models import UNet

    banded_calls = []

    def counted(grad, x, weight, rows):
        banded_calls.append(tuple(x.shape))
        return weight_grad_banded(grad, x, weight, rows)

    monkeypatch.setattr(banded_conv, "weight_grad_banded", counted)

    torch.manual_seed(0)
    model = UNet(18, kernel_size=3).double()     # float64: the ways' different sums agree to 1e-12
    assert isinstance(model.head_conv1, BandedConv2d) and isinstance(model.up4.conv2, BandedConv2d)
    assert [k for k in model.state_dict() if "head" in k][:2] == ["head_conv1.weight", "head_bn.weight"]
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 255
    grads = {}
    for path in ("one_call", "banded", "taps"):
        model.zero_grad()
        with forced(path, 5):
            model(x).square().mean().backward()
        grads[path] = {n: p.grad.clone() for n, p in model.named_parameters()}
    # each block's conv2 and the two head convs; up4.conv2 and the head at the input's size
    assert len(banded_calls) == 6 and banded_calls.count((2, 64, 32, 32)) == 3
    for path in ("banded", "taps"):
        for name, grad in grads[path].items():
            torch.testing.assert_close(grad, grads["one_call"][name], rtol=1e-9, atol=1e-12, msg=f"{path}: {name}")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = model.head_conv1.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.head_conv1.weight)


def test_choices_survive_a_checkpoint():
    """A training checkpoint's ``conv_choices`` restore the measured choices (a resumed run sums
    as the run it continues did); malformed entries are skipped."""
    from fastmde.nn import banded_conv

    saved = dict(banded_conv._CHOICES)
    try:
        banded_conv._CHOICES.clear()
        key = ((1, 4, 256, 300), torch.bfloat16, "channels_last", 4, (3, 3), 2)
        head = ((1, 4, 256, 300), torch.bfloat16, "channels_last", 1, (3, 3), 1)
        banded_conv._CHOICES[key] = ("banded", 0.02, 0.01)
        banded_conv._CHOICES[head] = ("taps", 0.02, 0.01)
        state = banded_conv.choices_state()
        assert state == [[[1, 4, 256, 300], "bfloat16", "channels_last", 4, [3, 3], "banded", 2],
                         [[1, 4, 256, 300], "bfloat16", "channels_last", 1, [3, 3], "taps", 1]]
        banded_conv._CHOICES.clear()
        banded_conv.restore_choices(state + [["junk"], [[1], "no_such_dtype", "x", 1, [1], "banded"], None,
                                             [[1, 4, 8, 8], "bfloat16", "channels_last", 1, [3, 3], "bands"]])
        assert list(banded_conv._CHOICES) == [key, head]
        assert banded_conv._CHOICES[key][0] == "banded" and banded_conv._CHOICES[head][0] == "taps"
        banded_conv.restore_choices(None)
    finally:
        banded_conv._CHOICES.clear()
        banded_conv._CHOICES.update(saved)


def test_a_restored_band_choice_for_a_narrow_conv_runs(monkeypatch):
    """A checkpoint of an older version may hold "banded" for the depth head's conv to one channel
    (bands were then the only way tried there): a resumed run bands it (it used to raise a
    TypeError: no band height was planned for a narrow conv)."""
    x = torch.randn(1, 3, 256, 256)
    ref, fast = _pair(3, 1, 3, bias=True, dtype=torch.float32)
    monkeypatch.setattr(banded_conv, "_CHOICES", {})
    banded_conv.restore_choices([[[1, 3, 256, 256], "float32", "contiguous", 1, [3, 3], "banded"]])
    calls = []
    monkeypatch.setattr(banded_conv, "weight_grad_banded",
                        lambda *a: calls.append(a[3]) or weight_grad_banded(*a))
    g = torch.randn(1, 1, 256, 256)
    y_ref, grads_ref = _run(ref, x, g)
    y, grads = _run(fast, x, g)
    assert calls == [banded_conv.band_rows(256)]
    torch.testing.assert_close(y, y_ref)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-2)
