"""From a data format and path to (train, validation, test) datasets.

``synthetic`` (the default) generates the synthetic scenes once into a cache directory
(``fastmde.data.default_synthetic_root``) and reads them in the per-frame layout; its "val"
split is the held-out scenes used as the test set. The three NYU formats read the real files:
``labeled`` (``nyu_depth_v2_labeled.mat``: train / test), ``frames`` (``train/``, ``val/``),
``csv`` (``data/nyu2_train.csv``, ``data/nyu2_test.csv``). The validation set is always the
seeded ``val_fraction`` hold-out of the training split (3% in the paper).
"""
from __future__ import annotations

from torch.utils.data import Subset

from .config import default_of


def test_split_name(data_format: str) -> str:
    return {"synthetic": "val", "frames": "val", "csv": "test", "labeled": "test"}[data_format]


def open_split(data_format: str, path: str | None, split: str, *, cache_dir=None,
               synthetic_train: int = default_of("synthetic_train"), synthetic_val: int = default_of("synthetic_val"),
               synthetic_size=default_of("synthetic_size"), synthetic_views: int = default_of("synthetic_views")):
    """One split ("train" or the format's test split name) of a dataset (the synthetic options'
    defaults are ``TrainConfig``'s)."""
    from .. import data

    if data_format == "synthetic":
        size = tuple(synthetic_size)
        root = path or data.default_synthetic_root(cache_dir=cache_dir, train=synthetic_train, val=synthetic_val,
                                                   size=size, views=synthetic_views)
        return data.NYUFrames(root, split=split, size=size)
    if data_format == "frames":
        return data.NYUFrames(path, split=split)
    if data_format == "csv":
        return data.NYUCsv(path, split=split)
    if data_format == "labeled":
        return data.NYULabeled(path, split=split)
    raise ValueError(f"unknown data format {data_format!r}")


def build_datasets(cfg):
    """(train, validation, test) for a :class:`TrainConfig`; test may be None if absent."""
    from .. import data

    options = dict(cache_dir=cfg.cache_dir, synthetic_train=cfg.synthetic_train, synthetic_val=cfg.synthetic_val,
                   synthetic_size=cfg.synthetic_size, synthetic_views=cfg.synthetic_views)
    full = open_split(cfg.data_format, cfg.data, "train", **options)
    if cfg.limit_train is not None and cfg.limit_train < len(full):
        full = Subset(full, list(range(cfg.limit_train)))
    train, val = data.train_val_split(full, fraction=cfg.val_fraction, seed=cfg.seed, by_scene=cfg.val_by_scene)
    try:
        test = open_split(cfg.data_format, cfg.data, test_split_name(cfg.data_format), **options)
    except (FileNotFoundError, ValueError):
        test = None
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"the training split has {len(full)} items: too few for a {cfg.val_fraction:.0%} validation hold-out"
        )
    return train, val, test
