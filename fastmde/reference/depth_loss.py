r"""Reference depth loss (Hu et al., as in the paper's code): the spec every kernel matches.

Notation, per image pixel p, with prediction :math:`D` and ground truth :math:`Y` (B, H, W):

* Ground truth is sanitised first: non-finite pixels of :math:`Y` become 0 and invalid.
  A pixel is *valid* (:math:`m = 1`) when the optional mask is true there and :math:`Y` is
  finite.
* :math:`Y_b` = :math:`Y` blurred by a 7x7 Gaussian (σ = 1.4, reflect padding) when ``blur``,
  else :math:`Y`. The blur feeds the gradient and normal terms only.
* Sobel, unnormalised, zero padding 1, cross-correlation:
  :math:`k_x = [[1,0,-1],[2,0,-2],[1,0,-1]]`, :math:`k_y = [[1,2,1],[0,0,0],[-1,-2,-1]]`;
  :math:`\hat g = \mathrm{Sobel}(D)`, :math:`g = \mathrm{Sobel}(Y_b)`.
* Masked stencils: :math:`g` at p reads the ground truth on the 3x3 window around p, or on
  the 9x9 window with ``blur`` (a 3x3 Sobel of values that each read a 7x7 blur window). The
  pixel p *has a valid stencil* (:math:`s = 1`) when every pixel of that window inside the
  image is valid (p included); neighbours outside the image keep the padding rules above
  (zero padding for the Sobel, reflection for the blur, which only re-reads pixels inside the
  window). So an invalid pixel (a hole of the depth sensor, an augmentation's fill) never
  reaches :math:`g`, whatever value it holds, and its neighbourhood leaves the gradient and
  normal terms. Without a mask and with finite ground truth, :math:`s = m = 1` everywhere.
* Counts: :math:`N_d = \sum m` for the depth term, :math:`N_s = \sum s` for the gradient and
  normal terms, over the whole batch.

Terms:

* depth, ``log``: :math:`\frac1{N_d}\sum m \ln(|D-Y| + α)`; ``l1``: :math:`\frac1{N_d}\sum m|D-Y|`
* gradient: :math:`\frac1{N_s}\sum s\,[\ln(|\hat g_x-g_x|+α) + \ln(|\hat g_y-g_y|+α)]`
* normal: :math:`\frac1{N_s}\sum s\,|1-\cos(\hat n, n)|`, :math:`n = (-g_x, -g_y, 1)`, :math:`\hat n` likewise
* total: :math:`w_0\,\mathrm{depth} + w_1\,\mathrm{gradient} + w_2\,\mathrm{normal}`

A term with no counted pixel is 0 and adds nothing to the gradient. Half and bfloat16 inputs
are computed in float32; the loss is float32 then. float64 stays float64, the blur's weights
included.

Two functions: :func:`depth_loss_terms_reference` is plain differentiable PyTorch (the oracle
of the tests); :func:`depth_loss_forward_reference` returns the terms together with the
analytic gradient of the total with respect to ``pred`` and the counts, the contract of every
fused kernel. The kernels take the gradients of the *unnormalised* sums :math:`N_d w_0\,
\mathrm{depth}` and :math:`N_s (w_1\,\mathrm{gradient} + w_2\,\mathrm{normal})` in the same
pass as the counts (no counting pre-pass), then apply :math:`1/N_d` and :math:`1/N_s` in one
elementwise pass (:func:`normalise_gradient_reference`, the rounding every twin follows), so
the op's backward only scales one map by the incoming gradient (nothing at all when that is 1,
as in ``loss.backward()``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import compute_dtype

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
    size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA, dtype=torch.float32
) -> torch.Tensor:
    """Normalised 1-D Gaussian :math:`w_i \\propto e^{-(i-r)^2/2σ^2}`, r = size // 2.
    The 2-D blur kernel is its outer product (as torchvision and kornia build it).

    Built and normalised in float64 for ``dtype=torch.float64``; in float32 for every other
    dtype (the float32 values every kernel uses), then cast."""
    r = size // 2
    build = compute_dtype(dtype)
    w = torch.tensor([math.exp(-((i - r) ** 2) / (2.0 * sigma * sigma)) for i in range(size)], dtype=build)
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


def _neighbours(x: torch.Tensor):
    """The 3x3 neighbours of every pixel of (B, H, W) maps, zero outside: n[(di, dj)], di, dj in -1..1."""
    xp = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return {(di, dj): xp[:, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w] for di in (-1, 0, 1) for dj in (-1, 0, 1)}


def sobel_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised Sobel (cross-correlation with ``SOBEL_X``/``SOBEL_Y``, zero padding 1) of
    (B, H, W) maps -> (gx, gy), summed in the kernels' order (so a constant region gives exactly 0):
    gx = (x[-1,-1] + 2 x[0,-1] + x[1,-1]) - (x[-1,1] + 2 x[0,1] + x[1,1]), gy likewise by rows."""
    n = _neighbours(x)
    gx = (n[-1, -1] + 2.0 * n[0, -1] + n[1, -1]) - (n[-1, 1] + 2.0 * n[0, 1] + n[1, 1])
    gy = (n[-1, -1] + 2.0 * n[-1, 0] + n[-1, 1]) - (n[1, -1] + 2.0 * n[1, 0] + n[1, 1])
    return gx, gy


def sobel_adjoint_reference(ax: torch.Tensor, ay: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`sobel_reference` (a transposed 3x3 stencil, zero outside):
    ``Sobel_x^T(ax) + Sobel_y^T(ay)``, in the kernels' order."""
    a, b = _neighbours(ax), _neighbours(ay)
    gxa = (a[1, 1] + 2.0 * a[0, 1] + a[-1, 1]) - (a[1, -1] + 2.0 * a[0, -1] + a[-1, -1])
    gya = (b[1, 1] + 2.0 * b[1, 0] + b[1, -1]) - (b[-1, 1] + 2.0 * b[-1, 0] + b[-1, -1])
    return gxa + gya


def stencil_radius(blur: bool) -> int:
    """Half-width of the ground-truth window the gradient and normal terms read at a pixel:
    1 (the 3x3 Sobel) or 4 with ``blur`` (a 3x3 Sobel of 7x7 blurs: 9x9)."""
    return 1 + BLUR_KERNEL_SIZE // 2 if blur else 1


def stencil_validity(valid: torch.Tensor, blur: bool) -> torch.Tensor:
    """(B, H, W) bool: pixels whose whole ground-truth stencil (the window of
    :func:`stencil_radius`, clipped to the image) is valid; an erosion of ``valid``."""
    r = stencil_radius(blur)
    invalid = (~valid).to(torch.float32)[:, None]
    # max_pool2d pads with -inf: positions outside the image never count as invalid
    return F.max_pool2d(invalid, 2 * r + 1, stride=1, padding=r)[:, 0] == 0


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
    cdtype = compute_dtype(pred.dtype)
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
        s = stencil_validity(valid, blur).to(cdtype)
        n_s = s.sum().clamp_min(1.0)
        yb = gaussian_blur_reference(y) if blur else y
        gx, gy = sobel_reference(yb)
        px, py = sobel_reference(d)
        if gradient:
            grad_term = (
                (torch.log((px - gx).abs() + alpha) * s).sum()
                + (torch.log((py - gy).abs() + alpha) * s).sum()
            ) / n_s
        if normal:
            dot = px * gx + py * gy + 1.0
            norm_p = torch.sqrt(px * px + py * py + 1.0)
            norm_g = torch.sqrt(gx * gx + gy * gy + 1.0)
            cos = dot / (norm_p * norm_g)
            normal_term = ((1.0 - cos).abs() * s).sum() / n_s
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Terms, the gradient of the total with respect to ``pred``, and the counts, by the
    analytic formulas.

    Returns

    * ``terms`` (4,) = [depth, gradient, normal, total] in the compute dtype;
    * ``grad`` = :math:`\partial\,\mathrm{total} / \partial D`, shaped like ``pred``, in
      :func:`gradient_dtype` (``pred``'s dtype; float32 for float16, where 1/N is below
      float16's normal range for a batch of NYU frames), from the two unnormalised parts below
      by :func:`normalise_gradient_reference`;
    * ``counts`` (3,) = [:math:`N_d`, :math:`N_s`, :math:`N_s`] in the compute dtype, the pixels
      counted in each term (0 for a term that is off).

    The unnormalised parts, rounded to ``pred``'s dtype as the kernels store them:
    ``grad_depth`` = :math:`\partial (N_d w_0\,\mathrm{depth}) / \partial D` and
    ``grad_stencil`` = :math:`\partial (N_s (w_1\,\mathrm{gradient} + w_2\,\mathrm{normal}))
    / \partial D`. With :math:`m` the validity and :math:`s` the stencil validity, per pixel:

    * depth: :math:`w_0 m\,\mathrm{sgn}(e)/(|e|+α)` (log) or :math:`w_0 m\,\mathrm{sgn}(e)` (l1), e = D - Y
    * gradient: :math:`\partial/\partial \hat g_x = w_1 s\,\mathrm{sgn}(e_x)/(|e_x|+α)`, likewise y
    * normal: with :math:`c = \cos(\hat n, n)`, :math:`\partial/\partial \hat g_x =
      -w_2 s\,\mathrm{sgn}(1-c)\,(g_x/(|\hat n||n|) - c\,\hat g_x/|\hat n|^2)`
    * then ``grad_stencil`` :math:`= \mathrm{Sobel}_x^T(\cdot) + \mathrm{Sobel}_y^T(\cdot)`
      (the adjoint of a zero-padded cross-correlation is a transposed convolution;
      :func:`sobel_adjoint_reference`).
    """
    with torch.no_grad():
        cdtype = compute_dtype(pred.dtype)
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
            grad_depth = w0 * m * torch.sign(e) / (abs_e + alpha)
        elif depth_term == "l1":
            depth = (abs_e * m).sum() * inv_n
            grad_depth = w0 * m * torch.sign(e)
        else:
            raise ValueError(f"depth_term must be one of {DEPTH_TERMS}, got {depth_term!r}")
        zero = torch.zeros((), dtype=cdtype, device=d.device)
        grad_term = normal_term = count_s = zero
        grad_stencil = None
        if gradient or normal:
            s = stencil_validity(valid, blur).to(cdtype)
            count_s = s.sum()
            inv_n_s = 1.0 / count_s.clamp_min(1.0)
            yb = gaussian_blur_reference(y) if blur else y
            gx, gy = sobel_reference(yb)
            px, py = sobel_reference(d)
            d_px = torch.zeros_like(px)
            d_py = torch.zeros_like(py)
            if gradient:
                ex, ey = px - gx, py - gy
                grad_term = (
                    (torch.log(ex.abs() + alpha) * s).sum() + (torch.log(ey.abs() + alpha) * s).sum()
                ) * inv_n_s
                d_px = d_px + w1 * s * torch.sign(ex) / (ex.abs() + alpha)
                d_py = d_py + w1 * s * torch.sign(ey) / (ey.abs() + alpha)
            if normal:
                norm_p2 = px * px + py * py + 1.0
                norm_p = torch.sqrt(norm_p2)
                norm_g = torch.sqrt(gx * gx + gy * gy + 1.0)
                inv_pg = 1.0 / (norm_p * norm_g)
                cos = (px * gx + py * gy + 1.0) * inv_pg
                normal_term = ((1.0 - cos).abs() * s).sum() * inv_n_s
                sgn = -w2 * s * torch.sign(1.0 - cos)
                d_px = d_px + sgn * (gx * inv_pg - cos * px / norm_p2)
                d_py = d_py + sgn * (gy * inv_pg - cos * py / norm_p2)
            grad_stencil = sobel_adjoint_reference(d_px, d_py).to(pred.dtype)
        total = w0 * depth + w1 * grad_term + w2 * normal_term
        terms = torch.stack((depth, grad_term, normal_term, total))
        counts = torch.stack((count, count_s if gradient else zero, count_s if normal else zero))
        grad = normalise_gradient_reference(grad_depth.to(pred.dtype), grad_stencil, counts)
        return terms, grad, counts


def gradient_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the loss's gradient map for a prediction of ``dtype``: ``dtype`` itself,
    except float32 for float16 (1/N for a batch of NYU frames, about 1e-6, is subnormal in
    float16: a GradScaler's scale would then multiply a value that kept 4 bits)."""
    return torch.float32 if dtype == torch.float16 else dtype


def normalise_gradient_reference(
    grad_depth: torch.Tensor, grad_stencil: torch.Tensor | None, counts: torch.Tensor
) -> torch.Tensor:
    r""":math:`\mathrm{grad\_depth}\cdot(1/\max(N_d, 1)) + \mathrm{grad\_stencil}\cdot
    (1/\max(N_s, 1))` from the unnormalised parts (in ``pred``'s dtype; ``grad_stencil`` None
    when no stencil term is on): computed in the compute dtype, each product and the sum rounded
    there (no fused multiply-add), returned in :func:`gradient_dtype`."""
    cdtype = counts.dtype
    grad = grad_depth.to(cdtype) * (1.0 / counts[0].clamp_min(1.0))
    if grad_stencil is not None:
        grad = grad + grad_stencil.to(cdtype) * (1.0 / counts[1:].amax().clamp_min(1.0))
    return grad.to(gradient_dtype(grad_depth.dtype))


def depth_loss_backward_reference(grad_total: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    r"""d loss / d pred = :math:`g\,\mathrm{grad}` with :math:`g` = ``grad_total`` (0-dim, the
    compute dtype) and ``grad`` the forward's normalised gradient map, computed in the compute
    dtype and returned in ``dtype`` (``pred``'s). With :math:`g = 1` the result is ``grad``
    itself (to the bit), which the op's eager path returns without a pass."""
    g = grad_total
    return (grad.to(g.dtype) * g).to(dtype)
