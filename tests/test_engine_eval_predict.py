"""Evaluation protocols, prediction files, fastmde.load and checkpoint errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import fastmde
from engine_helpers import synthetic_cache, tiny_config
from fastmde.cli import main
from fastmde.engine import CheckpointError, read_checkpoint, train
from fastmde.engine.checkpoint import atomic_save
from fastmde.engine.datasets import open_split
from fastmde.engine.protocols import PROTOCOLS


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cache = synthetic_cache(tmp_path_factory)
    out = str(tmp_path_factory.mktemp("trained"))
    train(tiny_config(cache, out, epochs=1))
    return out, cache


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_eval_cli_matches_direct_metrics(run_dir, name, tmp_path, capsys):
    out, cache = run_dir
    json_path = str(tmp_path / "metrics.json")
    assert main(["eval", "--checkpoint", os.path.join(out, "last.pt"), "--protocol", name, "--device", "cpu",
                 "--out", json_path, "--batch-size", "3"]) == 0   # data: the checkpoint's
    result = json.load(open(json_path))
    assert result["protocol"]["name"] == name and result["items"] == 4
    printed = capsys.readouterr().out
    assert f"{result['metrics']['delta1']:.4f}" in printed
    # The same numbers computed here from the protocol's definition, image by image.
    p = PROTOCOLS[name]
    model = fastmde.load(os.path.join(out, "last.pt"))
    test = open_split("synthetic", None, "val", cache_dir=cache, synthetic_train=10, synthetic_val=4,
                      synthetic_size=(48, 64))
    with torch.no_grad():
        images = torch.stack([test[i]["image"] for i in range(len(test))]).float()
        target = torch.stack([test[i]["depth"] for i in range(len(test))])
        pred = model(images)
        if p.flip:
            pred = 0.5 * (pred + model(images.flip(-1)).flip(-1))
    expected = fastmde.depth_metrics(pred, target, mask=target > 0, min_depth=p.min_depth, max_depth=p.max_depth,
                                     crop=p.crop, aggregate=p.aggregate)
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(float(value), rel=1e-5, abs=1e-6), key


def test_protocols_differ_where_documented():
    assert PROTOCOLS["paper"].aggregate == "per_image" and PROTOCOLS["paper"].crop is None
    assert PROTOCOLS["bts"].crop == "eigen" and PROTOCOLS["bts"].aggregate == "per_image"
    assert PROTOCOLS["densedepth"].aggregate == "pooled" and PROTOCOLS["densedepth"].flip
    assert PROTOCOLS["hu"].max_depth is None


def test_predict_writes_png_and_npy(run_dir, tmp_path):
    from PIL import Image

    out, _ = run_dir
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    shapes = {"a": (40, 56), "b": (40, 56), "c": (33, 47)}   # two sizes: batched by size
    for stem, (h, w) in shapes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images_dir / f"{stem}.png")
    pred_dir = tmp_path / "pred"
    assert main(["predict", str(images_dir), "--checkpoint", out, "--out", str(pred_dir), "--batch-size", "2",
                 "--device", "cpu"]) == 0
    assert sorted(os.listdir(pred_dir)) == ["a.npy", "a.png", "b.npy", "b.png", "c.npy", "c.png"]
    model = fastmde.load(out)
    assert not model.training
    for stem, (h, w) in shapes.items():
        depth = np.load(pred_dir / f"{stem}.npy")
        assert depth.shape == (h, w) and depth.dtype == np.float32
        image = torch.from_numpy(np.array(Image.open(images_dir / f"{stem}.png"))).permute(2, 0, 1)
        with torch.no_grad():
            direct = model(image[None].float())[0, 0].numpy()
        np.testing.assert_allclose(depth, direct, rtol=1e-4, atol=1e-5)
        png = Image.open(pred_dir / f"{stem}.png")
        assert png.mode == "RGB" and png.size == (w, h)
        assert len(np.unique(np.asarray(png).reshape(-1, 3), axis=0)) > 1


def test_predict_rejects_missing_and_unreadable_inputs(run_dir, tmp_path):
    out, _ = run_dir
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["predict", str(tmp_path / "nope.png"), "--checkpoint", out, "--out", str(tmp_path / "p")])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        main(["predict", str(bad), "--checkpoint", out, "--out", str(tmp_path / "p")])


class ForeignThing:
    """Stands for a class of another library pickled into its checkpoints."""

    def __init__(self):
        self.weights = torch.ones(2)


@pytest.mark.parametrize("kind,message", [
    ("random", "cannot be read as a PyTorch file"),
    ("state_dict", "plain state_dict"),
    ("lightning", "PyTorch Lightning"),
    ("other_dict", "without the fastmde format marker"),
    ("pickled_class", "pickled Python objects"),
    ("tensor", "is a Tensor"),
    ("future_version", "version 99"),
])
def test_bad_and_foreign_checkpoints_raise_clear_errors(run_dir, tmp_path, kind, message):
    out, _ = run_dir
    path = str(tmp_path / "ckpt.pt")
    if kind == "random":
        open(path, "wb").write(os.urandom(4096))
    elif kind == "state_dict":
        torch.save(fastmde.load(out).state_dict(), path)
    elif kind == "lightning":
        torch.save({"state_dict": {"w": torch.ones(1)}, "pytorch-lightning_version": "2.0", "epoch": 3}, path)
    elif kind == "other_dict":
        torch.save({"weights": torch.ones(1), "step": 3}, path)
    elif kind == "pickled_class":
        torch.save({"model": ForeignThing()}, path)
    elif kind == "tensor":
        torch.save(torch.ones(3), path)
    elif kind == "future_version":
        ckpt = read_checkpoint(os.path.join(out, "last.pt"))
        ckpt["version"] = 99
        ckpt.pop("path")
        torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=message):
        fastmde.load(path)
    with pytest.raises(CheckpointError, match=message):
        main(["eval", "--checkpoint", path])


def test_missing_checkpoint_and_mismatched_weights(run_dir, tmp_path):
    out, _ = run_dir
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastmde.load(str(tmp_path / "missing.pt"))
    ckpt = read_checkpoint(os.path.join(out, "last.pt"))
    ckpt.pop("path")
    ckpt["model_spec"] = dict(ckpt["model_spec"], overrides={"encoder": 34})
    path = str(tmp_path / "mismatch.pt")
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="do not fit model"):
        fastmde.load(path)


def test_atomic_save_never_leaves_half_a_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    atomic_save({"a": torch.ones(3)}, path)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert os.listdir(tmp_path) == ["ckpt.pt"]           # no temporary file left behind
    assert torch.equal(torch.load(path)["a"], torch.ones(3))  # the old checkpoint is intact
