"""Writers of tiny files in the real NYU layouts, independent of fastmde's own writers."""
from __future__ import annotations

import os

import h5py
import numpy as np
from PIL import Image


def pattern_image(h: int, w: int, k: int = 0) -> np.ndarray:
    """uint8 (3, h, w), every pixel distinct along rows and columns (a transpose shows)."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(h), np.arange(w), indexing="ij")
    return ((c * 71 + y * 13 + x * 3 + k * 29) % 256).astype(np.uint8)


def pattern_depth(h: int, w: int, k: int = 0) -> np.ndarray:
    """float32 (h, w) metres in (0.5, 10), distinct per pixel, with a 0 hole at (0, 1)."""
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    d = (0.5 + 0.01 * y + 0.001 * x + 0.1 * k).astype(np.float32)
    d[0, 1] = 0.0
    return d


def write_labeled(path, images, depths, raw=None, image_key="images"):
    """MATLAB v7.3 layout: axes reversed, images (N, 3, W, H), depths (N, W, H)."""
    with h5py.File(path, "w") as f:
        f.create_dataset(image_key, data=np.stack(images).transpose(0, 1, 3, 2))
        f.create_dataset("depths", data=np.stack(depths).transpose(0, 2, 1).astype(np.float32))
        f.create_dataset("rawDepths", data=np.stack(raw if raw is not None else depths).transpose(0, 2, 1).astype(np.float32))


def write_frame(path, rgb, depth, rgb_key="rgb"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(rgb_key, data=rgb)
        f.create_dataset("depth", data=depth)


def write_csv_layout(root, split, rgbs, depths_png, ext="png"):
    """``root/data/nyu2_<split>.csv`` + images; depths_png are the raw PNG arrays (uint8 or uint16)."""
    rows = []
    for i, (rgb, dpng) in enumerate(zip(rgbs, depths_png)):
        scene = f"scene_{i % 2}"
        rel_rgb = f"data/nyu2_{split}/{scene}/{i}.{ext}"
        rel_depth = f"data/nyu2_{split}/{scene}/{i}_depth.png"
        os.makedirs(os.path.join(root, os.path.dirname(rel_rgb)), exist_ok=True)
        Image.fromarray(rgb.transpose(1, 2, 0)).save(os.path.join(root, rel_rgb))
        Image.fromarray(dpng).save(os.path.join(root, rel_depth))
        rows.append(f"{rel_rgb},{rel_depth}\n")
    with open(os.path.join(root, "data", f"nyu2_{split}.csv"), "w") as f:
        f.writelines(rows)


def truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))
