"""Where a command may write: the one rule of every ``fastmde`` command's output paths.

A command creates the folders its outputs go into, parents included (``mkdir -p``: ``train
--out runs/a/b``, ``predict --out depth/``, ``eval --out results/x.json``, ``export --out
models/depth.onnx``, ``synth --out data/synth``). Refused before any work, in one line naming
the flag and the path:

* a path that exists as the other kind (a file where a folder is named, a folder where a file is);
* a path below a file (``notes.txt/run``: no folder can be made there);
* a path whose nearest existing folder cannot be written (``PermissionError``).

The checks create nothing: the writers (:mod:`fastmde._atomic`) create the folders when they
write, and a training run makes its folder when it starts (:func:`make_output_folder`) and
removes what it made if it fails before writing into it (:func:`remove_empty_folders`), so a
refused or failed command leaves no empty folder behind.
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


def make_output_folder(path: str) -> list[str]:
    """Make folder ``path``, parents included (``mkdir -p``); returns the folders this made,
    innermost first ([] when ``path`` was there), for :func:`remove_empty_folders`."""
    made, current = [], os.path.abspath(path)
    while not os.path.lexists(current):
        made.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    os.makedirs(path, exist_ok=True)
    return made


def remove_empty_folders(made: list[str]) -> None:
    """Remove the folders of :func:`make_output_folder`, innermost first, while each is empty: a
    command that failed before writing anything leaves no folder behind; one that wrote keeps it."""
    for folder in made:
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue
        except OSError:      # not empty: something was written there
            return
