"""What a weights file is when ``torch.load`` cannot read it, in one line.

``torch.load(path, weights_only=True)`` on a file that is not a PyTorch file at all fails deep
in its unpickler: a text file gives ``KeyError: 101`` (the byte 'e' taken for a pickle memo
key), random bytes ``UnpicklingError`` or ``RuntimeError: Invalid magic number``. The readers of
weights files (fastmde checkpoints, other projects' checkpoints, encoder weights) look at the
file's first bytes before loading it: ``torch.save`` writes a zip archive (PyTorch >= 1.6) and,
before that, a pickle whose first byte is the protocol marker 0x80.
"""
from __future__ import annotations

import os
import zipfile


def torch_file_problem(path) -> str | None:
    """None when ``path`` starts as a ``torch.save`` file does, else why it cannot be one (with its
    first bytes, and whether they read as text)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":
        return None
    if not head:
        return "it cannot be read as a PyTorch file: it is empty"
    try:
        text = head.decode("utf-8")
        looks = "text" if text.isprintable() or text.strip().isprintable() else None
    except UnicodeDecodeError:
        looks = None
    what = f"it starts with text ({head[:12]!r})" if looks else f"its first bytes are {head[:8]!r}"
    return (f"it cannot be read as a PyTorch file: {what}, where torch.save writes a zip archive (or, before "
            f"PyTorch 1.6, a pickle)")


def load_error_text(exc: BaseException) -> str:
    """A ``torch.load`` failure in one line: the exception's type and the first line of its
    message (a bare ``KeyError`` shows its key as the whole message)."""
    first = (str(exc).splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
