"""Atomic file writes: a reader sees the old complete file or the new complete file, never half.

Every file fastmde writes (checkpoints, evaluation and sweep results, predicted depth maps,
the NYU-layout data writers, the synthetic cache, the benchmark tables) goes through this
module. The recipe, for ``path``:

1. create a temporary file in the same folder (so the final rename never crosses a file
   system) under a unique name ``.<name>.<random>.tmp``: hidden, recognisable (a leftover
   from a killed process ends in ``.tmp``), and never shared by two writers into one folder;
2. the caller writes it, through a file object (``torch.save``, ``numpy.save``, text), or by
   name for libraries that open files themselves (h5py; Pillow with an explicit ``format=``,
   since the temporary name has no image extension);
3. flush and ``fsync`` the data, then ``os.replace`` it onto ``path`` (atomic on POSIX and
   Windows);
4. on any error (including ``KeyboardInterrupt``) the temporary file is removed and ``path``
   is left as it was.

The temporary file is created with ``os.open(..., O_CREAT | O_EXCL, 0o666)``, so the kernel
applies the process umask exactly as a plain ``open(path, "w")`` would: the final file gets
``0o666 & ~umask`` (``tempfile.mkstemp`` would create it 0600, and reading the umask back
means changing it process-wide for a moment). Folders made by :func:`atomic_directory` get
``0o777 & ~umask`` the same way.

The rename itself is not followed by an ``fsync`` of the folder: after a power cut the folder
may still show the old file, but never a partial one.

A writer killed outright (SIGKILL, a power cut) cannot remove its temporary file. Each writer
holds an exclusive lock on its temporary file while it writes (``flock``, or a POSIX record lock
where the writer opens the file by name; the kernel drops either when the process dies, however
it dies), and :func:`clean_stale_temporaries` removes, from a folder a
run is about to write into, the files named exactly as this module names its temporaries
(``.<name>.<12 hex digits>.tmp``) that no live writer holds and that were last written more
than a few seconds ago. Nothing else is ever removed (other names, folders, links).
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import time

try:
    import fcntl
except ImportError:  # Windows: no flock; stale temporaries are told by their age alone
    fcntl = None

__all__ = ["atomic_directory", "atomic_path", "atomic_write", "atomic_write_text", "clean_stale_temporaries",
           "is_temporary_name"]

_ATTEMPTS = 100
_TOKEN_BYTES = 6
#: exactly the names :func:`_temporary_name` makes: ``.<name>.<12 lowercase hex digits>.tmp``
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{%d}\.tmp" % (2 * _TOKEN_BYTES))


def _temporary_name(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp")


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` (a file name, no folder) is one this module gives its temporary files."""
    return _TEMPORARY.fullmatch(name) is not None


def _lock(fd: int, by_name: bool) -> None:
    """Hold an exclusive lock on the temporary file while it is written: the mark of a live
    writer, dropped by the kernel when the process dies. ``flock`` for writers through our file
    object; a POSIX record lock (``lockf``) for writers that open the file by name, since HDF5
    takes a ``flock`` of its own on the file it creates (the two kinds do not conflict)."""
    if fcntl is not None:
        if by_name:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _create_temporary(path: str, *, by_name: bool = False) -> tuple[int, str]:
    """A new empty file beside ``path`` (mode ``0o666 & ~umask``), locked, as ``(fd, name)``."""
    flags = (os.O_RDWR if by_name else os.O_WRONLY) | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_BINARY", 0)
    for _ in range(_ATTEMPTS):
        tmp = _temporary_name(path)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        try:
            _lock(fd, by_name)
        except BaseException:
            os.close(fd)
            _remove(tmp)
            raise
        return fd, tmp
    raise FileExistsError(f"{path}: no free temporary name beside it after {_ATTEMPTS} attempts")


def _held_by_a_writer(name: str) -> bool:
    """Whether a live process holds either lock of :func:`_lock` on the temporary file ``name``.
    (A POSIX record lock of this very process does not show: the grace period covers that.)"""
    if fcntl is None:
        return False
    try:
        fd = os.open(name, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return True   # vanished or not writable: not ours to remove
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)   # closing drops the probe's locks
    return False


def clean_stale_temporaries(folder, *, grace_s: float = 5.0) -> list[str]:
    """Remove the temporary files of this module's writers that a killed process left in
    ``folder`` (not its subfolders); returns the names removed.

    A file is removed only if its name is exactly ``.<name>.<12 hex digits>.tmp``, it is a
    regular file (not a link or a folder), no live writer holds its flock (on systems without
    flock: no such test) and it was last written more than ``grace_s`` seconds ago (a writer
    between creating the file and locking it, or between closing and renaming it, is never
    caught). A missing folder holds nothing."""
    folder = os.fspath(folder)
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    now = time.time()
    for name in names:
        if not is_temporary_name(name):
            continue
        full = os.path.join(folder, name)
        try:
            info = os.lstat(full)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < grace_s or _held_by_a_writer(full):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(full)
            removed.append(name)
    return removed


def _target(path) -> str:
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, cannot write a file there")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _remove(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _fsync_file(name: str) -> None:
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", *, encoding: str | None = None, newline: str | None = None,
                 fsync: bool = True):
    """Write ``path`` atomically through a file object.

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (text, ``encoding`` default UTF-8). The folder is
    created if missing. On a clean exit the data is flushed, fsynced (unless ``fsync=False``)
    and renamed onto ``path``; on an exception the temporary file is removed, ``path`` keeps
    its old content, and the exception propagates.

    Example::

        with atomic_write("runs/x/last.pt") as f:
            torch.save(state, f)

    Raises:
        ValueError: ``mode`` is not ``"w"`` or ``"wb"``.
        IsADirectoryError: ``path`` is a folder.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' (text) or 'wb' (bytes), got {mode!r}")
    path = _target(path)
    fd, tmp = _create_temporary(path)
    try:
        if mode == "w":
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
        else:
            f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        _remove(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path, *, fsync: bool = True):
    """Write ``path`` atomically through a temporary file name, for writers that open by name.

    Yields the name of an empty temporary file beside ``path``; the caller writes it
    (``h5py.File(tmp, "w")``, ``image.save(tmp, format="PNG")``), then a
    clean exit fsyncs it and renames it onto ``path``. On an exception the temporary file is
    removed and ``path`` is left as it was. The caller must close what it opened before the
    block ends.

    Raises:
        IsADirectoryError: ``path`` is a folder.
        FileNotFoundError: the writer removed the temporary file without recreating it.
    """
    path = _target(path)
    fd, tmp = _create_temporary(path, by_name=True)
    if fcntl is None:   # Windows cannot rename a file held open; it has no flock to hold either
        os.close(fd)
        fd = None
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"{tmp}: the temporary file for {path} disappeared before the rename")
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        if fd is not None:
            os.close(fd)   # the flock that marked a live writer


def atomic_write_text(text: str, path, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_directory(path):
    """Build a folder under a temporary name beside ``path`` and rename it into place.

    Yields the temporary folder (mode ``0o777 & ~umask``). On a clean exit it is renamed to
    ``path``; if ``path`` appeared meanwhile (another process built the same thing first),
    the existing folder is kept and the temporary one removed, so concurrent builders agree on
    one copy. On an exception the temporary folder is removed. The files inside should be
    written with :func:`atomic_write` / :func:`atomic_path` (or fsynced) for the result to
    survive a power cut.

    Raises:
        FileExistsError: ``path`` exists and is not a folder.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path}: exists and is not a folder")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(_ATTEMPTS):
        tmp = _temporary_name(path)
        try:
            os.mkdir(tmp, 0o777)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"{path}: no free temporary name beside it after {_ATTEMPTS} attempts")
    try:
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError:
            if not os.path.isdir(path):  # not a lost race: a real failure
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
