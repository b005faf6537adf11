"""Running a trained model on images: the one inference path under training's validation,
``fastmde eval``, ``fastmde predict`` and the sweep's figure.

Images are uint8 (B, 3, H, W) RGB as the readers give them; the models take float 0-255 and
return (B, 1, H, W) depth in metres at the input's size.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .speed import autocast


def to_images(batch_images: torch.Tensor, device, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 0-255 on ``device`` (channels_last memory if asked)."""
    images = batch_images.to(device, non_blocking=True).float()
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def predict_depth(model, images: torch.Tensor, *, amp_dtype=None, flip: bool = False,
                  from_uint8: bool = False) -> torch.Tensor:
    """(B, 1, H, W) float32 depth in metres for float (B, 3, H, W) images in 0-255.

    With ``flip`` the result is ``(f(x) + mirror(f(mirror(x)))) / 2``, the mean with the
    prediction of the horizontally mirrored image (the test-time flip of DenseDepth's
    ``evaluate.py``). ``amp_dtype`` (bf16/fp16 or None) runs the model under autocast.
    ``from_uint8``: the images are :func:`to_images` of uint8 images, so the model's input-range
    check is skipped (a dark photo, all values 0 or 1, is not a 0-1 image).
    """
    from ..models.resolution import image_range_known

    with autocast(images.device, amp_dtype), (image_range_known() if from_uint8 else contextlib.nullcontext()):
        pred = model(images).float()
        if flip:
            pred = 0.5 * (pred + model(images.flip(-1)).float().flip(-1))
    return pred


@torch.no_grad()
def predict_images(model, images: list[torch.Tensor], *, device="cpu", batch_size: int = 4, amp_dtype=None,
                   flip: bool = False) -> list[np.ndarray]:
    """Depth maps, float32 numpy (H, W) metres, one per uint8 (3, H, W) image, in input order.

    Images of the same size are batched together (``batch_size`` at most); each keeps its own
    size. The model is put in eval mode.

    Raises:
        ValueError: ``batch_size`` < 1, or an image is not uint8 (3, H, W).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for i, im in enumerate(images):
        if not isinstance(im, torch.Tensor) or im.dtype != torch.uint8 or im.dim() != 3 or im.shape[0] != 3:
            what = f"{im.dtype} {tuple(im.shape)}" if isinstance(im, torch.Tensor) else type(im).__name__
            raise ValueError(f"image {i} must be a uint8 (3, H, W) tensor, got {what}")
    device = torch.device(device)
    model.eval()
    out: list[np.ndarray | None] = [None] * len(images)
    by_size: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(tuple(im.shape), []).append(i)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            batch = to_images(torch.stack([images[i] for i in chunk]), device)
            pred = predict_depth(model, batch, amp_dtype=amp_dtype, flip=flip, from_uint8=True)
            for i, p in zip(chunk, pred[:, 0].cpu().numpy()):
                out[i] = p.astype(np.float32)
    return out
