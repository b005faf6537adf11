"""Synthetic NYU-like scenes: determinism, geometry, depth range, files every reader reads."""
import os

import numpy as np
import pytest
import torch

from fastmde.data import (
    KINECT_INTRINSICS,
    NYUFrames,
    NYULabeled,
    SyntheticScenes,
    default_synthetic_root,
    render_frame,
    train_val_split,
    write_synthetic_dataset,
)
from fastmde.data import synthetic as S

SMALL = (60, 80)


def test_deterministic_by_seed_and_index():
    a = SyntheticScenes(4, seed=3, size=SMALL, noise=True)
    b = SyntheticScenes(4, seed=3, size=SMALL, noise=True)
    for i in (0, 3):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["depth"], b[i]["depth"])
    c = SyntheticScenes(4, seed=4, size=SMALL)
    assert not torch.equal(a[0]["image"], c[0]["image"])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    val = SyntheticScenes(1, seed=3, size=SMALL, split="val")
    assert not torch.equal(a[0]["image"], val[0]["image"])


def test_items_shapes_and_depth_range():
    ds = SyntheticScenes(6, seed=0)
    for i in range(0, 6, 2):
        item = ds[i]
        assert item["image"].shape == (3, 480, 640) and item["image"].dtype == torch.uint8
        d = item["depth"]
        assert d.shape == (1, 480, 640) and d.dtype == torch.float32
        assert d.min() >= 0.5 and d.max() <= 10.0
        assert item["image"].float().std() > 10  # not a blank frame
    noisy = SyntheticScenes(6, seed=0, noise=True)[0]["depth"]
    holes = noisy == 0
    assert 0.001 < holes.float().mean() < 0.3
    valid = noisy[~holes]
    assert valid.min() >= 0.5 and valid.max() <= 10.0
    clean = ds[0]["depth"][~holes]
    assert (valid - clean).abs().max() < 0.2 and (valid != clean).any()


def test_room_depth_matches_intrinsics():
    """Empty room, camera level and looking down +z: wall and floor depths follow from fx, fy, cx, cy."""
    W, H, D = 4.0, 3.0, 6.0
    plain = S.Material("plain", np.full(3, 0.5, np.float32), np.zeros(3, np.float32), 1.0)
    scene = S.Scene(np.array([W, H, D], np.float32), [plain] * 6, [], np.array([2.0, 2.8, 3.0], np.float32), 5.0, 0.2)
    cam_h, cam_z = 1.5, 1.0
    R = np.array([[1, 0, 0], [0, -1, 0], [0, 0, 1]], np.float32)  # columns: right, down, forward
    rgb, depth, _ = S.render(scene, np.array([W / 2, cam_h, cam_z], np.float32), R, (480, 640))
    fx, fy, cx, cy = KINECT_INTRINSICS
    # the row through the principal point hits the far wall
    assert depth[round(cy), round(cx)] == pytest.approx(D - cam_z, rel=1e-5)
    # the floor at image row v (below the horizon) is at z = cam_h * fy / (v - cy) until the wall
    for v in (400, 440, 479):
        z = cam_h * fy / (v - cy)
        assert depth[v, round(cx)] == pytest.approx(min(z, D - cam_z), rel=1e-4)
    # the side wall x = 0 at column u: z = (W / 2) * fx / (cx - u)
    for u in (0, 5):
        z = (W / 2) * fx / (cx - u)
        assert depth[round(cy), u] == pytest.approx(z, rel=1e-4)
    assert rgb.shape == (3, 480, 640)


def test_render_speed_is_reasonable():
    # the 20 frames/s target is measured by bench/run.py; here only a loose bound on a busy CI box
    import time

    render_frame(0, 0)
    start = time.perf_counter()
    for i in range(3):
        render_frame(0, i + 1)
    assert (time.perf_counter() - start) / 3 < 1.0


def test_frames_layout_read_by_nyuframes(tmp_path):
    write_synthetic_dataset(tmp_path, train=5, val=2, seed=1, size=SMALL, frames_per_scene=2, noise=True)
    train, val = NYUFrames(tmp_path, "train", size=SMALL), NYUFrames(tmp_path, "val", size=SMALL)
    assert len(train) == 5 and len(val) == 2
    assert train.scenes == ["synth_00000", "synth_00000", "synth_00001", "synth_00001", "synth_00002"]
    ref = SyntheticScenes(5, seed=1, size=SMALL, frames_per_scene=2, noise=True)
    for i in range(5):
        assert torch.equal(train[i]["image"], ref[i]["image"]) and torch.equal(train[i]["depth"], ref[i]["depth"])
    # val: clean depth, every frame a room of its own
    ref_val = SyntheticScenes(2, seed=1, size=SMALL, split="val", frames_per_scene=1, noise=False)
    assert torch.equal(val[1]["depth"], ref_val[1]["depth"]) and (val[1]["depth"] > 0).all()
    assert not torch.equal(val[1]["depth"], SyntheticScenes(2, seed=1, size=SMALL, split="val", frames_per_scene=2)[1]["depth"])
    assert (train[0]["depth"] == 0).any()  # train: raw depth with holes
    tr, va = train_val_split(train, fraction=0.2, seed=0, by_scene=True)
    assert {train.scenes[i] for i in tr.indices}.isdisjoint({train.scenes[i] for i in va.indices})
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary files left


def test_full_size_frames_and_labeled_layouts(tmp_path):
    write_synthetic_dataset(tmp_path / "f", train=1, val=1, seed=2)
    assert NYUFrames(tmp_path / "f", "val")[0]["image"].shape == (3, 480, 640)
    write_synthetic_dataset(tmp_path / "l", train=2, val=1, seed=2, layout="labeled", noise=True)
    mat = tmp_path / "l" / "nyu_depth_v2_labeled.mat"
    assert mat.read_bytes()[:10] == b"MATLAB 7.3"
    idx = tmp_path / "l" / "test_indices.txt"
    test = NYULabeled(mat, "test", test_indices=idx)
    raw = NYULabeled(mat, "test", depth="rawDepths", test_indices=idx)
    assert len(test) == 1 and len(NYULabeled(mat, "train", test_indices=idx)) == 2
    rgb, depth, noisy = render_frame(2, 0, "val", noise=True)
    assert torch.equal(test[0]["image"], torch.from_numpy(rgb))
    assert torch.equal(test[0]["depth"][0], torch.from_numpy(depth))
    assert torch.equal(raw[0]["depth"][0], torch.from_numpy(noisy))


def test_default_root_cached_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMDE_CACHE", str(tmp_path / "cache"))
    root = default_synthetic_root(train=3, val=1, size=SMALL, progress=False)
    assert root.startswith(str(tmp_path / "cache"))
    assert len(NYUFrames(root, "train", size=SMALL)) == 3 and len(NYUFrames(root, "val", size=SMALL)) == 1
    stamp = os.path.getmtime(os.path.join(root, "val", "official", "00000.h5"))
    assert default_synthetic_root(train=3, val=1, size=SMALL) == root
    assert os.path.getmtime(os.path.join(root, "val", "official", "00000.h5")) == stamp
    assert os.listdir(tmp_path / "cache") == [os.path.basename(root)]
    assert os.path.basename(root) == "synthetic-v2-60x80-train3-views4-val1-seed0"
    one_view = default_synthetic_root(train=3, val=1, size=SMALL, views=1, progress=False)
    assert one_view != root and len(set(NYUFrames(one_view, "train", size=SMALL).scenes)) == 3
    with pytest.raises(ValueError, match="views"):
        default_synthetic_root(train=3, val=1, size=SMALL, views=0)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(root).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert os.stat(os.path.join(root, "val", "official", "00000.h5")).st_mode & 0o777 == 0o666 & ~umask


def test_synth_cli(tmp_path, capsys):
    from fastmde.cli import main

    assert main(["synth", "--out", str(tmp_path), "--train", "2", "--val", "1", "--size", "30x40", "--seed", "5"]) == 0
    assert "wrote 3 frames" in capsys.readouterr().out
    ds = NYUFrames(tmp_path, "train", size=(30, 40))
    assert torch.equal(ds[1]["image"], SyntheticScenes(2, seed=5, size=(30, 40))[1]["image"])


def test_synthetic_errors():
    with pytest.raises(ValueError, match="split"):
        SyntheticScenes(1, split="bogus")
    with pytest.raises(ValueError, match="layout"):
        write_synthetic_dataset("/nonexistent", train=1, val=0, layout="csv")
    with pytest.raises(IndexError):
        SyntheticScenes(2)[2]
