"""fastmde benchmarks: ``python bench/run.py [--full] [--only kernels,models,data,train,dropin] [--device cpu|cuda]``.

The default is a quick pass (a few minutes on a 2-core CPU) over every section on every device
present; ``--full`` runs every row. Each section lives in ``bench/sections/<name>.py`` and
defines ``run(ctx, device)``, adding rows with ``ctx.add(...)``, and optionally ``NOTE``, a
paragraph printed under its table. The table is printed and written to
``bench/results/<device-name>.json`` and ``.md`` (device name, versions, date).
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

SECTIONS = ("kernels", "models", "data", "train", "dropin")


def available_sections() -> list[str]:
    return [s for s in SECTIONS if os.path.exists(os.path.join(HERE, "sections", f"{s}.py"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="every row (slow); default is a quick pass")
    parser.add_argument("--only", default=None, help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: every device present)")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"), help="where results are written")
    parser.add_argument("--tag", default=None, help="results file name (default: from the device name)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    import torch

    from common import Context, environment, slug, write_results

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
        ctx = Context(devices=devices, full=args.full)
        env = environment(device)
        print(f"# fastmde bench on {env['device_name']} | torch {env['torch']} | triton {env['triton']} | "
              f"{'full' if args.full else 'quick'} | sections {','.join(sections)}", flush=True)
        print(f"# backends: {env['backends']}", flush=True)
        env["notes"] = {}
        for name in sections:
            start = time.perf_counter()
            print(f"\n## {name} ({device})", flush=True)
            module = importlib.import_module(f"sections.{name}")
            module.run(ctx, device)
            if getattr(module, "NOTE", None):   # printed under the section's table, here and in the .md
                env["notes"][name] = module.NOTE
                print(textwrap.fill(module.NOTE, 100), flush=True)
            print(f"## {name} took {time.perf_counter() - start:.0f} s", flush=True)
        if not args.no_write and ctx.rows:
            tag = args.tag or slug((("cuda-" if device.startswith("cuda") else "cpu-") + env["device_name"].split("(")[0]).lower())
            paths = write_results(ctx.rows, env, args.out_dir, tag + ("" if args.full else "-quick"))
            print(f"\nwrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
