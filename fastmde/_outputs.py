"""Where a command may write: the one rule of every ``fastmde`` command's output paths.

A command creates the folders its outputs go into, parents included (``mkdir -p``: ``train
--out runs/a/b``, ``predict --out depth/``, ``eval --out results/x.json``, ``export --out
models/depth.onnx``, ``synth --out data/synth``). Refused before any work, in one line naming
the flag and the path:

* a path that exists as the other kind (a file where a folder is named, a folder where a file is);
* a path below a file (``notes.txt/run``: no folder can be made there);
* a path whose nearest existing folder cannot be written (``PermissionError``).

Nothing is created here: the writers (:mod:`fastmde._atomic`, ``os.makedirs``) create the folders
when they write, so a refused or failed command leaves no empty folder behind.
"""
from __future__ import annotations

import os


def _nearest_existing(path: str) -> str:
    """``path`` or its nearest ancestor that exists (``os.path.lexists``)."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _check_ancestors(path: str, flag: str) -> None:
    """Refuse ``path`` when the nearest existing ancestor of the folder it lies in is a file or
    cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    existing = _nearest_existing(folder)
    if not os.path.isdir(existing):
        raise FileExistsError(f"{flag} {path!r}: {existing!r} is a file, so no folder can be made below it "
                              "(choose another path)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path!r}: the folder {existing!r} cannot be written")


def check_output_folder(path: str, flag: str = "--out", what: str = "a folder") -> None:
    """Refuse (one line) a folder option that cannot be a folder to write in: an existing file, a
    path below a file, a folder that cannot be written. A missing folder is fine (created when
    written, parents included)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{flag} {path!r} is a file; it names {what} (choose another path)")
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"{flag} {path!r}: the folder cannot be written")
        return
    _check_ancestors(path, flag)


def check_output_file(path: str, flag: str = "--out") -> None:
    """Refuse (one line) a file option that cannot be written: an existing folder, a path below a
    file, a folder that cannot be written. Its missing folders are fine (created when written)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path!r} is a folder; it names the file to write")
    _check_ancestors(path, flag)
