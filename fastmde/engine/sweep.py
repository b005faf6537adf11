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

A sweep never loses a row's work without being told to. Before anything is trained, every
row's run directory is looked at (:func:`plan_rows`):

* a finished ``result.json`` trained with the same options (every option that changes a result,
  see ``TrainConfig``) is reused (a result scored under another protocol is scored again);
* a ``last.pt`` without a result (a sweep interrupted in that row), or a result trained with
  other options, is refused, naming the row and what differs, unless ``--resume`` (continue it
  from ``last.pt``, by the rules of ``fastmde train --resume``: options that may change are
  applied and recorded, the others are refused) or ``--overwrite`` (train it again from step 0).

Ctrl-C saves the row being trained (``last.pt``) and exits with one line; the same command with
``--resume`` continues that row from its checkpoint and reuses the finished ones.

The table says what each row actually trained (steps, epochs, images seen, and why a row
stopped before its ``--epochs``) and every option in which the rows differ from the paper's
setting (:func:`fastmde.engine.paper.recipe_differences`).

Every row is scored, in the table and in the figure, by one model: the one its ``last.pt``
loads (:func:`scored_model`: the weights' moving average with ``--ema``, as validation scores).
"""
from __future__ import annotations

import json
import os
import sys
import time

from .._text import PAPER_SIZES, format_size, slug
from .checkpoint import clean_output_folder
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
        if source.endswith((".json", ".toml")) or os.sep in source:
            raise FileNotFoundError(f"--configs {source!r}: no such file (or one of {', '.join(BUILTIN)})")
        return builtin_rows(source)
    if os.path.isdir(source):
        raise IsADirectoryError(f"--configs {source!r} is a folder; it takes a .json/.toml file of rows")
    with open(source, "rb") as f:
        raw = f.read()
    try:
        if source.endswith(".toml"):
            import tomllib

            data = tomllib.loads(raw.decode())
            rows = data.get("rows")
        else:
            data = json.loads(raw.decode())
            rows = data.get("rows") if isinstance(data, dict) else data
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source!r}: not a text file ({exc})") from None
    except ValueError as exc:     # json.JSONDecodeError, tomllib.TOMLDecodeError
        kind = "TOML" if source.endswith(".toml") else "JSON"
        raise ValueError(f"{source!r}: not valid {kind}: {exc}") from None
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


def row_state(cfg: TrainConfig) -> tuple[str, dict | None, str]:
    """What a row's run directory holds: ``(state, result, detail)``.

    ``state`` is ``"new"`` (no ``last.pt``), ``"done"`` (a ``result.json`` trained with the same
    options, returned as ``result``), ``"interrupted"`` (``last.pt`` without a result) or
    ``"other"`` (a result trained with other options, or unreadable); ``detail`` says what
    differs or where it stopped."""
    from .checkpoint import CheckpointError, read_checkpoint

    path, last = os.path.join(cfg.out, "result.json"), os.path.join(cfg.out, "last.pt")
    if not os.path.exists(last):
        return "new", None, ""
    if not os.path.exists(path):
        try:
            step = read_checkpoint(last).get("step")
        except CheckpointError as exc:
            return "interrupted", None, f"a last.pt that cannot be read ({exc})"
        return "interrupted", None, f"a run interrupted at step {step} (last.pt, no result.json)"
    try:
        with open(path) as f:
            result = json.load(f)
        saved = TrainConfig.from_dict(result["config"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return "other", None, f"a result.json without a readable configuration ({exc})"
    differences = result_differences(saved, cfg)
    if differences:
        return "other", None, f"a run trained with other options ({describe_differences(differences)})"
    result["config"] = saved.to_dict()     # saved under former option names: today's names
    return "done", result, ""


def plan_rows(configs: list[tuple[str, TrainConfig]], *, resume: bool = False, overwrite: bool = False,
              log=print) -> list[tuple[str, TrainConfig, str, dict | None]]:
    """``(name, config, action, result)`` per row, decided before anything is trained: ``"train"``,
    ``"resume"`` or ``"reuse"`` (``result`` is the saved one).

    A row holding an interrupted run or a result of other options is trained again only with
    ``overwrite``, continued only with ``resume`` (its ``last.pt`` must accept the options, as
    ``fastmde train --resume`` would); otherwise every such row is named in one FileExistsError
    and nothing is trained.

    Raises:
        ValueError: ``resume`` and ``overwrite`` together.
        FileExistsError: rows that hold work and neither flag says what to do with it.
        CheckpointError: ``resume`` and a row's ``last.pt`` refuses the options (named).
    """
    from .checkpoint import CheckpointError, read_checkpoint
    from .train import resume_differences

    if resume and overwrite:
        raise ValueError("--resume continues the rows in --out and --overwrite trains them again: pass one of them")
    plan, refused = [], []
    for name, cfg in configs:
        state, result, detail = row_state(cfg)
        if state == "done":
            plan.append((name, cfg, "reuse", result))
        elif state == "new" or overwrite:
            if state != "new":
                log(f"sweep: {name}: {cfg.out} holds {detail}: training again (--overwrite)")
            plan.append((name, cfg, "train", None))
        elif resume:
            last = os.path.join(cfg.out, "last.pt")
            try:
                resume_differences(read_checkpoint(last), cfg, last)
            except CheckpointError as exc:
                raise CheckpointError(f"sweep row {name!r}: {exc}") from None
            plan.append((name, cfg, "resume", None))
        else:
            refused.append(f"row {name!r}: {cfg.out} holds {detail}")
    if refused:
        raise FileExistsError("sweep: " + "; ".join(refused) + ". Pass --resume to continue such rows from their "
                              "last.pt, --overwrite to train them again, or choose another --out (nothing was "
                              "trained)")
    return plan


def _row_result(name: str, cfg: TrainConfig, action: str, result: dict | None, log) -> dict:
    """A row's result: the saved one (``reuse``), or that of training it (``train``: from step 0;
    ``resume``: from its ``last.pt``), its metrics left to score. Says what each row trained:
    steps, epochs (fractional), images seen, and why it stopped."""
    from .train import Trainer

    if action == "reuse":
        log(f"sweep: {name}: reusing {os.path.join(cfg.out, 'result.json')}")
        return result
    stale = os.path.join(cfg.out, "result.json")
    if action == "train" and os.path.exists(stale):
        os.remove(stale)             # replaced by this training (--overwrite); never left beside another run
    log(f"sweep: {name}: " + ("continuing from its last.pt" if action == "resume" else f"training {cfg.epochs} epoch(s)"))
    start = time.perf_counter()
    trainer = Trainer(cfg, resume=action == "resume", overwrite=action == "train", log=log)
    summary = trainer.fit()
    return {"name": name, "model": model_name_of(cfg.to_dict()), "config": cfg.to_dict(), "metrics": None,
            "train_s": summary["train_s"], "it_per_s": summary["it_per_s"], "wall_s": time.perf_counter() - start, "steps": summary["step"],
            "epochs_trained": summary["epochs_trained"], "images_seen": summary["images_seen"],
            "stopped": summary["stopped"], "option_changes": summary["option_changes"], "protocol": None}


def varied_options(results: list[dict]) -> list[str]:
    """The options, besides model, size and loss, whose values differ between the rows (in the
    order of ``TrainConfig``'s fields; only those that change a result)."""
    from .config import fields

    shown = {"model", "size", "loss"}
    return [f.name for f in fields() if f.name not in shown and f.metadata["result"]
            and len({json.dumps(r["config"].get(f.name), sort_keys=True) for r in results}) > 1]


#: column titles of the metrics (``METRIC_NAMES`` missing here are titled by their names)
METRIC_TITLES = {"rms": "RMS", "rel": "REL", "log10": "log10", "delta1": "δ1", "delta2": "δ2", "delta3": "δ3"}


def markdown_table(results: list[dict], epochs: int, protocol: str) -> str:
    """The sweep's table: model, size, loss and every other option the rows vary, the metrics,
    then what each row trained (steps, epochs, images seen), its training time and it/s; above
    it, a line saying which rows stopped before their ``--epochs`` and why (``epochs``: the
    base configuration's, for results that do not record their own)."""
    from .config import fields, flag_of, option_text

    varied = varied_options(results)
    flags = {f.name: flag_of(f) for f in fields()}
    titles = ["configuration", "model", "size", "loss", *(flags[name] for name in varied),
              *(METRIC_TITLES.get(k, k) for k in METRIC_NAMES), "steps", "epochs", "images", "train time", "it/s"]
    lines = [trained_line(results, epochs, protocol), "",
             "| " + " | ".join(titles) + " |",
             "|" + "---|" * len(titles)]
    for r in results:
        m, c = r["metrics"], r["config"]
        trained = r.get("epochs_trained")
        lines.append(
            f"| {r['name']} | {model_name_of(c)} | {option_text(c['size'])} | {c['loss']} | "
            + "".join(f"{option_text(c.get(name))} | " for name in varied)
            + " | ".join("-" if m.get(k) is None else f"{m[k]:.3f}" for k in METRIC_NAMES)   # results of older versions
            + f" | {r.get('steps', '?')} | {'?' if trained is None else f'{trained:.2f}'} | {r.get('images_seen', '?')}"
            + f" | {r['train_s']:.1f} s | {r['it_per_s']:.2f} |"
        )
    for r in results:
        for change in r.get("option_changes") or []:
            lines.append(f"\n{r['name']}: resumed at step {change['step']} with changed options: "
                         + ", ".join(f"{flags.get(k, k)} {option_text(a)} -> {option_text(b)}"
                                     for k, (a, b) in change["changes"].items()))
    return "\n".join(lines) + "\n"


def model_name_of(config: dict) -> str:
    """The name of the network a row trained (``fastmde.models.variant_name``: ``unet18-k3-1x1`` for
    ``model unet34-k3-1x1, encoder 18``); the ``model`` option as saved where it names no variant."""
    from ..models import variant_name

    try:
        return variant_name(config["model"], encoder=config.get("encoder"), **(config.get("extra") or {}))
    except (KeyError, TypeError, ValueError):
        return str(config.get("model"))


def trained_line(results: list[dict], epochs: int, protocol: str) -> str:
    """One sentence: how long the rows trained (in full, or stopped by which limit; a row resumed
    with a ``--max-steps`` below its checkpoint's step is named with the step it is at) and how
    they are scored."""
    stops: dict[str, list[str]] = {}
    for r in results:
        c, stopped, steps = r["config"], r.get("stopped"), r.get("steps")
        if stopped == "max_steps" and steps is not None and c.get("max_steps") is not None and steps > c["max_steps"]:
            # resumed with a --max-steps below the step its last.pt had reached: nothing trained
            stops.setdefault(f"was already at step {steps}, past --max-steps {c['max_steps']}, when resumed "
                             "(nothing trained)", []).append(r["name"])
        elif stopped in ("max_steps", "time_limit"):
            limit = (f"--max-steps {c.get('max_steps')}" if stopped == "max_steps"
                     else f"--time-limit {c.get('time_limit'):g} s")
            stops.setdefault(f"stopped by {limit} before its {c.get('epochs', epochs)} epoch(s)", []).append(r["name"])
        elif stopped == "completed" and (r.get("epochs_trained") or 0) > c.get("epochs", epochs):
            # resumed with an --epochs below the epochs its last.pt had trained: nothing trained
            stops.setdefault(f"had already trained {r['epochs_trained']:g} epoch(s), past --epochs "
                             f"{c.get('epochs', epochs)}, when resumed (nothing trained)", []).append(r["name"])
        elif stopped == "completed":
            stops.setdefault(f"trained its {c.get('epochs', epochs)} epoch(s) in full", []).append(r["name"])
        else:
            stops.setdefault(f"trained for --epochs {c.get('epochs', epochs)} (how far is not recorded)",
                             []).append(r["name"])
    names = [r["name"] for r in results]
    how = "; ".join(f"{'every row' if rows == names else ', '.join(rows)} {text}" for text, rows in stops.items())
    how = how or "no row"
    return (f"{how[0].upper() + how[1:]} (steps, epochs and images: what each row trained). Metrics on the test "
            f"split under the `{protocol}` protocol.")


def figure_range(base: TrainConfig) -> tuple[float, float]:
    """The figure's depth range: the clamp of the protocol the rows validate with (0.001-10 m;
    80 m for ``--dataset kitti``)."""
    from .protocols import PROTOCOLS
    from .train import validation_protocol

    return tuple(PROTOCOLS[validation_protocol(base)].clamp)


def make_figure(images, ground_truth, rows: list[tuple[str, list]], path: str, *, tile=(120, 160),
                depth_range: tuple[float, float] | None = None) -> None:
    """A PNG grid: one column per test image; rows = input, ground truth, each configuration;
    a colour bar in metres to the right (:mod:`fastmde.engine.pictures`: near red, far blue,
    black = no depth).

    Every depth map of the figure shares one fixed range, ``depth_range`` (default: the
    ``fastmde`` protocol's clamp, 0.001 to 10 m; the sweep passes :func:`figure_range`); predictions are clamped to it, as evaluation
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


def run_sweep(base: TrainConfig, rows: list[dict], out_dir: str, *, protocol: str = "fastmde",
              figure_images: int = 4, log=print, resume: bool = False, overwrite: bool = False) -> dict:
    """Train, evaluate and tabulate every row; returns {"rows": [...], "table": path, "figure": path}.

    Rows that hold earlier work are reused, continued (``resume``) or trained again
    (``overwrite``) as :func:`plan_rows` decides, before anything is trained. A Ctrl-C saves the
    row in training (its ``last.pt``), logs how to continue, and raises ``KeyboardInterrupt``."""
    from .._atomic import atomic_write_text
    from .datasets import build_datasets
    from .evaluate import evaluate
    from .inference import predict_images
    from .paper import beside_sweep, differences_line
    from .speed import resolve_device, resolve_workers, scoring_precision

    from .train import check_paths, check_trainable
    from .._outputs import check_output_folder

    check_output_folder(out_dir, "--out", "the sweep's folder")
    configs = row_configs(base, rows, out_dir)
    for name, cfg in configs:     # every row checked before anything is trained
        try:
            check_trainable(cfg)
            check_paths(cfg)
        except (ValueError, OSError) as exc:
            raise type(exc)(f"sweep row {name!r}: {exc}") from None
    device = resolve_device(base.device)
    plan = plan_rows(configs, resume=resume, overwrite=overwrite, log=log)
    # the sweep's folder is made by its first row's training (or its first write): a sweep that
    # fails before leaves no empty folder
    clean_output_folder(out_dir, log)   # each row's folder is cleaned when its training starts
    results, predictions = [], []
    try:
        _, _, test_set = build_datasets(base)
    except KeyboardInterrupt:
        log("sweep: interrupted while building the data, before any row was trained")
        raise
    if test_set is None:
        raise ValueError("sweep: the dataset has no test split to evaluate the rows on")
    picks = list(range(min(figure_images, len(test_set))))
    fig_items = [test_set[i] for i in picks]
    current = None
    try:
        for name, cfg, action, result in plan:
            current = (name, cfg)
            result = _row_result(name, cfg, action, result, log)
            # the network's name, as the table gives it (results of earlier versions lack it)
            result["model"] = model_name_of(result["config"])
            amp_dtype = scoring_precision(device)    # fastmde eval's default precision, whatever the row trained in
            result_path = os.path.join(cfg.out, "result.json")
            clean_output_folder(cfg.out, log)   # a row reused without training writes its result.json here
            model = scored_model(cfg.out, device)
            # scored again under another protocol, or when it lacks a metric (a result of an older version)
            if result["protocol"] != protocol or any(k not in (result["metrics"] or {}) for k in METRIC_NAMES):
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
    except KeyboardInterrupt:
        name, cfg = current
        if os.path.exists(os.path.join(cfg.out, "last.pt")):
            log(f"sweep: interrupted in row {name!r}; the same command with --resume continues it from its last.pt "
                "and reuses the finished rows")
        else:
            log(f"sweep: interrupted in row {name!r} before its first checkpoint; the same command trains it and "
                "reuses the finished rows")
        raise
    table = markdown_table(results, base.epochs, protocol)
    beside = beside_sweep(rows, results)   # the paper's rows under ours (table1/3/4/5 only)
    table += beside or ("\n" + differences_line(results) + "\n" if differences_line(results) else "")
    table_path = os.path.join(out_dir, "table.md")
    figure_path = os.path.join(out_dir, "figure.png")
    try:
        atomic_write_text(table, table_path)
        atomic_write_text(json.dumps(results, indent=2) + "\n", os.path.join(out_dir, "results.json"))
        make_figure([item["image"] for item in fig_items], [item["depth"][0].numpy() for item in fig_items],
                    predictions, figure_path, depth_range=figure_range(base))
    except KeyboardInterrupt:
        log("sweep: interrupted while writing the table and figure; every row is finished: the same command "
            "writes them again without training")
        raise
    return {"rows": results, "table": table_path, "figure": figure_path, "markdown": table}


# ---------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    from .config import add_arguments as add_config_arguments
    from .protocols import DEFAULT_PROTOCOL, PROTOCOLS

    parser.add_argument("--configs", required=True,
                        help="table1, table3, table4, table5 (the paper's lists) or a .json/.toml file of rows")
    parser.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                        help=f"metric protocol of the table (docs/metrics.md; default: {DEFAULT_PROTOCOL}, which "
                             f"clamps predictions to 1e-3..10 m, or kitti_garg_kb with --dataset kitti; 'paper' "
                             f"reproduces the paper authors' code, which counts negative predictions as δ hits)")
    parser.add_argument("--figure-images", type=int, default=4, help="test images in the figure (default: %(default)s)")
    g = parser.add_argument_group("this command")
    g.add_argument("--resume", action="store_true",
                   help="continue rows holding an interrupted run (or a result of other options) from their last.pt, "
                        "as `fastmde train --resume`; finished rows with the same options are always reused")
    g.add_argument("--overwrite", action="store_true",
                   help="train again, from step 0, rows holding an interrupted run or a result of other options "
                        "(default: refuse, naming them, before anything is trained)")
    add_config_arguments(parser)
    parser.set_defaults(out="runs/sweep")


def run(args) -> int:
    import dataclasses

    from .config import config_from_args
    from .protocols import default_protocol

    if args.figure_images < 1:
        raise ValueError(f"--figure-images must be at least 1, got {args.figure_images}")
    base = config_from_args(args)
    rows = read_rows(args.configs)
    try:
        protocol = args.protocol or default_protocol(dataclasses.asdict(base))
        result = run_sweep(base, rows, args.out, protocol=protocol, figure_images=args.figure_images,
                           log=lambda text: print(text, file=sys.stderr, flush=True), resume=args.resume,
                           overwrite=args.overwrite)
    except KeyboardInterrupt:      # run_sweep has said where it stopped and how to continue
        return 130
    try:
        print(result["markdown"], flush=True)
        print(f"wrote {result['table']} and {result['figure']}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:      # every file is written: nothing is lost, and the line says so
        print(f"sweep: interrupted after every row was finished; {result['table']}, results.json and "
              f"{result['figure']} are written", file=sys.stderr, flush=True)
        return 130
    return 0
