"""``NYULabeled``: the official labelled set ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from ._common import NYU_SIZE, DataFormatError, LazyHDF5, check_array, hdf5_dataset, make_item, parse_size, read_hdf5
from .splits import NYU_LABELED_COUNT, nyu_test_indices, read_index_file

#: the labelled set's file name, and the test-split file read beside it
FILE_NAME = "nyu_depth_v2_labeled.mat"
INDEX_FILE_NAME = "test_indices.txt"


class NYULabeled(Dataset):
    """Items of ``nyu_depth_v2_labeled.mat``, read lazily one image at a time.

    MATLAB stores arrays column-major, so h5py sees every axis reversed: ``images`` is uint8
    (N, 3, W, H) = (1449, 3, 640, 480) and ``depths`` / ``rawDepths`` float (N, W, H). An item
    transposes them back: ``image[c, y, x] = images[n, c, x, y]``, ``depth[0, y, x] = depths[n, x, y]``.

    Args:
        path: the .mat file, or a folder holding ``nyu_depth_v2_labeled.mat``.
        split: ``"train"`` (795 images), ``"test"`` (654) or ``"all"``.
        depth: ``"depths"`` (in-painted, metres) or ``"rawDepths"`` (raw Kinect, 0 = missing).
        test_indices: 1-based indices of the test images, or a file of them (one a line);
            default: the file ``test_indices.txt`` beside the .mat if there is one (``fastmde
            synth --layout labeled`` writes it), else the standard 654 (which needs a file of
            1449 images).
        size: the expected frame size (rows, columns); (480, 640) for NYU; None: the file's own.

    Items are ``{"image": uint8 (3, H, W), "depth": float32 (1, H, W) metres, 0 = invalid}``;
    ``indices[i]`` is the 1-based index in the file of item ``i`` and ``scenes[i]`` its scene
    (for ``train_val_split(..., by_scene=True)``). The file is opened on first access in each
    process, so the dataset works with ``DataLoader(num_workers > 0)``.
    """

    def __init__(
        self,
        path,
        split: str = "train",
        depth: str = "depths",
        test_indices: Sequence[int] | str | os.PathLike | None = None,
        size=NYU_SIZE,
    ):
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if depth not in ("depths", "rawDepths"):
            raise ValueError(f"depth must be 'depths' or 'rawDepths', got {depth!r}")
        self.split, self.depth_key = split, depth
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, FILE_NAME)):
            path = os.path.join(path, FILE_NAME)
        self._h5 = LazyHDF5(path)
        self.path = self._h5.path
        f = self._h5.get()
        if size is None:   # the file's own size: images are (N, 3, W, H)
            shape = tuple(hdf5_dataset(f, self.path, "images").shape)
            size = (shape[3], shape[2]) if len(shape) == 4 else NYU_SIZE
        self.size = parse_size(size)
        h, w = self.size
        images = hdf5_dataset(f, self.path, "images")
        check_array(self.path, "images", images, (None, 3, w, h), "u", "uint8")
        if images.dtype != np.uint8:
            raise DataFormatError(f"{self.path}: dataset 'images' has dtype {images.dtype}, expected uint8")
        count = images.shape[0]
        depths = hdf5_dataset(f, self.path, depth)
        check_array(self.path, depth, depths, (count, w, h), "f", "a floating type")
        self.count = count
        if split == "all":
            indices = list(range(1, count + 1))
        else:
            beside = os.path.join(os.path.dirname(os.path.abspath(self.path)), INDEX_FILE_NAME)
            if test_indices is None and os.path.isfile(beside):
                test_indices = beside
            if test_indices is None:
                if count != NYU_LABELED_COUNT:
                    raise DataFormatError(
                        f"{self.path}: has {count} images; the standard train/test split needs "
                        f"{NYU_LABELED_COUNT}: put the 1-based indices of its test images, one a line, in "
                        f"{beside} (fastmde synth --layout labeled writes that file)"
                    )
                test = nyu_test_indices()
            elif isinstance(test_indices, (str, os.PathLike)):
                test = read_index_file(test_indices)
            else:
                test = [int(i) for i in test_indices]
            bad = [i for i in test if not 1 <= i <= count]
            if bad:
                raise ValueError(f"test_indices must be 1-based indices in 1..{count}, got {bad[:5]}")
            test_set = set(test)
            indices = sorted(test_set) if split == "test" else [i for i in range(1, count + 1) if i not in test_set]
        #: 1-based indices into the file, in item order
        self.indices = indices
        # Only the handle is kept: a fork would otherwise share it between processes.
        self._h5.close()

    @property
    def scenes(self) -> list[str] | None:
        """Scene name of each item (e.g. ``"kitchen_0028b"``), from the file's ``scenes`` cell
        array (MATLAB: references to uint16 strings, shape (1, N)); None if the file has none.
        Read on first use (one small read per image)."""
        if not hasattr(self, "_scenes"):
            self._scenes = self._read_scenes()
        return self._scenes

    def _read_scenes(self) -> list[str] | None:
        f = self._h5.get()
        if "scenes" not in f:
            return None
        refs = read_hdf5(f["scenes"], self.path, "scenes")
        refs = refs.reshape(-1)
        if refs.shape[0] != self.count:
            raise DataFormatError(f"{self.path}: 'scenes' has {refs.shape[0]} entries for {self.count} images")
        names = []
        for n in self.indices:
            try:
                chars = np.asarray(f[refs[n - 1]][()]).reshape(-1)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DataFormatError(f"{self.path}: 'scenes' entry {n} cannot be read: {exc}") from exc
            names.append("".join(chr(int(c)) for c in chars))
        return names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        n = self.indices[i] - 1
        f = self._h5.get()
        image = read_hdf5(f["images"], self.path, "images", n)  # (3, W, H)
        depth = read_hdf5(f[self.depth_key], self.path, self.depth_key, n)  # (W, H)
        return make_item(image.transpose(0, 2, 1), depth.T)

    def __repr__(self) -> str:
        return f"NYULabeled({self.path!r}, split={self.split!r}, depth={self.depth_key!r}, items={len(self)})"
