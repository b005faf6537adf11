"""``TrainConfig``: every option of a training run, defined once, as one serialisable record.

Each option is one dataclass field declared with :func:`option`: its name, type (the
annotation), default, choices, help text and command-line group, and two rules:

* ``on_resume``: what ``--resume`` does when the option differs from the saved run's:
  ``"apply"`` (the learning rate and schedule, the epochs, limits, logging, speed options: the
  new value is used from the resume on, and the change is logged and recorded),
  ``"convert"`` (the batch size: the position within the epoch is kept in samples) or
  ``"fixed"`` (model, size, loss, data, seed...: the resume is refused, naming the option and
  both values);
* ``result``: whether the option changes what a run produces (a sweep reuses a finished row
  only when every such option matches).

Everything else derives from the fields: ``fastmde train``'s argument list
(:func:`add_arguments`), :func:`config_from_args`, the configuration saved in checkpoints
(:meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict`), the sweep's rows (field names),
the comparison on resume (:func:`compare_configs`), and the choices and defaults that ``fastmde
eval`` / ``predict`` / ``sweep`` share. Adding an option means adding one field here.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field

from .._text import format_size, parse_internal_size, parse_size
from ..data.augment import Augment, parse_parts

DATA_FORMATS = ("synthetic", "labeled", "frames", "csv", "list", "folder")
#: the formats of any dataset (fastmde.data.FileList, fastmde.data.Folder), read with a depth scale
FILE_FORMATS = ("list", "folder")
#: the benchmark settings of --dataset (fastmde.data.settings)
DATASET_NAMES = ("nyu", "kitti")
AMP_CHOICES = ("auto", "bf16", "fp16", "none")
SWITCH_CHOICES = ("auto", "on", "off")
ENCODER_DEPTHS = (18, 34, 50, 101)
BEST_METRICS = {  # metric -> True when higher is better
    "rms": False, "rel": False, "log10": False, "delta1": True, "delta2": True, "delta3": True,
    "sq_rel": False, "rmse_log": False, "silog": False,
}
RESUME_RULES = ("apply", "convert", "fixed")


def model_names() -> tuple[str, ...]:
    """The model variants ``--model`` accepts (``fastmde.models.variants()``)."""
    from ..models import variants

    return tuple(variants())


def loss_presets() -> tuple[str, ...]:
    """The loss presets ``--loss`` accepts: the paper's Table 3 (Hu et al.'s loss family), then the
    scale-invariant losses (SILog of BTS / AdaBins / Depth-Anything-V2, MiDaS's ssi)."""
    from ..reference.depth_loss import PRESETS
    from ..reference.scale_invariant_loss import PRESETS as SI_PRESETS

    return tuple(PRESETS) + tuple(SI_PRESETS)


def option(default, help: str, *, group: str, choices=None, flag: str | None = None, metavar: str | None = None,
           unset: str | None = None, on_resume: str = "fixed", result: bool = True, cli: bool = True,
           former: tuple[str, ...] = ()):
    """One training option: a dataclass field carrying its command-line and resume rules.

    ``choices`` is a tuple or a function returning one (evaluated when used); ``unset`` says
    what a ``None`` default means in the help; ``flag`` overrides ``--<name-with-dashes>``;
    ``cli=False`` keeps an option off the command line (Python and sweep rows only); ``former``
    lists earlier names of the option, still read from saved configurations, sweep rows and (with
    a warning) the command line."""
    if on_resume not in RESUME_RULES:
        raise ValueError(f"on_resume must be one of {RESUME_RULES}, got {on_resume!r}")
    metadata = dict(help=help, group=group, choices=choices, flag=flag, metavar=metavar, unset=unset,
                    on_resume=on_resume, result=result, cli=cli, former=tuple(former))
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


MODEL, OPTIM, DATA, SPEED, RUN = "model and loss", "optimisation", "data", "speed", "run"


@dataclass
class TrainConfig:
    """Options of one training run (the defaults are the paper's recipe where it has one)."""

    # model and loss
    model: str = option("unet34-k3-1x1", "model variant: a name of fastmde.models.variants() (an unknown "
                                         "name is refused with the list)", group=MODEL, choices=model_names, metavar="NAME")
    size: tuple[int, int] = option((288, 384), "internal (network) size HxW; the input is area-resized to it",
                                   group=MODEL)
    encoder: int | None = option(None, "override the variant's ResNet depth", group=MODEL, choices=ENCODER_DEPTHS,
                                 unset="the variant's")
    normalize: bool | None = option(None, "ImageNet mean/std on the input", group=MODEL,
                                    unset="off, as the paper's code")
    pretrained: str | None = option(
        "auto", "encoder start: imagenet (torchvision's ImageNet weights, through the torch hub cache), none "
                "(random), a torchvision-format .pth file, or auto: imagenet on real data as the paper, none on the "
                "synthetic data (where no download may be possible)", group=MODEL, metavar="WEIGHTS")
    keep_aspect: bool | None = option(None, "scale the input to cover --size keeping its aspect ratio, instead of "
                                            "stretching it to --size", group=MODEL,
                                      unset="the --dataset's: on for kitti, off for nyu")
    init_from: str | None = option(
        None, "initialise the whole model from this checkpoint (a fastmde run, or the paper authors' or Hu et "
              "al.'s); the optimiser starts afresh (--resume continues a run instead)", group=MODEL, metavar="PATH",
        unset="none")
    # None (unset) becomes the --dataset's preset in __post_init__ (stored resolved, so saved runs,
    # resumes and sweep rows compare the loss that trains)
    loss: str | None = option(None, "loss preset: the paper's Table 3, or silog (BTS), silog_adabins, "
                              "silog_dav2 (Depth-Anything-V2), ssi (MiDaS, relative depth); docs/losses.md",
                              group=MODEL, choices=loss_presets,
                              unset="the --dataset's: hu_blurred for nyu (the paper's), silog for kitti (BTS's)")
    blur: bool | None = option(None, "override the preset's ground-truth blur for the gradient/normal terms",
                               group=MODEL, unset="the preset's")
    extra: dict = option({}, "further model overrides passed to fastmde.models.build (kernel_size, reduce, ...)",
                         group=MODEL, cli=False)
    # optimisation
    epochs: int = option(3, "training epochs", group=OPTIM, on_resume="apply")
    batch_size: int = option(1, "images per step (per process under DDP)", group=OPTIM, on_resume="convert")
    lr: float = option(1e-4, "Adam learning rate", group=OPTIM, on_resume="apply")
    lr_step: int | None = option(None, "multiply the lr by --lr-gamma every N epochs", group=OPTIM, metavar="N",
                                 unset="no step decay", on_resume="apply")
    lr_gamma: float = option(0.1, "factor of the --lr-step decay", group=OPTIM, on_resume="apply")
    cosine: bool = option(False, "cosine decay of the lr to 0 over --epochs, or over --time-limit if that ends "
                                 "first", group=OPTIM, on_resume="apply")
    warmup: int = option(0, "linear lr warm-up over STEPS steps", group=OPTIM, metavar="STEPS", on_resume="apply")
    ema: float | None = option(None, "validate, test and save as best the moving average of the weights with "
                                     "this per-step decay (e.g. 0.99)", group=OPTIM, metavar="DECAY", unset="off")
    seed: int = option(0, "seed of the data order, the hold-out and the augmentation", group=OPTIM)
    augment: bool = option(True, "the paper's augmentation (flip, colour, crop, rotation)", group=OPTIM)
    augment_parts: tuple[str, ...] = option(
        Augment.PARTS, "which transforms --augment applies, comma-separated from " + ",".join(Augment.PARTS),
        group=OPTIM, metavar="PARTS")
    # data
    data_format: str = option("synthetic", "dataset format (list: '<rgb> <depth> [focal]' lines; folder: photos "
                                           "and depth maps paired by name; docs/data.md)", group=DATA,
                              choices=DATA_FORMATS)
    data: str | None = option(None, "dataset path: .mat file or directory; the list file (list); the photo folder "
                                    "(folder)", group=DATA, unset="the synthetic cache")
    dataset: str = option("nyu", "benchmark setting, the defaults of --depth-scale, --kb-crop, --train-crop, "
                                 "--keep-aspect and the validation protocol (kitti: 256, on, 352x704, on, "
                                 "kitti_garg_kb)", group=DATA, choices=DATASET_NAMES)
    image_root: str | None = option(None, "list: the folder the photo paths are relative to", group=DATA,
                                    metavar="DIR", unset="the list's folder")
    depth_root: str | None = option(None, "list: the folder the depth paths are relative to; folder: the depth-map "
                                          "folder", group=DATA, metavar="DIR", unset="the list's folder")
    depth_scale: float | None = option(None, "list, folder: the 16-bit depth PNG value of one metre (.npy depth is "
                                             "metres)", group=DATA, metavar="SCALE",
                                unset="the --dataset's: nyu 1000, kitti 256")
    kb_crop: bool | None = option(None, "list, folder: keep the bottom 352 rows and central 1216 columns of every "
                                        "frame (KITTI)", group=DATA, unset="the --dataset's: on for kitti")
    train_crop: tuple[int, int] | None = option(
        None, "cut every training frame to HxW at random (a smaller frame is enlarged to cover it first); frames "
              "of different sizes need it", group=DATA, metavar="HxW", unset="the --dataset's: kitti 352x704, nyu "
                                                                           "none")
    cache_dir: str | None = option(None, "where the synthetic dataset is generated once", group=DATA,
                                   unset="fastmde's cache folder", on_resume="apply", result=False)
    synthetic_train: int = option(400, "synthetic training frames", group=DATA)
    # Formerly synthetic_val: the frames layout names its test split "val" (NYU's val/official),
    # but these frames are the test set; validation is --val-fraction of the training frames.
    synthetic_test: int = option(40, "held-out synthetic test frames, one room each: the test split (validation "
                                     "is --val-fraction of the training frames; formerly --synthetic-val)",
                                 group=DATA, former=("synthetic_val",))
    synthetic_size: tuple[int, int] = option((480, 640), "frame size HxW of the synthetic data (NYU: 480x640)",
                                             group=DATA)
    synthetic_views: int = option(4, "synthetic training frames per room (held-out frames are one per room)",
                                  group=DATA)
    val_fraction: float = option(0.03, "validation hold-out of the training split", group=DATA)
    val_by_scene: bool = option(False, "hold out whole scenes (per-frame layout)", group=DATA)
    limit_train: int | None = option(None, "use only the first N training items", group=DATA, metavar="N",
                                     unset="all")
    # speed
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...", group=SPEED, on_resume="apply", result=False)
    amp: str = option("auto", "autocast dtype (auto: bf16 on CUDA and on CPUs with bf16 matrix units, none on other CPUs)", group=SPEED, choices=AMP_CHOICES,
                      on_resume="apply")
    channels_last: str = option("auto", "channels_last memory format (auto: on CUDA and on CPUs with bf16 matrix units)", group=SPEED,
                                choices=SWITCH_CHOICES, on_resume="apply", result=False)
    compile: str = option("auto", "torch.compile the model (auto: off)", group=SPEED, choices=SWITCH_CHOICES,
                          on_resume="apply", result=False)
    workers: int = option(-1, "data loader workers (-1: auto)", group=SPEED, on_resume="apply", result=False)
    # run control
    out: str = option("runs/train", "run directory: checkpoints, log.jsonl, summary.json", group=RUN,
                      on_resume="apply", result=False)
    max_steps: int | None = option(None, "stop (resumably) after this many steps in all", group=RUN, metavar="N",
                                   unset="no limit", on_resume="apply")
    time_limit: float | None = option(None, "stop (resumably) after this many seconds of training, validation "
                                            "included", group=RUN, metavar="SECONDS", unset="no limit",
                                      on_resume="apply")
    save_every: int | None = option(None, "also checkpoint every N steps", group=RUN, metavar="N", unset="per epoch",
                                    on_resume="apply", result=False)
    val_every: int | None = option(None, "also validate (and checkpoint) every N steps, for a denser validation "
                                         "curve", group=RUN, metavar="N", unset="per epoch", on_resume="apply",
                                   result=False)
    best_metric: str = option("delta1", "validation metric that chooses best.pt", group=RUN,
                              choices=tuple(sorted(BEST_METRICS)), result=False)
    eval_batch_size: int = option(4, "images per batch in validation and testing", group=RUN, on_resume="apply",
                                  result=False)
    progress: bool | None = option(None, "progress bar on stderr (tqdm); --progress also when stderr is not a "
                                         "terminal (a line every 30 s, for logs), --no-progress never", group=RUN,
                                   on_resume="apply", result=False, unset="on a terminal only")

    def __post_init__(self):
        self.size = parse_internal_size(self.size, what=_named("size"))   # export --internal-size's rule too
        self.synthetic_size = parse_size(self.synthetic_size, what=_named("synthetic_size"), minimum=8)
        self.augment_parts = parse_parts(self.augment_parts)
        if self.train_crop is not None:
            self.train_crop = parse_size(self.train_crop, what=_named("train_crop"), minimum=8)
        self.extra = dict(self.extra or {})
        if self.loss is None:        # the --dataset's preset (data/settings.py): silog for KITTI's sparse depth
            from ..data.settings import dataset_setting

            self.loss = dataset_setting(self.dataset).loss
        # --encoder / --normalize are options of their own; configurations saved before they were
        # (and Python callers) may carry them in ``extra``: one canonical place.
        for name in ("encoder", "normalize"):
            if name in self.extra:
                value = self.extra.pop(name)
                if getattr(self, name) is not None and getattr(self, name) != value:
                    raise ValueError(f"{_named(name)} is given twice, as {getattr(self, name)!r} and extra[{name!r}] = "
                                     f"{value!r}")
                setattr(self, name, value)
        for f in fields():
            choices = choices_of(f)
            value = getattr(self, f.name)
            if choices is not None and value is not None and value not in choices:
                raise ValueError(f"{_named(f.name)} must be one of {', '.join(map(str, choices))}; got {value!r}")
        if self.data_format != "synthetic" and not self.data:
            raise ValueError(f"{_named('data_format')} {self.data_format} needs the dataset's path, {_named('data')}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_named(name)} must be a positive integer, got {getattr(self, name)}")
        if self.workers < -1:
            raise ValueError(f"{_named('workers')} must be -1 (auto) or a number of processes >= 0, got {self.workers}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"{_named('lr')} must be a positive number, got {self.lr}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"{_named('val_fraction')} must be in (0, 1), got {self.val_fraction}")
        for name in ("max_steps", "save_every", "val_every", "lr_step", "limit_train"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{_named(name)} must be a positive integer, got {value}")
        if self.cosine and self.lr_step:
            raise ValueError(f"choose one learning-rate decay, step or cosine: {_named('lr_step')} or "
                             f"{_named('cosine')}, not both")
        if self.warmup < 0:
            raise ValueError(f"{_named('warmup')} must be a number of steps >= 0, got {self.warmup}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"{_named('ema')} must be a decay in (0, 1) such as 0.99, got {self.ema}")
        for name in ("synthetic_train", "synthetic_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_named(name)} must be a positive number of frames, got {getattr(self, name)}")
        if self.synthetic_views < 1:
            raise ValueError(f"{_named('synthetic_views')} must be at least 1 frame per training room, got "
                             f"{self.synthetic_views}")
        self._check_split_sizes()
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"{_named('time_limit')} must be positive seconds, got {self.time_limit}")
        if self.init_from is not None and self.pretrained not in (None, "auto", "none"):
            raise ValueError(f"choose one initialisation, of the whole model or of the encoder: {_named('init_from')} "
                             f"or {_named('pretrained')}")
        self._check_file_options()
        self._refuse_options_without_effect()

    def _check_split_sizes(self) -> None:
        """The validation hold-out (``--val-fraction``, at least one item) needs a training split of
        two items or more; for the synthetic data this is known before a frame is rendered."""
        if self.limit_train is not None and self.limit_train < 2:
            raise ValueError(f"{_named('limit_train')} must be at least 2 (one item is held out for validation), "
                             f"got {self.limit_train}")
        if self.data_format != "synthetic" or self.data is not None:
            return
        n = self.synthetic_train if self.limit_train is None else min(self.synthetic_train, self.limit_train)
        if n < 2:
            raise ValueError(f"{_named('synthetic_train')} must be at least 2: one frame is held out for validation "
                             f"(--val-fraction), and training needs another; got {n}")
        rooms = -(-n // self.synthetic_views)
        if self.val_by_scene and rooms < 2:
            raise ValueError(f"--val-by-scene holds out whole rooms, and {n} synthetic training frames at "
                             f"{self.synthetic_views} per room (--synthetic-views) make {rooms} room: give more "
                             "--synthetic-train or fewer --synthetic-views")

    def _refuse_options_without_effect(self) -> None:
        """An option that the rest of the configuration makes meaningless is a mistake to name,
        not to ignore: each pair is refused with both flags."""
        from ..reference.depth_loss import PRESETS

        if not self.augment and self.augment_parts != default_of("augment_parts"):
            raise ValueError(f"{_named('augment_parts')} chooses among the transforms of --augment, which is off "
                             "(--no-augment): drop one of them")
        preset = PRESETS.get(self.loss, {})
        if self.blur is not None and not (preset.get("gradient") or preset.get("normal")):
            raise ValueError(f"{_named('blur')} sets the ground-truth blur of the gradient and normal terms, and loss "
                             f"{self.loss!r} (--loss) has neither: drop --blur/--no-blur or choose a loss with them")
        if not self.lr_gamma > 0:
            raise ValueError(f"{_named('lr_gamma')} must be a positive factor, got {self.lr_gamma}")
        if self.lr_step is None and self.lr_gamma != default_of("lr_gamma"):
            raise ValueError(f"{_named('lr_gamma')} is the factor of the --lr-step decay, which is off: "
                             "pass --lr-step N too, or drop --lr-gamma")
        if self.data_format != "synthetic":
            changed = [name for name in ("synthetic_train", "synthetic_test", "synthetic_size", "synthetic_views")
                       if getattr(self, name) != default_of(name)]
            if changed:
                raise ValueError(f"{', '.join(_named(name) for name in changed)} describe(s) the synthetic data, "
                                 f"and --data-format is {self.data_format}: drop them")

    def to_dict(self) -> dict:
        """Plain JSON values (sizes and parts as lists): the configuration saved in checkpoints."""
        out = dataclasses.asdict(self)
        for name, value in out.items():
            if isinstance(value, tuple):
                out[name] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = current_names(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **current_names(changes)})

    def _check_file_options(self) -> None:
        """The file-list and folder options name what they apply to; elsewhere they are refused."""
        files = self.data_format in FILE_FORMATS
        if self.dataset != "nyu" and not files:
            raise ValueError(f"--dataset {self.dataset} reads its files through --data-format list or folder, not "
                             f"{self.data_format}")
        wrong = [name for name in ("image_root", "depth_root", "depth_scale", "kb_crop")
                 if getattr(self, name) is not None and not files]
        if wrong:
            raise ValueError(f"{', '.join(_flag_named(name) for name in wrong)}: only for --data-format list or "
                             f"folder, and --data-format is {self.data_format}: drop them")
        if self.image_root is not None and self.data_format == "folder":
            raise ValueError(f"{_flag_named('image_root')} is for --data-format list; the folder format reads its "
                             "photos in --data: drop it")
        if self.data_format == "folder" and self.depth_root is None:
            raise ValueError("--data-format folder needs --depth-root (the depth-map folder; --data is the photo folder)")
        if self.depth_scale is not None and not (self.depth_scale > 0 and math.isfinite(self.depth_scale)):
            raise ValueError(f"{_flag_named('depth_scale')} must be a positive number (NYU 1000, KITTI 256), got "
                             f"{self.depth_scale}")

    def setting(self, name: str):
        """The value in effect of ``depth_scale``, ``kb_crop``, ``train_crop``, ``keep_aspect`` or
        ``max_depth``: the option's own, or the ``--dataset``'s (``fastmde.data.settings``) when unset."""
        from ..data.settings import dataset_setting

        value = getattr(self, name, None)
        return getattr(dataset_setting(self.dataset), name) if value is None else value

    def encoder_weights(self) -> str | None:
        """What ``--pretrained`` means for this run: ``"imagenet"``, a file, or None (random).

        ``auto``: ImageNet on real data (the paper's start), random on the synthetic data and under
        ``--init-from`` (which replaces every weight)."""
        if self.pretrained in (None, "none"):
            return None
        if self.pretrained == "auto":
            return None if self.data_format == "synthetic" or self.init_from is not None else "imagenet"
        return self.pretrained

    def model_overrides(self) -> dict:
        """The keyword overrides of ``fastmde.models.build`` (``--encoder``, ``--normalize``, ``extra``,
        ``aspect="keep"`` under ``--keep-aspect``)."""
        overrides = dict(self.extra)
        for name in ("encoder", "normalize"):
            if getattr(self, name) is not None:
                overrides[name] = getattr(self, name)
        if self.setting("keep_aspect"):
            overrides["aspect"] = "keep"
        return overrides

    def model_name(self) -> str:
        """The name of the network this run trains (``fastmde.models.variant_name``): ``--model``
        with ``--encoder`` (and ``extra``'s kernel size / reduction) applied, e.g. ``unet18-k3-1x1``
        for ``--model unet34-k3-1x1 --encoder 18``. Every log line and record that names the model
        uses it."""
        from ..models import variant_name

        return variant_name(self.model, **self.model_overrides())

    def model_spec(self) -> dict:
        """What ``fastmde.models.build`` needs to rebuild the network (stored in checkpoints), and
        ``variant``: the network's name (:meth:`model_name`; a record for readers of the file, the
        loader derives it from ``name`` and ``overrides``)."""
        return {"name": self.model, "size": list(self.size), "overrides": self.model_overrides(),
                "variant": self.model_name()}


def _flag_named(name: str) -> str:
    """``"depth_scale (--depth-scale)"``: an option as Python callers and the command line know it."""
    return f"{name} (--{name.replace('_', '-')})"


# ---------------------------------------------------------------- derived from the fields

def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(TrainConfig)


def current_names(options: dict) -> dict:
    """``options`` with the former names of options (``synthetic_val``) replaced by the current
    ones (``synthetic_test``): configurations saved before a rename, and sweep rows, still read.

    Raises ValueError when an option is given under both names with different values."""
    out = dict(options)
    for f in fields():
        for old in f.metadata.get("former", ()):
            if old in out:
                value = out.pop(old)
                if f.name in out and out[f.name] != value:
                    raise ValueError(f"{_named(f.name)} is given twice, as {out[f.name]!r} and under its former name "
                                     f"{old} = {value!r}")
                out[f.name] = value
    return out


def _named(name: str) -> str:
    """``"epochs (--epochs)"``: an option as Python callers and the command line both know it."""
    f = next(f for f in fields() if f.name == name)
    return f"{name} ({flag_of(f)})"


def choices_of(f: dataclasses.Field):
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def default_of(name: str):
    """The default value of option ``name`` (e.g. for another command that shares it)."""
    f = next((f for f in fields() if f.name == name), None)
    if f is None:
        raise KeyError(f"no training option {name!r}")
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def option_text(value) -> str:
    """An option's value as it is typed on the command line (sizes ``HxW``, lists comma-separated;
    an option not given: ``unset``)."""
    if value is None:
        return "unset"
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return format_size(value)
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _base_type(annotation):
    """``int | None`` -> int; ``tuple[int, int]`` -> tuple; plain types unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return tuple
    if args and origin is not None and origin is not tuple:
        return args[0]
    return annotation


def add_option(parser, name: str, **changes) -> argparse.Action:
    """Add option ``name``'s command-line argument to ``parser``, as ``fastmde train`` has it.

    Another command that shares an option (``fastmde eval --amp``, ``--device``...) calls this,
    so that choices and defaults have one definition; ``changes`` override argparse keywords
    (e.g. ``default=None, help=...``)."""
    f = next((f for f in fields() if f.name == name), None)
    if f is None:
        raise KeyError(f"no training option {name!r}")
    return _add(parser, f, **changes)


def _add(parser, f: dataclasses.Field, **changes) -> argparse.Action:
    kind = _base_type(typing.get_type_hints(TrainConfig)[f.name])
    meta = f.metadata
    default = default_of(f.name)
    kwargs = dict(dest=f.name, default=None if default is None else
                  (option_text(default) if kind is tuple and default is not None else default), metavar=meta.get("metavar"))
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = {int: int, float: float}.get(kind, str)
        kwargs["choices"] = choices_of(f)
    kwargs.update(changes)
    help_text = kwargs.pop("help", meta["help"])
    if help_text and "%(default)" not in help_text:
        if kwargs.get("default") is None:
            help_text += f" (default: {meta.get('unset') or 'none'})" if "default" not in changes else ""
        else:
            help_text += " (default: %(default)s)"
    kwargs["help"] = help_text
    if kwargs.get("metavar") is None:
        kwargs.pop("metavar")
    action = parser.add_argument(flag_of(f), **kwargs)
    for old in meta.get("former", ()):     # hidden, and said to be a former name when used
        former = dict(kwargs, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        former.pop("action", None)
        parser.add_argument("--" + old.replace("_", "-"), action=_former_name(flag_of(f)), **former)
    return action


def _former_name(flag: str) -> type:
    """An argparse action storing like ``store`` that warns that ``flag`` is the option's name now."""

    class FormerName(argparse._StoreAction):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"fastmde: {option_string} is the former name of {flag}; it still works", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    return FormerName


def add_arguments(parser) -> None:
    """Every command-line training option, in its group (one loop over the fields)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields():
        if not f.metadata.get("cli", True):
            continue
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        _add(groups[group], f)


def config_from_args(args) -> TrainConfig:
    """The :class:`TrainConfig` of parsed command-line arguments (options absent keep their default)."""
    given = {f.name: getattr(args, f.name) for f in fields() if f.metadata.get("cli", True) and hasattr(args, f.name)}
    return TrainConfig(**given)


# ---------------------------------------------------------------- comparing two configurations

def compare_configs(saved: TrainConfig, new: TrainConfig) -> dict[str, list[tuple[str, object, object]]]:
    """The options that differ between two configurations, by resume rule.

    Returns ``{"apply": [...], "convert": [...], "fixed": [...]}``, each a list of
    ``(name, saved value, new value)``; values compared in their saved (JSON) form."""
    a, b = saved.to_dict(), new.to_dict()
    out: dict[str, list] = {rule: [] for rule in RESUME_RULES}
    for f in fields():
        if a[f.name] != b[f.name]:
            out[f.metadata["on_resume"]].append((f.name, a[f.name], b[f.name]))
    return out


def result_differences(saved: TrainConfig, new: TrainConfig) -> list[tuple[str, object, object]]:
    """The options that change a run's result (``result=True``) and differ: ``(name, saved, new)``."""
    a, b = saved.to_dict(), new.to_dict()
    return [(f.name, a[f.name], b[f.name]) for f in fields() if f.metadata["result"] and a[f.name] != b[f.name]]


def describe_differences(differences, *, old: str = "saved", new: str = "now") -> str:
    """``"lr 0.001 (saved) -> 1e-05 (now), epochs ..."`` with command-line names and values."""
    return ", ".join(f"{flag_of(next(f for f in fields() if f.name == name))} {option_text(a)} ({old}) -> "
                     f"{option_text(b)} ({new})" for name, a, b in differences)
