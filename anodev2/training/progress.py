"""Progress of a training or evaluation pass: tqdm on a terminal, plain lines otherwise.

A run whose output goes to a file (``nohup ... > log``) gets one line

    epoch 3/350 train 120/391 (31%) loss 1.2345 812 img/s elapsed 0:00:47 ETA 0:01:46

at most ``interval`` seconds apart and at least every 10 % of the pass (and one at its end),
so a log never stays silent long enough to be mistaken for a hang.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` of a non-negative duration."""
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Report ``update(images, loss)`` calls of a pass of ``total`` steps.

    Args:
        desc: prefix of every line, e.g. ``"epoch 3/350 train"``.
        total: steps in the pass (>= 0).
        enabled: False = silent (non-main ranks, ``log.progress=false``).
        interval: seconds between plain lines (> 0); a line is also written at each 10 % of ``total``.
        stream: where plain lines go (default stdout, next to the epoch summaries).
        tty: force terminal (tqdm) or plain mode; default: whether stderr is a terminal.
        clock: time source (seconds), replaceable in tests.
    """

    def __init__(self, desc: str, total: int, enabled: bool = True, interval: float = 30.0,
                 stream: Optional[TextIO] = None, tty: Optional[bool] = None,
                 clock: Callable[[], float] = time.perf_counter):
        if total < 0:
            raise ValueError(f"total={total} is not allowed; allowed: >= 0 steps")
        if not interval > 0:
            raise ValueError(f"interval={interval} is not allowed; allowed: > 0 seconds")
        self.desc, self.total, self.interval, self.clock = desc, total, interval, clock
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.step = self.images = 0
        self.loss_sum = 0.0
        self.start = self.last_line = clock()
        self.next_tenth = 1
        self._bar = None
        if enabled and (sys.stderr.isatty() if tty is None else tty):
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, images: int, loss: float) -> None:
        """One step of ``images`` images with mean loss ``loss``."""
        self.step += 1
        self.images += images
        self.loss_sum += loss * images
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{self.mean_loss:.3f}")
            return
        now = self.clock()
        tenth_due = self.total > 0 and self.step * 10 >= self.next_tenth * self.total
        if tenth_due or now - self.last_line >= self.interval or self.step == self.total:
            while self.total > 0 and self.next_tenth * self.total <= self.step * 10:
                self.next_tenth += 1
            self.last_line = now
            print(self.line(now), file=self.stream, flush=True)

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.images if self.images else float("nan")

    def line(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        eta = elapsed / self.step * (self.total - self.step) if self.step else 0.0
        pct = 100 * self.step // self.total if self.total else 100
        return (f"{self.desc} {self.step}/{self.total} ({pct}%) loss {self.mean_loss:.4f} {rate:.0f} img/s "
                f"elapsed {format_duration(elapsed)} ETA {format_duration(eta)}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
