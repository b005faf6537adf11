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


# ----------------------------------------------------------------------------- KITTI-style lists

KITTI_FOCALS = (721.5377, 707.0493)      # the focal lengths BTS's KITTI lists give (pixels)


def sparse_depth(h: int, w: int, k: int = 0) -> np.ndarray:
    """float32 (h, w) metres like projected LiDAR: nothing in the top third (sky), then about one
    pixel in seven measured, 2-70 m, the rest 0. Values are multiples of 1/256 (exact in PNG)."""
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    d = 2.0 + 68.0 * (1.0 - y / h) * (0.5 + 0.5 * ((x + 7 * k) % 97) / 96)
    d = np.round(d * 256) / 256
    measured = ((y * 3 + x * 5 + k) % 7 == 0) & (y >= h // 3)
    return np.where(measured, d, 0).astype(np.float32)


def write_kitti_tree(root, sizes, *, frames_per_size=2, none_lines=1, focal=True, name="train.txt"):
    """A KITTI-style tree under ``root``: ``raw/<date>/<drive>/image_02/data/NNNNNNNNNN.png``
    photos, ``gt/<drive>/proj_depth/groundtruth/image_02/NNNNNNNNNN.png`` 16-bit depth (metres *
    256, sparse), one drive per frame size, and ``root/<name>`` listing ``<rgb> <depth> [focal]``
    (BTS's relative paths; ``none_lines`` extra photos listed with depth ``None``).

    Returns (list path, image root, depth root, [(rgb array (3, h, w), depth metres (h, w))] in
    list order of the lines with depth)."""
    lines, frames = [], []
    k = 0
    for s, (h, w) in enumerate(sizes):
        drive = f"2011_09_26_drive_{s + 1:04d}_sync"
        for j in range(frames_per_size + (none_lines if s == 0 else 0)):
            rgb_rel = f"2011_09_26/{drive}/image_02/data/{j:010d}.png"
            os.makedirs(os.path.join(root, "raw", os.path.dirname(rgb_rel)), exist_ok=True)
            rgb = pattern_image(h, w, k)
            Image.fromarray(rgb.transpose(1, 2, 0)).save(os.path.join(root, "raw", rgb_rel))
            tail = f" {KITTI_FOCALS[s % 2]}" if focal else ""
            if j >= frames_per_size:
                lines.append(f"{rgb_rel} None{tail}\n")
            else:
                depth_rel = f"{drive}/proj_depth/groundtruth/image_02/{j:010d}.png"
                os.makedirs(os.path.join(root, "gt", os.path.dirname(depth_rel)), exist_ok=True)
                depth = sparse_depth(h, w, k)
                Image.fromarray((depth * 256).round().astype(np.uint16)).save(os.path.join(root, "gt", depth_rel))
                lines.append(f"{rgb_rel} {depth_rel}{tail}\n")
                frames.append((rgb, depth))
            k += 1
    list_path = os.path.join(root, name)
    with open(list_path, "w") as f:
        f.writelines(lines)
    return list_path, os.path.join(root, "raw"), os.path.join(root, "gt"), frames
