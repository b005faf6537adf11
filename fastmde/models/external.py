"""Checkpoints of other depth projects, loaded into fastmde's models.

::

    model = fastmde.models.from_external("Baseline34_best_val.checkpoint")   # the paper authors' code
    model = fastmde.models.from_external("checkpoint.pth.tar")               # Hu et al.'s code
    model.fastmde_variant            # "unet34-k3-1x1", "hu50", ...
    model.fastmde_spec               # {"name", "size", "overrides"}: build(**) rebuilds it
    model.fastmde_source             # where the weights come from, what input/output they expect

``fastmde.load(path)`` (and so ``fastmde eval`` / ``fastmde predict``) reads these files too.

Sources (``source=``; ``None`` recognises it from the key names):

``"freeman2021"``
    The paper's own code, Freeman & Tilney-Volk, "Training Monocular Depth Estimation Models
    on a Budget" (github.com/thatcherfreeman/CS231A-FinalProject, ``models.py``): the U-Net
    ``Baseline34`` (``Baseline`` with ResNet18) and the slimmed Hu et al. model ``Hu34`` /
    ``Hu50`` (``Hu18``), any kernel size, with or without the 1x1 reduction. Its files are
    ``torch.save(model.state_dict())`` (``model_utils.save_model``). Names: ``encoder.*``
    (torchvision's ResNet without ``fc``), ``decoder.conv``/``decoder.bn`` (the U-Net's 1x1
    entry), ``decoder.up1..4``, ``decoder.conv2``/``decoder.bn2``/``decoder.conv3`` (the U-Net's
    head), ``mff.up1..4``, ``mff.conv1``/``mff.bn``, ``refinement.conv0/bn0/conv1/bn1/conv2``.
    Model input: the RGB image as float 0-255, not normalised (``model_utils.preprocess_*``),
    which is fastmde's convention; output: depth in metres at the input's size. Their model
    resizes its input to ``--size`` (default 288x384) and its output back with bilinear
    interpolation (align_corners=True); fastmde's :class:`IntermediateResolution` uses area
    downscaling and bicubic upscaling, so the networks agree exactly and the end-to-end
    predictions differ by the resampling only.

``"hu2019"``
    Hu, Ozay, Zhang & Okatani, "Revisiting Single Image Depth Estimation" (WACV 2019;
    github.com/JunjH/Revisiting_Single_Depth_Estimation, ``models/net.py``,
    ``models/modules.py``), the ResNet50 model. Its training script saves
    ``{"state_dict": DataParallel(model).state_dict()}`` (``module.`` prefix); names ``E.*``
    (the ResNet), ``D.conv``/``D.bn`` (1x1 2048->1024), ``D.up1..4``, ``MFF.up1..4``,
    ``MFF.conv``/``MFF.bn``, ``R.conv0/bn0/conv1/bn1/conv2``; written with PyTorch 0.3.1, so its
    BatchNorms have no ``num_batches_tracked`` (filled with 0 here). Model input: RGB scaled to
    0-1 and normalised with the ImageNet mean/std (``loaddata.py``), so the loaded model is
    built with ``normalize=True`` (fastmde applies ``(x/255 - mean)/std`` to its 0-255 input);
    trained on 228x304 inputs (the loaded model's internal size); output: depth in metres at
    half the input's resolution, brought to the input's size by the wrapper (bicubic; their
    ``test.py`` upsamples bilinearly). PyTorch 0.3.1's bilinear upsampling aligned corners, as
    fastmde's blocks do.

``"fastmde"``
    A plain ``state_dict()`` of a model built by :func:`fastmde.models.build` (``net.*``).

In both codebases an up-projection block's ``conv2``/``bn2`` is the shortcut and
``conv1_2``/``bn1_2`` the branch's second conv; in the authors' block ``conv0``/``bn0`` is the
1x1 reduction. fastmde names them ``shortcut_conv``/``shortcut_bn``, ``conv2``/``bn2`` and
``reduce_conv``/``reduce_bn``.

The variant (architecture, encoder depth, kernel size, 1x1) is read from the names and shapes;
the checkpoint (a path, read with ``torch.load(..., weights_only=True)``, or a state dict; also
nested under ``"state_dict"``/``"model"``, with ``module.`` or ``_orig_mod.`` prefixes) is then
mapped key by key and loaded strictly: every fastmde tensor must come from the file (except a
missing ``num_batches_tracked``), every tensor of the file must land in the model, and every
shape must agree. Otherwise :class:`ExternalCheckpointError` names the closest variant and the
keys that differ (for a file whose keys follow none of the sources' names there is no closest
variant to name: the error gives its top-level names).
"""
from __future__ import annotations

import functools
import os
import re

import torch
from torch import nn

from .._checks import damaged_weights_message
from .._files import load_error_text, torch_file_damage, torch_file_problem
from .resnet import DEPTHS, CheckpointMismatchError

SOURCES = ("freeman2021", "hu2019", "fastmde")


class ExternalCheckpointError(CheckpointMismatchError):
    """A checkpoint that is not one fastmde can map onto its models (which source, which keys)."""


# ---------------------------------------------------------------- what each source expects

SOURCE_INFO = {
    "freeman2021": dict(
        project="Freeman & Tilney-Volk, Training Monocular Depth Estimation Models on a Budget (the paper's code)",
        repository="thatcherfreeman/CS231A-FinalProject (models.py, model_utils.py, args.py)",
        input="RGB float image in 0-255, not normalised (fastmde's convention; normalize=False)",
        output="depth in metres at the input's size",
        size=(288, 384),
        resampling="their model resizes input and output bilinearly (align_corners=True); fastmde "
                   "area-downscales the input and upscales the prediction bicubically",
        normalize=False,
    ),
    "hu2019": dict(
        project="Hu, Ozay, Zhang & Okatani, Revisiting Single Image Depth Estimation (WACV 2019)",
        repository="JunjH/Revisiting_Single_Depth_Estimation (models/net.py, models/modules.py, loaddata.py)",
        input="RGB scaled to 0-1 and normalised with the ImageNet mean/std; the loaded model applies "
              "this to fastmde's 0-255 input (normalize=True)",
        output="depth in metres at half the input's resolution (114x152 for a 228x304 input); the "
               "wrapper upscales it to the input's size (bicubic; their test.py: bilinear)",
        size=(228, 304),
        resampling="their test crops the centre 228x304 of a 240x320 resize; fastmde resizes the whole "
                   "image to the internal size",
        normalize=True,
    ),
    "fastmde": dict(
        project="fastmde",
        repository="fastmde (a state_dict of a model from fastmde.models.build)",
        input="RGB float image in 0-255",
        output="depth in metres at the input's size",
        size=(288, 384),
        resampling="",
        normalize=False,
    ),
}


# ---------------------------------------------------------------- key mappings

# an up-projection block: source name -> fastmde name (both codebases use the same names)
_BLOCK = {
    "conv0": "reduce_conv", "bn0": "reduce_bn",          # the authors' 1x1 reduction
    "conv1": "conv1", "bn1": "bn1",                      # branch, first conv
    "conv1_2": "conv2", "bn1_2": "bn2",                  # branch, second conv
    "conv2": "shortcut_conv", "bn2": "shortcut_bn",      # shortcut
}
_B = "(" + "|".join(sorted(_BLOCK, key=len, reverse=True)) + ")"
_P = r"(\w+)"  # parameter or buffer name


def _block(prefix):
    return lambda m: f"{prefix(m)}.{_BLOCK[m[2]]}.{m[3]}"


# (regular expression over the whole source key, fastmde key without the "net." prefix)
_RULES = {
    "freeman2021": [
        (r"encoder\.(.+)", lambda m: f"encoder.{m[1]}"),
        # U-Net (SkipDecoder): 1x1 entry, four blocks, head
        (rf"decoder\.conv\.{_P}", lambda m: f"entry_conv.{m[1]}"),
        (rf"decoder\.bn\.{_P}", lambda m: f"entry_bn.{m[1]}"),
        (rf"decoder\.conv2\.{_P}", lambda m: f"head_conv1.{m[1]}"),
        (rf"decoder\.bn2\.{_P}", lambda m: f"head_bn.{m[1]}"),
        (rf"decoder\.conv3\.{_P}", lambda m: f"head_conv2.{m[1]}"),
        # both: decoder blocks; Hu: MFF and refinement
        (rf"decoder\.up([1-4])\.{_B}\.{_P}", _block(lambda m: f"up{m[1]}")),
        (rf"mff\.up([1-4])\.{_B}\.{_P}", _block(lambda m: f"mff_up.{int(m[1]) - 1}")),
        (rf"mff\.conv1\.{_P}", lambda m: f"mff_conv.0.{m[1]}"),
        (rf"mff\.bn\.{_P}", lambda m: f"mff_conv.1.{m[1]}"),
        (rf"refinement\.conv0\.{_P}", lambda m: f"refine.0.0.{m[1]}"),
        (rf"refinement\.bn0\.{_P}", lambda m: f"refine.0.1.{m[1]}"),
        (rf"refinement\.conv1\.{_P}", lambda m: f"refine.1.0.{m[1]}"),
        (rf"refinement\.bn1\.{_P}", lambda m: f"refine.1.1.{m[1]}"),
        (rf"refinement\.conv2\.{_P}", lambda m: f"refine.2.{m[1]}"),
    ],
    "hu2019": [
        (r"E\.(.+)", lambda m: f"encoder.{m[1]}"),
        (rf"D\.conv\.{_P}", lambda m: f"entry.0.{m[1]}"),
        (rf"D\.bn\.{_P}", lambda m: f"entry.1.{m[1]}"),
        (rf"D\.up([1-4])\.{_B}\.{_P}", _block(lambda m: f"up{m[1]}")),
        (rf"MFF\.up([1-4])\.{_B}\.{_P}", _block(lambda m: f"mff_up.{int(m[1]) - 1}")),
        (rf"MFF\.conv\.{_P}", lambda m: f"mff_conv.0.{m[1]}"),
        (rf"MFF\.bn\.{_P}", lambda m: f"mff_conv.1.{m[1]}"),
        (rf"R\.conv0\.{_P}", lambda m: f"refine.0.0.{m[1]}"),
        (rf"R\.bn0\.{_P}", lambda m: f"refine.0.1.{m[1]}"),
        (rf"R\.conv1\.{_P}", lambda m: f"refine.1.0.{m[1]}"),
        (rf"R\.bn1\.{_P}", lambda m: f"refine.1.1.{m[1]}"),
        (rf"R\.conv2\.{_P}", lambda m: f"refine.2.{m[1]}"),
    ],
    "fastmde": [(r"net\.(.+)", lambda m: m[1])],
}
_COMPILED = {source: [(re.compile(p), f) for p, f in rules] for source, rules in _RULES.items()}

# top-level module names that identify a source
_ROOTS = {"hu2019": {"E", "D", "MFF", "R"}, "freeman2021": {"encoder", "decoder", "mff", "refinement"},
          "fastmde": {"net"}}


def map_keys(state: dict, source: str) -> tuple[dict, dict, list]:
    """``(mapped, origin, unmapped)``: ``mapped`` has fastmde's keys (``net.`` + the network's
    name), ``origin`` maps each of them back to the source's key, ``unmapped`` lists the
    source keys no rule covers."""
    if source not in _COMPILED:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    mapped, origin, unmapped = {}, {}, []
    for key, value in state.items():
        for pattern, target in _COMPILED[source]:
            m = pattern.fullmatch(key)
            if m:
                name = "net." + target(m)
                mapped[name], origin[name] = value, key
                break
        else:
            unmapped.append(key)
    return mapped, origin, unmapped


# ---------------------------------------------------------------- reading

def _read(checkpoint):
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        problem = torch_file_problem(path)   # text or random bytes: say so, not torch.load's "KeyError: 101"
        if problem is not None:
            raise ExternalCheckpointError(f"checkpoint {path!r}: {problem}")
        damage = torch_file_damage(path)     # a torch.save file cut short or with changed bytes
        if damage is not None:
            raise ExternalCheckpointError(f"checkpoint {path!r} is damaged or truncated: {damage}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True), repr(path)
        except Exception as exc:  # weights_only refuses pickled code; say what the file is not
            damage = torch_file_damage(path, exc)
            if damage is not None:
                raise ExternalCheckpointError(f"checkpoint {path!r} is damaged or truncated: {damage}") from None
            raise ExternalCheckpointError(
                f"checkpoint {path!r} cannot be read as a file of tensors with "
                f"torch.load(weights_only=True) ({load_error_text(exc)})") from None
    return checkpoint, "the checkpoint"


def unwrap(checkpoint) -> dict:
    """The state dict inside ``checkpoint``: descends into ``"state_dict"`` / ``"model"`` entries
    (as training scripts save them) and strips ``module.`` (DataParallel / DDP) and
    ``_orig_mod.`` (``torch.compile``) prefixes shared by every key."""
    obj = checkpoint
    for _ in range(4):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = None
        if isinstance(obj, dict):
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(obj.get(key), dict):
                    inner = obj[key]
                    break
        if inner is None:
            break
        obj = inner
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in obj.items())):
        what = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {list(obj)[:6]}"
        raise ExternalCheckpointError(
            f"not a state dict (a mapping of names to tensors, possibly under 'state_dict' or "
            f"'model'): found {what}")
    state = dict(obj)
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def recognise(state: dict) -> str | None:
    """The source whose top-level module names the keys use, or None."""
    roots = {k.split(".", 1)[0] for k in state}
    if roots <= _ROOTS["hu2019"] and roots & {"D", "MFF", "R"}:
        return "hu2019"
    if roots <= _ROOTS["freeman2021"] and "encoder" in roots and roots & {"decoder", "mff", "refinement"}:
        return "freeman2021"
    if roots == {"net"}:
        return "fastmde"
    return None


# ---------------------------------------------------------------- variant from shapes

def _encoder_depth(keys) -> tuple[int | None, bool]:
    bottleneck = "net.encoder.layer1.0.conv3.weight" in keys
    blocks = []
    for stage in range(1, 5):
        prefix = f"net.encoder.layer{stage}."
        blocks.append(len({k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)}))
    for depth, (kind, layers) in DEPTHS.items():
        if (kind == "bottleneck") == bottleneck and tuple(layers) == tuple(blocks):
            return depth, bottleneck
    return None, bottleneck


def infer_variant(mapped: dict) -> tuple[str, dict]:
    """``(name, overrides)`` of the fastmde variant whose layout the mapped keys describe:
    architecture from the modules present, encoder depth from the ResNet's blocks, kernel size
    from the first up-projection's conv, the 1x1 from its reduction conv. A best guess (the
    strict comparison follows); ``overrides`` holds ``encoder`` for ResNet18/101."""
    keys = set(mapped)
    depth, bottleneck = _encoder_depth(keys)
    family = 50 if bottleneck else 34
    overrides = {} if depth in (None, family) else {"encoder": depth}
    if "net.entry.0.weight" in keys:
        return f"hu{family}", overrides
    arch = "unet" if any(k.startswith(("net.entry_conv.", "net.head_")) for k in keys) else "hu"
    conv = mapped.get("net.up1.conv1.weight")
    k = int(conv.shape[-1]) if conv is not None and conv.dim() == 4 else 3
    k = k if k in (3, 5) else 3
    reduce = "net.up1.reduce_conv.weight" in keys
    return f"{arch}{family}-k{k}" + ("-1x1" if reduce else ""), overrides


@functools.lru_cache(maxsize=64)
def _expected_shapes(name: str, overrides: tuple) -> dict:
    from . import build

    with torch.device("meta"):
        model = build(name, size=None, **dict(overrides))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _differences(mapped: dict, expected: dict, unmapped: list) -> tuple[list, list, list]:
    missing = [k for k in expected if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in mapped if k not in expected]
    wrong = [k for k in expected if k in mapped and tuple(mapped[k].shape) != expected[k]]
    return missing, unexpected + list(unmapped), wrong


def _closest(mapped: dict, unmapped: list, first: tuple[str, dict]) -> tuple[str, dict, tuple]:
    from . import variants

    depth, _ = _encoder_depth(set(mapped))
    candidates = [first]
    for name, v in variants().items():
        ov = {} if depth in (None, v["config"]["encoder"]) else {"encoder": depth}
        if (name, ov) != first:
            candidates.append((name, ov))
    best = None
    for name, ov in candidates:
        diff = _differences(mapped, _expected_shapes(name, tuple(sorted(ov.items()))), unmapped)
        score = sum(len(d) for d in diff)
        if best is None or score < best[0]:
            best = (score, name, ov, diff)
    return best[1], best[2], best[3]


def _shown(items: list, limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _mismatch_message(lead, source, name, ov, diff, mapped, origin, expected) -> str:
    missing, unexpected, wrong = diff

    def src(k):
        return origin.get(k, k)

    variant = name + (f" (encoder={ov['encoder']})" if ov else "")
    parts = [f"{lead}; read as a {source} checkpoint, the closest fastmde variant is {variant!r}"]
    if missing:
        parts.append(f"missing keys (fastmde names): {_shown(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({source} names): {_shown([src(k) for k in unexpected])}")
    if wrong:
        parts.append(f"shape mismatches ({source} names): " + _shown(
            [f"{src(k)}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(expected[k])}" for k in wrong]))
    return "; ".join(parts)


def _architecture(source: str, name: str, overrides: dict) -> str:
    from . import variants

    config = variants()[name]["config"]
    depth = overrides.get("encoder", config["encoder"])
    if source == "freeman2021":
        title = ("Baseline" if depth == 18 else f"Baseline{depth}") if config["arch"] == "unet" else f"Hu{depth}"
        return f"{title}, {config['kernel_size']}x{config['kernel_size']}, " + (
            "with the 1x1 reduction" if config["reduce"] else "without the 1x1 reduction")
    if source == "hu2019":
        return f"net.model with E_resnet(resnet{depth})"
    return name


# ---------------------------------------------------------------- entry point

def from_external(checkpoint, source: str | None = None, *, size="auto") -> nn.Module:
    """The fastmde model holding the weights of another project's checkpoint.

    Args:
        checkpoint: a path (read with ``torch.load(..., weights_only=True)``, so no code from
            the file runs) or a loaded object: a state dict, possibly nested under
            ``"state_dict"`` / ``"model"`` and prefixed with ``module.`` / ``_orig_mod.``.
        source: ``"freeman2021"`` (the paper authors' code), ``"hu2019"`` (Hu et al.'s code),
            ``"fastmde"`` (a plain ``state_dict`` of a fastmde model), or ``None`` to
            recognise it from the key names.
        size: internal (H, W) of the returned :class:`IntermediateResolution`; ``"auto"`` (the
            default) takes the source's training size (288x384 for freeman2021, 228x304 for
            hu2019), ``None`` runs at the input's own size.

    Returns the model :func:`fastmde.models.build` gives for the recognised variant (in
    training mode, on the CPU: call ``.eval()`` for inference; :func:`fastmde.load` does),
    with every tensor of the checkpoint loaded. It maps (B, 3, H, W) float images in 0-255 to
    (B, 1, H, W) depth in metres. Attributes describe it:

    - ``fastmde_variant``: the name of the network it is (:func:`fastmde.models.variant_name`:
      ``"unet34-k3-1x1"``, ``"hu50"``, ``"unet18-k3-1x1"`` for the ResNet18 baseline);
    - ``fastmde_spec``: ``{"name", "size", "overrides"}`` as in fastmde checkpoints, so
      ``build(spec["name"], size=spec["size"], **spec["overrides"])`` builds a model its
      ``state_dict()`` loads into (``overrides`` carries ``normalize=True`` for hu2019 and
      ``encoder`` for ResNet18/101 encoders);
    - ``fastmde_source``: ``{"source", "architecture", "project", "repository", "input",
      "output", "resampling"}``: what the source's model expects and returns.

    Raises:
        FileNotFoundError: the path does not exist.
        ExternalCheckpointError: the file holds no state dict, the source cannot be told from
            the keys, or the weights fit no fastmde variant (the message names the closest
            variant and a few of the missing, unexpected and mis-shaped keys).
    """
    from . import build, variant_name

    obj, what = _read(checkpoint)
    state = unwrap(obj)
    if source is not None and source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    found = recognise(state)
    chosen = source or found
    if chosen is None:
        # no source's names: report against the layout that maps the most of its keys
        chosen = max(SOURCES, key=lambda s: len(map_keys(state, s)[0]))
        roots = sorted({k.split(".", 1)[0] for k in state})
        lead = (f"{what} is not a checkpoint of the paper authors' code (encoder./decoder./mff./"
                f"refinement.), of Hu et al.'s (E./D./MFF./R.) or of fastmde (net.): its top-level "
                f"names are {roots[:8]}")
    else:
        lead = f"{what} does not fit any fastmde model"
    if source is not None and found is not None and found != source:
        raise ExternalCheckpointError(f"{what} has {found} key names, not {source}'s: pass source={found!r} "
                                      f"(or source=None to recognise it)")
    mapped, origin, unmapped = map_keys(state, chosen)
    if found is None and source is None and len(mapped) * 2 < len(state):
        # most keys follow no source's names (a classifier's, a random dict's): a "closest
        # variant" would only mislead
        raise ExternalCheckpointError(f"{lead}; none of fastmde's models is close to it ({len(state)} tensors: "
                                      f"{_shown(sorted(state), 3)})")
    if not mapped:
        raise ExternalCheckpointError(f"{what}: none of its keys follows the {chosen} names "
                                      f"(top-level names {sorted({k.split('.', 1)[0] for k in state})[:8]})")
    name, overrides = infer_variant(mapped)
    expected = _expected_shapes(name, tuple(sorted(overrides.items())))
    diff = _differences(mapped, expected, unmapped)
    if found is None or (source is not None and source != found) or any(diff):
        if not any(diff) and found != chosen:
            lead = f"{what} has {found or 'unknown'} key names, not {chosen}'s"
        name, overrides, diff = _closest(mapped, unmapped, (name, overrides))
        expected = _expected_shapes(name, tuple(sorted(overrides.items())))
        raise ExternalCheckpointError(_mismatch_message(lead, chosen, name, overrides, diff, mapped, origin, expected))
    info = SOURCE_INFO[chosen]
    if info["normalize"]:
        overrides = dict(overrides, normalize=True)
    size = info["size"] if isinstance(size, str) and size == "auto" else size
    model = build(name, size=size, **overrides)
    reference = model.state_dict()
    # a complex weight would load with torch's "discards the imaginary part" warning only, a bool
    # one as 0/1 without a word
    damage = damaged_weights_message(reference, mapped, origin)
    if damage:
        raise ExternalCheckpointError(f"{what} is damaged: {damage}")
    for key in reference:
        if key not in mapped:  # a num_batches_tracked the file lacks (PyTorch < 0.4.1)
            mapped[key] = torch.zeros_like(reference[key])
    model.load_state_dict(mapped, strict=True)
    model.fastmde_variant = variant_name(name, **overrides)   # unet18-k3-1x1 for a ResNet18 encoder
    model.fastmde_spec = {"name": name, "size": None if model.size is None else list(model.size),
                          "overrides": dict(overrides)}
    model.fastmde_source = {"source": chosen, "architecture": _architecture(chosen, name, overrides),
                            **{k: info[k] for k in ("project", "repository", "input", "output", "resampling")}}
    return model


__all__ = ["ExternalCheckpointError", "SOURCES", "SOURCE_INFO", "from_external", "infer_variant",
           "map_keys", "recognise", "unwrap"]
