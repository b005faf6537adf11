"""Input edges of the public API and the commands: numbers given as numpy scalars or bools, a
skip of another dtype, a missing checkpoint path, meta tensors beside a real metric state.

Each fault is checked through the public entry point (``fastmde.depth_metrics``,
``fastmde.nn.*``, ``fastmde.patch``, the ``fastmde`` command) with the value the right answer has.
"""
import copy
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fastmde
from fastmde._text import parse_size

from test_patch import AuthorsStyleUpProjection  # the paper authors' block
from engine_helpers import fastmde_cli


def _maps(seed=0, shape=(1, 1, 9, 11)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 4 + 1, torch.rand(shape, generator=g) * 4 + 1


# ---------------------------------------------------------------- 1. crops of any whole real number

CROPS = [
    (np.int64(2), np.int64(7), np.int32(1), np.int16(9)),
    (np.float32(2.0), np.float64(7.0), 1.0, 9),
    (torch.tensor(2), torch.tensor(7.0), 1, 9),
    (Fraction(4, 2), 7, 1, 9),
]


@pytest.mark.parametrize("crop", CROPS, ids=["numpy-int", "numpy-float", "tensor", "fraction"])
def test_crop_takes_any_whole_real_number(crop):
    pred, target = _maps()
    got = fastmde.depth_metrics(pred, target, crop=crop, max_depth=10)
    # the same pixels by hand: rows 2:7, cols 1:9, one image
    p, t = pred[0, 0, 2:7, 1:9].double(), target[0, 0, 2:7, 1:9].double()
    assert got["rms"].item() == pytest.approx(torch.sqrt(((p - t) ** 2).mean()).item(), rel=1e-12)
    assert got["rel"].item() == pytest.approx(((p - t).abs() / t).mean().item(), rel=1e-12)
    metrics = fastmde.nn.DepthMetrics(crop=crop, max_depth=10)
    metrics.update(pred, target)
    assert metrics.compute()["rms"].item() == pytest.approx(got["rms"].item(), rel=1e-12)


@pytest.mark.parametrize("bad", [
    (np.float32(2.5), 7, 1, 9), (2, 7.0000001, 1, 9), (math.nan, 7, 1, 9), (np.float64(math.inf), 7, 1, 9),
    (True, 7, 1, 9), ("2", 7, 1, 9),
])
def test_crop_refuses_what_is_not_a_whole_number(bad):
    pred, target = _maps()
    with pytest.raises(ValueError, match=r"^crop \(top, bottom, left, right\) is in whole pixels, got .*$"):
        fastmde.depth_metrics(pred, target, crop=bad)
    # the module refuses it when built, not at its first update
    with pytest.raises(ValueError, match="whole pixels"):
        fastmde.nn.DepthMetrics(crop=bad)


def test_crop_name_and_length_are_checked_when_the_module_is_built():
    with pytest.raises(ValueError, match="crop must be one of"):
        fastmde.nn.DepthMetrics(crop="eigne")
    with pytest.raises(ValueError, match=r"crop must be \(top, bottom, left, right\)"):
        fastmde.nn.DepthMetrics(crop=(1, 2, 3))


def test_sizes_take_whole_numbers_only():
    assert parse_size((np.int64(288), np.float32(384.0))) == (288, 384)
    assert parse_size(("288", "384")) == (288, 384)
    for bad in ((287.6, 384), (True, 384), (math.nan, 384)):
        with pytest.raises(ValueError, match="whole numbers"):
            parse_size(bad)
    with pytest.raises(ValueError, match="whole numbers"):
        fastmde.models.IntermediateResolution(nn.Identity(), size=(31.5, 48))


# ---------------------------------------------------------------- 2. counts are ints, never bools or floats

def test_up_projection_counts_are_integers():
    block = fastmde.nn.UpProjection(np.int64(6), np.int32(4), kernel_size=np.int64(5), scale=np.float32(2.0))
    assert (block.in_channels, block.out_channels, block.kernel_size) == (6, 4, 5)
    assert type(block.in_channels) is int and block.conv1.weight.shape == (4, 4, 5, 5)
    for args, kwargs, name in [
        ((True, 4), {}, "in_channels"), ((4.0, 4), {}, "in_channels"), ((4, 2.5), {}, "out_channels"),
        ((4, False), {}, "out_channels"), ((4, 2), {"kernel_size": True}, "kernel_size"),
        ((4, 2), {"kernel_size": 3.0}, "kernel_size"), ((4, 2), {"second_kernel_size": 3.0}, "second_kernel_size"),
        ((4, 2), {"scale": True}, "scale"), ((4, 2), {"scale": "2"}, "scale"),
        ((4, 2), {"reduce": "no"}, "reduce"), ((4, 2), {"stack_convs": 1}, "stack_convs"),
    ]:
        with pytest.raises(TypeError, match=rf"^UpProjection: {name} must be [^\n]*$"):
            fastmde.nn.UpProjection(*args, **kwargs)
    for kwargs, name in [({"scale": math.nan}, "scale"), ({"scale": math.inf}, "scale"),
                         ({"second_kernel_size": -1}, "second_kernel_size"), ({"kernel_size": 4}, "kernel_size")]:
        with pytest.raises(ValueError, match=rf"^UpProjection: {name} must be [^\n]*$"):
            fastmde.nn.UpProjection(4, 2, **kwargs)


def test_loss_and_metric_quantities_are_numbers_not_bools():
    pred, target = _maps()
    # numpy floats are the same quantity as Python floats
    a = fastmde.nn.ScaleInvariantLoss("silog", lambd=np.float32(0.5))(pred, target)
    b = fastmde.nn.ScaleInvariantLoss("silog", lambd=0.5)(pred, target)
    assert a.item() == b.item()
    for make, name in [
        (lambda: fastmde.nn.ScaleInvariantLoss("silog", scale=True), "scale"),
        (lambda: fastmde.nn.ScaleInvariantLoss("ssi", alpha=False), "alpha"),
        (lambda: fastmde.nn.ScaleInvariantLoss("silog", eps="1e-3"), "eps"),
        (lambda: fastmde.nn.DepthLoss(alpha=True), "alpha"),
        (lambda: fastmde.nn.DepthLoss(weights=(True, 1, 1)), "weights"),
        (lambda: fastmde.nn.DepthMetrics(min_depth=True), "min_depth"),
        (lambda: fastmde.nn.DepthMetrics(max_depth=np.bool_(True)), "max_depth"),
    ]:
        with pytest.raises(TypeError, match=rf"^{name} must be a number, got "):
            make()


# ---------------------------------------------------------------- 3. a skip of another dtype

def test_up_projection_refuses_a_skip_of_another_dtype():
    block = fastmde.nn.UpProjection(4, 2)
    x, skip = torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"^UpProjection: skip is torch.float64 but x is torch.float32: [^\n]*$"):
        block(x, skip=skip)
    with pytest.raises(TypeError, match=r"^UpProjection: x is torch.float64 but the block's weights are "
                                        r"torch.float32[^\n]*$"):
        block(x.double(), skip=skip)
    with pytest.raises(TypeError, match="skip must be a floating tensor"):
        block(x, skip=skip.long())
    # float64 on both sides of a float64 block is the gradcheck setting: it runs
    assert block.double()(x.double(), skip=skip).dtype == torch.float64


def test_under_autocast_a_float32_skip_beside_a_bfloat16_x_runs_as_plain_pytorch_would():
    torch.manual_seed(0)
    block = fastmde.nn.UpProjection(4, 2).eval()
    x, skip = torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = block(x.bfloat16(), skip=skip)          # torch.cat promotes to float32, as a plain block's
        same = block(x.bfloat16().float(), skip=skip)
        with pytest.raises(TypeError, match="skip is torch.float64 but x is torch.float32"):
            block(x, skip=skip.double())                # autocast never casts float64
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed, same, rtol=0, atol=0)


def test_a_patched_block_refuses_a_skip_of_another_dtype_in_one_line():
    torch.manual_seed(0)
    block = AuthorsStyleUpProjection(4, 2).eval()
    plain = copy.deepcopy(block)
    assert fastmde.patch(block).replaced == {"": "freeman2021"}
    x, skip = torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5)
    torch.testing.assert_close(block(x, skip), plain(x, skip), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match=r"^AuthorsStyleUpProjection: skip is torch.float64 but x is torch.float32"):
        block(x, skip.double())


# ---------------------------------------------------------------- 4. a checkpoint path that names nothing

@pytest.mark.parametrize("command", ["eval", "predict", "export", "train --init-from"])
def test_a_missing_checkpoint_is_named_with_its_flag(command, tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    empty = tmp_path / "empty_run"
    empty.mkdir()
    # predict checks its inputs before the checkpoint: give it a photo
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.png")
    argv = {
        "eval": lambda p: ["eval", "--checkpoint", p],
        "predict": lambda p: ["predict", "--checkpoint", p, "--out", tmp_path / "maps", tmp_path / "photo.png"],
        "export": lambda p: ["export", p, "--out", tmp_path / "model.onnx"],
        "train --init-from": lambda p: ["train", "--out", tmp_path / "run", "--init-from", p, "--max-steps", "1"],
    }[command]
    flag = {"eval": "--checkpoint", "predict": "--checkpoint", "export": "checkpoint",
            "train --init-from": "--init-from"}[command]
    for path, problem in ((missing, "does not exist"), (empty, "is a folder without best.pt or last.pt")):
        status, out, err = fastmde_cli(argv(path), capsys)
        assert status == 2, err
        assert err.splitlines() == [f"fastmde: error: {flag} {str(path)!r} {problem}"
                                    + ("" if path == missing else " (a run folder holds them once training saved)")]
    assert not (tmp_path / "maps").exists() and not (tmp_path / "model.onnx").exists()


# ---------------------------------------------------------------- 5. meta tensors and a real metric state

def test_depth_metrics_module_refuses_meta_inputs_beside_a_real_state():
    pred, target = _maps()
    metrics = fastmde.nn.DepthMetrics(max_depth=10)
    with pytest.raises(ValueError, match=r"^DepthMetrics.update: pred is on meta but the metric state is on "
                                         r"cpu[^\n]*$"):
        metrics.update(pred.to("meta"), target.to("meta"))
    with pytest.raises(ValueError, match="mask is on meta but the metric state is on cpu"):
        metrics.update(pred, target, mask=torch.ones(pred.shape, dtype=torch.bool, device="meta"))
    # the refused batches added nothing: the next real one is scored alone
    metrics.update(pred, target)
    expected = fastmde.depth_metrics(pred, target, max_depth=10)
    assert metrics.compute()["rms"].item() == expected["rms"].item()
    # a module moved to meta traces shapes with meta inputs, and refuses real ones
    on_meta = fastmde.nn.DepthMetrics(max_depth=10).to("meta")
    on_meta.update(pred.to("meta"), target.to("meta"))
    assert on_meta.compute()["rms"].device.type == "meta"
    with pytest.raises(ValueError, match="pred is on cpu but the metric state is on meta"):
        on_meta.update(pred, target)
