"""KITTI facts the readers need: the "kb crop" and the dataset's depth encoding.

The KITTI depth benchmark (Uhrig et al. 2017, Eigen split of Eigen et al. 2014) has frames of
about 375x1242 that vary slightly by drive (370x1224 to 376x1242), sparse projected LiDAR ground
truth (about 5-30% of the pixels measured) stored as 16-bit PNG of ``depth * 256``, 0 = no
measurement. The "kb crop" keeps the bottom 352 rows and the central 1216 columns, the size of
the KITTI benchmark's own test frames (BTS ``--do_kb_crop``: "crop input images as kitti
benchmark images"), so that every frame has one size; BTS ``pytorch/bts_dataloader.py``::

    top_margin = int(height - 352); left_margin = int((width - 1216) / 2)
    image[top_margin:top_margin + 352, left_margin:left_margin + 1216]

used for training and online evaluation by BTS, AdaBins, NeWCRFs and ZoeDepth.
"""
from __future__ import annotations

import numpy as np

from ._common import DataFormatError

#: (rows, columns) the kb crop keeps
KB_CROP_SIZE = (352, 1216)
#: the PNG value of one metre in KITTI's depth maps
KITTI_DEPTH_SCALE = 256.0


def kb_crop_box(height: int, width: int, path=None) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the kb crop of a ``height`` x ``width`` frame:
    ``top = height - 352``, ``left = (width - 1216) // 2`` (BTS's ``int((width - 1216) / 2)``).

    Raises:
        DataFormatError: the frame is smaller than 352x1216 (names ``path`` when given).
    """
    h, w = KB_CROP_SIZE
    if height < h or width < w:
        where = f"{path}: " if path is not None else ""
        raise DataFormatError(f"{where}frame is {height}x{width}; the kb crop needs at least {h}x{w} "
                              "(frames that are not KITTI's: turn it off, --no-kb-crop / kb_crop=False)")
    top, left = height - h, (width - w) // 2
    return top, top + h, left, left + w


def kb_crop(array: np.ndarray, path=None) -> np.ndarray:
    """The kb crop of an (H, W) or (C, H, W) array (a view): bottom 352 rows, central 1216 columns."""
    top, bottom, left, right = kb_crop_box(array.shape[-2], array.shape[-1], path)
    return array[..., top:bottom, left:right]
