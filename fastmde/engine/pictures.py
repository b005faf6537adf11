"""Depth maps as pictures: Turbo colours, a colour bar in metres, black where there is no depth.

Every depth picture fastmde writes (``fastmde predict``'s PNGs, the sweep's ``figure.png``)
comes from here and reads the same way:

- colour: the Turbo colour map (Mikhailov, 2019) reversed, so **near is red** and **far is
  blue**, over a range ``[lo, hi]`` in metres that the picture states on its colour bar;
  depth outside the range takes the colour of the nearer end;
- **black: no depth** (a non-finite value, or a value <= 0: the readers' 0 = missing ground
  truth; a prediction clamped to a range above 0, as evaluation clamps it, never is);
- the bar (far at the top, near at the bottom, as plotting libraries draw a colour bar) is
  labelled in metres at the range's ends and at round steps between them
  (:func:`colour_bar_ticks`), with a black swatch for "no depth" under it.

Drawn with Pillow (and numpy); no plotting library is needed.
"""
from __future__ import annotations

import math

import numpy as np

#: the colour of "no depth"
NO_DEPTH = (0, 0, 0)
#: where on Turbo (0..1) the far end of the range sits: a blue-violet, never near black
FAR_END = 0.05


def colourise(depth: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8 with the reversed Turbo colour map: near = red, far = blue.

    The range is ``[lo, hi]`` metres (``None``: the image's finite positive min / max); values
    outside it take the colour of the nearer end. Turbo is evaluated with its published degree-5
    polynomial fit (Mikhailov, 2019), from :data:`FAR_END` (far) to 1 (near). Non-finite or non-positive depth is drawn black
    (:data:`NO_DEPTH`).
    """
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    if lo is None or hi is None:
        vals = d[valid]
        lo = float(vals.min()) if lo is None and vals.size else (lo or 0.0)
        hi = float(vals.max()) if hi is None and vals.size else (hi or 1.0)
    with np.errstate(invalid="ignore"):
        near = 1.0 - np.clip((d - lo) / max(hi - lo, 1e-9), 0.0, 1.0)     # 1 at lo, 0 at hi
    # Turbo from FAR_END (far) to 1 (near): its first few percent are near-black in the fit,
    # which a reader would take for "no depth"
    t = np.where(valid, FAR_END + (1.0 - FAR_END) * near, 0.0)
    r = 0.13572138 + t * (4.61539260 + t * (-42.66032258 + t * (132.13108234 + t * (-152.94239396 + t * 59.28637943))))
    g = 0.09140261 + t * (2.19418839 + t * (4.84296658 + t * (-14.18503333 + t * (4.27729857 + t * 2.82956604))))
    b = 0.10667330 + t * (12.64194608 + t * (-60.58204836 + t * (110.36276771 + t * (-89.90310912 + t * 27.34824973))))
    rgb = np.stack([r, g, b], axis=-1)
    rgb = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rgb[~valid] = NO_DEPTH
    return rgb


def _nice_step(span: float, max_ticks: int) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k step that cuts ``span`` into at most ``max_ticks - 1`` parts."""
    raw = span / max(max_ticks - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * power >= raw * (1 - 1e-9):
            return m * power
    return 10.0 * power


def colour_bar_ticks(lo: float, hi: float, max_ticks: int = 6) -> tuple[list[float], list[str]]:
    """The colour bar's tick values (metres, ascending) and their labels.

    The ticks are ``lo``, ``hi`` and the multiples of a round step (1, 2, 2.5 or 5 x 10^k)
    between them that lie at least half a step from either end, at most ``max_ticks`` in all.
    The ends are labelled with their own value (4 significant digits), the steps with the
    decimals the step needs: ``lo = 0.001, hi = 10`` -> ``0.001 2 4 6 8 10``.

    Raises:
        ValueError: ``lo`` or ``hi`` not finite, or ``lo >= hi``.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ValueError(f"a colour bar needs finite lo < hi, got {lo:g} and {hi:g}")
    step = _nice_step(hi - lo, max_ticks)
    power = math.floor(math.log10(step) + 1e-9)
    decimals = max(0, -power) + (1 if round(step / 10.0 ** power, 6) == 2.5 else 0)   # 0.25 needs 2
    inner = []
    k = math.ceil(lo / step)
    while k * step < hi:
        v = round(k * step, decimals)
        if v - lo >= 0.5 * step and hi - v >= 0.5 * step:
            inner.append(v)
        k += 1
    ticks = [float(lo), *inner, float(hi)]
    labels = [f"{lo:.4g}", *(f"{v:.{decimals}f}" for v in inner), f"{hi:.4g}"]
    return ticks, labels


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)   # scalable where Pillow has FreeType
    except TypeError:                              # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def bar_layout(height: int) -> dict:
    """Sizes (pixels) of the colour bar panel beside a picture ``height`` pixels high: the font
    size ``unit`` scales with the picture so the labels stay readable; ``width`` is the panel's
    width and ``min_height`` the height it needs (a shorter picture is padded below)."""
    unit = max(10, round(height / 32))
    return {"unit": unit, "width": 6 * unit, "min_height": 12 * unit}


def colour_bar(height: int, lo: float, hi: float) -> "Image.Image":  # noqa: F821
    """An RGB panel ``bar_layout(height)["width"]`` wide and ``max(height, min_height)`` high:
    "depth, m" above a vertical Turbo bar (``hi``, far, at the top; ``lo``, near, at the
    bottom) with the :func:`colour_bar_ticks` labels, and a black swatch marked "no depth"."""
    from PIL import Image, ImageDraw

    layout = bar_layout(height)
    u, width = layout["unit"], layout["width"]
    full = max(height, layout["min_height"])
    panel = Image.new("RGB", (width, full), "white")
    draw = ImageDraw.Draw(panel)
    font, small = _font(u), _font(max(8, u - 2))
    x0, bar_w = u // 2, u
    top, bottom = int(1.8 * u), full - int(2.2 * u)        # the bar's first and last rows
    values = np.linspace(hi, lo, bottom - top + 1)         # one depth per row, far at the top
    column = colourise(np.maximum(values, 1e-12)[:, None], lo, hi)   # lo = 0 is a depth here, not "none"
    panel.paste(Image.fromarray(np.repeat(column, bar_w, axis=1)), (x0, top))
    draw.text((x0, int(0.3 * u)), "depth, m", fill="black", font=small)
    ticks, labels = colour_bar_ticks(lo, hi, max_ticks=max(2, min(6, (bottom - top) // (2 * u) + 1)))
    for v, text in zip(ticks, labels):
        y = top + round((hi - v) / (hi - lo) * (bottom - top))
        draw.line([(x0 + bar_w, y), (x0 + bar_w + u // 3, y)], fill="black")
        draw.text((x0 + bar_w + u // 2, y), text, fill="black", font=font, anchor="lm")
    sy = full - int(1.3 * u)
    draw.rectangle([x0, sy, x0 + bar_w - 1, sy + u - 1], fill=NO_DEPTH)
    draw.text((x0 + bar_w + u // 3, sy + u // 2), "no depth", fill="black", font=small, anchor="lm")
    return panel


def depth_picture(depth: np.ndarray, lo: float, hi: float) -> "Image.Image":  # noqa: F821
    """The depth map (H, W) metres in colours (:func:`colourise`) at its own pixel size in the
    top-left corner (so ``[:H, :W]`` lines up with the photo), with :func:`colour_bar` to its
    right; a map shorter than the bar needs is padded below with white."""
    from PIL import Image

    d = np.asarray(depth)
    if d.ndim != 2:
        raise ValueError(f"a depth picture needs an (H, W) map, got shape {tuple(d.shape)}")
    h, w = d.shape
    panel = colour_bar(h, lo, hi)
    canvas = Image.new("RGB", (w + panel.width, panel.height), "white")
    canvas.paste(Image.fromarray(colourise(d, lo, hi)), (0, 0))
    canvas.paste(panel, (w, 0))
    return canvas
