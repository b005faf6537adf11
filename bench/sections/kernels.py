"""``kernels`` section: each hot path, fastmde against the eager reference and torch.compile of it.

Rows per shape: ``eager`` (the plain PyTorch reference, autograd backward), ``compile``
(torch.compile of that reference), ``fastmde`` (the op, served by whatever backend
``fastmde.backends()`` names). Speedups are measured in the same run.
"""
from __future__ import annotations

import torch

import fastmde
from fastmde.reference.depth_loss import PRESETS, depth_loss_terms_reference
from fastmde.reference.depth_metrics import combine, depth_metric_sums_reference, resolve_crop
from fastmde.reference.up_projection import up_projection_block_reference

from common import interleaved_median_ms, peak_memory_bytes, saved_activation_bytes

LOSS_PRESET = "hu_blurred"


def _loss_inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(shape, generator=g) * 9.5 + 0.5).to(device=device, dtype=dtype)
    pred = (target + 0.3 * torch.randn(shape, generator=g).to(device=device, dtype=dtype)).clamp_min(0.1)
    return pred, target


def _fwd_bwd_rows(ctx, section, what, shape, dtype, device, impls, bytes_moved=None, flops=None, note=None,
                  measure_saved=False):
    """Time forward, and forward+backward, of each implementation; add one row each.

    Throughput is over the forward+backward time (the forward alone when nothing needs a
    gradient); ``measure_saved`` adds the bytes autograd keeps for backward (activation memory)."""
    fwds, fwd_bwds, failed = {}, {}, {}
    for name, (forward, inputs) in impls.items():
        def fwd(forward=forward):
            with torch.no_grad():
                forward()

        def fwd_bwd(forward=forward, inputs=inputs):
            for t in inputs:
                t.grad = None
            forward().backward()

        try:   # first calls compile (torch.compile) and surface failures
            fwd()
            if inputs:
                fwd_bwd()
        except Exception as exc:  # e.g. torch.compile unavailable for this device/dtype
            failed[name] = exc
            continue
        fwds[name] = fwd
        if inputs:
            fwd_bwds[name] = fwd_bwd
    # the implementations alternate call by call, so machine drift hits them alike
    fwd_times = interleaved_median_ms(fwds, device)
    total_times = interleaved_median_ms(fwd_bwds, device) if fwd_bwds else {}
    times = {}
    for name, (forward, inputs) in impls.items():
        if name in failed:
            exc = failed[name]
            ctx.add(section=section, what=what, shape=shape, dtype=str(dtype).replace("torch.", ""),
                    impl=name, note=f"failed: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        fwd_ms, total_ms = fwd_times[name], total_times.get(name)
        peak = peak_memory_bytes(fwd_bwds[name] if inputs else fwds[name], device)
        saved = saved_activation_bytes(forward) if inputs and measure_saved else None
        times[name] = total_ms if total_ms is not None else fwd_ms
        throughput = None
        if bytes_moved is not None:
            throughput = f"{bytes_moved / (times[name] * 1e-3) / 1e9:.1f} GB/s"
        elif flops is not None:
            throughput = f"{flops / (times[name] * 1e-3) / 1e12:.3f} TFLOP/s"
        ctx.add(
            section=section, what=what, shape=shape, dtype=str(dtype).replace("torch.", ""),
            layout=note or "NCHW", impl=name, fwd_ms=fwd_ms,
            bwd_ms=None if total_ms is None else total_ms - fwd_ms, total_ms=total_ms,
            vs_eager=times["eager"] / times[name] if "eager" in times else None,
            vs_compile=times["compile"] / times[name] if "compile" in times else None,
            throughput=throughput, peak_mb=None if peak is None else peak / 2**20,
            saved_mb=None if saved is None else saved / 2**20,
        )


def bench_loss(ctx, device, shape, dtype):
    pred, target = _loss_inputs(shape, dtype, device)
    options = PRESETS[LOSS_PRESET]
    p_eager = pred.clone().requires_grad_()
    p_compile = pred.clone().requires_grad_()
    p_fast = pred.clone().requires_grad_()

    def reference(p, t):
        return depth_loss_terms_reference(p[:, 0], t[:, 0], **options)["total"]

    compiled = torch.compile(reference)
    impls = {
        "eager": (lambda: reference(p_eager, target), [p_eager]),
        "compile": (lambda: compiled(p_compile, target), [p_compile]),
        "fastmde": (lambda: fastmde.depth_loss(p_fast, target, preset=LOSS_PRESET), [p_fast]),
    }
    # one read of pred and target, one write of the gradient
    bytes_moved = 3 * pred.numel() * pred.element_size()
    _fwd_bwd_rows(ctx, "kernels", f"depth_loss {LOSS_PRESET}", "x".join(map(str, shape)), dtype,
                  device, impls, bytes_moved=bytes_moved)


def bench_metrics(ctx, device, shape, dtype, protocol=None):
    """The metrics row: ``fastmde.depth_metrics`` against the plain reference (eager) and
    torch.compile of it. Without ``protocol`` the project's default rules with the Eigen crop
    (``depth_metrics eigen``); with a protocol name, that protocol's rules (its kernel variant)."""
    pred, target = _loss_inputs(shape, dtype, device, seed=1)
    if protocol is None:
        opts = dict(crop="eigen", max_depth=10.0)
    else:
        from fastmde.engine.protocols import get_protocol

        opts = get_protocol(protocol).metric_options()
    rules = fastmde.functional.metric_rules(opts.get("min_depth", 1e-3), opts.get("max_depth"), **{
        k: v for k, v in opts.items() if k not in ("min_depth", "max_depth", "crop", "aggregate")})
    bounds = resolve_crop(opts["crop"], shape[-2], shape[-1])
    aggregate = opts.get("aggregate", "per_image")

    def reference(p, t):
        sums = depth_metric_sums_reference(p[:, 0], t[:, 0], None, rules.min_depth, rules.max_depth, bounds,
                                           *rules.op_args())
        return combine(sums, aggregate)["rms"]

    compiled = torch.compile(reference)
    impls = {
        "eager": (lambda: reference(pred, target), []),
        "compile": (lambda: compiled(pred, target), []),
        "fastmde": (lambda: fastmde.depth_metrics(pred, target, **opts)["rms"], []),
    }
    # one read of pred and target inside the crop (pixels outside it need not be read)
    top, bottom, left, right = bounds
    bytes_moved = 2 * shape[0] * (bottom - top) * (right - left) * pred.element_size()
    _fwd_bwd_rows(ctx, "kernels", f"depth_metrics {protocol or 'eigen'}", "x".join(map(str, shape)), dtype, device,
                  impls, bytes_moved=bytes_moved)


# Protocols whose rules run other kernel variants than the default row's (paper: no clamp,
# logarithms zeroed; densedepth: REL over the prediction, pooled; kitti_garg: KITTI's range and
# the fractional Garg crop): the quick pass times paper's, --full every one.
METRIC_PROTOCOL_ROWS = ("paper", "densedepth", "kitti_garg")


# U-Net34 decoder blocks at internal size 288x384: (in_channels, out_channels, h, w) of the input.
UNET34_DECODER = [(512, 128, 18, 24), (256, 64, 36, 48), (128, 64, 72, 96), (64, 64, 144, 192)]


def bench_up_projection(ctx, device, batch, dtype, channels_last, blocks):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for cin, cout, h, w in blocks:
        block = fastmde.nn.UpProjection(cin, cout, kernel_size=3).to(device=device, dtype=dtype)
        block = block.to(memory_format=fmt)
        g = torch.Generator().manual_seed(2)
        x0 = torch.randn(batch, cin, h, w, generator=g).to(device=device, dtype=dtype)
        x0 = x0.contiguous(memory_format=fmt)
        xs = {k: x0.clone().requires_grad_() for k in ("eager", "compile", "fastmde")}

        def reference(x):
            return up_projection_block_reference(block, x).sum()

        compiled = torch.compile(reference)
        impls = {
            "eager": (lambda: reference(xs["eager"]), [xs["eager"]]),
            "compile": (lambda: compiled(xs["compile"]), [xs["compile"]]),
            "fastmde": (lambda: block(xs["fastmde"]).sum(), [xs["fastmde"]]),
        }
        k = 3
        H, W = 2 * h, 2 * w
        # multiply-adds of the forward: 1x1 reduce, the three k x k convs; x2 flops, x3 fwd+bwd
        macs = batch * (h * w * cin * cout + H * W * k * k * cout * cout * 3)
        _fwd_bwd_rows(
            ctx, "kernels", f"up_projection {cin}->{cout} k3", f"{batch}x{cin}x{h}x{w}", dtype, device,
            impls, flops=2 * 3 * macs, note="channels_last" if channels_last else "NCHW", measure_saved=True,
        )


def settings(device: str) -> list[tuple[torch.dtype, bool]]:
    """Every (dtype, channels_last) a user can train in on ``device``: float32 and bfloat16 in
    NCHW and channels_last; CUDA adds float16 (on a CPU, float16 autocast is not a setting
    anyone trains in)."""
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.startswith("cuda") else [])
    return [(dtype, cl) for dtype in dtypes for cl in (False, True)]


# ---------------------------------------------------------------- scale-invariant losses

SI_QUICK_PRESETS = ("silog", "ssi")  # silog_adabins and silog_dav2 run silog's kernels (--full)


def bench_scale_invariant_loss(ctx, device, shape, dtype, preset):
    """A scale-invariant preset: ``eager`` / ``compile`` are the plain PyTorch formula of the
    reference (masks as multiplications, as a user writes it to compile) and torch.compile of it;
    ``fastmde`` is ``fastmde.scale_invariant_loss``. Ground truth with ~10% holes (mask = y > 0)."""
    from fastmde.reference.scale_invariant_loss import PRESETS as SI_PRESETS, scale_invariant_loss_reference

    pred, target = _loss_inputs(shape, dtype, device, seed=2)
    holes = torch.rand(shape, generator=torch.Generator().manual_seed(3)).to(device) < 0.1
    target = torch.where(holes, torch.zeros_like(target), target)
    mask = target > 0
    options = {k: v for k, v in SI_PRESETS[preset].items() if k not in ("interpolate", "reduction")}
    ps = {k: pred.clone().requires_grad_() for k in ("eager", "compile", "fastmde")}

    def reference(p, t, m):
        return scale_invariant_loss_reference(p[:, 0], t[:, 0], m[:, 0], **options)

    compiled = torch.compile(reference)
    impls = {
        "eager": (lambda: reference(ps["eager"], target, mask), [ps["eager"]]),
        "compile": (lambda: compiled(ps["compile"], target, mask), [ps["compile"]]),
        "fastmde": (lambda: fastmde.scale_invariant_loss(ps["fastmde"], target, preset=preset, mask=mask),
                    [ps["fastmde"]]),
    }
    # SILog: forward reads pred, target, mask; backward reads them again and writes the gradient.
    # ssi: forward reads them twice (moments, residual sums).
    reads = 3 if preset == "ssi" else 2
    bytes_moved = pred.numel() * (reads * (2 * pred.element_size() + 1) + pred.element_size())
    _fwd_bwd_rows(ctx, "kernels", f"scale_invariant_loss {preset}", "x".join(map(str, shape)), dtype, device,
                  impls, bytes_moved=bytes_moved)


def run_scale_invariant_losses(ctx, device: str, shapes=None) -> None:
    """The scale-invariant loss rows: every preset with --full (or on CUDA), else silog and ssi;
    NYU-sized batches and, with --full or on CUDA, the KITTI training crop (352x704)."""
    cuda = device.startswith("cuda")
    if shapes is None:
        shapes = [(8, 1, 288, 384)] + ([(8, 1, 352, 704)] if ctx.full or cuda else [])
    presets = ("silog", "silog_adabins", "silog_dav2", "ssi") if (ctx.full or cuda) else SI_QUICK_PRESETS
    for dtype in dict.fromkeys(dtype for dtype, _ in settings(device)):
        for shape in shapes:
            for preset in presets:
                bench_scale_invariant_loss(ctx, device, shape, dtype, preset)


def run(ctx, device: str) -> None:
    cuda = device.startswith("cuda")
    loss_shapes = [(8, 1, 288, 384)] + ([(8, 1, 480, 640)] if ctx.full or cuda else [])
    if cuda:
        loss_shapes.append((16, 1, 480, 640))
    # a (B, 1, H, W) map is the same memory in NCHW and channels_last: one row per dtype
    for dtype in dict.fromkeys(dtype for dtype, _ in settings(device)):
        for shape in loss_shapes:
            bench_loss(ctx, device, shape, dtype)
            bench_metrics(ctx, device, shape, dtype)
            for protocol in METRIC_PROTOCOL_ROWS if ctx.full or cuda else METRIC_PROTOCOL_ROWS[:1]:
                bench_metrics(ctx, device, shape, dtype, protocol)
    # the U-Net34 decoder blocks, each dtype and layout; CUDA at batch 16, the CPU at batch 8 (a
    # training batch; --full adds batch 1, where the weights, not the activations, dominate)
    batches = [16] if cuda else ([8, 1] if ctx.full else [8])
    blocks = UNET34_DECODER if (cuda or ctx.full) else UNET34_DECODER[:2]
    for batch in batches:
        for dtype, channels_last in settings(device):
            bench_up_projection(ctx, device, batch, dtype, channels_last, blocks)
    run_scale_invariant_losses(ctx, device)
