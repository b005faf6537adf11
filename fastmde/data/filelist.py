"""``FileList``: the ``<rgb> <depth> [focal]`` file lists of BTS, AdaBins, NeWCRFs, ZoeDepth, GLPDepth
and the Monocular-Depth-Estimation-Toolbox.

One sample a line, fields separated by white space (so paths cannot hold spaces), e.g. BTS's
``train_test_inputs/eigen_train_files_with_gt.txt``::

    2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000005.png 2011_09_26_drive_0001_sync/proj_depth/groundtruth/image_02/0000000005.png 721.5377
    2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png None 721.5377

and its NYU lists (``/kitchen_0028a/rgb_00045.jpg /kitchen_0028a/sync_depth_00045.png 518.8579``).
The photo path is relative to an image root, the depth path to a depth root; BTS joins them as
``os.path.join(data_path, "./" + path)`` (``bts_dataloader.py``), so a leading ``/`` is part of
the relative path when a root is given. A depth path of ``None`` marks a frame without ground
truth (BTS's test lists): such items are for prediction; readers for training and evaluation
leave them out and say how many, once. The optional third field is the focal length in pixels
(BTS passes it to its model; here an item carries it as ``item["focal"]``).
"""
from __future__ import annotations

import math
import os
import warnings

from ._common import DataFormatError, require_file
from .depth_files import PairedFiles

#: what a depth field holds for a frame without ground truth
NO_DEPTH = "None"
IMAGE_ONLY = ("skip", "keep", "all")


class FileList(PairedFiles):
    """The samples of a ``<rgb> <depth> [focal]`` list file.

    Args:
        path: the list file. Blank lines and lines starting with ``#`` are skipped.
        image_root: the folder photo paths are relative to; None: paths as written, relative to
            the list file's folder (an absolute path stays absolute). With a root, a leading
            ``/`` is read as relative to it (BTS).
        depth_root: likewise for depth paths (None: as written, relative to the list's folder).
        depth_scale: the PNG value of one metre (NYU 1000, KITTI 256); ``.npy`` depth is metres.
        kb_crop: keep the bottom 352 rows and central 1216 columns of every frame (KITTI).
        max_depth: the dataset's range in metres, for the wrong-scale warning (None: no check).
        image_only: ``"skip"`` (lines with depth ``None`` are left out, their count warned once),
            ``"keep"`` (every line; an image-only item has no ``"depth"``) or ``"all"`` (every line
            as an image-only item, depth paths neither read nor checked: for prediction).

    Items: see :class:`~fastmde.data.depth_files.PairedFiles`; ``"focal"`` when the list gives
    one. ``image_paths[i]``, ``depth_paths[i]``, ``focals[i]`` and ``lines[i]`` (the 1-based line
    number) describe item ``i``; ``scenes[i]`` is the folder of its photo (relative path), for
    ``train_val_split(..., by_scene=True)``; ``skipped`` counts the image-only lines left out.

    Raises:
        FileNotFoundError: the list, or a file it names (the message gives the line), is missing.
        DataFormatError: a line has not 2 or 3 fields, a focal length is not a positive number,
            the list gives focal lengths on some lines only, or it lists nothing to read.
    """

    def __init__(self, path, *, image_root=None, depth_root=None, depth_scale: float | None,
                 kb_crop: bool = False, max_depth: float | None = None, image_only: str = "skip"):
        super().__init__(depth_scale=depth_scale, kb_crop=kb_crop, max_depth=max_depth)
        if image_only not in IMAGE_ONLY:
            raise ValueError(f"image_only must be one of {IMAGE_ONLY}, got {image_only!r}")
        self.path = require_file(path)
        self.image_root = None if image_root is None else os.fspath(image_root)
        self.depth_root = None if depth_root is None else os.fspath(depth_root)
        for name, root in (("image_root", self.image_root), ("depth_root", self.depth_root)):
            if root is not None and not os.path.isdir(root):
                raise FileNotFoundError(f"{name} {root!r}: no such directory")
        self.image_only = image_only
        self.lines: list[int] = []
        self.skipped = 0
        has_focal = None        # (line number, bool) of the first sample line
        missing = []
        total = 0
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise DataFormatError(f"{self.path}: is not a text file list (expected lines '<rgb path> <depth path> "
                                  "[focal]'; is it an image?)") from None
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) not in (2, 3):
                raise DataFormatError(f"{self.path}:{n}: expected '<rgb path> <depth path> [focal]', got "
                                      f"{len(parts)} fields: {line!r}")
            focal = _focal(parts[2], self.path, n) if len(parts) == 3 else None
            if has_focal is None:
                has_focal = (n, focal is not None)
            elif has_focal[1] != (focal is not None):
                raise DataFormatError(f"{self.path}:{n}: {'has' if focal is not None else 'has no'} focal "
                                      f"length, line {has_focal[0]} {'has' if has_focal[1] else 'has none'}: "
                                      "give it on every line or on none")
            total += 1
            rgb_rel, depth_rel = parts[0], parts[1]
            no_depth = depth_rel == NO_DEPTH or image_only == "all"
            depth = None if no_depth else self._join(self.depth_root, depth_rel)
            if depth is None and image_only == "skip":
                self.skipped += 1
                continue
            rgb = self._join(self.image_root, rgb_rel)
            for p in (rgb, depth):
                if p is not None and not os.path.isfile(p):
                    missing.append(f"line {n}: {p}")
            self.image_paths.append(rgb)
            self.depth_paths.append(depth)
            self.focals.append(focal)
            self.lines.append(n)
            self.scenes.append(os.path.dirname(rgb_rel.lstrip("/")))
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise FileNotFoundError(f"{self.path}: {len(missing)} listed file(s) do not exist: "
                                    + "; ".join(missing[:3]) + more)
        if not self.image_paths:
            what = (f"{total} line(s), all without a depth map ({NO_DEPTH})" if total else "no sample line")
            raise DataFormatError(f"{self.path}: lists nothing to read: {what}")
        if self.skipped:
            warnings.warn(f"{self.path}: {self.skipped} of {total} lines have no depth map ({NO_DEPTH}): left out "
                          "(image-only lines are for prediction)", UserWarning, stacklevel=2)

    def _join(self, root, rel: str) -> str:
        if root is None:
            return os.path.join(os.path.dirname(os.path.abspath(self.path)), rel)
        return os.path.join(root, rel.lstrip("/"))

    def __repr__(self) -> str:
        return (f"FileList({self.path!r}, items={len(self)}, depth_scale={self.depth_scale}, "
                f"kb_crop={self.kb_crop})")


def _focal(text: str, path: str, n: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise DataFormatError(f"{path}:{n}: the focal length (third field) must be a positive number of pixels, "
                              f"got {text!r}")
    return value
