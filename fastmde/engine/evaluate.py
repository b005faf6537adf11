"""Evaluation: the six metrics of a model on a dataset under a named protocol; ``fastmde eval``."""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.utils.data import DataLoader

from .distributed import DistInfo, ShardSampler
from .inference import predict_depth, to_images
from .progress import is_terminal, tqdm
from ..data.fit import collate_by_size
from ..reference.depth_metrics import METRIC_NAMES
from .protocols import PROTOCOLS, get_protocol


@torch.no_grad()
def evaluate(model, dataset, protocol="paper", *, device="cpu", batch_size: int = 4, workers: int = 0,
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
    try:
        # a tqdm bar of the batches on stderr: progress=None on a terminal only, True also in logs
        show = info.is_main and (is_terminal(sys.stderr) if progress is None else bool(progress))
        for groups in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not show, file=sys.stderr):
            for batch in groups:        # one batch per frame size
                images = to_images(batch["image"], device, channels_last)
                depth = batch["depth"].to(device, non_blocking=True).float()
                pred = predict_depth(model, images, amp_dtype=amp_dtype,
                                     flip=protocol.flip if flip is None else flip)
                metrics.update(pred, depth, mask=depth > 0)
        values = metrics.compute()
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
    parser.add_argument("--protocol", default="paper", choices=sorted(PROTOCOLS))
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average with the mirrored prediction (default: as the protocol says)")
    parser.add_argument("--batch-size", type=int, default=default_of("eval_batch_size"))
    parser.add_argument("--device", default=default_of("device"))
    parser.add_argument("--amp", default=default_of("amp"), choices=AMP_CHOICES)
    parser.add_argument("--workers", type=int, default=default_of("workers"))
    parser.add_argument("--cache-dir", default=None, help="synthetic data cache (default: the checkpoint's)")
    parser.add_argument("--out", default=None, help="JSON output (default: eval-<protocol>.json next to the checkpoint)")


def run(args) -> int:
    from .._atomic import atomic_write_text
    from .checkpoint import load
    from .config import default_of
    from .datasets import open_split, test_split_name
    from .speed import resolve_amp, resolve_device, resolve_workers

    # a fastmde checkpoint, a run directory, or a checkpoint of the paper authors' or Hu et al.'s code
    model = load(args.checkpoint, device="cpu")
    cfg = model.fastmde_config
    data_format = args.data_format or cfg.get("data_format", default_of("data_format"))
    data_path = args.data if args.data is not None else (cfg.get("data") if data_format == cfg.get("data_format") else None)
    split = args.split or test_split_name(data_format)
    device = resolve_device(args.device)
    dataset = open_split(data_format, data_path, split, cache_dir=args.cache_dir or cfg.get("cache_dir"),
                         files=file_options_for(args, cfg, data_format, get_protocol(args.protocol)),
                         **{name: cfg.get(name, default_of(name)) for name in
                            ("synthetic_train", "synthetic_val", "synthetic_size", "synthetic_views")})
    model = model.to(device)
    protocol = get_protocol(args.protocol)
    values = evaluate(model, dataset, protocol, device=device, batch_size=args.batch_size,
                      workers=resolve_workers(args.workers, device), amp_dtype=resolve_amp(args.amp, device),
                      flip=args.flip, progress=None)
    if not values["count"] > 0:
        print(f"fastmde eval: nothing was scored: no ground-truth pixel of {data_format}/{split} ({len(dataset)} "
              f"images) passed the {protocol.name} protocol's tests (finite, > 0, range {protocol.min_depth:g} to "
              f"{protocol.max_depth or float('inf'):g} m, crop {protocol.crop}); the metrics would be NaN. Check the "
              f"depth units (millimetres instead of metres?) and --data/--split.", file=sys.stderr)
        return 1
    result = {"checkpoint": model.fastmde_checkpoint, "model": model.fastmde_variant, "data_format": data_format,
              "data": data_path, "split": split, "items": len(dataset), "protocol": protocol.to_dict(),
              "metrics": values}
    print(f"{protocol.name} protocol ({protocol.source}) on {data_format}/{split}, {len(dataset)} images:")
    print(" | ".join(f"{k:>7}" for k in METRIC_NAMES))
    print(" | ".join(f"{values[k]:7.4f}" for k in METRIC_NAMES))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(model.fastmde_checkpoint)), f"eval-{protocol.name}.json")
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
