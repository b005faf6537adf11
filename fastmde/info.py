"""``fastmde info``: versions, devices, the backend table and the conv backward choices measured."""
from __future__ import annotations

import platform


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="also print parameters and MACs of this model variant")
    parser.add_argument("--size", default="288x384", help="internal size HxW for --model (default 288x384)")


def describe() -> list[str]:
    import torch

    from . import __version__, _backend

    lines = [
        f"fastmde {__version__}",
        f"python  {platform.python_version()} ({platform.machine()})",
        f"torch   {torch.__version__}",
    ]
    try:
        import triton

        lines.append(f"triton  {triton.__version__}" + (" (interpreter)" if _backend.triton_interpreting() else ""))
    except Exception as exc:
        lines.append(f"triton  unavailable ({type(exc).__name__}: {exc})")
    native = _backend.native_module()
    lines.append(
        f"native  {'fastmde._C loaded, ' + str(native.num_threads()) + ' threads' if native else 'unavailable: ' + str(_backend.native_error())}"
    )
    lines.append(f"devices cpu ({torch.get_num_threads()} threads)")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"        cuda:{i} {torch.cuda.get_device_name(i)}")
    forced = _backend.forced_backend()
    lines.append(f"backend {'forced: ' + forced if forced else 'automatic'} (FASTMDE_BACKEND)")
    table = _backend.backends()
    devices = list(next(iter(table.values())).keys())
    lines.append("")
    width = max(16, max(len(name) for name in table) + 2)
    lines.append(f"{'hot path':<{width}}" + "".join(f"{d:<12}" for d in devices))
    for hot_path, row in table.items():
        lines.append(f"{hot_path:<{width}}" + "".join(f"{row[d]:<12}" for d in devices))
    features = _backend.cpu_features()
    units = [name for name in ("amx_bf16", "avx512_bf16") if features[name]]
    lines.append("")
    lines.append(f"cpu bf16 matrix units: {', '.join(units) if units else 'none'}")
    # per dtype and layout: only the settings served otherwise than the table above says
    detail = _backend.backends(tuple(devices), per_setting=True)
    exceptions = [
        f"  {hot_path:<{width}}{device_type:<6}{setting:<24}{chosen}"
        for hot_path, row in detail.items()
        for device_type, settings in row.items()
        for setting, chosen in settings.items()
        if chosen != table[hot_path][device_type]
    ]
    lines.append("per dtype and layout: " + (
        "the table above serves every setting" if not exceptions
        else "the table above, except (plain PyTorch measured faster there):"))
    lines.extend(exceptions)
    lines.append("")
    lines.extend(conv_backward_choices())
    return lines


def conv_backward_choices() -> list[str]:
    """The backward ways ``BandedConv2d`` chose so far in this process (``nn/banded_conv.py``: timed
    at the first training backward of each setting, or restored from a checkpoint by
    ``--resume``), one line each with the thread count it holds for; a fresh process (``fastmde
    info`` itself) has measured none."""
    from .nn.banded_conv import TAPS_MAX_COLUMNS, measured_choices

    rows = measured_choices()
    if not rows:
        return ["conv backward (BandedConv2d, timed at a shape's first training backward): "
                "none measured yet in this process"]
    settings = []
    for row in rows:
        kh, kw = row["kernel_size"]
        shape = "x".join(str(v) for v in row["shape"])
        settings.append(f"{shape} {row['dtype']} {row['memory_format']} -> {row['out_channels']}, {kh}x{kw}, "
                        f"{row['threads']} thread{'s' if row['threads'] != 1 else ''}")
    width = max(len(text) for text in settings) + 2
    lines = [f"conv backward (BandedConv2d), chosen in this process ({len(rows)}):"]
    for row, setting in zip(rows, settings):
        kh, kw = row["kernel_size"]
        other = "tap GEMMs" if row["out_channels"] * kh * kw <= TAPS_MAX_COLUMNS else "bands"
        timed = (" (restored from a checkpoint)" if row["one_call_ms"] != row["one_call_ms"]   # NaN: untimed
                 else f" (one call {row['one_call_ms']:g} ms, {other} {row['other_ms']:g} ms)")
        lines.append(f"  {setting:<{width}}{row['choice']}{timed}")
    return lines


def run(args) -> int:
    print("\n".join(describe()))
    if getattr(args, "model", None):
        from .models import describe_model  # provided by the models package

        print()
        print(describe_model(args.model, args.size))
    return 0
