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

**Against the paper authors' way** (``what`` = "fastmde train vs paper-style step"): the same
network written in plain PyTorch the way the paper authors' code writes it (``examples/adopt.py``:
their Baseline34 U-Net with the 3x3 up-projection and 1x1 reduction, Hu et al.'s blurred loss
with ``F.conv2d``, Adam; the project's own rendition, not their code) at each setting a user
would pick for speed (float32, bf16 autocast, bf16 autocast + channels_last), against
``fastmde train``'s default step (``--amp auto --channels-last auto``: what it resolves to on
this device is in the row) and its float32 step, 480x640 frames with the model at 288x384
inside, batch 1 and 8 (the quick CPU pass: batch 8 at 96x128). The steps alternate
round-robin (see below). ``vs_eager`` is the speed-up over the paper-style float32 step; the note gives the
speed-up over the paper-style step at its best setting. The fastmde step also augments its
batch on the device (flip, colour, crop, rotation), which the paper-style step leaves out.
On a CPU each setting runs in a process of its own, as a user would run it (fastmde's
process-wide allocator setting, ``engine/speed.py``, then applies to the fastmde rows only), the
processes alternating over rounds; the median over every timed step. One more CPU row runs the
best paper-style setting in a process with that allocator setting too, to show its share of the
difference (it is not counted as a paper-style setting). On CUDA they alternate round-robin in
one process.
"""
from __future__ import annotations

import os
import sys
import tempfile

if __name__ == "__main__":   # run as a worker process (see worker_main): bench/ and the repository
    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(_HERE), os.path.dirname(os.path.dirname(_HERE))]

import torch
from torch.utils.data import default_collate

from common import interleaved_median_ms, median_time_ms

MODEL = "unet34-k3-1x1"
LOSS = "hu_blurred"


def write_frames(root: str, batch: int) -> None:
    """``batch`` training frames (one room each) plus the held-out frames a Trainer expects."""
    from fastmde.data import write_synthetic_dataset

    # batch + 1 training frames: the trainer holds one out for validation (val_fraction).
    write_synthetic_dataset(root, train=batch + 1, val=1, layout="frames", frames_per_scene=1)


def make_trainer(root: str, out: str, device: str, size, batch: int, *, amp: str, channels_last,
                 compile_model: bool):
    """A Trainer of ``MODEL`` on the frames in ``root``, and one batch of its training set.
    ``amp``: ``--amp`` (auto|bf16|fp16|none); ``channels_last``: a bool or ``"auto"``."""
    from fastmde.engine import Trainer, TrainConfig

    cl = channels_last if isinstance(channels_last, str) else ("on" if channels_last else "off")
    cfg = TrainConfig(
        model=MODEL, size=size, loss=LOSS, batch_size=batch, seed=0, data_format="frames", data=root,
        val_fraction=1 / (batch + 1), device=device, amp=amp, channels_last=cl,
        compile="on" if compile_model else "off", workers=0, out=out, progress=False,
        pretrained="none",   # the step's speed does not depend on the encoder's start; nothing downloads
    )
    trainer = Trainer(cfg, overwrite=True, log=lambda text: None)
    trainer.train_model.train()
    batch_items = default_collate([trainer.train_set[i] for i in range(batch)])
    return trainer, batch_items


def run(ctx, device: str) -> None:
    run_speed_options(ctx, device)
    run_against_paper_style(ctx, device)


def run_speed_options(ctx, device: str) -> None:
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


PAPER_STYLE_SETTINGS = [("fp32", None, False), ("bf16 autocast", torch.bfloat16, False),
                        ("bf16 autocast + channels_last", torch.bfloat16, True)]


def paper_style_step(device: str, size, batch: int, amp_dtype, channels_last: bool):
    """One training step of the paper-style plain-PyTorch project (``examples/adopt.py``) at a
    speed setting: a closure running forward (under autocast), loss, backward and Adam."""
    from sections.dropin import INPUT, load_example

    adopt = load_example()
    torch.manual_seed(0)
    model = adopt.DepthUNet(size).to(device)
    loss_fn = adopt.PlainDepthLoss(blur=LOSS == "hu_blurred").to(device)
    image, depth = adopt.make_batch(batch, INPUT, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            return adopt.train_step(model, optimizer, loss_fn, image, depth)

    return step


FASTMDE_SETTINGS = [("fastmde train default", "auto", "auto"), ("fastmde train fp32", "none", False)]


#: the best paper-style setting again, in a process with fastmde's allocator setting: not what a
#: user runs (their process keeps glibc's default), shown to separate the allocator's share
TUNED_PAPER_STYLE = "paper-style bf16 autocast + channels_last, malloc as fastmde sets it"


def _setting_step(label: str, root: str, device: str, size, batch: int):
    """(step closure, (dtype, layout, note)) of one compared setting, built in this process."""
    if label == TUNED_PAPER_STYLE:
        from fastmde.engine.speed import tune_cpu_allocator

        note = tune_cpu_allocator() or "allocator setting not applied here"
        step, (dtype, layout, _) = _setting_step("paper-style bf16 autocast + channels_last", root, device, size, batch)
        return step, (dtype, layout, f"{note}; not counted as a paper-style setting")
    for name, amp_dtype, channels_last in PAPER_STYLE_SETTINGS:
        if label == f"paper-style {name}":
            return (paper_style_step(device, size, batch, amp_dtype, channels_last),
                    (str(amp_dtype or torch.float32).replace("torch.", ""), "channels_last" if channels_last else "NCHW", ""))
    for name, amp, cl in FASTMDE_SETTINGS:
        if label == name:
            trainer, items = make_trainer(root, f"{root}/run-{amp}", device, size, batch, amp=amp, channels_last=cl,
                                          compile_model=False)
            return ((lambda: trainer.train_step(items)),
                    (str(trainer.amp_dtype or torch.float32).replace("torch.", ""),
                     "channels_last" if trainer.channels_last else "NCHW", trainer.speed_choice if amp == "auto" else ""))
    raise ValueError(f"unknown setting {label!r}")


def _labels(cuda: bool = False) -> list[str]:
    labels = [f"paper-style {name}" for name, _, _ in PAPER_STYLE_SETTINGS] + [name for name, _, _ in FASTMDE_SETTINGS]
    return labels if cuda else labels + [TUNED_PAPER_STYLE]


def worker_main(argv=None) -> int:
    """``python bench/sections/train.py LABEL ROOT BATCH HxW STEPS``: time STEPS steps of one
    setting in this process (after two warm-up steps) and print them as JSON."""
    import json
    import time

    label, root, batch, size, steps = argv if argv is not None else sys.argv[1:]
    h, w = (int(v) for v in size.split("x"))
    step, meta = _setting_step(label, root, "cpu", (h, w), int(batch))
    for _ in range(2):
        step()
    times = []
    for _ in range(int(steps)):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    print(json.dumps({"times": times, "meta": meta}))
    return 0


def _per_process_medians(labels, root: str, size, batch: int, rounds: int, steps: int):
    """CPU: each setting in its own process, as a user runs it (process-wide settings such as
    fastmde's allocator then apply to its own steps only), the processes alternating for
    ``rounds`` rounds; the median over every timed step of a setting."""
    import json
    import subprocess

    times = {label: [] for label in labels}
    meta = {}
    env = dict(os.environ)
    for r in range(rounds):
        for label in (labels if r % 2 == 0 else labels[::-1]):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), label, root, str(batch),
                                  f"{size[0]}x{size[1]}", str(steps)], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"{label}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            times[label] += result["times"]
            meta[label] = tuple(result["meta"])
    return {label: sorted(v)[len(v) // 2] for label, v in times.items()}, meta


def run_against_paper_style(ctx, device: str) -> None:
    cuda = device.startswith("cuda")
    settings = [(1, (288, 384)), (8, (288, 384))] if (cuda or ctx.full) else [(1, (288, 384)), (8, (96, 128))]
    for batch, size in settings:
        what = f"fastmde train vs paper-style step, {MODEL} @ {size[0]}x{size[1]}, {LOSS}"
        shape = f"{batch}x3x480x640"
        with tempfile.TemporaryDirectory(prefix="fastmde-bench-train-") as root:
            write_frames(root, batch)
            if cuda:
                steps, labels = {}, {}
                for label in _labels(cuda=True):
                    steps[label], labels[label] = _setting_step(label, root, device, size, batch)
                for fn in steps.values():   # first calls: allocations, cuDNN autotuning
                    fn()
                times = interleaved_median_ms(steps, device, warmup=1, rounds=10, max_seconds=90.0)
            else:
                # processes of one setting differ by up to +-8% on the AMD EPYC VM (same kernels,
                # same choices): three rounds of four steps keep one unlucky process from deciding
                times, labels = _per_process_medians(_labels(), root, size, batch, rounds=4 if ctx.full else 3,
                                                     steps=5 if ctx.full else 4)
        base = times["paper-style fp32"]
        best_label = min((k for k in times if k.startswith("paper-style") and k != TUNED_PAPER_STYLE), key=times.get)
        for impl, ms in times.items():
            dtype, layout, note = labels[impl]
            extra = f"{times[best_label] / ms:.2f}x the best paper-style setting ({best_label.removeprefix('paper-style ')})"
            ctx.add(section="train", what=what, shape=shape, dtype=dtype, layout=layout, impl=impl,
                    total_ms=ms, vs_eager=base / ms, throughput=f"{batch / (ms * 1e-3):.2f} img/s",
                    note="; ".join(x for x in (note, extra) if x))


if __name__ == "__main__":
    sys.exit(worker_main())
