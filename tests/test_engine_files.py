"""KITTI-style file lists and folders of your own data through the ``fastmde`` command: train,
evaluate under each KITTI protocol, predict; the ImageNet start; the options' refusals.

The KITTI tree is written by the tests at KITTI's real frame sizes (375x1242 and 370x1226, two
drives), so the kb crop and the 352x704 training crops run as on the real data; the model is
tiny (ResNet18, 32x64 inside) and trains two steps.
"""
import json
import os
import urllib.error

import numpy as np
import pytest
import torch

import fastmde
from fastmde.cli import console_main, main
from _data_files import pattern_image, sparse_depth, write_kitti_tree
from engine_helpers import one_thread  # noqa: F401 (autouse: one torch thread for this module)
from test_imagenet_weights import torchvision_state

KITTI_SIZES = ((375, 1242), (370, 1226))
MODEL = ["--model", "unet34-k3-1x1", "--encoder", "18", "--size", "32x64", "--device", "cpu", "--amp", "none",
         "--workers", "0", "--no-progress", "--epochs", "1", "--batch-size", "2", "--eval-batch-size", "2",
         "--lr", "1e-3"]




@pytest.fixture(scope="module")
def imagenet_home(tmp_path_factory):
    """A torch hub cache holding a torchvision-format resnet18 under its published name."""
    home = tmp_path_factory.mktemp("torch-home")
    folder = home / "hub" / "checkpoints"
    os.makedirs(folder)
    state = torchvision_state(18, seed=1)
    torch.save(state, folder / "resnet18-f37072fd.pth")
    return str(home), state


@pytest.fixture
def offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    train = write_kitti_tree(root, KITTI_SIZES, frames_per_size=3, none_lines=1, name="eigen_train.txt")
    test = write_kitti_tree(root / "test", KITTI_SIZES, frames_per_size=1, none_lines=1, name="eigen_test.txt")
    return train, test


@pytest.fixture(scope="module")
def kitti_run(kitti, imagenet_home, tmp_path_factory):
    """``fastmde train --dataset kitti`` on the list, with the default start (ImageNet, from the cache)."""
    (list_path, image_root, depth_root, _), _ = kitti
    out = str(tmp_path_factory.mktemp("runs") / "kitti")
    home, state = imagenet_home
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", home)
    mp.setattr(torch.hub, "urlopen", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a download")))
    try:
        with pytest.warns(UserWarning, match=r"eigen_train.txt: 1 of 7 lines have no depth map \(None\): left out"):
            code = main(["train", "--data-format", "list", "--dataset", "kitti", "--data", list_path,
                         "--image-root", image_root, "--depth-root", depth_root, "--loss", "silog",
                         "--val-fraction", "0.3", "--max-steps", "2", "--out", out, *MODEL])
    finally:
        mp.undo()
    assert code == 0
    return out, state


def test_kitti_list_trains_with_the_kitti_setting(kitti_run, capfd):
    out, state = kitti_run
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["step"] == 2 and summary["stopped"] == "max_steps"
    cfg = summary["config"]
    assert (cfg["dataset"], cfg["data_format"], cfg["pretrained"], cfg["loss"]) == ("kitti", "list", "auto", "silog")
    assert np.isfinite(summary["history"][-1]["train_loss"])        # masks: only the measured pixels count
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    assert ckpt["model_spec"]["overrides"]["aspect"] == "keep"        # 352x1216 frames at the crops' scale
    record = json.loads(open(os.path.join(out, "log.jsonl")).readline())
    assert record["val"]["count"] == 2                                 # the two validation frames scored
    model = fastmde.load(out)
    assert model.aspect == "keep"


def test_the_kitti_run_started_from_imagenet(kitti, imagenet_home, tmp_path, monkeypatch, capfd):
    """--pretrained auto on real data: torchvision's ImageNet weights (from the pre-filled cache)."""
    from fastmde.engine import TrainConfig
    from fastmde.engine.train import Trainer

    (list_path, image_root, depth_root, _), _ = kitti
    home, state = imagenet_home
    monkeypatch.setenv("TORCH_HOME", home)
    cfg = TrainConfig(data_format="list", dataset="kitti", data=list_path, image_root=image_root,
                      depth_root=depth_root, model="unet34-k3-1x1", encoder=18, size=(32, 64), device="cpu",
                      amp="none", workers=0, out=str(tmp_path / "r"), progress=False, val_fraction=0.3)
    lines = []
    with pytest.warns(UserWarning, match="left out"):
        trainer = Trainer(cfg, log=lines.append)
    assert any("encoder: torchvision's ImageNet weights, as the paper (resnet18-f37072fd.pth in "
               f"{os.path.join(home, 'hub', 'checkpoints')})" in line for line in lines)
    encoder = trainer.model.net.encoder.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in state.items() if not k.startswith("fc."))
    # the training view: random 352x704 crops of the kb-cropped frames, uint8, sparse depth kept
    batch = next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=2,
                                                  collate_fn=fastmde.data.collate_frames)))
    assert batch["image"].shape == (2, 3, 352, 704) and batch["depth"].shape == (2, 1, 352, 704)
    assert batch["focal"].tolist() in ([721.5377] * 2, [707.0493] * 2, [721.5377, 707.0493], [707.0493, 721.5377])
    assert 0 < (batch["depth"] > 0).float().mean() < 0.3
    assert all(trainer.val_set[i]["image"].shape == (3, 352, 1216) for i in range(len(trainer.val_set)))
    assert trainer.protocol == "kitti_garg_kb"


@pytest.mark.parametrize("protocol, shapes", [("kitti_garg", KITTI_SIZES), ("kitti_eigen", KITTI_SIZES),
                                              ("kitti_garg_kb", ((352, 1216),))])
def test_kitti_evaluates_under_each_protocol(kitti_run, kitti, protocol, shapes, tmp_path, capsys):
    """Whole frames for the full-frame protocols, the kb crop for kitti_garg_kb (BTS's two ways);
    the None line of the test list is left out."""
    out, _ = kitti_run
    _, (test_list, image_root, depth_root, frames) = kitti
    result = tmp_path / "eval.json"
    with pytest.warns(UserWarning, match=r"eigen_test.txt: 1 of 3 lines have no depth map"):
        assert main(["eval", "--checkpoint", out, "--data", test_list, "--image-root", image_root,
                     "--depth-root", depth_root, "--protocol", protocol, "--device", "cpu", "--amp", "none",
                     "--out", str(result)]) == 0
    written = json.load(open(result))
    assert written["protocol"]["name"] == protocol and written["items"] == len(frames) == 2
    metrics = written["metrics"]
    assert metrics["count"] == 2 and all(np.isfinite(metrics[k]) for k in ("rms", "rel", "delta1"))
    # the same numbers from the public metric function on the frames the protocol scores
    from fastmde.engine.protocols import get_protocol
    from fastmde.data import FileList

    model = fastmde.load(out)
    with pytest.warns(UserWarning, match="left out"):
        ds = FileList(test_list, image_root=image_root, depth_root=depth_root, depth_scale=256, max_depth=80,
                      kb_crop=protocol.endswith("_kb"))
    metric = get_protocol(protocol).metrics()
    for i in range(len(ds)):
        item = ds[i]
        assert tuple(item["depth"].shape[-2:]) in shapes
        with torch.no_grad():
            pred = model(item["image"][None].float())
        metric.update(pred, item["depth"][None], mask=item["depth"][None] > 0)
    direct = metric.compute()
    for k in ("rms", "rel", "delta1"):
        assert metrics[k] == pytest.approx(float(direct[k]), rel=1e-5), k


def test_kitti_predicts_every_listed_photo(kitti_run, kitti, tmp_path, capsys):
    """The list's None line too (prediction needs no ground truth); kb-cropped as the run trained."""
    out, _ = kitti_run
    _, (test_list, image_root, _, _) = kitti
    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", out, "--data-format", "list", "--data", test_list, "--image-root",
                 image_root, "--out", str(pred), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "wrote 3 depth maps" in err and "clamped to 0.001-80 m" in err     # KITTI's range, not NYU's 10 m
    written = sorted(os.path.relpath(os.path.join(d, f), pred) for d, _, fs in os.walk(pred) for f in fs)
    assert len(written) == 6 and all(w.endswith((".png", ".npy")) for w in written)
    depth = np.load(os.path.join(pred, [w for w in written if w.endswith(".npy")][0]))
    assert depth.shape == (352, 1216) and depth.dtype == np.float32
    whole = tmp_path / "whole"
    assert main(["predict", "--checkpoint", out, "--data-format", "list", "--data", test_list, "--image-root",
                 image_root, "--no-kb-crop", "--out", str(whole), "--device", "cpu"]) == 0
    shapes = sorted(np.load(os.path.join(d, f)).shape for d, _, fs in os.walk(whole) for f in fs if f.endswith(".npy"))
    assert shapes == [(370, 1226), (375, 1242), (375, 1242)]


def _folder(root, sizes):
    """Photos and depth maps (16-bit PNG in millimetres, and .npy metres) of two frame sizes."""
    from PIL import Image

    for k, (h, w) in enumerate(sizes):
        sub = f"room{k % 2}"
        os.makedirs(root / "img" / sub, exist_ok=True)
        os.makedirs(root / "dep" / sub, exist_ok=True)
        Image.fromarray(pattern_image(h, w, k).transpose(1, 2, 0)).save(root / "img" / sub / f"{k:04d}.jpg")
        d = sparse_depth(h, w, k) / 8          # 0.25-9 m, indoor-like
        if k % 2:
            np.save(root / "dep" / sub / f"{k:04d}.npy", d)
        else:
            Image.fromarray(np.round(d * 1000).astype(np.uint16)).save(root / "dep" / sub / f"{k:04d}.png")
    return str(root / "img"), str(root / "dep")


def test_a_folder_of_pairs_trains(tmp_path, capsys):
    images, depths = _folder(tmp_path, [(48, 72), (50, 75)] * 3)
    out = str(tmp_path / "run")
    assert main(["train", "--data-format", "folder", "--data", images, "--depth-root", depths, "--train-crop",
                 "40x64", "--pretrained", "none", "--loss", "l1", "--max-steps", "2", "--val-fraction", "0.3",
                 "--out", out, *MODEL]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["step"] == 2 and summary["config"]["depth_scale"] is None     # nyu's 1000 in effect
    assert "encoder: random initialisation (--pretrained none)" in capsys.readouterr().err
    result = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", out, "--data", images, "--depth-root", depths, "--device", "cpu",
                 "--out", str(result)]) == 0
    assert json.load(open(result))["metrics"]["count"] == 6          # both sizes scored, each at its own


def test_frames_of_two_sizes_without_a_crop_are_refused_by_name(tmp_path, capsys):
    images, depths = _folder(tmp_path, [(48, 72), (50, 75)] * 3)
    code = console_main(["train", "--data-format", "folder", "--data", images, "--depth-root", depths,
                         "--pretrained", "none", "--max-steps", "1", "--val-fraction", "0.2",
                         "--out", str(tmp_path / "run"), *MODEL, "--batch-size", "4"])   # 4 of 5: both sizes
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("fastmde: error: training frames of different sizes (48x72, 50x75) "
                                            "cannot form one batch: give a training crop (fastmde train "
                                            "--train-crop HxW)")


def test_pretrained_imagenet_names_the_missing_file(tmp_path, monkeypatch, offline, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-home"))
    code = console_main(["train", "--pretrained", "imagenet", "--max-steps", "1", "--out", str(tmp_path / "r"),
                         *MODEL])
    err = capsys.readouterr().err.strip().splitlines()
    folder = os.path.join(str(tmp_path / "empty-home"), "hub", "checkpoints")
    assert code == 2 and len(err) == 1
    assert f"put resnet18-f37072fd.pth (from https://download.pytorch.org/models/resnet18-f37072fd.pth) in {folder}" \
        in err[0] and "could not be downloaded" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["--image-root", "x"], r"image_root \(--image-root\): only for --data-format list or folder, and --data-format "
                            r"is synthetic"),
    (["--data-format", "csv", "--data", "d", "--dataset", "kitti"], r"--dataset kitti reads its files through "
                                                                    r"--data-format list or folder, not csv"),
    (["--data-format", "folder", "--data", "d"], r"--data-format folder needs --depth-root"),
    (["--data-format", "folder", "--data", "d", "--depth-root", "e", "--image-root", "x"],
     r"image_root \(--image-root\) is for --data-format list"),
    (["--data-format", "list", "--data", "d", "--depth-scale", "0"], r"depth_scale \(--depth-scale\) must be a "
                                                                      r"positive number"),
    (["--train-crop", "4x4"], r"train_crop \(--train-crop\) must be at least 8x8"),
])
def test_file_options_are_refused_where_they_do_not_apply(argv, message, tmp_path, capsys):
    import re

    assert console_main(["train", *argv, "--out", str(tmp_path / "r")]) == 2
    assert re.search(message, capsys.readouterr().err)
