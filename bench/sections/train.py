"""``train`` section: throughput of one training step (augment, forward, loss, backward, Adam).

The default model (``unet34-k3-1x1`` at the paper's 288x384 internal size; 96x128 in the quick
CPU pass) on synthetic 480x640 frames rendered beforehand, with each speed option of
``fastmde train`` alone and together: float32 eager, channels_last, bf16 (CUDA: also fp16)
autocast, and torch.compile (CUDA, or ``--full``). ``vs_eager`` is the speedup over the
float32 eager step measured in the same run; ``throughput`` is images per second.
"""
from __future__ import annotations

import torch

from common import median_time_ms

MODEL = "unet34-k3-1x1"


def _batch(device: str, batch: int):
    from fastmde.data import SyntheticScenes

    frames = SyntheticScenes(batch, seed=0)
    items = [frames[i] for i in range(batch)]
    images = torch.stack([it["image"] for it in items]).to(device)
    depth = torch.stack([it["depth"] for it in items]).to(device)
    return images, depth


def _step_fn(device: str, size, images, depth, *, amp_dtype, channels_last: bool, compile_model: bool):
    from fastmde import data, models
    from fastmde.engine.speed import autocast, make_scaler
    from fastmde.nn import DepthLoss

    torch.manual_seed(0)
    dev = torch.device(device)
    model = models.build(MODEL, size=size).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_model else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = make_scaler(dev, amp_dtype)
    loss_fn = DepthLoss("hu_blurred")
    augment = data.Augment().to(dev)
    generator = torch.Generator(device=dev).manual_seed(0)

    def step():
        x, d = augment(images, depth, generator=generator)
        x = x.float()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(dev, amp_dtype):
            pred = net(x)
        loss = loss_fn(pred.float(), d, mask=d > 0)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def run(ctx, device: str) -> None:
    cuda = device.startswith("cuda")
    size = (288, 384) if (cuda or ctx.full) else (96, 128)
    batch = 8 if cuda else 2
    images, depth = _batch(device, batch)
    options = [("fp32", None, False, False), ("fp32 channels_last", None, True, False),
               ("bf16 autocast", torch.bfloat16, False, False),
               ("bf16 autocast + channels_last", torch.bfloat16, True, False)]
    if cuda:
        options.append(("fp16 autocast + channels_last", torch.float16, True, False))
    if cuda or ctx.full:
        options.append(("bf16 + channels_last + compile", torch.bfloat16, True, True))
    base_ms = None
    for label, amp_dtype, channels_last, compile_model in options:
        what = f"train step {MODEL} @ {size[0]}x{size[1]}"
        shape = f"{batch}x3x480x640"
        try:
            step = _step_fn(device, size, images, depth, amp_dtype=amp_dtype, channels_last=channels_last,
                            compile_model=compile_model)
            total_ms = median_time_ms(step, device, warmup=2 if not compile_model else 3, reps=5,
                                      max_seconds=20.0)
        except Exception as exc:
            ctx.add(section="train", what=what, shape=shape, impl=label,
                    note=f"failed: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        if base_ms is None:
            base_ms = total_ms
        ctx.add(section="train", what=what, shape=shape,
                dtype="bf16" if amp_dtype is torch.bfloat16 else "fp16" if amp_dtype is torch.float16 else "float32",
                layout="channels_last" if channels_last else "NCHW", impl=label, total_ms=total_ms,
                vs_eager=base_ms / total_ms, throughput=f"{batch / (total_ms * 1e-3):.2f} img/s")
