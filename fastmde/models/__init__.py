"""Depth models: ResNet encoders, the U-Net, Hu et al.'s model, the intermediate-resolution
wrapper, and the named variants of the paper's architecture tables.

::

    model = fastmde.models.build("unet34-k3-1x1")                  # runs at 288x384 inside
    model = fastmde.models.build("hu50", size=(480, 640))          # Hu et al. at full size
    model = fastmde.models.build("unet50-k5", pretrained="resnet50.pth", normalize=True)
    fastmde.models.variants()                                      # name -> description/config
    print(fastmde.models.describe_model("unet34-k3", "288x384"))   # parameters and MACs
    model = fastmde.models.from_external("Hu34_best_val.checkpoint")  # another project's weights

Names: ``<arch><depth>-k<k>[-1x1]`` with arch ``unet`` (the paper's U-Net) or ``hu`` (the
paper's slimmed Hu et al. model), depth 34 or 50, k 3 or 5, ``-1x1`` for the paper's 1x1
reduction in the up-projections; ``hu34`` and ``hu50`` are Hu et al.'s original model (5x5, no
1x1, 1x1 entry conv, half-resolution output). This grid covers the architecture rows of the
paper's Table 4 (U-Net against Hu et al.) and Tables 5/6 (encoder, kernel size, 1x1 filter).
Other encoders (18, 101) via ``build(name, encoder=18)``; such a model is named by what it is
(:func:`variant_name`: ``unet18-k3-1x1``) wherever fastmde shows or records a model's name.

A built model takes a (B, 3, H, W) float image in 0-255 (convert uint8 first) and returns
(B, 1, H, W) depth in metres at the input's size, whatever H, W.

:func:`from_external` loads checkpoints of the paper authors' code and of Hu et al.'s code
into these variants (see :mod:`fastmde.models.external`).
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import bool_argument, integer_argument
from .external import ExternalCheckpointError, from_external
from .hu import HuModel
from .resnet import CheckpointMismatchError, ResNetEncoder, load_checkpoint
from .resolution import PAPER_SIZES, IntermediateResolution, parse_size
from .unet import UNet

ARCHITECTURES = {"unet": UNet, "hu": HuModel}


def _grid() -> dict[str, dict]:
    table: dict[str, dict] = {}
    for depth in (34, 50):
        table[f"hu{depth}"] = dict(
            description=f"Hu et al.'s original model, ResNet{depth}: 5x5/3x3 up-projections without "
                        "1x1, 1x1 entry conv, refinement at half resolution",
            config=dict(arch="hu", encoder=depth, kernel_size=5, reduce=False, original=True),
        )
    for arch, title in (("unet", "U-Net"), ("hu", "slimmed Hu et al. (decoder to full internal size)")):
        for depth in (34, 50):
            for k in (3, 5):
                for reduce in (False, True):
                    name = f"{arch}{depth}-k{k}" + ("-1x1" if reduce else "")
                    table[name] = dict(
                        description=f"{title}, ResNet{depth}, {k}x{k} up-projections "
                                    + ("with the 1x1 reduction" if reduce else "without the 1x1 reduction"),
                        config=dict(arch=arch, encoder=depth, kernel_size=k, reduce=reduce, original=False),
                    )
    return table


_VARIANTS = _grid()


def variants() -> dict[str, dict]:
    """Every named variant: ``{name: {"description": str, "config": dict}}`` (a copy)."""
    return {name: dict(description=v["description"], config=dict(v["config"])) for name, v in _VARIANTS.items()}


def _config(name: str, overrides: dict) -> dict:
    if name not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_VARIANTS)}")
    config = dict(_VARIANTS[name]["config"])
    unknown = [k for k in overrides if k not in ("encoder", "kernel_size", "reduce", "original", "normalize")]
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for build(); allowed: encoder, kernel_size, "
                        "reduce, original (hu only), normalize")
    # ints (numpy's too) and switches, checked here for variant_name too: encoder=18.0 would be
    # named "unet18.0-k3", reduce="no" would build the 1x1 reduction
    for key, value in overrides.items():
        if key in ("encoder", "kernel_size"):
            # an even kernel_size is refused here too: variant_name would call it "unet34-k4"
            overrides = {**overrides, key: integer_argument(value, key, minimum=1, odd=key == "kernel_size")}
        else:
            overrides = {**overrides, key: bool_argument(value, key)}
    config.update(overrides)
    return config


#: the ``build`` overrides that change the network's architecture, hence its name
NAMED_OVERRIDES = ("encoder", "kernel_size", "reduce", "original")


def variant_name(name: str, **overrides) -> str:
    """The name of the network ``build(name, **overrides)`` makes: the variant's name with the
    encoder depth, kernel size and 1x1 reduction it really has.

    ``variant_name("unet34-k3-1x1", encoder=18) == "unet18-k3-1x1"``; without overrides (or with
    the variant's own values) the variant's name. Hu et al.'s original model is ``hu<depth>``
    (``-original-k<k>[-1x1]`` where its kernel size or reduction is overridden, to stay apart from
    the slimmed ``hu<depth>-k<k>``). Other overrides (``normalize``, ``aspect``) and ``None``
    values do not change the name. Every name fastmde shows or records for a model (``train``'s
    log, checkpoints' ``fastmde_variant``, ``eval`` results, export metadata, sweep tables) is this.

    Raises ValueError for an unknown ``name`` (with the list of names).
    """
    given = {k: v for k, v in overrides.items() if k in NAMED_OVERRIDES and v is not None}
    config = _config(name, given)
    depth, k, reduce = config["encoder"], config["kernel_size"], config["reduce"]
    if config["arch"] == "hu" and config.get("original"):
        if k == 5 and not reduce:
            return f"hu{depth}"
        return f"hu{depth}-original-k{k}" + ("-1x1" if reduce else "")
    return f"{config['arch']}{depth}-k{k}" + ("-1x1" if reduce else "")


def build(name: str, *, size=(288, 384), pretrained=None, aspect: str = "stretch", **overrides) -> nn.Module:
    """Build the named variant, wrapped to run at the internal ``size``.

    Args:
        name: a key of :func:`variants` (e.g. ``"unet34-k3-1x1"``, ``"hu50"``).
        size: internal (H, W) or ``"HxW"``; ``None`` runs at the input's own size.
        pretrained: encoder weights: ``"imagenet"`` (torchvision's ImageNet weights through
            the torch hub cache, :mod:`fastmde.models.imagenet`) or the path of a local
            torchvision/timm ResNet state dict; None: random initialisation.
        aspect: ``"stretch"`` (the input resized to ``size``) or ``"keep"`` (scaled to cover
            ``size``, its aspect ratio kept: :class:`IntermediateResolution`).
        overrides: ``encoder`` (18/34/50/101), ``kernel_size``, ``reduce``, ``original``
            (``hu`` only), ``normalize`` (ImageNet mean/std on the 0-255 input; default False).

    Returns an :class:`IntermediateResolution` around the network (``.net``): input
    (B, 3, H, W) float in 0-255, output (B, 1, H, W) depth in metres; its ``fastmde_variant``
    is :func:`variant_name` (``build("unet34-k3-1x1", encoder=18).fastmde_variant ==
    "unet18-k3-1x1"``).
    """
    config = _config(name, overrides)
    arch = config.pop("arch")
    if arch == "unet":
        if config.pop("original", False):
            raise ValueError("original=True applies to the Hu et al. model only")
    if aspect not in IntermediateResolution.ASPECTS:
        raise ValueError(f"aspect must be one of {IntermediateResolution.ASPECTS}, got {aspect!r}")
    net = ARCHITECTURES[arch](pretrained=pretrained, **config)
    model = IntermediateResolution(net, size=size, aspect=aspect)
    # what the network is, named in the model's own errors and warnings (and by the engine)
    model.fastmde_variant = variant_name(name, **overrides)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of ``model(x)``: every Conv2d/Linear, counted with forward hooks.

    An :class:`~fastmde.nn.UpProjection` runs its two upsample-reading k x k convolutions inside
    one fused op instead of calling those Conv2d modules; their MACs are added from the block's
    output size (for every block whose convs did not run as modules). Resizes, BN and
    activations are not counted. Conv MACs = B * H_out * W_out * C_out * C_in / groups * kh * kw.
    """
    from ..nn.up_projection import UpProjection

    total = 0
    called: set[int] = set()

    def conv_hook(module, inputs, output):
        nonlocal total
        called.add(id(module))
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    block_outputs: list[tuple[UpProjection, torch.Size]] = []

    def block_hook(module, inputs, output):
        block_outputs.append((module, output.shape))

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, UpProjection):
            handles.append(m.register_forward_hook(block_hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    for block, shape in block_outputs:
        for conv in (block.conv1, block.shortcut_conv):
            if id(conv) not in called:
                kh, kw = conv.kernel_size
                total += shape.numel() * conv.in_channels * kh * kw
    return total


def describe_model(name: str, size_str="288x384") -> str:
    """Printable summary of a variant: description, parameters, MACs of one image at ``size_str``."""
    size = parse_size(size_str)
    if name not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_VARIANTS)}")
    # on the meta device: shapes only, so even the largest variant is counted instantly
    with torch.device("meta"):
        model = build(name, size=size).eval()
    params = count_parameters(model)
    macs = count_macs(model, torch.empty(1, 3, *size, device="meta"))
    info = _VARIANTS[name]
    config = ", ".join(f"{k}={v}" for k, v in info["config"].items())
    return "\n".join([
        f"model   {name}: {info['description']}",
        f"config  {config}",
        f"params  {params:,} ({params / 1e6:.2f} M)",
        f"MACs    {macs:,} ({macs / 1e9:.2f} G) per image at {size[0]}x{size[1]} (HxW, internal size)",
    ])


__all__ = [
    "CheckpointMismatchError",
    "ExternalCheckpointError",
    "HuModel",
    "IntermediateResolution",
    "PAPER_SIZES",
    "ResNetEncoder",
    "UNet",
    "build",
    "count_macs",
    "count_parameters",
    "describe_model",
    "from_external",
    "load_checkpoint",
    "parse_size",
    "variant_name",
    "variants",
]
