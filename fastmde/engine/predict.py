"""``fastmde predict``: depth maps for image files, as colourised PNGs and metres (.npy)."""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def colourise(depth: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8 with the Turbo colour map, near = red, far = blue.

    The range is [lo, hi] (default: the image's finite min and max). Turbo is evaluated with
    its published degree-5 polynomial fit (Mikhailov, 2019), so no plotting library is needed.
    Non-finite or non-positive depth is drawn black.
    """
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    if lo is None or hi is None:
        vals = d[valid]
        lo = float(vals.min()) if lo is None and vals.size else (lo or 0.0)
        hi = float(vals.max()) if hi is None and vals.size else (hi or 1.0)
    t = 1.0 - np.clip((d - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    t = np.where(valid, t, 0.0)
    r = 0.13572138 + t * (4.61539260 + t * (-42.66032258 + t * (132.13108234 + t * (-152.94239396 + t * 59.28637943))))
    g = 0.09140261 + t * (2.19418839 + t * (4.84296658 + t * (-14.18503333 + t * (4.27729857 + t * 2.82956604))))
    b = 0.10667330 + t * (12.64194608 + t * (-60.58204836 + t * (110.36276771 + t * (-89.90310912 + t * 27.34824973))))
    rgb = np.stack([r, g, b], axis=-1)
    rgb = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def read_image(path: str) -> torch.Tensor:
    """An image file -> uint8 (3, H, W) RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read {path!r} as an image: {exc}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def expand_inputs(inputs) -> list[str]:
    """Files as given; directories -> their image files, sorted."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ValueError(f"directory {item!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"input {item!r} does not exist")
    return paths


def output_stems(paths: list[str]) -> list[str]:
    """File stems, made unique (``a``, ``a_1``, ...) when two inputs share a name."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n}")
    return stems


@torch.no_grad()
def predict_images(model, images: list[torch.Tensor], *, device="cpu", batch_size: int = 4, amp_dtype=None):
    """Depth (H, W) float32 numpy arrays for uint8 (3, H, W) images; same-size images are batched."""
    from .evaluate import predict_depth

    device = torch.device(device)
    model.eval()
    out: list[np.ndarray | None] = [None] * len(images)
    by_size: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(tuple(im.shape), []).append(i)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            batch = torch.stack([images[i] for i in chunk]).to(device).float()
            pred = predict_depth(model, batch, amp_dtype=amp_dtype)
            for i, p in zip(chunk, pred[:, 0].cpu().numpy()):
                out[i] = p.astype(np.float32)
    return out


def write_prediction(depth: np.ndarray, out_dir: str, stem: str, *, lo=None, hi=None) -> tuple[str, str]:
    """``<stem>.npy`` (metres) and ``<stem>.png`` (colourised), each written atomically."""
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    npy_path, png_path = os.path.join(out_dir, stem + ".npy"), os.path.join(out_dir, stem + ".png")
    tmp = os.path.join(out_dir, f".{stem}.npy.tmp")
    with open(tmp, "wb") as f:
        np.save(f, depth)
    os.replace(tmp, npy_path)
    tmp = os.path.join(out_dir, f".{stem}.png.tmp")
    Image.fromarray(colourise(depth, lo, hi)).save(tmp, format="PNG")
    os.replace(tmp, png_path)
    return png_path, npy_path


# ---------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", help="image files or directories of images")
    parser.add_argument("--checkpoint", required=True, help="fastmde checkpoint (or a run directory)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "none"))
    parser.add_argument("--min-depth", type=float, default=None, help="colour scale start (default: per image)")
    parser.add_argument("--max-depth", type=float, default=None, help="colour scale end (default: per image)")


def run(args) -> int:
    from .checkpoint import load
    from .speed import resolve_amp, resolve_device

    if args.batch_size < 1:
        raise ValueError("--batch-size must be positive")
    paths = expand_inputs(args.images)
    device = resolve_device(args.device)
    model = load(args.checkpoint, device=device)
    amp_dtype = resolve_amp(args.amp, device)
    stems = output_stems(paths)
    # Read and predict in chunks so that memory stays bounded for long lists.
    chunk = max(args.batch_size * 8, 32)
    for start in range(0, len(paths), chunk):
        images = [read_image(p) for p in paths[start:start + chunk]]
        depths = predict_images(model, images, device=device, batch_size=args.batch_size, amp_dtype=amp_dtype)
        for stem, depth in zip(stems[start:start + chunk], depths):
            write_prediction(depth, args.out, stem, lo=args.min_depth, hi=args.max_depth)
    print(f"wrote {len(paths)} depth maps (.png, .npy) to {args.out}", file=sys.stderr)
    return 0
