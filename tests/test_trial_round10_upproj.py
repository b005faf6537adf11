"""Faults of the up-projection path and BandedConv2d noticed in review, each with the right value:

1. the up-projection block (``fastmde.ops.up_projection``, ``nn.UpProjection(size=...)``)
   truncated a float output size (9.7 -> 9 rows) and the ops (``upsample_conv2d``,
   ``upsample_conv2d_bn``) stopped with a TypeError that printed the tensors, where
   ``F.interpolate`` refuses it: now one line (ValueError), whole numbers (9.0, numpy's) still
   taken, and symbolic sizes under torch.compile(dynamic=True) still one graph;
2. under bf16 autocast with a float32 input the fused block returned float32 and Hu et al.'s
   block (no 1x1) on the plain path too, where plain PyTorch (a conv under autocast) returns
   bfloat16: every path now computes in and returns autocast's dtype;
3. BandedConv2d reused a backward way timed with 2 threads after torch.set_num_threads(1): the
   thread count is part of a choice's setting (kept by checkpoints; an earlier checkpoint's
   choices load for the current count), and ``fastmde info`` lists the process's choices.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import fastmde
from compile_helpers import compile_counting
from fastmde.nn import banded_conv
from fastmde.nn.banded_conv import BandedConv2d, measured_choices
from fastmde.ops import up_projection
from fastmde.ops.up_projection import upsample_conv2d
from fastmde.ops.up_projection_bn import upsample_conv2d_bn
from fastmde.reference.up_projection import (
    up_projection_block_reference,
    upsample_conv2d_bn_reference,
    upsample_conv2d_reference,
)


def _x(shape=(1, 4, 3, 5), seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _block(reduce=True, fuse=False, stack=False):
    torch.manual_seed(0)
    return fastmde.nn.UpProjection(4, 3, reduce=reduce, fuse_batchnorm=fuse, stack_convs=stack).eval()


# ---------------------------------------------------------------- 1. the output size

BAD_SIZES = [((9.7, 7), "(9.7, 7) (round a computed size yourself: it is not truncated)"),
             ((9, 7.5), "(9, 7.5) (round a computed size yourself: it is not truncated)"),
             ((0, 7), "(0, 7)"), ((True, 7), "(True, 7)"), ((9, 7, 5), "(9, 7, 5)"), (9, "9"),
             ((float("nan"), 7), "(nan, 7)")]


@pytest.mark.parametrize("size, shown", BAD_SIZES, ids=[str(s) for s, _ in BAD_SIZES])
def test_a_size_that_is_no_pair_of_whole_numbers_is_refused_in_one_line(size, shown):
    x, w = _x(), torch.randn(2, 4, 3, 3)
    block = _block()
    calls = {
        "upsample_conv2d": lambda: upsample_conv2d(x, w, size, True),
        "upsample_conv2d_bn": lambda: upsample_conv2d_bn(x, None, None, w, size, True),
        "up_projection": lambda: up_projection(x, block.layers(), size, True),
        "UpProjection": lambda: block(x, size=size),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message, message
        assert message == f"{name}: size must be (H, W), two whole numbers of at least 1, got {shown}"


@pytest.mark.parametrize("fuse", [False, True])
def test_a_fractional_size_is_no_longer_truncated_by_the_block(fuse):
    """It gave 9 rows for 9.7; under autograd too."""
    block = _block(fuse=fuse)
    x = _x().requires_grad_()
    with pytest.raises(ValueError, match=r"^up_projection: size must be .* got \(9\.7, 10\)"):
        up_projection(x, block.layers(), (9.7, 10), True, fuse_batchnorm=fuse)


@pytest.mark.parametrize("size", [(9.0, 7.0), (np.int64(9), np.float32(7)), [9, 7], torch.Size([9, 7]),
                                  (torch.tensor(9), 7)], ids=["floats", "numpy", "list", "Size", "tensor"])
def test_whole_sizes_of_any_kind_give_the_reference(size):
    """Values and gradients of the eager path (the backward runs with the size as checked)."""
    x = _x((1, 2, 4, 5)).double().requires_grad_()
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_()
    got = upsample_conv2d(x, w, size, True)
    want = upsample_conv2d_reference(x, w, (9, 7), True)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.square().sum(), (x, w)), torch.autograd.grad(want.square().sum(), (x, w))):
        torch.testing.assert_close(a, b)
    out, mean, var = upsample_conv2d_bn(x, None, None, w, size, True)
    ref = upsample_conv2d_bn_reference(x, None, None, w, (9, 7), True)
    for a, b in zip((out, mean, var), ref):
        torch.testing.assert_close(a, b)
    block = _block().double()
    torch.testing.assert_close(block(_x().double(), size=size),
                               up_projection_block_reference(block, _x().double(), size=(9, 7)))


@pytest.mark.parametrize("fuse", [False, True])
def test_symbolic_sizes_under_compile_stay_one_graph(fuse):
    """torch.compile(fullgraph=True, dynamic=True): sizes computed from the input's shape arrive
    as SymInts; the check must neither break the graph nor specialise it to one size."""
    block = _block(fuse=fuse)
    w = torch.randn(3, 4, 3, 3, generator=torch.Generator().manual_seed(3))

    def fn(a):
        return (upsample_conv2d(a, w, (a.shape[-2] * 2, a.shape[-1] * 2 + 1), True).sum()
                + block(a, size=(a.shape[-2] * 2 + 1, a.shape[-1] * 2)).sum())

    compiled, counter = compile_counting(fn)
    first = None
    for k, shape in enumerate([(2, 4, 5, 7), (3, 4, 8, 6)]):
        x = _x(shape, seed=k)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = compiled(x1), fn(x2)
        y1.backward()
        y2.backward()
        torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)
        first = counter.frame_count if first is None else first   # dynamo may restart its first analysis once
    assert counter.frame_count == first <= 2


# ---------------------------------------------------------------- 2. the dtype under autocast

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("reduce", [True, False], ids=["paper", "hu"])
def test_every_path_returns_what_plain_pytorch_returns_under_autocast(dtype, reduce):
    """Plain PyTorch's block under autocast returns autocast's dtype (its convs' rule); fused or
    plain, stacked or not, float32 or low-precision x, the block returns it too, close to it."""
    base = _block(reduce=reduce)
    x = _x((2, 4, 5, 6))
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        want = up_projection_block_reference(base, x)
        assert want.dtype == dtype
        for fuse in (False, True):
            for stack in (False, True):
                block = copy.deepcopy(base)
                block.fuse_batchnorm, block.stack_convs = fuse, stack
                for given in (x, x.to(dtype)):
                    got = block(given)
                    assert got.dtype == dtype, (fuse, stack, given.dtype)
                    torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2)
                    op = up_projection(given, block.layers(), (10, 12), True, fuse_batchnorm=fuse, stack_convs=stack)
                    assert op.dtype == dtype
                    torch.testing.assert_close(op, got, rtol=0, atol=0)


@pytest.mark.parametrize("fuse", [False, True])
def test_under_autocast_the_gradient_reaches_a_float32_input_in_float32(fuse):
    base = _block(reduce=False, fuse=fuse).train()
    ref = copy.deepcopy(base)
    x1, x2 = _x((2, 4, 5, 6)).requires_grad_(), _x((2, 4, 5, 6)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = base(x1), up_projection_block_reference(ref, x2)
    assert got.dtype == want.dtype == torch.bfloat16
    got.float().square().sum().backward()
    want.float().square().sum().backward()
    assert x1.grad.dtype == torch.float32
    torch.testing.assert_close(x1.grad, x2.grad, rtol=5e-2, atol=5e-2 * x2.grad.abs().max().item())
    # float64 is never cast by autocast: it stays float64
    double = copy.deepcopy(base).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert double(_x((2, 4, 5, 6)).double()).dtype == torch.float64


# ---------------------------------------------------------------- 3. BandedConv2d and the thread count

@pytest.fixture
def threads():
    """Runs the test with its own choices and puts the thread count back."""
    was, saved = torch.get_num_threads(), dict(banded_conv._CHOICES)
    banded_conv._CHOICES.clear()
    try:
        yield
    finally:
        torch.set_num_threads(was)
        banded_conv._CHOICES.clear()
        banded_conv._CHOICES.update(saved)


def _conv(cout=4):
    torch.manual_seed(0)
    return BandedConv2d(2, cout, 3, padding=1, bias=False)


def test_a_choice_timed_on_two_threads_is_not_reused_on_one(threads):
    x = _x((1, 2, 256, 256))            # H * W = MIN_PIXELS: measured
    conv = _conv()
    torch.set_num_threads(2)
    banded_conv._CHOICES[banded_conv._key(x, conv.weight, torch.float32)] = ("banded", 1.0, 0.5)
    assert banded_conv._plan(x, conv.weight, torch.float32) == ("banded", banded_conv.band_rows(256))
    torch.set_num_threads(1)
    assert banded_conv._plan(x, conv.weight, torch.float32) == ("measure", banded_conv.band_rows(256))
    # a real training call on one thread measures its own, beside the two-thread one
    conv(x.clone().requires_grad_()).square().sum().backward()
    rows = measured_choices()
    assert [row["threads"] for row in rows] == [2, 1]
    assert rows[1]["shape"] == (1, 2, 256, 256) and rows[1]["one_call_ms"] > 0 and rows[1]["other_ms"] > 0
    assert rows[1]["choice"] in ("banded", "one_call")
    # back on two threads the first choice serves again, unmeasured
    torch.set_num_threads(2)
    assert banded_conv._plan(x, conv.weight, torch.float32) == ("banded", banded_conv.band_rows(256))


def test_checkpoints_keep_the_thread_count_and_earlier_ones_still_load(threads):
    key2 = ((1, 4, 256, 300), torch.bfloat16, "channels_last", 4, (3, 3), 2)
    banded_conv._CHOICES[key2] = ("banded", 0.02, 0.01)
    state = banded_conv.choices_state()
    assert state == [[[1, 4, 256, 300], "bfloat16", "channels_last", 4, [3, 3], "banded", 2]]
    torch.set_num_threads(1)
    banded_conv._CHOICES.clear()
    earlier = [[1, 3, 256, 256], "float32", "contiguous", 1, [3, 3], "taps"]    # saved before the count was kept
    banded_conv.restore_choices(state + [earlier,
                                         [[1, 3, 8, 8], "float32", "contiguous", 1, [3, 3], "taps", 0],
                                         [[1, 3, 8, 8], "float32", "contiguous", 1, [3, 3], "taps", True],
                                         [[1, 3, 8, 8], "float32", "contiguous", 1, [3, 3], "taps", "two"],
                                         [[1, 3, 8, 8], "float32", "contiguous", 1, [3, 3], "taps", 2, 3]])
    earlier_key = ((1, 3, 256, 256), torch.float32, "contiguous", 1, (3, 3), 1)   # this process's count
    assert list(banded_conv._CHOICES) == [key2, earlier_key]
    assert banded_conv._CHOICES[key2][0] == "banded" and banded_conv._CHOICES[earlier_key][0] == "taps"
    assert all(math.isnan(t) for t in banded_conv._CHOICES[earlier_key][1:])
    # the earlier checkpoint's choice is taken by a resume on this count, unmeasured
    narrow = BandedConv2d(3, 1, 3, padding=1)
    assert banded_conv._plan(torch.zeros(1, 3, 256, 256), narrow.weight, torch.float32)[0] == "taps"


def test_fastmde_info_lists_the_choices_with_their_thread_counts(threads, capsys):
    from fastmde.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert ("conv backward (BandedConv2d, timed at a shape's first training backward): "
            "none measured yet in this process") in out
    banded_conv._CHOICES[((1, 64, 288, 384), torch.bfloat16, "channels_last", 64, (3, 3), 2)] = ("banded", 0.0221, 0.0123)
    banded_conv._CHOICES[((1, 64, 288, 384), torch.bfloat16, "channels_last", 1, (3, 3), 1)] = ("taps", 0.0056, 0.0029)
    banded_conv.restore_choices([[[1, 64, 144, 192], "float32", "contiguous", 64, [3, 3], "one_call", 4]])
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("conv backward (BandedConv2d), chosen in this process (3):")
    assert [" ".join(line.split()) for line in lines[start + 1:start + 4]] == [
        "1x64x288x384 bfloat16 channels_last -> 64, 3x3, 2 threads banded (one call 22.1 ms, bands 12.3 ms)",
        "1x64x288x384 bfloat16 channels_last -> 1, 3x3, 1 thread taps (one call 5.6 ms, tap GEMMs 2.9 ms)",
        "1x64x144x192 float32 contiguous -> 64, 3x3, 4 threads one_call (restored from a checkpoint)",
    ]


def test_a_patched_block_refuses_a_fractional_size_instead_of_truncating_it():
    """fastmde.patch's adopted block turned the size (9.7, 11) into 9 rows (int()): F.interpolate in the
    original block refuses a float size, so the adopted one refuses it too, in one line."""
    import torch.nn.functional as F
    from test_patch import HuStyleUpProjection

    block = HuStyleUpProjection(8, 4).eval()
    assert fastmde.patch(block).replaced
    x = torch.rand(1, 8, 5, 6)
    assert block(x, (9, 11)).shape == (1, 4, 9, 11)
    assert block(x, (9.0, 11)).shape == (1, 4, 9, 11)       # a whole float, as output_size takes it
    for size, shown in (((9.7, 11), "(9.7, 11)"), (9.5, "(9.5, 9.5)")):
        with pytest.raises(ValueError) as info:
            block(x, size)
        assert str(info.value) == ("up-projection: size must be (H, W), two whole numbers of at least 1, "
                                   f"got {shown} (round a computed size yourself: it is not truncated)")
    with pytest.raises(TypeError):           # the original block's own refusal
        F.interpolate(x, size=(9.7, 11), mode="bilinear")
