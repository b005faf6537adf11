"""Errors of the data the engine reads are said, with the file, and never swallowed (issue 22
§2), and a units mistake is said at the first batch from fastmde's own line (issue 23).

Through the real entry point (``fastmde.cli.console_main``) on tiny frames-layout trees
(48x64 frames, ResNet18 at 32x48, one step).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from _data_files import pattern_depth, pattern_image, truncate, write_csv_layout, write_frame
from engine_helpers import cli_model_args, one_thread  # noqa: F401 (one_thread: autouse)
from fastmde import _checks
from fastmde.cli import console_main, main
from fastmde.data import DataFormatError
from fastmde.engine.datasets import batches, worker_error

TINY = [*cli_model_args(), "--pretrained", "none", "--batch-size", "2", "--eval-batch-size", "2", "--seed", "3",
        "--val-fraction", "0.2", "--epochs", "1"]




def frames_tree(root, *, train=6, test=2, test_dir="val/official", depth_scale=1.0):
    """The per-frame HDF5 layout at 48x64: ``train/<scene>/NNNNN.h5`` and ``<test_dir>/NNNNN.h5``."""
    for k in range(train):
        write_frame(os.path.join(root, "train", f"scene_{k % 2}", f"{k:05d}.h5"), pattern_image(48, 64, k),
                    pattern_depth(48, 64, k) * depth_scale)
    for k in range(test):
        if test_dir is not None:
            write_frame(os.path.join(root, test_dir, f"{k:05d}.h5"), pattern_image(48, 64, 10 + k),
                        pattern_depth(48, 64, 10 + k) * depth_scale)
    return str(root)


def run_cli(argv, capsys):
    capsys.readouterr()
    status = console_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("fastmde: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_test_split_in_the_wrong_place_is_an_error_before_training(tmp_path, capsys):
    """InnerEye-DeepLearning#428: test files in val/ instead of val/official/ made `fastmde train`
    exit 0 with no test line and no word."""
    root = frames_tree(tmp_path / "nyu", test_dir="val")
    out = tmp_path / "run"
    status, _, err = run_cli(["train", "--data-format", "frames", "--data", root, "--out", out, *TINY], capsys)
    line = one_error_line(err)
    assert status == 2 and "test split" in line and os.path.join(root, "val") in line and "--no-test" in line
    assert "official" in line
    assert not os.path.exists(out / "last.pt")           # refused before any training
    # --no-test trains without reading it
    status, _, err = run_cli(["train", "--data-format", "frames", "--data", root, "--out", out, "--no-test",
                              "--max-steps", "1", *TINY], capsys)
    assert status == 0, err


def test_absent_test_split_is_said_once(tmp_path, capsys):
    root = frames_tree(tmp_path / "nyu", test_dir=None)
    status, out, err = run_cli(["train", "--data-format", "frames", "--data", root, "--out", tmp_path / "run",
                                "--max-steps", "1", *TINY], capsys)
    assert status == 0, err
    said = [line for line in (out + err).splitlines() if "no test" in line]
    assert len(said) == 1 and os.path.join(root, "val") + " does not exist" in said[0], out + err


def test_semicolon_test_csv_is_an_error_before_training(tmp_path, capsys):
    """A nyu2_test.csv separated by ';' was taken for an absent test split."""
    root = str(tmp_path / "csv")
    rgbs = [pattern_image(480, 640, k) for k in range(5)]
    write_csv_layout(root, "train", rgbs, [np.full((480, 640), 40 + k, dtype=np.uint8) for k in range(5)])
    write_csv_layout(root, "test", rgbs[:2], [np.full((480, 640), 2000, dtype=np.uint16)] * 2)
    test_csv = os.path.join(root, "data", "nyu2_test.csv")
    with open(test_csv) as f:
        text = f.read().replace(",", ";")
    with open(test_csv, "w") as f:
        f.write(text)
    status, _, err = run_cli(["train", "--data-format", "csv", "--data", root, "--out", tmp_path / "run", *TINY],
                             capsys)
    line = one_error_line(err)
    assert status == 2 and "test split" in line and f"{test_csv}:1" in line and "rgb_path,depth_path" in line
    assert not os.path.exists(tmp_path / "run" / "last.pt")


def test_corrupt_file_read_by_a_worker_is_one_line_naming_it(tmp_path, capsys):
    """`--workers 2`: a corrupt file mid-training printed the worker's whole traceback as the error."""
    root = frames_tree(tmp_path / "nyu", train=8)
    bad = os.path.join(root, "train", "scene_1", "00005.h5")
    truncate(bad, 0.3)
    status, _, err = run_cli(["train", "--data-format", "frames", "--data", root, "--out", tmp_path / "run",
                              *TINY, "--workers", "2"], capsys)
    line = one_error_line(err)
    assert status == 2 and bad in line and "truncated or corrupt" in line
    assert "worker" not in line and "Original Traceback" not in err


class _Broken(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 2:
            raise DataFormatError(f"/data/{i}.png: cannot be decoded as an image: truncated")
        return torch.zeros(2)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_gives_back_the_readers_error(workers):
    loader = DataLoader(_Broken(), batch_size=1, num_workers=workers)
    with pytest.raises(DataFormatError) as info:
        list(batches(loader))
    assert str(info.value) == "/data/2.png: cannot be decoded as an image: truncated"
    assert worker_error(ValueError("an ordinary error")) is None


def test_millimetre_frames_are_said_at_the_first_batch_from_fastmdes_line(tmp_path):
    """Issue 23: training on mm frames warned only at validation, from torch/utils/_contextlib.py."""
    root = frames_tree(tmp_path / "nyu", test_dir=None, depth_scale=1000.0)
    _checks.reset_depth_unit_check()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--data-format", "frames", "--data", root, "--out", str(tmp_path / "run"),
                     "--max-steps", "1", "--no-test", *TINY]) == 0
    units = [w for w in caught if "millimetres" in str(w.message)]
    assert units, [str(w.message) for w in caught]
    first = units[0]
    assert first.filename.endswith(os.path.join("fastmde", "engine", "train.py"))
    assert "training data (frames" in str(first.message) and "median" in str(first.message)
    assert not any(w.filename.endswith("_contextlib.py") for w in caught)
    loss_units = [w for w in units if "depth_loss" in str(w.message)]
    assert not loss_units                      # one warning: the loss's first-call check stood down


def test_millimetre_ground_truth_is_said_by_eval(tmp_path):
    """`eval` under paper printed rms 3774.97 with no warning."""
    from fastmde import models
    from fastmde.data import NYUFrames
    from fastmde.engine.evaluate import evaluate

    root = frames_tree(tmp_path / "nyu", train=2, depth_scale=1000.0)
    model = models.build("unet34-k3-1x1", size=(32, 48), encoder=18)
    _checks.reset_depth_unit_check()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(model, NYUFrames(root, split="val", size=None), "paper")
    units = [w for w in caught if "millimetres" in str(w.message)]
    assert len(units) == 1 and units[0].filename.endswith(os.path.join("fastmde", "engine", "evaluate.py"))
    assert not any(w.filename.endswith("_contextlib.py") for w in caught)
