"""``models`` section: training-step speed of the paper's architectures, batch 1.

A training step is what the paper times: forward, L1 loss against a target at the input's
480x640, backward, Adam step (lr 1e-4), batch 1, eager float32 NCHW. Two tables:

- architectures (the paper's Table 4 grid, plus Tables 5/6's encoder / kernel / 1x1
  variants): every named variant of :func:`fastmde.models.variants` at the internal size
  384x288, as it/s and as the speedup over Hu et al.'s original ResNet50 model (``hu50``);
- intermediate resolution (the paper's Table 2): the U-Net (``unet34-k3-1x1``) at each
  internal size 640x480, 512x384, 384x288, 256x192, 128x96, speedup over the 640x480 row.

The ``x eager`` column holds those speedups (the baseline row reads 1.00) and ``paper x`` the
paper's for the same row (Table 4: T4 GPU; Table 2: CPU; from :mod:`fastmde.engine.paper`);
the note gives the network's forward MACs, the speedup they alone would predict, and the
achieved training TFLOP/s here and, from the paper's it/s, on its T4 (2 FLOP per MAC, backward
about twice the forward). Why the paper's GPU speed-ups are so much larger than CPU ones is in
:data:`NOTE` (printed under the table). Quick mode runs a subset with few steps;
``FASTMDE_BENCH_MODELS=name,name`` picks the architecture rows (a full grid run takes the better
part of an hour on a 2-core CPU: the ResNet50 variants cost up to 1.6 TMAC per image).
"""
from __future__ import annotations

import os

import torch

import fastmde.models as M
from fastmde.engine import paper

from common import median_time_ms

INPUT = (480, 640)
TABLE4_SIZE = (288, 384)
TABLE2_MODEL = paper.TABLE2_MODEL
TABLE4_BASELINE = paper.TABLE4_BASELINE
TABLE2_SIZES = list(M.PAPER_SIZES.values())  # HxW, the paper's five named sizes, largest first
NOTE = paper.SPEED_NOTE

QUICK_TABLE4 = [TABLE4_BASELINE, TABLE2_MODEL]
QUICK_TABLE2 = [(480, 640), (288, 384), (96, 128)]


def _wh(size) -> str:
    return f"{size[1]}x{size[0]}"


def train_step_ms(name: str, size, device: str, *, full: bool) -> float:
    """Median milliseconds of one forward + L1 + backward + Adam step of ``name`` at ``size``."""
    torch.manual_seed(0)
    model = M.build(name, size=size).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 3, *INPUT, generator=g) * 255).to(device)
    target = (torch.rand(1, 1, *INPUT, generator=g) * 9.5 + 0.5).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = (model(x) - target).abs().mean()
        loss.backward()
        opt.step()

    # a ResNet50 step is seconds to minutes on a CPU: few repetitions (quick: one timed step)
    if full:
        return median_time_ms(step, device, warmup=1, reps=5, max_seconds=60.0)
    return median_time_ms(step, device, warmup=1, reps=1)


def gmacs(name: str, size) -> float:
    """Forward multiply-accumulates (G) of the network at its internal ``size`` (meta device)."""
    with torch.device("meta"):
        model = M.build(name, size=size)
    return M.count_macs(model.net, torch.empty(1, 3, *size, device="meta")) / 1e9


def run(ctx, device: str) -> None:
    cache: dict[tuple, float] = {}

    def timed(name, size):
        key = (name, tuple(size))
        if key not in cache:
            cache[key] = train_step_ms(name, size, device, full=ctx.full)
        return cache[key]

    def add(what, name, size, base_ms, base_label, base_macs, paper_x, paper_note):
        ms, macs = timed(name, size), gmacs(name, size)
        ctx.add(
            section="models", what=what, shape=f"1x3x{INPUT[0]}x{INPUT[1]} @ {_wh(size)}",
            dtype="float32", layout="NCHW", impl="eager", total_ms=ms,
            throughput=f"{1000.0 / ms:.2f} it/s", vs_eager=base_ms / ms, paper_x=paper_x,
            note=(f"speedup vs {base_label}; {macs:.1f} GMAC fwd, MAC ratio {base_macs / macs:.2f}; "
                  f"{paper.training_tflops(1000.0 / ms, macs):.3f} TFLOP/s here; {paper_note}"),
        )

    table4 = list(M.variants()) if ctx.full else QUICK_TABLE4
    picked = os.environ.get("FASTMDE_BENCH_MODELS")
    if picked:  # e.g. "unet34-k3,unet34-k5": these architecture rows only (plus the baseline)
        table4 = [n.strip() for n in picked.split(",") if n.strip()]
        unknown = [n for n in table4 if n not in M.variants()]
        if unknown:
            raise ValueError(f"FASTMDE_BENCH_MODELS: unknown model(s) {unknown}; valid: {', '.join(M.variants())}")
    table4 = [TABLE4_BASELINE] + [n for n in table4 if n != TABLE4_BASELINE]
    base, base_macs = timed(TABLE4_BASELINE, TABLE4_SIZE), gmacs(TABLE4_BASELINE, TABLE4_SIZE)
    for name in table4:
        row = paper.table4_row(name, TABLE4_SIZE)
        if row is None:
            paper_x, paper_note = None, "not in the paper's Table 4"
        else:
            label, _, _, its, paper_x = row
            paper_note = (f"paper Table 4 ({label}): {its} it/s on a T4, "
                          f"{paper.training_tflops(its, gmacs(name, TABLE4_SIZE)):.2f} TFLOP/s")
        add(f"train step {name}", name, TABLE4_SIZE, base, TABLE4_BASELINE, base_macs, paper_x, paper_note)

    sizes = TABLE2_SIZES if ctx.full else QUICK_TABLE2
    base, base_macs = timed(TABLE2_MODEL, TABLE2_SIZES[0]), gmacs(TABLE2_MODEL, TABLE2_SIZES[0])
    for size in sizes:
        label, paper_x = paper.TABLE2[tuple(size)]
        add(f"train step {TABLE2_MODEL} internal {_wh(size)}", TABLE2_MODEL, size, base, _wh(TABLE2_SIZES[0]),
            base_macs, paper_x, f"paper Table 2 ({label}): {paper_x}x on a CPU")
