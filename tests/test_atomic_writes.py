"""fastmde._atomic: every file is replaced whole or not at all, never under a shared temporary name."""
from __future__ import annotations

import contextlib
import os
import re
import threading

import numpy as np
import pytest
import torch

from fastmde._atomic import atomic_directory, atomic_path, atomic_write, atomic_write_text
from fastmde.data.writers import LabeledMatWriter, write_frame_h5, write_index_file
from fastmde.engine.checkpoint import atomic_save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path) -> int:
    return os.stat(path).st_mode & 0o777


class Boom(Exception):
    pass


# ---------------------------------------------------------------- a failure mid-write

def _fail_text(path):
    with atomic_write(path, "w") as f:
        f.write("new, half written")
        raise Boom("disk full")


def _fail_bytes(path):
    with atomic_write(path, "wb") as f:
        f.write(b"\x00" * 100_000)
        raise Boom("disk full")


def _fail_numpy(path):
    with atomic_write(path, "wb") as f:
        np.save(f, np.zeros(1000))
        raise Boom("disk full")


def _fail_torch(path):
    with atomic_write(path, "wb") as f:
        torch.save({"w": torch.zeros(1000)}, f)
        raise Boom("disk full")


def _fail_h5py(path):
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("x", data=np.zeros(1000))
        raise Boom("disk full")


def _fail_pil(path):
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp, format="PNG")
        raise Boom("disk full")


def _fail_interrupt(path):
    with atomic_write(path, "w") as f:
        f.write("new")
        raise KeyboardInterrupt


@pytest.mark.parametrize("fail", [_fail_text, _fail_bytes, _fail_numpy, _fail_torch, _fail_h5py, _fail_pil,
                                  _fail_interrupt])
def test_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, fail):
    path = tmp_path / "result.bin"
    path.write_bytes(b"old complete content")
    with pytest.raises((Boom, KeyboardInterrupt)):
        fail(str(path))
    assert os.listdir(tmp_path) == ["result.bin"]
    assert path.read_bytes() == b"old complete content"


def test_failure_mid_write_of_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        _fail_bytes(str(tmp_path / "new.bin"))
    assert os.listdir(tmp_path) == []


def test_torch_save_failure_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    atomic_save({"a": torch.ones(3)}, path)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert torch.equal(torch.load(path)["a"], torch.ones(3))


def test_data_writers_failing_mid_write_leave_no_file(tmp_path):
    rgb = np.zeros((3, 4, 5), np.uint8)
    write_frame_h5(tmp_path / "f.h5", rgb, np.ones((4, 5), np.float32))
    before = (tmp_path / "f.h5").read_bytes()
    with pytest.raises(ValueError, match="depth must be"):
        write_frame_h5(tmp_path / "f.h5", rgb, np.ones((4, 4), np.float32))   # refused before writing
    assert (tmp_path / "f.h5").read_bytes() == before
    with pytest.raises(Boom):
        with LabeledMatWriter(tmp_path / "l.mat", 2, size=(4, 5)) as w:
            w.add(rgb, np.ones((4, 5)))
            raise Boom("interrupted")
    with pytest.raises(ValueError, match="only 1 of 2"):
        with LabeledMatWriter(tmp_path / "l.mat", 2, size=(4, 5)) as w:
            w.add(rgb, np.ones((4, 5)))
    assert sorted(os.listdir(tmp_path)) == ["f.h5"]


def test_data_writers_write_complete_files(tmp_path):
    import h5py

    rgb = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    depth = np.arange(20, dtype=np.float32).reshape(4, 5)
    write_frame_h5(tmp_path / "a" / "f.h5", rgb, depth)
    with h5py.File(tmp_path / "a" / "f.h5", "r") as f:
        assert np.array_equal(f["rgb"][()], rgb) and np.array_equal(f["depth"][()], depth)
    with LabeledMatWriter(tmp_path / "l.mat", 1, size=(4, 5)) as w:
        w.add(rgb, depth)
    assert (tmp_path / "l.mat").read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(tmp_path / "l.mat", "r") as f:
        assert np.array_equal(f["images"][0], rgb.transpose(0, 2, 1))
    write_index_file(tmp_path / "i.txt", [3, 1], "note")
    assert (tmp_path / "i.txt").read_text() == "# note\n3\n1\n"
    assert sorted(os.listdir(tmp_path)) == ["a", "i.txt", "l.mat"]


def test_atomic_path_rejects_a_writer_that_removed_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="disappeared"):
        with atomic_path(tmp_path / "x.h5") as tmp:
            os.unlink(tmp)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- flush, fsync, then rename

def test_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_size)), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.path.basename(b))), real_replace(a, b))[1])
    atomic_write_text("12345", tmp_path / "a.txt")
    with atomic_path(tmp_path / "b.bin") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"xyz")
    assert events == [("fsync", 5), ("replace", "a.txt"), ("fsync", 3), ("replace", "b.bin")]


# ---------------------------------------------------------------- two writers, one folder

def test_two_open_writers_of_one_file_use_different_temporaries(tmp_path):
    path = tmp_path / "r.txt"
    with atomic_write(path, "w") as first, atomic_write(path, "w") as second:
        first.write("first")
        second.write("second")
        temporaries = sorted(os.listdir(tmp_path))
        assert len(temporaries) == 2 and all(re.fullmatch(r"\.r\.txt\.[0-9a-f]{12}\.tmp", t) for t in temporaries)
    assert path.read_text() == "first"     # the outer block finishes last
    assert os.listdir(tmp_path) == ["r.txt"]


def test_concurrent_writers_into_one_folder_never_collide(tmp_path):
    payloads = {k: (f"writer {k} " * 2000).encode() for k in range(6)}
    errors = []

    def work(k):
        try:
            for i in range(15):
                with atomic_write(tmp_path / "shared.bin") as f:
                    f.write(payloads[k])
                atomic_write_text(f"{k} {i}\n", tmp_path / f"own-{k}.txt")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert (tmp_path / "shared.bin").read_bytes() in payloads.values()   # one writer's whole file
    assert sorted(os.listdir(tmp_path)) == ["own-0.txt", "own-1.txt", "own-2.txt", "own-3.txt", "own-4.txt",
                                            "own-5.txt", "shared.bin"]
    assert all((tmp_path / f"own-{k}.txt").read_text() == f"{k} 14\n" for k in range(6))


# ---------------------------------------------------------------- permissions follow the umask

@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_final_mode_follows_the_umask(tmp_path, mask):
    from PIL import Image

    with umask(mask):
        atomic_write_text("x", tmp_path / "t.txt")
        atomic_save({"a": torch.ones(1)}, str(tmp_path / "c.pt"))
        write_frame_h5(tmp_path / "f.h5", np.zeros((3, 2, 2), np.uint8), np.zeros((2, 2), np.float32))
        with atomic_path(tmp_path / "p.png") as tmp:
            Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp, format="PNG")
        with atomic_directory(tmp_path / "d") as d:
            atomic_write_text("y", os.path.join(d, "inner.txt"))
        plain = tmp_path / "plain.txt"
        plain.write_text("what open() gives")
    for name in ("t.txt", "c.pt", "f.h5", "p.png", "d/inner.txt"):
        assert mode_of(tmp_path / name) == 0o666 & ~mask == mode_of(plain), name
    assert mode_of(tmp_path / "d") == 0o777 & ~mask


# ---------------------------------------------------------------- folders built whole

def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "cache" / "built"
    with pytest.raises(Boom):
        with atomic_directory(target) as d:
            atomic_write_text("half", os.path.join(d, "a.txt"))
            raise Boom("interrupted")
    assert os.listdir(tmp_path / "cache") == []
    with atomic_directory(target) as d:
        atomic_write_text("mine", os.path.join(d, "a.txt"))
        assert not target.exists()
    assert (target / "a.txt").read_text() == "mine"
    # A builder that lost the race keeps the first copy and removes its own.
    with atomic_directory(target) as d:
        atomic_write_text("late", os.path.join(d, "a.txt"))
    assert (target / "a.txt").read_text() == "mine" and os.listdir(tmp_path / "cache") == ["built"]


def test_bad_targets_are_named(tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_write(tmp_path / "x", "a"):
            pass
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic_write_text("x", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        with atomic_directory(tmp_path / "file"):
            pass
    assert os.listdir(tmp_path) == ["file"]


def test_no_fixed_temporary_names_in_the_tree():
    """Every write goes through fastmde._atomic: no ``path + ".tmp"`` style names elsewhere."""
    pattern = re.compile(r"""["'][^"'\n]*\.tmp["']""")
    offenders = []
    for top in ("fastmde", "bench"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py") and name != "_atomic.py":
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as f:
                        for n, line in enumerate(f, 1):
                            if pattern.search(line):
                                offenders.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# ---------------------------------------------------------------- a killed writer's leftovers (issue 22 §5)

_KILLED_WRITER = r"""
import sys, time, torch
from fastmde.engine.checkpoint import atomic_save

class Slow:
    '''A state whose pickling stalls half-way: the checkpoint write is caught mid-file.'''
    def __reduce__(self):
        print("writing", flush=True)
        time.sleep(600)
        return (dict, ())

atomic_save({"model": {"w": torch.zeros(1000)}, "stall": Slow()}, sys.argv[1])
"""


def _age(path, seconds=60.0):
    past = os.stat(path).st_mtime - seconds
    os.utime(path, (past, past))


def test_a_killed_checkpoint_write_is_cleaned_when_the_next_run_starts(tmp_path, capsys):
    """A SIGKILL mid-write left ``.last.pt.<hex>.tmp`` in the run folder forever; the next run
    removes it, and never a live writer's temporary or any other file."""
    import signal
    import subprocess
    import sys
    import time

    from fastmde._atomic import clean_stale_temporaries, is_temporary_name
    from fastmde.engine.checkpoint import clean_output_folder

    run = tmp_path / "run"
    run.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(run / "last.pt")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        (left,) = [n for n in os.listdir(run) if n.startswith(".last.pt.")]
        assert is_temporary_name(left)
        _age(run / left)
        assert clean_stale_temporaries(run) == []          # a live writer holds it: never removed
        assert os.path.exists(run / left)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL and os.listdir(run) == [left]   # the leftover
    _age(run / left)
    # beside it: what must survive (another program's names, a folder of the pattern, a fresh file)
    keep = ["last.pt", ".last.pt.tmp", ".last.pt.0123456789AB.tmp", ".last.pt.0123456789a.tmp", "notes.tmp",
            ".last.pt.0123456789ab.tmp.bak", "last.pt.0123456789ab.tmp"]
    for name in keep:
        (run / name).write_text("keep")
        _age(run / name)
    (run / ".best.pt.00000000abcd.tmp").mkdir()
    (run / ".log.jsonl.0123456789ab.tmp").write_text("written a moment ago: maybe a writer between its steps")
    planted = ".summary.json.fedcba987654.tmp"   # the exact pattern, no writer alive
    (run / planted).write_text("{")
    _age(run / planted)
    removed = clean_output_folder(run, lambda text: print(text))
    assert sorted(removed) == sorted([left, planted])
    assert sorted(os.listdir(run)) == sorted(keep + [".best.pt.00000000abcd.tmp", ".log.jsonl.0123456789ab.tmp"])
    assert "removed 2 temporary file(s) that a killed write left in" in capsys.readouterr().out
    assert clean_stale_temporaries(tmp_path / "missing") == []


def test_training_start_cleans_the_run_folder(tmp_path, tmp_path_factory, capsys):
    from engine_helpers import synthetic_cache, tiny_config
    from fastmde.engine.train import Trainer

    cache = synthetic_cache(tmp_path_factory)
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pt.a1b2c3d4e5f6.tmp"
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    _age(stale)
    said = []
    Trainer(tiny_config(cache, str(out), max_steps=1, epochs=1), log=said.append).fit()
    assert not stale.exists() and os.path.exists(out / "last.pt")
    assert any(".last.pt.a1b2c3d4e5f6.tmp" in line and "killed write" in line for line in said)


def test_writers_hold_a_lock_on_their_temporary_while_writing(tmp_path):
    """Seen from another process (a POSIX record lock is invisible to its own process): both
    writers mark their temporary while they write, an HDF5 file being written by name included."""
    import subprocess
    import sys

    import h5py

    def held(name) -> bool:
        probe = "import sys; from fastmde._atomic import _held_by_a_writer as h; print(h(sys.argv[1]))"
        out = subprocess.run([sys.executable, "-c", probe, name], capture_output=True, text=True, check=True)
        return out.stdout.strip() == "True"

    with atomic_write(tmp_path / "a.bin") as f:
        f.write(b"x")
        (name,) = [n for n in os.listdir(tmp_path) if n.startswith(".a.bin.")]
        assert held(str(tmp_path / name))
    with atomic_path(tmp_path / "b.h5") as tmp:
        assert held(tmp)
        with h5py.File(tmp, "w") as f:    # HDF5 takes its own flock: no conflict with ours
            f.create_dataset("x", data=np.zeros(3))
            assert held(tmp)
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.h5"]
    (tmp_path / ".c.bin.0123456789ab.tmp").write_bytes(b"")
    assert not held(str(tmp_path / ".c.bin.0123456789ab.tmp"))
