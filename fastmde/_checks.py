"""Input checks shared by the public functions: clear errors instead of crashes or silent NaNs."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_depth_maps(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    what: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Check a prediction / ground-truth pair and return them as (B, H, W) views.

    ``pred`` and ``target`` are (B, 1, H, W) or (B, H, W) floating tensors of the same shape on
    the same device; ``target`` is cast to ``pred``'s dtype. ``mask`` (optional) has the same
    shape and is bool or 0/1 numbers (nonzero = valid).
    """
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{what}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
            )
        if t.dim() not in (3, 4) or (t.dim() == 4 and t.shape[1] != 1):
            raise ValueError(
                f"{what}: {name} must have shape (B, 1, H, W) or (B, H, W), got {tuple(t.shape)}"
            )
        if t.numel() == 0:
            raise ValueError(f"{what}: {name} is empty (shape {tuple(t.shape)})")
    if pred.shape != target.shape:
        raise ValueError(
            f"{what}: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if pred.device != target.device:
        raise ValueError(f"{what}: pred is on {pred.device} but target is on {target.device}")
    pred3 = pred.reshape(pred.shape[0], pred.shape[-2], pred.shape[-1]) if pred.dim() == 4 else pred
    target3 = target.reshape(pred3.shape) if target.dim() == 4 else target
    if target3.dtype != pred3.dtype:
        target3 = target3.to(pred3.dtype)
    mask3 = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{what}: mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.shape != pred.shape and mask.shape != pred3.shape:
            raise ValueError(
                f"{what}: mask shape {tuple(mask.shape)} does not match pred shape {tuple(pred.shape)}"
            )
        if mask.device != pred.device:
            raise ValueError(f"{what}: mask is on {mask.device} but pred is on {pred.device}")
        if mask.is_complex():
            raise TypeError(f"{what}: mask must be bool or real numbers, got {mask.dtype}")
        mask3 = mask.reshape(pred3.shape)
        if mask3.dtype != torch.bool:
            mask3 = mask3 != 0
    return pred3, target3, mask3


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the hot paths accumulate and return statistics in: float64 stays float64, every
    other floating dtype (float32, float16, bfloat16) computes in float32 (DESIGN.md §2)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last when ``x`` is laid out so (and not also plain contiguous), else contiguous:
    the layout the ops give their outputs and input gradients."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
