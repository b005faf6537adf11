"""``NYUCsv``: the CSV + image layout of Hu et al. / DenseDepth (``nyu_data.zip``)."""
from __future__ import annotations

import csv as _csv
import os

import numpy as np
from torch.utils.data import Dataset

from ._common import NYU_SIZE, DataFormatError, decode_image, make_item, parse_size, require_file

#: depth PNG encodings: 8-bit ``v / 255 * 10`` metres (train) and 16-bit millimetres (test)
ENCODINGS = ("png8", "png16mm")


def decode_depth_png(path, encoding: str) -> np.ndarray:
    """Depth in metres (float32, 0 = invalid) from a depth PNG.

    ``"png8"``: 8-bit, ``d = v / 255 * 10``. ``"png16mm"``: 16-bit millimetres, ``d = v / 1000``.
    Decoded by :func:`decode_image`, so an EXIF orientation turns the depth map like its photo."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    v = decode_image(path, rgb=False)
    path = os.fspath(path)
    if v.ndim != 2:
        raise DataFormatError(f"{path}: depth image has shape {v.shape}, expected one channel")
    if encoding == "png8":
        if v.dtype != np.uint8:
            raise DataFormatError(f"{path}: depth PNG is {v.dtype}, expected 8-bit for encoding 'png8'")
        return v.astype(np.float32) * np.float32(10.0 / 255.0)
    if v.dtype not in (np.uint16, np.int32, np.uint32):
        raise DataFormatError(f"{path}: depth PNG is {v.dtype}, expected 16-bit for encoding 'png16mm'")
    return v.astype(np.float32) / np.float32(1000.0)


class NYUCsv(Dataset):
    """Pairs listed in ``<root>/data/nyu2_<split>.csv`` (no header, ``rgb_path,depth_path`` a line).

    Paths in the CSV are relative to ``root`` (as in ``nyu_data.zip``: ``data/nyu2_train/...``).
    Train depth is an 8-bit PNG (``v / 255 * 10`` m), test depth a 16-bit PNG in millimetres;
    0 is invalid in both. Images are read as shown (:func:`~fastmde.data._common.decode_image`
    applies an EXIF orientation tag, to the photo and to its depth map alike).

    Args:
        root: the directory that holds ``data/``.
        split: ``"train"`` or ``"test"``.
        encoding: ``"png8"`` or ``"png16mm"``; default by split (train: png8, test: png16mm).
            A PNG whose bit depth does not match is an error naming the file.
        size: the expected frame size (rows, columns); (480, 640) for NYU.

    Items are ``{"image": uint8 (3, H, W), "depth": float32 (1, H, W), 0 = invalid}``;
    ``scenes[i]`` is the directory name of item ``i``'s RGB file.
    """

    def __init__(self, root, split: str = "train", encoding: str | None = None, size=NYU_SIZE):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if encoding is None:
            encoding = "png8" if split == "train" else "png16mm"
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.root, self.split, self.encoding = os.fspath(root), split, encoding
        self.size = parse_size(size)
        if os.path.isfile(self.root):
            raise DataFormatError(f"{self.root}: is a file; the CSV layout is a folder holding data/nyu2_{split}.csv "
                                  "(give the folder)")
        self.csv_path = require_file(os.path.join(self.root, "data", f"nyu2_{split}.csv"))
        pairs = []
        with open(self.csv_path, newline="") as f:
            for n, row in enumerate(_csv.reader(f), 1):
                if not row or not "".join(row).strip():
                    continue
                if len(row) != 2:
                    raise DataFormatError(f"{self.csv_path}:{n}: expected 'rgb_path,depth_path', got {row!r}")
                pairs.append((row[0].strip(), row[1].strip()))
        if not pairs:
            raise DataFormatError(f"{self.csv_path}: lists no images")
        self.pairs = pairs
        self.scenes = [os.path.basename(os.path.dirname(rgb)) for rgb, _ in pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        rgb_rel, depth_rel = self.pairs[i]
        rgb_path = os.path.join(self.root, rgb_rel)
        depth_path = os.path.join(self.root, depth_rel)
        rgb = decode_image(rgb_path)
        depth = decode_depth_png(depth_path, self.encoding)
        h, w = self.size
        if rgb.shape != (3, h, w):
            raise DataFormatError(f"{rgb_path}: image is {rgb.shape[1]}x{rgb.shape[2]} (rows x columns) as shown "
                                  f"(EXIF orientation applied), expected {h}x{w}")
        if depth.shape != (h, w):
            raise DataFormatError(f"{depth_path}: depth image is {depth.shape[0]}x{depth.shape[1]} (rows x columns), "
                                  f"expected {h}x{w}")
        return make_item(rgb, depth)

    def __repr__(self) -> str:
        return f"NYUCsv({self.root!r}, split={self.split!r}, items={len(self)})"
