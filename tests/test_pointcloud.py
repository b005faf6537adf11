"""Depth maps to points (fastmde.depth_to_points), PLY files, and ``fastmde predict --pointcloud``.

The expected points are computed by hand from the pinhole model (pixel (u, v) = column, row
from 0, centres at integer coordinates); the PLY files are read back by a strict parser written
here (header line by line, vertex count, exact byte length), not by fastmde's writer's logic.
"""
import os

import numpy as np
import pytest
import torch

import fastmde
from fastmde.cli import console_main, main
from fastmde.pointcloud import (NYU_KINECT, Intrinsics, depth_to_points, intrinsics_for, nyu_kinect,
                                write_ply, write_point_cloud)


def strict_ply(path):
    """(points (N, 3) float32, colours (N, 3) uint8 or None, comments) of a binary little-endian
    PLY holding exactly one vertex element of float x, y, z [uchar red, green, blue]."""
    data = open(path, "rb").read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").split("\n")[:-1]
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0", header[:2]
    assert header[-1] == "end_header"
    comments = [line[8:] for line in header[2:-1] if line.startswith("comment ")]
    rest = [line for line in header[2:-1] if not line.startswith("comment ")]
    kind, name, count = rest[0].split(" ")
    assert (kind, name) == ("element", "vertex") and count.isdigit()
    n = int(count)
    xyz = ["property float x", "property float y", "property float z"]
    rgb = ["property uchar red", "property uchar green", "property uchar blue"]
    assert rest[1:] in (xyz, xyz + rgb), rest[1:]
    coloured = rest[1:] == xyz + rgb
    stride = 15 if coloured else 12
    body = data[end:]
    assert len(body) == n * stride, (len(body), n, stride)
    rows = np.frombuffer(body, dtype=np.dtype([("p", "<f4", 3)] + ([("c", "u1", 3)] if coloured else [])))
    return rows["p"].copy(), (rows["c"].copy() if coloured else None), comments


# ---------------------------------------------------------------- depth_to_points

def test_points_of_a_fronto_parallel_plane_by_hand():
    # 2 x 3 map at z = 2 m, fx = 2, fy = 4, cx = 1, cy = 0.5:
    # x = (u - 1) * 2 / 2 = u - 1;  y = (v - 0.5) * 2 / 4 = (v - 0.5) / 2
    depth = np.full((2, 3), 2.0, dtype=np.float32)
    expected = np.array([[-1, -0.25, 2], [0, -0.25, 2], [1, -0.25, 2],
                         [-1, 0.25, 2], [0, 0.25, 2], [1, 0.25, 2]], dtype=np.float32)
    points = depth_to_points(depth, (2.0, 4.0, 1.0, 0.5))
    assert points.dtype == np.float32 and points.shape == (6, 3)
    np.testing.assert_array_equal(points, expected)


def test_points_of_a_tilted_plane_lie_on_it():
    # the plane Z = 2 + 0.25 X seen by a camera with fx = fy = 10, cx = 4.5, cy = 3.5: along the
    # ray of pixel (u, v), X = Z a with a = (u - cx) / fx, so Z = 2 / (1 - 0.25 a)
    fx, cx, cy = 10.0, 4.5, 3.5
    v, u = np.mgrid[0:8, 0:10].astype(np.float64)
    depth = 2.0 / (1.0 - 0.25 * (u - cx) / fx)
    points = depth_to_points(depth, [[fx, 0, cx], [0, fx, cy], [0, 0, 1]])
    assert points.dtype == np.float64
    np.testing.assert_allclose(points[:, 2] - 0.25 * points[:, 0], 2.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(points[:, 1], (v.ravel() - cy) * depth.ravel() / fx, rtol=1e-12)


def test_pixels_without_depth_are_left_out_in_row_major_order():
    depth = np.array([[1.0, 0.0, np.nan], [-1.0, np.inf, 3.0]], dtype=np.float32)
    points = depth_to_points(depth, Intrinsics(1.0, 1.0, 0.0, 0.0))
    np.testing.assert_array_equal(points, np.array([[0, 0, 1], [6, 3, 3]], dtype=np.float32))
    assert depth_to_points(np.zeros((4, 5), np.float32), (1, 1, 2, 2)).shape == (0, 3)


def test_torch_input_gives_the_same_points_as_torch():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(1, 1, 7, 9, generator=g, dtype=torch.float64) * 5
    depth[0, 0, 2, 3] = 0
    k = {"fx": 5.0, "fy": 6.0, "cx": 4.2, "cy": 2.9}
    points = depth_to_points(depth, k)
    assert isinstance(points, torch.Tensor) and points.dtype == torch.float64 and points.shape == (62, 3)
    np.testing.assert_allclose(points.numpy(), depth_to_points(depth.numpy(), k), rtol=1e-14)


@pytest.mark.parametrize("bad,error,match", [
    (np.ones((2, 3, 4), np.float32), ValueError, "one"),
    (np.ones((4, 5), np.uint16), TypeError, "metres"),
])
def test_bad_depth_is_refused(bad, error, match):
    with pytest.raises(error, match=match):
        depth_to_points(bad, (1, 1, 0, 0))


@pytest.mark.parametrize("bad,match", [
    ((1.0, 1.0, 0.0), "shape"), ((0.0, 1.0, 0.0, 0.0), "positive"), ((1.0, float("nan"), 0, 0), "finite"),
    ([[1, 0.1, 0], [0, 1, 0], [0, 0, 1]], "camera matrix"), ({"fx": 1, "fy": 1, "cx": 0}, "missing cy"),
])
def test_bad_intrinsics_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        depth_to_points(np.ones((2, 2), np.float32), bad)


def test_nyu_kinect_and_scaling_keep_pixel_centres():
    assert (NYU_KINECT.fx, NYU_KINECT.fy, NYU_KINECT.cx, NYU_KINECT.cy) == (
        518.85790117450188, 519.46961112127485, 325.58244941119034, 253.73616633400465)
    assert nyu_kinect((480, 640)) == NYU_KINECT
    half = nyu_kinect((240, 320))
    assert half.fx == pytest.approx(518.8579011745 / 2) and half.fy == pytest.approx(519.4696111213 / 2)
    # the left edge of pixel 0 (u = -0.5) stays the left edge: (cx + 0.5) / 2 - 0.5
    assert half.cx == pytest.approx((325.58244941119034 + 0.5) / 2 - 0.5)
    assert half.cy == pytest.approx((253.73616633400465 + 0.5) / 2 - 0.5)
    back = half.scaled((240, 320), (480, 640))
    assert back.cx == pytest.approx(NYU_KINECT.cx) and back.fy == pytest.approx(NYU_KINECT.fy)


def test_intrinsics_rules_of_predict():
    k, where = intrinsics_for((48, 64), fx=50)
    assert (k.fx, k.fy, k.cx, k.cy) == (50, 50, 31.5, 23.5) and "--fx" in where
    k, _ = intrinsics_for((48, 64), fx=50, fy=40, cx=30, cy=20)
    assert (k.fx, k.fy, k.cx, k.cy) == (50, 40, 30, 20)
    k, where = intrinsics_for((48, 64), focal=518.8579)
    assert (k.fx, k.fy, k.cx, k.cy) == (518.8579, 518.8579, 31.5, 23.5) and "file list" in where
    k, where = intrinsics_for((48, 64), focal=518.8579, fx=10)
    assert k.fx == 10
    k, where = intrinsics_for((48, 64))
    assert k == nyu_kinect((48, 64)) and "NYU" in where
    with pytest.raises(ValueError, match="without --fx"):
        intrinsics_for((48, 64), cx=3)


# ---------------------------------------------------------------- PLY

def test_ply_holds_the_points_and_colours_exactly(tmp_path):
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 5, (5, 6)).astype(np.float32)
    depth[1, 2] = 0
    depth[4, 5] = np.nan
    image = rng.integers(0, 256, (3, 5, 6), dtype=np.uint8)
    k = Intrinsics(4.0, 5.0, 2.5, 2.0)
    n = write_point_cloud(tmp_path / "a.ply", depth, image, k)
    points, colours, comments = strict_ply(tmp_path / "a.ply")
    valid = np.isfinite(depth) & (depth > 0)
    assert n == len(points) == 28
    np.testing.assert_array_equal(points, depth_to_points(depth, k))
    np.testing.assert_array_equal(colours, image.transpose(1, 2, 0)[valid])
    assert any(c.startswith("intrinsics fx=4.0000 fy=5.0000 cx=2.5000 cy=2.0000") for c in comments)
    # a hand-checked point: pixel (u=0, v=0)
    assert points[0].tolist() == [(0 - 2.5) * depth[0, 0] / 4, (0 - 2.0) * depth[0, 0] / 5, depth[0, 0]]

    assert write_ply(tmp_path / "b.ply", np.zeros((0, 3))) == 0
    points, colours, _ = strict_ply(tmp_path / "b.ply")
    assert points.shape == (0, 3) and colours is None


def test_ply_writer_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        write_ply(tmp_path / "a.ply", np.array([[0, 0, np.nan]]))
    with pytest.raises(ValueError, match="uint8"):
        write_ply(tmp_path / "a.ply", np.zeros((2, 3)), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        write_ply(tmp_path / "a.ply", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="size"):
        write_point_cloud(tmp_path / "a.ply", np.ones((4, 5), np.float32), np.zeros((4, 6, 3), np.uint8), (1, 1, 0, 0))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- fastmde predict --pointcloud

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A fastmde checkpoint of a tiny U-Net (ResNet18, 32x48 inside), as fastmde.load reads it."""
    from fastmde.engine.checkpoint import FORMAT, VERSION
    from fastmde.models import build

    torch.manual_seed(0)
    model = build("unet34-k3-1x1", size=(32, 48), encoder=18)
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    torch.save({"format": FORMAT, "version": VERSION, "config": {},
                "model_spec": {"name": "unet34-k3-1x1", "size": [32, 48], "overrides": {"encoder": 18}},
                "model": model.state_dict()}, path)
    return path


def _photos(folder, sizes):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(1)
    photos = {}
    for stem, (h, w) in sizes.items():
        photos[stem] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(photos[stem]).save(folder / f"{stem}.png")
    return photos


def test_predict_pointcloud_with_nyu_intrinsics_by_default(checkpoint, tmp_path, capsys):
    photos = _photos(tmp_path / "photos", {"a": (40, 56), "b": (33, 47)})
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "photos"), "--checkpoint", checkpoint, "--out", str(out),
                 "--pointcloud", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "NYU Kinect intrinsics" in err and "(.png, .npy, .ply;" in err
    assert sorted(os.listdir(out)) == ["a.npy", "a.ply", "a.png", "b.npy", "b.ply", "b.png"]
    for stem, photo in photos.items():
        depth = np.load(out / f"{stem}.npy")        # clamped to 0.001-10 m: every pixel has a depth
        points, colours, comments = strict_ply(out / f"{stem}.ply")
        k = nyu_kinect(depth.shape)
        assert len(points) == depth.size
        np.testing.assert_array_equal(points, depth_to_points(depth, k))
        np.testing.assert_array_equal(colours, photo.reshape(-1, 3))
        assert f"intrinsics {k}" in comments
        # the last pixel by hand: u = W - 1, v = H - 1
        h, w = depth.shape
        z = depth[-1, -1]
        np.testing.assert_allclose(points[-1], [(w - 1 - k.cx) * z / k.fx, (h - 1 - k.cy) * z / k.fy, z], rtol=1e-6)


def test_predict_pointcloud_with_given_intrinsics_and_raw_depth(checkpoint, tmp_path):
    _photos(tmp_path / "photos", {"a": (40, 56)})
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "photos"), "--checkpoint", checkpoint, "--out", str(out),
                 "--pointcloud", "--fx", "50", "--cy", "10", "--no-clamp", "--device", "cpu"]) == 0
    depth = np.load(out / "a.npy")
    points, _, comments = strict_ply(out / "a.ply")
    valid = np.isfinite(depth) & (depth > 0)
    assert len(points) == valid.sum() < depth.size          # the untrained net's depth <= 0 is left out
    np.testing.assert_array_equal(points, depth_to_points(depth, (50, 50, 27.5, 10)))
    assert "intrinsics fx=50.0000 fy=50.0000 cx=27.5000 cy=10.0000" in comments


def test_predict_pointcloud_uses_a_file_lists_focal(checkpoint, tmp_path, capsys):
    _photos(tmp_path / "photos", {"a": (40, 56)})
    listing = tmp_path / "photos" / "test_files.txt"
    listing.write_text("a.png None 123.5\n")
    out = tmp_path / "pred"
    assert main(["predict", "--data-format", "list", "--data", str(listing), "--checkpoint", checkpoint,
                 "--out", str(out), "--pointcloud", "--device", "cpu"]) == 0
    assert "the file list's focal length" in capsys.readouterr().err
    points, _, comments = strict_ply(out / "a.ply")
    np.testing.assert_array_equal(points, depth_to_points(np.load(out / "a.npy"), (123.5, 123.5, 27.5, 19.5)))


def test_predict_pointcloud_refusals_are_one_line_before_writing(checkpoint, tmp_path, capsys):
    _photos(tmp_path / "photos", {"a": (40, 56)})
    out = tmp_path / "pred"
    base = ["predict", str(tmp_path / "photos"), "--checkpoint", checkpoint, "--out", str(out), "--device", "cpu"]
    for extra, message in ((["--fx", "50"], "--fx go with --pointcloud"),
                           (["--pointcloud", "--cx", "3"], "without --fx"),
                           (["--pointcloud", "--fx", "0"], "focal lengths must be positive")):
        assert console_main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not out.exists()
    out.mkdir()
    (out / "a.ply").write_bytes(b"earlier")
    assert console_main(base + ["--pointcloud"]) == 2
    assert "a.ply' already exists" in capsys.readouterr().err
    assert os.listdir(out) == ["a.ply"] and (out / "a.ply").read_bytes() == b"earlier"
