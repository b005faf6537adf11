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
    test = open_split("synthetic", None, "val", cache_dir=cache, synthetic_train=10, synthetic_test=4,
                      synthetic_size=(48, 64))
    with torch.no_grad():
        images = torch.stack([test[i]["image"] for i in range(len(test))]).float()
        target = torch.stack([test[i]["depth"] for i in range(len(test))])
        pred = model(images)
        if p.flip:
            pred = 0.5 * (pred + model(images.flip(-1)).flip(-1))
    expected = fastmde.depth_metrics(pred, target, mask=target > 0, **p.metric_options())
    for key, value in expected.items():
        # nan_ok: protocols without a clamp give NaN log10 for an untrained model's negative depths
        assert result["metrics"][key] == pytest.approx(float(value), rel=1e-5, abs=1e-6, nan_ok=True), key


def test_protocols_differ_where_documented():
    assert set(PROTOCOLS["paper"].aggregate.values()) == {"per_image"} and PROTOCOLS["paper"].crop is None
    assert PROTOCOLS["bts"].crop == "eigen" and set(PROTOCOLS["bts"].aggregate.values()) == {"per_image"}
    assert set(PROTOCOLS["densedepth"].aggregate.values()) == {"pooled"} and PROTOCOLS["densedepth"].flip
    assert PROTOCOLS["hu"].max_depth is None


def test_predict_writes_png_and_npy(run_dir, tmp_path):
    from PIL import Image

    from fastmde.engine.pictures import bar_layout, colourise

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
        # clamped as the fastmde protocol clamps before scoring (an untrained net predicts <= 0 too)
        np.testing.assert_allclose(depth, np.clip(direct, 1e-3, 10.0), rtol=1e-4, atol=1e-5)
        png = Image.open(pred_dir / f"{stem}.png")
        bar = bar_layout(h)
        assert png.mode == "RGB" and png.size == (w + bar["width"], max(h, bar["min_height"]))
        np.testing.assert_array_equal(np.asarray(png)[:h, :w], colourise(depth, 1e-3, 10.0))   # map at the top left
        assert len(np.unique(np.asarray(png).reshape(-1, 3), axis=0)) > 1


def test_predict_rejects_missing_and_unreadable_inputs(run_dir, tmp_path):
    out, _ = run_dir
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["predict", str(tmp_path / "nope.png"), "--checkpoint", out, "--out", str(tmp_path / "p")])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png: cannot be decoded as an image"):
        main(["predict", str(bad), "--checkpoint", out, "--out", str(tmp_path / "p")])
    assert not os.path.exists(tmp_path / "p")


def _direct_depth(model, image_hwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(image_hwc)).permute(2, 0, 1)[None].float())[0, 0].numpy()


def test_predict_sees_photos_as_shown(run_dir, tmp_path, capsys):
    """A JPEG stored 40 rows x 60 columns with EXIF Orientation=6 is shown 60 x 40: its depth map
    is 60 x 40 and predicted on the upright pixels."""
    from PIL import Image

    out, _ = run_dir
    stored = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6          # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "photo.jpg", quality=95, exif=exif)
    pred_dir = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "photo.jpg"), "--checkpoint", out, "--out", str(pred_dir),
                 "--device", "cpu"]) == 0
    assert "wrote 1 depth map " in capsys.readouterr().err
    with Image.open(tmp_path / "photo.jpg") as im:        # the decoded stored pixels, not turned
        decoded = np.asarray(im.convert("RGB"))
    assert decoded.shape == (40, 60, 3)
    upright = np.rot90(decoded, -1)                       # turned clockwise: 60 rows x 40 columns
    depth = np.load(pred_dir / "photo.npy")
    assert depth.shape == (60, 40)
    model = fastmde.load(out)
    np.testing.assert_allclose(depth, np.clip(_direct_depth(model, upright), 1e-3, 10.0), rtol=1e-4, atol=1e-5)
    from fastmde.engine.pictures import bar_layout

    bar = bar_layout(60)
    with Image.open(pred_dir / "photo.png") as png:     # (width, height), shown as stored; the bar to its right
        assert png.size == (40 + bar["width"], max(60, bar["min_height"])) and not png.getexif().get(0x0112)


def test_predict_output_names_are_unique_across_inputs(run_dir, tmp_path, monkeypatch, capsys):
    """``x/a.png y/a.png a_1.png``: three inputs, three results, each under its own relative path."""
    from PIL import Image

    out, _ = run_dir
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(2)
    images = {}
    for rel in ("x/a.png", "y/a.png", "a_1.png"):
        os.makedirs(os.path.dirname(rel) or ".", exist_ok=True)
        images[rel] = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(images[rel]).save(rel)
    assert main(["predict", "x/a.png", "y/a.png", "a_1.png", "--checkpoint", out, "--out", "pred",
                 "--device", "cpu"]) == 0
    assert "wrote 3 depth maps" in capsys.readouterr().err
    written = sorted(os.path.relpath(os.path.join(d, f), "pred") for d, _, fs in os.walk("pred") for f in fs)
    assert written == ["a_1.npy", "a_1.png", "x/a.npy", "x/a.png", "y/a.npy", "y/a.png"]
    model = fastmde.load(out)
    for rel, image in images.items():
        depth = np.load(os.path.join("pred", os.path.splitext(rel)[0] + ".npy"))
        np.testing.assert_allclose(depth, np.clip(_direct_depth(model, image), 1e-3, 10.0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.load("pred/x/a.npy"), np.load("pred/y/a.npy"))

    # A second run into the same folder refuses before writing anything, unless told to replace.
    stamp = os.path.getmtime("pred/x/a.npy")
    with pytest.raises(FileExistsError, match="a.*already exists.*--overwrite"):
        main(["predict", "x/a.png", "y/a.png", "a_1.png", "--checkpoint", out, "--out", "pred", "--device", "cpu"])
    assert os.path.getmtime("pred/x/a.npy") == stamp
    capsys.readouterr()
    assert main(["predict", "x/a.png", "y/a.png", "a_1.png", "--checkpoint", out, "--out", "pred", "--device", "cpu",
                 "--overwrite"]) == 0
    assert "wrote 3 depth maps (.png, .npy; clamped to 0.001-10 m) to pred, replacing 6 existing files" in capsys.readouterr().err
    assert sorted(os.listdir("pred")) == ["a_1.npy", "a_1.png", "x", "y"]


def test_predict_refuses_names_that_would_collide(run_dir, tmp_path, capsys):
    from PIL import Image

    out, _ = run_dir
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    pred = tmp_path / "pred"
    with pytest.raises(ValueError, match=r"a\.jpg.*a\.png.*both be written as a\.png / a\.npy.*nothing was written"):
        main(["predict", str(folder), "--checkpoint", out, "--out", str(pred), "--device", "cpu"])
    assert not pred.exists()
    # One file named twice (a folder and a file in it) is predicted once, and said so.
    assert main(["predict", str(folder / "b.png"), str(folder / "b.png"), "--checkpoint", out, "--out", str(pred),
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "1 input(s) named twice" in err and "wrote 1 depth map " in err
    assert sorted(os.listdir(pred)) == ["b.npy", "b.png"]
    # A result that would replace an input image is refused even with --overwrite.
    with pytest.raises(ValueError, match="would replace the input image"):
        main(["predict", str(folder / "b.png"), "--checkpoint", out, "--out", str(folder), "--device", "cpu",
              "--overwrite"])
    assert sorted(os.listdir(folder)) == ["a.jpg", "a.png", "b.png"]


def test_output_stems_mirror_paths_below_the_common_folder():
    from fastmde.engine.predict import output_stems

    assert output_stems(["photos/a.jpg", "photos/b.jpg"]) == ["a", "b"]
    assert output_stems(["x/a.png", "y/a.png", "a_1.png"]) == ["x/a", "y/a", "a_1"]
    assert output_stems(["/d/p/x/a.png", "/d/p/y/z/a.png"]) == ["x/a", "y/z/a"]
    assert output_stems(["one.jpeg"]) == ["one"]
    with pytest.raises(ValueError, match="both be written"):
        output_stems(["x/a.png", "x/a.JPG"])


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

def test_predict_clamps_as_evaluation_does(run_dir, tmp_path, monkeypatch, capsys):
    """A network's negative, huge and NaN outputs: the .npy and .png are clamped to the fastmde
    protocol's range (0.001-10 m) by default, or to --min-depth/--max-depth; --no-clamp keeps the
    raw output in the .npy; a NaN stays NaN and is drawn black (no depth)."""
    from PIL import Image

    from fastmde.engine import predict
    from fastmde.engine.pictures import NO_DEPTH, colourise

    out, _ = run_dir
    raw = np.array([[-2.0, 0.0, 5.0], [12.0, np.nan, 1e-4]], dtype=np.float32)
    monkeypatch.setattr(predict, "predict_images", lambda model, images, **kw: [raw.copy() for _ in images])
    Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    runs = {"default": ([], (1e-3, 10.0), True), "range": (["--min-depth", "1", "--max-depth", "4"], (1.0, 4.0), True),
            "raw": (["--no-clamp"], (1e-3, 10.0), False)}
    for name, (flags, (lo, hi), clamped) in runs.items():
        assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", out, "--out", str(tmp_path / name),
                     "--device", "cpu", *flags]) == 0
        depth = np.load(tmp_path / name / "a.npy")
        expected = np.clip(raw, lo, hi) if clamped else raw
        np.testing.assert_array_equal(depth, expected)
        picture = np.asarray(Image.open(tmp_path / name / "a.png"))[:2, :3]
        np.testing.assert_array_equal(picture, colourise(np.clip(raw, lo, hi), lo, hi))
        assert tuple(picture[1, 1]) == NO_DEPTH and tuple(picture[0, 0]) != NO_DEPTH   # NaN black, -2 m nearest
        message = capsys.readouterr().err
        assert (f"clamped to {lo:g}-{hi:g} m" if clamped else "raw in .npy") in message
