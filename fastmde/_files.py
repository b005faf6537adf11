"""What a weights file is when ``torch.load`` cannot read it, in one line.

``torch.load(path, weights_only=True)`` on a file that is not a PyTorch file at all fails deep
in its unpickler: a text file gives ``KeyError: 101`` (the byte 'e' taken for a pickle memo
key), random bytes ``UnpicklingError`` or ``RuntimeError: Invalid magic number``. The readers of
weights files (fastmde checkpoints, other projects' checkpoints, encoder weights) look at the
file's first bytes before loading it: ``torch.save`` writes a zip archive (PyTorch >= 1.6) and,
before that, a pickle whose first byte is the protocol marker 0x80.

A file that is one of those but damaged (cut short by an interrupted copy or download, or with
bytes changed) is said to be damaged, not "not a PyTorch file": a zip archive keeps its directory
at its end, so a cut-short archive starts as one (``PK\x03\x04``) but has no directory, which
``torch.load`` reports as "failed finding central directory" or ``OSError: [Errno 22]``; and
``torch.load`` reads a stored member without checking its CRC-32, so changed bytes would load as
wrong weights without an error (:func:`torch_file_damage` checks them).
"""
from __future__ import annotations

import os
import zipfile

#: the first bytes of a zip archive (a local file header), which torch.save writes first
ZIP_MAGIC = b"PK\x03\x04"
#: what torch.load raises for a file it finds cut short or damaged (legacy pickles included)
_DAMAGE_WORDS = ("unexpected EOF", "might be corrupted", "Ran out of input", "pickle data was truncated",
                 "failed finding central directory", "archive is corrupted", "Bad CRC-32")


def torch_file_problem(path) -> str | None:
    """None when ``path`` starts as a ``torch.save`` file does, else why it cannot be one (with its
    first bytes, and whether they read as text)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(path) or head[:1] == b"\x80" or head.startswith(ZIP_MAGIC):
        return None     # a PyTorch file, or a damaged one (torch_file_damage says which)
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


def torch_file_damage(path, exc: BaseException | None = None) -> str | None:
    """Why ``path``, a ``torch.save`` file by its first bytes, is damaged: a phrase to follow
    "<file> is damaged or truncated: ", ending in the likely cause; None when nothing is wrong.

    Without ``exc`` (before ``torch.load``): a zip archive without its end (cut short), a
    directory that cannot be read, or a member whose bytes fail the CRC-32 the archive records
    (reads the whole file once; ``torch.save`` records CRCs unless
    ``torch.serialization.set_crc32_options(False)``, whose zero CRCs are not checked). With
    ``exc`` (``torch.load`` failed): whether that failure is one of a damaged file (a legacy
    pickle cut short: ``EOFError``, "unexpected EOF"), with its message.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    cause = "an interrupted copy, download or save? copy it again"
    if exc is not None:
        text = str(exc)
        if isinstance(exc, (EOFError, zipfile.BadZipFile)) or any(w in text for w in _DAMAGE_WORDS):
            return f"torch.load stopped at {load_error_text(exc)!r} ({size} bytes; {cause})"
        return None
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head != ZIP_MAGIC:
        return None
    if not zipfile.is_zipfile(path):
        return (f"it is the start of the zip archive torch.save writes, cut short: its {size} bytes end before "
                f"the archive's closing directory ({cause})")
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size:    # saved without CRCs: nothing to check
                    continue
                with archive.open(info) as member:
                    while member.read(1 << 24):
                        pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return (f"its zip archive cannot be read back ({load_error_text(error)}: bytes changed since it was "
                f"written; a faulty copy or disk? copy it again)")
    return None
