"""NYU-Depth-v2 readers, synthetic NYU-like scenes, splits and batched augmentation.

Readers (every item is ``{"image": uint8 (3, 480, 640), "depth": float32 (1, 480, 640) metres,
0 = invalid}``):

* :class:`NYULabeled` - the official ``nyu_depth_v2_labeled.mat`` (795 train / 654 test).
* :class:`NYUFrames` - per-frame HDF5 (``train/<scene>/NNNNN.h5``, ``val/official/NNNNN.h5``).
* :class:`NYUCsv` - CSV + PNG/JPEG (``data/nyu2_train.csv``, ``data/nyu2_test.csv``).
* :class:`SyntheticScenes` - ray-cast indoor scenes rendered on the fly;
  :func:`write_synthetic_dataset` writes them in the layouts above and
  :func:`default_synthetic_root` caches the built-in dataset.

:func:`train_val_split` holds out a deterministic validation fraction (optionally by scene);
:class:`Augment` is the paper's augmentation, batched on the batch's device.
"""
from ._common import NYU_SIZE, DataFormatError
from .augment import Augment
from .csv import NYUCsv
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
    "KINECT_INTRINSICS",
    "NYUCsv",
    "NYUFrames",
    "NYULabeled",
    "NYU_SIZE",
    "SyntheticScenes",
    "default_cache_dir",
    "default_synthetic_root",
    "nyu_test_indices",
    "nyu_train_indices",
    "render_frame",
    "train_val_split",
    "write_synthetic_dataset",
]
