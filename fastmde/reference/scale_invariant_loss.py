r"""Reference scale-invariant losses: the SILog family and MiDaS's scale-and-shift-invariant loss.

The spec every kernel matches, in three parts: plain differentiable PyTorch
(:func:`scale_invariant_loss_reference`, the oracle of the tests), the per-pixel passes of the
op's contract (``silog_sums``, ``silog_backward``, ``ssi_moments``, ``ssi_residual_sums``,
``ssi_backward``: same names, arguments and results as the C++ and Triton entry points), and the
small per-image algebra between the passes (``silog_combine``, ``ssi_solve``, ``ssi_combine``),
shared by every implementation.

SILog (scale-invariant log loss, Eigen et al. 2014), three conventions
-----------------------------------------------------------------------

A pixel is *valid* where the optional mask is true and the ground truth y is finite and > 0
(0 marks a missing measurement; the log needs y > 0). Over the n valid pixels of the **whole
batch**, with :math:`d = \ln\max(\hat y, ε) - \ln y` (predictions floored at ``eps`` = 1e-6 m
by default, so a zero or negative prediction gives a large finite error instead of NaN; the
floor passes no gradient, as ``torch.clamp_min`` does; a NaN prediction stays NaN):

* ``silog`` (BTS ``pytorch/bts.py`` ``silog_loss``, copied by NeWCRFs and many others; kind
  ``"silog"``, λ = 0.85 (``variance_focus``), c = 10):
  :math:`L = c\sqrt{\tfrac1n\sum d^2 - λ(\tfrac1n\sum d)^2}`
* ``silog_dav2`` (Depth-Anything-V2 ``metric_depth/util/loss.py`` ``SiLogLoss``, GLPDepth;
  kind ``"silog"``, λ = 0.5 (``lambd``), c = 1): the same formula
* ``silog_adabins`` (AdaBins ``loss.py`` ``SILogLoss``; kind ``"silog_unbiased"``, λ = 0.85,
  c = 10): :math:`L = c\sqrt{\mathrm{var}(d) + (1-λ)\,\bar d^2}` with ``torch.var``'s unbiased
  variance :math:`\sum(d-\bar d)^2/(n-1)`; for n = 1 the variance is taken as 0 (``torch.var``
  gives NaN there).

The argument of the square root, :math:`v = \mathrm{var}(d) + (1-λ)\bar d^2` (the same as
:math:`\tfrac1n\sum d^2 - λ\bar d^2` for kind ``silog``), is 0 in exact arithmetic for λ = 1 and
a constant d (a prediction that is the ground truth times a constant). The fused passes take it
from one-pass sums (:math:`\tfrac1n\sum d^2 - \bar d^2`), which the twins keep exact enough:
the reference and Triton sum in float64, the C++ pass sums each row centred on its own mean in
float32 (two passes over the row, so the values are as small as the spread) and adds the rows
back in double (plain float32 row sums left up to :math:`3\cdot10^{-6}\,\tfrac1n\sum d^2`
there: a loss of up to 3e-3 with c = 10 where another backend gave 0). What is left is the spread
of the log errors' own rounding (a few ulps: up to :math:`6\cdot10^{-15}\tfrac1n\sum d^2`,
measured). So: where :math:`v \le τ \tfrac{1}{n'}\sum d^2` (n' as the variance divides,
τ = 1e-10 for a float32 computation, 1e-12 for float64: ``flat_tolerance``), the loss is 0 with
zero gradient, on every backend alike, instead of that residue or the NaN of ``sqrt`` (and its
infinite derivative at 0). Only λ = 1 (or within 1e-10 of it) reaches this, and only for a log
error whose spread is below 1e-5 of its root mean square (float32), whatever that is: with a
mean log error of ln 10⁴ a real spread of 1e-5 reads as 0. A ratio close to 1 (|d| about 0.01)
is above the rule: there the log errors' float32 rounding (about 2e-7) is the spread, and a
constant ratio gives a loss of about 2e-6 (c = 10), alike on every backend. Elsewhere the
backends differ by rounding only: with λ < 1 a constant d gives :math:`c\sqrt{1-λ}\,|\bar d|`
to about 1e-6 relative in float32.
No valid pixel in the batch: loss 0, zero gradient (the public function warns).

Gradient: :math:`\partial L/\partial\hat y_i = m_i\,[\hat y_i \ge ε]\,(A d_i + B)/\hat y_i` with
batch-wide A, B (``silog_combine``):

* kind ``silog``: :math:`A = c/(r n)`, :math:`B = -cλ\bar d/(r n)`, r = the square root;
* kind ``silog_unbiased``: :math:`A = c/(r n')`, :math:`B = c(-\bar d/n' + (1-λ)\bar d/n)/r`,
  n' = max(n - 1, 1).

Scale-and-shift-invariant loss (MiDaS, Ranftl et al. 2020), kind ``"ssi"``
--------------------------------------------------------------------------

As in the loss code the MiDaS authors published with the paper (``midas_loss.py``:
``ScaleAndShiftInvariantLoss(alpha=0.5, scales=4, reduction='batch-based')``). A pixel is valid
where the mask is true and y is finite (no sign rule: the loss works on depth or disparity
alike; pass ``mask=target > 0`` for sensor holes). Per image b, over its valid pixels M:

* least squares of the prediction p onto y (``compute_scale_and_shift``):
  :math:`a_{00} = \sum M p^2, a_{01} = \sum M p, a_{11} = \sum M, b_0 = \sum M p y,
  b_1 = \sum M y`, :math:`D = a_{00}a_{11} - a_{01}^2`,
  :math:`s = (a_{11}b_0 - a_{01}b_1)/D`, :math:`t = (a_{00}b_1 - a_{01}b_0)/D`.
  Where the system is degenerate (no or one valid pixel, a constant prediction) the source
  tests ``D != 0`` and sets s = t = 0; rounding makes that test arbitrary, so here the image
  is degenerate where :math:`D \le τ a_{00}a_{11}` (τ = 1e-6 in float32, 1e-12 in float64:
  a prediction whose spread is below 0.1% (1e-6 in float64) of its magnitude), and then
  s = t = 0 as in the source (its residual is -y, and it passes no gradient).
* residual :math:`r = s p + t - y` (s and t are functions of p: the gradient flows through
  them, as autograd does through the source's solve);
* data term ``mse_loss``: :math:`\sum_b \sum M r^2 / (2 \sum_b \sum M)`;
* gradient matching ``gradient_loss`` at scales k = 0..3 on the grid ``[::2^k, ::2^k]``: for
  the pairs of grid neighbours (horizontal and vertical, 2^k pixels apart) that are both valid,
  :math:`\sum |r_{q'} - r_q|`, divided by the batch's number of valid grid pixels :math:`M_k`;
* :math:`L = \mathrm{data} + α \sum_k \mathrm{grad}_k`, α = 0.5.

``reduction="image"`` (the source's ``reduction_image_based``) divides each image's sums by its
own count and averages over the B images instead (an image with no valid pixel adds 0 but still
counts in B). A term whose count is 0 is 0 (the source's rule); with no valid pixel at all the
loss is 0 with zero gradient.

Gradient (``ssi_combine``): with :math:`e_i = \partial L/\partial r_i` (data:
:math:`w_{b,0} M_i r_i`; pairs: :math:`α w_{b,k}\,\mathrm{sgn}(r_i - r_{i'})` for each valid pair
(i, i') at scale k; sgn(0) = 0 as for ``abs``), :math:`\partial L/\partial p_i = s e_i +
\partial s/\partial p_i\,P_b + \partial t/\partial p_i\,E_b`, :math:`P_b = \sum e p`,
:math:`E_b = \sum e`, which is :math:`s e_i + M_i(κ_1 y_i + κ_2 p_i + κ_3)` with per-image κ.
:math:`w_{b,k}` = 1/M_k (batch) or 1/(B M_{b,k}) (image), 0 where the count is 0.

dtypes: pred and target are read in their own dtypes (the ground truth is never rounded to the
prediction's dtype) and computed in float32, or float64 when either is float64; the per-image
sums and the algebra between passes are float64; the loss is returned in the compute dtype, the
gradient in pred's dtype.
"""
from __future__ import annotations

import math

import torch

from .._checks import compute_dtype

KINDS = ("silog", "silog_unbiased", "ssi")
SSI_SCALES = 4
SSI_REDUCTIONS = ("batch", "image")
DEFAULT_EPS = 1e-6  # metres: the floor of the prediction under the log

# name -> the loss it is: kind, λ (SILog), the factor c, α (ssi), and whether a prediction of
# another size than the ground truth is resized first (AdaBins: bilinear, align_corners=True).
PRESETS: dict[str, dict] = {
    "silog": dict(kind="silog", lambd=0.85, scale=10.0, interpolate=False),
    "silog_adabins": dict(kind="silog_unbiased", lambd=0.85, scale=10.0, interpolate=True),
    "silog_dav2": dict(kind="silog", lambd=0.5, scale=1.0, interpolate=False),
    "ssi": dict(kind="ssi", alpha=0.5, reduction="batch", interpolate=False),
}

# Columns of the per-image tensors passed between the passes.
SILOG_SUMS = ("n", "sum_d", "sum_d2")
SSI_MOMENTS = ("n", "sum_p", "sum_pp", "sum_y", "sum_py", "n_1", "n_2", "n_3")
SSI_RESIDUAL_SUMS = ("sum_r2", "sum_r", "sum_rp", "g_0", "g_1", "g_2", "g_3", "q_0", "q_1", "q_2", "q_3")
# ssi backward coefficients: [s, t, w_data, α w_0..α w_3, κ1, κ2, κ3]; columns 2: scale with
# the incoming gradient, s and t do not.
SSI_COEFFS = ("s", "t", "w_data", "g_0", "g_1", "g_2", "g_3", "k_y", "k_p", "k_1")
SILOG_COEFFS = ("a", "b")


def num_coeffs(kind: str) -> int:
    """Columns of the op's per-image coefficient output for ``kind``."""
    return len(SSI_COEFFS) if kind == "ssi" else len(SILOG_COEFFS)


def loss_dtype(pred_dtype: torch.dtype, target_dtype: torch.dtype) -> torch.dtype:
    """The compute dtype of a pair: float64 when either is float64, else float32."""
    return torch.float64 if torch.float64 in (pred_dtype, target_dtype) else compute_dtype(pred_dtype)


def flat_tolerance(cdtype: torch.dtype) -> float:
    """τ of the SILog rule "v <= τ Σd²/n' reads as 0" (module docstring): above what the sums leave
    for a constant-ratio map, measured up to 6.4e-15 of Σd²/n with float32 log errors (their own
    rounding: a spread of a few ulps) and 6.9e-15 with float64 ones (a float64 sum over 1.2 M
    pixels), on the reference and the C++ twin, up to 8x480x640 and ratios 0.01 to 1000."""
    return 1e-12 if cdtype == torch.float64 else 1e-10


def degenerate_tolerance(cdtype: torch.dtype) -> float:
    """τ of the degenerate-system rule (module docstring)."""
    return 1e-12 if cdtype == torch.float64 else 1e-6


def silog_validity(target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    valid = torch.isfinite(target) & (target > 0)
    return valid if mask is None else valid & mask


def ssi_validity(target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    valid = torch.isfinite(target)
    return valid if mask is None else valid & mask


def _safe_sqrt(v: torch.Tensor, floor: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(v) where v > floor (and > 0), NaN where v is NaN, else 0; and that condition), with no
    NaN or inf in either branch's gradient. A NaN variance (a NaN or infinite prediction: a
    diverged network) stays NaN, so the loss shows it; the gradient through that branch is 0 (NaN
    only where d is)."""
    ok = (v > floor) & (v > 0)
    rest = torch.where(torch.isnan(v), torch.full_like(v, math.nan), torch.zeros_like(v))
    return torch.where(ok, torch.sqrt(torch.where(ok, v, torch.ones_like(v))), rest), ok


# ------------------------------------------------------------------ the differentiable oracle


def scale_invariant_loss_reference(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    kind: str = "silog",
    lambd: float = 0.85,
    scale: float = 10.0,
    alpha: float = 0.5,
    image_reduction: bool = False,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """The loss of (B, H, W) ``pred`` / ``target`` as plain differentiable PyTorch (a 0-dim
    tensor in the compute dtype); the module docstring gives the formulas."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    cdtype = loss_dtype(pred.dtype, target.dtype)
    p = pred.to(cdtype)
    y = target.to(cdtype)
    if kind == "ssi":
        return _ssi_reference(p, y, ssi_validity(y, mask), alpha, image_reduction)
    valid = silog_validity(y, mask)
    m = valid.to(cdtype)
    n = m.sum()
    d = torch.where(valid, torch.log(p.clamp_min(eps)) - torch.log(torch.where(valid, y, torch.ones_like(y))), 0.0)
    mean = d.sum() / n.clamp_min(1.0)
    # v as the variance (two passes: no cancellation) plus (1 - λ) mean²; for kind silog that is
    # mean(d²) - λ mean², BTS's form
    denom = n.clamp_min(1.0) if kind == "silog" else (n - 1.0).clamp_min(1.0)
    v = ((d - mean) ** 2 * m).sum() / denom + (1.0 - lambd) * mean * mean
    root, _ = _safe_sqrt(v, flat_tolerance(cdtype) * (d * d).sum() / denom)
    return scale * root


def _ssi_reference(p, y, valid, alpha, image_reduction):
    cdtype = p.dtype
    m = valid.to(cdtype)
    zero = torch.zeros_like(y)
    y = torch.where(valid, y, zero)
    p = torch.where(valid, p, zero)  # what a masked-out pixel predicts never matters
    b = p.shape[0]
    a00 = (p * p).sum((1, 2))
    a01 = p.sum((1, 2))
    a11 = m.sum((1, 2))
    b0 = (p * y).sum((1, 2))
    b1 = y.sum((1, 2))
    det = a00 * a11 - a01 * a01
    ok = det > degenerate_tolerance(cdtype) * a00 * a11
    safe = torch.where(ok, det, torch.ones_like(det))
    s = torch.where(ok, (a11 * b0 - a01 * b1) / safe, 0.0)
    t = torch.where(ok, (-a01 * b0 + a00 * b1) / safe, 0.0)
    r = torch.where(valid, s[:, None, None] * p + t[:, None, None] - y, zero)

    def reduce(image_sums, counts):
        if image_reduction:
            per_image = torch.where(counts > 0, image_sums / counts.clamp_min(1.0), 0.0)
            return per_image.sum() / b
        total = counts.sum()
        return torch.where(total > 0, image_sums.sum() / total.clamp_min(1.0), 0.0)

    loss = reduce((m * r * r).sum((1, 2)), 2.0 * a11)
    for k in range(SSI_SCALES):
        step = 2**k
        rk, mk = r[:, ::step, ::step], m[:, ::step, ::step]
        dk = mk * rk
        gx = (dk[:, :, 1:] - dk[:, :, :-1]).abs() * mk[:, :, 1:] * mk[:, :, :-1]
        gy = (dk[:, 1:, :] - dk[:, :-1, :]).abs() * mk[:, 1:, :] * mk[:, :-1, :]
        loss = loss + alpha * reduce(gx.sum((1, 2)) + gy.sum((1, 2)), mk.sum((1, 2)))
    return loss


# ------------------------------------------------------------------ the per-pixel passes


def _as_compute(pred, target):
    cdtype = loss_dtype(pred.dtype, target.dtype)
    return pred.to(cdtype), target.to(cdtype)


def _check_coeffs(what: str, coeffs: torch.Tensor, batch: int, k: int) -> None:
    if coeffs.dtype != torch.float64 or tuple(coeffs.shape) != (batch, k):
        raise ValueError(f"{what}: coeffs must be float64 ({batch}, {k}), got {coeffs.dtype} {tuple(coeffs.shape)}")


def silog_sums(pred, target, mask, eps):
    """Per-image (B, 3) float64 ``[n, Σd, Σd²]`` over valid pixels (``SILOG_SUMS``)."""
    with torch.no_grad():
        p, y = _as_compute(pred, target)
        valid = silog_validity(y, mask)
        d = torch.where(valid, torch.log(p.clamp_min(eps)) - torch.log(torch.where(valid, y, 1.0)), 0.0)
        # summed in float64, as every twin (the square root's argument cancels: module docstring)
        d = d.to(torch.float64)
        return torch.stack((valid.to(torch.float64).sum((1, 2)), d.sum((1, 2)), (d * d).sum((1, 2))), dim=1)


def silog_backward(pred, target, mask, coeffs, eps):
    """d L / d pred (like ``pred``) = m [p >= eps] (a_b d + b_b) / p, ``coeffs`` (B, 2) [a, b]."""
    _check_coeffs("silog_backward", coeffs, pred.shape[0], len(SILOG_COEFFS))
    with torch.no_grad():
        p, y = _as_compute(pred, target)
        valid = silog_validity(y, mask) & (p >= eps)
        c = coeffs.to(p.dtype)
        d = torch.log(p.clamp_min(eps)) - torch.log(torch.where(valid, y, 1.0))
        g = (c[:, 0, None, None] * d + c[:, 1, None, None]) / torch.where(valid, p, 1.0)
        return torch.where(valid, g, 0.0).to(pred.dtype)


def _grid(valid: torch.Tensor, k: int) -> torch.Tensor:
    """Pixels of the scale-k grid (rows and columns multiples of 2^k)."""
    h, w = valid.shape[-2:]
    step = 2**k
    rows = torch.arange(h, device=valid.device) % step == 0
    cols = torch.arange(w, device=valid.device) % step == 0
    return rows[:, None] & cols[None, :]


def ssi_moments(pred, target, mask):
    """Per-image (B, 8) float64 ``SSI_MOMENTS``: the least-squares sums and the valid pixels on
    the grids of scales 1..3."""
    with torch.no_grad():
        p, y = _as_compute(pred, target)
        valid = ssi_validity(y, mask)
        m = valid.to(p.dtype)
        y = torch.where(valid, y, 0.0)
        p = torch.where(valid, p, 0.0)  # what a masked-out pixel predicts never matters
        cols = [m.sum((1, 2)), p.sum((1, 2)), (p * p).sum((1, 2)), y.sum((1, 2)), (p * y).sum((1, 2))]
        cols += [(valid & _grid(valid, k)).to(p.dtype).sum((1, 2)) for k in range(1, SSI_SCALES)]
        return torch.stack(cols, dim=1).to(torch.float64)


def _residual(p, y, valid, st):
    c = st.to(p.dtype)
    return torch.where(valid, c[:, 0, None, None] * p + c[:, 1, None, None] - torch.where(valid, y, 0.0), 0.0)


def _pairs(x: torch.Tensor, step: int, axis: int):
    """(first, second) members of the pairs ``step`` apart along ``axis`` (1: rows, 2: columns)."""
    m = max(x.shape[axis] - step, 0)
    return x.narrow(axis, 0, m), x.narrow(axis, min(step, x.shape[axis]), m)


def ssi_residual_sums(pred, target, mask, st):
    """Per-image (B, 11) float64 ``SSI_RESIDUAL_SUMS`` for the scale and shift ``st`` (B, 2):
    Σr², Σr, Σrp over valid pixels, and per scale Σ|Δr| and Σ sgn(Δr) Δp over valid grid pairs."""
    _check_coeffs("ssi_residual_sums", st, pred.shape[0], 2)
    with torch.no_grad():
        p, y = _as_compute(pred, target)
        valid = ssi_validity(y, mask)
        r = _residual(p, y, valid, st)
        g, q = [], []
        for k in range(SSI_SCALES):
            step = 2**k
            on = valid & _grid(valid, k)
            gk = qk = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
            for axis in (1, 2):
                (r0, r1), (p0, p1), (v0, v1) = (_pairs(x, step, axis) for x in (r, p, on))
                both = v0 & v1
                dr = r1 - r0
                gk = gk + torch.where(both, dr.abs(), 0.0).sum((1, 2))
                qk = qk + torch.where(both, torch.sign(dr) * (p1 - p0), 0.0).sum((1, 2))
            g.append(gk)
            q.append(qk)
        cols = [(r * r).sum((1, 2)), r.sum((1, 2)), torch.where(valid, r * p, 0.0).sum((1, 2))] + g + q
        return torch.stack(cols, dim=1).to(torch.float64)


def ssi_backward(pred, target, mask, coeffs):
    """d L / d pred (like ``pred``) from the (B, 10) ``SSI_COEFFS``:
    s e + m (κ_y y + κ_p p + κ_1), e = w_data m r + Σ_k α w_k Σ_pairs sgn(r - r_pair)."""
    _check_coeffs("ssi_backward", coeffs, pred.shape[0], len(SSI_COEFFS))
    with torch.no_grad():
        p, y = _as_compute(pred, target)
        valid = ssi_validity(y, mask)
        c = coeffs.to(p.dtype)[:, :, None, None]
        r = _residual(p, y, valid, coeffs[:, :2])
        e = c[:, 2] * r
        for k in range(SSI_SCALES):
            step = 2**k
            on = valid & _grid(valid, k)
            ek = torch.zeros_like(r)
            for axis in (1, 2):
                n = r.shape[axis]
                if n <= step:
                    continue
                (r0, r1), (v0, v1) = _pairs(r, step, axis), _pairs(on, step, axis)
                sg = torch.where(v0 & v1, torch.sign(r1 - r0), 0.0)
                # |r1 - r0| pulls r1 by +sgn and r0 by -sgn
                ek.narrow(axis, step, n - step).add_(sg)
                ek.narrow(axis, 0, n - step).sub_(sg)
            e = e + c[:, 3 + k] * ek
        g = c[:, 0] * e + torch.where(valid, c[:, 7] * y + c[:, 8] * p + c[:, 9], 0.0)
        return g.to(pred.dtype)


# ------------------------------------------------------------------ the algebra between passes


def silog_combine(sums: torch.Tensor, kind: str, lambd: float, scale: float, *,
                  cdtype: torch.dtype = torch.float32):
    """(loss, coeffs): the loss (float64, 0-dim) and the (B, 2) float64 gradient coefficients
    [a, b] (the same for every image: the sums are pooled over the batch) from ``silog_sums``,
    whose per-pixel values were computed in ``cdtype`` (the rounding rule's τ: module docstring)."""
    n, s1, s2 = sums.sum(dim=0).unbind()
    n_safe = n.clamp_min(1.0)
    mean = s1 / n_safe
    if kind == "silog":
        v = s2 / n_safe - lambd * mean * mean
        denom = n_safe
    else:
        denom = (n - 1.0).clamp_min(1.0)
        v = (s2 - s1 * mean) / denom + (1.0 - lambd) * mean * mean
    root, ok = _safe_sqrt(v, flat_tolerance(cdtype) * s2 / denom)
    inv = torch.where(ok, scale / torch.where(ok, root, 1.0), 0.0)
    a = inv / denom
    if kind == "silog":
        b = -lambd * mean * inv / n_safe
    else:
        b = (-mean / denom + (1.0 - lambd) * mean / n_safe) * inv
    coeffs = torch.stack((a, b)).expand(sums.shape[0], 2)
    return scale * root, coeffs


def ssi_solve(moments: torch.Tensor, cdtype: torch.dtype):
    """Per-image (B, 2) float64 [s, t] and the (B,) non-degenerate flags from ``ssi_moments``."""
    n, sp, spp, sy, spy = moments[:, :5].unbind(dim=1)
    det = spp * n - sp * sp
    ok = det > degenerate_tolerance(cdtype) * spp * n
    safe = torch.where(ok, det, 1.0)
    s = torch.where(ok, (n * spy - sp * sy) / safe, 0.0)
    t = torch.where(ok, (spp * sy - sp * spy) / safe, 0.0)
    return torch.stack((s, t), dim=1), ok


def ssi_combine(moments, st, ok, rsums, alpha: float, image_reduction: bool):
    """(loss, coeffs): the loss (float64, 0-dim) and the (B, 10) float64 ``SSI_COEFFS``."""
    B = moments.shape[0]
    counts = torch.cat((moments[:, :1], moments[:, 5:8]), dim=1)  # (B, 4) valid grid pixels
    if image_reduction:
        w = torch.where(counts > 0, 1.0 / (B * counts.clamp_min(1.0)), 0.0)
    else:
        total = counts.sum(dim=0, keepdim=True)
        w = torch.where(total > 0, 1.0 / total.clamp_min(1.0), 0.0).expand(B, SSI_SCALES)
    w0 = w[:, 0]
    g = alpha * w  # (B, 4)
    loss = (0.5 * w0 * rsums[:, 0]).sum() + (g * rsums[:, 3:7]).sum()
    e_sum = w0 * rsums[:, 1]
    ep_sum = w0 * rsums[:, 2] + (g * rsums[:, 7:11]).sum(dim=1)
    n, sp, spp, sy = moments[:, :4].unbind(dim=1)
    s = st[:, 0]
    n_safe = n.clamp_min(1.0)
    det = torch.where(ok, spp * n - sp * sp, 1.0)
    c = torch.where(ok, (ep_sum - sp * e_sum / n_safe) / det, 0.0)
    k_y = n * c
    k_p = -2.0 * s * n * c
    k_1 = torch.where(ok, -sy * c + 2.0 * s * sp * c - s * e_sum / n_safe, 0.0)
    coeffs = torch.cat((st, w0[:, None], g, k_y[:, None], k_p[:, None], k_1[:, None]), dim=1)
    return loss, coeffs


def scale_invariant_loss_forward(impl, pred, target, mask, kind, lambd, scale, alpha, image_reduction, eps):
    """The op's forward over any implementation ``impl`` (a module with the five passes):
    ``(loss, coeffs, count)``: the loss in the compute dtype, the (B, K) float64 coefficients
    per unit incoming gradient, the number of valid pixels of the batch (float64, 0-dim)."""
    cdtype = loss_dtype(pred.dtype, target.dtype)
    if kind == "ssi":
        moments = impl.ssi_moments(pred, target, mask)
        st, ok = ssi_solve(moments, cdtype)
        rsums = impl.ssi_residual_sums(pred, target, mask, st)
        loss, coeffs = ssi_combine(moments, st, ok, rsums, alpha, image_reduction)
        count = moments[:, 0].sum()
    elif kind in ("silog", "silog_unbiased"):
        sums = impl.silog_sums(pred, target, mask, eps)
        loss, coeffs = silog_combine(sums, kind, lambd, scale, cdtype=cdtype)
        count = sums[:, 0].sum()
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return loss.to(cdtype), coeffs.contiguous(), count


def scale_coeffs(kind: str, coeffs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The backward coefficients for an incoming gradient ``grad`` of the loss (0-dim)."""
    g = grad.to(torch.float64)
    if kind == "ssi":
        return torch.cat((coeffs[:, :2], coeffs[:, 2:] * g), dim=1)
    return coeffs * g
