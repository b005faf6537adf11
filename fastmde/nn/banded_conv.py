"""A Conv2d whose CPU backward may take a faster way than oneDNN's one call: the weight
gradient of a large map over row bands, or all gradients of a narrow output through tap GEMMs.

**Row bands** (AMD EPYC, 2 vCPUs, torch 2.13, bfloat16 channels_last, 3x3 conv 64->64, padding
1, batch 1): oneDNN's weight gradient (``aten.convolution_backward`` with output mask
``[False, True, False]``) takes 21-23 ms at 288x384 but 2.9 ms at 144x192 (4x fewer pixels, 8x
less time), and 15.7 ms at 240x320. The same gradient as *one* call over a batch of row bands
(the input cut into bands of R rows, each with the k // 2 rows above and below it as a halo,
zero halo at the image's top and bottom; the output gradient viewed as the same bands; padding
(0, k // 2)) takes 12.3 ms at 288x384 (R = 16..24) and 8.4 ms at 240x320, as accurate (the same
largest error against a float64 reference: oneDNN sums the batch in float32 and rounds to the
weight's dtype once, as for one image; the order of the sum differs). No
gain at 144x192 or for a batch of 8 at 96x128 (10 -> 12 ms). In the
default CPU training step (unet34-k3-1x1 at 288x384, batch 1) the two full-resolution 64->64
3x3 convs (up4's ``conv2``, ``head_conv1``) gain about 8 ms per step (~2.5%).

**Tap GEMMs** (:func:`grads_by_taps`), for a narrow output (out channels x kh x kw <=
:data:`TAPS_MAX_COLUMNS`: the depth head's k x k conv to one channel): oneDNN's backward of the
3x3 64->1 head conv at 288x384 (bfloat16 channels_last) takes 5.6 ms, 4.7 of them for the weight
gradient. Written as GEMMs over the output gradient's k*k shifted copies (a 288*384 x 9 matrix T,
built from the one-channel gradient in 0.2 ms), grad x = T @ W and grad weight = T^T @ x each
read the 64-channel map once: 2.9 ms for all three gradients; with the bicubic resize and the
loss around it, 17.7 -> 15.4 ms per forward + backward (interleaved). Exact up to the order of
the float sums, as the bands are.

Why it is exact: output row o of a band reads input rows o - k//2 .. o + k//2 of that band, which
the halo makes the same rows the whole image's output row reads (zero above the first and below
the last image row, as the padding is). The weight gradient is the sum over all output positions
of grad_out x input patch, so summing over bands (the batch dimension of the banded call) is the
same sum. A last band shorter than R is filled with zero rows of input and output gradient: zero
output-gradient rows add exactly zero.

Which way is faster is measured, not assumed (an Intel CPU with AMX, or another thread count,
may differ): per (input shape, dtype, memory format, out channels, kernel size, thread count:
``torch.get_num_threads()``, so a choice timed on two threads is not reused after
``torch.set_num_threads(1)``) the first backward runs the one call and the other way (bands, or the tap GEMMs for a narrow output) twice
each, alternating, and keeps the faster by their second times (``time.perf_counter``; the first
run of each warms what it reads) in :data:`_CHOICES` for the process; the other way wins only
below 0.9x the one call's time. Later forwards of a shape whose winner is the one call take
``nn.Conv2d.forward`` unchanged. The ways sum in different orders, so their float32 or
bfloat16 results may differ in the last bits: two processes that chose differently do not train
bit for bit alike, so a training checkpoint keeps the choices with their thread counts
(:func:`choices_state`, :func:`restore_choices`) and a resumed run on as many threads sums as
the run it continues (on another count it measures again); under
``torch.use_deterministic_algorithms(True)`` the one call is always taken and nothing is
measured. Banding is tried only where one image's map has H * W >= 65536 (:data:`MIN_PIXELS`;
below it there was never a gain) and at least two bands of 16-32 rows fit; the tap GEMMs where
the batch's B * H * W >= 65536. :func:`measured_choices` shows what was chosen (and ``fastmde
info``, for the process that runs it).

:class:`BandedConv2d` is a drop-in ``nn.Conv2d`` (same parameters, ``state_dict``, arguments).
It takes the banded backward only in plain eager mode (``ops/_dispatch.runs_eagerly``: not under
``torch.compile`` / export tracing or functorch transforms) with grad enabled, a weight that
requires grad, a 4-D CPU input, stride 1, dilation 1, groups 1, zero padding (kh // 2, kw // 2)
and an odd kernel; every other call is ``nn.Conv2d.forward``. Under CPU autocast it casts the
input, weight and bias with ``.to()`` as autocast does for a convolution (float64 stays), so the
weight's gradient reaches the float32 parameter through autograd.
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import compute_dtype, memory_format_of
from ..ops._dispatch import runs_eagerly

#: one image's H * W below which banding is never tried (no gain was measured there)
MIN_PIXELS = 65536
#: band heights tried, and the preferred one (16..24 measured alike at 288x384)
BAND_ROWS = range(16, 33)
_PREFERRED_ROWS = 20
#: the other way (bands or taps) must take below this fraction of the one call's time to be chosen
WIN_RATIO = 0.9
#: out channels x kh x kw up to which the tap-GEMM backward is tried instead of banding
TAPS_MAX_COLUMNS = 32
#: the backward's ways: oneDNN's one call, the banded weight gradient, the tap GEMMs
PATHS = ("one_call", "banded", "taps")

#: (input shape, dtype, memory format, out channels, (kh, kw), threads) -> (choice, one call s, other way s)
_CHOICES: dict[tuple, tuple[str, float, float]] = {}
#: set by :func:`forced`: (path, band rows) used instead of the measured choice
_FORCED: tuple[str, int | None] | None = None


def measured_choices() -> list[dict]:
    """The choices made so far in this process, one dict per setting: ``shape``, ``dtype``,
    ``memory_format``, ``out_channels``, ``kernel_size``, ``threads`` (``torch.get_num_threads()``
    when measured), ``choice`` ("banded", "taps" or "one_call") and the two measured times in
    milliseconds (``one_call_ms``, and ``other_ms`` for the way tried against it: bands, or the
    tap GEMMs of a narrow output; NaN for a choice restored from a checkpoint)."""
    return [dict(shape=key[0], dtype=str(key[1]).replace("torch.", ""), memory_format=key[2],
                 out_channels=key[3], kernel_size=key[4], threads=key[5], choice=choice,
                 one_call_ms=round(one * 1e3, 3), other_ms=round(other * 1e3, 3))
            for key, (choice, one, other) in _CHOICES.items()]


def choices_state() -> list[list]:
    """The choices made so far, as plain lists (``[shape, dtype name, memory format, out
    channels, kernel size, choice, threads]``) for a training checkpoint: a resumed run on as
    many threads takes the same summation order for each setting as the run it continues (its
    weights stay bitwise those of an uninterrupted run) instead of timing again."""
    return [[list(key[0]), str(key[1]).replace("torch.", ""), key[2], key[3], list(key[4]), choice, key[5]]
            for key, (choice, _, _) in _CHOICES.items()]


def restore_choices(state) -> None:
    """Take the choices of :func:`choices_state` (a checkpoint's), without their timings, each for
    the thread count it was measured with; an entry of the earlier six-element form (saved
    before the thread count was kept) is taken for this process's current count (a resume runs
    as the run it continues, with its settings). Entries that are not of either form are skipped
    (a checkpoint of an older version holds none)."""
    for entry in state or ():
        try:
            shape, dtype, fmt, cout, kernel, choice, *threads = entry
            if len(threads) > 1 or (threads and (isinstance(threads[0], bool) or int(threads[0]) < 1)):
                continue
            key = (tuple(int(v) for v in shape), getattr(torch, dtype), str(fmt), int(cout),
                   tuple(int(v) for v in kernel), int(threads[0]) if threads else torch.get_num_threads())
        except (TypeError, ValueError, AttributeError):
            continue
        if choice in PATHS and isinstance(key[1], torch.dtype):
            _CHOICES[key] = (choice, float("nan"), float("nan"))


@contextlib.contextmanager
def forced(path: str, rows: int | None = None):
    """Within the block every eligible :class:`BandedConv2d` with grad takes ``path``
    ("banded", "taps" or "one_call") whatever the map's size, with bands of ``rows`` rows (default: as
    chosen automatically, or the map's height if none fits); nothing is measured or cached.
    For tests and A/Bs."""
    global _FORCED
    if path not in PATHS:
        raise ValueError(f"forced: path must be one of {', '.join(map(repr, PATHS))}, got {path!r}")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ValueError(f"forced: rows must be a positive int, got {rows!r}")
    previous, _FORCED = _FORCED, (path, rows)
    try:
        yield
    finally:
        _FORCED = previous


def band_rows(height: int) -> int | None:
    """The band height for a map of ``height`` rows: one of :data:`BAND_ROWS` that needs the
    fewest zero rows to fill the last band, nearest :data:`_PREFERRED_ROWS` among those; None
    where fewer than two bands fit."""
    if height < 2 * BAND_ROWS[0]:
        return None
    return min(BAND_ROWS, key=lambda r: (-height % r, abs(r - _PREFERRED_ROWS)))


def _layout(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """channels_last when ``x`` or the weight is laid out so (the convolution then runs in it)."""
    formats = (memory_format_of(x), memory_format_of(weight))
    return torch.channels_last if torch.channels_last in formats else torch.contiguous_format


def _bands(t: torch.Tensor, rows: int, halo: int, memory_format) -> torch.Tensor:
    """``t`` (B, C, H, W) as (B * nb, C, rows + 2 halo, W) in ``memory_format``, nb = ceil(H /
    rows): band i holds rows [i rows - halo, (i + 1) rows + halo), zero outside [0, H)."""
    b, c, h, w = t.shape
    nb, full = -(-h // rows), h // rows
    if (not halo and nb == full and memory_format == torch.channels_last
            and t.is_contiguous(memory_format=torch.channels_last)):
        # the bands of a channels_last map are a view of it
        return t.permute(0, 2, 3, 1).reshape(b * nb, rows, w, c).permute(0, 3, 1, 2)
    out = torch.empty((b * nb, c, rows + 2 * halo, w), dtype=t.dtype, device=t.device, memory_format=memory_format)
    ov = out.permute(0, 2, 3, 1).unflatten(0, (b, nb))              # (B, nb, rows + 2 halo, W, C), a view
    src = t.permute(0, 2, 3, 1)                                      # (B, H, W, C)
    ov[:, :full, halo:halo + rows].copy_(src[:, :full * rows].unflatten(1, (full, rows)))
    if nb > full:                                                    # the last band: its rows, then zero
        left = h - full * rows
        ov[:, full, halo:halo + left].copy_(src[:, full * rows:])
        ov[:, full, halo + left:halo + rows].zero_()
    if halo:
        # halo above = the last rows of the band before, below = the first rows of the band after
        # (both from the bands just written, so the zero rows past H come along)
        ov[:, 1:, :halo].copy_(ov[:, :-1, rows:rows + halo])
        ov[:, :-1, rows + halo:].copy_(ov[:, 1:, halo:2 * halo])
        ov[:, 0, :halo].zero_()
        ov[:, -1, rows + halo:].zero_()
    return out


def weight_grad_banded(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rows: int) -> torch.Tensor:
    """The weight gradient of ``F.conv2d(x, weight, padding=(kh // 2, kw // 2))`` for the output
    gradient ``grad`` (B, Cout, H, W), as one ``convolution_backward`` over bands of ``rows``
    rows (see the module docstring); x (B, Cin, H, W); odd kh, kw; same dtype as ``weight``."""
    kh, kw = weight.shape[-2:]
    halo = kh // 2
    rows = max(rows, halo)
    fmt = _layout(x, weight)
    xb = _bands(x, rows, halo, fmt)
    gb = _bands(grad, rows, 0, fmt)
    return torch.ops.aten.convolution_backward(
        gb, xb, weight, None, [1, 1], [0, kw // 2], [1, 1], False, [0, 0], 1, [False, True, False])[1]


def narrow(weight: torch.Tensor) -> bool:
    """Whether a convolution's output is narrow enough for :func:`grads_by_taps`: out channels x
    kh x kw <= :data:`TAPS_MAX_COLUMNS` (a depth head's k x k conv to one channel)."""
    return weight.shape[0] * weight.shape[-2] * weight.shape[-1] <= TAPS_MAX_COLUMNS


def grads_by_taps(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_x: bool = True,
                  need_b: bool = True):
    """(grad x, grad weight, grad bias) of ``F.conv2d(x, weight, bias, padding=(kh // 2, kw // 2))``
    for the output gradient ``grad`` (B, Cout, H, W), through the gradient's tap matrix
    T (B*H*W, kh*kw*Cout), ``T[(b, y, x), (i, j, o)] = grad[b, o, y - i + kh // 2, x - j + kw // 2]``
    (zero outside the map): with Wm = weight as (kh*kw*Cout, Cin) and X = x as (B*H*W, Cin)::

        grad x = T @ Wm      (B*H*W, Cin)       grad weight = T^T @ X      (kh*kw*Cout, Cin)

    two GEMMs that each read the large map once (see the module docstring); grad bias = grad
    summed over (B, H, W) in float32 (float64 stays). x (B, Cin, H, W) in either layout (grad x
    comes back in x's), odd kh and kw, the dtype of ``weight``. Gradients not asked for
    (``need_x``, ``need_b``) are None."""
    b, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ph, pw = kh // 2, kw // 2
    padded = F.pad(grad, (pw, pw, ph, ph))
    # tap (i, j) of pixel (y, x) reads the gradient at (y - i + ph, x - j + pw)
    taps = torch.stack([padded[:, :, 2 * ph - i:2 * ph - i + h, 2 * pw - j:2 * pw - j + w].permute(0, 2, 3, 1)
                        for i in range(kh) for j in range(kw)], dim=3).reshape(b * h * w, kh * kw * cout)
    rows = x.permute(0, 2, 3, 1).reshape(b * h * w, cin)       # a view of a channels_last x
    gw = (taps.t() @ rows).view(kh, kw, cout, cin).permute(2, 3, 0, 1)
    gw = gw.contiguous(memory_format=memory_format_of(weight))
    gx = gb = None
    if need_x:
        wm = weight.permute(2, 3, 0, 1).reshape(kh * kw * cout, cin)
        gx = (taps @ wm).view(b, h, w, cin).permute(0, 3, 1, 2).contiguous(memory_format=memory_format_of(x))
    if need_b:
        gb = grad.sum((0, 2, 3), dtype=compute_dtype(grad.dtype)).to(grad.dtype)
    return gx, gw, gb


def _key(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> tuple:
    """The setting a choice is measured for; the thread count too: oneDNN's one call and the
    other ways do not scale alike with threads."""
    fmt = "channels_last" if _layout(x, weight) == torch.channels_last else "contiguous"
    return (tuple(x.shape), dtype, fmt, weight.shape[0], tuple(weight.shape[-2:]), torch.get_num_threads())


def _plan(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> tuple[str, int | None]:
    """("banded", rows), ("measure", rows) or ("one_call", None) for this input and weight,
    computing in ``dtype``."""
    if _FORCED is not None:
        path, rows = _FORCED
        return path, (rows or band_rows(x.shape[-2]) or x.shape[-2])
    if torch.are_deterministic_algorithms_enabled():
        return "one_call", None     # a timed choice of summation order is no run-to-run constant
    b, _, h, w = x.shape
    rows = band_rows(h)
    if narrow(weight):
        tried = b * h * w >= MIN_PIXELS
    else:
        tried = h * w >= MIN_PIXELS and rows is not None
    if not tried:
        return "one_call", None
    known = _CHOICES.get(_key(x, weight, dtype))
    if known is None:
        return "measure", rows
    # a restored choice may band a narrow conv (an older run measured bands against the one call
    # there): the map's own height where no band height fits
    return known[0], rows or h


def _measured(key: tuple, one_call, name: str, other):
    """Run ``one_call`` and ``other`` (the way called ``name``) twice each, alternating (the
    first of each warms what it reads), record in :data:`_CHOICES` under ``key`` the faster by
    their second times (``other`` only below :data:`WIN_RATIO` of the one call) and return that
    way's result."""
    times, results = {}, {}
    for _ in range(2):
        for way, fn in (("one_call", one_call), (name, other)):
            start = time.perf_counter()
            results[way] = fn()
            times[way] = time.perf_counter() - start
    choice = name if times[name] < WIN_RATIO * times["one_call"] else "one_call"
    _CHOICES[key] = (choice, times["one_call"], times[name])
    return results[choice]


class _BandedWeightGradConv(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=padding)`` whose backward takes the weight gradient
    from ``weight_grad_banded`` or all three gradients from ``grads_by_taps`` where planned
    (``path`` "banded", "taps", or "measure": timed against the one call, see :func:`_plan`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, path, rows):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.path, ctx.rows, ctx.has_bias = padding, path, rows, bias is not None
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        grad = grad.contiguous(memory_format=_layout(x, weight))

        def one_call(mask):   # oneDNN's backward: (grad x, grad weight, grad bias) where mask says
            return torch.ops.aten.convolution_backward(
                grad, x, weight, bias_sizes, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1, mask)

        if ctx.path == "one_call" or not need_w:
            return (*one_call([need_x, need_w, need_b]), None, None, None)
        taps = lambda: grads_by_taps(grad, x, weight, need_x, need_b)          # noqa: E731
        if ctx.path == "taps":
            return (*taps(), None, None, None)
        if ctx.path == "measure" and narrow(weight):
            # the tap GEMMs give all three gradients: timed against the whole one call
            whole = lambda: one_call([need_x, need_w, need_b])                 # noqa: E731
            return (*_measured(_key(x, weight, x.dtype), whole, "taps", taps), None, None, None)
        gx = gb = None
        if need_x or need_b:
            gx, _, gb = one_call([need_x, False, need_b])
        banded = lambda: weight_grad_banded(grad, x, weight, ctx.rows)           # noqa: E731
        if ctx.path == "banded":
            gw = banded()
        else:   # "measure": the banded weight gradient against the one call's
            weight_only = lambda: one_call([False, True, False])[1]              # noqa: E731
            gw = _measured(_key(x, weight, x.dtype), weight_only, "banded", banded)
        return gx, gw, gb, None, None, None


def _autocast_casts(t: torch.Tensor | None) -> bool:
    """Whether CPU autocast casts this argument of a convolution: floating, not float64."""
    return t is not None and t.is_floating_point() and t.dtype != torch.float64


class BandedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward on large CPU maps may take row bands (the weight gradient) or,
    for a narrow output, tap GEMMs (every gradient), where timed faster (see the module docstring
    for when and why); same values and gradients as ``nn.Conv2d``."""

    def _banded_applies(self, x) -> bool:
        kh, kw = self.kernel_size
        return (torch.is_grad_enabled() and self.weight.requires_grad and isinstance(x, torch.Tensor)
                and x.dim() == 4 and x.device.type == "cpu" and x.is_floating_point()
                and self.weight.device.type == "cpu"
                and kh % 2 == 1 and kw % 2 == 1 and self.padding_mode == "zeros"
                and tuple(self.padding) == (kh // 2, kw // 2) and tuple(self.stride) == (1, 1)
                and tuple(self.dilation) == (1, 1) and self.groups == 1
                and all(t is None or type(t) in (torch.Tensor, nn.Parameter) for t in (self.weight, self.bias))
                and runs_eagerly((x,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._banded_applies(x):
            return super().forward(x)
        given, autocast = x, torch.is_autocast_enabled("cpu")
        cast_to = torch.get_autocast_dtype("cpu") if autocast else None
        path, rows = _plan(x, self.weight, cast_to if autocast and _autocast_casts(x) else x.dtype)
        if path == "one_call" and _FORCED is None:
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if autocast:
            x, weight, bias = (t.to(cast_to) if _autocast_casts(t) else t for t in (x, weight, bias))
        if x.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
            return super().forward(given)   # nn.Conv2d's own error
        with torch.autocast("cpu", enabled=False):
            return _BandedWeightGradConv.apply(x, weight, bias, tuple(self.padding), path, rows)
