"""The training progress bar (fastmde/engine/progress.py, tqdm): totals, rates, where it is drawn."""
from __future__ import annotations

import io
import re
import time

import pytest

from engine_helpers import synthetic_cache, tiny_config
from fastmde.engine import train
from fastmde.engine.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_quiet_outside_a_terminal_unless_asked():
    log = io.StringIO()
    p = Progress(3, stream=log)                    # the default: a terminal only
    for step in (1, 2, 3):
        p.update(step, 0.5)
    p.close()
    assert log.getvalue() == "" and not p.shown
    never = Terminal()
    p = Progress(3, stream=never, show=False)
    p.update(1)
    p.close()
    assert never.getvalue() == ""


def test_terminal_redraws_in_place():
    tty = Terminal()
    p = Progress(3, stream=tty)
    p.set_epoch(1, 1)
    for step in (1, 2, 3):
        time.sleep(0.21)                           # past the 0.2 s redraw interval
        p.update(step, 0.25, epoch_step=(step, 3))
    p.close()
    text = tty.getvalue()
    assert "\r" in text and "3/3" in text and "epoch 1/1 3/3" in text and "loss 0.2500" in text


def test_logs_get_plain_lines_when_asked():
    log = io.StringIO()
    p = Progress(5, initial=2, show=True, stream=log, log_interval=0.0)
    p.set_epoch(2, 2)
    time.sleep(0.01)
    p.update(3, 1.5, epoch_step=(1, 3))
    p.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "|" not in log.getvalue()   # no bar, no carriage returns
    # right after a resume (step 2) nothing has been timed yet: the rate is unknown, not 0.00
    assert lines[0].startswith("train: 2/5 steps") and "?step/s" in lines[0] and "0.00" not in lines[0]
    rate = float(re.search(r"([\d.]+)step/s", lines[-1]).group(1))
    assert lines[-1].startswith("train: 3/5 steps") and rate > 0          # one step timed since the resume
    assert "epoch 2/2 1/3" in lines[-1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory)


def _bar_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("train: ")]


def test_trainer_totals_and_resume(cache, tmp_path, capsys):
    # 8 training frames at batch 2: 4 steps an epoch, 2 epochs. --max-steps 3 stops inside the
    # first epoch: the bar's total is 3 and the postfix says 3 of the epoch's 4 steps.
    out = str(tmp_path / "run")
    train(tiny_config(cache, out, max_steps=3, progress=True))
    lines = _bar_lines(capsys.readouterr().err)
    assert lines[0].startswith("train: 0/3 steps") and lines[-1].startswith("train: 3/3 steps")
    assert "epoch 1/2 3/4" in lines[-1]
    # Resumed without the limit: from step 3 to the end of epoch 2 (1 + 4 steps), rate unknown at first.
    train(tiny_config(cache, out, progress=True), resume=True)
    lines = _bar_lines(capsys.readouterr().err)
    assert lines[0].startswith("train: 3/8 steps") and "?step/s" in lines[0]
    assert lines[-1].startswith("train: 8/8 steps") and "epoch 2/2 4/4" in lines[-1]
    assert " 0.00step/s" not in "\n".join(lines)


def test_eval_bar_only_on_a_terminal_or_when_asked(capsys):
    import torch

    from fastmde.engine.evaluate import evaluate

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(x[:, :1], 2.0)

    data = [{"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "depth": torch.full((1, 8, 8), 2.5)}] * 5
    quiet = evaluate(Constant(), data, "fastmde", batch_size=2, progress=None)   # what `fastmde eval` passes
    assert capsys.readouterr().err == ""                                          # stderr is not a terminal here
    asked = evaluate(Constant(), data, "fastmde", batch_size=2, progress=True)
    assert "eval: " in capsys.readouterr().err
    assert quiet == asked and quiet["rms"] == pytest.approx(0.5)
