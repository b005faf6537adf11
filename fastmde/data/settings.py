"""The two benchmark settings, ``nyu`` and ``kitti``: what each dataset's files and frames need.

``fastmde train --dataset kitti`` takes its defaults from here (each can still be given):

============  =========================  ============================================
              nyu                        kitti
============  =========================  ============================================
depth_scale   1000 (16-bit PNG in mm)    256 (KITTI devkit: ``depth * 256``)
max_depth     10 m                       80 m (every KITTI protocol's cap)
kb_crop       off                        on: bottom 352 rows, central 1216 columns
train_crop    none (frames as read)      352x704 at random (BTS/AdaBins ``input_height``
                                         352, ``input_width`` 704)
keep_aspect   off (stretch to --size)    on (352x1216 evaluation frames keep the
                                         training crops' scale inside the model)
loss          hu_blurred (the paper's)   silog (BTS's scale-invariant loss, which
                                         scores only the sparse LiDAR pixels)
============  =========================  ============================================

Sources: BTS ``pytorch/arguments_train_eigen.txt`` (``--input_height 352 --input_width 704
--max_depth 80 --do_kb_crop``) and ``arguments_train_nyu.txt`` (``--max_depth 10``);
``bts_dataloader.py`` (``depth_gt / 1000.0`` for nyu, ``/ 256.0`` for kitti); BTS trains KITTI
with its ``silog_loss`` (``bts.py``, variance focus 0.85, as fastmde's ``silog`` preset). BTS also rotates
KITTI crops by at most 1 degree and never flips vertically; fastmde's ``Augment`` flips only
horizontally too (its rotation, at most 5 degrees, is chosen with ``--augment-parts``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSetting:
    name: str
    depth_scale: float                   # the 16-bit PNG value of one metre
    max_depth: float                     # metres: the range the dataset's ground truth is scored in
    kb_crop: bool                        # KITTI's 352x1216 crop of every frame
    train_crop: tuple[int, int] | None   # random training crop (rows, columns); None: frames as read
    keep_aspect: bool                    # the model scales its input keeping the aspect ratio
    loss: str                            # the --loss preset when none is given


DATASETS = {
    "nyu": DatasetSetting("nyu", depth_scale=1000.0, max_depth=10.0, kb_crop=False, train_crop=None,
                          keep_aspect=False, loss="hu_blurred"),
    "kitti": DatasetSetting("kitti", depth_scale=256.0, max_depth=80.0, kb_crop=True, train_crop=(352, 704),
                            keep_aspect=True, loss="silog"),
}


def dataset_setting(name: str) -> DatasetSetting:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    return DATASETS[name]
