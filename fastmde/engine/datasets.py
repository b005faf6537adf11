"""From a data format and path to (train, validation, test) datasets.

``synthetic`` (the default) generates the synthetic scenes once into a cache directory
(``fastmde.data.default_synthetic_root``) and reads them in the per-frame layout; its "val"
split is the held-out scenes used as the test set. The three NYU formats read the real files:
``labeled`` (``nyu_depth_v2_labeled.mat``: train / test), ``frames`` (``train/``, ``val/``),
``csv`` (``data/nyu2_train.csv``, ``data/nyu2_test.csv``). The formats of any dataset are one
split each: ``list`` (a ``<rgb> <depth> [focal]`` file, :class:`fastmde.data.FileList`) and
``folder`` (photos in ``--data`` paired with ``--depth-root``, :class:`fastmde.data.Folder`);
their items without ground truth are left out, and frames of different sizes are cut to
``train_crop`` for training (:class:`fastmde.data.RandomCrops`). The validation set is always the
seeded ``val_fraction`` hold-out of the training split (3% in the paper).
"""
from __future__ import annotations

from torch.utils.data import Subset

from .config import default_of


def test_split_name(data_format: str) -> str:
    return {"synthetic": "val", "frames": "val", "csv": "test", "labeled": "test", "list": "all",
            "folder": "all"}[data_format]


def file_options(cfg) -> dict:
    """The reader options of the ``list`` / ``folder`` formats in effect for a :class:`TrainConfig`
    (unset ones from its ``--dataset``)."""
    return dict(image_root=cfg.image_root, depth_root=cfg.depth_root, depth_scale=cfg.setting("depth_scale"),
                kb_crop=cfg.setting("kb_crop"), max_depth=cfg.setting("max_depth"))


def open_files(data_format: str, path: str, split: str = "all", *, image_root=None, depth_root=None,
               depth_scale=None, kb_crop=False, max_depth=None, image_only: str = "skip"):
    """A file list or a folder of photos and depth maps (each is one split: ``split`` is "all",
    or "train" when training reads it)."""
    from .. import data

    if split not in ("all", "train"):
        raise ValueError(f"--data-format {data_format} is one split (the whole {data_format}); --split {split} "
                         "does not apply")
    if data_format == "list":
        return data.FileList(path, image_root=image_root, depth_root=depth_root, depth_scale=depth_scale,
                             kb_crop=kb_crop, max_depth=max_depth, image_only=image_only)
    if image_root is not None:
        raise ValueError("--image-root is for --data-format list; the folder format reads its photos in --data")
    if depth_root is None:
        raise ValueError("--data-format folder needs --depth-root (the depth-map folder; --data is the photo folder)")
    return data.Folder(path, depth_root, depth_scale=depth_scale, kb_crop=kb_crop, max_depth=max_depth)


def open_split(data_format: str, path: str | None, split: str, *, cache_dir=None,
               synthetic_train: int = default_of("synthetic_train"), synthetic_test: int = default_of("synthetic_test"),
               synthetic_size=default_of("synthetic_size"), synthetic_views: int = default_of("synthetic_views"),
               files: dict | None = None):
    """One split ("train" or the format's test split name) of a dataset (the synthetic options'
    defaults are ``TrainConfig``'s; ``files``: :func:`open_files`'s options for list and folder)."""
    from .. import data

    if data_format in ("list", "folder"):
        return open_files(data_format, path, split, **(files or {}))
    if data_format == "synthetic":
        size = tuple(synthetic_size)
        root = path or data.default_synthetic_root(cache_dir=cache_dir, train=synthetic_train, val=synthetic_test,
                                                   size=size, views=synthetic_views)
        return data.NYUFrames(root, split=split, size=size)
    if data_format == "frames":
        return data.NYUFrames(path, split=split, size=None)   # the files' own size (NYU: 480x640)
    if data_format == "csv":
        return data.NYUCsv(path, split=split)
    if data_format == "labeled":
        return data.NYULabeled(path, split=split, size=None)  # test split: test_indices.txt beside, else NYU's
    raise ValueError(f"unknown data format {data_format!r}")


def build_datasets(cfg):
    """(train, validation, test) for a :class:`TrainConfig`; test may be None if absent."""
    from .. import data

    options = dict(cache_dir=cfg.cache_dir, synthetic_train=cfg.synthetic_train, synthetic_test=cfg.synthetic_test,
                   synthetic_size=cfg.synthetic_size, synthetic_views=cfg.synthetic_views)
    files = cfg.data_format in ("list", "folder")
    full = open_split(cfg.data_format, cfg.data, "train", files=file_options(cfg) if files else None, **options)
    if cfg.limit_train is not None and cfg.limit_train < len(full):
        full = Subset(full, list(range(cfg.limit_train)))
    train, val = data.train_val_split(full, fraction=cfg.val_fraction, seed=cfg.seed, by_scene=cfg.val_by_scene)
    if cfg.setting("train_crop") is not None:
        train = data.RandomCrops(train, cfg.setting("train_crop"), seed=cfg.seed)
    try:
        # a list or folder is one split: its test set is another list (fastmde eval --data)
        test = None if files else open_split(cfg.data_format, cfg.data, test_split_name(cfg.data_format), **options)
    except (FileNotFoundError, ValueError):
        test = None
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"the training split has {len(full)} items: too few for a {cfg.val_fraction:.0%} validation hold-out"
        )
    return train, val, test
