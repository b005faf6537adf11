"""ResNet 18/34/50/101 encoders returning the four feature maps (strides 4, 8, 16, 32).

The module tree, and so the ``state_dict`` keys and shapes, are exactly torchvision's
``resnetXX`` without ``fc`` (``conv1``, ``bn1``, ``layer1..4.N.{conv1,bn1,conv2,bn2[,conv3,bn3]}``,
``layer*.0.downsample.{0,1}``; the stride of a Bottleneck on its 3x3 conv, "ResNet v1.5"), so an
ImageNet checkpoint saved by torchvision or timm loads::

    encoder = ResNetEncoder(34, pretrained="imagenet")                  # torchvision's, via the hub cache
    encoder = ResNetEncoder(34, pretrained="resnet34-b627a593.pth")     # a local file

``"imagenet"`` reads torchvision's published weights from the torch hub cache, downloading them
there once if they are missing (:mod:`fastmde.models.imagenet`); a path is read as it is. A
checkpoint may hold ``fc.*`` (ignored), may be wrapped in ``{"state_dict": ...}`` or
``{"model": ...}`` and may carry a ``module.`` prefix; any other missing or unexpected key, or a
shape mismatch, is a :class:`CheckpointMismatchError` naming them.

Input normalisation: the paper's code feeds the raw 0-255 image to the encoder (BatchNorm in
the first layer absorbs the scale during fine-tuning). ``normalize=True`` instead applies the
ImageNet convention the checkpoints were trained with, ``(x / 255 - mean) / std`` with
mean = (0.485, 0.456, 0.406), std = (0.229, 0.224, 0.225), to the 0-255 input. The constants
are non-persistent buffers, so the ``state_dict`` stays torchvision's either way.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import bool_argument, damaged_weights_message, integer_argument
from ..nn.cropped_conv import TapCroppedConv2d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# depth -> (block kind, blocks per stage)
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


class CheckpointMismatchError(ValueError):
    """A checkpoint file does not fit the encoder (missing/unexpected keys, wrong shapes)."""


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    # 3x3 convs skip the taps that only see padding: on the last stage's 1x1 maps (small
    # internal sizes) they are matrix products; elsewhere the plain convolution runs.
    conv = TapCroppedConv2d if k > 1 else nn.Conv2d
    return conv(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus identity (or 1x1 conv -> BN), ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 -> BN -> ReLU -> 3x3 (stride) -> BN -> ReLU -> 1x1 (x4 channels) -> BN, plus shortcut, ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1, self.bn1 = _conv(cin, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv(planes, out, 1), nn.BatchNorm2d(out)
        self.downsample = _downsample(cin, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


class ResNetEncoder(nn.Module):
    """ResNet trunk; ``forward(x)`` returns ``[block1, block2, block3, block4]``.

    Args:
        depth: 18, 34, 50 or 101.
        pretrained: ``"imagenet"`` (torchvision's ImageNet weights through the torch hub cache),
            the path of a local torchvision/timm state dict, or ``None`` (random init).
        normalize: apply the ImageNet mean/std to the 0-255 input (default False, as the paper).

    Shapes for x (B, 3, H, W): block_i is (B, channels[i], ceil(H / s), ceil(W / s)) with
    s = 4, 8, 16, 32 (exactly, for every H, W); ``channels`` is (64, 128, 256, 512) for
    ResNet18/34 and (256, 512, 1024, 2048) for ResNet50/101. ``stem_size(H, W)`` is the size of
    the stride-2 stem output, ceil(H / 2) x ceil(W / 2).
    """

    #: input side / side of the last block's map: block4 is ceil(H / 32) x ceil(W / 32)
    total_stride = 32

    def __init__(self, depth: int = 34, *, pretrained: str | os.PathLike | None = None, normalize: bool = False):
        super().__init__()
        # an int (numpy's too), never 18.0 or True; a switch, never "no"
        depth = integer_argument(depth, "ResNetEncoder: depth")
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth!r}")
        normalize = bool_argument(normalize, "ResNetEncoder: normalize")
        kind, layers = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.normalize = depth, normalize
        # float64 constants, cast to the input's dtype where used: a float64 input is normalised
        # with float64 values (as Hu et al.'s float64 reference would), float32 with the
        # correctly rounded ones
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1) * 255,
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1) * 255,
                             persistent=False)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin, channels = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride=2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            channels.append(cin)
        self.channels = tuple(channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(pretrained, str) and pretrained == "imagenet":
            from .imagenet import file_name, imagenet_state_dict

            load_state(self, imagenet_state_dict(depth), f"ImageNet weights {file_name(depth)}")
        elif pretrained is not None:
            load_checkpoint(self, pretrained)

    @staticmethod
    def stem_size(h: int, w: int) -> tuple[int, int]:
        """Output size of the 7x7 stride-2 stem (before the max-pool): ceil(h/2) x ceil(w/2)."""
        return (h + 1) // 2, (w + 1) // 2

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNetEncoder expects (B, 3, H, W), got {tuple(x.shape)}")
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        block1 = self.layer1(x)
        block2 = self.layer2(block1)
        block3 = self.layer3(block2)
        block4 = self.layer4(block3)
        return [block1, block2, block3, block4]

    def extra_repr(self) -> str:
        return f"depth={self.depth}, normalize={self.normalize}"


def _unwrap(checkpoint) -> dict:
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            inner = checkpoint.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                checkpoint = inner
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointMismatchError("checkpoint is not a state dict (a mapping of names to tensors)")
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def load_checkpoint(encoder: ResNetEncoder, path: str | os.PathLike) -> None:
    """Load a torchvision/timm ResNet state dict from the local file ``path`` into ``encoder``.

    ``fc.*`` entries are ignored and a missing ``num_batches_tracked`` is accepted (older
    torchvision files lack it); everything else must match exactly, else
    :class:`CheckpointMismatchError` lists the missing, unexpected and mis-shaped keys.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained checkpoint {path!r} does not exist (a local file is never downloaded: save a "
            f"torchvision/timm resnet{encoder.depth} state dict there, or pass pretrained='imagenet' / "
            "--pretrained imagenet for torchvision's ImageNet weights through the torch hub cache)"
        )
    from .._files import torch_file_damage, torch_file_problem

    # torch.save writes a zip archive (legacy files: a pickle, first byte 0x80); anything else
    # would fail inside torch.load with a bare "KeyError: <byte>".
    problem = torch_file_problem(path)
    if problem is not None:
        raise CheckpointMismatchError(
            f"pretrained weights {path!r} are not a PyTorch file: pass a torchvision/timm ResNet state dict "
            f"(.pth) ({problem})")
    damage = torch_file_damage(path)     # a download cut short, or bytes changed
    if damage is not None:
        raise CheckpointMismatchError(f"pretrained weights {path!r} are damaged or truncated: {damage}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        damage = torch_file_damage(path, exc)
        if damage is not None:
            raise CheckpointMismatchError(f"pretrained weights {path!r} are damaged or truncated: {damage}") from None
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointMismatchError(f"pretrained weights {path!r} cannot be read by torch.load "
                                      f"({type(exc).__name__}: {first[:200]})") from exc
    load_state(encoder, checkpoint, f"checkpoint {path!r}")


def load_state(encoder: ResNetEncoder, checkpoint, source: str) -> None:
    """Load a torchvision/timm ResNet state dict (or a ``{"state_dict": ...}`` wrapper) into
    ``encoder``, with :func:`load_checkpoint`'s rules; ``source`` names it in errors."""
    state = {k: v for k, v in _unwrap(checkpoint).items() if not k.startswith("fc.")}
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    damage = damaged_weights_message(expected, state)
    if damage:   # complex, bool or integer values, quantized or sparse tensors: not weights to train from
        raise CheckpointMismatchError(f"{source} is damaged: {damage}")
    if missing or unexpected or wrong:
        parts = [f"{source} does not fit resnet{encoder.depth}"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointMismatchError("; ".join(parts))
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(expected[k])
    encoder.load_state_dict(state, strict=True)


def resnet(depth: int, **kwargs) -> ResNetEncoder:
    """``ResNetEncoder(depth, **kwargs)``."""
    return ResNetEncoder(depth, **kwargs)
