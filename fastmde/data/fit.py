"""Frames of different sizes in one batch: random crops for training, groups by size for evaluation.

A batch is one tensor, so frames of a file list or folder whose sizes differ (KITTI drives:
370x1224 to 376x1242; your own photos: anything) must be brought to one size for training.
:class:`RandomCrops` does it per item, as the projects that train on such lists do:

* a frame that covers the crop is only cut, never resampled, as BTS cuts its 352x704 training
  crops from KITTI's kb-cropped 352x1216 frames (``bts_dataloader.py`` ``random_crop``): the
  pixels, the sparse ground truth and the focal length stay as measured;
* a frame smaller than the crop in a side is first enlarged, keeping its aspect ratio, by the
  smallest factor that makes it cover the crop, ``s = max(crop_h / H, crop_w / W)`` (as
  Depth-Anything-V2 ``metric_depth/dataset/vkitti2.py`` resizes, ``keep_aspect_ratio=True``,
  ``resize_method='lower_bound'``): the photo bilinearly, the depth map by nearest neighbour
  (``nearest-exact``), so no value that was not measured appears and 0 (no measurement) stays 0;
* the cut is at a random position drawn from (seed, epoch, item index) only, so a resumed run
  sees the crops an uninterrupted one would (the trainer calls :meth:`RandomCrops.set_epoch`).

Evaluation scores every frame at its own size: :func:`collate_by_size` turns a batch of mixed
sizes into a list of same-size batches (a list of one when all agree).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from .._checks import integer_argument
from .._text import parse_size
from ._common import DataFormatError


def cover_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """(H', W'): the frame's own size when it covers ``size``; else the frame enlarged by
    ``s = max(size_h / height, size_w / width)``, rounded, never below ``size``."""
    if height >= size[0] and width >= size[1]:
        return height, width
    s = max(size[0] / height, size[1] / width)
    return max(size[0], round(height * s)), max(size[1], round(width * s))


def resize_item(item: dict, size: tuple[int, int]) -> dict:
    """``item`` with its photo (bilinear) and depth map (nearest) resized to ``size``."""
    out = dict(item)
    image = item["image"][None].float()
    image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    out["image"] = image[0].round_().clamp_(0, 255).to(torch.uint8)
    if "depth" in item:
        out["depth"] = F.interpolate(item["depth"][None], size=size, mode="nearest-exact")[0]
    return out


def crop_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index``'s crop in ``epoch``: a function of the three only."""
    return ((seed * 1_000_003 + epoch) * 2_147_483_647 + index) % (2**63 - 1)


class RandomCrops(Dataset):
    """``dataset``'s items cut to ``size`` at random (enlarged first, aspect kept, if smaller).

    Args:
        dataset: items ``{"image": uint8 (3, H, W), "depth": float (1, H, W), ...}`` of any size.
        size: (rows, columns) of every item returned.
        seed: with the epoch (:meth:`set_epoch`) and the item index, decides each crop.

    Other keys (``"focal"``) pass through unchanged (an enlarged frame's focal length would
    scale with it: the value given is the file's).
    """

    def __init__(self, dataset, size: tuple[int, int], seed: int = 0):
        # the one size rule (parse_size): "16x20" or a pair of whole numbers; "16x20" was read as
        # its characters and (15.7, 20) truncated
        self.dataset, self.size = dataset, parse_size(size, what="RandomCrops: size")
        self.seed = integer_argument(seed, "RandomCrops: seed")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        h, w = item["image"].shape[-2:]
        if (h, w) != self.size:
            cover = cover_size(h, w, self.size)
            if cover != (h, w):
                item = resize_item(item, cover)
            g = torch.Generator().manual_seed(crop_seed(self.seed, self.epoch, i))
            top = int(torch.randint(cover[0] - self.size[0] + 1, (1,), generator=g))
            left = int(torch.randint(cover[1] - self.size[1] + 1, (1,), generator=g))
            item = dict(item)
            for key in ("image", "depth"):
                if key in item:
                    item[key] = item[key][:, top:top + self.size[0], left:left + self.size[1]].contiguous()
        return item

    def __repr__(self) -> str:
        return f"RandomCrops({self.dataset!r}, size={self.size}, seed={self.seed})"


def _size(item: dict) -> tuple[int, int]:
    return tuple(item["image"].shape[-2:])


def collate_frames(items: list[dict]) -> dict:
    """``default_collate``, with frames of different sizes refused by a message naming the sizes."""
    sizes = sorted({_size(item) for item in items})
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise DataFormatError(f"training frames of different sizes ({shown}) cannot form one batch: give a "
                              "training crop (fastmde train --train-crop HxW), the kb crop for KITTI (--kb-crop), "
                              "or --batch-size 1")
    return default_collate(items)


def collate_by_size(items: list[dict]) -> list[dict]:
    """A list of batches, one per frame size, in order of first appearance (evaluation scores
    each frame at its own size)."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for item in items:
        groups.setdefault(_size(item), []).append(item)
    return [default_collate(group) for group in groups.values()]
