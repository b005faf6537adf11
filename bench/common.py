"""Timing, memory and result-table helpers shared by the benchmark sections."""
from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Context:
    """What a section needs to know: devices to run on and how thorough to be."""

    devices: list[str]
    full: bool = False
    rows: list[dict] = field(default_factory=list)
    device: str | None = None     # the device the sections now run on (a column of every row)

    def add(self, **row) -> None:
        if self.device is not None:
            row.setdefault("device", self.device)
        self.rows.append(row)
        print(format_row(row), flush=True)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _round_robin_medians(fns: dict, device: str, warmup: int, rounds: int, max_seconds: float) -> dict:
    """Median wall time (ms) of each ``fns[name]()`` after ``warmup`` calls each, timed one call
    of each per round, the order rotating from round to round; stops once ``max_seconds`` of
    timed rounds have passed (at least 3)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times = {name: [] for name in fns}
    names = list(fns)
    start_all = time.perf_counter()
    for r in range(rounds):
        # each round starts one implementation later, so that none always runs right after the
        # same other one (whose freed memory and evicted caches it would inherit every time)
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
        if r >= 2 and time.perf_counter() - start_all > max_seconds:
            break
    return {name: statistics.median(values) for name, values in times.items()}


def median_time_ms(fn, device: str, *, warmup: int = 2, reps: int = 10, max_seconds: float = 5.0) -> float:
    """Median wall time of ``fn()`` in milliseconds after ``warmup`` calls (synchronised on CUDA).

    Stops early once ``max_seconds`` of timed runs have passed (at least 3 runs)."""
    if device.startswith("cuda"):
        try:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
        except ImportError:
            pass
    return _round_robin_medians({"fn": fn}, device, warmup, reps, max_seconds)["fn"]


def interleaved_median_ms(fns: dict, device: str, *, warmup: int = 2, rounds: int = 10,
                          max_seconds: float = 15.0) -> dict:
    """Median wall time (ms) of each ``fns[name]()``, timed round-robin: one call of each per round.

    On a shared or thermally drifting CPU, timing one implementation after another lets the
    machine's state change between them (seen here as +-20% between back-to-back runs);
    alternating them exposes every implementation to the same drift, so their ratios hold
    even when the absolute times move. CUDA keeps ``median_time_ms`` (do_bench) per function.
    Stops after ``max_seconds`` of timed rounds (at least 3 rounds)."""
    if device.startswith("cuda"):
        return {name: median_time_ms(fn, device) for name, fn in fns.items()}
    return _round_robin_medians(fns, device, warmup, rounds, max_seconds)


def peak_memory_bytes(fn, device: str) -> int | None:
    """Peak bytes allocated by torch while ``fn()`` runs, above what was allocated before.

    CUDA: the caching allocator's peak counter. CPU: replays the profiler's allocation and
    free events in order (``profile_memory=True``) and takes the running maximum."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        from torch.profiler import ProfilerActivity, profile

        with _quiet_fds(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = sorted(
            (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
            key=lambda e: e.start_ns(),
        )
        running = peak = 0
        for e in events:
            running += e.nbytes()
            peak = max(peak, running)
        return peak
    except Exception:
        return None


class _quiet_fds:
    """Silence what the profiler's C++ side prints on stdout/stderr while it starts and stops."""

    def __enter__(self):
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        self.null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.null, 1)
        os.dup2(self.null, 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in (*self.saved, self.null):
            os.close(fd)
        return False


def saved_activation_bytes(forward) -> int | None:
    """Bytes of the distinct storages autograd saves for backward while ``forward()`` runs."""
    storages: dict[int, int] = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        except Exception:
            pass
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward()
        del out
    except Exception:  # e.g. a compiled graph that does not support the hooks
        return None
    return sum(storages.values())


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def environment(device: str) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    import fastmde

    return {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "fastmde": fastmde.__version__,
        "backends": {k: v.get(device.split(":")[0]) for k, v in fastmde.backends().items()},
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
    }


def fmt(value, digits=2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS = (
    ("section", "section"), ("what", "what"), ("shape", "shape"), ("dtype", "dtype"),
    ("layout", "layout"), ("device", "device"), ("impl", "impl"), ("fwd_ms", "fwd ms"), ("bwd_ms", "bwd ms"),
    ("total_ms", "fwd+bwd ms"), ("vs_eager", "x eager"), ("vs_compile", "x compile"), ("paper_x", "paper x"),
    ("throughput", "throughput"), ("peak_mb", "peak MB"), ("saved_mb", "saved for bwd MB"),
    ("note", "note"),
)


#: the columns that name what a row measured; the others are measurements, printed with their titles
NAMING = ("what", "shape", "dtype", "layout", "device", "impl")


def format_row(row: dict) -> str:
    """The line printed as a row is measured: what it measured, then each measurement with its
    title (``depth_loss | 8x1x288x384 | float32 | NCHW | cpu | native | fwd+bwd ms 6.80 | x eager
    13.70``); columns the row leaves empty are left out (the section's table follows it)."""
    named = [fmt(row[k]) for k in NAMING if row.get(k) is not None]
    measured = [f"{title} {fmt(row[k])}" for k, title in COLUMNS
                if k not in NAMING and k not in ("section", "note") and row.get(k) is not None]
    note = [f"({row['note']})"] if row.get("note") else []
    return "  " + " | ".join(named + measured + note)


def text_table(rows: list[dict]) -> str:
    """``rows`` as an aligned plain-text table under a header: the columns any row fills."""
    keys = [k for k, _ in COLUMNS if k != "section" and any(r.get(k) is not None for r in rows)]
    titles = dict(COLUMNS)
    cells = [[titles[k] for k in keys]] + [[fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    keys = [k for k, _ in COLUMNS if any(r.get(k) is not None for r in rows)]
    titles = dict(COLUMNS)
    lines = ["| " + " | ".join(titles[k] for k in keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k in keys) + " |")
    return "\n".join(lines)


from fastmde._text import slug  # noqa: E402,F401  (file names: one rule for the bench and the sweep)


def write_results(rows: list[dict], env: dict, out_dir: str, tag: str) -> tuple[str, str]:
    """Write ``<out_dir>/<tag>.json`` and ``.md`` atomically (``fastmde._atomic``); returns both paths."""
    from fastmde._atomic import atomic_write_text

    json_path = os.path.join(out_dir, f"{tag}.json")
    md_path = os.path.join(out_dir, f"{tag}.md")
    payload = {"environment": env, "rows": rows}
    header = [
        f"# fastmde benchmark: {env['device_name']}",
        "",
        f"- device: `{env['device']}` ({env['device_name']})",
        f"- torch {env['torch']}, triton {env['triton']}, fastmde {env['fastmde']}, python {env['python']}",
        f"- backends: {env['backends']}",
        f"- date: {env['date']}",
        "",
    ]
    notes = []
    for section in dict.fromkeys(r["section"] for r in rows):
        section_rows = [r for r in rows if r["section"] == section]
        notes.append(f"## {section}\n\n" + markdown_table(section_rows) + "\n")
        if env.get("notes", {}).get(section):   # a section's NOTE, printed under its table
            notes.append(env["notes"][section] + "\n")
    for path, text in (
        (json_path, json.dumps(payload, indent=1)),
        (md_path, "\n".join(header) + "\n".join(notes)),
    ):
        atomic_write_text(text, path)
    return json_path, md_path
