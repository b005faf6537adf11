"""File lists and folders of depth maps: exact read-back, KITTI conventions, frames of any size, every bad input."""
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastmde.data import (
    DataFormatError,
    FileList,
    Folder,
    RandomCrops,
    collate_by_size,
    collate_frames,
    kb_crop,
)
from fastmde.data.fit import cover_size
from fastmde.data.kitti import kb_crop_box
from _data_files import KITTI_FOCALS, pattern_image, sparse_depth, write_kitti_tree

SIZES = ((40, 124), (41, 126))     # two slightly different frame sizes, like two KITTI drives


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _photo(path, h=6, w=10, k=0):
    _png(path, pattern_image(h, w, k).transpose(1, 2, 0))


def _depth16(path, metres, scale):
    _png(path, np.round(metres * scale).astype(np.uint16))


def _write_list(path, lines):
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return str(path)


# ----------------------------------------------------------------------------- FileList


def test_kitti_list_reads_back_exactly_with_focal_and_none(tmp_path):
    list_path, image_root, depth_root, frames = write_kitti_tree(tmp_path, SIZES, frames_per_size=2, none_lines=1)
    with pytest.warns(UserWarning, match=r"train.txt: 1 of 5 lines have no depth map \(None\): left out"):
        ds = FileList(list_path, image_root=image_root, depth_root=depth_root, depth_scale=256)
    assert len(ds) == 4 and ds.skipped == 1 and ds.lines == [1, 2, 4, 5]
    for i, (rgb, depth) in enumerate(frames):
        item = ds[i]
        assert set(item) == {"image", "depth", "focal"}
        assert item["image"].dtype == torch.uint8 and torch.equal(item["image"], torch.from_numpy(rgb))
        assert item["depth"].dtype == torch.float32 and torch.equal(item["depth"][0], torch.from_numpy(depth))
        assert item["focal"] == KITTI_FOCALS[i // 2]
    assert ds[0]["image"].shape[1:] == SIZES[0] and ds[3]["image"].shape[1:] == SIZES[1]   # any frame size
    valid = (ds[0]["depth"] > 0).float().mean().item()
    assert 0.05 < valid < 0.30                               # sparse, as KITTI's LiDAR
    assert ds.scenes[0] == "2011_09_26/2011_09_26_drive_0001_sync/image_02/data" != ds.scenes[3]
    keep = FileList(list_path, image_root=image_root, depth_root=depth_root, depth_scale=256, image_only="keep")
    assert len(keep) == 5 and keep.depth_paths[2] is None
    assert set(keep[2]) == {"image", "focal"}                # image-only: for prediction
    assert pickle.loads(pickle.dumps(ds)).depth_paths == ds.depth_paths   # DataLoader workers


def test_list_paths_follow_bts_roots_and_the_list_folder(tmp_path):
    """BTS joins ``root + "./" + path``: a leading "/" is relative to the root; without roots,
    paths are relative to the list's folder and absolute paths stay absolute."""
    _photo(str(tmp_path / "rgb" / "a" / "0.png"))
    _depth16(str(tmp_path / "d" / "a" / "0.png"), np.full((6, 10), 2.5, np.float32), 1000)
    bts = _write_list(tmp_path / "nyu.txt", ["/a/0.png /a/0.png 518.8579"])
    ds = FileList(bts, image_root=tmp_path / "rgb", depth_root=tmp_path / "d", depth_scale=1000)
    assert ds[0]["depth"].unique().tolist() == [2.5] and ds[0]["focal"] == 518.8579
    plain = _write_list(tmp_path / "plain.txt", [f"rgb/a/0.png {tmp_path / 'd' / 'a' / '0.png'}"])
    ds = FileList(plain, depth_scale=1000)
    assert ds.image_paths[0] == os.path.join(tmp_path, "rgb/a/0.png") and "focal" not in ds[0]


def test_depth_scales_and_npy_metres(tmp_path):
    metres = np.array([[0.0, 1.5, 9.999], [0.001, 65.535, 3.25]], np.float32)
    _photo(str(tmp_path / "p.png"), 2, 3)
    _depth16(str(tmp_path / "nyu.png"), metres, 1000)
    np.save(tmp_path / "m.npy", np.where(metres > 0, metres, np.nan).astype(np.float64))
    lst = _write_list(tmp_path / "l.txt", ["p.png nyu.png", "p.png m.npy"])
    ds = FileList(lst, depth_scale=1000)
    expected = torch.from_numpy(np.round(metres * 1000).astype(np.float32) / np.float32(1000))
    assert torch.equal(ds[0]["depth"][0], expected)
    assert torch.equal(ds[1]["depth"][0], torch.from_numpy(metres))     # NaN -> 0 (no measurement)


def test_kb_crop_at_the_real_kitti_sizes():
    """Bottom 352 rows, central 1216 columns (BTS: top = H - 352, left = int((W - 1216) / 2))."""
    assert kb_crop_box(375, 1242) == (23, 375, 13, 1229)
    assert kb_crop_box(370, 1226) == (18, 370, 5, 1221)
    assert kb_crop_box(376, 1241) == (24, 376, 12, 1228)     # odd margin: floor, as int() does
    assert kb_crop_box(352, 1216) == (0, 352, 0, 1216)
    a = np.arange(3 * 375 * 1242).reshape(3, 375, 1242)
    assert np.array_equal(kb_crop(a), a[:, 23:, 13:1229]) and kb_crop(a[0]).shape == (352, 1216)
    with pytest.raises(DataFormatError, match=r"x.png: frame is 351x1300; the kb crop needs at least 352x1216"):
        kb_crop(np.zeros((351, 1300)), "x.png")


def test_kb_crop_through_the_list(tmp_path):
    list_path, image_root, depth_root, frames = write_kitti_tree(tmp_path, ((375, 1242), (370, 1226)),
                                                                 frames_per_size=1, none_lines=0)
    ds = FileList(list_path, image_root=image_root, depth_root=depth_root, depth_scale=256, kb_crop=True)
    for i, (rgb, depth) in enumerate(frames):
        item = ds[i]
        top, bottom, left, right = kb_crop_box(*depth.shape)
        assert torch.equal(item["image"], torch.from_numpy(rgb[:, top:bottom, left:right].copy()))
        assert torch.equal(item["depth"][0], torch.from_numpy(depth[top:bottom, left:right].copy()))
    assert torch.equal(torch.from_numpy(ds.read_image(1)), ds[1]["image"])
    small, root, droot, _ = write_kitti_tree(tmp_path / "small", SIZES[:1], frames_per_size=1, none_lines=0)
    with pytest.raises(DataFormatError, match=r"0000000000.png: frame is 40x124; the kb crop needs"):
        FileList(small, image_root=root, depth_root=droot, depth_scale=256, kb_crop=True)[0]


def test_bad_lists_name_the_line(tmp_path):
    _photo(str(tmp_path / "p.png"))
    _depth16(str(tmp_path / "d.png"), np.ones((6, 10), np.float32), 256)

    def refused(lines, match, error=DataFormatError):
        with pytest.raises(error, match=match):
            FileList(_write_list(tmp_path / "l.txt", lines), depth_scale=256)

    refused(["# header", "", "p.png"], r"l.txt:3: expected '<rgb path> <depth path> \[focal\]', got 1 fields")
    refused(["p.png d.png 721.5 p.png d.png"], r"l.txt:1: .* got 5 fields")
    for bad in ("abc", "-1", "0", "nan", "inf"):
        refused([f"p.png d.png {bad}"], rf"l.txt:1: the focal length .* got '{bad}'")
    refused(["p.png d.png 721.5", "p.png d.png"], r"l.txt:2: has no focal length, line 1 has: give it on every")
    refused(["p.png d.png", "p.png d.png 721.5"], r"l.txt:2: has focal length, line 1 has none")
    refused(["p.png d.png", "q.png d.png", "p.png e.png"],
            r"l.txt: 2 listed file\(s\) do not exist: line 2: .*q.png; line 3: .*e.png", FileNotFoundError)
    refused(["p.png None", "p.png None"], r"lists nothing to read: 2 line\(s\), all without a depth map")
    refused(["# only a comment"], r"lists nothing to read: no sample line")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        FileList(tmp_path / "nope.txt", depth_scale=256)
    with pytest.raises(FileNotFoundError, match=r"image_root .*missing.*no such directory"):
        FileList(_write_list(tmp_path / "ok.txt", ["p.png d.png"]), image_root=tmp_path / "missing", depth_scale=256)
    for scale in (0, -256, float("nan")):
        with pytest.raises(ValueError, match="depth_scale must be a positive number"):
            FileList(tmp_path / "ok.txt", depth_scale=scale)
    with pytest.raises(ValueError, match="image_only must be one of"):
        FileList(tmp_path / "ok.txt", depth_scale=256, image_only="yes")


def test_bad_depth_files_are_named(tmp_path):
    _photo(str(tmp_path / "p.png"))
    h, w = 6, 10
    _png(str(tmp_path / "d8.png"), np.full((h, w), 200, np.uint8))
    _png(str(tmp_path / "rgb.png"), np.zeros((h, w, 3), np.uint8))
    _depth16(str(tmp_path / "big.png"), np.ones((h + 1, w), np.float32), 256)
    np.save(tmp_path / "int.npy", np.full((h, w), 1500, np.int32))
    np.save(tmp_path / "cube.npy", np.ones((2, h, w), np.float32))
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    cases = {
        "d8.png": r"d8.png: is an 8-bit image where a 16-bit depth PNG is expected",
        "rgb.png": r"rgb.png: depth image has 3 channels, expected one 16-bit channel",
        "big.png": r"big.png: depth map is 7x10, its photo .*p.png is 6x10",
        "int.npy": r"int.npy: .npy depth holds int32 values, expected floating metres",
        "cube.npy": r"cube.npy: .npy depth has shape \(2, 6, 10\)",
        "broken.npy": r"broken.npy: cannot be read as a .npy array",
        "broken.png": r"broken.png: cannot be decoded as an image",
    }
    lst = _write_list(tmp_path / "l.txt", [f"p.png {name}" for name in cases])
    ds = FileList(lst, depth_scale=256)
    for i, match in enumerate(cases.values()):
        with pytest.raises(DataFormatError, match=match):
            ds[i]
    np.save(tmp_path / "ok.npy", np.ones((h, w), np.float32))
    no_scale = FileList(_write_list(tmp_path / "n.txt", ["p.png ok.npy", "p.png d8.png"]), depth_scale=None)
    assert no_scale[0]["depth"].unique().tolist() == [1.0]          # .npy needs no scale
    with pytest.raises(ValueError, match="d8.png: a depth PNG needs a positive depth_scale"):
        no_scale[1]


def test_photos_converted_faithfully_or_refused(tmp_path):
    h, w = 6, 10
    rgb = pattern_image(h, w).transpose(1, 2, 0)
    grey = rgb[..., 0]
    _png(str(tmp_path / "grey.png"), grey)
    _png(str(tmp_path / "opaque.png"), np.dstack([rgb, np.full((h, w), 255, np.uint8)]))
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(tmp_path / "pal.png")
    see_through = np.dstack([rgb, np.full((h, w), 255, np.uint8)])
    see_through[0, 0, 3] = 0
    _png(str(tmp_path / "alpha.png"), see_through)
    _depth16(str(tmp_path / "swapped.png"), np.ones((h, w), np.float32), 256)
    _depth16(str(tmp_path / "d.png"), np.ones((h, w), np.float32), 256)
    names = ("grey.png", "opaque.png", "pal.png", "alpha.png", "swapped.png")
    ds = FileList(_write_list(tmp_path / "l.txt", [f"{n} d.png" for n in names]), depth_scale=256)
    assert torch.equal(ds[0]["image"], torch.from_numpy(np.stack([grey] * 3)))          # grey replicated
    assert torch.equal(ds[1]["image"], torch.from_numpy(rgb.transpose(2, 0, 1).copy()))  # opaque alpha dropped
    with Image.open(tmp_path / "pal.png") as im:
        looked_up = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(ds[2]["image"], torch.from_numpy(looked_up.copy()))               # palette looked up
    with pytest.raises(DataFormatError, match=r"alpha.png: has 1 transparent pixel\(s\) \(mode RGBA"):
        ds[3]
    with pytest.raises(DataFormatError, match=r"swapped.png: is a 16/32-bit single-channel image \(mode I;16\).*"
                                              "a depth map given as the image"):
        ds[4]


def test_wrong_scale_and_empty_maps_are_warned_once(tmp_path):
    list_path, image_root, depth_root, _ = write_kitti_tree(tmp_path, SIZES, frames_per_size=2, none_lines=0)
    ds = FileList(list_path, image_root=image_root, depth_root=depth_root, depth_scale=1, max_depth=80)
    with pytest.warns(UserWarning, match=r"0000000000.png: 100% of the measured depths with depth_scale 1 lie above "
                                         r"the dataset's 80 m .*is the scale right \(NYU 1000, KITTI 256"):
        ds[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[1]                                        # said once per dataset
        FileList(list_path, image_root=image_root, depth_root=depth_root, depth_scale=256, max_depth=80)[0]
    _photo(str(tmp_path / "p.png"))
    _depth16(str(tmp_path / "zero.png"), np.zeros((6, 10), np.float32), 256)
    with pytest.warns(UserWarning, match=r"zero.png: the depth map has no measurement"):
        FileList(_write_list(tmp_path / "z.txt", ["p.png zero.png"]), depth_scale=256)[0]


# ----------------------------------------------------------------------------- Folder


def test_folder_pairs_by_name_recursively(tmp_path):
    a = sparse_depth(6, 10, 1)
    _photo(str(tmp_path / "img" / "kitchen" / "0001.jpg"), k=1)
    _depth16(str(tmp_path / "dep" / "kitchen" / "0001.png"), a, 256)
    _photo(str(tmp_path / "img" / "0002.png"), 7, 9, k=2)
    np.save(tmp_path / "dep" / "0002.npy", np.full((7, 9), 4.25, np.float32))
    ds = Folder(tmp_path / "img", tmp_path / "dep", depth_scale=256)
    assert len(ds) == 2 and ds.scenes == ["", "kitchen"]        # sorted by relative name: 0002, kitchen/0001
    assert ds[0]["image"].shape == (3, 7, 9) and ds[0]["depth"].unique().tolist() == [4.25]
    assert torch.equal(ds[1]["depth"][0], torch.from_numpy(a)) and "focal" not in ds[1]
    assert ds[1]["image"].shape == (3, 6, 10)                   # JPEG: lossy, size kept


def test_folder_errors_and_warnings(tmp_path):
    img, dep = tmp_path / "img", tmp_path / "dep"
    for k in range(5):
        _photo(str(img / f"{k}.png"))
    os.makedirs(dep)
    for k in range(4):
        np.save(dep / f"{k}.npy", np.ones((6, 10), np.float32))
    with pytest.raises(FileNotFoundError, match=r"dep: no depth map \(.png or .npy of the same name\) for 1 photo"
                                                r"\(s\): .*4.png"):
        Folder(img, dep)
    np.save(dep / "4.npy", np.ones((6, 10), np.float32))
    np.save(dep / "extra.npy", np.ones((6, 10), np.float32))
    with pytest.warns(UserWarning, match=r"1 depth map\(s\) have no photo of the same name"):
        assert len(Folder(img, dep)) == 5
    _depth16(str(dep / "4.png"), np.ones((6, 10), np.float32), 256)
    with pytest.raises(DataFormatError, match=r"two depth files of one name: .*4.npy and .*4.png"):
        Folder(img, dep)
    with pytest.raises(DataFormatError, match="must be in two folders"):
        Folder(img, img)
    with pytest.raises(FileNotFoundError, match=r"depth folder .*nope.*: no such directory"):
        Folder(img, tmp_path / "nope")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataFormatError, match=r"empty: holds no photo"):
        Folder(tmp_path / "empty", dep)


# ----------------------------------------------------------------------------- one size per batch


def _items(sizes):
    out = []
    for k, (h, w) in enumerate(sizes):
        noise = np.random.default_rng(k).integers(0, 256, (3, h, w), dtype=np.uint8)   # no two cuts alike
        out.append({"image": torch.from_numpy(noise),
                    "depth": torch.from_numpy(sparse_depth(h, w, k))[None], "focal": 700.0 + k})
    return out


def test_random_crops_cut_without_resampling_when_the_frame_covers_the_crop():
    items = _items(SIZES * 2)
    crops = RandomCrops(items, (32, 64), seed=5)
    first = [crops[i] for i in range(len(items))]
    for item, crop in zip(items, first):
        assert crop["image"].shape == (3, 32, 64) and crop["depth"].shape == (1, 32, 64) and crop["focal"] == item["focal"]
        h, w = item["image"].shape[1:]
        hits = [(t, l) for t in range(h - 31) for l in range(w - 63)
                if torch.equal(item["image"][:, t:t + 32, l:l + 64], crop["image"])]
        assert len(hits) == 1                          # a plain cut of the frame
        t, l = hits[0]
        assert torch.equal(item["depth"][:, t:t + 32, l:l + 64], crop["depth"])
    again = [RandomCrops(items, (32, 64), seed=5)[i] for i in range(len(items))]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again))      # (seed, epoch, index)
    crops.set_epoch(1)
    assert not all(torch.equal(a["image"], crops[i]["image"]) for i, a in enumerate(first))
    same = RandomCrops(items, SIZES[0])[0]
    assert same["image"] is items[0]["image"]          # already the size: untouched


def test_random_crops_resize_smaller_frames_keeping_the_aspect():
    assert cover_size(40, 124, (48, 96)) == (48, 149) and cover_size(352, 1216, (352, 704)) == (352, 1216)
    assert cover_size(3024, 4032, (352, 704)) == (3024, 4032) and cover_size(300, 1300, (352, 704)) == (352, 1525)
    item = _items([(40, 124)])[0]
    crop = RandomCrops([item], (48, 96), seed=1)[0]
    assert crop["image"].shape == (3, 48, 96) and crop["image"].dtype == torch.uint8
    values = set(item["depth"].unique().tolist())
    assert set(crop["depth"].unique().tolist()) <= values     # nearest: no value that was not measured
    assert 0.0 in set(crop["depth"].unique().tolist())        # 0 (no measurement) stays 0


def test_batches_of_mixed_sizes():
    items = _items([SIZES[0], SIZES[1], SIZES[0]])
    groups = collate_by_size(items)
    assert [g["image"].shape[0] for g in groups] == [2, 1]
    assert torch.equal(groups[0]["image"][1], items[2]["image"])
    assert groups[0]["focal"].tolist() == [700.0, 702.0]
    assert collate_frames(items[::2])["image"].shape == (2, 3, *SIZES[0])
    with pytest.raises(DataFormatError, match=r"training frames of different sizes \(40x124, 41x126\) cannot form "
                                              r"one batch: give a training crop \(fastmde train --train-crop HxW\)"):
        collate_frames(items)
