"""``fastmde sweep``: the paper's linear experiment protocol.

Each row is a training configuration that differs from a base configuration (the command
line) in a few options; every row is trained for the same number of epochs, evaluated on the
test split, and reported in one markdown table (the six metrics, training time, it/s), with a
figure of the same test images predicted by every row (as the paper's Figures 3 and 4).

Rows come from a JSON or TOML file::

    [{"name": "baseline", "model": "unet34"}, {"name": "k3", "model": "unet34-k3"}]
    # TOML: [[rows]] tables with the same keys

or from a built-in list named after the paper's tables (``--configs table1|table3|table4|table5``):

* ``table1``: the intermediate resolutions 480x640, 384x512, 288x384, 192x256, 96x128 (the
  paper's named sizes) on the base model;
* ``table3``: the five loss presets (l1, hu, hu_blurred, l1_hu, l1_hu_blurred);
* ``table4``: the U-Net against Hu et al.'s model (ResNet50 encoders);
* ``table5``: the cost cuts one at a time: U-Net50 with 5x5 kernels, the ResNet34 encoder,
  3x3 kernels, the 1x1 reduction (``unet50-k5`` -> ``unet34-k5`` -> ``unet34-k3`` ->
  ``unet34-k3-1x1``).

A row's keys are :class:`~fastmde.engine.config.TrainConfig` option names (``batch_size`` or
``batch-size``), with values as on the command line (``"size": "64x80"``).

Rows whose run directory already holds a finished ``result.json`` trained with the same
options (every option that changes a result, see ``TrainConfig``) are not retrained (a sweep
can be interrupted and started again); a row whose saved options differ is trained again, and a
result scored under another protocol is scored again, each said in the log.

Every row is scored, in the table and in the figure, by one model: the one its ``last.pt``
loads (:func:`scored_model`: the weights' moving average with ``--ema``, as validation scores).
"""
from __future__ import annotations

import json
import os
import sys
import time

from .._text import PAPER_SIZES, format_size, slug
from .config import TrainConfig, describe_differences, result_differences
from ..reference.depth_metrics import METRIC_NAMES

TABLE1_SIZES = tuple(format_size(size) for size in PAPER_SIZES.values())   # HxW, largest first
TABLE3_LOSSES = ("l1", "hu", "hu_blurred", "l1_hu", "l1_hu_blurred")
TABLE4_MODELS = ("hu50", "unet50-k5")
TABLE5_MODELS = ("unet50-k5", "unet34-k5", "unet34-k3", "unet34-k3-1x1")
BUILTIN = ("table1", "table3", "table4", "table5")


def _model_rows(names) -> list[dict]:
    from ..models import variants

    known = variants()
    missing = [m for m in names if m not in known]
    if missing:
        raise ValueError(f"sweep: model variants {missing} are not defined by fastmde.models")
    return [{"name": m, "model": m} for m in names]


def builtin_rows(name: str) -> list[dict]:
    if name == "table1":
        return [{"name": f"size {s}", "size": s} for s in TABLE1_SIZES]
    if name == "table3":
        return [{"name": f"loss {p}", "loss": p} for p in TABLE3_LOSSES]
    if name == "table4":
        return _model_rows(TABLE4_MODELS)
    if name == "table5":
        return _model_rows(TABLE5_MODELS)
    raise ValueError(f"unknown sweep {name!r}: not a file, nor one of {', '.join(BUILTIN)}")


def read_rows(source: str) -> list[dict]:
    """Rows from a built-in name or a JSON/TOML file; each row a dict of TrainConfig options + name."""
    if not os.path.exists(source):
        return builtin_rows(source)
    with open(source, "rb") as f:
        raw = f.read()
    if source.endswith(".toml"):
        import tomllib

        data = tomllib.loads(raw.decode())
        rows = data.get("rows")
    else:
        data = json.loads(raw.decode())
        rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{source!r}: expected a non-empty list of rows (JSON list, or [[rows]] tables in TOML)")
    return rows


def row_configs(base: TrainConfig, rows: list[dict], out_dir: str) -> list[tuple[str, TrainConfig]]:
    """(name, config) per row; errors name the row with the bad option."""
    result, names = [], set()
    for i, row in enumerate(rows):
        row = {str(key).replace("-", "_"): value for key, value in row.items()}
        name = str(row.pop("name", None) or ", ".join(f"{k}={v}" for k, v in row.items()) or f"row{i}")
        if name in names:
            raise ValueError(f"sweep: two rows are named {name!r}")
        names.add(name)
        if "out" in row:
            raise ValueError(f"sweep row {name!r}: 'out' is set by the sweep")
        try:
            cfg = base.replace(**row, out=os.path.join(out_dir, slug(name)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sweep row {name!r}: {exc}") from None
        result.append((name, cfg))
    return result


def scored_model(run_dir: str, device):
    """The model a sweep row is scored by, in the table and in the figure: its ``last.pt`` as
    ``fastmde eval`` loads it (the moving average of the weights when trained with ``--ema``)."""
    from .checkpoint import build_model_from_checkpoint, read_checkpoint

    return build_model_from_checkpoint(read_checkpoint(os.path.join(run_dir, "last.pt"))).to(device)


def reusable_result(name: str, cfg: TrainConfig, log) -> dict | None:
    """The row's saved ``result.json`` if it was trained with the same options, else None (logged)."""
    path = os.path.join(cfg.out, "result.json")
    if not os.path.exists(path) or not os.path.exists(os.path.join(cfg.out, "last.pt")):
        return None
    with open(path) as f:
        result = json.load(f)
    try:
        differences = result_differences(TrainConfig.from_dict(result["config"]), cfg)
    except (KeyError, TypeError, ValueError) as exc:
        log(f"sweep: {name}: {path} holds no readable configuration ({exc}): training again")
        return None
    if differences:
        log(f"sweep: {name}: {path} was trained with other options ({describe_differences(differences)}): "
            "training again")
        return None
    log(f"sweep: {name}: reusing {path}")
    return result


def varied_options(results: list[dict]) -> list[str]:
    """The options, besides model, size and loss, whose values differ between the rows (in the
    order of ``TrainConfig``'s fields; only those that change a result)."""
    from .config import fields

    shown = {"model", "size", "loss"}
    return [f.name for f in fields() if f.name not in shown and f.metadata["result"]
            and len({json.dumps(r["config"].get(f.name), sort_keys=True) for r in results}) > 1]


def markdown_table(results: list[dict], epochs: int, protocol: str) -> str:
    """The sweep's table: model, size, loss and every other option the rows vary, then the metrics."""
    from .config import fields, flag_of, option_text

    varied = varied_options(results)
    flags = {f.name: flag_of(f) for f in fields()}
    titles = ["configuration", "model", "size", "loss", *(flags[name] for name in varied),
              "RMS", "REL", "log10", "δ1", "δ2", "δ3", "train time", "it/s"]
    lines = [
        f"Each row trained for {epochs} epoch(s); metrics on the test split under the `{protocol}` protocol.",
        "",
        "| " + " | ".join(titles) + " |",
        "|" + "---|" * len(titles),
    ]
    for r in results:
        m, c = r["metrics"], r["config"]
        lines.append(
            f"| {r['name']} | {c['model']} | {option_text(c['size'])} | {c['loss']} | "
            + "".join(f"{option_text(c.get(name))} | " for name in varied)
            + " | ".join(f"{m[k]:.3f}" for k in METRIC_NAMES)
            + f" | {r['train_s']:.1f} s | {r['it_per_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def make_figure(images, ground_truth, rows: list[tuple[str, list]], path: str, *, tile=(120, 160),
                depth_range: tuple[float, float] | None = None) -> None:
    """A PNG grid: one column per test image; rows = input, ground truth, each configuration;
    a colour bar in metres to the right (:mod:`fastmde.engine.pictures`: near red, far blue,
    black = no depth).

    Every depth map of the figure shares one fixed range, ``depth_range`` (default: the
    validation protocol's clamp, 0.001 to 10 m); predictions are clamped to it, as evaluation
    clamps them, and the ground truth's missing pixels (0) are black.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    from .._atomic import atomic_path
    from .pictures import colour_bar, colourise
    from .protocols import PROTOCOLS
    from .train import VALIDATION_PROTOCOL

    lo, hi = depth_range or PROTOCOLS[VALIDATION_PROTOCOL].clamp
    th, tw = tile
    label_w = 170
    all_rows = [("input", None), ("ground truth", ground_truth)] + rows
    bar = colour_bar(th * (len(all_rows) - 1), lo, hi)     # beside the depth rows
    canvas = Image.new("RGB", (label_w + tw * len(images) + bar.width, max(th * len(all_rows), th + bar.height)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for j, image in enumerate(images):
        for i, (label, depths) in enumerate(all_rows):
            if depths is None:
                array = np.asarray(image.permute(1, 2, 0).numpy(), dtype=np.uint8)
            elif i == 1:      # ground truth as it is: 0 (missing) stays black
                array = colourise(depths[j], lo, hi)
            else:             # predictions clamped as evaluation clamps them
                array = colourise(np.clip(np.asarray(depths[j], dtype=np.float64), lo, hi), lo, hi)
            tile_image = Image.fromarray(array).resize((tw, th), Image.NEAREST if depths is not None else Image.BILINEAR)
            canvas.paste(tile_image, (label_w + j * tw, i * th))
    canvas.paste(bar, (label_w + tw * len(images), th))
    for i, (label, _) in enumerate(all_rows):
        draw.text((6, i * th + th // 2 - 6), label[:26], fill="black")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def run_sweep(base: TrainConfig, rows: list[dict], out_dir: str, *, protocol: str = "paper",
              figure_images: int = 4, log=print) -> dict:
    """Train, evaluate and tabulate every row; returns {"rows": [...], "table": path, "figure": path}."""
    from .._atomic import atomic_write_text
    from .datasets import build_datasets
    from .evaluate import evaluate
    from .inference import predict_images
    from .paper import beside_sweep
    from .speed import resolve_amp, resolve_device, resolve_workers
    from .train import Trainer

    from .train import check_trainable

    configs = row_configs(base, rows, out_dir)
    for name, cfg in configs:     # every row checked before anything is trained
        try:
            check_trainable(cfg)
        except ValueError as exc:
            raise ValueError(f"sweep row {name!r}: {exc}") from None
    os.makedirs(out_dir, exist_ok=True)
    results, predictions = [], []
    _, _, test_set = build_datasets(base)
    if test_set is None:
        raise ValueError("sweep: the dataset has no test split to evaluate the rows on")
    picks = list(range(min(figure_images, len(test_set))))
    fig_items = [test_set[i] for i in picks]
    device = resolve_device(base.device)
    for name, cfg in configs:
        result_path = os.path.join(cfg.out, "result.json")
        result = reusable_result(name, cfg, log)
        amp_dtype = resolve_amp(cfg.amp, device)
        if result is None:
            log(f"sweep: {name}: training {cfg.epochs} epoch(s)")
            start = time.perf_counter()
            trainer = Trainer(cfg, overwrite=True)
            summary = trainer.fit()
            result = {"name": name, "config": cfg.to_dict(), "metrics": None, "train_s": summary["train_s"],
                      "it_per_s": summary["it_per_s"], "wall_s": time.perf_counter() - start,
                      "steps": summary["step"], "protocol": None}
        model = scored_model(cfg.out, device)
        if result["protocol"] != protocol:
            if result["protocol"] is not None:
                log(f"sweep: {name}: scored under protocol {result['protocol']!r} before: scoring under {protocol!r}")
            result["metrics"] = evaluate(model, test_set, protocol, device=device, batch_size=cfg.eval_batch_size,
                                         workers=resolve_workers(cfg.workers, device), amp_dtype=amp_dtype)
            result["protocol"] = protocol
            atomic_write_text(json.dumps(result, indent=2) + "\n", result_path)
        depths = predict_images(model, [item["image"] for item in fig_items], device=device, amp_dtype=amp_dtype)
        predictions.append((name, depths))
        results.append(result)
        log("sweep: " + name + ": " + "  ".join(f"{k} {result['metrics'][k]:.4f}" for k in METRIC_NAMES))
    table = markdown_table(results, base.epochs, protocol)
    table += beside_sweep(rows, results)   # the paper's rows under ours (table1/3/4/5 only)
    table_path = os.path.join(out_dir, "table.md")
    atomic_write_text(table, table_path)
    atomic_write_text(json.dumps(results, indent=2) + "\n", os.path.join(out_dir, "results.json"))
    figure_path = os.path.join(out_dir, "figure.png")
    make_figure([item["image"] for item in fig_items], [item["depth"][0].numpy() for item in fig_items],
                predictions, figure_path)
    return {"rows": results, "table": table_path, "figure": figure_path, "markdown": table}


# ---------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    from .config import add_arguments as add_config_arguments
    from .protocols import PROTOCOLS

    parser.add_argument("--configs", required=True,
                        help="table1, table3, table4, table5 (the paper's lists) or a .json/.toml file of rows")
    parser.add_argument("--protocol", default="paper", choices=sorted(PROTOCOLS),
                        help="metric protocol of the table (default: %(default)s)")
    parser.add_argument("--figure-images", type=int, default=4, help="test images in the figure (default: %(default)s)")
    add_config_arguments(parser)
    parser.set_defaults(out="runs/sweep")


def run(args) -> int:
    from .config import config_from_args

    base = config_from_args(args)
    rows = read_rows(args.configs)
    result = run_sweep(base, rows, args.out, protocol=args.protocol, figure_images=args.figure_images,
                       log=lambda text: print(text, file=sys.stderr, flush=True))
    print(result["markdown"])
    print(f"wrote {result['table']} and {result['figure']}", file=sys.stderr)
    return 0
