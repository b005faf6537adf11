"""NYU readers: tiny files in each real layout read back exactly, orientation, encodings, errors, workers."""
import os
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fastmde.data import (
    DataFormatError,
    NYUCsv,
    NYUFrames,
    NYULabeled,
    nyu_test_indices,
    nyu_train_indices,
    train_val_split,
)
from _data_files import pattern_depth, pattern_image, truncate, write_csv_layout, write_frame, write_labeled

SMALL = (6, 10)  # (H, W), deliberately not square


def _check_item(item, rgb, depth):
    assert set(item) == {"image", "depth"}
    assert item["image"].dtype == torch.uint8 and item["depth"].dtype == torch.float32
    assert item["image"].shape == (3,) + depth.shape and item["depth"].shape == (1,) + depth.shape
    assert torch.equal(item["image"], torch.from_numpy(rgb))
    assert torch.equal(item["depth"][0], torch.from_numpy(depth))


# ----------------------------------------------------------------------------- labelled .mat


def test_labeled_reads_back_exactly_with_orientation(tmp_path):
    h, w = SMALL
    imgs = [pattern_image(h, w, k) for k in range(5)]
    deps = [pattern_depth(h, w, k) for k in range(5)]
    raws = [d * 0 + np.float32(k) for k, d in enumerate(deps)]
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    write_labeled(path, imgs, deps, raws)
    ds = NYULabeled(path, split="all", size=SMALL)
    assert len(ds) == 5
    for k in range(5):
        _check_item(ds[k], imgs[k], deps[k])
    # the pixel at row 1, column 4 is where the pattern says (not its transpose)
    assert ds[0]["image"][0, 1, 4].item() == (1 * 13 + 4 * 3) % 256
    raw = NYULabeled(path, split="all", depth="rawDepths", size=SMALL)
    assert torch.equal(raw[3]["depth"], torch.full((1, h, w), 3.0))
    sub = NYULabeled(path, split="test", test_indices=[2, 5], size=SMALL)
    assert sub.indices == [2, 5]
    _check_item(sub[1], imgs[4], deps[4])
    train = NYULabeled(path, split="train", test_indices=[2, 5], size=SMALL)
    assert train.indices == [1, 3, 4]


def test_labeled_standard_split_full_count(tmp_path):
    # 1449 images of 2x3 pixels: the standard 795 / 654 split, with an index-coded image
    n, h, w = 1449, 2, 3
    images = np.zeros((n, 3, w, h), np.uint8)
    images[:, 0, 0, 0] = np.arange(1, n + 1) % 256
    images[:, 1, 0, 0] = np.arange(1, n + 1) // 256
    path = tmp_path / "nyu.mat"
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["depths"] = np.ones((n, w, h), np.float32)
    test, train = NYULabeled(path, "test", size=(h, w)), NYULabeled(path, "train", size=(h, w))
    assert (len(train), len(test)) == (795, 654)
    assert test.indices == nyu_test_indices() and train.indices == nyu_train_indices()
    assert sorted(test.indices + train.indices) == list(range(1, n + 1))
    for ds in (test, train):
        for i in (0, 17, len(ds) - 1):
            img = ds[i]["image"]
            assert img[0, 0, 0].item() + 256 * img[1, 0, 0].item() == ds.indices[i]


def test_labeled_scene_names_from_matlab_cell_array(tmp_path):
    h, w = SMALL
    names = ["kitchen_0028b", "bedroom_0004", "kitchen_0028b", "office_0003"]
    path = tmp_path / "nyu.mat"
    write_labeled(path, [pattern_image(h, w, k) for k in range(4)], [pattern_depth(h, w, k) for k in range(4)])
    with h5py.File(path, "a") as f:  # MATLAB cell array of strings: references to uint16 (len, 1) arrays
        refs = f.create_group("#refs#")
        scenes = f.create_dataset("scenes", (1, 4), dtype=h5py.ref_dtype)
        for k, name in enumerate(names):
            refs[str(k)] = np.array([[ord(c)] for c in name], np.uint16)
            scenes[0, k] = refs[str(k)].ref
    assert NYULabeled(path, "all", size=SMALL).scenes == names
    assert NYULabeled(path, "test", test_indices=[2, 4], size=SMALL).scenes == [names[1], names[3]]
    train, val = train_val_split(NYULabeled(path, "all", size=SMALL), fraction=0.25, seed=0, by_scene=True)
    assert {names[i] for i in train.indices}.isdisjoint({names[i] for i in val.indices})
    write_labeled(tmp_path / "plain.mat", [pattern_image(h, w)] * 2, [pattern_depth(h, w)] * 2)
    assert NYULabeled(tmp_path / "plain.mat", "all", size=SMALL).scenes is None


def test_labeled_full_size_default(tmp_path):
    imgs = [pattern_image(480, 640, k) for k in range(2)]
    deps = [pattern_depth(480, 640, k) for k in range(2)]
    path = tmp_path / "nyu.mat"
    write_labeled(path, imgs, deps)
    ds = NYULabeled(path, split="all")
    _check_item(ds[1], imgs[1], deps[1])
    with pytest.raises(DataFormatError, match="1449"):
        NYULabeled(path, split="train")


def test_labeled_errors_name_the_file(tmp_path):
    h, w = SMALL
    missing = tmp_path / "missing.mat"
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        NYULabeled(missing, "all", size=SMALL)
    good = tmp_path / "good.mat"
    write_labeled(good, [pattern_image(h, w)] * 3, [pattern_depth(h, w)] * 3)
    bad = tmp_path / "truncated.mat"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataFormatError, match="truncated.mat"):
        ds = NYULabeled(bad, "all", size=SMALL)
        for i in range(len(ds)):
            ds[i]
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(DataFormatError, match="garbage.mat.*HDF5"):
        NYULabeled(garbage, "all", size=SMALL)
    wrong_key = tmp_path / "wrong_key.mat"
    write_labeled(wrong_key, [pattern_image(h, w)], [pattern_depth(h, w)], image_key="rgb")
    with pytest.raises(DataFormatError, match="wrong_key.mat.*'images'"):
        NYULabeled(wrong_key, "all", size=SMALL)
    no_raw = tmp_path / "no_raw.mat"
    no_raw.write_bytes(good.read_bytes())
    with h5py.File(no_raw, "a") as f:
        del f["rawDepths"]
    NYULabeled(no_raw, "all", size=SMALL)  # depths alone is enough
    with pytest.raises(DataFormatError, match="no_raw.mat.*no dataset 'rawDepths'"):
        NYULabeled(no_raw, "all", size=SMALL, depth="rawDepths")
    not_reversed = tmp_path / "not_reversed.mat"  # written (N, 3, H, W): the classic transposition
    with h5py.File(not_reversed, "w") as f:
        f["images"] = np.stack([pattern_image(h, w)])
        f["depths"] = np.stack([pattern_depth(h, w)])
    with pytest.raises(DataFormatError, match="not_reversed.mat.*'images'.*shape"):
        NYULabeled(not_reversed, "all", size=SMALL)
    wrong_dtype = tmp_path / "wrong_dtype.mat"
    with h5py.File(wrong_dtype, "w") as f:
        f["images"] = np.zeros((1, 3, w, h), np.float32)
        f["depths"] = np.zeros((1, w, h), np.float32)
    with pytest.raises(DataFormatError, match="wrong_dtype.mat.*dtype"):
        NYULabeled(wrong_dtype, "all", size=SMALL)
    with pytest.raises(ValueError, match="split"):
        NYULabeled(good, "val", size=SMALL)


# ----------------------------------------------------------------------------- per-frame HDF5


def _frames_tree(root, h, w, scenes=("bedroom_0001", "kitchen_0002"), per_scene=3, val=2):
    expected = {"train": [], "val": []}
    k = 0
    for s in scenes:
        for j in range(per_scene):
            rgb, d = pattern_image(h, w, k), pattern_depth(h, w, k)
            write_frame(os.path.join(root, "train", s, f"{j:05d}.h5"), rgb, d)
            expected["train"].append((rgb, d, s))
            k += 1
    for j in range(val):
        rgb, d = pattern_image(h, w, k), pattern_depth(h, w, k).astype(np.float64)
        write_frame(os.path.join(root, "val", "official", f"{j:05d}.h5"), rgb, d)
        expected["val"].append((rgb, d.astype(np.float32), "official"))
        k += 1
    return expected


def test_frames_read_back_exactly(tmp_path):
    expected = _frames_tree(tmp_path, *SMALL)
    for split in ("train", "val"):
        ds = NYUFrames(tmp_path, split, size=SMALL)
        assert len(ds) == len(expected[split])
        assert ds.scenes == [s for _, _, s in expected[split]]
        for i, (rgb, d, _) in enumerate(expected[split]):
            _check_item(ds[i], rgb, d)


def test_frames_full_size_default(tmp_path):
    rgb, d = pattern_image(480, 640, 1), pattern_depth(480, 640, 1)
    write_frame(os.path.join(tmp_path, "val", "official", "00000.h5"), rgb, d)
    _check_item(NYUFrames(tmp_path, "val")[0], rgb, d)


def test_frames_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        NYUFrames(tmp_path, "train", size=SMALL)
    h, w = SMALL
    root = tmp_path / "r"
    write_frame(os.path.join(root, "train", "a", "00000.h5"), pattern_image(h, w), pattern_depth(h, w))
    write_frame(os.path.join(root, "train", "a", "00001.h5"), pattern_image(h, w), pattern_depth(h, w), rgb_key="image")
    write_frame(os.path.join(root, "train", "a", "00002.h5"), pattern_image(w, h), pattern_depth(w, h))
    write_frame(os.path.join(root, "train", "a", "00003.h5"), pattern_image(h, w).astype(np.float32), pattern_depth(h, w))
    write_frame(os.path.join(root, "train", "a", "00004.h5"), pattern_image(h, w), pattern_depth(h, w))
    truncate(os.path.join(root, "train", "a", "00004.h5"), 0.4)
    write_frame(os.path.join(root, "train", "a", "00005.h5"), pattern_image(h, w), pattern_depth(h, w).astype(np.int32))
    ds = NYUFrames(root, "train", size=SMALL)
    ds[0]
    with pytest.raises(DataFormatError, match="00001.h5.*no dataset 'rgb'"):
        ds[1]
    with pytest.raises(DataFormatError, match=r"00002.h5.*'rgb'.*shape \(3, 10, 6\)"):
        ds[2]
    with pytest.raises(DataFormatError, match="00003.h5.*'rgb'.*dtype float32"):
        ds[3]
    with pytest.raises(DataFormatError, match="00004.h5"):
        ds[4]
    with pytest.raises(DataFormatError, match="00005.h5.*'depth'.*dtype int32"):
        ds[5]
    os.remove(os.path.join(root, "train", "a", "00000.h5"))
    with pytest.raises(FileNotFoundError, match="00000.h5"):
        ds[0]


# ----------------------------------------------------------------------------- CSV + PNG


def test_csv_both_depth_encodings(tmp_path):
    h, w = SMALL
    rng = np.random.default_rng(0)
    rgbs = [pattern_image(h, w, k) for k in range(3)]
    png8 = [rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(3)]
    png16 = [rng.integers(0, 10001, (h, w), dtype=np.uint16) for _ in range(3)]
    write_csv_layout(tmp_path, "train", rgbs, png8)
    write_csv_layout(tmp_path, "test", rgbs, png16)
    train, test = NYUCsv(tmp_path, "train", size=SMALL), NYUCsv(tmp_path, "test", size=SMALL)
    assert len(train) == len(test) == 3
    assert train.scenes == ["scene_0", "scene_1", "scene_0"]
    for k in range(3):
        _check_item(train[k], rgbs[k], png8[k].astype(np.float32) * np.float32(10.0 / 255.0))
        _check_item(test[k], rgbs[k], png16[k].astype(np.float32) / np.float32(1000.0))
        assert torch.allclose(train[k]["depth"][0], torch.from_numpy(png8[k] / 255.0 * 10).float())
    assert train[0]["depth"].max() <= 10.0 and (test[0]["depth"] == 0).sum() == (png16[0] == 0).sum()


def test_csv_full_size_jpeg(tmp_path):
    # large flat blocks survive JPEG closely; bright right part and top band pin the orientation
    y, x = np.meshgrid(np.arange(480), np.arange(640), indexing="ij")
    rgb = np.stack([40 + 150 * (x >= 400) + 60 * (y < 96) + 10 * c for c in range(3)]).astype(np.uint8)
    write_csv_layout(tmp_path, "test", [rgb], [np.full((480, 640), 2500, np.uint16)], ext="jpg")
    item = NYUCsv(tmp_path, "test")[0]
    assert item["image"].shape == (3, 480, 640)
    assert (item["image"].float() - torch.from_numpy(rgb).float()).abs().mean() < 2
    assert torch.equal(item["depth"], torch.full((1, 480, 640), 2.5))


# The EXIF Orientation tag (0x0112): the stored pixels -> the picture as shown (EXIF 2.32, Table 14).
SHOWN = {
    1: lambda s: s,
    2: lambda s: s[:, ::-1],              # mirrored left-right
    3: lambda s: s[::-1, ::-1],           # turned 180 degrees
    4: lambda s: s[::-1, :],              # mirrored top-bottom
    5: lambda s: s.swapaxes(0, 1),        # mirrored about the main diagonal
    6: lambda s: np.rot90(s, -1),         # stored turned 90 degrees anticlockwise: shown turned clockwise
    7: lambda s: s[::-1, ::-1].swapaxes(0, 1),  # mirrored about the other diagonal
    8: lambda s: np.rot90(s, 1),          # shown turned anticlockwise
}


def _save_with_orientation(path, array, orientation):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(array)).save(path, exif=exif)


@pytest.mark.parametrize("orientation", sorted(SHOWN))
def test_decode_image_shows_the_picture_as_its_exif_orientation_says(tmp_path, orientation):
    from fastmde.data._common import decode_image

    stored = pattern_image(5, 8).transpose(1, 2, 0)          # (H, W, 3), every pixel distinct
    _save_with_orientation(tmp_path / "p.png", stored, orientation)
    np.testing.assert_array_equal(decode_image(tmp_path / "p.png"), SHOWN[orientation](stored).transpose(2, 0, 1))
    depth16 = (np.arange(40, dtype=np.uint16).reshape(5, 8) * 250)
    _save_with_orientation(tmp_path / "d.png", depth16, orientation)
    np.testing.assert_array_equal(decode_image(tmp_path / "d.png", rgb=False), SHOWN[orientation](depth16))


def test_csv_reads_photos_as_shown(tmp_path):
    """A photo stored sideways with Orientation=6 (and its depth map likewise) reads upright."""
    h, w = SMALL
    rgb, depth = pattern_image(h, w), np.arange(h * w, dtype=np.uint16).reshape(h, w) * 7
    write_csv_layout(tmp_path, "test", [rgb], [depth])
    ds = NYUCsv(tmp_path, "test", size=SMALL)
    rgb_path, depth_path = (os.path.join(tmp_path, p) for p in ds.pairs[0])
    _save_with_orientation(rgb_path, np.rot90(rgb.transpose(1, 2, 0), 1), 6)     # stored (w, h)
    _save_with_orientation(depth_path, np.rot90(depth, 1), 6)
    _check_item(ds[0], rgb, depth.astype(np.float32) / np.float32(1000.0))


def test_decode_image_errors_name_the_file(tmp_path):
    from fastmde.data._common import decode_image

    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        decode_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    with pytest.raises(DataFormatError, match="bad.jpg: cannot be decoded as an image"):
        decode_image(tmp_path / "bad.jpg")
    with pytest.raises(DataFormatError, match="is a directory"):
        decode_image(tmp_path)


def test_csv_errors_name_the_file(tmp_path):
    h, w = SMALL
    with pytest.raises(FileNotFoundError, match="nyu2_train.csv"):
        NYUCsv(tmp_path, "train", size=SMALL)
    write_csv_layout(tmp_path, "train", [pattern_image(h, w)] * 2, [np.zeros((h, w), np.uint16)] * 2)
    ds = NYUCsv(tmp_path, "train", size=SMALL)
    with pytest.raises(DataFormatError, match="0_depth.png.*expected 8-bit"):
        ds[0]
    corrupt = os.path.join(tmp_path, ds.pairs[1][0])
    with open(corrupt, "wb") as f:
        f.write(b"\x89PNG garbage")
    with pytest.raises(DataFormatError, match="1.png.*decoded"):
        ds[1]
    with pytest.raises(DataFormatError, match=rf"0.png: image is {h}x{w} \(rows x columns\).*expected 480x640"):
        NYUCsv(tmp_path, "train", encoding="png16mm")[0]
    os.remove(os.path.join(tmp_path, ds.pairs[0][1]))
    with pytest.raises(FileNotFoundError, match="0_depth.png"):
        ds[0]
    with open(os.path.join(tmp_path, "data", "nyu2_test.csv"), "w") as f:
        f.write("only_one_column.png\n")
    with pytest.raises(DataFormatError, match="nyu2_test.csv:1"):
        NYUCsv(tmp_path, "test", size=SMALL)


# ----------------------------------------------------------------------------- workers


def test_hdf5_readers_in_dataloader_workers(tmp_path):
    h, w = SMALL
    imgs = [pattern_image(h, w, k) for k in range(8)]
    deps = [pattern_depth(h, w, k) for k in range(8)]
    write_labeled(tmp_path / "l.mat", imgs, deps)
    _frames_tree(tmp_path / "f", h, w, per_scene=4)
    for ds in (NYULabeled(tmp_path / "l.mat", "all", size=SMALL), NYUFrames(tmp_path / "f", "train", size=SMALL)):
        direct = [ds[i] for i in range(len(ds))]  # opens the file in this process first
        state = pickle.loads(pickle.dumps(ds))
        assert torch.equal(state[1]["image"], direct[1]["image"])
        loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
        images = torch.cat([b["image"] for b in loader])
        depths = torch.cat([b["depth"] for b in loader])
        assert torch.equal(images, torch.stack([d["image"] for d in direct]))
        assert torch.equal(depths, torch.stack([d["depth"] for d in direct]))


def test_labeled_handle_not_pickled(tmp_path):
    h, w = SMALL
    write_labeled(tmp_path / "l.mat", [pattern_image(h, w)], [pattern_depth(h, w)])
    ds = NYULabeled(tmp_path / "l.mat", "all", size=SMALL)
    ds[0]
    assert ds._h5._file is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._h5._file is None
    assert torch.equal(clone[0]["image"], ds[0]["image"])
