"""Depth maps stored one per file, as file lists and folders of depth maps hold them.

* 16-bit PNG (one channel; Pillow mode ``I;16`` or ``I``): ``depth = value / depth_scale``
  metres, 0 = no measurement. The scale is the dataset's: 1000 for NYU-Depth-v2 (millimetres),
  256 for KITTI (BTS ``pytorch/bts_dataloader.py``: ``depth_gt / 1000.0`` for nyu,
  ``depth_gt / 256.0`` otherwise; the KITTI depth benchmark's devkit stores ``depth * 256``).
  Any other Pillow-readable 16-bit single-channel file (TIFF) is read the same way.
* ``.npy``: a floating (H, W) array in metres (``numpy.save``); 0, NaN, inf and negative values
  are no measurement.

Conventions are checked, never guessed: an 8-bit PNG (at most 255 levels: a preview, or a map
saved with the wrong bit depth), a colour image, a float image, an integer ``.npy`` (millimetres?)
or an array of another shape is a :class:`DataFormatError` naming the file. A scale that puts
most of an item's measured depths above the dataset's range is a warning
(:func:`range_warning`), as is a map with no measurement at all.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from ._common import DataFormatError, decode_image, make_item, require_file
from .kitti import kb_crop

#: the depth file extensions the folder reader looks for (file lists may name any image file)
DEPTH_EXTENSIONS = (".png", ".npy")


def read_depth(path, depth_scale: float | None) -> np.ndarray:
    """Depth in metres, float32 (H, W), 0 = no measurement, from a 16-bit PNG or a ``.npy`` file.

    Args:
        path: the depth file.
        depth_scale: the PNG value of one metre (NYU 1000, KITTI 256); not used for ``.npy``.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: the file cannot be read, or holds no 16-bit single-channel image (PNG)
            or floating (H, W) array (``.npy``); the message names the file and what it holds.
        ValueError: a PNG and no (or a non-positive) ``depth_scale``.
    """
    path = require_file(path)
    if path.lower().endswith(".npy"):
        return _read_npy(path)
    if depth_scale is None or not depth_scale > 0:
        raise ValueError(f"{path}: a depth PNG needs a positive depth_scale (the value of one metre: NYU 1000, "
                         f"KITTI 256), got {depth_scale!r}")
    v = decode_image(path, rgb=False)
    if v.ndim != 2:
        raise DataFormatError(f"{path}: depth image has {v.shape[2]} channels, expected one 16-bit channel "
                              "(is this the photo?)")
    if v.dtype == np.uint8 or v.dtype == np.bool_:
        raise DataFormatError(f"{path}: is an 8-bit image where a 16-bit depth PNG is expected (value / "
                              f"{depth_scale:g} metres): an 8-bit map holds 255 levels at most (a preview, or "
                              "saved with the wrong bit depth?)")
    if v.dtype.kind == "f":
        raise DataFormatError(f"{path}: is a floating-point image; depth images must be 16-bit integers "
                              f"(value / {depth_scale:g} metres), or save metres as .npy")
    if v.dtype.kind not in "ui" or v.dtype.itemsize > 4:
        raise DataFormatError(f"{path}: depth image has dtype {v.dtype}, expected 16-bit integers")
    return v.astype(np.float32) / np.float32(depth_scale)


def _read_npy(path: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataFormatError(f"{path}: cannot be read as a .npy array (truncated or corrupt?): {exc}") from exc
    if not isinstance(a, np.ndarray):
        raise DataFormatError(f"{path}: holds several arrays (.npz?), expected one (H, W) array in metres")
    if a.ndim == 3 and 1 in (a.shape[0], a.shape[2]):
        a = a.reshape(a.shape[1:] if a.shape[0] == 1 else a.shape[:2])
    if a.ndim != 2:
        raise DataFormatError(f"{path}: .npy depth has shape {a.shape}, expected (H, W) metres")
    if a.dtype.kind != "f":
        raise DataFormatError(f"{path}: .npy depth holds {a.dtype} values, expected floating metres (integer "
                              "millimetres? store them as a 16-bit PNG with a depth scale, or divide and save "
                              "float32 metres)")
    return a.astype(np.float32)


def range_warning(depth: np.ndarray, path, max_depth: float | None, depth_scale: float | None) -> str | None:
    """A message when a depth map looks wrongly scaled or empty, else None.

    Wrongly scaled: more than half of the measured depths (> 0, finite) lie above ``max_depth``
    (a scale of 1 instead of 256 puts KITTI's roads kilometres away). Empty: no measurement at
    all (a KITTI map is 5-30% measured; an all-zero map is usually a wrong file)."""
    valid = np.isfinite(depth) & (depth > 0)
    n = int(valid.sum())
    path = os.fspath(path)
    if n == 0:
        return f"{path}: the depth map has no measurement (every value is 0 or invalid)"
    if max_depth is None:
        return None
    above = int((depth[valid] > max_depth).sum())
    if above * 2 > n:
        scale = "" if depth_scale is None or path.lower().endswith(".npy") else f" with depth_scale {depth_scale:g}"
        return (f"{path}: {above / n:.0%} of the measured depths{scale} lie above the dataset's {max_depth:g} m "
                f"(median {float(np.median(depth[valid])):.4g} m): is the scale right (NYU 1000, KITTI 256; "
                ".npy in metres)?")
    return None


class PairedFiles(Dataset):
    """Items read from a photo file and a depth file each (the base of ``FileList`` and ``Folder``).

    Subclasses fill ``image_paths`` (str), ``depth_paths`` (str, or None for an image without
    ground truth), ``focals`` (float or None) and ``scenes``; this class reads them.

    Items: ``{"image": uint8 (3, H, W), "depth": float32 (1, H, W) metres, 0 = no measurement}``,
    plus ``"focal"`` (float, pixels) where the source gives one; an image without ground truth
    has no ``"depth"``. Frames may have any size (each item keeps its own; with ``kb_crop`` every
    frame becomes 352x1216). The photo and its depth map must have the same size.
    """

    def __init__(self, *, depth_scale: float | None, kb_crop: bool = False, max_depth: float | None = None):
        if depth_scale is not None and not (depth_scale > 0 and np.isfinite(depth_scale)):
            raise ValueError(f"depth_scale must be a positive number (the PNG value of one metre: NYU 1000, "
                             f"KITTI 256), got {depth_scale!r}")
        if max_depth is not None and not max_depth > 0:
            raise ValueError(f"max_depth must be positive metres, got {max_depth!r}")
        self.depth_scale, self.kb_crop, self.max_depth = depth_scale, bool(kb_crop), max_depth
        self.image_paths: list[str] = []
        self.depth_paths: list[str | None] = []
        self.focals: list[float | None] = []
        self.scenes: list[str] = []
        self._warned = False

    def __len__(self) -> int:
        return len(self.image_paths)

    def read_image(self, i: int) -> np.ndarray:
        """The photo of item ``i``, uint8 (3, H, W), kb-cropped if asked."""
        rgb = decode_image(self.image_paths[i])
        return kb_crop(rgb, self.image_paths[i]) if self.kb_crop else rgb

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        rgb_path, depth_path = self.image_paths[i], self.depth_paths[i]
        rgb = decode_image(rgb_path)
        if depth_path is None:
            item = {"image": torch.from_numpy(np.ascontiguousarray(kb_crop(rgb, rgb_path) if self.kb_crop else rgb))}
        else:
            depth = read_depth(depth_path, self.depth_scale)
            if depth.shape != rgb.shape[1:]:
                raise DataFormatError(f"{depth_path}: depth map is {depth.shape[0]}x{depth.shape[1]}, its photo "
                                      f"{rgb_path} is {rgb.shape[1]}x{rgb.shape[2]} (rows x columns, EXIF "
                                      "orientation applied)")
            if self.kb_crop:
                rgb, depth = kb_crop(rgb, rgb_path), kb_crop(depth, depth_path)
            if not self._warned:
                message = range_warning(depth, depth_path, self.max_depth, self.depth_scale)
                if message is not None:
                    self._warned = True     # once per dataset (per worker process)
                    warnings.warn(message, UserWarning, stacklevel=2)
            item = make_item(rgb, depth)
        if self.focals[i] is not None:
            item["focal"] = self.focals[i]
        return item
