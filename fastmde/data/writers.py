"""Writers of the NYU-Depth-v2 file layouts, used for the synthetic dataset and for tests.

Every file is written through :mod:`fastmde._atomic` (a uniquely named temporary file beside
it, fsynced and renamed into place), so an interrupted run never leaves half a file under a
final name and two runs writing into one folder do not collide."""
from __future__ import annotations

import os

import numpy as np

from .._atomic import atomic_path, atomic_write

MAT_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 1970 HDF5 schema 1.00 ."


def write_frame_h5(path, rgb: np.ndarray, depth: np.ndarray, compression: str | None = None) -> None:
    """One per-frame file: ``rgb`` uint8 (3, H, W), ``depth`` float32 (H, W) metres."""
    import h5py

    rgb = np.asarray(rgb)
    depth = np.asarray(depth, np.float32)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"rgb must be uint8 (3, H, W), got {rgb.dtype} {rgb.shape}")
    if depth.shape != rgb.shape[1:]:
        raise ValueError(f"depth must be (H, W) = {rgb.shape[1:]}, got {depth.shape}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("rgb", data=rgb, compression=compression)
        f.create_dataset("depth", data=depth, compression=compression)


class LabeledMatWriter:
    """Writes ``nyu_depth_v2_labeled.mat`` the way MATLAB v7.3 does: HDF5 with a 512-byte
    MATLAB user block and every axis reversed (``images`` uint8 (N, 3, W, H), ``depths`` and
    ``rawDepths`` float32 (N, W, H)). Use as a context manager; ``add(rgb, depth, raw)`` per image."""

    def __init__(self, path, count: int, size=(480, 640)):
        import h5py

        self.path = os.fspath(path)
        self.count = int(count)
        h, w = size
        self._atomic = atomic_path(self.path)
        self.tmp = self._atomic.__enter__()
        try:
            self.f = h5py.File(self.tmp, "w", userblock_size=512)
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self.images = self.f.create_dataset("images", (count, 3, w, h), np.uint8, chunks=(1, 3, w, h))
        self.depths = self.f.create_dataset("depths", (count, w, h), np.float32, chunks=(1, w, h))
        self.raw = self.f.create_dataset("rawDepths", (count, w, h), np.float32, chunks=(1, w, h))
        self.n = 0

    def add(self, rgb: np.ndarray, depth: np.ndarray, raw: np.ndarray | None = None) -> None:
        if self.n >= self.count:
            raise ValueError(f"{self.path}: already holds {self.count} images")
        self.images[self.n] = np.asarray(rgb, np.uint8).transpose(0, 2, 1)
        self.depths[self.n] = np.asarray(depth, np.float32).T
        self.raw[self.n] = np.asarray(depth if raw is None else raw, np.float32).T
        self.n += 1

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.f.close()
            if exc_type is None and self.n != self.count:
                raise ValueError(f"{self.path}: only {self.n} of {self.count} images were written")
            if exc_type is None:
                with open(self.tmp, "r+b") as f:  # MATLAB's 128-byte header: text, subsystem offset, version, endianness
                    f.write(MAT_HEADER[:116].ljust(116) + b"\x00" * 8 + b"\x00\x02IM")
        except BaseException as error:  # the temporary file goes, the error propagates
            self._atomic.__exit__(type(error), error, error.__traceback__)
            raise
        # renames into place on success; removes the temporary file when the block raised
        self._atomic.__exit__(exc_type, exc, tb)
        return False


def write_index_file(path, indices, comment: str = "") -> None:
    with atomic_write(path, "w") as f:
        if comment:
            f.write(f"# {comment}\n")
        f.writelines(f"{int(i)}\n" for i in indices)
