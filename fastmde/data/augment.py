"""Batched data augmentation on the batch's device, with per-sample random parameters.

For each sample (parameters drawn from a ``torch.Generator``):

* horizontal flip with probability ``flip`` (an exact index flip of image and depth);
* brightness, contrast and saturation, each scaled by a factor ``U(color)``, in that order, on
  the image in [0, 1]: ``x <- clamp(b x)``; ``x <- clamp(m + c (x - m))`` with ``m`` the image's
  mean grey; ``x <- clamp(g + s (x - g))`` with ``g`` the pixel's grey (0.299 R + 0.587 G + 0.114 B);
* a crop removing a fraction ``U(0, crop)`` of each side's length, at a random position, resized
  back to the full size, and a rotation by ``U(-rotate, rotate)`` degrees about the centre.

Crop and rotation form one affine map per sample. In normalised coordinates
(``F.affine_grid``, ``align_corners=False``) an output point ``p`` samples the input at
``t + s A^-1 R(theta) A p`` with ``A = diag(W, H)`` (so the rotation is a true rotation in
pixels), ``s`` the kept fraction and ``t`` the crop centre. The image is resampled bilinearly;
depth with nearest neighbour, so it is never blended across edges and no value appears that
was not in the input. Pixels whose source lies outside the input become 0 (invalid depth).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_GREY = (0.299, 0.587, 0.114)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grey level 0.299 R + 0.587 G + 0.114 B."""
    g = x[:, 0:1] * _GREY[0]
    g.add_(x[:, 1:2], alpha=_GREY[1]).add_(x[:, 2:3], alpha=_GREY[2])
    return g


def color_jitter(image: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                 saturation: torch.Tensor, input_scale: float = 1.0) -> torch.Tensor:
    """Brightness, contrast, saturation factors (B,) applied to a (B, 3, H, W) image.

    The image is ``input_scale * image`` in [0, 1] (``input_scale = 1/255`` takes uint8 as is);
    the result is a new floating tensor in [0, 1]. In-place steps keep it to a few passes."""
    view = (-1, 1, 1, 1)
    dtype = image.dtype if image.is_floating_point() else torch.float32
    # out of place first (the caller's image is never modified); uint8 * float promotes in one pass
    x = torch.mul(image, (brightness * input_scale).to(dtype).view(view)).clamp_(0, 1)
    # the mean grey of the image is the grey of the per-channel means
    means = x.mean(dim=(2, 3))
    m = (means * torch.tensor(_GREY, dtype=dtype, device=x.device)).sum(1).view(view)
    c = contrast.to(dtype).view(view)
    x = torch.addcmul(m * (1 - c), x, c).clamp_(0, 1)
    s = saturation.to(dtype).view(view)
    g = _grey(x).mul_(1 - s)
    return torch.addcmul(g, x, s).clamp_(0, 1)


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, 1, H, W), align_corners=False)`` by broadcasting (no batched
    matrix product over every pixel, which is slow on the CPU): (B, H, W, 2)."""
    dt, dev = theta.dtype, theta.device
    bx = ((torch.arange(width, dtype=dt, device=dev) * 2 + 1) / width - 1).view(1, 1, width)
    by = ((torch.arange(height, dtype=dt, device=dev) * 2 + 1) / height - 1).view(1, height, 1)
    t = theta.view(-1, 6, 1, 1)
    gx = torch.addcmul(t[:, 2], t[:, 0], bx) + t[:, 1] * by
    gy = torch.addcmul(t[:, 5], t[:, 3], bx) + t[:, 4] * by
    return torch.stack((gx, gy), dim=-1)


def affine_theta(scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, angle_deg: torch.Tensor,
                 height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) ``theta`` for ``F.affine_grid``: input = t + s A^-1 R A output, A = diag(W, H)."""
    a = angle_deg * (math.pi / 180.0)
    c, s = torch.cos(a), torch.sin(a)
    theta = torch.empty(scale.shape[0], 2, 3, dtype=scale.dtype, device=scale.device)
    theta[:, 0, 0] = scale * c
    theta[:, 0, 1] = -scale * s * (height / width)
    theta[:, 1, 0] = scale * s * (width / height)
    theta[:, 1, 1] = scale * c
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    return theta


def parse_parts(value) -> tuple[str, ...]:
    """``"flip,color"`` or a list -> ("flip", "color"): names from :attr:`Augment.PARTS`, each
    once, in that order; an unknown name or an empty list is a ValueError."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else [str(p) for p in value]
    parts = [p for p in parts if p]
    unknown = sorted(set(parts) - set(Augment.PARTS))
    if unknown or not parts:
        raise ValueError(f"augmentation parts must name one or more of {', '.join(Augment.PARTS)} "
                         f"(use --no-augment for none); got {value!r}")
    return tuple(p for p in Augment.PARTS if p in parts)


class Augment(nn.Module):
    """The training augmentation of the paper, batched: ``image, depth = Augment()(image, depth, generator)``.

    Args:
        flip: probability of a horizontal flip (0 disables).
        color: (low, high) range of the brightness, contrast and saturation factors (None disables).
        crop: the largest fraction of each side removed by the random crop (0 disables).
        rotate: the largest rotation in degrees (0 disables).

    ``image`` is (B, 3, H, W) uint8 in [0, 255] (returned as uint8, rounded) or floating in
    [0, 1] (returned floating, clamped to [0, 1]): torchvision's convention for colour
    transforms. A floating image with values outside [0, 1] (the models' and ``to_images``'
    0-255 float convention, or an ImageNet-normalised image) is refused with a ValueError naming
    its range, with or without the colour jitter: jittered, a 0-255 image would come out
    clamped to white, and unjittered it would pass through in another range than the jittered
    ones. ``depth`` is floating (B, 1, H, W), any unit, 0 = invalid. Both stay on their device;
    parameters are drawn from ``generator`` (on its own device; default: the global CPU
    generator) and can be drawn separately with :meth:`sample` and applied with :meth:`apply`.
    """

    def __init__(self, flip: float = 0.5, color: tuple[float, float] | None = (0.6, 1.4), crop: float = 0.2,
                 rotate: float = 5.0):
        super().__init__()
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"flip must be a probability in [0, 1], got {flip}")
        if color is not None and not (0.0 <= color[0] <= color[1]):
            raise ValueError(f"color must be (low, high) with 0 <= low <= high, got {color}")
        if not 0.0 <= crop < 1.0:
            raise ValueError(f"crop must be in [0, 1), got {crop}")
        if rotate < 0:
            raise ValueError(f"rotate must be >= 0 degrees, got {rotate}")
        self.flip, self.color, self.crop, self.rotate = float(flip), color, float(crop), float(rotate)

    #: each transform by name, with the constructor argument that turns it off
    _OFF = {"flip": 0.0, "color": None, "crop": 0.0, "rotate": 0.0}
    #: the four transforms by name, as ``fastmde train --augment-parts`` lists them
    PARTS = tuple(_OFF)

    @classmethod
    def from_parts(cls, parts) -> "Augment":
        """The paper's augmentation with only the named transforms on (at their defaults).

        ``Augment.from_parts(["flip"])`` flips half the batch and leaves colour, scale and
        angle alone (the crop, for one, changes the apparent size of the scene)."""
        parts = parse_parts(parts)
        return cls(**{name: off for name, off in cls._OFF.items() if name not in parts})

    def extra_repr(self) -> str:
        return f"flip={self.flip}, color={self.color}, crop={self.crop}, rotate={self.rotate}"

    def sample(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-sample parameters, each a (batch,) tensor on the generator's device:
        ``flip`` (bool), ``brightness``, ``contrast``, ``saturation``, ``scale`` (kept fraction),
        ``tx``, ``ty`` (crop centre, normalised), ``angle`` (degrees)."""
        dev = generator.device if generator is not None else torch.device("cpu")

        def u(lo, hi):
            return lo + (hi - lo) * torch.rand(batch, generator=generator, device=dev)

        lo, hi = self.color if self.color is not None else (1.0, 1.0)
        p = {"flip": torch.rand(batch, generator=generator, device=dev) < self.flip}
        p["brightness"], p["contrast"], p["saturation"] = u(lo, hi), u(lo, hi), u(lo, hi)
        p["scale"] = 1.0 - u(0.0, self.crop)
        room = 1.0 - p["scale"]
        p["tx"], p["ty"] = room * u(-1.0, 1.0), room * u(-1.0, 1.0)
        p["angle"] = u(-self.rotate, self.rotate)
        return p

    def forward(self, image: torch.Tensor, depth: torch.Tensor, generator: torch.Generator | None = None):
        _check(image, depth)
        return self.apply(image, depth, self.sample(image.shape[0], generator))

    def apply(self, image: torch.Tensor, depth: torch.Tensor, params: dict[str, torch.Tensor]):
        """Apply given parameters (as from :meth:`sample`); missing keys mean 'no change'."""
        _check(image, depth)
        B, _, H, W = image.shape
        dev = image.device
        p = {k: v.to(dev) for k, v in params.items()}
        is_uint8 = image.dtype == torch.uint8
        x, d = image, depth
        if "flip" in p and bool(p["flip"].any()):
            # an exact index flip, done before the uint8 -> float conversion (4x fewer bytes)
            f = p["flip"].nonzero().squeeze(1)
            x, d = x.clone(), d.clone()
            x[f] = x[f].flip(-1)
            d[f] = d[f].flip(-1)
        if self.color is not None and all(k in p for k in ("brightness", "contrast", "saturation")):
            x = color_jitter(x, p["brightness"], p["contrast"], p["saturation"], 1 / 255 if is_uint8 else 1.0)
        elif is_uint8:
            x = x.float().div_(255)
        ones = torch.ones(B, device=dev)
        zeros = torch.zeros(B, device=dev)
        scale, angle = p.get("scale", ones), p.get("angle", zeros)
        tx, ty = p.get("tx", zeros), p.get("ty", zeros)
        if bool((scale != 1).any() | (angle != 0).any() | (tx != 0).any() | (ty != 0).any()):
            theta = affine_theta(scale.float(), tx.float(), ty.float(), angle.float(), H, W)
            grid = affine_grid(theta, H, W)
            x = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
            d = F.grid_sample(d, grid.to(d.dtype), mode="nearest", padding_mode="zeros", align_corners=False)
        if is_uint8:
            x = x.mul_(255.0).round_().to(torch.uint8)
        # never hand back the caller's own tensors
        return (x.clone() if x is image else x), (d.clone() if d is depth else d)


#: how far a floating image may stray outside [0, 1] (rounding of a 0-1 computation)
_FLOAT_RANGE_SLACK = 1e-3


def _check(image: torch.Tensor, depth: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"Augment: image must be a (B, 3, H, W) tensor, got {tuple(getattr(image, 'shape', ()))}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise TypeError(f"Augment: image must be uint8 or floating, got {image.dtype}")
    if image.is_floating_point() and image.numel():
        # one read of the image and one synchronisation: the uint8 path (the trainer's) skips it
        lo, hi = (float(v) for v in torch.aminmax(image.detach()))
        if not (-_FLOAT_RANGE_SLACK <= lo and hi <= 1 + _FLOAT_RANGE_SLACK):
            hint = ("a 0-255 float image: pass it as uint8, or divide by 255" if hi > 1 and lo >= -_FLOAT_RANGE_SLACK
                    else "pass uint8 0-255 or a float image in [0, 1]")
            raise ValueError(f"Augment: a floating image must hold values in [0, 1] (uint8: 0-255), got values in "
                             f"[{lo:.4g}, {hi:.4g}]: {hint}")
    if not isinstance(depth, torch.Tensor) or depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"Augment: depth must be a (B, 1, H, W) tensor, got {tuple(getattr(depth, 'shape', ()))}")
    if not depth.is_floating_point():
        raise TypeError(f"Augment: depth must be floating, got {depth.dtype}")
    if depth.shape[0] != image.shape[0] or depth.shape[2:] != image.shape[2:]:
        raise ValueError(f"Augment: image {tuple(image.shape)} and depth {tuple(depth.shape)} differ in batch or size")
    if depth.device != image.device:
        raise ValueError(f"Augment: image is on {image.device}, depth on {depth.device}")
