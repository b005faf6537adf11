"""Faults a fresh-user trial found in the losses, metrics, trainer and up-projection (round 5);
each with the value it must give."""
import math

import pytest
import torch

import fastmde
from fastmde.engine.train import metric_improved
from fastmde.reference.depth_metrics import METRIC_NAMES, resolve_crop


def test_a_validation_with_a_nan_metric_never_becomes_best():
    """A network that predicts NaN scores RMS NaN while δ counts its pixels as misses: on a δ tie
    (0.0 = 0.0 after divergence) it became best.pt."""
    finite = {name: 0.5 for name in METRIC_NAMES}
    diverged = {**{name: 0.0 for name in METRIC_NAMES}, "rms": math.nan, "rel": math.nan}
    assert not metric_improved(0.0, None, "delta1", diverged)
    assert not metric_improved(0.9, 0.1, "delta1", diverged)
    assert metric_improved(0.5, None, "delta1", finite)
    assert metric_improved(0.5, 0.4, "delta1", finite) and not metric_improved(0.3, 0.4, "delta1", finite)
    assert metric_improved(0.3, 0.4, "rms", finite)


def test_losses_and_metrics_run_on_meta_tensors():
    """Shape-only runs (meta tensors) take the ops' fake kernels and skip the checks that read
    values (scale_invariant_loss's count, the metrics' warnings, the depth loss's unit check)."""
    pred = torch.empty(2, 1, 6, 7, device="meta")
    target = torch.empty(2, 1, 6, 7, device="meta")
    assert fastmde.depth_loss(pred, target).device.type == "meta"
    assert fastmde.scale_invariant_loss(pred, target, preset="silog").shape == ()
    assert fastmde.scale_invariant_loss(pred, target, preset="ssi").device.type == "meta"
    assert fastmde.depth_metrics(pred, target)["rms"].device.type == "meta"


def test_a_crop_is_whole_pixels():
    """(0.9, 5.9, 0, 7) was truncated to (0, 5, 0, 7) without a word; NaN gave int()'s error."""
    import numpy as np

    assert resolve_crop((0, 5, 0, 7), 6, 8) == (0, 5, 0, 7)
    assert resolve_crop((np.int64(1), 5.0, torch.tensor(0), 7), 6, 8) == (1, 5, 0, 7)
    for bad in ((0.9, 5.9, 0, 7), (math.nan, 5, 0, 7)):
        with pytest.raises(ValueError, match="whole pixels"):
            fastmde.depth_metrics(torch.rand(1, 1, 6, 8) + 1, torch.rand(1, 1, 6, 8) + 1, crop=bad)
    with pytest.raises(ValueError, match="top, bottom, left, right"):
        resolve_crop(5, 6, 8)


def test_up_projection_refuses_what_it_cannot_build_or_join():
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        fastmde.nn.UpProjection(0, 4)
    with pytest.raises(ValueError, match="out_channels must be a positive integer"):
        fastmde.nn.UpProjection(4, -1)
    block = fastmde.nn.UpProjection(6, 4)
    with pytest.raises(ValueError, match="batch size"):
        block(torch.randn(2, 3, 4, 5), skip=torch.randn(1, 3, 4, 5))


def test_a_resume_message_says_unset_not_none():
    from fastmde.engine.config import option_text

    assert option_text(None) == "unset" and option_text((288, 384)) == "288x384" and option_text(3) == "3"


def test_a_bad_frame_met_after_a_save_says_last_pt_is_kept(tmp_path, capsys):
    """A frame that only a training step reads (the list's last line) stops the run with its one
    error line, after a line saying that last.pt is kept and how to continue."""
    from engine_helpers import fastmde_cli
    from test_cli_faults_round4 import KITTI, kitti_list

    # list line 4 is read by the second step (seed 3), after the save of step 1; line 0 by the first
    def argv(line, out):
        return ["train", *KITTI, *kitti_list(tmp_path / f"data{line}", "depth-size", line=line), "--no-kb-crop",
                "--train-crop", "32x48", "--val-fraction", "0.34", "--max-steps", "3", "--save-every", "1",
                "--out", out]

    status, _, err = fastmde_cli(argv(4, tmp_path / "run"), capsys)
    assert status == 2 and "depth map is 30x50" in err and "Traceback" not in err, err
    assert (tmp_path / "run" / "last.pt").exists()
    assert "is kept as last saved" in err and "--resume continues" in err, err
    status, _, err = fastmde_cli(argv(0, tmp_path / "run0"), capsys)
    assert status == 2 and "is kept" not in err and not (tmp_path / "run0").exists()
    # leaving the bad line out of the list and resuming: the epoch it stopped in cannot finish on
    # fewer items (it looped forever at its end): refused in one line
    resume = argv(4, tmp_path / "run")
    listed = resume[resume.index("--data") + 1]
    lines = open(listed).read().splitlines()
    with open(listed, "w") as f:
        f.write("\n".join(lines[:4] + lines[5:]) + "\n")
    status, _, err = fastmde_cli([*resume, "--resume"], capsys)
    assert status == 2 and "resume on the same data" in err.strip().splitlines()[-1], err


def test_a_validation_that_scores_nan_stops_the_run_as_diverged(tmp_path_factory, tmp_path, capsys, monkeypatch):
    """--loss silog at --lr 1e4: the training loss stays finite (SILog floors predictions <= 0)
    while the network predicts NaN; the run went on and exited 0. It stops at that validation
    with one line (exit 2), as a non-finite training loss does. (The training step's own check,
    predictions beyond 1e6 m, stops this run first, at step 1: the validation's check is tested
    with that bound lifted.)"""
    import importlib

    from engine_helpers import cli_data_args, cli_model_args, fastmde_cli, synthetic_cache

    train = importlib.import_module("fastmde.engine.train")   # (fastmde.engine.train is also the function)
    argv = ["train", *cli_model_args(), *cli_data_args(synthetic_cache(tmp_path_factory)), "--pretrained", "none",
            "--loss", "silog", "--lr", "1e4", "--max-steps", "8", "--val-every", "2", "--seed", "0"]
    status, _, err = fastmde_cli([*argv, "--out", tmp_path / "steps"], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("fastmde: error: predictions reached ") and "at step 1," in lines[-1], err
    monkeypatch.setattr(train, "DIVERGED_DEPTH_M", math.inf)
    status, _, err = fastmde_cli([*argv, "--out", tmp_path / "div"], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("fastmde: error: validation at step ") and "scored NaN" in lines[-1], err
    assert "lower --lr" in lines[-1]
