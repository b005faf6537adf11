"""Which implementation serves each hot path on each device.

Every hot path (``depth_loss``, ``depth_metrics``, ``up_projection``, ``scale_invariant_loss``) has up to three
implementations with the same file name:

* ``reference`` -- plain PyTorch in ``fastmde/reference/<name>.py`` (always available);
* ``native``    -- the C++ CPU kernels of the ``fastmde._C`` extension (``csrc/<name>.cpp``);
* ``triton``    -- the Triton kernels in ``fastmde.kernels.<name>`` (``kernels/<name>.py``),
  on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` is set.

An implementation is *available* for a hot path when its module exposes the functions the op
needs (``NATIVE_ENTRY_POINTS`` / ``TRITON_ENTRY_POINTS``), so a kernel plugs in by defining them.

``FASTMDE_BACKEND=reference|native|triton`` forces one implementation everywhere; a forced
implementation that is unavailable raises ``BackendUnavailableError`` naming the reason.

**Per setting.** A fused kernel that is slower than plain PyTorch in some dtype and layout on
some device must not serve that setting. :data:`SLOWER_SETTINGS` lists, per hot path, the
settings (device, dtype, layout, the CPU features that make plain PyTorch faster) where the
benchmarks measured the reference faster; ``choose(hot_path, device_type, dtype, layout)`` then
picks the reference there (never when a backend is forced). ``backends(per_setting=True)`` and
``fastmde info`` show the choice for every dtype and layout.
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

HOT_PATHS = ("depth_loss", "depth_metrics", "up_projection", "scale_invariant_loss")
BACKENDS = ("reference", "native", "triton")

# Functions each implementation module must define for a hot path to count as available.
# The Triton up-projection also folds BatchNorm into its convs (``fastmde::upsample_conv2d_bn``);
# elsewhere that op runs the reference stage over the device's ``upsample_conv2d``.
NATIVE_ENTRY_POINTS = {
    "depth_loss": ("depth_loss_forward", "depth_loss_backward"),
    "depth_metrics": ("depth_metric_sums",),
    "up_projection": ("upsample_conv2d_forward", "upsample_conv2d_backward"),
    "scale_invariant_loss": ("silog_sums", "silog_backward", "ssi_moments", "ssi_residual_sums", "ssi_backward"),
}
TRITON_ENTRY_POINTS = {
    **NATIVE_ENTRY_POINTS,
    "up_projection": NATIVE_ENTRY_POINTS["up_projection"]
    + ("upsample_conv2d_bn_forward", "upsample_conv2d_bn_backward"),
}


# Settings where plain PyTorch (the reference) was measured faster than the fused kernel:
# hot path -> [(device type, dtype name, layout or None for both, required CPU feature or None,
# why)]. Measured with `python bench/run.py --only kernels` (bench/results/, docs/kernels.md).
SLOWER_SETTINGS: dict[str, list[tuple[str, str, str | None, str | None, str]]] = {
    "depth_loss": [],
    "depth_metrics": [],
    "up_projection": [],
}
DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")
LAYOUTS = ("nchw", "channels_last")


_cpu_features: dict[str, bool] | None = None


def cpu_features() -> dict[str, bool]:
    """The CPU's matrix units as PyTorch's cpuinfo reads them: ``amx_bf16``, ``avx512_bf16``,
    ``bf16_units`` (either), ``avx512``."""
    global _cpu_features
    if _cpu_features is None:
        import torch

        caps: dict = {}
        try:
            caps = dict(torch._C._cpu._get_cpu_capability())
        except Exception:  # an older torch: only the helpers of torch.cpu
            caps = {
                "amx_bf16": torch.cpu._is_amx_tile_supported(),
                "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
                "avx512_f": torch.cpu._is_avx512_supported(),
            }
        amx, avx512_bf16 = bool(caps.get("amx_bf16")), bool(caps.get("avx512_bf16"))
        _cpu_features = {
            "amx_bf16": amx,
            "avx512_bf16": avx512_bf16,
            "bf16_units": amx or avx512_bf16,
            "avx512": bool(caps.get("avx512_f")),
        }
    return _cpu_features


def _slower_here(hot_path: str, device_type: str, dtype: str, layout: str) -> str | None:
    """Why plain PyTorch serves this setting (a row of SLOWER_SETTINGS applies), else None."""
    for dev, dt, lay, feature, why in SLOWER_SETTINGS.get(hot_path, ()):
        if dev != device_type or dt != dtype or (lay is not None and lay != layout):
            continue
        if feature is not None and not (device_type == "cpu" and cpu_features().get(feature)):
            continue
        return why
    return None


class BackendUnavailableError(RuntimeError):
    """A forced backend (``FASTMDE_BACKEND`` or ``set_backend``) cannot serve a call."""


_native_module: ModuleType | None = None
_native_error: str | None = None
_native_loaded = False
_triton_modules: dict[str, ModuleType | None] = {}
_triton_errors: dict[str, str] = {}
_forced: str | None = None


def _read_env() -> str | None:
    value = os.environ.get("FASTMDE_BACKEND", "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in BACKENDS:
        raise ValueError(
            f"FASTMDE_BACKEND={value!r} is not one of {', '.join(BACKENDS)} (or 'auto')"
        )
    return value


def forced_backend() -> str | None:
    return _forced


def set_backend(name: str | None) -> None:
    """Force ``name`` (``reference``, ``native``, ``triton``) everywhere; ``None`` restores the default choice."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {', '.join(BACKENDS)}")
    _forced = name


def native_module() -> ModuleType | None:
    """The ``fastmde._C`` extension, or ``None`` (with a one-time warning naming the cause)."""
    global _native_module, _native_error, _native_loaded
    if not _native_loaded:
        _native_loaded = True
        try:
            import torch  # noqa: F401  (the extension links against libtorch)

            _native_module = importlib.import_module("fastmde._C")
        except Exception as exc:  # ImportError, undefined symbols after an ABI change, ...
            _native_error = f"{type(exc).__name__}: {exc}"
            if os.environ.get("FASTMDE_QUIET") != "1":
                warnings.warn(
                    "fastmde: the C++ extension fastmde._C could not be loaded "
                    f"({_native_error}); CPU ops fall back to the PyTorch reference. "
                    "Rebuild with `pip install --no-build-isolation -e .`.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _native_module


def native_error() -> str | None:
    native_module()
    return _native_error


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_module(hot_path: str) -> ModuleType | None:
    """``fastmde.kernels.<hot_path>`` if Triton imports and the module defines its entry points."""
    if hot_path not in _triton_modules:
        module = None
        try:
            module = importlib.import_module(f"fastmde.kernels.{hot_path}")
            missing = [f for f in TRITON_ENTRY_POINTS[hot_path] if not hasattr(module, f)]
            if missing:
                _triton_errors[hot_path] = f"fastmde.kernels.{hot_path} lacks {', '.join(missing)}"
                module = None
        except Exception as exc:
            _triton_errors[hot_path] = f"{type(exc).__name__}: {exc}"
        _triton_modules[hot_path] = module
    return _triton_modules[hot_path]


def _native_has(hot_path: str) -> bool:
    module = native_module()
    return module is not None and all(hasattr(module, f) for f in NATIVE_ENTRY_POINTS[hot_path])


def _why_unavailable(hot_path: str, device_type: str, backend: str) -> str | None:
    """``None`` when ``backend`` can serve ``hot_path`` on ``device_type``, else the reason."""
    if backend == "reference":
        return None
    if backend == "native":
        if device_type != "cpu":
            return "the native backend runs on CPU tensors only"
        if native_module() is None:
            return f"fastmde._C is not loaded ({_native_error})"
        if not _native_has(hot_path):
            return f"fastmde._C has no {hot_path} kernel"
        return None
    if backend == "triton":
        if device_type == "cpu" and not triton_interpreting():
            return "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
        if device_type not in ("cpu", "cuda"):
            return f"Triton kernels do not run on {device_type} tensors"
        if triton_module(hot_path) is None:
            return f"fastmde.kernels.{hot_path} is unavailable ({_triton_errors.get(hot_path)})"
        return None
    return f"unknown backend {backend!r}"


def choose(hot_path: str, device_type: str, dtype: str | None = None, layout: str | None = None) -> str:
    """The implementation that serves ``hot_path`` for tensors on ``device_type``; with ``dtype``
    (``"bfloat16"``...) and ``layout`` (``"nchw"`` / ``"channels_last"``), for that setting (the
    reference where SLOWER_SETTINGS says plain PyTorch is faster there)."""
    forced = _forced
    if forced is not None:
        reason = _why_unavailable(hot_path, device_type, forced)
        if reason is not None:
            raise BackendUnavailableError(
                f"fastmde backend {forced!r} was forced but cannot run {hot_path} on "
                f"{device_type}: {reason}"
            )
        return forced
    order = ("native", "reference") if device_type == "cpu" else ("triton", "reference")
    for backend in order:
        if _why_unavailable(hot_path, device_type, backend) is None:
            if backend != "reference" and dtype is not None and _slower_here(
                hot_path, device_type, dtype, layout or "nchw"
            ):
                return "reference"
            return backend
    return "reference"


def backends(devices: tuple[str, ...] | None = None, per_setting: bool = False) -> dict:
    """For each hot path and device type, the implementation that serves it.

    >>> fastmde.backends()          # doctest: +SKIP
    {'depth_loss': {'cpu': 'native', 'cuda': 'triton'}, ...}
    >>> fastmde.backends(per_setting=True)["up_projection"]["cpu"]     # doctest: +SKIP
    {'float32/nchw': 'native', 'bfloat16/channels_last': 'reference (...why...)', ...}

    ``per_setting``: one entry per dtype and layout (float64 only on the CPU), with the reason where plain PyTorch serves a setting because it is faster there.
    A forced backend that cannot serve a cell is shown as ``'unavailable: <reason>'``.
    """
    if devices is None:
        import torch

        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    table: dict = {}
    for hot_path in HOT_PATHS:
        table[hot_path] = {}
        for device_type in devices:
            if per_setting:
                table[hot_path][device_type] = {
                    f"{dt}/{lay}": _describe(hot_path, device_type, dt, lay)
                    for dt in DTYPE_NAMES
                    if not (dt == "float64" and device_type != "cpu")
                    for lay in LAYOUTS
                }
                continue
            try:
                table[hot_path][device_type] = choose(hot_path, device_type)
            except BackendUnavailableError as exc:
                table[hot_path][device_type] = f"unavailable: {exc}"
    return table


def _describe(hot_path: str, device_type: str, dtype: str, layout: str) -> str:
    try:
        chosen = choose(hot_path, device_type, dtype, layout)
    except BackendUnavailableError as exc:
        return f"unavailable: {exc}"
    if _forced is None and chosen == "reference":
        why = _slower_here(hot_path, device_type, dtype, layout)
        if why:
            return f"reference ({why})"
    return chosen


def setting_of(tensor) -> tuple[str, str]:
    """(dtype name, layout) of a tensor, the keys of ``choose``'s per-setting rule."""
    import torch

    from ._checks import memory_format_of

    layout = "channels_last" if memory_format_of(tensor) == torch.channels_last else "nchw"
    return str(tensor.dtype).removeprefix("torch."), layout


_forced = _read_env()
