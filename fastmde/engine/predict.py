"""``fastmde predict``: depth maps for image files, as colourised PNGs and metres (.npy).

Predictions are clamped to ``[--min-depth, --max-depth]`` (default: the range of the protocol the
checkpoint's training validated with, which clamps predictions the same way before scoring them:
0.001 to 10 m for NYU-like runs, 0.001 to 80 m for ``--dataset kitti``), in the PNG and in the .npy; ``--no-clamp`` keeps the network's raw
output (negative values included) in the .npy. The PNG is the map in reversed Turbo colours
(near red, far blue, black = no depth) over that fixed range, the same for every image, with a
colour bar in metres to its right (:mod:`fastmde.engine.pictures`).

Photos are read as shown (EXIF orientation applied), so a depth map lines up with the photo
in any viewer. A folder given is read with its sub-folders (as Depth-Anything-V2's ``run.py``
globs ``**/*``; hidden folders and the ``--out`` folder, when it lies inside, are left out).
Output names mirror each input's path below the inputs' common folder (a folder given counts
as the folder itself: ``fastmde predict photos/ --out d`` writes ``d/<path below photos>.*``;
``fastmde predict x/a.png y/a.png a_1.png --out d`` writes ``d/x/a.*``, ``d/y/a.*`` and
``d/a_1.*``); two inputs that would still share a name, a result that would replace an
input, or a result already in ``--out`` (without ``--overwrite``) are refused before anything
is written. Every file is written atomically; the count printed is the count written.

``--pointcloud`` also writes ``<name>.ply``: the depth of the .npy as 3-D points with the photo's
colours (:mod:`fastmde.pointcloud`), with the intrinsics of ``--fx/--fy/--cx/--cy``, else a file
list's focal length, else NYU's Kinect scaled to the image (:func:`fastmde.pointcloud.intrinsics_for`).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch

from .._atomic import atomic_path, atomic_write
from .._outputs import check_output_folder
from .datasets import check_data_path
from ..data._common import decode_image
from .inference import predict_images
from .pictures import colourise, depth_picture  # noqa: F401  (colourise: predict's name before pictures.py)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def read_image(path) -> torch.Tensor:
    """An image file as the user sees it (EXIF orientation applied) -> uint8 (3, H, W) RGB.

    Uses the readers' decoder, :func:`fastmde.data._common.decode_image`.

    Raises:
        FileNotFoundError: no such file.
        fastmde.data.DataFormatError (a ValueError): not a decodable image; names the file.
    """
    return torch.from_numpy(decode_image(path))


def expand_inputs(inputs, *, exclude: str | None = None, anchors: list[str] | None = None) -> list[str]:
    """Files as given; folders -> their image files, sub-folders included (``os.walk``, sorted;
    hidden files and folders, and the folder ``exclude`` (``--out``: earlier results are PNG
    images too) left out).

    ``anchors``, when given, receives for each path the folder its output name is relative to
    (:func:`output_stems`): a file's own folder, or the folder given that it was found in.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: a folder holds no image file (in any sub-folder).
    """
    skip = None if exclude is None else os.path.normcase(os.path.realpath(exclude))
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for folder, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and os.path.normcase(os.path.realpath(os.path.join(folder, d))) != skip)
                found.extend(os.path.join(folder, f) for f in sorted(names)
                             if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
            if not found:
                raise ValueError(f"folder {item!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)}), "
                                 "in its sub-folders neither")
            paths.extend(found)
            if anchors is not None:
                anchors.extend([item] * len(found))
        elif os.path.isfile(item):
            paths.append(item)
            if anchors is not None:
                anchors.append(os.path.dirname(item) or ".")
        else:
            raise FileNotFoundError(f"input {item!r} does not exist")
    return paths


def unique_inputs(paths: list[str], anchors: list[str] | None = None):
    """``(kept, dropped)``: the inputs with second mentions of one file (same real path) dropped;
    with ``anchors`` (one per path), ``(kept, dropped, the kept paths' anchors)``."""
    seen: set[str] = set()
    kept, dropped, kept_anchors = [], [], []
    for i, p in enumerate(paths):
        key = os.path.normcase(os.path.realpath(p))
        if key in seen:
            dropped.append(p)
        else:
            kept.append(p)
            if anchors is not None:
                kept_anchors.append(anchors[i])
        seen.add(key)
    return (kept, dropped) if anchors is None else (kept, dropped, kept_anchors)


def output_stems(paths: list[str], anchors: list[str] | None = None) -> list[str]:
    """Output names (without extension) that mirror each input's path below the inputs' common folder.

    ``photos/a.jpg photos/b.jpg`` -> ``a``, ``b``; ``x/a.png y/a.png a_1.png`` -> ``x/a``,
    ``y/a``, ``a_1``; a single file -> its own name. ``anchors`` (one per path, from
    :func:`expand_inputs`) are the folders the common folder is taken over (default: each
    path's folder): a folder given anchors the images found under it, so ``photos/`` holding
    ``a.jpg`` and ``sub/b.jpg`` gives ``a`` and ``sub/b``, and ``photos/`` holding only
    ``sub/b.jpg`` gives ``sub/b``. Two different inputs that still share a name (``x/a.jpg`` and
    ``x/a.png``) are refused, before anything is written.

    Raises:
        ValueError: two inputs map to one output name; the message names both.
    """
    if not paths:
        return []
    absolute = [os.path.abspath(p) for p in paths]
    folders = [os.path.dirname(a) for a in absolute] if anchors is None else [os.path.abspath(a) for a in anchors]
    base = os.path.commonpath(folders)
    stems = [os.path.splitext(os.path.relpath(a, base))[0] for a in absolute]
    owner: dict[str, str] = {}
    for path, stem in zip(paths, stems):
        key = os.path.normcase(stem)
        if key in owner:
            raise ValueError(f"inputs {owner[key]!r} and {path!r} would both be written as {stem}.png / {stem}.npy; "
                             "rename one or predict them in separate runs (nothing was written)")
        owner[key] = path
    return stems


def write_prediction(depth: np.ndarray, out_dir: str, stem: str, *, lo: float = 1e-3, hi: float = 10.0,
                     clamp: bool = True) -> tuple[str, str]:
    """``<out_dir>/<stem>.npy`` (float32 metres) and ``<stem>.png`` (the map in colours over
    ``[lo, hi]`` with a colour bar: :func:`fastmde.engine.pictures.depth_picture`), each written
    atomically (:mod:`fastmde._atomic`); ``stem`` may hold sub-folders. Returns both paths.

    ``clamp``: the .npy holds ``depth`` clamped to ``[lo, hi]`` (NaN stays NaN), as evaluation
    clamps predictions; False: ``depth`` as given. The picture is drawn from the clamped map
    either way, so a raw value <= 0 (no depth) would show black only with ``clamp=False``.
    """
    depth = np.asarray(depth, dtype=np.float32)
    clamped = np.clip(depth, lo, hi)
    npy_path, png_path = os.path.join(out_dir, stem + ".npy"), os.path.join(out_dir, stem + ".png")
    with atomic_write(npy_path, "wb") as f:
        np.save(f, clamped if clamp else depth)
    with atomic_path(png_path) as tmp:
        depth_picture(clamped, lo, hi).save(tmp, format="PNG")
    return png_path, npy_path


# ---------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    from .config import AMP_CHOICES, default_of   # the choices and defaults `fastmde train` has
    from .protocols import PROTOCOLS
    from .train import VALIDATION_PROTOCOL

    parser.add_argument("images", nargs="*", help="image files or directories of images (EXIF orientation applied)")
    add_data_arguments(parser)
    add_pointcloud_arguments(parser)
    parser.add_argument("--checkpoint", required=True,
                        help=("fastmde checkpoint, run directory, or a checkpoint of "
                             "the paper authors' or Hu et al.'s code"))
    parser.add_argument("--out", required=True,
                        help="output directory; results mirror the inputs' paths below their common folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results already in --out (default: refuse before writing anything)")
    parser.add_argument("--batch-size", type=int, default=default_of("eval_batch_size"))
    parser.add_argument("--device", default=default_of("device"))
    parser.add_argument("--amp", default=default_of("amp"), choices=AMP_CHOICES,
                        help="autocast dtype (auto: float32 on a CPU, where bf16 would round the depth to ~0.4%%; "
                             "bf16 on CUDA)")
    clamp = PROTOCOLS[VALIDATION_PROTOCOL].clamp
    parser.epilog = ("Each <name>.png is the depth map at the photo's pixel size (its top-left corner) in reversed "
                     "Turbo colours, near red and far blue, over [--min-depth, --max-depth], the same range for every "
                     "image, with a colour bar in metres to its right; black is no depth (a non-finite prediction). "
                     "Each <name>.npy holds float32 metres.")
    parser.add_argument("--min-depth", type=float, default=None,
                        help=("predictions are clamped to [--min-depth, --max-depth] metres (in the .png and "
                              "the .npy), as evaluation clamps them, and the colour bar spans that range "
                              f"(default: the range of the protocol the checkpoint's training validated with: "
                              f"{clamp[0]:g} to {clamp[1]:g} m, the {VALIDATION_PROTOCOL!r} protocol's; 80 m for a "
                              "--dataset kitti run)"))
    parser.add_argument("--max-depth", type=float, default=None, help="see --min-depth (metres)")
    parser.add_argument("--no-clamp", dest="clamp", action="store_false",
                        help="write the network's raw output to the .npy (negative depths included); the .png "
                             "is drawn clamped either way")


def depth_range(args, config: dict) -> tuple[float, float]:
    """(--min-depth, --max-depth), each defaulting to the clamp of the protocol the checkpoint's
    training validated with (``train.validation_protocol``: ``fastmde``, 0.001-10 m; a KITTI run's
    ``kitti_garg_kb`` / ``kitti_garg``, 0.001-80 m; a checkpoint of another project: ``fastmde``).

    Raises:
        ValueError: the range is empty (--min-depth >= --max-depth).
    """
    from .config import TrainConfig
    from .protocols import PROTOCOLS
    from .train import VALIDATION_PROTOCOL, validation_protocol

    try:
        name = validation_protocol(TrainConfig.from_dict(config)) if config else VALIDATION_PROTOCOL
    except (TypeError, ValueError):       # a configuration of an older fastmde: the default
        name = VALIDATION_PROTOCOL
    lo, hi = PROTOCOLS[name].clamp
    lo = lo if args.min_depth is None else args.min_depth
    hi = hi if args.max_depth is None else args.max_depth
    if not lo < hi:
        raise ValueError(f"--min-depth {lo:g} must be below --max-depth {hi:g} (the colour scale runs from the "
                         f"one to the other; the {name!r} protocol's range is the default)")
    return lo, hi


def plan_outputs(paths: list[str], out_dir: str, *, overwrite: bool = False,
                 extensions=(".png", ".npy"), anchors: list[str] | None = None) -> tuple[list[str], int]:
    """Output stems for ``paths`` and how many existing result files (of ``extensions``) they replace.

    Checked before anything is written: unique names (:func:`output_stems`), no result that
    would replace one of the input images, and no existing result unless ``overwrite``.

    Raises:
        ValueError: two inputs share an output name, or an output is one of the inputs.
        FileExistsError: a result exists and ``overwrite`` is False; names the file.
    """
    stems = output_stems(paths, anchors)
    inputs = {os.path.normcase(os.path.realpath(p)): p for p in paths}
    existing = 0
    for stem in stems:
        for ext in extensions:
            target = os.path.join(out_dir, stem + ext)
            key = os.path.normcase(os.path.realpath(target))
            if key in inputs:
                raise ValueError(f"the result {target!r} would replace the input image {inputs[key]!r}; "
                                 "choose another --out (nothing was written)")
            if os.path.lexists(target):
                if not overwrite:
                    raise FileExistsError(f"{target!r} already exists (an earlier run?); pass --overwrite to "
                                          "replace results, or choose another --out (nothing was written)")
                existing += 1
    return stems, existing


def run(args) -> int:
    from .checkpoint import clean_output_folder
    from .speed import resolve_amp, resolve_device

    if args.batch_size < 1:
        raise ValueError("--batch-size must be positive")
    for flag, value in (("--min-depth", args.min_depth), ("--max-depth", args.max_depth)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{flag} must be a depth in metres >= 0, got {value}")
    if args.min_depth is not None and args.max_depth is not None and not args.min_depth < args.max_depth:
        raise ValueError(f"--min-depth {args.min_depth:g} must be below --max-depth {args.max_depth:g} "
                         "(the colour scale runs from the one to the other)")
    check_output_folder(args.out, "--out", "the folder the depth maps go to")
    model_of_checkpoint = checkpoint_loader(args.checkpoint)    # a list or folder reads its configuration first
    paths, duplicates, read, focals, anchors = inputs_of(args, model_of_checkpoint)
    check_pointcloud_arguments(args, focals)
    kinds = (".png", ".npy") + ((".ply",) if args.pointcloud else ())
    stems, replaced = plan_outputs(paths, args.out, overwrite=args.overwrite, extensions=kinds, anchors=anchors)
    if duplicates:
        print(f"predict: {len(duplicates)} input(s) named twice, predicted once: {', '.join(duplicates[:5])}",
              file=sys.stderr)
    device = resolve_device(args.device)
    model = model_of_checkpoint().to(device)     # the file is read once, after every option's own check
    args.min_depth, args.max_depth = depth_range(args, getattr(model, "fastmde_config", None) or {})
    amp_dtype = resolve_amp(args.amp, device, inference=True)
    clean_output_folder(args.out, lambda text: print(f"predict: {text}", file=sys.stderr))   # killed writes' leftovers
    written = 0
    cameras: dict[str, int] = {}     # the point clouds' intrinsics, as each .ply's header names them
    try:
        # Read and predict in chunks so that memory stays bounded for long lists.
        chunk = max(args.batch_size * 8, 32)
        for start in range(0, len(paths), chunk):
            images = [read(p) for p in paths[start:start + chunk]]
            depths = predict_images(model, images, device=device, batch_size=args.batch_size, amp_dtype=amp_dtype)
            for i, (stem, depth) in enumerate(zip(stems[start:start + chunk], depths)):
                write_prediction(depth, args.out, stem, lo=args.min_depth, hi=args.max_depth, clamp=args.clamp)
                if args.pointcloud:
                    _, where = write_pointcloud(args, stem, depth, images[i], focals.get(paths[start + i]))
                    cameras[where] = cameras.get(where, 0) + 1
                written += 1
    except BaseException:
        print(f"predict: stopped after writing {written} of {len(paths)} depth maps to {args.out}", file=sys.stderr)
        raise
    note = f", replacing {replaced} existing files" if replaced else ""
    clamped = f"clamped to {args.min_depth:g}-{args.max_depth:g} m" if args.clamp else "raw in .npy"
    maps = "depth map" if written == 1 else "depth maps"
    print(f"wrote {written} {maps} ({', '.join(kinds)}; {clamped}) to {args.out}{note}", file=sys.stderr)
    if cameras:
        print(f"predict: point clouds with {describe_cameras(cameras)}", file=sys.stderr)
    return 0


def describe_cameras(cameras: dict[str, int]) -> str:
    """The intrinsics the .ply files were written with, from ``{where: count}`` (each photo's own:
    ``NYU Kinect intrinsics scaled to 480x640`` (HxW) for all, or one entry per size with its count)."""
    if len(cameras) == 1:
        return next(iter(cameras))
    return "; ".join(f"{where} ({n} photo{'s' if n > 1 else ''})" for where, n in cameras.items())

# ---------------------------------------------------------------- file lists and folders

def add_data_arguments(parser) -> None:
    """``--data-format list|folder`` and ``--data``: predict every photo of a file list (depth
    ``None`` lines included) or of a photo folder (recursively), with ``fastmde train``'s reader
    options (``--image-root``, ``--kb-crop``; the checkpoint's by default)."""
    from .config import FILE_FORMATS, add_option

    g = parser.add_argument_group("a file list or a folder instead of IMAGES")
    g.add_argument("--data-format", default=None, choices=FILE_FORMATS,
                   help="list: the photos of a '<rgb> <depth> [focal]' list; folder: the photos under --data")
    g.add_argument("--data", default=None, help="the list file, or the photo folder")
    for name in ("image_root", "kb_crop"):
        add_option(g, name, default=None)


def inputs_of(args, model_of_checkpoint) -> tuple[list[str], list[str], callable, dict, list[str] | None]:
    """(photo paths, inputs named twice, reader of one path -> uint8 (3, H, W), {path: focal length},
    the folders output names are relative to (:func:`output_stems`; None: each photo's)) of
    ``fastmde predict``: the IMAGES given (folders with their sub-folders, ``--out`` left out),
    or the photos of ``--data`` (``--data-format list|folder``), kb-cropped when ``--kb-crop`` is
    on (default: as the checkpoint was trained on this format); the focal lengths are a file
    list's third fields (empty without them). ``model_of_checkpoint``: :func:`checkpoint_loader`'s
    function, called for the checkpoint's configuration with ``--data-format`` only."""
    from .. import data

    if args.data_format is None:
        if args.data is not None or args.image_root is not None or args.kb_crop is not None:
            raise ValueError("--data, --image-root and --kb-crop go with --data-format list or folder")
        if not args.images:
            raise ValueError("give image files or folders to predict, or --data-format list|folder with --data")
        anchors: list[str] = []
        found = expand_inputs(args.images, exclude=args.out, anchors=anchors)
        paths, duplicates, anchors = unique_inputs(found, anchors)
        return paths, duplicates, read_image, {}, anchors
    if args.images:
        raise ValueError(f"give image files or --data-format {args.data_format} --data, not both")
    if args.data is None:
        raise ValueError(f"--data-format {args.data_format} needs --data (the {args.data_format} of photos)")
    config = dict(getattr(model_of_checkpoint(), "fastmde_config", None) or {})   # {} for another project's
    same = config.get("data_format") == args.data_format
    kb = args.kb_crop
    if kb is None:
        from ..data.settings import dataset_setting

        kb = (config.get("kb_crop") if same else None)
        kb = dataset_setting(config.get("dataset") or "nyu").kb_crop if kb is None else kb
    if args.data_format == "list":
        root = args.image_root if args.image_root is not None else (config.get("image_root") if same else None)
        listed = data.FileList(args.data, image_root=root, depth_scale=None, image_only="all")
        paths = listed.image_paths
        focals = {p: f for p, f in zip(listed.image_paths, listed.focals) if f is not None}
    else:
        if args.image_root is not None:
            raise ValueError("--image-root is for --data-format list; the folder format reads its photos in --data")
        from ..data._common import IMAGE_EXTENSIONS
        from ..data.folder import _files_by_stem

        check_data_path("folder", args.data)
        found = _files_by_stem(args.data, IMAGE_EXTENSIONS, "photo")
        out = os.path.normcase(os.path.realpath(args.out)) + os.sep     # earlier results are photos too
        found = {k: p for k, p in found.items() if not os.path.normcase(os.path.realpath(p)).startswith(out)}
        if not found:
            raise ValueError(f"{args.data}: holds no photo ({' '.join(IMAGE_EXTENSIONS)})")
        paths = [found[key] for key in sorted(found)]
        focals = {}
    paths, duplicates = unique_inputs(paths)

    def read(path):
        image = decode_image(path)
        return torch.from_numpy(np.ascontiguousarray(data.kb_crop(image, path) if kb else image))

    return paths, duplicates, read, focals, None


def checkpoint_loader(path: str):
    """A function returning the model of ``fastmde predict``'s ``--checkpoint`` (on the CPU), the
    file read at its first call only: with ``--data-format list|folder`` the reader options come
    from the checkpoint's configuration before the photos are listed, and the same model then
    predicts (one ``torch.load``; NaN/inf weights warned of once). Errors name ``--checkpoint``."""
    from .checkpoint import check_checkpoint_argument, load_checkpoint_argument

    loaded = []

    def model_of_checkpoint():
        if not loaded:
            check_checkpoint_argument(path, "--checkpoint")
            loaded.append(load_checkpoint_argument(path, "--checkpoint"))
        return loaded[0]

    return model_of_checkpoint


# ---------------------------------------------------------------- point clouds

def add_pointcloud_arguments(parser) -> None:
    g = parser.add_argument_group("point clouds (docs/export.md)")
    g.add_argument("--pointcloud", action="store_true",
                   help=("also write <name>.ply: one point per pixel with a depth (the .npy's), x y z in metres "
                         "(camera frame: x right, y down, z forward) with the photo's RGB, binary little-endian"))
    for name, what in (("fx", "focal length along x"), ("fy", "focal length along y (default --fx)"),
                       ("cx", "principal point column (default (W - 1) / 2)"),
                       ("cy", "principal point row (default (H - 1) / 2)")):
        g.add_argument(f"--{name}", type=float, default=None,
                       help=f"{what}, in pixels of the photo (pixel centres at integer coordinates from 0); "
                            "without --fx: a file list's focal, else NYU's Kinect scaled to the photo")


def check_pointcloud_arguments(args, focals: dict) -> None:
    """Refuse intrinsics without --pointcloud and bad ones before anything is predicted; say once
    where the point clouds' intrinsics come from (each photo's own size scales NYU's Kinect; the
    line after the run names the sizes: :func:`describe_cameras`)."""
    from ..pointcloud import intrinsics_for

    given = [f"--{n}" for n in ("fx", "fy", "cx", "cy") if getattr(args, n) is not None]
    if not args.pointcloud:
        if given:
            raise ValueError(f"{', '.join(given)} go with --pointcloud (the intrinsics of the point clouds)")
        return
    _, where = intrinsics_for((480, 640), fx=args.fx, fy=args.fy, cx=args.cx, cy=args.cy,
                              focal=next(iter(focals.values()), None))
    if "NYU" in where:      # scaled to each photo's size, known once it is read
        where = "NYU Kinect intrinsics scaled to each photo's size (give --fx, --fy, --cx, --cy for another camera)"
    print(f"predict: point clouds with {where}", file=sys.stderr)


def write_pointcloud(args, stem: str, depth: np.ndarray, image: torch.Tensor, focal: float | None) -> tuple[str, str]:
    """``<out>/<stem>.ply`` from the depth the .npy holds (clamped unless --no-clamp) and the photo:
    (its path, where its intrinsics come from, as its header says)."""
    from ..pointcloud import intrinsics_for, write_point_cloud

    if args.clamp:
        depth = np.clip(depth, args.min_depth, args.max_depth)
    k, where = intrinsics_for(depth.shape, fx=args.fx, fy=args.fy, cx=args.cx, cy=args.cy, focal=focal)
    path = os.path.join(args.out, stem + ".ply")
    write_point_cloud(path, depth, image, k, comments=(f"intrinsics from {where}",))
    return path, where
