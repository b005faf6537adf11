r"""Ahead-of-time compile check of fastmde's Triton kernels for sm_90 and sm_80, no GPU needed.

The real host launchers (``fastmde.kernels.*``) are called with the arguments a CUDA call would
pass: their tensors are meta tensors that report ``device.type == "cuda"`` (a torch-function
mode, :class:`FakeCuda`), ``torch.cuda.get_device_properties`` answers for the target GPU, and
``JITFunction.run`` is replaced by a hook that binds the arguments with Triton's own binder
(so ints equal to 1, divisibility by 16 and pointer alignment specialise as on a device; a
tensor's address is a 512-byte aligned base plus its storage offset, as the CUDA caching
allocator gives) and records the specialisation instead of launching it. Each distinct
specialisation is then compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
cc, 32))`` in its own process, and reported:

* compile ok, compile seconds (wall time of ``triton.compile`` with an empty cache);
* registers, spill store/load bytes and stack frame from ``ptxas -v`` (the log of the ptxas
  run inside the compile, the ptxas shipped in the triton wheel);
* shared memory (the kernel's metadata) against the target's per-block limit;
* whether ``tl.dot`` appears in the TTIR with fp16/bf16 operands and, if so, the number of
  tensor-core instructions in the SASS (``cuobjdump -sass``): HGMMA (wgmma) on sm_90, HMMA on
  sm_80.

A check fails on: a compile error or timeout, any spill (every kernel here is a hot path), a
fp16/bf16 ``tl.dot`` without tensor-core instructions, shared memory above the limit.

Usage::

    python bench/compile_check.py --quick            # every kernel x dtype x target, small shapes
    python bench/compile_check.py --full --write     # the sweep; writes bench/results/compile-sm90|sm80.md/.json
    python bench/compile_check.py --training --write # only what a unet34-k3 bf16 channels_last step launches

Must run without ``TRITON_INTERPRET`` (it is removed from the environment of this process's
imports; the test runs it as a subprocess).
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import io
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") == "1":  # pragma: no cover - guarded at entry
    raise SystemExit("compile_check must run without TRITON_INTERPRET=1 (kernels have to be JITFunctions)")

# A fresh Triton cache: every specialisation is compiled (and timed, and its ptxas log read) here.
# It is removed when the process that made it exits (20-70 MB a run: CI runs the check every time,
# and the folders of earlier runs had piled up to 1.8 GB in /tmp). The compiles run in forked
# children, which share it and must not remove it.
_CACHE_DIR = tempfile.mkdtemp(prefix="fastmde-compile-check-")
os.environ["TRITON_CACHE_DIR"] = _CACHE_DIR
_OWNER = os.getpid()
atexit.register(lambda: os.getpid() == _OWNER and shutil.rmtree(_CACHE_DIR, ignore_errors=True))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (silences its warning)

import torch
import triton
from torch.overrides import TorchFunctionMode
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime import jit as triton_jit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# name -> (compute capability, SM count of the GPU the launchers size their grids for,
#          max shared memory per block in bytes, tensor-core instruction looked for in the SASS)
TARGETS = {
    "sm90": (90, 132, 232448, "HGMMA"),  # H100/H200 SXM: 227 KB per block
    "sm80": (80, 108, 166912, "HMMA"),  # A100: 163 KB per block
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_GOAL_S = 10.0
TRAINING_GOAL_S = 60.0




def _bare_packages():
    """Make ``fastmde``, ``fastmde.reference`` and ``fastmde.kernels`` importable without running
    their ``__init__`` (the kernels need only their own files and the reference constants), so
    the check depends on nothing but the kernel files, Triton and torch."""
    import types

    if "fastmde" in sys.modules:
        return
    for name, path in (("fastmde", ROOT / "fastmde"), ("fastmde.reference", ROOT / "fastmde" / "reference"),
                       ("fastmde.kernels", ROOT / "kernels")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module


_bare_packages()


# --------------------------------------------------------------------------------------------
# Launching on a GPU that is not there
# --------------------------------------------------------------------------------------------

def _is_cuda(dev) -> bool:
    return isinstance(dev, (str, torch.device)) and torch.device(dev).type == "cuda"


class FakeCuda(TorchFunctionMode):
    """Meta tensors that say they are on ``cuda:0``: factory calls and ``.to`` with a CUDA device
    make meta tensors, ``t.device`` / ``t.is_cuda`` of a meta tensor answer CUDA. Shapes, strides
    and storage offsets are exact; no memory is allocated and nothing is computed."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if getattr(func, "__name__", "") == "__get__":
            attr = getattr(getattr(func, "__self__", None), "__name__", None)
            if attr == "device" and isinstance(args[0], torch.Tensor) and args[0].is_meta:
                return torch.device("cuda", 0)
            if attr == "is_cuda" and isinstance(args[0], torch.Tensor) and args[0].is_meta:
                return True
            if attr == "is_cpu" and isinstance(args[0], torch.Tensor) and args[0].is_meta:
                return False
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "meta"
        args = tuple("meta" if _is_cuda(a) else a for a in args)
        return func(*args, **kwargs)


class _DeviceProperties:
    def __init__(self, name: str, sms: int, cc: int):
        self.name = name
        self.multi_processor_count = sms
        self.major, self.minor = divmod(cc, 10)
        self.total_memory = 80 * 2**30


class _Pointer:
    """What Triton's binder needs of a tensor argument: its dtype and an address (alignment)."""

    BASE = 0x7F0000000000  # 512-byte aligned, like every block of the CUDA caching allocator

    def __init__(self, t: torch.Tensor):
        self.dtype = t.dtype
        self._ptr = self.BASE + t.storage_offset() * t.element_size()

    def data_ptr(self):
        return self._ptr


@dataclass
class Spec:
    """One distinct specialisation of a kernel, with the calls that launch it."""

    kernel: str
    fn: object
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    target: str
    calls: list = field(default_factory=list)

    def key(self) -> str:
        return repr((self.kernel, self.target, sorted(self.signature.items()), sorted(self.constexprs.items(), key=str),
                     sorted(self.attrs.items(), key=str), sorted(self.options.items(), key=str)))

    def label(self) -> str:
        """Short description: the constexpr switches and sizes, warps and stages."""
        names = list(self.signature)
        parts = []
        for path, value in sorted(self.constexprs.items(), key=str):
            name = names[path[0]] if len(path) == 1 else str(path)
            if self.signature.get(name) != "constexpr":
                name = f"{name}=1"  # an int specialised to 1
                parts.append(name)
                continue
            v = getattr(value, "name", value)
            if v is True:
                parts.append(name)
            elif v is False or v is None:
                continue
            else:
                parts.append(f"{name}={v}")
        parts.append(f"w{self.options.get('num_warps')}s{self.options.get('num_stages')}")
        return " ".join(parts)

    def dtypes(self) -> str:
        return ",".join(sorted({v[1:] for v in self.signature.values() if isinstance(v, str) and v.startswith("*")
                                and v[1:] in ("fp32", "fp16", "bf16", "fp64")}))


class Recorder:
    """Collects the specialisations the launchers would compile for ``target``."""

    def __init__(self, target: str):
        self.target = target
        cc, sms, _, _ = TARGETS[target]
        self.gpu_target = GPUTarget("cuda", cc, 32)
        self.backend = make_backend(self.gpu_target)
        self.properties = _DeviceProperties(f"fake sm_{cc}", sms, cc)
        self.specs: dict[str, Spec] = {}
        self.call = "?"
        self._binders = {}

    def _run(self, fn, *args, grid, warmup, **kwargs):
        binder = self._binders.get(fn)
        if binder is None:
            binder = triton_jit.create_function_from_signature(fn.signature, fn.params, self.backend)
            self._binders[fn] = binder
        args = tuple(_Pointer(a) if isinstance(a, torch.Tensor) else a for a in args)
        kwargs = {k: (_Pointer(v) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        bound_args, specialization, _ = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(self.backend, kwargs, bound_args, specialization, None)
        spec = Spec(fn.fn.__name__, fn, signature, constexprs, attrs, dict(options.__dict__), self.target)
        spec = self.specs.setdefault(spec.key(), spec)
        if self.call not in spec.calls:
            spec.calls.append(self.call)
        return None

    @contextlib.contextmanager
    def active(self):
        recorder = self
        original_run = triton_jit.JITFunction.run
        original_props = torch.cuda.get_device_properties

        def run(fn, *args, grid=None, warmup=False, **kwargs):
            return recorder._run(fn, *args, grid=grid, warmup=warmup, **kwargs)

        triton_jit.JITFunction.run = run
        torch.cuda.get_device_properties = lambda *a, **k: recorder.properties
        try:
            with FakeCuda():
                yield self
        finally:
            triton_jit.JITFunction.run = original_run
            torch.cuda.get_device_properties = original_props

    def record(self, call: str, launch):
        """Run ``launch()`` (which calls launchers on ``cuda`` tensors) under ``call``'s name."""
        self.call = call
        with self.active():
            launch()


def cuda_tensor(shape, dtype, channels_last=False):
    """A fake CUDA tensor (call inside :meth:`Recorder.active`)."""
    t = torch.empty(shape, dtype=dtype, device="cuda")
    if channels_last and len(shape) == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


# --------------------------------------------------------------------------------------------
# The calls: which launcher, which arguments
# --------------------------------------------------------------------------------------------

LOSS_PRESETS = ("l1", "hu", "hu_blurred", "l1_hu", "l1_hu_blurred")


def loss_call(B, H, W, dtype, preset, mask):
    from fastmde.kernels import depth_loss
    from fastmde.reference.depth_loss import PRESETS

    p = PRESETS[preset]

    def launch():
        pred, target = cuda_tensor((B, H, W), dtype), cuda_tensor((B, H, W), dtype)
        m = cuda_tensor((B, H, W), torch.bool) if mask else None
        _, grad, counts = depth_loss.depth_loss_forward(
            pred, target, m, p["depth_term"], 0.5, p["gradient"], p["normal"], p["blur"], (1.0, 1.0, 1.0))
        grad_total = cuda_tensor((), torch.float64 if dtype == torch.float64 else torch.float32)
        depth_loss.depth_loss_backward(grad_total, grad, dtype)
    return launch


def metrics_call(B, H, W, dtype, mask, crop, protocol="fastmde", target_dtype=None):
    from fastmde.kernels import depth_metrics
    from fastmde.reference.depth_metrics import resolve_crop

    def launch():
        pred = cuda_tensor((B, H, W), dtype)
        target = cuda_tensor((B, H, W), target_dtype or dtype)
        m = cuda_tensor((B, H, W), torch.bool) if mask else None
        _call_by_name(depth_metrics.depth_metric_sums, dict(
            pred=pred, target=target, mask=m, crop=resolve_crop(crop, H, W), **metric_rules(protocol)))
    return launch


def metric_rules(protocol):
    """The op's rule arguments of a named protocol (each switch is a constexpr of the kernel, so a
    protocol with other rules compiles its own variant)."""
    from fastmde.engine.protocols import get_protocol
    from fastmde.functional import metric_rules as rules_of

    options = get_protocol(protocol).metric_options()
    rules = rules_of(options.pop("min_depth"), options.pop("max_depth"),
                     **{k: v for k, v in options.items() if k not in ("crop", "aggregate")})
    names = ("min_inclusive", "max_inclusive", "pred_min", "pred_max", "nan_prediction", "delta_inclusive",
             "rel_by_prediction", "log10_nonfinite_zero")
    return dict(min_depth=rules.min_depth, max_depth=rules.max_depth, **dict(zip(names, rules.op_args())))


# The metric rule variants the named protocols compile (fastmde = bts/kitti's switches; paper:
# inclusive minimum, logarithms zeroed; hu: inclusive delta; densedepth: REL over the prediction).
METRIC_PROTOCOLS = ("fastmde", "paper", "hu", "densedepth")


def _call_by_name(fn, values: dict):
    """Call a launcher with the values its parameters name (values it does not take are dropped;
    a parameter with no value and no default is an error naming it)."""
    import inspect

    params = inspect.signature(fn).parameters
    missing = [n for n, p in params.items() if n not in values and p.default is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"compile_check has no value for {fn.__name__}'s parameters {missing}: add them to its call")
    return fn(**{n: values[n] for n in params if n in values})


def upproj_call(B, cin, cout, h, w, H, W, k, dtype, channels_last, bn, affine=True, backward=True):
    """The block's op calls: ``bn`` -> upsample_conv2d_bn_forward/backward (with the previous
    BatchNorm folded in when ``affine``), else upsample_conv2d_forward/backward."""
    from fastmde.kernels import up_projection as up

    def launch():
        x = cuda_tensor((B, cin, h, w), dtype, channels_last)
        weight = cuda_tensor((cout, cin, k, k), dtype)
        grad = cuda_tensor((B, cout, H, W), dtype, channels_last)
        if bn:
            scale = cuda_tensor((cin,), torch.float32) if affine else None
            shift = cuda_tensor((cin,), torch.float32) if affine else None
            up.upsample_conv2d_bn_forward(x, scale, shift, weight, [H, W], True)
            if backward:
                up.upsample_conv2d_bn_backward(grad, x, scale, shift, weight, [H, W], True)
        else:
            up.upsample_conv2d_forward(x, weight, [H, W], True)
            if backward:
                up.upsample_conv2d_backward(grad, x, weight, [H, W], True)
    return launch


def si_loss_call(B, H, W, dtype, kind, mask, target_dtype=None):
    """The scale-invariant loss's passes for ``kind`` (silog, ssi), forward and backward."""
    from fastmde.kernels import scale_invariant_loss as si

    def launch():
        pred = cuda_tensor((B, H, W), dtype)
        target = cuda_tensor((B, H, W), target_dtype or dtype)
        m = cuda_tensor((B, H, W), torch.bool) if mask else None
        if kind == "ssi":
            si.ssi_moments(pred, target, m)
            si.ssi_residual_sums(pred, target, m, cuda_tensor((B, 2), torch.float64))
            si.ssi_backward(pred, target, m, cuda_tensor((B, 10), torch.float64))
        else:
            si.silog_sums(pred, target, m, 1e-6)
            si.silog_backward(pred, target, m, cuda_tensor((B, 2), torch.float64), 1e-6)
    return launch


def si_loss_calls(quick: bool):
    """Scale-invariant loss rows: quick (CI), each kind masked at one small shape in float32 and
    bfloat16; full, every dtype at the training shapes (NYU, KITTI crops), masked or not, and a
    bfloat16 prediction beside a float32 ground truth."""
    calls = []
    shapes = ((2, 64, 96),) if quick else ((16, 480, 640), (8, 352, 704))
    for dn, dt in DTYPES.items():
        if quick and dn == "fp16":
            continue
        for B, H, W in shapes:
            for kind in ("silog", "ssi"):
                for mask in (True,) if quick else (False, True):
                    calls.append((f"si-loss {kind}{' mask' if mask else ''} {B}x{H}x{W} {dn}",
                                  si_loss_call(B, H, W, dt, kind, mask)))
    if not quick:
        calls.append(("si-loss silog mask 8x352x704 bf16 pred fp32 target",
                      si_loss_call(8, 352, 704, torch.bfloat16, "silog", True, target_dtype=torch.float32)))
    return calls


def quick_calls():
    """Every kernel x dtype at one small shape (the CI subset)."""
    calls = []
    for dn, dt in DTYPES.items():
        calls.append((f"loss hu_blurred mask 2x64x96 {dn}", loss_call(2, 64, 96, dt, "hu_blurred", True)))
        calls.append((f"loss l1_hu 2x64x96 {dn}", loss_call(2, 64, 96, dt, "l1_hu", False)))
        calls.append((f"metrics mask eigen 2x64x96 {dn}", metrics_call(2, 64, 96, dt, True, "eigen")))
        calls.append((f"upproj-bn k3 cl 2x64->128 16x24->32x48 {dn}",
                      upproj_call(2, 64, 128, 16, 24, 32, 48, 3, dt, True, bn=True)))
        calls.append((f"upproj k3 nchw 2x64->64 16x24->32x48 {dn}",
                      upproj_call(2, 64, 64, 16, 24, 32, 48, 3, dt, False, bn=False)))
    calls += si_loss_calls(quick=True)
    for protocol in METRIC_PROTOCOLS[1:]:
        calls.append((f"metrics {protocol} mask 2x64x96 fp32", metrics_call(2, 64, 96, torch.float32, True, None,
                                                                           protocol)))
    # a bfloat16 prediction beside a float32 ground truth (autocast evaluation), each loaded as is
    calls.append(("metrics mask eigen 2x64x96 bf16 pred fp32 target",
                  metrics_call(2, 64, 96, torch.bfloat16, True, "eigen", target_dtype=torch.float32)))
    return calls


# U-Net34 decoder at the 288x384 internal size, batch 16 (DESIGN.md §3): (name, Cin, Cout, h, w)
UNET34_DECODER = (
    ("up1", 512, 128, 18, 24),
    ("up2", 256, 64, 36, 48),
    ("up3", 128, 64, 72, 96),
    ("up4", 64, 64, 144, 192),
)


def unet34_block_calls(B, name, cin, cout, h, w, k, dtype, dn, channels_last, fused):
    """One paper block's launcher calls as UpProjection runs them on a GPU (stacked convs)."""
    H, W = 2 * h, 2 * w
    layout = "cl" if channels_last else "nchw"
    tag = f"{name} k{k} {layout} {dn} B{B} {'bn' if fused else 'plain'}"
    if fused:  # fuse_batchnorm: 1x1 reduce, stacked upsampled k x k with BN1 folded, second conv
        return [
            (f"{tag} reduce", upproj_call(B, cin, cout, h, w, h, w, 1, dtype, channels_last, bn=True, affine=False)),
            (f"{tag} up+stacked", upproj_call(B, cout, 2 * cout, h, w, H, W, k, dtype, channels_last, bn=True)),
            (f"{tag} conv2", upproj_call(B, cout, cout, H, W, H, W, k, dtype, channels_last, bn=True)),
        ]
    return [(f"{tag} up+stacked", upproj_call(B, cout, 2 * cout, h, w, H, W, k, dtype, channels_last, bn=False))]


def full_calls():
    calls = []
    for dn, dt in DTYPES.items():
        for (B, H, W) in ((16, 480, 640), (8, 288, 384)):
            for preset in LOSS_PRESETS:
                for mask in (False, True):
                    calls.append((f"loss {preset}{' mask' if mask else ''} {B}x{H}x{W} {dn}",
                                  loss_call(B, H, W, dt, preset, mask)))
            for mask in (False, True):
                for crop in ("eigen", None):
                    calls.append((f"metrics{' mask' if mask else ''} {crop or 'nocrop'} {B}x{H}x{W} {dn}",
                                  metrics_call(B, H, W, dt, mask, crop)))
            for protocol in METRIC_PROTOCOLS[1:]:
                calls.append((f"metrics {protocol} mask {B}x{H}x{W} {dn}",
                              metrics_call(B, H, W, dt, True, None, protocol)))
        for k in (3, 5):
            for channels_last in (False, True):
                for fused in (True, False):
                    for name, cin, cout, h, w in UNET34_DECODER:
                        calls += unet34_block_calls(16, name, cin, cout, h, w, k, dt, dn, channels_last, fused)
    calls += si_loss_calls(quick=False)
    return calls


def training_calls():
    """What one unet34-k3 training step (bf16, channels_last, batch 16, 288x384 inside, loss at
    480x640) launches: the four fused decoder blocks forward and backward and the loss."""
    calls = []
    for name, cin, cout, h, w in UNET34_DECODER:
        calls += unet34_block_calls(16, name, cin, cout, h, w, 3, torch.bfloat16, "bf16", True, True)
    calls.append(("loss hu 16x480x640 bf16 (training)", loss_call(16, 480, 640, torch.bfloat16, "hu", False)))
    calls.append(("loss hu 16x480x640 fp32 (training)", loss_call(16, 480, 640, torch.float32, "hu", False)))
    return calls


def collect(calls, targets) -> list[Spec]:
    specs: list[Spec] = []
    for target in targets:
        rec = Recorder(target)
        for name, launch in calls:
            rec.record(name, launch)
        specs += list(rec.specs.values())
    return specs


# --------------------------------------------------------------------------------------------
# Compiling and inspecting
# --------------------------------------------------------------------------------------------

_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_PTXAS_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


def _inspect(compiled, ptxas_log: str, target: str) -> dict:
    cc, _, smem_limit, tc_name = TARGETS[target]
    out = {}
    props = _PTXAS_PROPS.search(ptxas_log)
    regs = _PTXAS_REGS.search(ptxas_log)
    if props is None or regs is None:
        raise RuntimeError(f"could not read ptxas -v output:\n{ptxas_log[-2000:]}")
    out["stack_bytes"], out["spill_store_bytes"], out["spill_load_bytes"] = (int(v) for v in props.groups())
    out["registers"] = int(regs.group(1))
    meta = compiled.metadata
    out["shared_bytes"] = int(getattr(meta, "shared", 0) if not isinstance(meta, dict) else meta.get("shared", 0))
    out["shared_limit"] = smem_limit
    ttir = compiled.asm.get("ttir", "")
    dots = [line for line in ttir.splitlines() if "tt.dot " in line or "tt.dot_scaled" in line]
    out["dot"] = bool(dots)
    out["dot_low_precision"] = any(re.search(r"x(bf16|f16)>", line) for line in dots)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        cubin = f.name
    try:
        sass = subprocess.run([str(_BIN / "cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(cubin)
    out["tensor_core_op"] = tc_name
    out["tensor_core_instructions"] = len(re.findall(rf"\b{tc_name}\.", sass))
    out["sass_lines"] = sass.count("\n")
    return out


def problems(r: dict) -> list[str]:
    """What fails the check in one result."""
    if not r.get("ok"):
        return [r.get("error", "compile failed").splitlines()[0][:200]]
    p = []
    if r["spill_store_bytes"] or r["spill_load_bytes"]:
        p.append(f"spills {r['spill_store_bytes']}/{r['spill_load_bytes']} B (store/load)")
    if r["dot_low_precision"] and r["tensor_core_instructions"] == 0:
        p.append(f"fp16/bf16 tl.dot without {r['tensor_core_op']}")
    if r["shared_bytes"] > r["shared_limit"]:
        p.append(f"shared memory {r['shared_bytes']} B > {r['shared_limit']} B")
    return p


def _compile_one(spec: Spec, conn):
    try:
        from triton import knobs

        knobs.nvidia.dump_ptxas_log = True
        cc = TARGETS[spec.target][0]
        src = ASTSource(spec.fn, spec.signature, spec.constexprs, spec.attrs)
        captured = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(captured):
            compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=spec.options)
        seconds = time.perf_counter() - t0
        result = {"ok": True, "compile_s": round(seconds, 2)}
        result.update(_inspect(compiled, captured.getvalue(), spec.target))
    except BaseException as exc:  # noqa: BLE001 - reported, not raised
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"}
    conn.send(result)
    conn.close()


def compile_all(specs: list[Spec], jobs: int, timeout: float, progress=None) -> list[dict]:
    """Compile every spec in its own forked process (``jobs`` at a time, killed after ``timeout`` s)."""
    ctx = multiprocessing.get_context("fork")
    results: list[dict | None] = [None] * len(specs)
    pending = list(range(len(specs)))
    running = {}  # index -> (process, conn, start)
    while pending or running:
        while pending and len(running) < jobs:
            i = pending.pop(0)
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_compile_one, args=(specs[i], child), daemon=True)
            proc.start()
            child.close()
            running[i] = (proc, parent, time.perf_counter())
        time.sleep(0.05)
        for i, (proc, conn, start) in list(running.items()):
            elapsed = time.perf_counter() - start
            if conn.poll():
                try:
                    results[i] = conn.recv()
                except EOFError:
                    results[i] = {"ok": False, "error": f"compiler process died (exit {proc.exitcode})"}
            elif not proc.is_alive():
                results[i] = {"ok": False, "error": f"compiler process died (exit {proc.exitcode})"}
            elif elapsed > timeout:
                proc.kill()
                results[i] = {"ok": False, "error": f"timeout: not compiled within {timeout:.0f} s"}
            else:
                continue
            proc.join(1)
            conn.close()
            del running[i]
            if progress:
                progress(specs[i], results[i])
    return results


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------

def rows(specs, results):
    out = []
    for spec, r in zip(specs, results):
        row = {"target": spec.target, "kernel": spec.kernel, "specialisation": spec.label(), "dtypes": spec.dtypes(),
               "calls": spec.calls}
        row.update(r)
        row["problems"] = problems(r)
        if r.get("ok") and r["compile_s"] > COMPILE_GOAL_S:
            row["over_compile_goal"] = True
        out.append(row)
    return out


def _fmt_row(row):
    if not row.get("ok"):
        return (f"| {row['kernel']} | {row['specialisation']} | {row['dtypes']} | FAIL | | | | | | | "
                f"{row['problems'][0] if row['problems'] else ''} | {len(row['calls'])} |")
    tc = (f"{row['tensor_core_instructions']}" if row["dot_low_precision"] else
          ("fp32 FMA" if row["dot"] else "no dot"))
    verdict = "; ".join(row["problems"]) or "ok"
    if row.get("over_compile_goal"):
        verdict += f" (compile > {COMPILE_GOAL_S:.0f} s)"
    return (f"| {row['kernel']} | {row['specialisation']} | {row['dtypes']} | ok | {row['compile_s']:.1f} | "
            f"{row['registers']} | {row['spill_store_bytes']}/{row['spill_load_bytes']} | {row['stack_bytes']} | "
            f"{row['shared_bytes']} | {tc} | {verdict} | {len(row['calls'])} |")


def summary(rs, training=None):
    lines = []
    n = len(rs)
    fails = [r for r in rs if r["problems"]]
    ok = [r for r in rs if r.get("ok")]
    lines.append(f"- specialisations: {n}; compiled: {len(ok)}; failing the check: {len(fails)}")
    if ok:
        worst = max(ok, key=lambda r: r["compile_s"])
        lines.append(f"- compile time: total {sum(r['compile_s'] for r in ok):.0f} s, max {worst['compile_s']:.1f} s "
                     f"({worst['kernel']} {worst['specialisation']} {worst['dtypes']}); over {COMPILE_GOAL_S:.0f} s: "
                     f"{sum(1 for r in ok if r['compile_s'] > COMPILE_GOAL_S)}")
        lines.append(f"- spills: {sum(1 for r in ok if r['spill_store_bytes'] or r['spill_load_bytes'])}; "
                     f"max registers {max(r['registers'] for r in ok)}; "
                     f"low-precision dots without tensor-core instructions: "
                     f"{sum(1 for r in ok if r['dot_low_precision'] and not r['tensor_core_instructions'])}")
    if training is not None:
        t_ok = [r for r in training if r.get("ok")]
        total = sum(r["compile_s"] for r in t_ok)
        lines.append(f"- unet34-k3 bf16 channels_last training step: {len(training)} specialisations, "
                     f"{total:.0f} s of compilation in total (goal < {TRAINING_GOAL_S:.0f} s), "
                     f"{len(training) - len(t_ok)} not compiled")
    return lines


def write_report(target, rs, training, mode, elapsed):
    RESULTS.mkdir(parents=True, exist_ok=True)
    cc = TARGETS[target][0]
    head = {
        "target": f"cuda sm_{cc}", "mode": mode, "triton": triton.__version__, "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "wall_s": round(elapsed, 1) if elapsed is not None else None,
    }
    if elapsed is None:  # an update: the sweep's own header stays, with the date of the update
        previous = json.loads((RESULTS / f"compile-{target}.json").read_text())
        head["wall_s"], head["updated"] = previous.get("wall_s"), head["date"]
        head["date"], mode = previous.get("date", head["date"]), previous.get("mode", mode)
    (RESULTS / f"compile-{target}.json").write_text(json.dumps({**head, "rows": rs}, indent=1, default=str) + "\n")
    md = [f"# Compile check, {head['target']} ({mode})", "",
          f"triton {head['triton']}, torch {head['torch']}, {head['date']}, compiled on {head['host']} "
          f"(compile seconds are wall times on a shared machine, two compiles at once; `python bench/compile_check.py "
          f"--{mode} --write`)" + (f"; rows re-measured {head['updated']} (`--only ... --update`)" if head.get("updated")
                                   else "") + ".", ""]
    md += summary(rs, training)
    md += ["", "Columns: registers, spill store/load bytes and stack frame from `ptxas -v`; shared memory from the "
           "kernel metadata (limit " f"{TARGETS[target][2]} B); TC = {TARGETS[target][3]} instructions in the SASS "
           "where a fp16/bf16 `tl.dot` is used; calls = how many of the swept calls launch this specialisation.", "",
           "| kernel | specialisation | dtypes | compiled | s | regs | spill B st/ld | stack B | smem B | TC | verdict | calls |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    md += [_fmt_row(r) for r in sorted(rs, key=lambda r: (r["kernel"], r["dtypes"], r["specialisation"]))]
    (RESULTS / f"compile-{target}.md").write_text("\n".join(md) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="every kernel x dtype at one small shape (default)")
    mode.add_argument("--full", action="store_true", help="the realistic-shape sweep")
    mode.add_argument("--training", action="store_true", help="only a unet34-k3 bf16 channels_last training step")
    ap.add_argument("--targets", default="sm90,sm80", help="comma-separated: sm90, sm80")
    ap.add_argument("--only", default="", help="keep calls whose name contains this")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per compile before it counts as failed")
    ap.add_argument("--write", action="store_true", help="write bench/results/compile-<target>.md/.json")
    ap.add_argument("--update", action="store_true",
                    help="re-measure the calls selected by --only and replace their rows in the written report")
    ap.add_argument("--json", default="", help="also write all rows to this file")
    ap.add_argument("--list", action="store_true", help="list the specialisations, compile nothing")
    args = ap.parse_args(argv)
    name = "full" if args.full else "training" if args.training else "quick"
    calls = full_calls() if args.full else training_calls() if args.training else quick_calls()
    if args.only:
        calls = [c for c in calls if args.only in c[0]]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}; choose from {', '.join(TARGETS)}")
    t0 = time.perf_counter()
    specs = collect(calls, targets)
    training_keys = set()
    if args.full:  # mark what a training step launches (same launcher calls, recorded again)
        training_keys = {s.key() for s in collect(training_calls(), targets)}
    print(f"{len(calls)} calls -> {len(specs)} specialisations over {', '.join(targets)}", flush=True)
    if args.list:
        for s in specs:
            print(f"{s.target} {s.kernel} [{s.dtypes()}] {s.label()}  <- {s.calls[0]} (+{len(s.calls) - 1})")
        return 0

    def progress(spec, r):
        status = "; ".join(problems(r)) or "ok"
        extra = (f"{r['compile_s']:6.1f}s regs {r['registers']:3d} spill {r['spill_store_bytes']}/{r['spill_load_bytes']} "
                 f"stack {r['stack_bytes']} smem {r['shared_bytes']} tc {r['tensor_core_instructions']}"
                 if r.get("ok") else "")
        print(f"{spec.target} {spec.kernel:26s} [{spec.dtypes():9s}] {spec.label()[:90]:90s} {extra} -> {status}",
              flush=True)

    results = compile_all(specs, args.jobs, args.timeout, progress)
    rs = rows(specs, results)
    for spec, r in zip(specs, rs):
        r["training"] = spec.key() in training_keys or name == "training"
    elapsed = time.perf_counter() - t0
    failed = 0
    for t in targets:
        mine = [r for r in rs if r["target"] == t]
        if args.update:
            mine = _merged(t, mine, {c for c, _ in calls})
        training = [r for r in mine if r.get("training")]
        print(f"\n{t}:")
        for line in summary(mine, training if training else None):
            print(line)
        failed += sum(1 for r in mine if r["problems"])
        if args.write or args.update:
            write_report(t, mine, training, name, elapsed if not args.update else None)
    if args.json:
        Path(args.json).write_text(json.dumps(rs, indent=1, default=str) + "\n")
    print(f"\n{len(rs)} specialisations compiled, {failed} failing the check, {elapsed:.0f} s")
    return 1 if failed else 0


def _merged(target, new_rows, rerun_calls):
    """The written report's rows for ``target`` with every row that one of ``rerun_calls``
    launched replaced by this run's rows (--update after re-running a subset with --only)."""
    path = RESULTS / f"compile-{target}.json"
    if not path.exists():
        raise SystemExit(f"--update: no {path} to update; run the sweep with --write first")
    report = json.loads(path.read_text())
    old = report["rows"]
    ident = lambda r: (r["kernel"], r["specialisation"], r["dtypes"])  # noqa: E731
    training = {ident(r) for r in report.get("training_rows", [])}  # reports written before the per-row flag
    for r in old:
        r.setdefault("training", ident(r) in training)
    kept = [r for r in old if not set(r["calls"]) & rerun_calls]
    return kept + new_rows


if __name__ == "__main__":
    sys.exit(main())
