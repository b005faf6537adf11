"""Text forms shared by the command line, the models, the engine and the bench (one copy each).

* :func:`parse_size` / :func:`format_size`: an image size as ``"HxW"`` (rows x columns), e.g.
  ``"288x384"``; also accepted: ``"288,384"`` and a pair ``(288, 384)``;
  :func:`parse_internal_size`: a network's internal size (sides >= 8), for train and export.
* :data:`PAPER_SIZES`: the five intermediate resolutions of the paper's Table 1 / Table 2, by the
  paper's own names (width x height, as it prints them) -> (H, W), largest first.
* :func:`slug`: a label made safe as a file or directory name (``"l1 loss"`` -> ``"l1-loss"``).
"""
from __future__ import annotations

import re

#: The paper's named internal sizes (Freeman & Tilney-Volk, Tables 1 and 2: "640x480" ...
#: "128x96", width x height) -> (H, W).
PAPER_SIZES = {
    "640x480": (480, 640),
    "512x384": (384, 512),
    "384x288": (288, 384),
    "256x192": (192, 256),
    "128x96": (96, 128),
}


def parse_size(size, *, what: str = "size", minimum: int = 1, allow_none: bool = False) -> tuple[int, int] | None:
    """(H, W) from ``"HxW"`` (``"288x384"``), ``"H,W"`` or a pair (a tuple, a list, or a 1-D numpy
    array or tensor of two); each side >= ``minimum``
    (``None`` stays ``None`` with ``allow_none``).

    Raises ``ValueError`` naming ``what`` for anything else (a single number, three parts,
    non-integers such as 287.6 or True, a side below ``minimum``)."""
    if size is None and allow_none:
        return None
    if isinstance(size, str):
        parts = size.lower().replace(" ", "").replace(",", "x").split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"{what} must be HxW such as 288x384, got {_quoted(size)}")
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        parts = list(size)
    elif getattr(size, "ndim", None) == 1 and len(size) == 2 and callable(getattr(size, "tolist", None)):
        parts = size.tolist()        # a numpy array or a tensor holding (H, W)
    else:
        raise ValueError(f"{what} must be HxW such as 288x384 or a pair (H, W), got {_quoted(size)}")
    if isinstance(size, str):
        height, width = (int(p) for p in parts)
    else:
        from ._checks import whole_number   # any whole number (numpy's too); 287.6 is not truncated

        height, width = (int(p) if isinstance(p, str) and p.strip().isdigit() else whole_number(p) for p in parts)
        if height is None or width is None:
            raise ValueError(f"{what} must be HxW such as 288x384 or a pair (H, W) of whole numbers, "
                             f"got {_quoted(size)}")
    if height < minimum or width < minimum:
        raise ValueError(f"{what} must be at least {minimum}x{minimum}, got {height}x{width}")
    return height, width


def _quoted(value) -> str:
    """``value`` as a message quotes it, on one line (a 2-D numpy array's or tensor's repr has
    several): :func:`fastmde._checks.brief_repr`."""
    from ._checks import brief_repr

    return brief_repr(value)


#: The smallest side of a network's internal size: ``fastmde train --size`` and ``fastmde export
#: --internal-size`` take the same sizes (:func:`parse_internal_size`).
MIN_INTERNAL_SIDE = 8


def parse_internal_size(size, *, what: str = "size") -> tuple[int, int]:
    """:func:`parse_size` of a network's internal size: each side at least :data:`MIN_INTERNAL_SIDE`
    (the rule ``fastmde train --size`` and ``fastmde export --internal-size`` share)."""
    return parse_size(size, what=what, minimum=MIN_INTERNAL_SIDE)


def format_size(size) -> str:
    """(288, 384) -> ``"288x384"`` (H x W)."""
    height, width = parse_size(size)
    return f"{height}x{width}"


def slug(text: str) -> str:
    """``text`` as a file name: runs of characters other than letters, digits, ``.``, ``_``, ``-``
    become one ``-``; never empty (``"row"``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "row"
