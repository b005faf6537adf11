"""``data`` section: items/s of each NYU reader (with and without augmentation), of the
augmentation alone, and synthetic rendering frames/s.

Readers run on small files in their real layouts (480x640 synthetic frames) written to a
temporary directory, one process, no DataLoader workers (``--full`` adds a 2-worker
DataLoader row); with augmentation, batches of 8 are collated, moved to the device and
augmented there (synchronised on CUDA).
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

from fastmde.data import Augment, NYUCsv, NYUFrames, NYULabeled, render_frame, write_synthetic_dataset

from common import synchronize

BATCH = 8


def _write_csv_layout(root: str, n: int) -> None:
    """CSV + JPEG RGB + 8-bit depth PNG (the train split of nyu_data.zip) from synthetic frames."""
    from PIL import Image

    rows = []
    for i in range(n):
        rgb, depth, _ = render_frame(0, i)
        rel = f"data/nyu2_train/synth_{i // 8:05d}"
        os.makedirs(os.path.join(root, rel), exist_ok=True)
        Image.fromarray(rgb.transpose(1, 2, 0)).save(os.path.join(root, rel, f"{i}.jpg"), quality=95)
        Image.fromarray(np.clip(depth / 10 * 255 + 0.5, 0, 255).astype(np.uint8)).save(os.path.join(root, rel, f"{i}.png"))
        rows.append(f"{rel}/{i}.jpg,{rel}/{i}.png\n")
    with open(os.path.join(root, "data", "nyu2_train.csv"), "w") as f:
        f.writelines(rows)


def _items_per_s(ds, n_items: int, device: str, augment: Augment | None, seconds: float) -> float:
    gen = torch.Generator().manual_seed(0)
    done, start = 0, time.perf_counter()
    while True:
        for b0 in range(0, n_items, BATCH):
            items = [ds[i % len(ds)] for i in range(b0, min(b0 + BATCH, n_items))]
            if augment is not None:
                image = torch.stack([it["image"] for it in items]).to(device, non_blocking=True)
                depth = torch.stack([it["depth"] for it in items]).to(device, non_blocking=True)
                augment(image, depth, gen)
            done += len(items)
        synchronize(device)
        if time.perf_counter() - start > seconds:
            return done / (time.perf_counter() - start)


def run(ctx, device: str) -> None:
    n = 64 if ctx.full else 16
    seconds = 5.0 if ctx.full else 1.0
    shape = f"{BATCH}x3x480x640"
    augment = Augment()

    # synthetic rendering (numpy, one core)
    for noise in (False, True):
        render_frame(0, 0, noise=noise)
        start, cpu_start, k = time.perf_counter(), time.process_time(), 0
        while k < 4 or time.perf_counter() - start < seconds:
            render_frame(0, k + 1, noise=noise)
            k += 1
        fps = k / (time.perf_counter() - start)
        cpu_fps = k / max(time.process_time() - cpu_start, 1e-9)
        ctx.add(section="data", what="synthetic render", shape="480x640", impl="numpy ray casting (1 core)",
                throughput=f"{fps:.1f} frames/s",
                note=("with Kinect noise + holes" if noise else "clean depth") + f"; {cpu_fps:.1f} frames per CPU-second")

    # augmentation alone, on the device
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (BATCH, 3, 480, 640), generator=g, dtype=torch.uint8).to(device)
    depth = (torch.rand(BATCH, 1, 480, 640, generator=g) * 9.5 + 0.5).to(device)
    augment(image, depth, torch.Generator().manual_seed(1))
    synchronize(device)
    start, k = time.perf_counter(), 0
    while k < 3 or time.perf_counter() - start < seconds:
        augment(image, depth, g)
        k += 1
    synchronize(device)
    ips = k * BATCH / (time.perf_counter() - start)
    ctx.add(section="data", what="Augment", shape=shape, dtype="uint8", impl=f"batched on {device}",
            throughput=f"{ips:.0f} items/s", note="flip, colour, crop, rotate; affine grid_sample")

    with tempfile.TemporaryDirectory(prefix="fastmde-bench-data-") as tmp:
        write_synthetic_dataset(os.path.join(tmp, "frames"), train=n, val=1, layout="frames")
        write_synthetic_dataset(os.path.join(tmp, "labeled"), train=n, val=1, layout="labeled")
        _write_csv_layout(os.path.join(tmp, "csv"), n)
        readers = {
            "NYUFrames": NYUFrames(os.path.join(tmp, "frames"), "train"),
            "NYULabeled": NYULabeled(os.path.join(tmp, "labeled", "nyu_depth_v2_labeled.mat"), "train",
                                     test_indices=os.path.join(tmp, "labeled", "test_indices.txt")),
            "NYUCsv": NYUCsv(os.path.join(tmp, "csv"), "train"),
        }
        for name, ds in readers.items():
            for aug in (None, augment):
                ips = _items_per_s(ds, n, device, aug, seconds)
                ctx.add(section="data", what=name, shape=f"{len(ds)} items, 3x480x640",
                        impl="read" if aug is None else f"read + Augment on {device} (batch {BATCH})",
                        throughput=f"{ips:.0f} items/s", note="1 process, page-cached files")
        if ctx.full:
            from torch.utils.data import DataLoader

            for name, ds in readers.items():
                loader = DataLoader(ds, batch_size=BATCH, num_workers=2, shuffle=True,
                                    pin_memory=device.startswith("cuda"))
                start, done = time.perf_counter(), 0
                for _ in range(2):
                    for batch in loader:
                        augment(batch["image"].to(device), batch["depth"].to(device), g)
                        done += batch["image"].shape[0]
                synchronize(device)
                ctx.add(section="data", what=name, shape=f"{len(ds)} items, 3x480x640",
                        impl=f"DataLoader(2 workers) + Augment on {device}",
                        throughput=f"{done / (time.perf_counter() - start):.0f} items/s", note="incl. worker start-up")
