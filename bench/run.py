"""fastmde benchmarks: ``python bench/run.py [--full] [--only kernels,models,data,train,dropin,export] [--device cpu|cuda]``.

The default is a quick pass (a few minutes on a 2-core CPU) over every section on every device
present; ``--full`` runs every row. Each section lives in ``bench/sections/<name>.py`` and
defines ``run(ctx, device)``, adding rows with ``ctx.add(...)``, and optionally ``NOTE``, a
paragraph printed under its table. Each row is printed as it is measured, each section's table
(with its header) when the section ends, and the results are written to
``bench/results/local/<device-name>[-quick].json`` and ``.md`` (device name, versions, date):
your own place, not tracked by git. ``--publish`` writes them to ``bench/results/`` instead,
replacing the published numbers the README links to (a deliberate step: commit them with the
machine named); ``--out-dir`` chooses any other folder.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# Benchmark the checkout this script belongs to, not whichever fastmde is installed elsewhere.
sys.path.insert(1, os.path.dirname(HERE))

SECTIONS = ("kernels", "models", "data", "train", "dropin", "export")
PUBLISHED = os.path.join(HERE, "results")             # the numbers the README links to
LOCAL = os.path.join(PUBLISHED, "local")              # a user's own runs (.gitignore)


def available_sections() -> list[str]:
    return [s for s in SECTIONS if os.path.exists(os.path.join(HERE, "sections", f"{s}.py"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="every row (slow); default is a quick pass")
    parser.add_argument("--only", default=None, help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: every device present)")
    parser.add_argument("--out-dir", default=None,
                        help=f"where results are written (default {os.path.relpath(LOCAL)}; --publish: "
                             f"{os.path.relpath(PUBLISHED)})")
    parser.add_argument("--publish", action="store_true",
                        help=f"write to {os.path.relpath(PUBLISHED)}, replacing the published results the README links to")
    parser.add_argument("--tag", default=None, help="results file name (default: from the device name)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    import torch

    from common import Context, environment, slug, text_table, write_results

    if args.publish and args.out_dir:
        parser.error("--publish writes to bench/results/; leave out --out-dir (or drop --publish)")
    out_dir = PUBLISHED if args.publish else (args.out_dir or LOCAL)

    sections = available_sections()
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in SECTIONS]
        if unknown:
            parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
        sections = [s for s in wanted if s in sections]
    if args.device:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            parser.error("--device cuda given but no CUDA device is available")
        devices = [args.device]
    else:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    for device in devices:
        ctx = Context(devices=devices, full=args.full, device=device)
        env = environment(device)
        print(f"# fastmde bench on {env['device_name']} | torch {env['torch']} | triton {env['triton']} | "
              f"{'full' if args.full else 'quick'} | sections {','.join(sections)}", flush=True)
        print(f"# backends: {env['backends']}", flush=True)
        env["notes"] = {}
        for name in sections:
            start = time.perf_counter()
            print(f"\n## {name} ({device})", flush=True)
            module = importlib.import_module(f"sections.{name}")
            first = len(ctx.rows)
            module.run(ctx, device)
            if len(ctx.rows) > first:
                print("\n" + text_table(ctx.rows[first:]), flush=True)
            if getattr(module, "NOTE", None):   # printed under the section's table, here and in the .md
                env["notes"][name] = module.NOTE
                print(textwrap.fill(module.NOTE, 100), flush=True)
            print(f"## {name} took {time.perf_counter() - start:.0f} s", flush=True)
        if not args.no_write and ctx.rows:
            tag = args.tag or slug((("cuda-" if device.startswith("cuda") else "cpu-") + env["device_name"].split("(")[0]).lower())
            paths = write_results(ctx.rows, env, out_dir, tag + ("" if args.full else "-quick"))
            where = ("the published results" if out_dir == PUBLISHED else
                     "your local results; --publish replaces the published ones" if out_dir == LOCAL else "")
            print(f"\nwrote {paths[0]} and {paths[1]}" + (f" ({where})" if where else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
