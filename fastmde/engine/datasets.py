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

import os

from torch.utils.data import Subset

from .config import default_of


def test_split_name(data_format: str) -> str:
    return {"synthetic": "val", "frames": "val", "csv": "test", "labeled": "test", "list": "all",
            "folder": "all"}[data_format]


#: what ``--data`` names for each format: "folder", "file", or "either" (labeled: the .mat file or
#: the folder holding nyu_depth_v2_labeled.mat)
DATA_PATH_KIND = {"synthetic": "folder", "frames": "folder", "csv": "folder", "folder": "folder", "list": "file",
                  "labeled": "either"}
_DATA_PATH_WORDS = {
    "synthetic": "the folder of a synthetic dataset in the frames layout (fastmde synth --out)",
    "frames": "the folder holding train/ and val/ (NYU's per-frame HDF5 layout)",
    "csv": "the folder holding data/nyu2_train.csv",
    "folder": "the photo folder (--depth-root: the depth-map folder)",
    "list": "the list file ('<rgb> <depth> [focal]' lines)",
}


def check_data_path(data_format: str, path: str, flag: str = "--data") -> None:
    """Refuse (one line, before any work) a ``--data`` of the wrong kind for ``data_format``: a file
    where the format reads a folder (frames, csv, folder, synthetic), a folder where it reads a file
    (list). A missing path is the caller's check (it names where the path came from)."""
    kind = DATA_PATH_KIND.get(data_format, "either")
    if kind == "folder" and os.path.isfile(path):
        raise ValueError(f"{flag} {path!r} is a file; --data-format {data_format} reads a folder: "
                         f"{_DATA_PATH_WORDS[data_format]}")
    if kind == "file" and os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path!r} is a folder; --data-format {data_format} reads "
                                f"{_DATA_PATH_WORDS[data_format]}")


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


def test_split_location(data_format: str, path: str | None) -> str | None:
    """The folder or file whose presence means the format's test split is there (frames:
    ``val/``, csv: ``data/nyu2_test.csv``); None where the format always has one (labeled,
    synthetic) or never (list, folder)."""
    if path is None:
        return None
    if data_format == "frames":
        return os.path.join(path, "val")
    if data_format == "csv":
        return os.path.join(path, "data", "nyu2_test.csv")
    return None


def build_datasets(cfg, *, test: bool = True):
    """(train, validation, test) for a :class:`TrainConfig`.

    The test split is None where it is absent: a list or folder (one split), or a frames / csv
    tree without ``val/`` / ``data/nyu2_test.csv`` (:func:`test_split_location`), and when
    ``test=False``. A test split that is there but cannot be read (``val/`` without
    ``official/<NNNNN>.h5`` files, a ``nyu2_test.csv`` separated by ``;``, a first item that
    cannot be decoded) is an error now, before any training, naming the split and ``--no-test``:
    it used to become "no test split" without a word (InnerEye-DeepLearning#428)."""
    from .. import data

    options = dict(cache_dir=cfg.cache_dir, synthetic_train=cfg.synthetic_train, synthetic_test=cfg.synthetic_test,
                   synthetic_size=cfg.synthetic_size, synthetic_views=cfg.synthetic_views)
    files = cfg.data_format in ("list", "folder")
    full = open_split(cfg.data_format, cfg.data, "train", files=file_options(cfg) if files else None, **options)
    if cfg.limit_train is not None and cfg.limit_train < len(full):
        scenes = getattr(full, "scenes", None)
        full = Subset(full, list(range(cfg.limit_train)))
        if scenes is not None:       # --val-by-scene splits the first items by their scenes
            full.scenes = list(scenes[:cfg.limit_train])
    check_split(cfg, full)
    train, val = data.train_val_split(full, fraction=cfg.val_fraction, seed=cfg.seed, by_scene=cfg.val_by_scene)
    if cfg.setting("train_crop") is not None:
        train = data.RandomCrops(train, cfg.setting("train_crop"), seed=cfg.seed)
    # The first item of each split is read now, as the trainer will read it: data that cannot
    # train (a frame smaller than the kb crop, a depth map of another size than its photo, a
    # depth array of another shape) is refused before the run folder is made and the run's start
    # line printed, not at the first step. Each reader's error names the file.
    for split in (train, val):
        if len(split):
            split[0]
    # a list or folder is one split: its test set is another list (fastmde eval --data)
    where = test_split_location(cfg.data_format, cfg.data)
    test_set = None
    if test and not files and (where is None or os.path.exists(where)):
        split = test_split_name(cfg.data_format)
        try:
            test_set = open_split(cfg.data_format, cfg.data, split, **options)
            if len(test_set):
                test_set[0]   # one item read now: a broken test split fails before training, not after it
        except (OSError, ValueError) as exc:
            raise _same_kind(exc, f"the test split ({split!r} of {where or cfg.data}) is there but cannot be read: "
                                  f"{exc} (fix it, or train with --no-test)") from None
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"the training split has {len(full)} items: too few for a {cfg.val_fraction:.0%} validation "
                         "hold-out (--val-fraction)")
    return train, val, test_set


def check_split(cfg, full) -> None:
    """Refuse, naming the flags, a training split that the validation hold-out cannot split: fewer
    than two items, or ``--val-by-scene`` on data without scenes or with one scene only."""
    if len(full) < 2:
        raise ValueError(f"the training split has {len(full)} item(s): the validation hold-out (--val-fraction) "
                         "needs one and training another")
    if not cfg.val_by_scene:
        return
    scenes = getattr(full, "scenes", None)
    if scenes is None:
        raise ValueError(f"--val-by-scene holds out whole scenes, and --data-format {cfg.data_format} names no "
                         "scene of its items: drop --val-by-scene")
    count = len(set(scenes))
    if count < 2:
        raise ValueError(f"--val-by-scene holds out whole scenes, and the training split's {len(full)} items are "
                         f"of {count} scene (list and folder: a scene is a photo's folder): drop --val-by-scene")


def _same_kind(exc: BaseException, message: str) -> BaseException:
    """``exc``'s type with another message where it takes one (the CLI prints ValueError,
    FileNotFoundError, ... as one line), else a ValueError."""
    kind = type(exc) if isinstance(exc, (ValueError, FileNotFoundError, PermissionError, IsADirectoryError)) else ValueError
    try:
        return kind(message)
    except Exception:
        return ValueError(message)


# ---------------------------------------------------------------- errors of DataLoader workers

_WORKER_PREFIX = "Caught "


def worker_error(exc: BaseException) -> BaseException | None:
    """The reader's own error inside a DataLoader worker's re-raised one, or None.

    A worker's exception reaches the main process as the same type with the worker's whole
    traceback as its message ("Caught DataFormatError in DataLoader worker process 0.
    Original Traceback (most recent call last): ..."), so `fastmde train --workers 2` printed 28
    lines where --workers 0 prints one naming the file. This gives back the exception of the
    traceback's last line: the same type, the reader's message."""
    text = str(exc)
    if not text.startswith(_WORKER_PREFIX) or "Original Traceback" not in text:
        return None
    kind = type(exc)
    names = [f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "]
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        for name in names:
            if lines[i].startswith(name):
                message = "\n".join([lines[i][len(name):], *lines[i + 1:]]).strip()
                try:
                    return kind(message)
                except Exception:
                    return None
    return None


def batches(loader):
    """``iter(loader)``, with a DataLoader worker's error given back as the reader raised it
    (:func:`worker_error`): the same type and a one-line message naming the file."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            original = worker_error(exc)
            if original is None:
                raise
        else:
            yield batch
            continue
        # the workers are shut down now, not whenever the garbage collector reaches the iterator
        # (the traceback's frames keep it alive; its shutdown then waits for each worker)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del iterator
        raise original
