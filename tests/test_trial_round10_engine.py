"""Faults of the engine, the command line and the export noticed in a review, each with the right
value: export refused any module with a non-finite buffer (a -inf attention-style mask) and its
verification took -inf for +inf; the NaN/inf warning of checkpoint.load pointed at fastmde's own
line; parse_size and the argument checks quoted a 2-D array over several lines; ``predict
--data-format list|folder`` read the checkpoint twice; a run whose predictions exploded to huge
finite values trained on silently."""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fastmde
from engine_helpers import cache, fastmde_cli, tiny_config  # noqa: F401 (cache: fixture)
from test_input_edges_round8 import _checkpoint, _one_line


# ---------------------------------------------------------------- 1. export: buffers that hold inf on purpose

class BinsWithMask(nn.Module):
    """AdaBins-style depth: a softmax over per-pixel bin logits times the bin centres, one bin
    masked out by a -inf buffer, and an unbounded clamp (an inf buffer)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("mask", torch.tensor([0.0, 0.0, -math.inf, 0.0]).view(1, 4, 1, 1))
        self.register_buffer("centres", torch.tensor([1.0, 2.0, 50.0, 4.0]).view(1, 4, 1, 1))
        self.register_buffer("ceiling", torch.tensor(math.inf))

    def forward(self, x):
        weights = (self.conv(x / 255) + self.mask).softmax(1)
        return torch.clamp((weights * self.centres).sum(1, keepdim=True), max=self.ceiling)


class FarSky(nn.Module):
    """Bright pixels (mean above 200) marked infinitely far through an inf buffer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.register_buffer("far", torch.tensor(math.inf))

    def forward(self, x):
        depth = nn.functional.softplus(self.conv(x / 255))
        return torch.where(x.mean(1, keepdim=True) > 200, self.far, depth)


def test_export_takes_a_module_whose_own_buffers_hold_inf(tmp_path):
    """It refused both ("1 weight tensor holds NaN/inf (mask; a diverged run?)")."""
    pytest.importorskip("onnxruntime")
    from fastmde.export import _images, export

    model = BinsWithMask()
    for name in ("bins.onnx", "bins.pt2"):
        report = export(model, tmp_path / name, size=(8, 10), quiet=True)
        assert [c.shape for c in report.checks] == [(2, 3, 8, 10), (1, 3, 7, 10)]
        assert report.relative <= 1e-4
    loaded = torch.export.load(str(tmp_path / "bins.pt2")).module()
    x = _images(1, (9, 12), seed=5)
    with torch.no_grad():
        ref = model(x)
    assert torch.isfinite(ref).all() and ref.min() >= 1 and ref.max() <= 4   # the masked 50 m bin never counts
    torch.testing.assert_close(loaded(x), ref, rtol=1e-5, atol=1e-5)

    sky = FarSky()
    report = export(sky, tmp_path / "sky.pt2", size=(8, 10), quiet=True)
    with torch.no_grad():
        example = sky(_images(2, (8, 10), seed=0))
    assert torch.isinf(example).any() and torch.isfinite(example).any()   # the check compared infinities too
    assert report.relative == 0.0
    out = torch.export.load(str(tmp_path / "sky.pt2")).module()(_images(2, (8, 10), seed=0))
    assert torch.equal(out, example)


def test_export_verification_tells_minus_inf_from_inf(tmp_path, monkeypatch):
    """An export giving -inf where the model gives +inf passed (only finiteness was compared)."""
    import sys

    from fastmde.export import ExportError, _compare, export

    export_module = sys.modules["fastmde.export"]     # fastmde.export is the function

    inf = math.inf
    assert _compare(torch.tensor([[inf, 1.0, -inf]]), torch.tensor([[inf, 1.0, -inf]])) == (0.0, 0.0)
    assert _compare(torch.tensor([[-inf, 1.0]]), torch.tensor([[inf, 1.0]])) == (inf, inf)
    assert _compare(torch.tensor([[inf, 1.5]]), torch.tensor([[inf, 1.0]])) == (0.5, 0.5)

    real_runner = export_module._run_pt2

    def flipped(path):
        run = real_runner(path)
        return lambda x: torch.where(torch.isinf(run(x)), -run(x), run(x))

    monkeypatch.setattr(export_module, "_run_pt2", flipped)
    with pytest.raises(ExportError) as info:
        export(FarSky(), tmp_path / "sky.pt2", size=(8, 10), quiet=True)
    assert _one_line(info) == ("the exported model does not match the model on a 2x3x8x10 input: max |difference| "
                               "inf m, relative inf > tolerance 0.0001; nothing was written")
    assert os.listdir(tmp_path) == []


def test_export_still_refuses_a_diverged_model(cache, tmp_path, capsys):
    """Parameters and BatchNorm running statistics holding NaN/inf are a diverged run (refused, by the
    API and the command); a model predicting no finite value at all is refused too."""
    from fastmde.export import ExportError, export

    bn = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.BatchNorm2d(1), nn.Softplus()).eval()
    bn[1].running_var.fill_(math.inf)
    with pytest.raises(ExportError, match=r"^the model: 1 weight tensor holds NaN/inf \(1.running_var; a diverged "
                                          r"run\?\): its export would predict NaN everywhere; nothing was written$"):
        export(bn, tmp_path / "m.pt2", size=(8, 10), quiet=True)
    nan_buffer = BinsWithMask()
    nan_buffer.centres[0, 1] = math.nan      # a buffer, not a statistic: every prediction NaN
    with pytest.raises(ExportError) as info:
        export(nan_buffer, tmp_path / "m.pt2", size=(8, 10), quiet=True)
    assert _one_line(info) == ("the model's prediction of the 2x3x8x10 example holds no finite value (NaN or inf at "
                               "every pixel: a buffer holding NaN?): nothing was written")

    def statistics_only(state):
        state["net.encoder.bn1.running_var"][1] = math.inf

    path = _checkpoint(tmp_path / "last.pt", cache, damage=statistics_only)
    status, _, err = fastmde_cli(["export", path, "--out", tmp_path / "m.pt2", "--size", "32x48"], capsys)
    assert status == 2 and err == (f"fastmde: error: checkpoint {path!r}: 1 weight tensor holds NaN/inf "
                                   "(net.encoder.bn1.running_var; a diverged run?): its export would predict NaN "
                                   "everywhere; nothing was written\n"), err
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


# ---------------------------------------------------------------- 2. the NaN/inf warning points at the caller

def _nan_head(state):
    state["net.head_conv1.weight"][0, 0, 0, 0] = math.nan


@pytest.mark.parametrize("loader", ["fastmde.load", "checkpoint.load", "load_checkpoint_argument"])
def test_the_nonfinite_weights_warning_points_at_the_callers_line(cache, tmp_path, loader):
    """It named fastmde/__init__.py (fastmde.load) or engine/checkpoint.py."""
    from fastmde.engine import checkpoint

    path = _checkpoint(tmp_path / "last.pt", cache, damage=_nan_head)
    load = {"fastmde.load": fastmde.load, "checkpoint.load": checkpoint.load,
            "load_checkpoint_argument": lambda p: checkpoint.load_checkpoint_argument(p, "--checkpoint")}[loader]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load(path)
    told = [w for w in caught if "NaN/inf" in str(w.message)]
    assert len(told) == 1, [str(w.message) for w in caught]
    assert told[0].filename == __file__, told[0].filename


# ---------------------------------------------------------------- 3. values quoted on one line

SQUARE = np.array([[288, 384], [288, 384]])


@pytest.mark.parametrize("call, said", [
    (lambda: fastmde.models.parse_size(SQUARE), ValueError(
        "size must be HxW such as 288x384 or a pair (H, W), got array([[288, 384], [288, 384]])")),
    (lambda: fastmde.models.parse_size(torch.tensor(SQUARE), what="--size"), ValueError(
        "--size must be HxW such as 288x384 or a pair (H, W), got tensor([[288, 384], [288, 384]])")),
    (lambda: fastmde.models.parse_size((SQUARE, 3)), ValueError(
        "size must be HxW such as 288x384 or a pair (H, W) of whole numbers, got (array([[288, 384], [288, 384]]), 3)")),
    (lambda: fastmde.models.parse_size(np.zeros((40, 40))), ValueError(
        "size must be HxW such as 288x384 or a pair (H, W), got array([[0., 0., 0., ..., 0., 0., 0.], [0., 0., "
        "0., ..., 0., 0., 0.], [0., 0.,...")),     # cut at 80 characters
])
def test_parse_size_quotes_a_2d_array_on_one_line(call, said):
    with pytest.raises(type(said)) as info:
        call()
    assert _one_line(info) == str(said)


def test_the_argument_checks_quote_a_2d_array_on_one_line():
    from fastmde._checks import bool_argument, integer_argument, real_argument
    from fastmde.export import check_options

    cases = [
        (lambda: integer_argument(SQUARE, "channels"), TypeError,
         "channels must be an integer, got array([[288, 384], [288, 384]]) (ndarray)"),
        (lambda: integer_argument(torch.eye(2, dtype=torch.bool), "channels"), TypeError,
         "channels must be an integer, got the bool tensor([[ True, False], [False,  True]])"),
        (lambda: real_argument(SQUARE / 2, "lr"), TypeError,
         "lr must be a real number, got array([[144., 192.], [144., 192.]]) (ndarray)"),
        (lambda: real_argument(torch.ones(2, 2), "lr"), TypeError,
         "lr must be a real number, got tensor([[1., 1.], [1., 1.]]) (Tensor)"),
        (lambda: bool_argument(SQUARE, "quiet"), TypeError,
         "quiet must be True or False, got array([[288, 384], [288, 384]]) (ndarray)"),
        (lambda: check_options("pt2", (8, 8), 18, SQUARE), ValueError,
         "tolerance must be a positive finite number, got array([[288, 384], [288, 384]])"),
        (lambda: check_options(SQUARE, (8, 8), 18, 1e-4), ValueError,
         "format must be one of onnx, pt2, got array([[288, 384], [288, 384]])"),
    ]
    for call, kind, said in cases:
        with pytest.raises(kind) as info:
            call()
        assert _one_line(info) == said


def test_a_damaged_checkpoint_quotes_its_2d_version_on_one_line(tmp_path):
    from fastmde.engine.checkpoint import FORMAT, CheckpointError

    path = str(tmp_path / "v.pt")
    torch.save({"format": FORMAT, "version": torch.ones(2, 2, dtype=torch.int64), "model_spec": {}, "model": {}},
               path)
    with pytest.raises(CheckpointError) as info:
        fastmde.load(path)
    assert _one_line(info) == (f"{path!r} is a damaged fastmde checkpoint: its version is tensor([[1, 1], [1, 1]]) "
                               "(a whole number from 1)")


# ---------------------------------------------------------------- 4. predict reads the checkpoint once

def test_predict_from_a_list_or_a_folder_reads_the_checkpoint_once(cache, tmp_path, capsys, monkeypatch):
    """--data-format list and folder read it twice (once for the reader options, once to predict)."""
    path = _checkpoint(tmp_path / "best.pt", cache)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    (tmp_path / "photos.txt").write_text(f"{photos / 'a.png'} None\n{photos / 'b.png'} None\n")
    status, _, err = fastmde_cli(["predict", photos / "a.png", photos / "b.png", "--checkpoint", path,
                                  "--out", tmp_path / "plain", "--device", "cpu"], capsys)
    assert status == 0, err

    reads = []
    real_load = torch.load

    def counting(f, *args, **kwargs):
        if os.fspath(f) == path:
            reads.append(f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    for fmt, data in (("list", tmp_path / "photos.txt"), ("folder", photos)):
        reads.clear()
        out = tmp_path / fmt
        status, _, err = fastmde_cli(["predict", "--data-format", fmt, "--data", data, "--checkpoint", path,
                                      "--out", out, "--device", "cpu"], capsys)
        assert status == 0, err
        assert len(reads) == 1, (fmt, reads)
        for name in ("a", "b"):
            assert np.array_equal(np.load(out / f"{name}.npy"), np.load(tmp_path / "plain" / f"{name}.npy")), fmt


# ---------------------------------------------------------------- 5. a run exploding to huge finite depths

def _run_with_predictions(cache_dir, out, value=None, spikes=None):
    """A one-step tiny run whose network's output is replaced by ``value`` metres everywhere (its
    graph kept), or with the first ``spikes`` rows of every map set to 1e30 m; returns the trainer
    after fit (or raises)."""
    from fastmde.engine import Trainer

    trainer = Trainer(tiny_config(cache_dir, str(out), max_steps=1, epochs=1), overwrite=True,
                      log=lambda text: None)

    def exploded(module, inputs, pred):
        if not module.training:      # validation and test score the network as it is
            return pred
        if value is not None:
            return pred * 0 + value
        far = torch.zeros_like(pred)
        far[..., :spikes, :] = 1e30
        return pred + far

    trainer.train_model.register_forward_hook(exploded)
    trainer.fit()
    return trainer


def test_training_stops_when_predictions_explode_to_huge_finite_depths(cache, tmp_path):
    """The loss (hu_blurred: a logarithm) stays finite at 1e30 m and the run trained on silently."""
    from fastmde.engine.train import DIVERGED_DEPTH_M, TrainingDiverged

    assert DIVERGED_DEPTH_M == 1e6
    for value, shown in ((1e30, "1e+30"), (2e6, "2e+06")):
        with pytest.raises(TrainingDiverged) as info:
            _run_with_predictions(cache, tmp_path / f"run{shown}", value=value)
        assert _one_line(info) == (f"predictions reached {shown} m (median magnitude) at step 0, beyond any depth in "
                                   "metres (> 1e+06 m): the run diverged: lower --lr")   # float32 already: no --amp advice
    # below the bound, and a few wild rows (under half the map), train on
    assert _run_with_predictions(cache, tmp_path / "far", value=5e5).step == 1
    assert _run_with_predictions(cache, tmp_path / "spikes", spikes=3).step == 1


def test_the_divergence_advice_names_only_a_precision_the_run_does_not_use(cache, tmp_path):
    """Every divergence message said "or use --amp none / bf16", a bf16 or float32 run included."""
    from fastmde.engine import Trainer

    trainer = Trainer(tiny_config(cache, str(tmp_path / "run"), max_steps=1, epochs=1), overwrite=True,
                      log=lambda text: None)
    expected = {None: "lower --lr", torch.bfloat16: "lower --lr, or use --amp none",
                torch.float16: "lower --lr, or use --amp bf16 or none"}
    for amp, advice in expected.items():
        trainer.amp_dtype = amp
        assert trainer.divergence_advice() == advice
