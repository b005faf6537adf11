"""The training progress bar (tqdm) and the lines logged around it.

``Progress`` counts the run's optimiser steps: ``n / total`` where ``total`` is the step this
run will stop at (the rest of the current epoch, the epochs left, ``--max-steps``), and
``initial`` the step a resumed run starts from, so the rate counts only the steps trained since
the start and reads ``?`` (not 0.00) until the first one. The position in the epoch is the
postfix (``epoch 1/3 2/3``), so a bar cut short by ``--max-steps`` still shows the epoch's length.

Where it is drawn (``show``):

- ``None`` (the default): redrawn in place when the stream is a terminal; nothing otherwise
  (a log file or CI output gets no progress lines, only the trainer's own messages);
- ``True``: also when the stream is not a terminal, as one plain line (no ``\\r``, no bar) every
  ``log_interval`` seconds and at the end;
- ``False``: never.
"""
from __future__ import annotations

import sys

from tqdm import tqdm

#: the line written to logs (not a terminal): no bar, one line per ``log_interval``
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:       # a closed stream
        return False


def log_line(text: str, stream=None) -> None:
    """Print a line on ``stream`` (stderr) above a progress bar drawn there, which is redrawn
    under it (``tqdm.write``); without a bar, a plain print."""
    tqdm.write(text, file=stream or sys.stderr)
    (stream or sys.stderr).flush()


class _Lines:
    """A file for tqdm outside a terminal: each redraw (``\\r`` + line + padding) becomes one line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """``update(step, loss)`` after each optimiser step; ``close()`` at the end.

    Args:
        total: the step the run stops at (not the number of steps left).
        initial: the step the run starts from (a resume's saved step).
        show: None (terminal only), True (also in logs), False (never).
        stream: where to draw (stderr).
        log_interval: seconds between lines when not on a terminal.
        time_left: a function giving the seconds ``--time-limit`` leaves (or None): shown
            when set, since the run may stop before ``total``.
    """

    def __init__(self, total: int, *, initial: int = 0, show: bool | None = None, stream=None,
                 log_interval: float = 30.0, time_left=None, desc: str = "train"):
        self.stream = stream or sys.stderr
        self.terminal = is_terminal(self.stream)
        self.shown = bool(show) if show is not None else self.terminal
        self.time_left = time_left
        self.epoch_text = ""
        self.bar = tqdm(
            total=max(total, initial), initial=initial, desc=desc, unit="step", leave=True,
            disable=not self.shown, dynamic_ncols=self.terminal,
            file=self.stream if self.terminal else _Lines(self.stream),
            mininterval=0.2 if self.terminal else log_interval,
            maxinterval=0.2 if self.terminal else log_interval,
            bar_format=None if self.terminal else LOG_FORMAT,
            smoothing=0.1,
        )

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """The epoch now trained (1-based) of ``epochs``."""
        self.epoch_text = f"epoch {epoch}/{epochs}"

    def update(self, step: int, loss: float | None = None, *, epoch_step: tuple[int, int] | None = None,
               force: bool = False) -> None:
        """The run is at ``step`` (absolute) with mean epoch ``loss``; ``epoch_step`` = (steps done
        in this epoch, the epoch's steps); ``force`` redraws now (end of an epoch)."""
        if not self.shown:
            return
        parts = [self.epoch_text + (f" {epoch_step[0]}/{epoch_step[1]}" if epoch_step else "")]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if self.time_left is not None:
            left = self.time_left()
            if left is not None:
                parts.append(f"time limit in {format_seconds(left)}")
        self.bar.set_postfix_str(", ".join(p for p in parts if p), refresh=False)
        if step != self.bar.n:
            self.bar.update(step - self.bar.n)     # tqdm redraws when its interval has passed
        if force:
            self.bar.refresh()

    @property
    def n(self) -> int:
        return self.bar.n

    @property
    def total(self) -> int:
        return self.bar.total

    def close(self) -> None:
        self.bar.close()
