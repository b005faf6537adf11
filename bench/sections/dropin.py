"""``dropin`` section: a plain-PyTorch depth project's training step before and after fastmde.

The project is ``examples/adopt.py``'s: a U-Net with a torchvision-style ResNet34 encoder and
the paper authors' up-projection blocks (3x3, with the 1x1 reduction), Hu et al.'s blurred loss
written with ``F.conv2d``, Adam at lr 1e-4. One training step (forward at the internal size
inside a 480x640 frame, loss at 480x640, backward, Adam) is timed as written (``plain``) and after
the two lines of adoption (``fastmde``: ``fastmde.patch(model)`` and
``fastmde.depth_loss(..., preset="hu_blurred")``), the two alternating round-robin so that
machine drift hits both alike. ``x eager`` is the speed-up over the plain step; ``peak MB`` is
the step's peak memory above what was allocated before it.

Settings: the paper's (480x640 frames, 288x384 inside) at batch 1 and batch 8. The quick CPU
pass runs batch 1 at 288x384 and batch 8 at 96x128 (a 288x384 batch of 8 takes several
seconds per step on a 2-core CPU); ``--full`` and CUDA run both batches at 288x384.
"""
from __future__ import annotations

import copy
import importlib.util
import os

import torch

from common import interleaved_median_ms, peak_memory_bytes

INPUT = (480, 640)
PAPER_SIZE = (288, 384)
LOSS = "hu_blurred"
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "examples", "adopt.py")


def load_example():
    """``examples/adopt.py`` as a module (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location("fastmde_example_adopt", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(device: str, full: bool) -> list[tuple[int, tuple[int, int]]]:
    if device.startswith("cuda") or full:
        return [(1, PAPER_SIZE), (8, PAPER_SIZE)]
    return [(1, PAPER_SIZE), (8, (96, 128))]


def run(ctx, device: str) -> None:
    adopt = load_example()
    for batch, size in settings(device, ctx.full):
        what = f"U-Net34 k3 1x1 train step @ {size[0]}x{size[1]}, {LOSS}"
        shape = f"{batch}x3x{INPUT[0]}x{INPUT[1]}"
        torch.manual_seed(0)
        plain = adopt.DepthUNet(size).to(device)
        fused = copy.deepcopy(plain)
        image, depth = adopt.make_batch(batch, INPUT, device)
        plain_loss = adopt.PlainDepthLoss(blur=LOSS == "hu_blurred").to(device)
        plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-4)
        steps = {"plain": lambda: adopt.train_step(plain, plain_opt, plain_loss, image, depth)}
        note = "as written"
        try:
            report, fused_loss = adopt.adopt(fused, LOSS)
            fused_opt = torch.optim.Adam(fused.parameters(), lr=1e-4)
            steps["fastmde"] = lambda: adopt.train_step(fused, fused_opt, fused_loss, image, depth)
            steps["fastmde"]()
        except Exception as exc:
            steps.pop("fastmde", None)
            ctx.add(section="dropin", what=what, shape=shape, impl="fastmde",
                    note=f"failed: {type(exc).__name__}: {str(exc)[:80]}")
        times = interleaved_median_ms(steps, device, warmup=1, rounds=10 if ctx.full else 5,
                                      max_seconds=60.0 if ctx.full else 20.0)
        for impl, step in steps.items():
            peak = peak_memory_bytes(step, device)
            if impl == "fastmde":
                skipped = len(report.skipped)
                note = (f"fastmde.patch replaced {len(report.replaced)} blocks"
                        + (f", left {skipped} alone" if skipped else "") + f"; fastmde.depth_loss {LOSS}")
            ctx.add(section="dropin", what=what, shape=shape, dtype="float32", layout="NCHW", impl=impl,
                    total_ms=times[impl], vs_eager=times["plain"] / times[impl],
                    throughput=f"{batch / (times[impl] * 1e-3):.2f} img/s",
                    peak_mb=None if peak is None else peak / 2**20, note=note)
        del plain, fused, steps
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
