"""Evaluation: the nine metrics of a model on a dataset under a named protocol; ``fastmde eval``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch
from torch.utils.data import DataLoader

from .distributed import DistInfo, ShardSampler
from .._checks import check_depth_units
from .datasets import batches
from .inference import predict_depth, to_images
from .progress import is_terminal, tqdm
from ..data.fit import collate_by_size
from ..reference.depth_metrics import METRIC_NAMES
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS, default_protocol, get_protocol


@torch.no_grad()
def evaluate(model, dataset, protocol=DEFAULT_PROTOCOL, *, device="cpu", batch_size: int = 4, workers: int = 0,
             amp_dtype=None, channels_last: bool = False, dist_info: DistInfo | None = None,
             flip: bool | None = None, progress: bool | None = False) -> dict:
    """Metrics of ``model`` on ``dataset`` (items {"image", "depth"}) as plain floats.

    Every rank evaluates its shard; ``DepthMetrics.compute`` all-reduces, so every rank returns
    the metrics of the whole dataset. ``count`` is the number of images (per-image protocols)
    or valid pixels (pooled) behind the numbers. Frames of different sizes (file lists, folders)
    are batched by size, each scored at its own size; items without ``"depth"`` cannot be scored.
    """
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    info = dist_info or DistInfo()
    device = torch.device(device)
    metrics = protocol.metrics().to(device)
    sampler = ShardSampler(dataset, num_replicas=info.world_size, rank=info.rank)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", collate_fn=collate_by_size)
    was_training = model.training
    model.eval()
    sizes_seen = set()
    try:
        # a tqdm bar of the batches on stderr: progress=None on a terminal only, True also in logs
        show = info.is_main and (is_terminal(sys.stderr) if progress is None else bool(progress))
        # batches(): a DataLoader worker's error as the reader raised it (one line naming the file)
        for groups in tqdm(batches(loader), total=len(loader), desc="eval", unit="batch", leave=False,
                           disable=not show, file=sys.stderr):
            for batch in groups:        # one batch per frame size
                images = to_images(batch["image"], device, channels_last)
                depth = batch["depth"].to(device, non_blocking=True).float()
                units = check_depth_units(depth, depth > 0)   # the process's first check only (one sync)
                if units is not None and info.is_main:
                    warnings.warn(f"evaluation data: {units}", UserWarning, stacklevel=1)
                pred = predict_depth(model, images, amp_dtype=amp_dtype, flip=protocol.flip if flip is None else flip,
                                     from_uint8=batch["image"].dtype == torch.uint8)
                size = tuple(depth.shape[-2:])
                if size not in sizes_seen:   # a KITTI protocol given maps of the other frame
                    sizes_seen.add(size)
                    message = protocol.frame_warning(*size)
                    if message is not None:
                        warnings.warn(message, UserWarning, stacklevel=3)
                metrics.update(pred, depth, mask=depth > 0)
        # the metrics' own warnings (ground truth out of range, predictions <= 0 counted as hits)
        # are said from this line: from inside torch.no_grad's wrapper their stacklevel pointed
        # at torch/utils/_contextlib.py
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = metrics.compute()
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=1)
    finally:
        model.train(was_training)
    return {k: float(v) for k, v in values.items()}


# ---------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    from .config import AMP_CHOICES, DATA_FORMATS, default_of   # the choices and defaults `fastmde train` has

    parser.add_argument("--checkpoint", required=True,
                        help=("fastmde checkpoint, run directory (its best.pt), or a checkpoint of "
                             "the paper authors' or Hu et al.'s code"))
    parser.add_argument("--data-format", default=None, choices=DATA_FORMATS,
                        help="default: the format the checkpoint was trained on")
    parser.add_argument("--data", default=None, help="dataset path (default: the checkpoint's)")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the format's test split)")
    add_file_arguments(parser)
    parser.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                        help=(f"metric rules (docs/metrics.md; default: {DEFAULT_PROTOCOL}, fastmde's own: per image, "
                              f"1e-3 < depth <= 10 m, predictions clamped to that range; for a checkpoint trained "
                              f"with --dataset kitti: kitti_garg_kb, or kitti_garg when its kb crop was off). "
                              f"'paper' reproduces the paper authors' code, which counts negative predictions as δ "
                              f"hits"))
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average with the mirrored prediction (default: as the protocol says)")
    parser.add_argument("--batch-size", type=int, default=default_of("eval_batch_size"))
    parser.add_argument("--device", default=default_of("device"))
    parser.add_argument("--amp", default=default_of("amp"), choices=AMP_CHOICES,
                        help="autocast dtype (auto: float32 on a CPU, where bf16 would round the depth to ~0.4%%; "
                             "bf16 on CUDA)")
    parser.add_argument("--workers", type=int, default=default_of("workers"))
    parser.add_argument("--cache-dir", default=None, help="synthetic data cache (default: the checkpoint's)")
    parser.add_argument("--out", default=None,
                        help="JSON output file, or a folder (existing, or a path ending in /) to write the default "
                             "name into; missing folders are created (default: eval-<checkpoint>-<format>-<split>-"
                             "<protocol>.json next to the checkpoint, with -flip/-noflip when --flip/--no-flip is "
                             "given and a part per --image-root, --depth-root, --depth-scale, --kb-crop given); a "
                             "file holding another evaluation is refused")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a result file that holds another evaluation (the same evaluation is always "
                             "replaced)")


def result_name(checkpoint: str, data_format: str, split: str, protocol: str, flip: bool | None,
                files: tuple[str, ...] = ()) -> str:
    """``eval-<checkpoint file stem>-<format>-<split>-<protocol>[-flip|-noflip][-<file option>...].json``:
    a result file named by what it evaluated, so that evaluations of one checkpoint do not replace
    each other. ``files``: the list/folder reader options given on the command line
    (:func:`file_option_parts`: ``kb``, ``scale256``, ``images-<folder>``...)."""
    from .._text import slug

    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    parts = [stem, data_format, split, protocol] + ([] if flip is None else ["flip" if flip else "noflip"])
    return "eval-" + "-".join(slug(p) for p in parts + list(files)) + ".json"


def result_path(out: str | None, checkpoint: str, name: str) -> str:
    """Where ``fastmde eval`` writes: ``out`` (a file; or a folder, existing or a path ending in
    ``/``, that gets ``name``), else ``name`` beside ``checkpoint``. Checked before any evaluation,
    by the rule of every command's outputs (:mod:`fastmde._outputs`): missing folders are created
    when the result is written.

    Raises:
        FileExistsError: ``out`` lies below a file.
        PermissionError: the folder cannot be written.
    """
    from .._outputs import check_output_file, check_output_folder

    if out is None:
        path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), name)
    elif os.path.isdir(out) or out.endswith(("/", os.sep)):
        check_output_folder(out, "--out", "the folder the result goes to")
        path = os.path.join(out, name)
    else:
        path = out
    check_output_file(path, "--out" if out is not None else "the result file")
    return path


#: what makes two evaluations the same one (a result file holding another is not replaced silently);
#: ``files``: the list / folder reader options in effect (image and depth roots, depth scale, kb crop)
IDENTITY = ("checkpoint", "data_format", "data", "split", "protocol_name", "flip", "synthetic", "files")


def file_identity(files: dict | None) -> dict | None:
    """The reader options of a list / folder evaluation that change what is scored (folders as
    absolute paths), for :data:`IDENTITY`; None for the other formats."""
    if files is None:
        return None
    root = lambda p: None if p is None else os.path.abspath(p)  # noqa: E731
    return {"image_root": root(files.get("image_root")), "depth_root": root(files.get("depth_root")),
            "depth_scale": files.get("depth_scale"), "kb_crop": bool(files.get("kb_crop"))}


def file_option_parts(args) -> tuple[str, ...]:
    """The reader options given on the command line, as parts of the result's name (options left
    to the checkpoint's defaults add nothing, so the usual name stays short): ``images-<folder>``,
    ``depths-<folder>``, ``scale<value>``, ``kb`` / ``nokb``."""
    parts = []
    for name, word in (("image_root", "images"), ("depth_root", "depths")):
        value = getattr(args, name, None)
        if value is not None:
            parts.append(f"{word}-{os.path.basename(os.path.normpath(value))}")
    if getattr(args, "depth_scale", None) is not None:
        parts.append(f"scale{args.depth_scale:g}")
    if getattr(args, "kb_crop", None) is not None:
        parts.append("kb" if args.kb_crop else "nokb")
    return tuple(parts)


def check_replaceable(path: str, identity: dict, overwrite: bool) -> None:
    """Refuse (FileExistsError) to replace ``path`` unless it is absent, holds the evaluation
    ``identity`` describes (same checkpoint, data, split, protocol, flip), or ``overwrite``."""
    if overwrite or not os.path.exists(path):
        return
    try:
        with open(path) as f:
            old = json.load(f)
        if "identity" in old:
            held = {key: old["identity"].get(key) for key in IDENTITY}
        else:
            held = "older" if "metrics" in old and "protocol" in old else None
    except (OSError, ValueError, AttributeError, TypeError):
        held = None
    if held == identity:
        return
    what = ("is not an evaluation result" if held is None else
            "holds an evaluation result of an earlier fastmde version" if held == "older" else
            "holds another evaluation (" + ", ".join(f"{k} {held[k]!r} there, {identity[k]!r} now"
                                                     for k in IDENTITY if held[k] != identity[k]) + ")")
    raise FileExistsError(f"{path!r} {what}: pass --overwrite to replace it, or another --out")


def run(args) -> int:
    from .._atomic import atomic_write_text
    from .checkpoint import check_checkpoint_argument, clean_output_folder, load_checkpoint_argument
    from .config import current_names, default_of
    from .datasets import check_data_path, open_split, test_split_name
    from .speed import resolve_amp, resolve_device, resolve_workers

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.workers < -1:
        raise ValueError(f"--workers must be -1 (auto) or a number of processes >= 0, got {args.workers}")
    check_checkpoint_argument(args.checkpoint, "--checkpoint")
    # a fastmde checkpoint, a run directory, or a checkpoint of the paper authors' or Hu et al.'s code
    model = load_checkpoint_argument(args.checkpoint, "--checkpoint")
    cfg = current_names(model.fastmde_config)
    data_format = args.data_format or cfg.get("data_format", default_of("data_format"))
    data_path = args.data if args.data is not None else (cfg.get("data") if data_format == cfg.get("data_format") else None)
    if data_format != "synthetic" and data_path is None:
        trained_on = cfg.get("data_format")
        raise ValueError(f"--data-format {data_format} needs --data (the dataset path)"
                         + (f": the checkpoint was trained on {trained_on} data, whose path does not apply"
                            if trained_on else ""))
    if data_path is not None and not os.path.exists(data_path):
        raise FileNotFoundError(f"--data {data_path!r} does not exist"
                                + ("" if args.data is not None else " (the path the checkpoint was trained on)"))
    if data_path is not None:
        check_data_path(data_format, data_path)
    split = args.split or test_split_name(data_format)
    protocol = get_protocol(args.protocol or default_protocol(cfg))
    synthetic = {name: cfg.get(name, default_of(name)) for name in
                 ("synthetic_train", "synthetic_test", "synthetic_size", "synthetic_views")}
    files = file_options_for(args, cfg, data_format, protocol)
    identity = {"checkpoint": os.path.abspath(model.fastmde_checkpoint), "data_format": data_format,
                "data": None if data_path is None else os.path.abspath(data_path), "split": split,
                "protocol_name": protocol.name, "flip": protocol.flip if args.flip is None else bool(args.flip),
                "synthetic": ({k: list(v) if isinstance(v, (list, tuple)) else v for k, v in synthetic.items()}
                              if data_format == "synthetic" and data_path is None else None),
                "files": file_identity(files)}
    out = result_path(args.out, model.fastmde_checkpoint,
                      result_name(model.fastmde_checkpoint, data_format, split, protocol.name, args.flip,
                                  file_option_parts(args)))
    check_replaceable(out, identity, args.overwrite)
    device = resolve_device(args.device)
    dataset = open_split(data_format, data_path, split, cache_dir=args.cache_dir or cfg.get("cache_dir"),
                         files=files, **synthetic)
    model = model.to(device)
    values = evaluate(model, dataset, protocol, device=device, batch_size=args.batch_size,
                      workers=resolve_workers(args.workers, device), amp_dtype=resolve_amp(args.amp, device, inference=True),
                      flip=args.flip, progress=None)
    if not values["count"] > 0:
        print(f"fastmde eval: nothing was scored: no ground-truth pixel of {data_format}/{split} ({len(dataset)} "
              f"images) passed the {protocol.name} protocol's tests (finite, > 0, range {protocol.min_depth:g} to "
              f"{protocol.max_depth or float('inf'):g} m, crop {protocol.crop}); the metrics would be NaN. Check the "
              f"depth units (millimetres instead of metres?) and --data/--split.", file=sys.stderr)
        return 1
    result = {"checkpoint": model.fastmde_checkpoint, "model": model.fastmde_variant, "data_format": data_format,
              "data": data_path, "split": split, "items": len(dataset), "protocol": protocol.to_dict(),
              "metrics": values, "identity": identity}
    print(f"{protocol.name} protocol ({protocol.source}) on {data_format}/{split}, {len(dataset)} images:")
    print(" | ".join(f"{k:>8}" for k in METRIC_NAMES))
    print(" | ".join(f"{values[k]:8.4f}" for k in METRIC_NAMES))
    clean_output_folder(os.path.dirname(os.path.abspath(out)), lambda text: print(text, file=sys.stderr))
    atomic_write_text(json.dumps(result, indent=2) + "\n", out)
    print(f"wrote {out}", file=sys.stderr)
    return 0

# ---------------------------------------------------------------- file lists and folders

def add_file_arguments(parser) -> None:
    """``--image-root``, ``--depth-root``, ``--depth-scale``, ``--kb-crop`` of ``fastmde train``
    (one definition), defaulting to the checkpoint's (:func:`file_options_for`)."""
    from .config import add_option

    g = parser.add_argument_group("list and folder formats (default: as the checkpoint was trained)")
    for name in ("image_root", "depth_root", "depth_scale", "kb_crop"):
        add_option(g, name, default=None)


def file_options_for(args, config: dict, data_format: str, protocol=None) -> dict | None:
    """The reader options of a ``list`` / ``folder`` evaluation or prediction: the flag when given,
    else the checkpoint's training option (``config``), else its ``--dataset``'s default. The kb
    crop follows a KITTI protocol's frame when not given (``kitti_garg_kb``: kb-cropped arrays;
    ``kitti_garg`` / ``kitti_eigen``: whole frames). None for the other formats."""
    from ..data.settings import dataset_setting

    if data_format not in ("list", "folder"):
        for name in ("image_root", "depth_root", "depth_scale", "kb_crop"):
            if getattr(args, name, None) is not None:
                raise ValueError(f"--{name.replace('_', '-')} is for --data-format list or folder, not {data_format}")
        return None
    same = config.get("data_format") == data_format
    setting = dataset_setting(config.get("dataset") or "nyu")

    def pick(name, default):
        value = getattr(args, name, None)
        if value is None and same:
            value = config.get(name)
        return default if value is None else value

    kb = getattr(args, "kb_crop", None)
    if kb is None:
        kb = {"kitti_kb": True, "kitti_full": False}.get(getattr(protocol, "frame", "any"))
    return dict(image_root=pick("image_root", None), depth_root=pick("depth_root", None),
                depth_scale=pick("depth_scale", setting.depth_scale),
                kb_crop=pick("kb_crop", setting.kb_crop) if kb is None else kb, max_depth=setting.max_depth)
