"""NYU-Depth-v2 readers, synthetic NYU-like scenes, splits and batched augmentation.

Readers (every item is ``{"image": uint8 (3, 480, 640), "depth": float32 (1, 480, 640) metres,
0 = invalid}``):

* :class:`NYULabeled` - the official ``nyu_depth_v2_labeled.mat`` (795 train / 654 test).
* :class:`NYUFrames` - per-frame HDF5 (``train/<scene>/NNNNN.h5``, ``val/official/NNNNN.h5``).
* :class:`NYUCsv` - CSV + PNG/JPEG (``data/nyu2_train.csv``, ``data/nyu2_test.csv``).

Readers of any dataset, frames of any size (items may add ``"focal"``; ``kb_crop=True`` cuts
KITTI frames to 352x1216):

* :class:`FileList` - ``<rgb> <depth> [focal]`` lists (BTS, AdaBins, NeWCRFs, ZoeDepth...):
  16-bit PNG depth divided by a scale (NYU 1000, KITTI 256) or ``.npy`` metres; ``None`` depth
  for image-only lines.
* :class:`Folder` - photos and depth maps paired by file name under two folders.
* :class:`RandomCrops` brings training frames of different sizes to one size;
  :func:`collate_by_size` batches evaluation frames by size.
* :class:`SyntheticScenes` - ray-cast indoor scenes rendered on the fly;
  :func:`write_synthetic_dataset` writes them in the layouts above and
  :func:`default_synthetic_root` caches the built-in dataset.

:func:`train_val_split` holds out a deterministic validation fraction (optionally by scene);
:class:`Augment` is the paper's augmentation, batched on the batch's device.
"""
from ._common import NYU_SIZE, DataFormatError
from .augment import Augment
from .csv import NYUCsv
from .filelist import FileList
from .fit import RandomCrops, collate_by_size, collate_frames
from .folder import Folder
from .kitti import KB_CROP_SIZE, kb_crop
from .frames import NYUFrames
from .labeled import NYULabeled
from .splits import nyu_test_indices, nyu_train_indices, train_val_split
from .synthetic import (
    KINECT_INTRINSICS,
    SyntheticScenes,
    default_cache_dir,
    default_synthetic_root,
    render_frame,
    write_synthetic_dataset,
)

__all__ = [
    "Augment",
    "DataFormatError",
    "FileList",
    "Folder",
    "KB_CROP_SIZE",
    "KINECT_INTRINSICS",
    "NYUCsv",
    "NYUFrames",
    "NYULabeled",
    "NYU_SIZE",
    "RandomCrops",
    "SyntheticScenes",
    "collate_by_size",
    "collate_frames",
    "default_cache_dir",
    "default_synthetic_root",
    "kb_crop",
    "nyu_test_indices",
    "nyu_train_indices",
    "render_frame",
    "train_val_split",
    "write_synthetic_dataset",
]
