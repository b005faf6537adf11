"""``NYUFrames``: the per-frame HDF5 layout of sparse-to-dense / FastDepth."""
from __future__ import annotations

import os

import numpy as np
from torch.utils.data import Dataset

from ._common import NYU_SIZE, DataFormatError, check_array, hdf5_dataset, make_item, open_hdf5, parse_size, read_hdf5


class NYUFrames(Dataset):
    """One item per ``.h5`` file: ``<root>/train/<scene>/<NNNNN>.h5`` or ``<root>/val/official/<NNNNN>.h5``.

    Each file holds ``rgb`` uint8 (3, H, W) and ``depth`` float (H, W) in metres (train depth
    can contain 0 holes). Files are listed once (sorted by scene, then name) and each is opened
    only while its item is read, so the dataset works with ``DataLoader(num_workers > 0)``.

    Args:
        root: the directory holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"``.
        size: the expected frame size (rows, columns); (480, 640) for NYU; None: the size of
            the first file's ``rgb`` (every file must have it), e.g. for ``fastmde synth --size``
            datasets.

    Items are ``{"image": uint8 (3, H, W), "depth": float32 (1, H, W), 0 = invalid}``;
    ``files[i]`` and ``scenes[i]`` name the file and scene of item ``i``.
    """

    def __init__(self, root, split: str = "train", size=NYU_SIZE):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.root, self.split = os.fspath(root), split
        self.size = None if size is None else parse_size(size)
        top = os.path.join(self.root, split)
        if os.path.isfile(self.root):
            raise DataFormatError(f"{self.root}: is a file; the per-frame layout is a folder holding train/ and val/ "
                                  "(give the folder)")
        if not os.path.isdir(top):
            raise FileNotFoundError(f"{top}: no such directory (expected {split}/<scene>/<NNNNN>.h5 under {self.root})")
        files, scenes = [], []
        for scene in sorted(os.listdir(top)):
            scene_dir = os.path.join(top, scene)
            if not os.path.isdir(scene_dir):
                continue
            for name in sorted(os.listdir(scene_dir)):
                if name.endswith(".h5"):
                    files.append(os.path.join(scene_dir, name))
                    scenes.append(scene)
        if not files:
            loose = [n for n in os.listdir(top) if n.endswith(".h5")]
            where = (f"its {len(loose)} .h5 file(s) lie directly in it, not in a scene folder (NYU's test frames: "
                     f"val/official/<NNNNN>.h5)" if loose else "it holds none")
            raise DataFormatError(f"{top}: expected {split}/<scene>/<NNNNN>.h5 files, but {where}")
        self.files, self.scenes = files, scenes
        if self.size is None:
            with open_hdf5(files[0]) as f:
                shape = tuple(hdf5_dataset(f, files[0], "rgb").shape)
            if len(shape) != 3 or shape[0] != 3:
                raise DataFormatError(f"{files[0]}: dataset 'rgb' has shape {shape}, expected (3, H, W)")
            self.size = shape[1:]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        path = self.files[i]
        h, w = self.size
        with open_hdf5(path) as f:
            rgb_ds = hdf5_dataset(f, path, "rgb")
            check_array(path, "rgb", rgb_ds, (3, h, w), "u", "uint8")
            if rgb_ds.dtype != np.uint8:
                raise DataFormatError(f"{path}: dataset 'rgb' has dtype {rgb_ds.dtype}, expected uint8")
            depth_ds = hdf5_dataset(f, path, "depth")
            check_array(path, "depth", depth_ds, (h, w), "f", "a floating type")
            rgb = read_hdf5(rgb_ds, path, "rgb")
            depth = read_hdf5(depth_ds, path, "depth")
        return make_item(rgb, depth)

    def __repr__(self) -> str:
        return f"NYUFrames({self.root!r}, split={self.split!r}, items={len(self)})"
