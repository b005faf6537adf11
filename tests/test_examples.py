"""examples/adopt.py: the plain project it adopts is what it says, and the adoption keeps training the same."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import fastmde

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "adopt.py")


@pytest.fixture(scope="module")
def adopt():
    spec = importlib.util.spec_from_file_location("fastmde_example_adopt", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["hu", "hu_blurred"])
def test_plain_loss_is_fastmde_depth_loss(adopt, preset):
    # The one-line swap is exact: the example's F.conv2d loss and fastmde.depth_loss agree in
    # float64 (value and gradient) on an odd-sized batch with depth edges.
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 37, 53, generator=g, dtype=torch.float64) * 9 + 0.5
    target[:, :, 10:20, 5:30] += 2.0                       # a step edge
    pred = (target + torch.randn(target.shape, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    plain = adopt.PlainDepthLoss(blur=preset == "hu_blurred")(pred, target)
    (plain_grad,) = torch.autograd.grad(plain, pred)
    fused = fastmde.depth_loss(pred, target, preset=preset)
    (fused_grad,) = torch.autograd.grad(fused, pred)
    torch.testing.assert_close(fused.double(), plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-10, atol=1e-14)


def test_plain_loss_float32_close_to_fastmde(adopt):
    g = torch.Generator().manual_seed(1)
    target = torch.rand(3, 1, 40, 56, generator=g) * 9 + 0.5
    pred = (target * (1 + 0.1 * torch.randn(target.shape, generator=g))).requires_grad_()
    plain = adopt.PlainDepthLoss(blur=True)(pred, target)
    fused = fastmde.depth_loss(pred, target, preset="hu_blurred")
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_encoder_has_torchvision_names(adopt):
    # fastmde's ResNetEncoder has torchvision's exact keys and shapes (no fc): so does the example's.
    from fastmde.models import ResNetEncoder

    ours = {k: tuple(v.shape) for k, v in adopt.ResNet34Encoder().state_dict().items()}
    reference = {k: tuple(v.shape) for k, v in ResNetEncoder(34).state_dict().items()}
    assert ours == reference


def test_plain_model_shapes_and_size_check(adopt):
    model = adopt.DepthUNet((64, 96)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 90, 130))
    assert out.shape == (1, 1, 90, 130)
    with pytest.raises(ValueError, match="divisible by 32"):
        adopt.DepthUNet((48, 64))


@pytest.mark.parametrize("loss", ["hu", "hu_blurred"])
def test_adopt_float64_trains_the_same(adopt, capsys, loss):
    # In float64 the plain project and the adopted one are compared directly: after three Adam
    # steps their weights and BatchNorm statistics agree to 1e-8 of the update, with all four
    # of the authors'-style blocks patched and the state_dict keys unchanged (main checks them).
    result = adopt.main(["--small", "--dtype", "float64", "--device", "cpu", "--loss", loss])
    assert result["agree"]
    assert max(result["fused_distance"]) < 1e-8
    assert result["replaced"] == {f"decoder.up{i}": "freeman2021_1x1" for i in range(1, 5)}
    assert result["skipped"] == {}
    assert abs(result["fused_losses"][0] - result["plain_losses"][0]) < 1e-12
    assert "the weights agree" in capsys.readouterr().out


def test_adopt_float32_trains_the_same(adopt):
    # float32: the adopted run ends as close to the float64 run as the plain float32 run does.
    result = adopt.main(["--small", "--device", "cpu"])
    assert result["agree"], result
    assert result["fused_losses"][0] == pytest.approx(result["plain_losses"][0], rel=1e-5)


def test_adopt_check_catches_another_training(adopt, monkeypatch):
    # The agreement check can fail: a loss that is not the plain one (the L1 depth term instead
    # of the log error) trains differently and is reported as not agreeing.
    real = adopt.adopt
    monkeypatch.setattr(adopt, "adopt", lambda model, preset: real(model, "l1_hu_blurred"))
    result = adopt.main(["--small", "--dtype", "float64", "--device", "cpu", "--steps", "2"])
    assert not result["agree"]
    assert min(result["fused_distance"]) > 1e-4


def test_bench_dropin_section_rows(monkeypatch):
    # bench/sections/dropin.py times examples/adopt.py's step before and after adoption: at a
    # tiny setting it gives one plain and one fastmde row with the speed-up and peak memory
    # (the numbers themselves are measured by `python bench/run.py --only dropin`, not here).
    import sys

    bench = os.path.join(os.path.dirname(EXAMPLE), os.pardir, "bench")
    monkeypatch.syspath_prepend(os.path.abspath(bench))
    for name in [m for m in sys.modules if m == "common" or m.startswith("sections")]:
        monkeypatch.delitem(sys.modules, name)
    from common import Context
    from sections import dropin

    monkeypatch.setattr(dropin, "INPUT", (48, 80))
    monkeypatch.setattr(dropin, "settings", lambda device, full: [(1, (32, 64))])
    ctx = Context(devices=["cpu"])
    dropin.run(ctx, "cpu")
    assert [r["impl"] for r in ctx.rows] == ["plain", "fastmde"]
    plain, fused = ctx.rows
    assert plain["vs_eager"] == 1.0 and fused["vs_eager"] == pytest.approx(plain["total_ms"] / fused["total_ms"])
    assert "replaced 4 blocks" in fused["note"]
    assert all(r["peak_mb"] is None or r["peak_mb"] > 0 for r in ctx.rows)
