"""``export`` section: the exported ONNX model on onnxruntime (CPU) against the PyTorch model.

Inference of one 480x640 RGB frame (288x384 inside), batch 1, float32, NCHW, on the CPU:

- ``pytorch eval``: the model as ``fastmde.load`` gives it (eval mode, ``torch.no_grad``; its
  up-projection blocks run fastmde's ops, the C++ kernels on a CPU);
- ``onnxruntime CPU``: the ONNX file ``fastmde.export`` writes from it (opset 18, dynamic sizes,
  verified against the model), run by onnxruntime's CPU execution provider with as many intra-op
  threads as torch uses (``torch.get_num_threads()``), graph optimisations on (the default).

Both take the same 0-255 input and return depth in metres at 480x640 (the area downscale and the
bicubic upscale included). ``fwd ms`` is the median time of one frame, ``throughput`` frames per
second, ``x eager`` the speed-up over the PyTorch row; the two are timed round-robin. Models:
``unet34-k3-1x1`` and ``unet18-k3-1x1`` (the same U-Net with a ResNet18 encoder,
``build("unet34-k3-1x1", encoder=18)``), random weights (the time does not depend on them).
Only the CPU is measured (onnxruntime's CPU provider); on a CUDA device the section adds no row.

For a smoke test: ``FASTMDE_BENCH_EXPORT=<models>;<input HxW>;<internal HxW>``, e.g.
``unet18-k3-1x1;48x64;32x48``.
"""
from __future__ import annotations

import os
import tempfile

import torch

from common import interleaved_median_ms

INPUT = (480, 640)
INTERNAL = (288, 384)
MODELS = ("unet34-k3-1x1", "unet18-k3-1x1")
NOTE = ("export: PyTorch in eval mode (fastmde's C++ up-projection) against the ONNX model fastmde.export "
        "writes, on onnxruntime's CPU provider with torch's thread count; batch 1, one 480x640 frame, 288x384 "
        "inside, float32 NCHW; frames per second.")


def _settings():
    spec = os.environ.get("FASTMDE_BENCH_EXPORT")
    if not spec:
        return MODELS, INPUT, INTERNAL
    from fastmde._text import parse_size

    models, frame, inside = spec.split(";")
    return tuple(m for m in models.split(",") if m), parse_size(frame), parse_size(inside)


def build(name: str, internal):
    """``unet18-k3-1x1`` is ``unet34-k3-1x1`` with a ResNet18 encoder; other names as ``fastmde.models``."""
    import fastmde.models as M

    if name.startswith("unet18-"):
        return M.build("unet34-" + name[len("unet18-"):], size=internal, encoder=18).eval()
    return M.build(name, size=internal).eval()


def run(ctx, device: str) -> None:
    if not device.startswith("cpu"):
        print("export: onnxruntime's CPU provider against PyTorch on the CPU; nothing to measure on " + device)
        return
    from fastmde.export import MissingDependencyError, export, require

    models, frame, internal = _settings()
    try:
        (onnxruntime,) = require("onnxruntime")
    except MissingDependencyError as exc:
        ctx.add(section="export", what="ONNX export", impl="onnxruntime CPU", note=f"skipped: {exc}")
        return
    shape = f"1x3x{frame[0]}x{frame[1]}"
    threads = torch.get_num_threads()
    for name in models:
        what = f"{name} inference @ {internal[0]}x{internal[1]} inside"
        torch.manual_seed(0)
        model = build(name, internal)
        image = torch.rand(1, 3, *frame, generator=torch.Generator().manual_seed(0)) * 255
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            report = export(model, path, size=frame, quiet=True)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {"image": image.numpy()}

        def pytorch():
            with torch.no_grad():
                model(image)

        steps = {"pytorch eval": pytorch, "onnxruntime CPU": lambda: session.run(["depth"], feed)}
        times = interleaved_median_ms(steps, device, warmup=2, rounds=20 if ctx.full else 7,
                                      max_seconds=60.0 if ctx.full else 20.0)
        for impl, ms in times.items():
            note = f"torch {threads} threads" if impl == "pytorch eval" else (
                f"onnxruntime {onnxruntime.__version__}, {threads} intra-op threads, opset {report.opset}, "
                f"export max |difference| {report.max_abs:.2g} m")
            ctx.add(section="export", what=what, shape=shape, dtype="float32", layout="NCHW", impl=impl,
                    fwd_ms=ms, vs_eager=times["pytorch eval"] / ms, throughput=f"{1e3 / ms:.2f} frames/s", note=note)
        del model, session
