"""The paper's published figures, in one place, and the tables that print them beside ours.

Source: T. Freeman and S. Tilney-Volk, "Training Monocular Depth Estimation Models on a
Budget" (Stanford CS231A; code: github.com/thatcherfreeman/CS231A-FinalProject). Every number
below is copied from the table named in the comment above it; the labels are the paper's own
row labels. Its setting, for every table unless noted: NYU-Depth-v2 (46156 training frames,
3% held out), Adam at lr 1e-4, batch 1, 3 epochs, trained on one Tesla T4.

Speed. The paper's "inference speed" is the speed of a training iteration (its section 4.2:
"improve inference speed during training time", the time "spent through backpropagation"), in
iterations per second at batch 1. Table 4 was measured on the T4; Table 2 on a CPU ("these
speedup figures were similar to the speedup when running on a GPU").

Used by ``bench/sections/models.py`` (the paper's speed-ups beside the measured ones) and by
``fastmde sweep`` (the paper's rows beside a run's rows for ``--configs table1|table3|table4|
table5``, :func:`beside_sweep`).
"""
from __future__ import annotations

PAPER = 'Freeman & Tilney-Volk, "Training Monocular Depth Estimation Models on a Budget"'
SETTING = "NYU-Depth-v2, Adam lr 1e-4, batch 1, 3 epochs, Tesla T4"
METRICS = ("rms", "rel", "log10", "delta1", "delta2", "delta3")


def _metrics(*values: float) -> dict[str, float]:
    return dict(zip(METRICS, values))


# Table 1: validation metrics against the intermediate (internal) resolution. U-Net, ResNet34,
# 3x3 convolutions, 1x1 reduction (fastmde unet34-k3-1x1), Hu et al.'s loss without blur
# (preset "hu"), 3 epochs. Keys are fastmde's (H, W); the labels are the paper's W x H.
TABLE1_SETTING = {"model": "unet34-k3-1x1", "loss": "hu"}
TABLE1 = {
    (480, 640): ("640×480", _metrics(0.999, 0.201, 0.110, 0.580, 0.831, 0.924)),
    (384, 512): ("512×384", _metrics(0.982, 0.192, 0.104, 0.617, 0.851, 0.929)),
    (288, 384): ("384×288", _metrics(0.933, 0.173, 0.096, 0.666, 0.878, 0.936)),
    (192, 256): ("256×192", _metrics(0.944, 0.170, 0.095, 0.670, 0.872, 0.935)),
    (96, 128): ("128×96", _metrics(0.996, 0.188, 0.105, 0.626, 0.847, 0.919)),
}

# Table 2: relative speed of the U-Net (ResNet34, 3x3 convolutions) against the internal
# resolution, on a CPU, over the 640x480 row. Its caption does not say whether the 1x1
# reduction was on; section 6.1's model, whose resolutions it accompanies, has it, so fastmde
# compares it with unet34-k3-1x1. The paper prints the second row as "512x314", a misprint of
# 512x384 (the resolution the text and Table 1 name).
TABLE2_MODEL = "unet34-k3-1x1"
TABLE2 = {
    (480, 640): ("640x480", 1.0),
    (384, 512): ("512x314, sic: 512x384", 1.4),
    (288, 384): ("384x288", 2.6),
    (192, 256): ("256x192", 5.2),
    (96, 128): ("128x96", 12.0),
}

# Table 3: validation metrics of each loss function, U-Net34 (the paper's "Baseline34", the
# model of Table 1) at 288x384, 3 epochs. Keys are fastmde's loss presets.
TABLE3_SETTING = {"model": "unet34-k3-1x1", "size": (288, 384)}
TABLE3 = {
    "l1": ("L1 loss", _metrics(0.774, 0.174, 0.128, 0.674, 0.887, 0.940)),
    "hu": ("Hu et al.", _metrics(0.933, 0.173, 0.096, 0.666, 0.878, 0.936)),
    "hu_blurred": ("Blurred Hu et al.", _metrics(0.844, 0.178, 0.118, 0.637, 0.870, 0.937)),
    "l1_hu": ("L1 Hu et al.", _metrics(0.706, 0.152, 0.109, 0.718, 0.904, 0.946)),
    "l1_hu_blurred": ("L1 Blurred Hu et al.", _metrics(0.795, 0.172, 0.102, 0.661, 0.886, 0.945)),
}

# Table 4: training iterations per second at batch 1 on the T4 with the blurred Hu et al. loss,
# at 288x384 unless the label says 256x192, and the speed-up over "Hu et al." (0.19 it/s).
# Rows: (paper label, fastmde variant, internal (H, W), it/s, speed-up). The text defines
# "Hu et al." as the original paper's model (5x5 convolutions, ResNet50: fastmde hu50) and
# "U-Net" as ResNet34 with 5x5 convolutions, no 1x1 unless named. The rows with 3x3 kernels or
# the 1x1 exist only as the authors' slimmed Hu et al. model (decoder to the full internal
# size: fastmde hu34-k3, hu34-k5-1x1, hu34-k3-1x1, hu50-k3-1x1); the authors' code also
# builds its unmodified "Hu50" that way (fastmde hu50-k5), so which of the two the 0.19 it/s
# baseline timed cannot be told from the paper: fastmde follows the text (hu50).
TABLE4_SETTING = {"size": (288, 384), "loss": "hu_blurred"}
TABLE4 = (
    ("U-Net w/ 1x1 filter, ksize 3", "unet34-k3-1x1", (288, 384), 11.2, 59.0),
    ("U-Net w/ ksize 3", "unet34-k3", (288, 384), 10.2, 54.0),
    ("U-Net w/ 1x1 filter", "unet34-k5-1x1", (288, 384), 3.09, 16.0),
    ("U-Net", "unet34-k5", (288, 384), 2.9, 15.0),
    ("Hu et al. w/ Resnet34 Encoder, 1x1 filter, ksize 3", "hu34-k3-1x1", (288, 384), 4.8, 25.0),
    ("Hu et al. w/ Resnet34 Encoder, 1x1 filter", "hu34-k5-1x1", (288, 384), 1.6, 8.4),
    ("Hu et al. w/ Resnet34 Encoder, ksize 3", "hu34-k3", (288, 384), 1.77, 9.3),
    ("Hu et al. w/ Resnet34 Encoder", "hu34", (288, 384), 1.35, 7.1),
    ("Hu et al. w/ 1x1 filter, ksize 3 (256x192)", "hu50-k3-1x1", (192, 256), 3.2, 17.0),
    ("Hu et al. w/ 1x1 filter, ksize 3", "hu50-k3-1x1", (288, 384), 1.5, 7.9),
    ("Hu et al. (256x192)", "hu50", (192, 256), 0.35, 1.8),
    ("Hu et al.", "hu50", (288, 384), 0.19, 1.0),
)
TABLE4_BASELINE = "hu50"

# Table 5: validation metrics of the five fastest models at 288x384 with the blurred Hu et al.
# loss, 3 epochs. Keys are fastmde variants (per Table 4's naming above).
TABLE5_SETTING = {"size": (288, 384), "loss": "hu_blurred"}
TABLE5 = {
    "hu34-k3-1x1": ("Hu et al. w/ ResNet 34 Encoder, 1x1 filter, ksize 3",
                    _metrics(0.804, 0.170, 0.115, 0.671, 0.881, 0.939)),
    "unet34-k3-1x1": ("U-Net w/ 1x1 filter, ksize 3", _metrics(0.844, 0.178, 0.118, 0.637, 0.870, 0.937)),
    "unet34-k3": ("U-Net w/ ksize 3", _metrics(0.830, 0.176, 0.119, 0.652, 0.877, 0.937)),
    "unet34-k5-1x1": ("U-Net w/ 1x1 filter", _metrics(0.886, 0.192, 0.123, 0.620, 0.852, 0.928)),
    "unet34-k5": ("U-Net", _metrics(0.813, 0.177, 0.114, 0.666, 0.884, 0.941)),
}

# Why CPU speed-ups differ from Table 4's, for the bench's notes.
SPEED_NOTE = (
    "The paper's Table 4 speed-ups are T4 training it/s at batch 1 over its Hu et al. model "
    "(0.19 it/s). That baseline was far from compute-bound: at 0.19 it/s its ~1 TFLOP step "
    "(forward MACs x 2 FLOP x ~3 for forward and backward) ran at ~0.2 TFLOP/s, a few percent "
    "of a T4, while its U-Net at 11.2 it/s ran ~10x more efficiently; so its speed-ups (59x) "
    "far exceed the ratio of work (the MAC ratio). A CPU runs both models closer to its "
    "arithmetic rate, so its ratios stay nearer the MAC ratio. Table 2 (internal resolutions) "
    "was measured on a CPU, as these rows are."
)


def table4_row(variant: str, size) -> tuple | None:
    """Table 4's row for a fastmde ``variant`` at internal ``size`` (H, W), or None."""
    size = tuple(size)
    for row in TABLE4:
        if row[1] == variant and row[2] == size:
            return row
    return None


def table4_it_per_s(variant: str, size=(288, 384)) -> float | None:
    row = table4_row(variant, size)
    return None if row is None else row[3]


def training_tflops(it_per_s: float, forward_gmacs: float) -> float:
    """Achieved TFLOP/s of a training step: 2 FLOP per MAC, backward ~2x the forward."""
    return it_per_s * forward_gmacs * 2.0 * 3.0 / 1000.0


# ------------------------------------------------------------------ sweep tables

def _size_text(size) -> str:
    return f"{size[0]}x{size[1]}"


def _paper_rows(table: str) -> list[tuple]:
    """(key matching a run row, paper label, metrics or None, it/s or None) per paper row."""
    if table == "table1":
        return [(f"size {_size_text(size)}", label, metrics, None) for size, (label, metrics) in TABLE1.items()]
    if table == "table3":
        return [(f"loss {preset}", label, metrics, None) for preset, (label, metrics) in TABLE3.items()]
    if table == "table4":
        return [(variant if size == (288, 384) else None, f"{label} [{variant} @ {_size_text(size)}]", None, its)
                for label, variant, size, its, _ in TABLE4]
    if table == "table5":
        return [(variant, f"{label} [{variant}]", metrics, table4_it_per_s(variant))
                for variant, (label, metrics) in TABLE5.items()]
    raise ValueError(f"no paper table for sweep {table!r}")


def _setting(table: str) -> tuple[str, dict]:
    """(description, the options every run row should share with the paper) of a sweep table."""
    if table == "table1":
        return ("Table 1: validation metrics by internal resolution; U-Net34 3x3 with the 1x1, "
                "Hu et al.'s loss (unblurred)", TABLE1_SETTING)
    if table == "table3":
        return "Table 3: validation metrics by loss; U-Net34 3x3 with the 1x1 at 288x384", TABLE3_SETTING
    if table == "table4":
        return ("Table 4: training it/s at batch 1 on the T4 with the blurred loss (no metrics); "
                "rows the run has sit under its rows, the rest follow", TABLE4_SETTING)
    return ("Table 5: validation metrics by model at 288x384 with the blurred loss; it/s from "
            "Table 4", TABLE5_SETTING)


def which_table(rows: list[dict]) -> str | None:
    """The built-in sweep (``table1`` ...) whose rows ``rows`` are, or None for other rows."""
    from .sweep import BUILTIN, builtin_rows

    for name in BUILTIN:
        if rows == builtin_rows(name):
            return name
    return None


def _cells(metrics: dict | None, it_per_s: float | None) -> str:
    values = ["-"] * len(METRICS) if metrics is None else [f"{metrics[k]:.3f}" for k in METRICS]
    return " | ".join(values) + f" | {'-' if it_per_s is None else f'{it_per_s:.2f}'} |"


def beside_sweep(rows: list[dict], results: list[dict]) -> str:
    """Markdown: each result of a built-in sweep with the paper's row for the same configuration
    under it, then the paper's rows the run does not have; '' for rows that are no paper table.

    ``rows`` are the sweep's rows (to recognise the table), ``results`` its results (each with
    ``name``, ``config``, ``metrics`` and ``it_per_s``). Options of the run that differ from the
    paper's setting for that table are listed under the table (the comparison is only as close
    as those allow).
    """
    table = which_table(rows)
    if table is None:
        return ""
    description, setting = _setting(table)
    paper_rows = _paper_rows(table)
    lines = [
        "",
        f"The paper's {description} ({SETTING}; {PAPER}).",
        "",
        "| configuration | source | RMS | REL | log10 | δ1 | δ2 | δ3 | it/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    used = set()
    for r in results:
        lines.append(f"| {r['name']} | this run | " + _cells(r["metrics"], r.get("it_per_s")))
        key = r["name"] if table in ("table1", "table3") else r["config"]["model"]
        match = [i for i, p in enumerate(paper_rows) if p[0] == key]
        for i in match:
            used.add(i)
            _, label, metrics, its = paper_rows[i]
            lines.append(f"| | paper: {label} | " + _cells(metrics, its))
        if not match:
            lines.append("| | paper: no such row | " + _cells(None, None))
    for i, (_, label, metrics, its) in enumerate(paper_rows):
        if i not in used:
            lines.append(f"| (not in this run) | paper: {label} | " + _cells(metrics, its))
    lines.append("")
    line = differences_line(results, setting)
    if line:
        lines.append(line)
    lines.append("The paper trained and scored on NYU-Depth-v2; a run on other data compares in trend only.")
    return "\n".join(lines) + "\n"


def _show(value) -> str:
    return _size_text(value) if isinstance(value, tuple) and len(value) == 2 else str(value)


#: The paper's training recipe as fastmde options (its section 5: Adam at 1e-4, batch 1, 3 epochs,
#: 3% of NYU's training split held out, 46156 frames trained on; the four augmentations of its
#: section 4.1), and from the authors' code what the text leaves out: ImageNet encoder weights,
#: raw 0-255 input, a constant rate. The seed, precision and loader settings are not stated and
#: not compared.
RECIPE = {"epochs": 3, "batch_size": 1, "lr": 1e-4, "val_fraction": 0.03}
NYU_TRAIN_FRAMES = 46156


def recipe_differences(config: dict, setting: dict | None = None, *, stopped: str | None = None,
                       steps: int | None = None) -> list[str]:
    """What a run's configuration (``TrainConfig.to_dict()``, or a part of one) does otherwise
    than the paper: one ``"<option> <ours> (paper <theirs>)"`` text per difference, the
    table's own ``setting`` (model, size or loss) first. Options missing from ``config`` are
    not compared.

    ``stopped`` and ``steps`` (a run's summary or sweep result: ``"completed"``, ``"max_steps"``,
    ``"time_limit"``, and the step it is at) make the limits' texts say what the run did: a limit
    that did not stop it is no difference; unknown (None), the limit is named as set."""
    out = []
    c = dict(config)
    for option, value in (setting or {}).items():
        ours = c.get(option)
        ours = tuple(ours) if isinstance(ours, list) else ours
        if option in c and ours != value:
            out.append(f"{option} {_show(ours)} (paper {_show(value)})")
    if c.get("epochs", 3) != 3:
        out.append(f"{c['epochs']} epoch(s) (paper 3)")
    if c.get("batch_size", 1) != 1:
        out.append(f"batch size {c['batch_size']} (paper 1; it/s counts steps)")
    out += _limit_texts(c, stopped, steps)
    if "lr" in c and c["lr"] != RECIPE["lr"]:
        out.append(f"lr {c['lr']:g} (paper 0.0001)")
    if c.get("lr_step") is not None:
        out.append(f"lr x{c.get('lr_gamma', 0.1):g} every {c['lr_step']} epoch(s) (paper: constant)")
    if c.get("cosine"):
        out.append("cosine lr decay (paper: constant)")
    if c.get("warmup"):
        out.append(f"{c['warmup']} warm-up step(s) (paper: none)")
    if c.get("ema") is not None:
        out.append(f"weights averaged with decay {c['ema']:g} (paper: none)")
    if c.get("augment") is False:
        out.append("no augmentation (paper: flip, colour, crop, rotation)")
    elif "augment_parts" in c and len(c["augment_parts"]) < 4:
        out.append(f"augmentation {','.join(c['augment_parts'])} only (paper: flip, colour, crop, rotation)")
    start = c.get("pretrained")
    if "pretrained" in c and c.get("init_from") is None:
        # --pretrained auto is ImageNet on real data, random on the synthetic data
        if start in (None, "none") or (start == "auto" and c.get("data_format", "synthetic") == "synthetic"):
            out.append("random encoder initialisation (paper: ImageNet weights)")
        elif start not in ("auto", "imagenet"):
            out.append(f"encoder weights of {start} (paper: torchvision's ImageNet weights)")
    if c.get("init_from") is not None:
        out.append(f"initialised from {c['init_from']} (paper: ImageNet encoder weights)")
    if c.get("normalize"):
        out.append("ImageNet mean/std on the input (paper: raw 0-255)")
    if c.get("encoder") is not None:
        out.append(f"encoder ResNet{c['encoder']} (paper: the model's own)")
    if c.get("extra"):
        out.append(f"model overrides {c['extra']} (paper: none)")
    if c.get("blur") is not None:
        out.append(f"ground-truth blur {'on' if c['blur'] else 'off'} (paper: as the loss preset)")
    if "val_fraction" in c and c["val_fraction"] != RECIPE["val_fraction"]:
        out.append(f"validation {c['val_fraction']:.0%} of the training split (paper 3%)")
    if c.get("val_by_scene"):
        out.append("validation by whole scenes (paper: 3% of the frames)")
    if c.get("limit_train") is not None:
        out.append(f"only the first {c['limit_train']} training items (paper: all {NYU_TRAIN_FRAMES})")
    if c.get("data_format") == "synthetic":
        size = c.get("synthetic_size", (480, 640))
        out.append(f"synthetic scenes, {c.get('synthetic_train')} training frames at {_size_text(size)} "
                   f"(paper: NYU-Depth-v2, {NYU_TRAIN_FRAMES} frames at 480x640)")
    return out


def _limit_texts(c: dict, stopped: str | None, steps: int | None) -> list[str]:
    """The texts of ``--max-steps`` and ``--time-limit``, true of the run (see
    :func:`recipe_differences`): ``stopped at --max-steps 10``, ``at step 25, past --max-steps 10,
    when resumed`` (nothing trained), nothing for a limit the run did not reach."""
    out = []
    max_steps, time_limit = c.get("max_steps"), c.get("time_limit")
    if max_steps is not None:
        if stopped is None:
            out.append(f"--max-steps {max_steps} (paper: whole epochs)")
        elif stopped == "max_steps" and steps is not None and steps > max_steps:
            out.append(f"at step {steps}, past --max-steps {max_steps}, when resumed (paper: whole epochs)")
        elif stopped == "max_steps":
            out.append(f"stopped at --max-steps {max_steps} (paper: whole epochs)")
    if time_limit is not None:
        if stopped is None:
            out.append(f"--time-limit {time_limit:g} s (paper: whole epochs)")
        elif stopped == "time_limit":
            out.append(f"stopped at --time-limit {time_limit:g} s (paper: whole epochs)")
    return out


def differences_line(results: list[dict], setting: dict | None = None) -> str:
    """``"Differences from the paper's setting: <text> in every row; <text> in a, b."`` for the
    results of a sweep (each ``{"name", "config"}``, with ``"stopped"`` and ``"steps"`` where
    recorded), or '' when there is none."""
    differences: dict[str, list[str]] = {}   # "option ours (paper theirs)" -> run rows
    for r in results:
        for text in recipe_differences(r["config"], setting, stopped=r.get("stopped"), steps=r.get("steps")):
            differences.setdefault(text, []).append(r["name"])
    if not differences:
        return ""
    names = [r["name"] for r in results]
    return "Differences from the paper's setting: " + "; ".join(
        f"{text} in {'every row' if rows_ == names else ', '.join(rows_)}" for text, rows_ in differences.items()) + "."
