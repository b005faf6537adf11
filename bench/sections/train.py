"""``train`` section: throughput of the trainer's own training step.

Each row builds a :class:`fastmde.engine.Trainer` from a :class:`fastmde.engine.TrainConfig`
and times :meth:`Trainer.train_step` on one batch: the step ``fastmde train`` runs (augment on
the device, forward under the configured autocast, the depth loss with the validity mask,
backward, the trainer's Adam, the learning-rate schedule), so any change to the trainer shows
here. The data are synthetic 480x640 frames written once into a temporary folder in the
per-frame NYU layout and read by the trainer's own reader. The model is the default
``unet34-k3-1x1`` with the ``hu_blurred`` loss at the paper's 288x384 internal size (96x128 in
the quick CPU pass), with each speed option of ``fastmde train`` alone and together: float32
eager, ``--channels-last on``, ``--amp bf16`` (CUDA: also fp16), and ``--compile on`` (CUDA, or
``--full``). ``vs_eager`` is the speedup over the float32 eager step measured in the same run;
``throughput`` is images per second.
"""
from __future__ import annotations

import tempfile

import torch
from torch.utils.data import default_collate

from common import median_time_ms

MODEL = "unet34-k3-1x1"
LOSS = "hu_blurred"


def write_frames(root: str, batch: int) -> None:
    """``batch`` training frames (one room each) plus the held-out frames a Trainer expects."""
    from fastmde.data import write_synthetic_dataset

    # batch + 1 training frames: the trainer holds one out for validation (val_fraction).
    write_synthetic_dataset(root, train=batch + 1, val=1, layout="frames", frames_per_scene=1)


def make_trainer(root: str, out: str, device: str, size, batch: int, *, amp: str, channels_last: bool,
                 compile_model: bool):
    """A Trainer of ``MODEL`` on the frames in ``root``, and one batch of its training set."""
    from fastmde.engine import Trainer, TrainConfig

    cfg = TrainConfig(
        model=MODEL, size=size, loss=LOSS, batch_size=batch, seed=0, data_format="frames", data=root,
        val_fraction=1 / (batch + 1), device=device, amp=amp, channels_last="on" if channels_last else "off",
        compile="on" if compile_model else "off", workers=0, out=out, progress=False,
    )
    trainer = Trainer(cfg, overwrite=True, log=lambda text: None)
    trainer.train_model.train()
    batch_items = default_collate([trainer.train_set[i] for i in range(batch)])
    return trainer, batch_items


def run(ctx, device: str) -> None:
    cuda = device.startswith("cuda")
    size = (288, 384) if (cuda or ctx.full) else (96, 128)
    batch = 8 if cuda else 2
    options = [("fp32", "none", False, False), ("fp32 channels_last", "none", True, False),
               ("bf16 autocast", "bf16", False, False), ("bf16 autocast + channels_last", "bf16", True, False)]
    if cuda:
        options.append(("fp16 autocast + channels_last", "fp16", True, False))
    if cuda or ctx.full:
        options.append(("bf16 + channels_last + compile", "bf16", True, True))
    base_ms = None
    with tempfile.TemporaryDirectory(prefix="fastmde-bench-train-") as root:
        write_frames(root, batch)
        for label, amp, channels_last, compile_model in options:
            what = f"Trainer.train_step {MODEL} @ {size[0]}x{size[1]}"
            shape = f"{batch}x3x480x640"
            try:
                trainer, items = make_trainer(root, f"{root}/run", device, size, batch, amp=amp,
                                              channels_last=channels_last, compile_model=compile_model)
                total_ms = median_time_ms(lambda: trainer.train_step(items), device,
                                          warmup=3 if compile_model else 2, reps=5, max_seconds=20.0)
            except Exception as exc:
                ctx.add(section="train", what=what, shape=shape, impl=label,
                        note=f"failed: {type(exc).__name__}: {str(exc)[:80]}")
                continue
            if base_ms is None:
                base_ms = total_ms
            ctx.add(section="train", what=what, shape=shape, dtype="float32" if amp == "none" else amp,
                    layout="channels_last" if channels_last else "NCHW", impl=label, total_ms=total_ms,
                    vs_eager=base_ms / total_ms, throughput=f"{batch / (total_ms * 1e-3):.2f} img/s")
            del trainer
            if cuda:
                torch.cuda.empty_cache()
