"""The training loop: the paper's recipe with resumable checkpoints, AMP and DDP.

Exact resumption. The state after every step is (weights, optimiser, scheduler, scaler, RNG
states, epoch, batch within the epoch, step). The data order of an epoch depends only on
(seed, epoch, rank, world size) (:class:`ResumableDistributedSampler`), and the augmentation
generator is re-seeded from (seed, step, rank) before every step, so a run resumed from a
checkpoint taken mid-epoch continues with exactly the batches, augmentations and updates the
uninterrupted run would have made: on CPU the final weights are bitwise identical.

Ctrl-C saves the state at the end of the last completed step, wherever it lands. A step is all
or nothing (:meth:`Trainer.train_step`): its forward and backward may be cut short (they change
only the gradients, BatchNorm's running statistics and the random generators, which are put
back from their copy taken when the previous step completed), and its update (optimiser,
grad scaler, schedule, weight average) is applied together with the step counter and the
position in the epoch while Ctrl-C is held. The cut-short step is trained again on resume. A
validation cut short or not begun (at a ``--val-every`` point, an epoch's end, a limit's stop) is
run when the run resumes, and validation draws nothing from the training's random generators.

Resuming with changed options (``--resume``; :func:`resume_differences`). Every option is
compared with the configuration saved in ``last.pt``, by the rule its ``TrainConfig`` field
declares: the learning rate, the schedule, the epochs, the limits, logging and speed options
are applied from the resume on (the rate curve restarts from the current position with the new
values; the change is logged and kept in the checkpoint's ``option_changes``); the batch size
is converted (the position within the epoch is kept in samples, so the epoch's remaining items
are each trained on once, the last batch possibly shorter); anything else (model, size, loss,
data, seed, augmentation, ``--ema``) is refused with an error naming each option and both
values. The saved configuration is always the one that ran last.

Before any data is built, :func:`check_trainable` refuses a (model, size, batch size) that
BatchNorm cannot train (a 1x1 deepest map at batch 1), naming the smallest size that can.

Files in ``cfg.out`` (rank 0 only): ``last.pt`` (every epoch, every ``save_every`` steps and
when stopped), ``best.pt`` (best validation ``best_metric``), ``log.jsonl`` (one record per
epoch, and one marked ``partial`` when a run stops mid-epoch), ``summary.json``.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import os
import random
import time
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import distributed as D
from .._checks import check_depth_units, nonfinite_message, nonfinite_tensors
from .._atomic import atomic_write_text
from .._outputs import make_output_folder, remove_empty_folders
from .checkpoint import atomic_save, capture_rng_states, interrupts_deferred, load_weights, read_checkpoint, restore_rng_states
from .checkpoint import clean_output_folder
from .checkpoint import FORMAT, VERSION, CheckpointError
from .config import BEST_METRICS, TrainConfig, compare_configs, config_from_args, describe_differences
from .datasets import batches
from .ema import WeightAverage
from .optim import Adam
from ..nn import banded_conv
from .schedule import make_scheduler
from ..reference.depth_metrics import METRIC_NAMES
from .evaluate import evaluate
from .inference import to_images
from ..data._common import DataFormatError
from ..data.fit import collate_frames
from .progress import Progress, format_seconds, log_line
from .speed import (autocast, describe_scoring, describe_speed_choice, make_scaler, resolve_amp, resolve_channels_last,
                    resolve_device, resolve_switch, resolve_workers, scoring_precision, tune_cpu_allocator)


class TrainingDiverged(RuntimeError, ValueError):
    """The run diverged (a non-finite training loss, predictions beyond :data:`DIVERGED_DEPTH_M`,
    or a validation whose predictions hold NaN): a user-fixable outcome (--lr, --amp), which the
    command reports in one line (a ValueError)."""


#: A training step whose predictions have a median magnitude above this many metres has diverged:
#: no depth in metres comes near 1000 km (NYU's range ends at 10 m, KITTI's at 80 m, a LiDAR's at a
#: few hundred), while a run that explodes passes it on its way to float32's 3.4e38 and inf; its
#: loss can stay finite (a logarithmic loss of 1e30 m is 69). The median (over every 16th row and
#: column of the batch's maps: 26 µs at 8x480x640 on the 2-vCPU AMD EPYC, 1.4 ms over every 4th)
#: is not moved by a few wild pixels of an early step.
DIVERGED_DEPTH_M = 1e6


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the augmentation generator for a step: a function of (seed, step, rank) only."""
    return ((seed * 1_000_003 + step) * 4099 + rank) % (2**63 - 1)


def make_loss(cfg: TrainConfig):
    from ..nn import DepthLoss
    from ..reference.depth_loss import PRESETS
    from ..reference.scale_invariant_loss import PRESETS as SI_PRESETS

    if cfg.loss in SI_PRESETS:
        from ..nn import ScaleInvariantLoss

        if cfg.loss == "ssi":
            import warnings

            warnings.warn("loss 'ssi' trains relative depth (right up to a per-image scale and shift): the "
                          "validation and test metrics compare the raw prediction with metric ground truth and "
                          "do not measure it (see docs/losses.md)", UserWarning, stacklevel=2)
        return ScaleInvariantLoss(cfg.loss)
    if cfg.blur is None:
        return DepthLoss(cfg.loss)
    if cfg.loss not in PRESETS:
        raise ValueError(f"loss must be one of {sorted(PRESETS)}, got {cfg.loss!r}")
    options = dict(PRESETS[cfg.loss])
    options["blur"] = bool(cfg.blur)
    return DepthLoss(None, **options)


def unwrap(model):
    """The plain module under DDP and torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def fused_adam_supported(device: torch.device) -> bool:
    """Adam's fused kernel (one pass over all parameters; ~8% of a small CPU model's step)."""
    return device.type in ("cpu", "cuda")


def metric_improved(value: float, best: float | None, metric: str, values: dict | None = None) -> bool:
    """Whether ``value`` of ``metric`` beats ``best``. Never for a validation with any NaN metric
    (``values``): a NaN prediction makes RMS NaN while δ counts it as a miss, so a network that
    predicts NaN would otherwise become best.pt on a δ tie."""
    if values is not None and any(math.isnan(float(values[k])) for k in METRIC_NAMES if k in values):
        return False
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if BEST_METRICS[metric] else value < best


# ---------------------------------------------------------------- checks before a run starts

# Validation, the final test and best.pt use fastmde's own convention (per-image, 1e-3..10 m,
# predictions clamped): the paper authors' code clamps nothing, so a negative prediction would
# count as a δ hit there and an untrained model could become "best".
VALIDATION_PROTOCOL = "fastmde"


def describe_start(cfg: TrainConfig, weights: str | None) -> str:
    """The log line saying which weights the encoder starts from, and why."""
    if weights is None:
        why = ("--pretrained none" if cfg.pretrained in (None, "none") else
               "on the synthetic data --pretrained auto starts from random weights; --pretrained imagenet for the "
               "paper's ImageNet start")
        return f"encoder: random initialisation ({why})"
    if weights == "imagenet":
        from ..models import variants
        from ..models.imagenet import cache_dir, file_name

        depth = cfg.encoder or variants()[cfg.model]["config"]["encoder"]
        return f"encoder: torchvision's ImageNet weights, as the paper ({file_name(depth)} in {cache_dir()})"
    return f"encoder: weights of {weights}"


def describe_loss(cfg: TrainConfig) -> str:
    """``loss silog (--dataset kitti's default; --loss to change)``: the loss of the start line, and
    where it came from when the ``--dataset`` chose it (``data/settings.py``)."""
    from ..data.settings import dataset_setting

    if cfg.dataset != "nyu" and cfg.loss == dataset_setting(cfg.dataset).loss:
        return f"loss {cfg.loss} (--dataset {cfg.dataset}'s default; --loss to change)"
    return f"loss {cfg.loss}"


def validation_protocol(cfg: TrainConfig) -> str:
    """The protocol validation, the final test and best.pt use: ``VALIDATION_PROTOCOL`` for NYU;
    for ``--dataset kitti`` BTS's KITTI evaluation (1e-3 < y < 80 m, predictions clamped, the Garg
    crop) on the frames validated: ``kitti_garg_kb`` on kb-cropped ones, else ``kitti_garg``."""
    if cfg.dataset == "kitti":
        return "kitti_garg_kb" if cfg.setting("kb_crop") else "kitti_garg"
    return VALIDATION_PROTOCOL

#: the files a run writes in its folder (``--overwrite`` removes an earlier run's)
RUN_FILES = ("last.pt", "best.pt", "log.jsonl", "summary.json")

#: options the learning-rate schedule reads: a resume that changes one restarts the curve from there
SCHEDULE_OPTIONS = frozenset({"lr", "lr_step", "lr_gamma", "cosine", "warmup", "epochs", "time_limit", "batch_size"})


@functools.lru_cache(maxsize=None)
def _total_stride(model: str, overrides: tuple) -> int:
    """Input side / side of the smallest map any BatchNorm of the model sees (ResNet encoders: 32).

    Measured on the meta device (shapes only, no weights, no time): a probe image's smallest
    BatchNorm input."""
    from .. import models

    probe = 512
    with torch.device("meta"):
        net = models.build(model, size=(probe, probe), **dict(overrides)).eval()
    sides = []
    hooks = [m.register_forward_pre_hook(lambda module, inputs: sides.append(min(inputs[0].shape[-2:])))
             for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    try:
        with torch.no_grad():
            net(torch.empty(1, 3, probe, probe, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return probe // min(sides) if sides else 1


def deepest_map(cfg: TrainConfig) -> tuple[int, tuple[int, int]]:
    """(total stride s, (ceil(H / s), ceil(W / s))): the model's smallest BatchNorm map at ``cfg.size``."""
    stride = _total_stride(cfg.model, tuple(sorted(cfg.model_overrides().items())))
    return stride, (-(-cfg.size[0] // stride), -(-cfg.size[1] // stride))


def smallest_trainable_batch(cfg: TrainConfig) -> int:
    """1, or 2 where the deepest map is 1x1 (BatchNorm needs more than one value per channel)."""
    _, (h, w) = deepest_map(cfg)
    return 1 if h * w > 1 else 2


def check_trainable(cfg: TrainConfig, world_size: int = 1) -> None:
    """Refuse (ValueError naming ``--size`` and ``--batch-size``) a configuration whose training
    step BatchNorm cannot take: batch x the deepest map's H x W must exceed 1 in every process
    (each of the ``world_size`` processes normalises its own batch of ``batch_size`` images)."""
    from ..models.trainable import untrainable_message

    stride, _ = deepest_map(cfg)
    batch = cfg.batch_size
    message = untrainable_message(
        cfg.model_name(), *cfg.size, batch, stride, size_words=lambda h, w: f"--size {h}x{w}",
        batch_words=lambda b: f"--batch-size {b}", larger_batch="use --batch-size 2",
        each=f"process's batch ({batch} image(s) in each of {world_size} process(es))")
    if message is not None:
        raise ValueError(message)
    if cfg.data_format == "synthetic" and cfg.data is None and not cfg.val_by_scene:
        # the synthetic split's sizes are known before a frame is rendered (data.splits.held_out_count)
        from ..data.splits import held_out_count

        n = cfg.synthetic_train if cfg.limit_train is None else min(cfg.synthetic_train, cfg.limit_train)
        message = too_few_items(cfg, -(-(n - held_out_count(n, cfg.val_fraction)) // world_size), world_size,
                                more="more --synthetic-train frames")
        if message is not None:
            raise ValueError(message)


def too_few_items(cfg: TrainConfig, items: int, world_size: int, more: str = "more training data") -> str | None:
    """The refusal of ``items`` training items per process per epoch (fewer than a batch: the epoch
    is one partial batch) when BatchNorm cannot train on that batch, else None."""
    if items >= cfg.batch_size or items >= smallest_trainable_batch(cfg):
        return None
    return (f"each of the {world_size} process(es) gets {items} training item(s) per epoch, one batch smaller than "
            f"--batch-size {cfg.batch_size}, and {cfg.model_name()} at --size {cfg.size[0]}x{cfg.size[1]} cannot "
            f"train on a batch of {items} (BatchNorm at its 1x1 deepest map): use {more} or fewer processes")


def check_paths(cfg: TrainConfig) -> None:
    """Refuse, before any work, a path option that cannot be what it names: ``--pretrained`` and
    ``--init-from`` must exist (their contents are read when the model is built, which is also
    before any data), ``--data``, ``--image-root`` and ``--depth-root`` must exist, ``--data`` must
    be the kind its format reads (``datasets.check_data_path``), and ``--out`` / ``--cache-dir`` must
    be folders that can be made and written (``fastmde._outputs``). Errors name the flag and the path."""
    weights = cfg.encoder_weights()        # a file, "imagenet" (checked when the model is built) or None
    weights = None if weights == "imagenet" else weights
    for flag, path in (("--pretrained", weights), ("--init-from", cfg.init_from), ("--data", cfg.data),
                       ("--image-root", getattr(cfg, "image_root", None)),
                       ("--depth-root", getattr(cfg, "depth_root", None))):
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{flag} {path!r} does not exist")
    if weights is not None and os.path.isdir(weights):
        raise IsADirectoryError(f"--pretrained {weights!r} is a folder; it takes a weights file (.pth)")
    if cfg.init_from is not None:
        from .checkpoint import check_checkpoint_argument

        check_checkpoint_argument(cfg.init_from, "--init-from")     # a folder without best.pt / last.pt
    if cfg.data is not None:
        from .datasets import check_data_path

        check_data_path(cfg.data_format, cfg.data)     # a file where the format reads a folder, or the reverse
    for flag, path in (("--image-root", cfg.image_root), ("--depth-root", cfg.depth_root)):
        if path is not None and not os.path.isdir(path):
            raise ValueError(f"{flag} {path!r} is a file; it names a folder")
    from .._outputs import check_output_folder

    for flag, path in (("--out", cfg.out), ("--cache-dir", cfg.cache_dir)):
        if path is not None:        # a file, a path below a file, a folder that cannot be written
            check_output_folder(path, flag)


def resume_differences(ckpt: dict, cfg: TrainConfig, path: str) -> list[tuple[str, object, object]]:
    """The options that differ from the saved run and may change: ``(name, saved, new)``.

    Raises :class:`CheckpointError` naming every option that may not change (model, size, loss,
    data, seed, ...) with both values."""
    try:
        saved = TrainConfig.from_dict(ckpt["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"--resume: {path!r} holds no readable training configuration ({exc})") from None
    differences = compare_configs(saved, cfg)
    if differences["fixed"]:
        raise CheckpointError(
            f"--resume: {path!r} was trained with other options that cannot change mid-run: "
            + describe_differences(differences["fixed"])
            + "; resume with the saved values, or start a new run (another --out, or --overwrite)")
    return differences["apply"] + differences["convert"]


def init_weights_from(model, path: str, variant: str) -> None:
    """Copy every weight of the model in checkpoint ``path`` (anything ``fastmde.load`` reads) into
    ``model``, a fresh ``variant``; the optimiser state is not touched (that is ``--resume``)."""
    from ..models import variant_name
    from .checkpoint import load_checkpoint_argument

    loaded = load_checkpoint_argument(path, "--init-from", warn_nonfinite=False)   # a damaged file named with its flag
    broken = nonfinite_tensors(loaded)
    if broken:   # training from NaN/inf weights stops at the first step with advice that does not apply
        raise CheckpointError(nonfinite_message(f"--init-from {path!r}", broken) + ": start from another checkpoint")
    source = getattr(loaded, "fastmde_variant", None)
    if source is None:
        spec = read_checkpoint(path)["model_spec"]
        source = variant_name(spec["name"], **spec.get("overrides", {}))
    if source != variant:
        raise CheckpointError(f"--init-from {path!r} holds a {source} model, but --model/--encoder make a {variant}: "
                              f"pass the --model and --encoder of a {source}, or a checkpoint of {variant}")
    # The input normalisation is not a weight: a model trained on ImageNet-normalised input (Hu
    # et al.'s) fine-tuned on raw 0-255 input would load but start from nonsense.
    want, have = _input_normalisation(unwrap(model)), _input_normalisation(loaded)
    if want != have:
        raise CheckpointError(f"--init-from {path!r}: its model {'applies' if have else 'does not apply'} the "
                              f"ImageNet mean/std to its input, this run's {'does' if want else 'does not'}: "
                              f"pass {'--normalize' if have else '--no-normalize'}")
    try:
        unwrap(model).load_state_dict(loaded.state_dict())
    except RuntimeError as exc:
        raise CheckpointError(f"--init-from {path!r}: its {source} weights do not fit this run's model "
                              f"(do --encoder / the model overrides differ?): {str(exc).splitlines()[0]}") from None


def _input_normalisation(model) -> bool | None:
    """Whether ``model``'s ResNet encoder applies the ImageNet mean/std (None: it has no ResNet)."""
    from ..models.resnet import ResNetEncoder

    return next((m.normalize for m in model.modules() if isinstance(m, ResNetEncoder)), None)


class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig`; :meth:`fit` trains."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, log=None,
                 test: bool = True):
        from .. import data, models
        from .datasets import build_datasets

        if resume and overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite starts it again: pass one of them")
        self.cfg = cfg
        self.log = log or log_line    # stderr, above the progress bar
        pre_device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.info = D.setup(pre_device.type)
        self.device = resolve_device(cfg.device, self.info.local_rank)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.channels_last = resolve_channels_last(cfg.channels_last, self.device)
        self.speed_choice = describe_speed_choice(cfg.amp, cfg.channels_last, self.device)
        # Validation and the final test score as fastmde eval does by default (its precision, NCHW):
        # the printed numbers and best.pt's choice are those eval gives for the checkpoints.
        self.score_amp_dtype = scoring_precision(self.device)
        self.speed_choice += f"; {describe_scoring(self.device)}"
        if self.device.type == "cpu":
            allocator = tune_cpu_allocator()
            if allocator:
                self.speed_choice += f"; {allocator}"
        self.use_compile = resolve_switch(cfg.compile, self.device, cuda_default=False, cpu_default=False)
        self.workers = resolve_workers(cfg.workers, self.device)
        self.last_path = os.path.join(cfg.out, "last.pt")
        self.best_path = os.path.join(cfg.out, "best.pt")
        self.log_path = os.path.join(cfg.out, "log.jsonl")

        # Configurations that cannot train, and paths that cannot be what they name, are refused
        # before any data is built.
        check_trainable(cfg, self.info.world_size)
        check_paths(cfg)
        resume_ckpt, self.resume_changes = None, {}
        if resume:
            if not os.path.exists(self.last_path):
                raise FileNotFoundError(f"--resume: no checkpoint to resume in {cfg.out!r} (expected last.pt)")
            resume_ckpt = read_checkpoint(self.last_path)
            self.resume_changes = resume_differences(resume_ckpt, cfg, self.last_path)
        elif self.info.is_main and os.path.exists(self.last_path) and not overwrite:
            raise FileExistsError(
                f"{cfg.out!r} already holds a run (last.pt): pass --resume to continue it or --overwrite to start again"
            )
        #: --overwrite of a run: its files are removed when this run starts (fit), not mixed with it
        self.replaces_run = bool(overwrite and not resume and os.path.exists(self.last_path))

        seed_everything(cfg.seed)
        # The model first: a bad --pretrained or --init-from file is reported before the data is
        # built (rendering the synthetic set can take minutes). Nothing below draws from the
        # global generators, so the initial weights are those of building the model last.
        weights = cfg.encoder_weights()
        model = models.build(cfg.model, size=cfg.size, pretrained=weights, **cfg.model_overrides()).to(self.device)
        self.protocol = validation_protocol(cfg)
        if cfg.init_from is not None:
            init_weights_from(model, cfg.init_from, model.fastmde_variant)
        # Rank 0 generates the synthetic cache (if needed) before the others open it. Each reads
        # the first item of its splits: data that cannot train is refused here, before any line.
        if self.info.is_main:
            self.train_set, self.val_set, self.test_set = build_datasets(cfg, test=test)
        D.barrier(self.info)
        if not self.info.is_main:
            self.train_set, self.val_set, self.test_set = build_datasets(cfg, test=test)

        self.sampler = D.ResumableDistributedSampler(
            self.train_set, num_replicas=self.info.world_size, rank=self.info.rank, shuffle=True, seed=cfg.seed)
        # Full batches only: a last batch of a few items gives BatchNorm noisy batch statistics
        # (and running averages). Data smaller than one batch keeps its single partial batch.
        # An epoch trains on the first ``items_per_epoch`` items of its order (per process); the
        # position within it is counted in samples, so a resume at another batch size trains on
        # exactly the items the epoch has left.
        n = self.sampler.num_samples
        self.items_per_epoch = n // cfg.batch_size * cfg.batch_size if n >= cfg.batch_size else n
        self.steps_per_epoch = math.ceil(self.items_per_epoch / cfg.batch_size)
        message = too_few_items(cfg, self.items_per_epoch, self.info.world_size)
        if message is not None:
            raise ValueError(message)
        if self.info.is_main:     # said once every check has passed: a refused run prints only its error
            self.log(describe_start(cfg, weights) if cfg.init_from is None else
                     f"initialised {model.fastmde_variant} from {cfg.init_from}")

        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = Adam(model.parameters(), lr=cfg.lr, fused=fused_adam_supported(self.device))
        self.elapsed, self.train_time = 0.0, 0.0   # elapsed: wall time of earlier invocations
        self._loop_start = None
        # The schedule is per step (warm-up, step decay at epoch boundaries, cosine; the cosine
        # also follows the clock when there is a time limit).
        self.scheduler = make_scheduler(self.optimizer, cfg, self.steps_per_epoch, clock=self.elapsed_now)
        self.scaler = make_scaler(self.device, self.amp_dtype)
        # Validation, best.pt and the final test use the averaged weights when --ema is given.
        self.average = WeightAverage(model, cfg.ema) if cfg.ema else None
        self.loss_fn = make_loss(cfg)
        self.augment = data.Augment.from_parts(cfg.augment_parts).to(self.device) if cfg.augment else None
        self.aug_generator = torch.Generator(device=self.device)

        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self._units_checked = False   # the depth units are looked at on this process's first batch
        self.images_seen = 0                # training images stepped on, all processes and resumes
        self.samples_in_epoch, self.epoch_items = 0, self.items_per_epoch   # this epoch, per process
        self.option_changes: list[dict] = []     # options changed by resumes: {"step", "changes"}
        self.epoch_loss = [0.0, 0]          # sum and count of this epoch's step losses
        self.best = None
        self.history: list[dict] = []
        self.resumed = resume_ckpt is not None
        #: a --val-every validation the saved run had not yet run (Ctrl-C): fit runs it first
        self._resume_validation = bool(resume_ckpt and resume_ckpt.get("validation_due"))
        if resume_ckpt is not None:
            self._load_state(resume_ckpt)
            self.log(f"resumed {self.last_path} at epoch {self.epoch + 1}, sample {self.samples_in_epoch} of "
                     f"{self.epoch_items}, step {self.step}")
            if self.resume_changes:
                self.log("resume: options changed from the saved run, applied from here: "
                         + describe_differences(self.resume_changes))
                self.option_changes.append({"step": self.step, "changes": {
                    name: [old, new] for name, old, new in self.resume_changes}})

        self.train_model = model
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.use_compile:
            self.train_model = torch.compile(self.train_model)

    # ------------------------------------------------------------ state

    def resolved_speed(self) -> dict:
        """What ``auto`` resolved to on this run's device (the configuration keeps ``auto``)."""
        return {"device": str(self.device),
                "amp": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "none",
                "channels_last": self.channels_last, "compile": self.use_compile,
                "choice": self.speed_choice}

    def state_dict(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION,
            "model_spec": self.cfg.model_spec(), "config": self.cfg.to_dict(),
            "resolved": self.resolved_speed(),
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": None if self.average is None else self.average.state_dict(),
            "rng": capture_rng_states(self.aug_generator),
            "sampler": {"seed": self.cfg.seed, "epoch": self.epoch, "start": self.samples_in_epoch,
                        "stop": self.epoch_items, "world_size": self.info.world_size},
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "images_seen": self.images_seen,
            "option_changes": self.option_changes,
            "elapsed": self.elapsed_now(), "train_time": self.train_time, "epoch_loss": list(self.epoch_loss),
            "best": self.best, "history": self.history, "validation_due": self.validation_due(),
            "conv_choices": banded_conv.choices_state(),
        }

    def _load_state(self, ckpt: dict) -> None:
        # the checks eval/predict/export run on a checkpoint's weights, and a diverged run's NaN/inf
        # weights refused: resuming them fails at the first step with advice that does not apply
        def resumed(module, weights, where):
            load_weights(module, weights, where, self.cfg.model)
            broken = nonfinite_tensors(module)
            if broken:
                raise CheckpointError(nonfinite_message(where, broken)
                                      + ": resume from an earlier checkpoint, or start again (--overwrite)")

        resumed(unwrap(self.model), ckpt["model"], f"--resume: {self.last_path!r}")
        self.optimizer.load_state_dict(ckpt["optimizer"])   # after the scheduler's set-up: keeps the saved lr
        if ckpt.get("scheduler") is not None:   # None: a constant-rate run saved before the per-step schedule
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.average is not None:
            if ckpt.get("ema") is None:
                raise CheckpointError(f"--resume: {self.last_path!r} was trained without --ema; "
                                      "resume it without --ema, or start a new run")
            self.average.load_state_dict(ckpt["ema"], load=lambda weights: resumed(
                self.average.module, weights, f"--resume: {self.last_path!r} (its --ema average)"))
        restore_rng_states(ckpt["rng"], self.aug_generator)
        banded_conv.restore_choices(ckpt.get("conv_choices"))   # the same summation order as before
        saved_world = ckpt.get("sampler", {}).get("world_size", 1)
        if saved_world != self.info.world_size and ckpt["batch_in_epoch"]:
            self.log(f"warning: resuming mid-epoch with {self.info.world_size} processes, saved with "
                     f"{saved_world}: the rest of this epoch's data order differs")
        self.epoch, self.batch_in_epoch, self.step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        self.elapsed, self.train_time = ckpt.get("elapsed", 0.0), ckpt.get("train_time", 0.0)
        self.epoch_loss = list(ckpt.get("epoch_loss", [0.0, 0]))
        self.best, self.history = ckpt.get("best"), list(ckpt.get("history", []))
        self.option_changes = list(ckpt.get("option_changes", []))
        self._restore_position(ckpt)
        self.images_seen = int(ckpt.get("images_seen", (self.epoch * self.items_per_epoch + self.samples_in_epoch)
                                        * self.info.world_size))
        if {name for name, _, _ in self.resume_changes} & SCHEDULE_OPTIONS:
            self._restart_schedule()

    def _restore_position(self, ckpt: dict) -> None:
        """The position within the epoch, in samples (per process), whatever the batch size now."""
        saved_batch = int(ckpt.get("config", {}).get("batch_size", self.cfg.batch_size))
        sampler = ckpt.get("sampler", {})
        self.samples_in_epoch = int(sampler.get("start", self.batch_in_epoch * saved_batch))
        if self.samples_in_epoch == 0:
            self.epoch_items = self.items_per_epoch
            return
        n = self.sampler.num_samples   # checkpoints before "stop": the saved batch size's full batches
        self.epoch_items = int(sampler.get("stop", n // saved_batch * saved_batch if n >= saved_batch else n))
        if self.epoch_items > n:
            # the epoch it stopped in cannot be finished on fewer items (it would loop at its end)
            raise ValueError(
                f"--resume: {self.last_path} stopped inside an epoch of {self.epoch_items} training items, and the "
                f"training data now has {n}: resume on the same data (fix a bad item in place), or start a new run "
                "(another --out, or --overwrite)")
        left = (self.epoch_items - self.samples_in_epoch) % self.cfg.batch_size
        if left and saved_batch != self.cfg.batch_size and smallest_trainable_batch(self.cfg) > left:
            self.epoch_items -= left
            self.log(f"resume: the last {left} item(s) of this epoch are skipped: a batch of {left} cannot train "
                     f"{self.cfg.model_name()} at {self.cfg.size[0]}x{self.cfg.size[1]} (BatchNorm)")

    def _restart_schedule(self) -> None:
        """Resumed with another rate or schedule: the new curve from the current position on.

        A changed batch size keeps the schedule's position in epochs (step counts are per batch)."""
        if any(name == "batch_size" for name, _, _ in self.resume_changes):
            self.scheduler.last_epoch = (self.epoch * self.steps_per_epoch
                                         + self.samples_in_epoch // self.cfg.batch_size)
        self.scheduler.base_lrs = [self.cfg.lr for _ in self.optimizer.param_groups]
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["initial_lr"] = self.cfg.lr
            group["lr"] = self.cfg.lr * factor(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def elapsed_now(self) -> float:
        """Wall time of the run so far (all invocations; validation and checkpoints included)."""
        return self.elapsed + (0.0 if self._loop_start is None else time.perf_counter() - self._loop_start)

    def save(self, path: str | None = None, *, stopping: bool = False) -> None:
        """Write the resumable state (``last.pt``); a Ctrl-C waits until the file is complete."""
        if self.info.is_main:
            atomic_save(self.state_dict(), path or self.last_path, stopping=stopping)

    # ------------------------------------------------------------ steps

    def train_step(self, batch) -> float:
        """One optimiser step on ``batch``, all or nothing; returns its loss.

        The forward and backward may be cut short by Ctrl-C: until the update they change only
        the gradients, BatchNorm's running statistics and the random generators, which
        :meth:`discard_partial_step` puts back. The update (optimiser, grad scaler, schedule,
        weight average) and the run's counters (step, position in the epoch, images seen, the
        epoch's loss) are applied with Ctrl-C held (:func:`interrupts_deferred`), so a Ctrl-C
        never leaves the weights one step ahead of the step counter."""
        loss = self._forward_backward(batch)
        items = len(batch["image"])
        with interrupts_deferred():
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.average is not None:
                self.average.update(self.model)
            self.step += 1
            self.batch_in_epoch += 1
            self.samples_in_epoch += items
            self.images_seen += items * self.info.world_size
            self.epoch_loss[0] += loss
            self.epoch_loss[1] += 1
            self._keep_step_state()
        return loss

    def _keep_step_state(self) -> None:
        """Copy what the next step's forward may change before its update (BatchNorm's running
        statistics, every random generator): the state of this completed step, which
        :meth:`discard_partial_step` puts back when a Ctrl-C cuts the next step short."""
        buffers = list(unwrap(self.model).buffers())
        kept = getattr(self, "_kept_buffers", None)
        if kept is None or len(kept) != len(buffers):
            self._kept_buffers = [b.detach().clone() for b in buffers]
        elif buffers:
            torch._foreach_copy_(kept, buffers)
        self._kept_rng = capture_rng_states(self.aug_generator)

    def discard_partial_step(self) -> None:
        """Undo what a step cut short by Ctrl-C changed (BatchNorm's running statistics, the
        random generators): the state is again the one at the end of the last completed step.
        Its gradients are left; the next step sets them anew."""
        kept = getattr(self, "_kept_buffers", None)
        if kept is None:
            return
        with torch.no_grad():
            torch._foreach_copy_(list(unwrap(self.model).buffers()), kept)
        restore_rng_states(self._kept_rng, self.aug_generator)

    def _forward_backward(self, batch) -> float:
        """Augmentation, forward, loss and backward of a step (gradients in the parameters'
        ``.grad``); the update is :meth:`train_step`'s."""
        cfg = self.cfg
        images = batch["image"].to(self.device, non_blocking=True)
        depth = batch["depth"].to(self.device, non_blocking=True).float()
        if not getattr(self, "_units_checked", True):
            self._check_units(depth)
        if self.augment is not None:
            # On the uint8 batch (Augment's contract: uint8 0-255 or float 0-1 images).
            self.aug_generator.manual_seed(step_seed(cfg.seed, self.step, self.info.rank))
            images, depth = self.augment(images, depth, generator=self.aug_generator)
        images = to_images(images, self.device, self.channels_last)
        with autocast(self.device, self.amp_dtype):
            pred = self.train_model(images)
        loss = self.loss_fn(pred.float(), depth, mask=depth > 0)
        # one host synchronisation for both divergence checks (the loss is read anyway)
        typical = pred.detach()[..., ::16, ::16].float().abs().median()
        loss_value, typical = torch.stack([loss.detach(), typical.to(loss.dtype)]).tolist()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"loss became {loss_value} at step {self.step}: {self.divergence_advice()}")
        if typical > DIVERGED_DEPTH_M:
            raise TrainingDiverged(
                f"predictions reached {typical:.3g} m (median magnitude) at step {self.step}, beyond any depth in "
                f"metres (> {DIVERGED_DEPTH_M:g} m): the run diverged: {self.divergence_advice()}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return loss_value

    def _check_units(self, depth: torch.Tensor) -> None:
        """The first batch of this process: depth that looks like millimetres (or a 16-bit PNG
        without its scale) is said now, from this line, not at the first validation (one
        synchronisation; it also stands for the loss's own first-call check)."""
        self._units_checked = True
        message = check_depth_units(depth, depth > 0, force=True)
        if message is not None and self.info.is_main:
            warnings.warn(f"training data ({self.cfg.data_format} {self.cfg.data or ''}): {message}".replace(" )", ")"),
                          UserWarning, stacklevel=1)

    def eval_model(self):
        """The weights validation and testing score: the average with --ema, else the model."""
        return unwrap(self.model) if self.average is None else self.average.module

    def scoring_model(self):
        """:meth:`eval_model` in the layout ``fastmde eval`` runs a loaded checkpoint in (NCHW): the
        model itself, or, when the run trains in channels_last, an NCHW copy of it (same values;
        a convolution's result depends on the layout in its last bits)."""
        model = self.eval_model()
        if not self.channels_last:
            return model
        return copy.deepcopy(model).to(memory_format=torch.contiguous_format)

    def score(self, dataset, **options) -> dict:
        """:func:`evaluate` of :meth:`scoring_model` on ``dataset`` in ``fastmde eval``'s default
        precision (:func:`fastmde.engine.speed.scoring_precision`), whatever the run trains in."""
        return evaluate(self.scoring_model(), dataset, self.protocol, device=self.device,
                        batch_size=self.cfg.eval_batch_size, workers=self.workers, amp_dtype=self.score_amp_dtype,
                        channels_last=False, dist_info=self.info, **options)

    def validate(self) -> dict:
        """The validation metrics of :meth:`eval_model`. The random generators are as before
        (its DataLoader draws a seed from torch's): a run validated more often, or once more
        after a Ctrl-C, trains on the same random numbers."""
        devices = [] if self.device.type != "cuda" else [self.device.index if self.device.index is not None
                                                        else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            return self.score(self.val_set, flip=False)

    def validation_due(self) -> bool:
        """A ``--val-every`` point inside an epoch that has no validation record yet: a run stopped
        (Ctrl-C) between that step and its validation, which it runs first when resumed."""
        every = self.cfg.val_every
        return bool(every and self.step % every == 0 and 0 < self.samples_in_epoch < self.epoch_items
                    and not (self.history and self.history[-1]["step"] == self.step))

    def _should_stop(self) -> str | None:
        reason = None
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            reason = "max_steps"
        elif self.cfg.time_limit is not None and self.elapsed_now() >= self.cfg.time_limit:
            reason = "time_limit"
        # Every rank must stop at the same step (DDP would hang otherwise): rank 0 decides.
        return reason if D.broadcast_flag(reason is not None, self.info, self.device) else None

    def _record(self, values: dict, *, partial: bool, epoch_time: float) -> dict:
        mean_loss = D.all_reduce_mean(self.epoch_loss[0] / max(self.epoch_loss[1], 1), self.info, self.device)
        record = {
            "epoch": self.epoch + (self.samples_in_epoch / self.epoch_items if partial else 1),
            "step": self.step, "partial": partial, "train_loss": mean_loss,
            "lr": self.optimizer.param_groups[0]["lr"], "elapsed_s": round(self.elapsed_now(), 2),
            "train_s": round(self.train_time, 2),
            "it_per_s": self.step / self.train_time if self.train_time > 0 else None,
            "val": {k: values[k] for k in (*METRIC_NAMES, "count")},
        }
        return record

    # ------------------------------------------------------------ loop

    def fit(self) -> dict:
        """Train until ``--epochs``, a limit or Ctrl-C; returns the run's summary.

        Makes the run folder (parents included). A run that fails (an exception; not Ctrl-C, which
        saves ``last.pt``) before writing anything there removes the folders it made: no empty run
        folder is left behind."""
        made = make_output_folder(self.cfg.out) if self.info.is_main else []
        try:
            return self._fit()
        except DataFormatError:
            # a frame later in a split that the checks before the run could not see
            if self.info.is_main and os.path.exists(self.last_path):
                self.log(f"stopped by the data error below: {self.last_path} is kept as last saved; "
                         "fix that item in place (the same list), then the same command with --resume continues")
            remove_empty_folders(made)
            raise
        except Exception:
            remove_empty_folders(made)
            raise

    def _fit(self) -> dict:
        cfg = self.cfg
        if self.info.is_main:
            clean_output_folder(cfg.out, self.log)   # temporaries of a write killed in an earlier run
            if self.replaces_run:    # the earlier run's log and best.pt must not mix with this one's
                old = [name for name in RUN_FILES if os.path.exists(os.path.join(cfg.out, name))]
                for name in old:
                    os.remove(os.path.join(cfg.out, name))
                self.replaces_run = False
                self.log(f"--overwrite: removed the earlier run's {', '.join(old)} from {cfg.out}")
            self.log(f"training {cfg.model_name()} at {cfg.size[0]}x{cfg.size[1]} with {describe_loss(cfg)} on {self.device} "
                     f"(world {self.info.world_size}, {self.speed_choice}, "
                     f"compile {self.use_compile}, workers {self.workers}); {len(self.train_set)} train / "
                     f"{len(self.val_set)} val items, {self.steps_per_epoch} steps per epoch")
        # The step this run stops at: the rest of this epoch and the epochs left, within --max-steps
        # (a resumed run's bar starts at its saved step; a changed --batch-size changes the rest).
        total_steps = self.step + (0 if self.epoch >= cfg.epochs else self._steps_left_in_epoch()
                                   + (cfg.epochs - self.epoch - 1) * self.steps_per_epoch)
        if cfg.max_steps is not None:
            total_steps = max(self.step, min(total_steps, cfg.max_steps))

        def time_left():
            return None if cfg.time_limit is None else cfg.time_limit - self.elapsed_now()

        stop_reason = None
        start_step = self.step
        self._loop_start = time.perf_counter()
        progress = Progress(total_steps, initial=self.step, show=cfg.progress if self.info.is_main else False,
                            time_left=time_left)
        self._keep_step_state()      # what a Ctrl-C in the first step goes back to
        try:
            if self._resume_validation:     # stopped between a --val-every step and its validation
                self._resume_validation = False
                self._end_epoch(partial=True, epoch_time=0.0)
            if self.resumed and self.epoch >= cfg.epochs and self.info.is_main:
                self.log(self._nothing_trained("epochs"))     # resumed with its --epochs already trained
            while self.epoch < cfg.epochs and stop_reason is None:
                stop_reason = self._should_stop()
                if stop_reason:      # e.g. resumed with a limit already reached
                    if self.step == start_step and self.resumed and self.info.is_main:
                        self.log(self._nothing_trained(stop_reason))
                    if self.step and not (self.history and self.history[-1]["step"] == self.step):
                        # the validation of a stop (or an epoch's end) that a Ctrl-C cut short
                        self._end_epoch(partial=self.samples_in_epoch < self.epoch_items, epoch_time=0.0)
                    self.save()
                    break
                self.sampler.set_epoch(self.epoch)
                self.sampler.set_range(self.samples_in_epoch, self.epoch_items)
                if hasattr(self.train_set, "set_epoch"):      # data.RandomCrops: the epoch's crops
                    self.train_set.set_epoch(self.epoch)
                loader = DataLoader(
                    self.train_set, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=self.workers,
                    pin_memory=self.device.type == "cuda", collate_fn=collate_frames,
                    generator=torch.Generator().manual_seed(cfg.seed * 7919 + self.epoch))
                progress.set_epoch(self.epoch + 1, cfg.epochs)
                epoch_steps = self.batch_in_epoch + self._steps_left_in_epoch()
                epoch_start = time.perf_counter()
                self.train_model.train()
                t0 = time.perf_counter()
                for batch in batches(loader):   # a worker's error as the reader raised it
                    self.train_step(batch)      # also counts the step and the position in the epoch
                    now = time.perf_counter()
                    self.train_time += now - t0
                    progress.update(self.step, self.epoch_loss[0] / self.epoch_loss[1],
                                    epoch_step=(self.batch_in_epoch, epoch_steps))
                    stop_reason = self._should_stop()
                    if cfg.save_every and self.step % cfg.save_every == 0 and not stop_reason:
                        self._checkpoint_now()
                    if (cfg.val_every and self.step % cfg.val_every == 0 and not stop_reason
                            and self.samples_in_epoch < self.epoch_items):
                        self._end_epoch(partial=True, epoch_time=0.0)   # a mid-epoch point
                        self.train_model.train()
                    if stop_reason:
                        break
                    t0 = time.perf_counter()
                progress.update(self.step, self.epoch_loss[0] / max(self.epoch_loss[1], 1),
                                epoch_step=(self.batch_in_epoch, epoch_steps), force=True)
                partial = self.samples_in_epoch < self.epoch_items
                self._end_epoch(partial=partial, epoch_time=time.perf_counter() - epoch_start)
        except KeyboardInterrupt:
            # Further Ctrl-Cs wait for this save (a save cut short would leave no checkpoint). A
            # step cut short is dropped: the state saved is the last completed step's.
            with interrupts_deferred(raise_after=False):
                self.discard_partial_step()
                progress.close()
                self.save(stopping=True)
            self.log(f"interrupted: saved {self.last_path} at step {self.step}; continue with --resume")
            raise
        progress.close()
        summary = {"out": cfg.out, "model": cfg.model_name(), "stopped": stop_reason or "completed",
                   "step": self.step, "epoch": self.epoch,
                   "epochs_trained": self.epoch + (self.samples_in_epoch / self.epoch_items if self.epoch_items else 0.0),
                   "images_seen": self.images_seen, "option_changes": self.option_changes,
                   "steps_this_run": self.step - start_step,
                   "elapsed_s": self.elapsed_now(), "train_s": self.train_time,
                   "it_per_s": self.step / self.train_time if self.train_time > 0 else None,
                   "best": self.best, "history": self.history, "config": cfg.to_dict(),
                   "resolved": self.resolved_speed()}
        if self.info.is_main:
            try:
                self.log(f"stopped: {summary['stopped']} after {self.step} steps, "
                         f"{format_seconds(self.elapsed_now())}")
                print(format_history(self.history), flush=True)
                atomic_write_text(json.dumps(summary, indent=2) + "\n", os.path.join(cfg.out, "summary.json"))
            except KeyboardInterrupt:     # last.pt was saved when the training stopped
                self.log(self.interrupted_after_training())
                raise
        return summary

    def interrupted_after_training(self, what: str = "") -> str:
        """The line of a Ctrl-C once the training has finished (``what``: during what)."""
        return (f"interrupted{what} after the training finished: {self.last_path} holds it at step {self.step}; "
                "the same command with --resume finishes without training")

    def _steps_left_in_epoch(self) -> int:
        return math.ceil((self.epoch_items - self.samples_in_epoch) / self.cfg.batch_size)

    def _checkpoint_now(self) -> None:
        self.save()

    def _nothing_trained(self, stop_reason: str) -> str:
        """The line of a resume that trains nothing: its checkpoint already reached the limit."""
        if stop_reason == "epochs":
            done = round(self.epoch + (self.samples_in_epoch / self.epoch_items if self.epoch_items else 0.0), 2)
            where = "past" if done > self.cfg.epochs else "at"
            return (f"nothing trained: {self.last_path} has already trained {done:g} epoch(s), {where} --epochs "
                    f"{self.cfg.epochs} (a larger --epochs continues it)")
        if stop_reason == "max_steps":
            where = "past" if self.step > self.cfg.max_steps else "at"
            return (f"nothing trained: {self.last_path} is already at step {self.step}, {where} --max-steps "
                    f"{self.cfg.max_steps} (a larger --max-steps continues it)")
        return (f"nothing trained: {self.last_path} has already run {format_seconds(self.elapsed)}, at "
                f"--time-limit {self.cfg.time_limit:g} s (a larger --time-limit continues it)")

    def divergence_advice(self) -> str:
        """What a diverged run can change: a lower --lr, and a precision it does not run in already
        (float16's range overflows first; bfloat16 keeps float32's range, float32 its precision)."""
        other = {torch.float16: "--amp bf16 or none", torch.bfloat16: "--amp none"}.get(self.amp_dtype)
        return "lower --lr" + (f", or use {other}" if other else "")

    def _end_epoch(self, *, partial: bool, epoch_time: float) -> None:
        values = self.validate()     # may be cut short by Ctrl-C: nothing has changed yet
        if float(values.get("count", 0)) > 0 and math.isnan(float(values["rms"])):
            # pixels were scored and RMS is NaN: the network predicts NaN (the training loss can
            # stay finite: the SILog family floors predictions <= 0 before its logarithm)
            kept = f"; {self.last_path} holds the last save before it" if os.path.exists(self.last_path) else ""
            raise TrainingDiverged(f"validation at step {self.step} scored NaN: the network predicts NaN (diverged): "
                                   f"{self.divergence_advice()}{kept}")
        with interrupts_deferred():  # the record, the epoch's end and the checkpoints: all or nothing
            self._close_epoch(values, partial=partial, epoch_time=epoch_time)

    def _close_epoch(self, values: dict, *, partial: bool, epoch_time: float) -> None:
        record = self._record(values, partial=partial, epoch_time=epoch_time)
        if not partial:
            self.epoch += 1
            self.batch_in_epoch = self.samples_in_epoch = 0
            self.epoch_items = self.items_per_epoch
            self.epoch_loss = [0.0, 0]
        self.history.append(record)
        improved = metric_improved(values[self.cfg.best_metric],
                                   None if self.best is None else self.best["value"], self.cfg.best_metric, values)
        if improved:
            self.best = {"metric": self.cfg.best_metric, "value": values[self.cfg.best_metric],
                         "epoch": record["epoch"], "step": self.step}
        if self.info.is_main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.log(f"epoch {record['epoch']:.2f} step {self.step} loss {record['train_loss']:.4f} | val "
                     + "  ".join(f"{k} {values[k]:.4f}" for k in METRIC_NAMES))
        self.save()
        if improved and self.info.is_main:
            # best.pt is for evaluation and prediction: the weights without optimiser and RNG state.
            state = self.state_dict()
            for key in ("optimizer", "scheduler", "scaler", "rng"):
                state[key] = None
            if self.average is not None:     # keep only the weights that were scored
                state["model"], state["ema"] = state["ema"]["model"], None
            state["resumable"] = False
            atomic_save(state, self.best_path)


def format_history(history: list[dict]) -> str:
    header = f"{'epoch':>6} {'step':>6} {'loss':>8} " + " ".join(f"{k:>7}" for k in METRIC_NAMES) + f" {'time':>8}"
    lines = [header]
    for r in history:
        v = r["val"]
        lines.append(f"{r['epoch']:6.2f} {r['step']:6d} {r['train_loss']:8.4f} "
                     + " ".join(f"{v[k]:7.4f}" for k in METRIC_NAMES) + f" {format_seconds(r['elapsed_s']):>8}")
    return "\n".join(lines)


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Train (or resume) a run; returns its summary. Joins/leaves the process group if needed."""
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        D.teardown(trainer.info)


# ---------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    """``fastmde train``'s arguments: every :class:`TrainConfig` option, then the command's own."""
    import argparse

    from .config import add_arguments as add_config_arguments

    add_config_arguments(parser)
    g = parser.add_argument_group("this command")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from last.pt (options that may change are applied and logged)")
    g.add_argument("--overwrite", action="store_true", help="start again even if --out holds a run")
    g.add_argument("--test", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate on the test split (synthetic: the held-out rooms) at the end, also when --max-steps "
                        "or --time-limit stopped the run (default: %(default)s)")


def test_best(trainer: Trainer) -> dict | None:
    """Metrics (the validation protocol) of the final weights on the test split, or None without one."""
    if trainer.test_set is None:
        return None
    return trainer.score(trainer.test_set)


def run(args) -> int:
    cfg = config_from_args(args)
    trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite, test=args.test)
    try:
        try:
            summary = trainer.fit()
        except KeyboardInterrupt:
            return 130
        try:
            _finish(args, cfg, trainer, summary)
        except KeyboardInterrupt:     # training has finished: what was not done is said in one line
            if trainer.info.is_main:
                testing = args.test and trainer.test_set is not None
                trainer.log(trainer.interrupted_after_training(" while testing" if testing else ""))
            return 130
    finally:
        D.teardown(trainer.info)
    return 0


def _finish(args, cfg: TrainConfig, trainer: Trainer, summary: dict) -> None:
    """After the training: the test metrics, printed and added to summary.json (or why there are none).

    Every stop is tested, a stop at a limit included: the weights are what a user would
    evaluate, and the line says how far the run got."""
    from .datasets import test_split_location, test_split_name

    if args.test and trainer.test_set is None and trainer.info.is_main:
        what = (f"a {cfg.data_format} is one split (evaluate a test list or folder with fastmde eval --data)"
                if cfg.data_format in ("list", "folder") else
                f"the {cfg.data_format} data has no test split ({test_split_name(cfg.data_format)!r}: "
                f"{test_split_location(cfg.data_format, cfg.data) or 'its place'} does not exist)")
        trainer.log(f"no test metrics: {what}; --no-test silences this")
    if args.test and trainer.test_set is not None:
        values = test_best(trainer)
        stopped = summary["stopped"]
        planned = cfg.epochs * trainer.steps_per_epoch
        how = ("final weights" if stopped == "completed" else
               f"weights at step {summary['step']} of {planned}: stopped by --{stopped.replace('_', '-')}, "
               "resumable")
        if trainer.info.is_main:
            print(f"test ({len(trainer.test_set)} held-out items, {trainer.protocol} protocol, {how}): "
                  + "  ".join(f"{k} {values[k]:.4f}" for k in METRIC_NAMES), flush=True)
            summary["test"] = values
            atomic_write_text(json.dumps(summary, indent=2) + "\n", os.path.join(cfg.out, "summary.json"))
