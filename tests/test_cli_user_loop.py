"""A newcomer's loop through the ``fastmde`` command: Ctrl-C anywhere, sweeps that never lose work,
outputs that do not replace each other, what ``synth`` writes ``train`` reads, and every bad input
refused in one line (exit 2) before any work.

Everything runs through the real entry point (``fastmde.cli.console_main`` in this process, or the
``fastmde`` command in a subprocess where a real SIGINT is needed) on the tiny synthetic set of
``engine_helpers`` (48x64 frames, ResNet18 at 32x48, 1-3 steps).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from engine_helpers import (FRAME_SIZE, TEST_FRAMES, cli_data_args, cli_model_args,  # noqa: F401 (one_thread: autouse; cache: fixture)
                            cache, fastmde_cli, one_thread, run_interrupted)
from fastmde.engine import read_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [*cli_model_args(), "--pretrained", "none", "--batch-size", "2", "--eval-batch-size", "2", "--lr", "1e-3",
        "--seed", "3", "--val-fraction", "0.2"]




def refused(argv, capsys, *parts) -> str:
    """The command exits 2 with one line on stderr holding every one of ``parts``."""
    status, _, err = fastmde_cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.startswith("fastmde: error:")]
    assert status == 2 and len(lines) == 1, err
    assert "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# A driver around the real entry point that presses Ctrl-C (a real SIGINT to itself) at training
# step 2, and with PRESS_DURING_SAVE a second time in the middle of the checkpoint write that the
# first one asked for.
DRIVER = r"""
import importlib, os, signal, sys
import torch
T = importlib.import_module("fastmde.engine.train")
state = {"armed": False}
step = T.Trainer.train_step
def train_step(self, batch):
    if self.step == 2 and not state.get("done"):
        state["done"] = True
        state["armed"] = bool(os.environ.get("PRESS_DURING_SAVE"))
        os.kill(os.getpid(), signal.SIGINT)
    return step(self, batch)
T.Trainer.train_step = train_step
class Pressing:
    def __init__(self, f): self.f, self.sent = f, False
    def write(self, data):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return self.f.write(data)
    def __getattr__(self, name): return getattr(self.f, name)
save = torch.save
def pressing_save(obj, f, *args, **kwargs):
    if state["armed"]:
        state["armed"] = False
        f = Pressing(f)
    return save(obj, f, *args, **kwargs)
torch.save = pressing_save
from fastmde.cli import console_main
sys.exit(console_main(sys.argv[1:]))
"""


def run_with_ctrl_c(argv, **env) -> subprocess.CompletedProcess:
    return run_interrupted(DRIVER, argv, **env)


# ---------------------------------------------------------------- Ctrl-C

def test_second_ctrl_c_during_the_save_keeps_the_checkpoint_and_exits_in_one_line(cache, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--out", out, *TINY, *cli_data_args(cache)]
    proc = run_with_ctrl_c(argv, PRESS_DURING_SAVE="1")
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "inline_container" not in proc.stderr, proc.stderr[-3000:]
    assert "finishing the checkpoint being written before stopping" in proc.stderr
    assert f"interrupted: saved {out}/last.pt at step 2; continue with --resume" in proc.stderr
    assert read_checkpoint(str(out / "last.pt"))["step"] == 2       # the save was finished, not lost
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    status, _, err = fastmde_cli(argv + ["--resume"], capsys)
    assert status == 0 and "at epoch 1, sample 4 of 8, step 2" in err
    assert read_checkpoint(str(out / "last.pt"))["step"] == 4


def test_ctrl_c_in_a_sweep_saves_the_row_and_resume_continues_it(cache, tmp_path, capsys):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"name": "a"}, {"name": "b", "lr": 5e-4}]))
    out = tmp_path / "sweep"
    argv = ["sweep", "--configs", rows, "--epochs", "1", "--figure-images", "1", "--out", out, *TINY,
            *cli_data_args(cache)]
    proc = run_with_ctrl_c(argv)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "interrupted in row 'a'; the same command with --resume continues it" in proc.stderr
    assert read_checkpoint(str(out / "a" / "last.pt"))["step"] == 2
    # Without --resume the interrupted row is named, and nothing is trained.
    refused(argv, capsys, "row 'a'", "a run interrupted at step 2", "--resume", "--overwrite")
    assert read_checkpoint(str(out / "a" / "last.pt"))["step"] == 2
    status, table, err = fastmde_cli(argv + ["--resume"], capsys)
    assert status == 0, err
    assert "resumed" in err and "step 2" in err
    results = json.loads((out / "results.json").read_text())
    assert [(r["name"], r["steps"], r["stopped"]) for r in results] == [("a", 4, "completed"), ("b", 4, "completed")]
    assert "Every row trained its 1 epoch(s) in full" in table


def test_train_overwrite_starts_a_clean_run(cache, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--out", out, "--no-test", *TINY, *cli_data_args(cache)]
    assert fastmde_cli(argv, capsys)[0] == 0
    assert [json.loads(line)["step"] for line in open(out / "log.jsonl")] == [4]
    refused(argv, capsys, "already holds a run", "--resume", "--overwrite")
    status, _, err = fastmde_cli(argv + ["--overwrite", "--max-steps", "1"], capsys)
    assert status == 0 and "removed the earlier run's last.pt, best.pt, log.jsonl, summary.json" in err
    # the log, best.pt and summary are the new run's only
    assert [json.loads(line)["step"] for line in open(out / "log.jsonl")] == [1]
    assert read_checkpoint(str(out / "best.pt"))["step"] == 1
    assert json.loads((out / "summary.json").read_text())["step"] == 1


# ---------------------------------------------------------------- sweeps never lose work

def test_sweep_refuses_to_replace_rows_of_other_options_and_says_what_rows_trained(cache, tmp_path, capsys):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"name": "short"}]))
    out = tmp_path / "sweep"
    argv = ["sweep", "--configs", rows, "--epochs", "3", "--max-steps", "2", "--figure-images", "1", "--out", out,
            *TINY, *cli_data_args(cache)]
    status, table, err = fastmde_cli(argv, capsys)
    assert status == 0, err
    # What the row trained, not what --epochs asked for: 2 steps of batch 2 = 4 images, 2 of the
    # epoch's 4 steps (8 training frames: 10 less the 20% validation hold-out).
    assert "Every row stopped by --max-steps 2 before its 3 epoch(s)" in table
    header, _, row = [line for line in table.splitlines() if line.startswith("|")][:3]
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))
    assert (cells["steps"], cells["epochs"], cells["images"]) == ("2", "0.50", "4")
    differences = next(line for line in table.splitlines() if line.startswith("Differences from the paper's setting"))
    for part in ("stopped at --max-steps 2", "batch size 2", "lr 0.001 (paper 0.0001)", "encoder ResNet18",
                 "random encoder initialisation (paper: ImageNet weights)", "validation 20% of the training split",
                 f"synthetic scenes, 10 training frames at {FRAME_SIZE[0]}x{FRAME_SIZE[1]}"):
        assert part in differences, (part, differences)
    mtime = os.path.getmtime(out / "short" / "last.pt")
    # Another --max-steps: refused before anything is trained, the row's work kept.
    refused(argv[:-len(TINY) - len(cli_data_args(cache))] + ["--max-steps", "1", *TINY, *cli_data_args(cache)],
            capsys, "row 'short'", "trained with other options", "--max-steps 2 (saved) -> 1 (now)", "--overwrite")
    assert os.path.getmtime(out / "short" / "last.pt") == mtime
    refused(argv + ["--resume", "--overwrite"], capsys, "--resume", "--overwrite")
    # --resume continues it to the new limit; --overwrite trains it again from step 0.
    longer = [a if a != "2" or argv[i - 1] != "--max-steps" else "3" for i, a in enumerate(argv)]
    status, table, err = fastmde_cli(longer + ["--resume"], capsys)
    assert status == 0, err
    result = json.loads((out / "short" / "result.json").read_text())
    assert (result["steps"], result["images_seen"], result["config"]["max_steps"]) == (3, 6, 3)
    assert "resumed at step 2 with changed options: --max-steps 2 -> 3" in table
    status, _, err = fastmde_cli(argv + ["--overwrite"], capsys)
    assert status == 0 and "training again (--overwrite)" in err
    assert json.loads((out / "short" / "result.json").read_text())["steps"] == 2


def test_sweep_reads_rows_and_names_the_file_it_cannot(tmp_path, capsys):
    bad = tmp_path / "rows.json"
    bad.write_text('[{"name": "a",}]')
    refused(["sweep", "--configs", bad], capsys, str(bad), "not valid JSON")
    refused(["sweep", "--configs", tmp_path / "missing.json"], capsys, "missing.json", "no such file")
    refused(["sweep", "--configs", "table9"], capsys, "unknown sweep 'table9'")
    rows = tmp_path / "ok.json"
    rows.write_text(json.dumps([{"name": "a", "synthetic_val": 3}]))   # the option's former name
    from fastmde.engine import TrainConfig
    from fastmde.engine.sweep import read_rows, row_configs

    assert row_configs(TrainConfig(), read_rows(str(rows)), str(tmp_path))[0][1].synthetic_test == 3
    (tmp_path / "file").write_text("x")
    refused(["sweep", "--configs", "table3", "--out", tmp_path / "file"], capsys, "is a file")
    refused(["sweep", "--configs", "table3", "--figure-images", "0"], capsys, "--figure-images")


# ---------------------------------------------------------------- synth -> train

def test_what_synth_writes_train_reads(tmp_path, capsys):
    frames, labeled = tmp_path / "frames", tmp_path / "labeled"
    synth = ["synth", "--train", "6", "--val", "2", "--size", "64x64", "--frames-per-scene", "2"]
    assert fastmde_cli(synth + ["--out", frames], capsys)[0] == 0
    assert fastmde_cli(synth + ["--out", labeled, "--layout", "labeled"], capsys)[0] == 0
    train = ["train", "--max-steps", "1", "--size", "64x64", "--val-fraction", "0.34", "--pretrained", "none",
             "--device", "cpu", "--amp", "none", "--workers", "0", "--no-progress", "--model", "unet34-k3-1x1",
             "--encoder", "18"]
    # 64x64 frames (not NYU's 480x640) in both layouts; the labeled test split is the
    # test_indices.txt synth wrote beside the file (2 of the 8 images), whether --data names the
    # file or its folder.
    for fmt, data in (("frames", frames), ("labeled", labeled / "nyu_depth_v2_labeled.mat"), ("labeled", labeled)):
        status, out, err = fastmde_cli(train + ["--data-format", fmt, "--data", data, "--out", tmp_path / f"r-{fmt}",
                                               "--overwrite"], capsys)
        assert status == 0, err
        assert "4 train / 2 val items" in err
        assert "test (2 held-out items" in out and "stopped by --max-steps, resumable" in out
    manifest = json.loads((frames / "synth.json").read_text())
    assert (manifest["size"], manifest["train"], manifest["seed"]) == ([64, 64], 6, 0)


def test_synth_refuses_a_folder_that_holds_a_dataset(tmp_path, capsys):
    out = tmp_path / "data"
    assert fastmde_cli(["synth", "--out", out, "--train", "2", "--val", "1", "--size", "32x32"], capsys)[0] == 0
    before = sorted(os.listdir(out / "train"))
    refused(["synth", "--out", out, "--train", "3", "--val", "1", "--size", "48x48", "--seed", "2"], capsys,
            str(out), "would mix two datasets", "--overwrite")
    assert sorted(os.listdir(out / "train")) == before
    status, _, err = fastmde_cli(["synth", "--out", out, "--train", "3", "--val", "1", "--size", "48x48", "--seed",
                                  "2", "--overwrite"], capsys)
    assert status == 0, err
    assert json.loads((out / "synth.json").read_text())["size"] == [48, 48]
    from fastmde.data import NYUFrames

    assert len(NYUFrames(out, "train", size=(48, 48))) == 3             # replaced, not added to
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]     # no staging folder left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    refused(["synth", "--out", tmp_path / "mine", "--overwrite"], capsys, "notes.txt", "does not write")
    refused(["synth", "--out", tmp_path / "x", "--size", "abc"], capsys, "--size must be HxW")
    refused(["synth", "--out", tmp_path / "mine" / "notes.txt"], capsys, "is a file")
    assert fastmde_cli(["synth", "--out", tmp_path / "empty", "--train", "1", "--val", "1", "--size", "32x32"],
                       capsys)[0] == 0


# ---------------------------------------------------------------- eval results named by what they evaluated

@pytest.fixture(scope="module")
def checkpoint(cache, tmp_path_factory):
    from engine_helpers import tiny_config
    from fastmde.engine import train

    out = str(tmp_path_factory.mktemp("run"))
    train(tiny_config(cache, out, epochs=1, max_steps=1, pretrained="none"))
    return out


def test_eval_results_do_not_replace_each_other(checkpoint, tmp_path, capsys):
    run = ["eval", "--checkpoint", os.path.join(checkpoint, "last.pt"), "--device", "cpu", "--protocol", "fastmde",
           "--batch-size", "2"]
    assert fastmde_cli(run, capsys)[0] == 0
    assert fastmde_cli(run + ["--split", "train"], capsys)[0] == 0
    assert fastmde_cli(run + ["--no-flip"], capsys)[0] == 0
    names = sorted(f for f in os.listdir(checkpoint) if f.startswith("eval-"))
    assert names == ["eval-last-synthetic-train-fastmde.json", "eval-last-synthetic-val-fastmde-noflip.json",
                     "eval-last-synthetic-val-fastmde.json"]
    test = json.loads(open(os.path.join(checkpoint, names[2])).read())
    assert test["split"] == "val" and test["items"] == TEST_FRAMES
    # --out: a folder gets the default name; a file holding another evaluation is refused
    # (before evaluating), the same evaluation replaced.
    assert fastmde_cli(run + ["--out", tmp_path], capsys)[0] == 0
    assert os.path.exists(tmp_path / "eval-last-synthetic-val-fastmde.json")
    target = tmp_path / "eval-last-synthetic-val-fastmde.json"
    refused(run + ["--split", "train", "--out", target], capsys, "holds another evaluation",
            "split 'val' there, 'train' now", "--overwrite")
    assert json.loads(target.read_text())["split"] == "val"
    assert fastmde_cli(run + ["--out", target], capsys)[0] == 0
    assert fastmde_cli(run + ["--split", "train", "--out", target, "--overwrite"], capsys)[0] == 0
    assert json.loads(target.read_text())["split"] == "train"
    (tmp_path / "notes.json").write_text("my notes")
    refused(run + ["--out", tmp_path / "notes.json"], capsys, "not an evaluation result")
    # a missing folder is created, as by every command (docs/cli.md); below a file it cannot be
    assert fastmde_cli(run + ["--out", tmp_path / "new" / "dir" / "x.json"], capsys)[0] == 0
    assert json.loads((tmp_path / "new" / "dir" / "x.json").read_text())["split"] == "val"
    refused(run + ["--out", tmp_path / "notes.json" / "x.json"], capsys, "is a file, so no folder can be made")
    refused(run + ["--data-format", "labeled"], capsys, "--data-format labeled needs --data",
            "trained on synthetic data")
    refused(run + ["--data-format", "frames", "--data", tmp_path / "nowhere"], capsys, "--data", "does not exist")
    refused(run + ["--batch-size", "0"], capsys, "--batch-size")
    refused(run + ["--workers", "-5"], capsys, "--workers")
    refused(run + ["--device", "tpu"], capsys, "--device 'tpu' is not a device")


# ---------------------------------------------------------------- bad input: one line, before any work

@pytest.mark.parametrize("argv, parts", [
    (["--resume", "--overwrite"], ["--resume", "--overwrite", "pass one of them"]),
    (["--no-augment", "--augment-parts", "flip"], ["--augment-parts", "--no-augment"]),
    (["--loss", "l1", "--blur"], ["--blur", "'l1'"]),
    (["--loss", "l1", "--no-blur"], ["--blur", "'l1'"]),
    (["--workers", "-5"], ["workers (--workers)", "-5"]),
    (["--epochs", "0"], ["epochs (--epochs)", "positive"]),
    (["--eval-batch-size", "0"], ["eval_batch_size (--eval-batch-size)"]),
    (["--lr-gamma", "0.5"], ["--lr-gamma", "--lr-step"]),
    (["--synthetic-test", "0"], ["synthetic_test (--synthetic-test)"]),
    (["--data-format", "frames", "--data", "{tmp}", "--synthetic-train", "5"], ["--synthetic-train", "frames"]),
    (["--device", "tpu"], ["--device 'tpu' is not a device"]),
    (["--init-from", "{tmp}/missing.pt"], ["--init-from", "missing.pt", "does not exist"]),
    (["--pretrained", "{tmp}/missing.pth"], ["--pretrained", "missing.pth", "does not exist"]),
    (["--pretrained", "{tmp}/text.txt"], ["pretrained weights", "text.txt", "not a PyTorch file"]),
    (["--data-format", "frames", "--data", "{tmp}/missing"], ["--data", "does not exist"]),
    (["--data-format", "list", "--data", "{tmp}/text.txt", "--image-root", "{tmp}/photos"],
     ["--image-root", "photos", "does not exist"]),
    (["--out", "{tmp}/text.txt"], ["--out", "text.txt", "is a file"]),
])
def test_train_refuses_bad_and_conflicting_options_before_any_work(argv, parts, tmp_path, capsys):
    (tmp_path / "text.txt").write_text("not weights\n")
    cache = tmp_path / "cache"          # nothing may be rendered into it
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = [] if "--out" in argv else ["--out", tmp_path / "run"]
    small = [] if "--data-format" in argv else ["--synthetic-train", "4"]   # were anything rendered, little
    refused(["train", *out, "--cache-dir", cache, *small, *argv], capsys, *parts)
    assert not os.path.exists(cache) or not os.listdir(cache)


def test_predict_and_eval_refuse_conflicting_options(checkpoint, tmp_path, capsys):
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (64, 48), "gray").save(image)
    predict = ["predict", image, "--checkpoint", checkpoint, "--device", "cpu"]
    refused(predict + ["--out", tmp_path / "d", "--min-depth", "5", "--max-depth", "1"], capsys,
            "--min-depth 5 must be below --max-depth 1")
    refused(predict + ["--out", tmp_path / "d", "--max-depth", "-1"], capsys, "--max-depth")
    refused(predict + ["--out", image], capsys, "--out", "is a file")
    assert not os.path.exists(tmp_path / "d")


def test_former_synthetic_val_flag_still_works_and_says_its_new_name(tmp_path, capsys):
    from fastmde.cli import build_parser
    from fastmde.engine import TrainConfig
    from fastmde.engine.config import config_from_args

    args = build_parser(["train"]).parse_args(["train", "--synthetic-val", "7"])
    assert config_from_args(args).synthetic_test == 7
    assert "--synthetic-val is the former name of --synthetic-test" in capsys.readouterr().err
    assert build_parser(["train"]).parse_args(["train"]).synthetic_test == 40
    saved = TrainConfig().to_dict()
    saved["synthetic_val"] = saved.pop("synthetic_test")       # a checkpoint saved before the rename
    assert TrainConfig.from_dict(saved).synthetic_test == 40
    with pytest.raises(ValueError, match="given twice"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "synthetic_val": 3})


def test_ctrl_c_outside_training_is_one_line(monkeypatch, capsys):
    import importlib

    evaluate = importlib.import_module("fastmde.engine.evaluate")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "run", interrupted)
    status, _, err = fastmde_cli(["eval", "--checkpoint", "x"], capsys)
    assert status == 130 and err.strip() == "fastmde: interrupted"


def test_docs_cli_commands_are_valid():
    """Every ``fastmde ...`` line in a code block of docs/cli.md parses, and the training options of
    each ``train`` / ``sweep`` line form a valid TrainConfig (no refused combination)."""
    import re
    import shlex

    from fastmde.cli import build_parser
    from fastmde.engine.config import config_from_args

    text = open(os.path.join(REPO, "docs", "cli.md")).read()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = [line for block in blocks for line in block.splitlines() if line.startswith("fastmde ")]
    assert len(commands) >= 15
    for line in commands:
        argv = shlex.split(line, comments=True)[1:]
        args = build_parser([argv[0]]).parse_args(argv)
        if argv[0] in ("train", "sweep"):
            config_from_args(args)
    from fastmde.engine import TrainConfig
    from fastmde.engine.sweep import row_configs

    for block in re.findall(r"```json\n(.*?)```", text, flags=re.S):
        assert row_configs(TrainConfig(), json.loads(block), "out")
