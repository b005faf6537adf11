"""A newcomer's faults in ``fastmde train`` / ``sweep``, each fixed wherever its kind was and checked
through the real entry point (``fastmde.cli.console_main`` in this process; a subprocess for a real
SIGINT):

* data that cannot train (a KITTI frame smaller than the kb crop, a depth map of another size than
  its photo, a (3, H, W) ``.npy`` depth map) is refused in one line before the run folder is made
  and the start line printed; a run that fails before writing anything leaves no folder behind;
* every message names the command-line flag (``max_steps (--max-steps)``), never only the
  configuration field;
* ``--resume`` with its ``--epochs`` already trained says that nothing was trained;
* the sweep's footer says what each row did (a limit that did not stop a row is no difference),
  and its results.json names each row's network as the table does (``unet18-k3-1x1``);
* Ctrl-C once the training has finished (the final table printed, the test running, the sweep's
  table printed) is one line saying what is kept, exit status 130.

Tiny everything: 40x64 KITTI-style frames or the 48x64 synthetic set, ResNet18 at 32x48, 1-2 steps.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from _data_files import write_kitti_tree
from engine_helpers import (cli_data_args, cli_model_args,  # noqa: F401 (one_thread: autouse; cache: fixture)
                            cache, fastmde_cli, one_thread, run_interrupted)

TINY = [*cli_model_args(), "--pretrained", "none", "--batch-size", "2", "--eval-batch-size", "2", "--lr", "1e-3",
        "--seed", "3", "--val-fraction", "0.2"]
#: a --dataset kitti run on a KITTI-style list (kb crop on unless the test turns it off)
KITTI = ["--dataset", "kitti", "--data-format", "list", *TINY, "--max-steps", "1", "--epochs", "1"]


def refused_alone(argv, capsys, *parts) -> str:
    """The command exits 2 and its whole stderr is one ``fastmde: error:`` line holding ``parts``."""
    status, out, err = fastmde_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("fastmde: error: "), err
    assert out == ""
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def kitti_list(root, fault: str | None = None, line: int = 0) -> list[str]:
    """A 6-frame 40x64 KITTI-style list under ``root`` with ``fault`` at list line ``line``:
    ``"depth-size"`` (a 30x50 depth PNG), ``"npy-3hw"`` (a (3, H, W) .npy depth map), or None.
    Returns the options naming it."""
    listed, images, depths, _ = write_kitti_tree(str(root), [(40, 64)], frames_per_size=6, none_lines=0)
    lines = open(listed).read().splitlines()
    rgb, depth, focal = lines[line].split()
    if fault == "depth-size":
        Image.fromarray(np.full((30, 50), 2560, np.uint16)).save(os.path.join(depths, depth))
    elif fault == "npy-3hw":
        npy = depth[:-len(".png")] + ".npy"
        np.save(os.path.join(depths, npy), np.full((3, 40, 64), 5.0, np.float32))
        lines[line] = f"{rgb} {npy} {focal}"
        with open(listed, "w") as f:
            f.write("\n".join(lines) + "\n")
    return ["--data", listed, "--image-root", images, "--depth-root", depths]


# ---------------------------------------------------------------- 1. data refused before the run folder

@pytest.mark.parametrize("fault, options, message", [
    (None, [], ".png: frame is 40x64; the kb crop needs at least 352x1216"),      # every frame: the first read
    ("depth-size", ["--no-kb-crop", "--train-crop", "32x48"], "0000000000.png: depth map is 30x50, its photo"),
    ("npy-3hw", ["--no-kb-crop", "--train-crop", "32x48"],
     "0000000000.npy: .npy depth has shape (3, 40, 64), expected (H, W)"),
])
def test_kitti_data_that_cannot_train_is_refused_before_the_run_folder(fault, options, message, tmp_path, capsys):
    out = tmp_path / "runs" / "kitti"
    refused_alone(["train", *KITTI, *kitti_list(tmp_path / "data", fault), *options, "--out", out], capsys, message)
    assert not (tmp_path / "runs").exists()       # neither the run folder nor its parent made


def test_a_run_failing_before_its_first_checkpoint_leaves_no_folder(tmp_path, capsys):
    """The bad frame is the list's last, read at a training step: the run had started, wrote
    nothing, and removes the folders it made; a folder that was there before stays."""
    data = kitti_list(tmp_path / "data", "depth-size", line=5)
    argv = ["train", *KITTI, *data, "--no-kb-crop", "--train-crop", "32x48", "--val-fraction", "0.34",
            "--max-steps", "3"]
    status, _, err = fastmde_cli([*argv, "--out", tmp_path / "runs" / "a"], capsys)
    assert status == 2 and "depth map is 30x50" in err and "Traceback" not in err, err
    assert "training unet18-k3-1x1" in err                 # it failed at a step, not before
    assert not (tmp_path / "runs").exists()
    (tmp_path / "mine").mkdir()
    assert fastmde_cli([*argv, "--out", tmp_path / "mine"], capsys)[0] == 2
    assert (tmp_path / "mine").is_dir() and not os.listdir(tmp_path / "mine")


def test_a_sweep_on_data_that_cannot_train_leaves_no_folder(tmp_path, capsys):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"name": "a"}]))
    refused_alone(["sweep", "--configs", rows, *KITTI, *kitti_list(tmp_path / "data"), "--out", tmp_path / "sweep"],
                  capsys, "the kb crop needs at least 352x1216")
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------- 2. flags, not field names

@pytest.mark.parametrize("argv, flag", [
    (["--max-steps", "0"], "--max-steps"), (["--save-every", "0"], "--save-every"),
    (["--val-every", "0"], "--val-every"), (["--lr-step", "0"], "--lr-step"), (["--limit-train", "0"], "--limit-train"),
    (["--lr", "0"], "--lr"), (["--val-fraction", "1.5"], "--val-fraction"), (["--warmup", "-1"], "--warmup"),
    (["--ema", "2"], "--ema"), (["--time-limit", "0"], "--time-limit"), (["--synthetic-views", "0"], "--synthetic-views"),
    (["--cosine", "--lr-step", "2"], "--lr-step"), (["--size", "3"], "--size"), (["--train-crop", "3"], "--train-crop"),
    (["--synthetic-size", "4x4"], "--synthetic-size"), (["--data-format", "list"], "--data"),
    (["--init-from", "x.pt", "--pretrained", "imagenet"], "--init-from"),
])
def test_train_and_sweep_messages_name_the_flag(argv, flag, tmp_path, capsys):
    message = refused_alone(["train", *argv, "--out", tmp_path / "run"], capsys, flag)
    assert "or None" not in message
    if len(argv) == 2:       # the same option in a sweep row (rows use the field names) names both
        rows = tmp_path / "rows.json"
        rows.write_text(json.dumps([{"name": "r", argv[0][2:]: json_value(argv[1])}]))
        refused_alone(["sweep", "--configs", rows, "--out", tmp_path / "sweep"], capsys, "sweep row 'r'",
                      f"{flag[2:].replace('-', '_')} ({flag})")
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def json_value(text: str):
    """A command-line value as a sweep row's JSON value (numbers as numbers)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def test_val_by_scene_refusals_name_the_flag_and_it_works_with_limit_train(tmp_path, capsys):
    data = kitti_list(tmp_path / "data")        # one drive: one scene
    refused_alone(["train", *KITTI, *data, "--no-kb-crop", "--train-crop", "32x48", "--val-by-scene",
                   "--out", tmp_path / "run"], capsys, "--val-by-scene", "1 scene")
    two = write_kitti_tree(str(tmp_path / "two"), [(40, 64), (40, 64)], frames_per_size=3, none_lines=0)
    status, _, err = fastmde_cli(["train", *KITTI, "--data", two[0], "--image-root", two[1], "--depth-root", two[2],
                                  "--no-kb-crop", "--train-crop", "32x48", "--val-by-scene", "--limit-train", "5",
                                  "--out", tmp_path / "run"], capsys)
    assert status == 0, err      # a Subset of the list keeps its items' scenes


# ---------------------------------------------------------------- 3. --resume with --epochs already trained

def test_resume_with_its_epochs_already_trained_says_nothing_trained(cache, tmp_path, capsys):
    argv = ["train", *TINY, *cli_data_args(cache), "--limit-train", "4", "--no-test", "--out", tmp_path / "run"]
    last = tmp_path / "run" / "last.pt"

    def said(*extra) -> list[str]:
        status, _, err = fastmde_cli([*argv, *extra], capsys)
        assert status == 0, err
        return [line for line in err.splitlines() if line.startswith("nothing trained")]

    assert said("--epochs", "1") == []
    assert said("--epochs", "1", "--resume") == [f"nothing trained: {last} has already trained 1 epoch(s), at "
                                                 "--epochs 1 (a larger --epochs continues it)"]
    assert said("--epochs", "2", "--resume") == []          # a larger --epochs trains
    assert said("--epochs", "1", "--resume") == [f"nothing trained: {last} has already trained 2 epoch(s), past "
                                                 "--epochs 1 (a larger --epochs continues it)"]


# ---------------------------------------------------------------- 4. the sweep says what each row did

def test_sweep_footer_is_true_per_row_and_results_name_the_network(cache, tmp_path, capsys):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"name": "a"}]))
    out = tmp_path / "sweep"
    # 1 epoch of 1 step (--limit-train 4: 3 training items, batch 2): --max-steps 30 does not stop it
    status, table, err = fastmde_cli(["sweep", "--configs", rows, *TINY, *cli_data_args(cache), "--limit-train", "4",
                                      "--epochs", "1", "--max-steps", "30", "--figure-images", "1", "--out", out],
                                     capsys)
    assert status == 0, err
    assert "Every row trained its 1 epoch(s) in full" in table
    differences = next(line for line in table.splitlines() if line.startswith("Differences from the paper's"))
    assert "max-steps" not in differences, differences
    results = json.loads((out / "results.json").read_text())
    assert [(r["name"], r["model"]) for r in results] == [("a", "unet18-k3-1x1")]
    assert "| a | unet18-k3-1x1 |" in table


def test_sweep_footer_wording_follows_each_rows_stop():
    from fastmde.engine.paper import differences_line

    def row(name, stopped, steps, max_steps=10):
        return {"name": name, "stopped": stopped, "steps": steps, "config": {"max_steps": max_steps}}

    line = differences_line([row("a", "max_steps", 10), row("b", "max_steps", 25), row("c", "completed", 4)])
    assert line == ("Differences from the paper's setting: stopped at --max-steps 10 (paper: whole epochs) in a; at "
                    "step 25, past --max-steps 10, when resumed (paper: whole epochs) in b."), line


# ---------------------------------------------------------------- 5. Ctrl-C once the training has finished

# A driver around the real entry point that presses Ctrl-C (a real SIGINT) right after the final
# table of the training has been printed, as summary.json is written.
AFTER_TABLE = r"""
import importlib, os, signal, sys
T = importlib.import_module("fastmde.engine.train")
write = T.atomic_write_text
def atomic_write_text(text, path, *args, **kwargs):
    if path.endswith("summary.json"):
        os.kill(os.getpid(), signal.SIGINT)
    return write(text, path, *args, **kwargs)
T.atomic_write_text = atomic_write_text
from fastmde.cli import console_main
sys.exit(console_main(sys.argv[1:]))
"""


def test_ctrl_c_after_the_final_table_is_one_line(cache, tmp_path):
    out = tmp_path / "run"
    proc = run_interrupted(AFTER_TABLE, ["train", *TINY, *cli_data_args(cache), "--limit-train", "4", "--epochs", "1",
                                         "--out", out])
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"interrupted after the training finished: {out}/last.pt holds it at step 1; the same command with "
        "--resume finishes without training"), proc.stderr[-3000:]


def test_ctrl_c_while_testing_and_after_the_sweep_table_is_one_line(cache, tmp_path, capsys, monkeypatch):
    """The KeyboardInterrupt a Ctrl-C raises, raised by the test split's evaluation, then by the
    line printed after the sweep's table."""
    import importlib

    train = importlib.import_module("fastmde.engine.train")     # the module (fastmde.engine.train is also a function)
    sweep = importlib.import_module("fastmde.engine.sweep")

    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(train, "test_best", pressed)
        status, _, err = fastmde_cli(["train", *TINY, *cli_data_args(cache), "--limit-train", "4", "--epochs", "1",
                                      "--out", out], capsys)
    assert status == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (f"interrupted while testing after the training finished: {out}/last.pt "
                                            "holds it at step 1; the same command with --resume finishes without "
                                            "training"), err
    status, stdout, err = fastmde_cli(["train", *TINY, *cli_data_args(cache), "--limit-train", "4", "--epochs", "1",
                                       "--out", out, "--resume"], capsys)
    assert status == 0 and "nothing trained" in err and "\ntest (" in stdout, (stdout, err)

    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"name": "a"}]))

    def print_then_press(*args, **kwargs):
        if str(args[0]).startswith("wrote "):        # the line after the table
            raise KeyboardInterrupt
        print(*args, **kwargs)

    monkeypatch.setattr(sweep, "print", print_then_press, raising=False)
    status, table, err = fastmde_cli(["sweep", "--configs", rows, *TINY, *cli_data_args(cache), "--limit-train", "4",
                                      "--epochs", "1", "--figure-images", "1", "--out", tmp_path / "sweep"], capsys)
    assert status == 130 and "| a |" in table and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (f"sweep: interrupted after every row was finished; {tmp_path}/sweep/table.md, "
                                            f"results.json and {tmp_path}/sweep/figure.png are written"), err
