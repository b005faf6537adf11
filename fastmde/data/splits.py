"""The standard NYU-Depth-v2 labelled split and a deterministic train / validation hold-out."""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch.utils.data import Dataset, Subset

NYU_LABELED_COUNT = 1449
_TEST_INDICES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nyu_v2_test_indices.txt")


def read_index_file(path) -> list[int]:
    """1-based indices, one a line; blank lines and lines starting with ``#`` are skipped."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                out.append(int(line))
            except ValueError:
                raise ValueError(f"{path}:{n}: expected an integer index, got {line!r}") from None
    return out


def nyu_test_indices() -> list[int]:
    """The 654 standard test images of the labelled set (``testNdxs``), 1-based, ascending."""
    return read_index_file(_TEST_INDICES_FILE)


def nyu_train_indices() -> list[int]:
    """The 795 standard training images (``trainNdxs``): every labelled index not in the test split."""
    test = set(nyu_test_indices())
    return [i for i in range(1, NYU_LABELED_COUNT + 1) if i not in test]


def held_out_count(n: int, fraction: float) -> int:
    """How many of ``n`` items :func:`train_val_split` holds out (``by_scene=False``):
    ``round(fraction * n)``, at least 1, leaving at least 1 to train on (``n >= 2``)."""
    return min(n - 1, max(1, round(fraction * n)))


def train_val_split(
    dataset: Dataset,
    fraction: float = 0.03,
    seed: int = 0,
    by_scene: bool = False,
) -> tuple[Subset, Subset]:
    """Hold out ``fraction`` of ``dataset`` for validation, deterministically by ``seed``.

    ``by_scene=False``: ``round(fraction * n)`` items (at least 1) drawn by a seeded permutation.
    ``by_scene=True``: whole scenes (``dataset.scenes[i]`` names the scene of item ``i``) are
    moved to validation in a seeded order until it holds at least ``fraction * n`` items, so no
    validation frame shares a scene with training. Both subsets keep ascending index order.
    """
    n = len(dataset)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(f"cannot split a dataset of {n} item(s)")
    g = torch.Generator().manual_seed(int(seed))
    if not by_scene:
        n_val = held_out_count(n, fraction)
        perm = torch.randperm(n, generator=g).tolist()
        val = sorted(perm[:n_val])
    else:
        scenes: Sequence[str] | None = getattr(dataset, "scenes", None)
        if scenes is None:
            raise ValueError(
                f"by_scene=True needs a dataset with a 'scenes' attribute; {type(dataset).__name__} has none"
            )
        names = sorted(set(scenes))
        if len(names) < 2:
            raise ValueError(f"by_scene=True needs at least 2 scenes, the dataset has {len(names)}")
        order = [names[i] for i in torch.randperm(len(names), generator=g).tolist()]
        target = max(1.0, fraction * n)
        chosen, count = set(), 0
        counts = {s: 0 for s in names}
        for s in scenes:
            counts[s] += 1
        for s in order[:-1]:  # always leave at least one scene for training
            if count >= target:
                break
            chosen.add(s)
            count += counts[s]
        val = [i for i, s in enumerate(scenes) if s in chosen]
    val_set = set(val)
    train = [i for i in range(n) if i not in val_set]
    return Subset(dataset, train), Subset(dataset, val)
