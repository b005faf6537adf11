"""Which (size, batch) a model can train at: BatchNorm's one limit, said the same way everywhere.

In training mode BatchNorm normalises each channel over the batch and the map (N x H x W
values) and needs more than one value (PyTorch: "Expected more than 1 value per channel when
training"). fastmde's networks put BatchNorm on every map down to the ResNet encoder's last
block, whose side is ceil(side / 32) (:class:`~fastmde.models.resnet.ResNetEncoder`), so a
network input of at most 32x32 pixels is a 1x1 map there, untrainable at batch 1 (mmsegmentation#272).
``fastmde train`` refuses such a ``--size`` before building any data
(``fastmde.engine.train.check_trainable``); a model from :func:`fastmde.models.build` refuses a
training batch that cannot pass with the same explanation, in the Python API's words.
"""
from __future__ import annotations

import math


def deepest_map(height: int, width: int, stride: int) -> tuple[int, int]:
    """(ceil(height / stride), ceil(width / stride)): the smallest map BatchNorm sees."""
    return -(-height // stride), -(-width // stride)


def smallest_trainable_size(height: int, width: int, stride: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """The smallest size of ``height`` x ``width``'s aspect ratio (integer multiples of its
    reduced ratio, sides >= 8) whose deepest map is more than 1x1, and, when ``height`` alone is
    the obstacle, the size that keeps the height and widens just enough (else None)."""
    g = math.gcd(height, width)
    unit_h, unit_w = height // g, width // g
    m = 1
    while not ((m * unit_h > stride or m * unit_w > stride) and min(m * unit_h, m * unit_w) >= 8):
        m += 1
    keep_height = (height, max(width, stride + 1)) if height <= stride else None
    return (m * unit_h, m * unit_w), keep_height


def untrainable_message(model: str, height: int, width: int, batch: int, stride: int, *, size_words,
                        batch_words, larger_batch: str, each: str = "batch") -> str | None:
    """None when a batch of ``batch`` images at ``height`` x ``width`` trains, else the sentence
    that names the size, the batch, the deepest map and the smallest size that trains.

    ``size_words(h, w)`` and ``batch_words(b)`` spell a size and a batch in the caller's terms
    (``--size 24x32`` / ``--batch-size 1`` for the command line, ``size=(24, 32)`` / ``a
    batch of 1`` for the Python API); ``larger_batch`` is the other way out; ``each`` names what
    BatchNorm normalises over ("batch", or a process's batch under DDP)."""
    h, w = deepest_map(height, width, stride)
    if batch * h * w > 1:
        return None
    (sh, sw), keep = smallest_trainable_size(height, width, stride)
    return (
        f"{size_words(height, width)} cannot train at {batch_words(batch)}: the deepest feature map of {model} "
        f"(total stride {stride}) is {h}x{w} there, and BatchNorm needs more than one value per channel in "
        f"each {each}. The smallest size of this aspect ratio that trains at batch {batch} is "
        f"{size_words(sh, sw)}" + (f" (keeping the height: {size_words(*keep)})" if keep else "")
        + f"; any size with a side above {stride} works, or {larger_batch}"
    )
