r"""Reference depth loss (Hu et al., as in the paper's code): the spec every kernel matches.

Notation, per image pixel p, with prediction :math:`D` and ground truth :math:`Y` (B, H, W):

* Ground truth is sanitised first: non-finite pixels of :math:`Y` become 0 and invalid.
  A pixel is *valid* when the optional mask is true there and :math:`Y` is finite;
  :math:`N` is the number of valid pixels in the whole batch.
* :math:`Y_b` = :math:`Y` blurred by a 7x7 Gaussian (σ = 1.4, reflect padding) when ``blur``,
  else :math:`Y`. The blur feeds the gradient and normal terms only.
* Sobel, unnormalised, zero padding 1, cross-correlation:
  :math:`k_x = [[1,0,-1],[2,0,-2],[1,0,-1]]`, :math:`k_y = [[1,2,1],[0,0,0],[-1,-2,-1]]`;
  :math:`\hat g = \mathrm{Sobel}(D)`, :math:`g = \mathrm{Sobel}(Y_b)`.

Terms (sums over valid p, divided by N):

* depth, ``log``: :math:`\frac1N\sum \ln(|D-Y| + α)`; ``l1``: :math:`\frac1N\sum |D-Y|`
* gradient: :math:`\frac1N\sum \ln(|\hat g_x-g_x|+α) + \frac1N\sum \ln(|\hat g_y-g_y|+α)`
* normal: :math:`\frac1N\sum |1-\cos(\hat n, n)|`, :math:`n = (-g_x, -g_y, 1)`, :math:`\hat n` likewise
* total: :math:`w_0\,\mathrm{depth} + w_1\,\mathrm{gradient} + w_2\,\mathrm{normal}`

With no valid pixel every term is 0 and so is the gradient. Half and bfloat16 inputs are
computed in float32; the loss is float32 then (float64 stays float64).

Two functions: :func:`depth_loss_terms_reference` is plain differentiable PyTorch (the oracle
of the tests); :func:`depth_loss_forward_reference` returns the terms together with the
analytic gradient with respect to ``pred`` of the *unnormalised* total :math:`N \cdot total`
and N itself, the contract of every fused kernel: N is then counted in the same pass as the
gradient (no counting pre-pass) and the op's backward applies 1/N in the scaling it does anyway.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEPTH_TERMS = ("log", "l1")
BLUR_KERNEL_SIZE = 7
BLUR_SIGMA = 1.4

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))

# The paper's Table 3 rows: name -> keyword arguments of depth_loss.
PRESETS: dict[str, dict] = {
    "l1": dict(depth_term="l1", gradient=False, normal=False, blur=False),
    "hu": dict(depth_term="log", gradient=True, normal=True, blur=False),
    "hu_blurred": dict(depth_term="log", gradient=True, normal=True, blur=True),
    "l1_hu": dict(depth_term="l1", gradient=True, normal=True, blur=False),
    "l1_hu_blurred": dict(depth_term="l1", gradient=True, normal=True, blur=True),
}


def gaussian_weights_1d(
    size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA, dtype=torch.float64
) -> torch.Tensor:
    """Normalised 1-D Gaussian :math:`w_i \\propto e^{-(i-r)^2/2σ^2}`, r = size // 2.
    The 2-D blur kernel is its outer product (as torchvision and kornia build it)."""
    r = size // 2
    w = torch.tensor([math.exp(-((i - r) ** 2) / (2.0 * sigma * sigma)) for i in range(size)])
    return (w / w.sum()).to(dtype)


def reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect (``reflect-101``, edge not repeated) an index into [0, n), folding as often as
    needed. Equals ``F.pad(mode="reflect")`` where that is defined (pad < n) and extends it to
    tiny maps; n = 1 maps everything to 0."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def gaussian_blur_reference(y: torch.Tensor) -> torch.Tensor:
    """Separable 7x7 Gaussian blur (σ = 1.4) of (B, H, W) maps with reflect padding."""
    w = gaussian_weights_1d(dtype=y.dtype).to(y.device)
    r = BLUR_KERNEL_SIZE // 2
    _, h, wd = y.shape
    offsets = torch.arange(-r, r + 1, device=y.device)
    rows = reflect_index(torch.arange(h, device=y.device)[:, None] + offsets, h)  # (H, 7)
    cols = reflect_index(torch.arange(wd, device=y.device)[:, None] + offsets, wd)  # (W, 7)
    y = (y[:, rows, :] * w[None, None, :, None]).sum(dim=2)  # vertical pass
    y = (y[:, :, cols] * w[None, None, None, :]).sum(dim=3)  # horizontal pass
    return y


def sobel_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised Sobel (cross-correlation, zero padding 1) of (B, H, W) maps -> (gx, gy)."""
    k = torch.tensor((SOBEL_X, SOBEL_Y), dtype=x.dtype, device=x.device)[:, None]
    g = F.conv2d(x[:, None], k, padding=1)
    return g[:, 0], g[:, 1]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sanitise(target: torch.Tensor, mask: torch.Tensor | None):
    finite = torch.isfinite(target)
    target = torch.where(finite, target, torch.zeros_like(target))
    valid = finite if mask is None else (finite & mask)
    return target, valid


def depth_loss_terms_reference(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    depth_term: str = "log",
    alpha: float = 0.5,
    gradient: bool = True,
    normal: bool = True,
    blur: bool = False,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> dict[str, torch.Tensor]:
    """The loss terms of (B, H, W) ``pred`` / ``target`` as plain differentiable PyTorch.

    Returns ``{"depth", "gradient", "normal", "total"}`` (unweighted terms; disabled terms 0).
    """
    if depth_term not in DEPTH_TERMS:
        raise ValueError(f"depth_term must be one of {DEPTH_TERMS}, got {depth_term!r}")
    cdtype = _compute_dtype(pred.dtype)
    d = pred.to(cdtype)
    y, valid = _sanitise(target.to(cdtype), mask)
    m = valid.to(cdtype)
    n = m.sum().clamp_min(1.0)

    diff = d - y
    per_pixel = torch.log(diff.abs() + alpha) if depth_term == "log" else diff.abs()
    depth = (per_pixel * m).sum() / n
    zero = d.sum() * 0.0  # a 0 that keeps the graph (and dtype) of pred
    grad_term = normal_term = zero
    if gradient or normal:
        yb = gaussian_blur_reference(y) if blur else y
        gx, gy = sobel_reference(yb)
        px, py = sobel_reference(d)
        if gradient:
            grad_term = (
                (torch.log((px - gx).abs() + alpha) * m).sum()
                + (torch.log((py - gy).abs() + alpha) * m).sum()
            ) / n
        if normal:
            dot = px * gx + py * gy + 1.0
            norm_p = torch.sqrt(px * px + py * py + 1.0)
            norm_g = torch.sqrt(gx * gx + gy * gy + 1.0)
            cos = dot / (norm_p * norm_g)
            normal_term = ((1.0 - cos).abs() * m).sum() / n
    w0, w1, w2 = weights
    total = w0 * depth + w1 * grad_term + w2 * normal_term
    return {"depth": depth, "gradient": grad_term, "normal": normal_term, "total": total}


def depth_loss_forward_reference(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    depth_term: str,
    alpha: float,
    gradient: bool,
    normal: bool,
    blur: bool,
    weights: tuple[float, float, float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Terms, the gradient of the unnormalised total w.r.t. ``pred``, and N, by the analytic formulas.

    Returns ``terms`` (4,) = [depth, gradient, normal, total] in the compute dtype,
    ``grad_sum`` = :math:`\\partial (N \\cdot total) / \\partial D` shaped and typed like ``pred``
    (so d total / d pred = grad_sum / max(N, 1)), and ``count`` = N, a 0-dim tensor in the
    compute dtype. With :math:`m` the validity, per pixel:

    * depth: :math:`w_0 m\\,\\mathrm{sgn}(e)/(|e|+α)` (log) or :math:`w_0 m\\,\\mathrm{sgn}(e)` (l1), e = D - Y
    * gradient: :math:`\\partial/\\partial \\hat g_x = w_1 m\\,\\mathrm{sgn}(e_x)/(|e_x|+α)`, likewise y
    * normal: with :math:`c = \\cos(\\hat n, n)`, :math:`\\partial/\\partial \\hat g_x =
      -w_2 m\\,\\mathrm{sgn}(1-c)\\,(g_x/(|\\hat n||n|) - c\\,\\hat g_x/|\\hat n|^2)`
    * then :math:`\\partial L/\\partial D \\mathrel{+}= \\mathrm{Sobel}_x^T(\\cdot) + \\mathrm{Sobel}_y^T(\\cdot)`
      (the adjoint of a zero-padded cross-correlation is a transposed convolution).
    """
    with torch.no_grad():
        cdtype = _compute_dtype(pred.dtype)
        d = pred.to(cdtype)
        y, valid = _sanitise(target.to(cdtype), mask)
        m = valid.to(cdtype)
        count = m.sum()
        inv_n = 1.0 / count.clamp_min(1.0)
        w0, w1, w2 = (float(w) for w in weights)

        e = d - y
        abs_e = e.abs()
        if depth_term == "log":
            depth = (torch.log(abs_e + alpha) * m).sum() * inv_n
            grad = w0 * m * torch.sign(e) / (abs_e + alpha)
        elif depth_term == "l1":
            depth = (abs_e * m).sum() * inv_n
            grad = w0 * m * torch.sign(e)
        else:
            raise ValueError(f"depth_term must be one of {DEPTH_TERMS}, got {depth_term!r}")
        grad_term = torch.zeros((), dtype=cdtype, device=d.device)
        normal_term = torch.zeros((), dtype=cdtype, device=d.device)
        if gradient or normal:
            yb = gaussian_blur_reference(y) if blur else y
            gx, gy = sobel_reference(yb)
            px, py = sobel_reference(d)
            d_px = torch.zeros_like(px)
            d_py = torch.zeros_like(py)
            if gradient:
                ex, ey = px - gx, py - gy
                grad_term = (
                    (torch.log(ex.abs() + alpha) * m).sum() + (torch.log(ey.abs() + alpha) * m).sum()
                ) * inv_n
                d_px = d_px + w1 * m * torch.sign(ex) / (ex.abs() + alpha)
                d_py = d_py + w1 * m * torch.sign(ey) / (ey.abs() + alpha)
            if normal:
                norm_p2 = px * px + py * py + 1.0
                norm_p = torch.sqrt(norm_p2)
                norm_g = torch.sqrt(gx * gx + gy * gy + 1.0)
                inv_pg = 1.0 / (norm_p * norm_g)
                cos = (px * gx + py * gy + 1.0) * inv_pg
                normal_term = ((1.0 - cos).abs() * m).sum() * inv_n
                s = -w2 * m * torch.sign(1.0 - cos)
                d_px = d_px + s * (gx * inv_pg - cos * px / norm_p2)
                d_py = d_py + s * (gy * inv_pg - cos * py / norm_p2)
            k = torch.tensor((SOBEL_X, SOBEL_Y), dtype=cdtype, device=d.device)[:, None]
            grad = grad + F.conv_transpose2d(torch.stack((d_px, d_py), dim=1), k, padding=1)[:, 0]
        total = w0 * depth + w1 * grad_term + w2 * normal_term
        terms = torch.stack((depth, grad_term, normal_term, total))
        return terms, grad.to(pred.dtype), count
