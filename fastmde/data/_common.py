"""Shared pieces of the NYU readers: the error type, array checks, lazy per-process HDF5 handles,
and the one image decoder (used by the readers and by ``fastmde predict``)."""
from __future__ import annotations

import os

import numpy as np
import torch

from .._text import parse_size  # noqa: F401  (the readers' sizes: one HxW rule)

#: NYU-Depth-v2 frame size (rows, columns).
NYU_SIZE = (480, 640)
#: photo file extensions the folder readers look for
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


class DataFormatError(ValueError):
    """A data file is missing a key, or has the wrong shape or dtype, or cannot be decoded.

    The message always names the file and what is wrong with it."""


def check_array(path, key: str, array, shape: tuple, kinds: str, kind_name: str) -> None:
    """Raise :class:`DataFormatError` unless ``array`` has ``shape`` (None = any) and a dtype kind in ``kinds``."""
    got = tuple(array.shape)
    if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise DataFormatError(f"{path}: dataset '{key}' has shape {got}, expected {want}")
    if np.dtype(array.dtype).kind not in kinds:
        raise DataFormatError(f"{path}: dataset '{key}' has dtype {array.dtype}, expected {kind_name}")


def require_file(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataFormatError(f"{path}: is a directory, expected a file")
    return path


def open_hdf5(path):
    """Open an HDF5 file read-only; a missing, truncated or corrupt file raises a clear error."""
    import h5py

    path = require_file(path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot be read as HDF5 (truncated or corrupt?): {exc}") from exc


def hdf5_dataset(f, path, key: str):
    import h5py

    if key not in f:
        raise DataFormatError(f"{path}: no dataset '{key}' (keys: {sorted(f.keys())})")
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise DataFormatError(f"{path}: '{key}' is a group, expected a dataset")
    return ds


def read_hdf5(ds, path, key: str, index=()):
    """``ds[index]`` as a numpy array; a read failure (e.g. a truncated file) names the file."""
    try:
        return ds[index]
    except (OSError, ValueError, KeyError) as exc:
        raise DataFormatError(f"{path}: reading '{key}' failed (truncated or corrupt?): {exc}") from exc


class LazyHDF5:
    """An HDF5 file opened on first use in each process.

    The open handle is kept out of pickled state and keyed by the process id, so an object
    holding one can be sent to DataLoader workers (fork or spawn): each worker reopens the
    file. Nothing is read until asked for."""

    def __init__(self, path):
        self.path = require_file(path)
        self._file = None
        self._pid = None

    def get(self):
        if self._file is None or self._pid != os.getpid():
            self._file = open_hdf5(self.path)
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._file = None
        self._pid = None


def decode_image(path, *, rgb: bool = True) -> np.ndarray:
    """An image file as the user sees it: the EXIF orientation applied, then decoded.

    Cameras store a photo's pixels as the sensor read them and record how to turn them in the
    EXIF ``Orientation`` tag (0x0112); viewers apply it, and so does this decoder
    (``PIL.ImageOps.exif_transpose``), so a JPEG stored 640 wide and 480 high with
    Orientation=6 decodes to 640 rows and 480 columns, upright. Files without the tag are
    returned as stored.

    Args:
        path: a JPEG, PNG, BMP, TIFF, WebP, PPM, ... file.
        rgb: True: uint8 (3, H, W), RGB (see :func:`photo_rgb` for the modes converted and
            refused);
            False: the stored values as a (writable) numpy array (H, W) or (H, W, C) in the file's own
            dtype (e.g. uint16 for 16-bit PNGs), for depth maps; a palette image (whose
            values would be colour-table indices) is refused.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFormatError: a folder, a file that cannot be decoded as an image, or (``rgb``) an
            image that is no photo (the message names the file).
    """
    from PIL import Image, ImageOps

    path = require_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            if not rgb and img.mode in ("P", "PA"):
                # np.asarray of a palette image gives colour-table indices, never depth values
                raise DataFormatError(f"{path}: is a palette image (mode {img.mode}): its pixels are colour-table "
                                      "indices, not depth values; save the depth map as a greyscale (L / I;16) PNG")
            array = np.asarray(photo_rgb(img, path) if rgb else img)
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(f"{path}: cannot be decoded as an image: {exc}") from exc
    # Always a writable array of its own: np.asarray of a Pillow image is read-only, and the
    # transposed copy is the same read-only array for a 1x1 photo (already contiguous), which
    # torch.from_numpy warns about.
    if rgb:
        return np.array(array.transpose(2, 0, 1), dtype=np.uint8, order="C")
    return array if array.flags.writeable else array.copy()


#: Pillow modes of 8-bit photos whose conversion to RGB is exact (grey replicated, palette looked up,
#: CMYK/YCbCr/LAB/HSV by Pillow's formulas)
_PHOTO_MODES = ("RGB", "L", "P", "1", "CMYK", "YCbCr", "LAB", "HSV")
#: the same with an alpha channel: converted only when every pixel is opaque
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def photo_rgb(img, path):
    """A decoded Pillow image as an 8-bit RGB image, converted only where that is faithful.

    8-bit colour, grey and palette images are converted (``Image.convert("RGB")``). An image
    with an alpha channel (or a palette with a transparent entry) is converted when every pixel
    is opaque; transparent pixels have no colour to train on, so such a file is refused. A
    16-bit or 32-bit single-channel image (modes ``I;16*``, ``I``, ``F``) is refused: Pillow
    would clip its values to 255, and it is most likely a depth map given as the photo.

    Raises:
        DataFormatError: naming ``path``, the mode and what to do.
    """
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        raise DataFormatError(f"{path}: is a {'32-bit float' if mode == 'F' else '16/32-bit'} single-channel image "
                              f"(mode {mode}), not an 8-bit photo: a depth map given as the image?")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        alpha = np.asarray(img.getchannel("A"))
        transparent = int((alpha < 255).sum())
        if transparent:
            raise DataFormatError(f"{path}: has {transparent} transparent pixel(s) (mode {mode}, alpha < 255): "
                                  "their colour is undefined; flatten the image onto a background first")
        return img.convert("RGB")
    if mode not in _PHOTO_MODES:
        raise DataFormatError(f"{path}: image mode {mode} is not a photo mode fastmde converts to RGB "
                              f"({', '.join(_PHOTO_MODES + _ALPHA_MODES)})")
    return img if mode == "RGB" else img.convert("RGB")


def make_item(image: np.ndarray, depth: np.ndarray) -> dict:
    """The common item: ``image`` uint8 (3, H, W), ``depth`` float32 (1, H, W) metres, 0 = invalid.

    Non-finite or negative depth is set to 0 (invalid)."""
    image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8))
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    bad = ~np.isfinite(depth) | (depth < 0)
    if bad.any():
        depth = np.where(bad, np.float32(0), depth)
    depth_t = torch.from_numpy(depth)[None]
    return {"image": image_t, "depth": depth_t}
