"""Where the time of one ``fastmde train`` step goes: ``python bench/profile_step.py``.

Profiles :meth:`fastmde.engine.Trainer.train_step` (the step ``fastmde train`` runs) with
``torch.profiler`` on the CPU and prints two breakdowns of the self time of every operator:

* by **stage of the forward** (module hooks open a ``record_function`` range around the
  intermediate-resolution resize, the encoder, each decoder up-projection block and the head),
  plus the loss, backward, the optimiser (Adam's own range), the augmentation and the EMA;
* by **kind of operator** (convolutions, the fused up-projection ops, BatchNorm, the depth loss,
  resizes, dtype conversions and copies, Adam's elementwise updates, the rest).

Options: ``--model``, ``--size HxW`` (internal), ``--batch``, ``--amp auto|bf16|none``,
``--channels-last auto|on|off``, ``--steps`` (profiled after two warm-up steps), ``--backend``
(``FASTMDE_BACKEND`` for the run). The findings are in docs/kernels.md.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

# operator name (prefix) -> kind; the first match wins
KINDS = [
    ("fastmde::upsample_conv2d", "fused up-projection ops"),
    ("fastmde::depth_loss", "depth loss (fused)"),
    ("fastmde::", "other fastmde ops"),
    ("aten::mkldnn_convolution", "convolutions (oneDNN)"),
    ("aten::convolution_backward", "convolutions (oneDNN)"),
    ("aten::_convolution", "convolutions (oneDNN)"),
    ("aten::conv", "convolutions (oneDNN)"),
    ("aten::native_batch_norm", "BatchNorm"),
    ("aten::batch_norm", "BatchNorm"),
    ("aten::_batch_norm", "BatchNorm"),
    ("aten::upsample", "resizes (bilinear/bicubic/area)"),
    ("aten::_upsample", "resizes (bilinear/bicubic/area)"),
    ("aten::avg_pool", "resizes (bilinear/bicubic/area)"),
    ("aten::adaptive_avg_pool", "resizes (bilinear/bicubic/area)"),
    ("aten::to", "dtype conversions and copies"),
    ("aten::_to_copy", "dtype conversions and copies"),
    ("aten::copy_", "dtype conversions and copies"),
    ("aten::contiguous", "dtype conversions and copies"),
    ("aten::clone", "dtype conversions and copies"),
    ("aten::_foreach", "Adam updates"),
    ("aten::threshold", "ReLU"),
    ("aten::relu", "ReLU"),
    ("aten::max_pool", "max pool"),
]


def kind_of(name: str) -> str:
    for prefix, kind in KINDS:
        if name.startswith(prefix):
            return kind
    return "other"


def add_stage_ranges(model):
    """record_function ranges around the forward of the model's stages (module hooks)."""
    import torch

    from fastmde.nn import UpProjection

    inner = getattr(model, "net", model)   # IntermediateResolution wraps the network
    stages = {"whole network (resize in, net, resize out)": model}
    for name, module in inner.named_children():
        if name == "encoder" or isinstance(module, UpProjection):
            stages[name] = module
    ranges = {}

    def pre(name):
        def hook(module, args):
            ranges[name] = torch.autograd.profiler.record_function(f"stage: forward {name}")
            ranges[name].__enter__()
        return hook

    def post(name):
        def hook(module, args, output):
            ranges.pop(name).__exit__(None, None, None)
        return hook

    for name, module in stages.items():
        module.register_forward_pre_hook(pre(name))
        module.register_forward_hook(post(name))
    return list(stages)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet34-k3-1x1")
    parser.add_argument("--size", default="288x384")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--channels-last", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--backend", default=None, help="reference|native (default: automatic)")
    args = parser.parse_args(argv)
    if args.backend:
        os.environ["FASTMDE_BACKEND"] = args.backend

    from torch.profiler import ProfilerActivity, profile, record_function
    from torch.utils.data import default_collate

    from fastmde._text import parse_size
    from fastmde.engine import Trainer, TrainConfig
    from sections.train import write_frames

    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="fastmde-profile-") as root:
        write_frames(root, args.batch)
        cfg = TrainConfig(model=args.model, size=size, loss="hu_blurred", batch_size=args.batch, seed=0,
                          data_format="frames", data=root, val_fraction=1 / (args.batch + 1), device="cpu",
                          amp=args.amp, channels_last=args.channels_last, workers=0, out=f"{root}/run", pretrained="none",
                          progress=False)
        trainer = Trainer(cfg, overwrite=True, log=lambda text: None)
        trainer.train_model.train()
        items = default_collate([trainer.train_set[i] for i in range(args.batch)])
        stages = add_stage_ranges(trainer.model)
        if trainer.augment is not None:
            augment = trainer.augment

            def traced_augment(*a, **k):
                with record_function("stage: augmentation"):
                    return augment(*a, **k)
            trainer.augment = traced_augment
        loss_fn = trainer.loss_fn

        def traced_loss(*a, **k):
            with record_function("stage: loss forward"):
                return loss_fn(*a, **k)
        trainer.loss_fn = traced_loss
        for _ in range(2):
            trainer.train_step(items)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                with record_function("stage: step"):
                    trainer.train_step(items)
    events = prof.key_averages()
    step_us = next(e.cpu_time_total for e in events if e.key == "stage: step") / args.steps
    by_kind = collections.Counter()
    for e in events:
        if e.key.startswith("stage: ") or e.key.startswith("Optimizer.") or e.key.startswith("autograd::"):
            continue
        by_kind[kind_of(e.key)] += e.self_cpu_time_total / args.steps
    by_stage = {e.key.removeprefix("stage: "): e.cpu_time_total / args.steps
                for e in events if e.key.startswith("stage: ") and e.key != "stage: step"}
    adam = [e.cpu_time_total / args.steps for e in events if e.key.startswith("Optimizer.step")]
    if adam:
        by_stage["optimizer (Adam)"] = max(adam)
    print(f"{args.model} @ {args.size}, batch {args.batch}, {trainer.speed_choice}, "
          f"backend {fastmde_backend()}: {step_us / 1e3:.1f} ms per step ({args.steps} profiled)")
    print("\nforward stages and the rest of the step (inclusive time; backward is what is left):")
    forward = sum(v for k, v in by_stage.items() if k.startswith("forward "))
    for name, us in by_stage.items():
        print(f"  {name:<34}{us / 1e3:9.1f} ms {100 * us / step_us:6.1f}%")
    rest = step_us - sum(by_stage.values())
    print(f"  {'backward + everything else':<34}{rest / 1e3:9.1f} ms {100 * rest / step_us:6.1f}%"
          f"   (forward stages {forward / 1e3:.1f} ms)")
    print("\nby kind of operator (self time, forward and backward):")
    for kind, us in by_kind.most_common():
        print(f"  {kind:<34}{us / 1e3:9.1f} ms {100 * us / step_us:6.1f}%")
    print("\ntop operators by self time:")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    del stages
    return 0


def fastmde_backend() -> str:
    import fastmde

    return fastmde.backends(("cpu",))["up_projection"]["cpu"]


if __name__ == "__main__":
    sys.exit(main())
