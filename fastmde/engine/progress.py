"""A dependency-free progress line on stderr: step, it/s, loss, ETA."""
from __future__ import annotations

import sys
import time


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``update(done, loss)`` redraws ``desc [done/total] 3.1 it/s loss 0.512 ETA 1:02``.

    On a terminal the line is redrawn in place (at most 5 times a second); otherwise (logs,
    CI) a line is printed every ``interval`` seconds.
    """

    def __init__(self, total: int, desc: str = "", *, enabled: bool = True, stream=None,
                 interval: float = 10.0, eta_fn=None):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.2 if self.tty else interval
        self.start = time.perf_counter()
        self.last_draw = 0.0
        self.done0 = None
        self.eta_fn = eta_fn
        self.line = ""

    def update(self, done: int, loss: float | None = None, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.done0 is None:
            self.done0, self.start = done, now
            return
        if not force and now - self.last_draw < self.interval:
            return
        self.last_draw = now
        rate = (done - self.done0) / max(now - self.start, 1e-9)
        eta = self.eta_fn(rate) if self.eta_fn else ((self.total - done) / rate if rate > 0 else float("inf"))
        eta_text = format_seconds(eta) if eta != float("inf") else "?"
        loss_text = f" loss {loss:.4f}" if loss is not None else ""
        self.line = f"{self.desc} [{done}/{self.total}] {rate:.2f} it/s{loss_text} ETA {eta_text}"
        if self.tty:
            self.stream.write("\r" + self.line.ljust(79))
        else:
            self.stream.write(self.line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.line:
            self.stream.write("\n")
            self.stream.flush()
