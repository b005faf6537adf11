"""Ctrl-C anywhere in a training step, then ``--resume``: the run ends exactly as the uninterrupted one.

The rule (fastmde/engine/train.py, docs/training.md): the checkpoint a Ctrl-C writes holds the
state at the end of the last completed step (weights, optimiser, weight average, schedule,
BatchNorm statistics, every random generator, the position in the epoch); a step cut short is
trained again on resume. So the resumed run's per-step losses and its final state equal the
uninterrupted run's bit for bit (CPU, one thread).

Every interrupt here is a real SIGINT the process sends itself from a hook inside the step: in
the training loader's ``next()``, the augmentation, the forward (after a BatchNorm updated its
running statistics), the backward, the loss, the optimiser step, the weight average's update,
between a step and its ``--val-every`` validation, inside a validation (mid-epoch, end of epoch,
and the one a resume runs first), and inside a checkpoint write. Several interrupts are chained
in one run (as a user pressing Ctrl-C twice, resuming each time); after each one the saved state
is compared with the uninterrupted run's state at that step.

The tiny model of ``engine_helpers`` (ResNet18 U-Net at 32x48, batch 2, 4 steps per epoch, 2
epochs, ``--val-every 3``, ``--ema``), with the data loader in this process and in one worker.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from engine_helpers import (cli_data_args, cli_model_args, one_thread,  # noqa: F401 (one_thread: autouse)
                            run_interrupted, synthetic_cache, tiny_config)
from fastmde.cli import console_main
from fastmde.engine import read_checkpoint
from fastmde.engine.train import Trainer, unwrap

TRAIN = sys.modules["fastmde.engine.train"]     # the module (fastmde.engine.train is also a function's name)
STEPS = 8          # 2 epochs of 4 steps (8 training frames, batch 2)
OPTIONS = dict(pretrained="none", epochs=2, val_every=3, ema=0.9)
STATE = ("model", "optimizer", "ema", "scheduler", "scaler", "rng")   # compared exactly




@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory)


# ---------------------------------------------------------------- comparing states

def fingerprint(value):
    """A value with every tensor replaced by (dtype, shape, float64 sum): what tells one step's
    state from another's without keeping copies of the weights of every step."""
    if isinstance(value, torch.Tensor):
        return str(value.dtype), tuple(value.shape), float(value.detach().sum(dtype=torch.float64))
    if isinstance(value, dict):
        return {k: fingerprint(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    return value


def assert_equal(a, b, where=""):
    """Exact equality of two nested states (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def without_times(history):
    """The validation records without their wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "train_s", "it_per_s")} for r in history]


# ---------------------------------------------------------------- runs

class Recorder:
    """The loss of every forward/backward (``(step, loss)``, a step cut short included) and, with
    ``states``, the fingerprint of the state at the end of every completed step."""

    def __init__(self, monkeypatch, states: bool = False):
        self.losses, self.states = [], {}
        forward_backward, train_step = Trainer._forward_backward, Trainer.train_step

        def recording_forward_backward(trainer, batch):
            loss = forward_backward(trainer, batch)
            self.losses.append((trainer.step, loss))
            return loss

        def recording_step(trainer, batch):
            loss = train_step(trainer, batch)
            state = trainer.state_dict()
            self.states[trainer.step] = fingerprint({k: state[k] for k in STATE})
            return loss

        monkeypatch.setattr(Trainer, "_forward_backward", recording_forward_backward)
        if states:
            monkeypatch.setattr(Trainer, "train_step", recording_step)


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    """The uninterrupted run: its per-step losses, its state at the end of each step, its files."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        recorder = Recorder(monkeypatch, states=True)
        out = str(tmp_path_factory.mktemp("uninterrupted"))
        summary = Trainer(tiny_config(cache, out, **OPTIONS)).fit()
    finally:
        monkeypatch.undo()
    assert summary["step"] == STEPS and sorted(recorder.states) == list(range(1, STEPS + 1))
    return {"losses": dict(recorder.losses), "states": recorder.states,
            "last": read_checkpoint(os.path.join(out, "last.pt")), "log": log_records(out)}


def log_records(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return without_times([json.loads(line) for line in f])


def press_ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)     # Python raises KeyboardInterrupt at its next instruction


class Trap:
    """Presses Ctrl-C once, at ``point`` of the step ``trainer.step == step`` (steps counted from 0:
    the number of steps completed when it fires)."""

    POINTS = ("next", "augment", "forward", "loss", "backward", "optimizer", "average", "before_validation",
              "validation", "save")

    def __init__(self, point: str, step: int):
        assert point in self.POINTS
        self.point, self.step, self.fired = point, step, False

    def __call__(self, point: str, trainer) -> None:
        if not self.fired and point == self.point and trainer.step == self.step:
            self.fired = True
            press_ctrl_c()


def install(trainer: Trainer, trap: Trap, monkeypatch) -> None:
    """Hooks that call ``trap`` from inside each part of ``trainer``'s steps."""
    model = unwrap(trainer.model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # mid-network, after the BatchNorm updated its running statistics (training mode only)
    norms[len(norms) // 2].register_forward_hook(lambda m, i, o: trap("forward", trainer) if m.training else None)
    # inside validation: the forward of the scored model (the weight average) in eval mode
    trainer.eval_model().register_forward_pre_hook(lambda m, i: trap("validation", trainer))
    trainer.augment.register_forward_hook(lambda m, i, o: trap("augment", trainer))
    trainer.loss_fn.register_forward_hook(lambda m, i, o: trap("loss", trainer))
    weight = next(p for p in model.parameters() if p.requires_grad)
    weight.register_hook(lambda grad: trap("backward", trainer))
    trainer.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: trap("optimizer", trainer))
    update = trainer.average.update

    def averaging(m):
        update(m)
        trap("average", trainer)

    trainer.average.update = averaging
    should_stop = trainer._should_stop

    def deciding():          # after a step, before its save and validation
        reason = should_stop()
        trap("before_validation", trainer)
        return reason

    trainer._should_stop = deciding
    batches = TRAIN.batches

    def loading(loader):     # inside the training loader's next(): the next batch is being read
        iterator = batches(loader)
        while True:
            trap("next", trainer)
            try:
                batch = next(iterator)
            except StopIteration:
                return
            yield batch

    monkeypatch.setattr(TRAIN, "batches", loading)
    save = torch.save

    def saving(obj, f, *args, **kwargs):     # inside a checkpoint write (the one of a step's end)
        trap("save", trainer)
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", saving)


def interrupted_run(cache, out, traps, monkeypatch, reference, **changes):
    """Train with each trap in turn (one Ctrl-C per invocation, then --resume), then to the end;
    after every Ctrl-C the saved state must be the uninterrupted run's at that step. Returns
    the per-step losses seen (a step cut short and trained again: both losses)."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # a real Ctrl-C raises here
    recorder = Recorder(monkeypatch)
    cfg = tiny_config(cache, out, **OPTIONS, **changes)
    for i, trap in enumerate([*traps, None]):
        with monkeypatch.context() as patch:
            trainer = Trainer(cfg, resume=i > 0)
            if trap is None:
                summary = trainer.fit()
                break
            install(trainer, trap, patch)
            with pytest.raises(KeyboardInterrupt):
                trainer.fit()
            assert trap.fired
        saved = read_checkpoint(os.path.join(out, "last.pt"))
        done = trap.step + (trap.point in ("optimizer", "average"))    # Ctrl-C waits for the update
        assert saved["step"] == done, (trap.point, saved["step"])
        assert saved["images_seen"] == 2 * done and saved["epoch"] * 4 + saved["batch_in_epoch"] == done
        if done:
            assert_equal(fingerprint({k: saved[k] for k in STATE}), reference["states"][done], trap.point)
        # the validation of a --val-every step that Ctrl-C stopped before it ended: run on resume
        pending = trap.point in ("before_validation", "validation") and done % 3 == 0 and done % 4
        assert saved["validation_due"] == bool(pending), trap.point
    assert summary["step"] == STEPS
    return recorder.losses


def assert_same_run(out, losses, reference):
    by_step = {}
    for step, loss in losses:
        assert reference["losses"][step] == loss, (step, loss, reference["losses"][step])   # bit for bit
        by_step[step] = loss
    assert by_step == reference["losses"]
    last = read_checkpoint(os.path.join(out, "last.pt"))
    for key in STATE:
        assert_equal(last[key], reference["last"][key], key)
    for key in ("step", "epoch", "batch_in_epoch", "images_seen", "epoch_loss", "best"):
        assert last[key] == reference["last"][key], key
    assert without_times(last["history"]) == without_times(reference["last"]["history"])
    assert log_records(out) == reference["log"]      # every validation once, as uninterrupted


# ---------------------------------------------------------------- the tests

def test_ctrl_c_inside_the_forward_and_backward_resumes_exactly(cache, tmp_path, monkeypatch, reference):
    """Cut short before the update: in the loader, the augmentation, the forward (twice in the same
    step), the loss and the backward; the step is trained again on resume."""
    out = str(tmp_path / "run")
    traps = [Trap("next", 1), Trap("augment", 2), Trap("forward", 2), Trap("loss", 5), Trap("backward", 6)]
    assert_same_run(out, interrupted_run(cache, out, traps, monkeypatch, reference), reference)


def test_ctrl_c_in_the_update_validation_and_saves_resumes_exactly(cache, tmp_path, monkeypatch, reference):
    """Ctrl-C in the optimiser step or the weight average's update waits for the step to end; between
    a step and its --val-every validation, inside it (and inside the one the resume runs first),
    inside the end-of-epoch validation and inside a checkpoint write, nothing is lost or done twice."""
    out = str(tmp_path / "run")
    traps = [Trap("optimizer", 0), Trap("average", 1), Trap("before_validation", 3), Trap("validation", 3),
             Trap("validation", 4), Trap("save", 6)]
    assert_same_run(out, interrupted_run(cache, out, traps, monkeypatch, reference), reference)


def test_ctrl_c_with_a_loader_worker_resumes_exactly(cache, tmp_path, monkeypatch, reference):
    """The same with the training data read in a DataLoader worker process (--workers 1)."""
    out = str(tmp_path / "run")
    traps = [Trap("next", 5)]
    losses = interrupted_run(cache, out, traps, monkeypatch, reference, workers=1)
    assert_same_run(out, losses, reference)


def test_ctrl_c_in_the_validation_of_a_max_steps_stop_runs_it_on_resume(cache, tmp_path, monkeypatch, reference):
    """A --max-steps run validates where it stops; Ctrl-C inside that validation, then --resume with
    the same limit: nothing is trained, the stop's validation is run, once."""
    out = str(tmp_path / "run")
    cfg = tiny_config(cache, out, **OPTIONS, max_steps=5)
    with monkeypatch.context() as patch:
        trainer = Trainer(cfg)
        install(trainer, Trap("validation", 5), patch)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    assert [r["step"] for r in log_records(out)] == [3, 4]
    summary = Trainer(cfg, resume=True).fit()
    assert (summary["step"], summary["steps_this_run"], summary["stopped"]) == (5, 0, "max_steps")
    records = log_records(out)
    assert [(r["step"], r["partial"]) for r in records] == [(3, True), (4, False), (5, True)]
    assert records[:2] == reference["log"][:2]
    last = read_checkpoint(os.path.join(out, "last.pt"))
    assert_equal(fingerprint({k: last[k] for k in STATE}), reference["states"][5])
    assert without_times(last["history"]) == records


# A driver of the real entry point that presses Ctrl-C (a real SIGINT to itself) once, inside the
# forward of training step FORWARD_AT, after a BatchNorm updated its running statistics.
DRIVER = r"""
import importlib, os, signal, sys
import torch
T = importlib.import_module("fastmde.engine.train")
fit, at = T.Trainer.fit, int(os.environ["FORWARD_AT"])
def press(trainer):
    if trainer.step == at and not getattr(trainer, "pressed", False):
        trainer.pressed = True
        os.kill(os.getpid(), signal.SIGINT)
def hooked_fit(self):
    norm = [m for m in T.unwrap(self.model).modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    norm.register_forward_hook(lambda m, i, o: press(self) if m.training else None)
    return fit(self)
T.Trainer.fit = hooked_fit
from fastmde.cli import console_main
sys.exit(console_main(sys.argv[1:]))
"""


def run_with_ctrl_c(argv, **env) -> subprocess.CompletedProcess:
    return run_interrupted(DRIVER, argv, **env)


def test_fastmde_train_interrupted_twice_then_resumed_equals_the_uninterrupted_run(cache, tmp_path, capsys,
                                                                                    monkeypatch, reference):
    """The user's loop: `fastmde train` (its own process), Ctrl-C in the middle of a step's forward;
    `fastmde train --resume`, Ctrl-C inside the optimiser step; `--resume` to the end: the same
    weights, optimiser, weight average, generators and validation log as the uninterrupted run."""
    out = tmp_path / "run"
    args = ["train", *cli_model_args(), *cli_data_args(cache), "--pretrained", "none", "--batch-size", "2",
            "--eval-batch-size", "2", "--lr", "1e-3", "--seed", "3", "--val-fraction", "0.2", "--epochs", "2",
            "--val-every", "3", "--ema", "0.9", "--no-test", "--out", str(out)]
    proc = run_with_ctrl_c(args, FORWARD_AT=2)
    status, err = proc.returncode, proc.stderr
    assert status == 130 and "Traceback" not in err, err[-3000:]
    assert f"interrupted: saved {out}/last.pt at step 2; continue with --resume" in err

    fit = Trainer.fit

    def pressing_in_the_update(trainer):
        trainer.optimizer.register_step_post_hook(lambda *_: press_ctrl_c() if trainer.step == 5 else None)
        return fit(trainer)

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "fit", pressing_in_the_update)
        assert console_main([*args, "--resume"]) == 130
    err = capsys.readouterr().err
    assert "at epoch 1, sample 4 of 8, step 2" in err, err
    assert f"interrupted: saved {out}/last.pt at step 6; continue with --resume" in err    # the update finished
    assert console_main([*args, "--resume"]) == 0
    assert "at epoch 2, sample 4 of 8, step 6" in capsys.readouterr().err
    last = read_checkpoint(str(out / "last.pt"))
    for key in STATE:
        assert_equal(last[key], reference["last"][key], key)
    assert last["step"] == STEPS and log_records(str(out)) == reference["log"]


# ---------------------------------------------------------------- a resume already past --max-steps

def test_resume_past_max_steps_says_nothing_was_trained(cache, tmp_path, capsys):
    args = ["train", *cli_model_args(), *cli_data_args(cache), "--pretrained", "none", "--batch-size", "2",
            "--eval-batch-size", "2", "--seed", "3", "--val-fraction", "0.2", "--no-test", "--out", tmp_path / "run"]
    assert console_main([*map(str, args), "--max-steps", "3"]) == 0
    before = read_checkpoint(str(tmp_path / "run" / "last.pt"))
    capsys.readouterr()
    assert console_main([*map(str, args), "--max-steps", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("nothing trained")]
    assert said == [f"nothing trained: {tmp_path / 'run' / 'last.pt'} is already at step 3, past --max-steps 2 "
                    "(a larger --max-steps continues it)"], err
    after = read_checkpoint(str(tmp_path / "run" / "last.pt"))
    assert after["step"] == 3
    assert_equal(after["model"], before["model"], "model")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["step"], summary["steps_this_run"], summary["stopped"]) == (3, 0, "max_steps")


def test_sweep_table_says_a_row_resumed_past_max_steps_is_at_its_own_step(cache, tmp_path, capsys):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"name": "a"}]))
    args = ["sweep", "--configs", rows, "--epochs", "3", "--figure-images", "1", "--out", tmp_path / "sweep",
            *cli_model_args(), *cli_data_args(cache), "--pretrained", "none", "--batch-size", "2",
            "--eval-batch-size", "2", "--seed", "3", "--val-fraction", "0.2"]
    assert console_main([*map(str, args), "--max-steps", "3"]) == 0
    capsys.readouterr()
    assert console_main([*map(str, args), "--max-steps", "2", "--resume"]) == 0
    table, err = capsys.readouterr()
    assert "nothing trained" in err and "past --max-steps 2" in err
    assert "Every row was already at step 3, past --max-steps 2, when resumed (nothing trained)" in table, table
    assert "stopped by --max-steps 2" not in table
    header, _, row = [line for line in table.splitlines() if line.startswith("|")][:3]
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))
    assert (cells["steps"], cells["images"]) == ("3", "6")


def test_sweep_line_names_each_row_by_what_it_ran():
    from fastmde.engine.sweep import trained_line

    def row(name, steps, max_steps, stopped):
        return {"name": name, "steps": steps, "stopped": stopped, "config": {"max_steps": max_steps, "epochs": 3}}

    line = trained_line([row("a", 2, 2, "max_steps"), row("b", 5, 2, "max_steps"), row("c", 12, None, "completed")],
                        3, "fastmde")
    assert line.startswith("A stopped by --max-steps 2 before its 3 epoch(s); b was already at step 5, past "
                           "--max-steps 2, when resumed (nothing trained); c trained its 3 epoch(s) in full"), line
