"""A newcomer's faults in the ``fastmde`` command, each fixed where it was and everywhere its kind
was, each checked through the real entry point (``fastmde.cli.console_main`` in this process,
``_fastmde_cli`` / the ``fastmde`` script in a subprocess where the start of the process matters):

* the model is named by what it is (``--encoder 18``: ``unet18-k3-1x1``) in train's log, the
  checkpoint, the summary, eval results, export metadata and sweep tables;
* point clouds of photos of several sizes say each size's intrinsics;
* a model's input range is checked on every call, not on the first only;
* ``predict DIR`` reads sub-folders (mirrored in --out) and never its own --out;
* counts, sizes, output paths and ``--data`` are refused in one line before any work, by one rule
  shared by every command (missing output folders are created);
* a Ctrl-C while torch is being imported is one line, exit status 130;
* ``--dataset kitti`` trains with SILog unless --loss says otherwise;
* eval results are told apart by the list/folder reader options.

Tiny everything: 48x64 synthetic frames, ResNet18 at 32x48, one step.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from _data_files import write_kitti_tree
from engine_helpers import (cache, cli_data_args, cli_model_args, fastmde_cli,  # noqa: F401 (one_thread: autouse; cache: fixture)
                            one_thread)
from fastmde.cli import console_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [*cli_model_args(), "--pretrained", "none", "--batch-size", "2", "--eval-batch-size", "2", "--lr", "1e-3",
        "--seed", "3", "--val-fraction", "0.2"]




def refused(argv, *parts) -> str:
    """The command exits 2 with one line on stderr holding every one of ``parts``."""
    status, _, err = fastmde_cli(argv)
    lines = [line for line in err.splitlines() if line.startswith("fastmde: error:")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run18(cache, tmp_path_factory):
    """``fastmde train ... --model unet34-k3-1x1 --encoder 18`` for one step: (run folder, stderr)."""
    out = tmp_path_factory.mktemp("run18") / "run"
    status, _, err = fastmde_cli(["train", "--max-steps", "1", "--epochs", "1", "--no-test", "--out", out, *TINY,
                                  *cli_data_args(cache)])
    assert status == 0, err
    return str(out), err


def photo(path, size):
    """A random RGB photo of ``size`` = (H, W) at ``path`` (its folders made)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)).save(path)


# ---------------------------------------------------------------- 1. the model's name says its encoder

def test_variant_name_is_what_the_network_is():
    from fastmde.models import build, variant_name, variants

    assert all(variant_name(name) == name for name in variants())          # the grid's names are themselves
    assert variant_name("unet34-k3-1x1", encoder=18) == "unet18-k3-1x1"
    assert variant_name("unet34-k3-1x1", encoder=34, normalize=True, aspect="keep") == "unet34-k3-1x1"
    assert variant_name("unet50-k5", encoder=101, reduce=True) == "unet101-k5-1x1"
    assert variant_name("hu34", encoder=18) == "hu18"
    assert variant_name("hu34", kernel_size=3) == "hu34-original-k3"    # not the slimmed hu34-k3
    with torch.device("meta"):
        assert build("unet34-k3-1x1", encoder=18, size=(32, 48)).fastmde_variant == "unet18-k3-1x1"
    with pytest.raises(ValueError, match="unknown model"):
        variant_name("unet18-k3")


def test_encoder_18_is_named_in_the_log_checkpoint_summary_eval_export_and_sweep(run18, cache, tmp_path):
    out, err = run18
    assert "training unet18-k3-1x1 at 32x48 with loss hu_blurred on cpu" in err
    assert "unet34" not in err
    assert json.loads(open(os.path.join(out, "summary.json")).read())["model"] == "unet18-k3-1x1"
    from fastmde.engine import read_checkpoint

    spec = read_checkpoint(os.path.join(out, "last.pt"))["model_spec"]
    assert (spec["name"], spec["overrides"]["encoder"], spec["variant"]) == ("unet34-k3-1x1", 18, "unet18-k3-1x1")
    import fastmde

    assert fastmde.load(out).fastmde_variant == "unet18-k3-1x1"
    # eval: the result says which network it scored
    result = tmp_path / "r.json"
    status, _, err = fastmde_cli(["eval", "--checkpoint", out, "--device", "cpu", "--batch-size", "2",
                                  "--out", result])
    assert status == 0, err
    assert json.loads(result.read_text())["model"] == "unet18-k3-1x1"
    # export: the report and the file's own metadata
    target = tmp_path / "m.pt2"
    status, _, err = fastmde_cli(["export", out, "--out", target, "--size", "48x64", "--fixed-size"])
    assert status == 0, err
    assert "export: unet18-k3-1x1 (internal 32x48) ->" in err
    extra = {"fastmde.json": ""}
    torch.export.load(str(target), extra_files=extra)
    assert json.loads(extra["fastmde.json"])["model"] == "unet18-k3-1x1 (internal 32x48)"
    # sweep: the table's model column (the row's result as the sweep records it)
    from fastmde.engine.sweep import markdown_table

    config = read_checkpoint(os.path.join(out, "last.pt"))["config"]
    row = {"name": "r18", "config": config, "metrics": {}, "train_s": 1.0, "it_per_s": 1.0, "steps": 1,
           "epochs_trained": 0.25, "images_seen": 2, "stopped": "max_steps"}
    line = next(line for line in markdown_table([row], 1, "fastmde").splitlines() if line.startswith("| r18"))
    assert line.startswith("| r18 | unet18-k3-1x1 | 32x48 |")


# ---------------------------------------------------------------- 2. point clouds of photos of two sizes

def test_pointcloud_summary_names_each_photos_intrinsics(run18, tmp_path):
    out, _ = run18
    photo(tmp_path / "in" / "big.png", (48, 64))
    photo(tmp_path / "in" / "small.png", (24, 40))
    status, _, err = fastmde_cli(["predict", tmp_path / "in", "--checkpoint", out, "--device", "cpu",
                                  "--out", tmp_path / "d", "--pointcloud"])
    assert status == 0, err
    assert "480x640" not in err and "640x480" not in err
    assert "point clouds with NYU Kinect intrinsics scaled to each photo's size" in err
    last = err.strip().splitlines()[-1]
    assert last == ("predict: point clouds with NYU Kinect intrinsics scaled to 48x64 (1 photo); "
                    "NYU Kinect intrinsics scaled to 24x40 (1 photo)"), last      # HxW, as every size printed
    for name, size in (("big", "48x64"), ("small", "24x40")):
        header = (tmp_path / "d" / f"{name}.ply").read_bytes().split(b"end_header")[0].decode()
        assert f"intrinsics from NYU Kinect intrinsics scaled to {size}" in header


# ---------------------------------------------------------------- 3. the input range on every call

def test_a_loaded_model_warns_of_a_0_1_image_on_a_later_call(run18):
    import warnings

    import fastmde

    model = fastmde.load(run18[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model(torch.rand(1, 3, 48, 64) * 255)               # first call: a 0-255 image, nothing to say
    with pytest.warns(UserWarning, match="0-1 image") as record, torch.no_grad():
        model(torch.rand(1, 3, 48, 64))                         # the second call's 0-1 image is seen
    assert [w.filename for w in record] == [__file__]


# ---------------------------------------------------------------- 4. predict DIR reads sub-folders

def test_predict_reads_sub_folders_mirrors_them_and_never_reads_its_out(run18, tmp_path):
    out, _ = run18
    photos = tmp_path / "photos"
    for rel in ("a.png", "sub/b.png", "sub/deeper/c.jpg", ".hidden/x.png"):
        photo(photos / rel, (24, 32))
    predict = ["predict", photos, "--checkpoint", out, "--device", "cpu"]
    status, _, err = fastmde_cli(predict + ["--out", photos / "depth"])     # --out inside the input folder
    assert status == 0, err
    written = sorted(os.path.relpath(os.path.join(d, f), photos / "depth")
                     for d, _, fs in os.walk(photos / "depth") for f in fs if f.endswith(".npy"))
    assert written == ["a.npy", "sub/b.npy", "sub/deeper/c.npy"]
    assert "wrote 3 depth maps" in err
    # the second run does not take the first one's PNG maps for photos
    status, _, err = fastmde_cli(predict + ["--out", photos / "depth", "--overwrite"])
    assert status == 0 and "wrote 3 depth maps" in err, err
    # a folder whose only photos lie in a sub-folder keeps that sub-folder in the names
    only = tmp_path / "only"
    photo(only / "sub" / "z.png", (24, 32))
    status, _, err = fastmde_cli(["predict", only, "--checkpoint", out, "--device", "cpu", "--out", tmp_path / "o"])
    assert status == 0, err
    assert os.path.exists(tmp_path / "o" / "sub" / "z.npy")


# ---------------------------------------------------------------- 5-8. refused in one line, before any work

@pytest.mark.parametrize("argv, parts", [
    (["synth", "--train", "0"], ["--train must be a positive number of frames, got 0"]),
    (["synth", "--val", "0"], ["--val must be a positive number of frames, got 0"]),
    (["synth", "--train", "-3"], ["--train must be a positive number of frames"]),
    (["synth", "--frames-per-scene", "0"], ["--frames-per-scene must be a positive"]),
    (["synth", "--val-frames-per-scene", "0"], ["--val-frames-per-scene must be a positive"]),
    (["synth", "--seed", "-1"], ["--seed must be an integer >= 0"]),
    (["predict", "{tmp}/a.png", "--checkpoint", "{tmp}/x.pt", "--out", "{tmp}/d", "--batch-size", "0"],
     ["--batch-size"]),
    (["export", "{tmp}/missing.pt", "--out", "{tmp}/m.onnx", "--internal-size", "7x7"],
     ["--internal-size must be at least 8x8, got 7x7"]),
    (["export", "{tmp}/missing.pt", "--out", "{tmp}/m.onnx", "--opset", "7"], ["--opset must be an integer from 18"]),
    (["export", "{tmp}/missing.pt", "--out", "{tmp}/m.onnx", "--tolerance", "0"], ["--tolerance must be a positive"]),
    (["train", "--size", "7x7"], ["size (--size) must be at least 8x8, got 7x7"]),
    # outputs below a file: every command that writes
    (["export", "{tmp}/missing.pt", "--out", "{tmp}/file.txt/m.onnx"], ["--out", "file.txt' is a file, so no folder"]),
    (["synth", "--out", "{tmp}/file.txt/data"], ["--out", "file.txt' is a file, so no folder"]),
    (["train", "--out", "{tmp}/file.txt/run"], ["--out", "file.txt' is a file, so no folder"]),
    (["train", "--cache-dir", "{tmp}/file.txt/cache"], ["--cache-dir", "file.txt' is a file, so no folder"]),
    (["sweep", "--configs", "table3", "--out", "{tmp}/file.txt/sweep"], ["--out", "file.txt' is a file, so no folder"]),
    (["predict", "{tmp}/a.png", "--checkpoint", "{tmp}/x.pt", "--out", "{tmp}/file.txt/d"],
     ["--out", "file.txt' is a file, so no folder"]),
    (["export", "{tmp}/missing.pt", "--out", "{tmp}", "--format", "pt2"], ["--out", "is a folder; it names the file"]),
    # --data of the wrong kind, named with what the format reads
    (["train", "--data-format", "frames", "--data", "{tmp}/file.txt"],
     ["--data", "file.txt' is a file; --data-format frames reads a folder", "train/ and val/"]),
    (["train", "--data-format", "csv", "--data", "{tmp}/file.txt"], ["file.txt' is a file; --data-format csv reads a folder"]),
    (["train", "--data-format", "folder", "--data", "{tmp}/file.txt", "--depth-root", "{tmp}"],
     ["file.txt' is a file; --data-format folder reads a folder"]),
    (["train", "--data-format", "list", "--data", "{tmp}"], ["is a folder; --data-format list reads the list file"]),
    (["train", "--data-format", "list", "--data", "{tmp}/file.txt", "--image-root", "{tmp}/file.txt"],
     ["--image-root", "is a file; it names a folder"]),
])
def test_refused_in_one_line_before_any_work(argv, parts, tmp_path):
    (tmp_path / "file.txt").write_text("not a folder\n")
    photo(tmp_path / "a.png", (8, 8))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "synth" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "synth"), "--size", "32x32"]
    if argv[0] == "train":
        argv += ["--cache-dir", str(tmp_path / "cache")] if "--cache-dir" not in argv else []
        argv += [] if "--out" in argv else ["--out", str(tmp_path / "run")]
    refused(argv, *parts)
    assert not os.path.exists(tmp_path / "synth") and not os.path.exists(tmp_path / "cache")
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "m.onnx")


@pytest.mark.parametrize("argv, parts", [
    (["--synthetic-train", "1"], ["synthetic_train (--synthetic-train) must be at least 2", "held out for validation"]),
    (["--synthetic-train", "5", "--limit-train", "1"], ["limit_train (--limit-train) must be at least 2"]),
    (["--synthetic-train", "4", "--synthetic-views", "4", "--val-by-scene"], ["--val-by-scene", "make 1 room"]),
    # 2 frames: 1 held out, 1 to train, and ResNet18 at 32x32 cannot train on a batch of 1
    (["--synthetic-train", "2", "--batch-size", "2", "--size", "32x32"],
     ["gets 1 training item(s) per epoch", "unet18-k3-1x1 at --size 32x32", "more --synthetic-train frames"]),
])
def test_synthetic_counts_are_refused_before_rendering(argv, parts, tmp_path):
    cache = tmp_path / "cache"
    refused(["train", "--out", tmp_path / "run", "--cache-dir", cache, "--encoder", "18", "--synthetic-size", "32x32",
             "--pretrained", "none", "--device", "cpu", *argv], *parts)
    assert not os.path.exists(cache)             # nothing rendered


def test_every_command_creates_its_missing_output_folders(run18, tmp_path):
    out, _ = run18
    eval_out = tmp_path / "new" / "deeper" / "r.json"
    status, _, err = fastmde_cli(["eval", "--checkpoint", out, "--device", "cpu", "--batch-size", "2",
                                  "--out", eval_out])
    assert status == 0 and eval_out.exists(), err
    status, _, err = fastmde_cli(["eval", "--checkpoint", out, "--device", "cpu", "--batch-size", "2",
                                  "--out", f"{tmp_path}/folder/"])
    assert status == 0 and (tmp_path / "folder" / "eval-best-synthetic-val-fastmde.json").exists(), err
    export_out = tmp_path / "models" / "m.pt2"
    status, _, err = fastmde_cli(["export", out, "--out", export_out, "--size", "48x64", "--fixed-size",
                                  "--internal-size", "8x8"])
    assert status == 0 and export_out.exists(), err
    assert "unet18-k3-1x1 (internal 8x8)" in err
    status, _, err = fastmde_cli(["synth", "--out", tmp_path / "data" / "synth", "--train", "1", "--val", "1",
                                  "--size", "32x32"])
    assert status == 0 and (tmp_path / "data" / "synth" / "synth.json").exists(), err
    (tmp_path / "notes").write_text("x")
    refused(["eval", "--checkpoint", out, "--device", "cpu", "--out", tmp_path / "notes" / "r.json"],
            "notes' is a file, so no folder can be made below it")


# ---------------------------------------------------------------- 9. Ctrl-C while torch is imported

# Presses Ctrl-C (a real SIGINT to itself) when `import torch` starts, then enters the console
# script's entry point as setup.py names it.
CTRL_C_AT_IMPORT = r"""
import os, signal, sys
from importlib.metadata import entry_points
class Press:
    pressed = False
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not self.pressed:
            self.pressed = True
            os.kill(os.getpid(), signal.SIGINT)
        return None
(script,) = [e for e in entry_points(group="console_scripts") if e.name == "fastmde"]
main = script.load()
assert "torch" not in sys.modules, "the entry point's module imported torch"
sys.meta_path.insert(0, Press())
sys.exit(main(["info"]))
"""


def test_ctrl_c_while_torch_is_imported_is_one_line():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("FASTMDE_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", CTRL_C_AT_IMPORT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip() == "fastmde: interrupted", proc.stderr[-2000:]


# ---------------------------------------------------------------- 10, 11. KITTI: the loss; eval's identity

@pytest.fixture(scope="module")
def kitti_run(tmp_path_factory):
    """A one-step ``--dataset kitti`` run on a tiny KITTI-style list: (list, image root, depth root,
    run folder, train's stderr)."""
    root = tmp_path_factory.mktemp("kitti")
    listed, images, depths, _ = write_kitti_tree(str(root), [(40, 64)], frames_per_size=6, none_lines=0)
    out = root / "run"
    status, _, err = fastmde_cli(["train", "--dataset", "kitti", "--data-format", "list", "--data", listed,
                                  "--image-root", images, "--depth-root", depths, "--no-kb-crop", "--train-crop",
                                  "32x48", "--max-steps", "1", "--epochs", "1", "--out", out, *TINY,
                                  "--val-fraction", "0.34"])
    assert status == 0, err
    return listed, images, depths, str(out), err


def test_kitti_trains_with_silog_unless_loss_is_given(kitti_run):
    _, _, _, out, err = kitti_run
    assert "with loss silog (--dataset kitti's default; --loss to change)" in err
    from fastmde.engine import read_checkpoint

    assert read_checkpoint(os.path.join(out, "last.pt"))["config"]["loss"] == "silog"
    from fastmde.cli import build_parser
    from fastmde.engine.config import config_from_args

    def loss(*argv):
        args = build_parser(["train"]).parse_args(["train", *argv])
        return config_from_args(args).loss

    kitti = ["--dataset", "kitti", "--data-format", "list", "--data", "x.txt"]
    assert loss(*kitti) == "silog"
    assert loss(*kitti, "--loss", "hu_blurred") == "hu_blurred"
    assert loss() == "hu_blurred"                                  # NYU: the paper's


def test_eval_results_are_told_apart_by_the_reader_options(kitti_run, tmp_path):
    listed, images, depths, out, _ = kitti_run
    run = ["eval", "--checkpoint", out, "--device", "cpu", "--batch-size", "2", "--data-format", "list",
           "--data", listed, "--protocol", "kitti_garg"]
    for extra in ([], ["--depth-scale", "512"], ["--no-kb-crop"], ["--depth-root", depths]):
        status, _, err = fastmde_cli(run + extra)
        assert status == 0 or "nothing was scored" in err, err
    names = sorted(f for f in os.listdir(out) if f.startswith("eval-"))
    assert names == ["eval-best-list-all-kitti_garg-depths-gt.json", "eval-best-list-all-kitti_garg-nokb.json",
                     "eval-best-list-all-kitti_garg-scale512.json", "eval-best-list-all-kitti_garg.json"], names
    identity = json.loads(open(os.path.join(out, "eval-best-list-all-kitti_garg-scale512.json")).read())["identity"]
    assert identity["files"] == {"image_root": images, "depth_root": depths, "depth_scale": 512.0, "kb_crop": False}
    # one --out for two settings: the second is refused, naming what differs
    target = tmp_path / "r.json"
    assert fastmde_cli(run + ["--out", target])[0] == 0
    refused(run + ["--out", target, "--depth-scale", "512"], "holds another evaluation", "files", "512")


@pytest.mark.parametrize("argv, option", [
    (["train", "--epochs", "abc"], "--epochs"),
    (["train", "--model", "nosuch"], "--model"),
    (["eval", "--protocol", "nosuch"], "--protocol"),
    (["nosuchcommand"], "COMMAND"),
])
def test_option_errors_are_one_line(argv, option):
    """argparse's own refusals (a bad choice or type) in one line naming the option, not the usage."""
    with pytest.raises(SystemExit) as stop:   # argparse exits (status 2) before the command runs
        fastmde_cli(argv)
    code = stop.value.code
    err = stop_stderr(argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "error:" in err and option in err and "usage:" not in err


def stop_stderr(argv) -> str:
    """stderr of ``fastmde <argv>`` that exits through SystemExit (argparse)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        console_main([str(a) for a in argv])
    return err.getvalue()


def test_a_binary_file_as_a_file_list_is_named(tmp_path):
    png = tmp_path / "0.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)
    message = refused(["train", "--data-format", "list", "--data", str(png), "--pretrained", "none",
                       "--out", str(tmp_path / "run")],
                      str(png), "not a text file list")
    assert "codec" not in message


def test_export_refuses_a_format_that_contradicts_the_file_name(run18, tmp_path):
    run, _ = run18
    for out, fmt in (("x.onnx", "pt2"), ("y.pt2", "onnx")):
        refused(["export", run, "--out", str(tmp_path / out), "--format", fmt], "--format", "contradicts")
        assert not (tmp_path / out).exists()


def test_an_unknown_fastmde_malloc_value_is_refused(monkeypatch):
    from fastmde.engine import speed

    monkeypatch.setattr(speed, "_allocator_note", None)
    monkeypatch.setenv("FASTMDE_MALLOC", "off")
    with pytest.raises(ValueError, match="FASTMDE_MALLOC='off'"):
        speed.tune_cpu_allocator()
