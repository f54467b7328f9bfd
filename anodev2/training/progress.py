"""Progress of a training or evaluation pass: tqdm on a terminal, plain lines otherwise.

A run whose output goes to a file (``nohup ... > log``) gets one line

    epoch 3/350 train 120/391 (31%) loss 1.2345 812 img/s elapsed 0:00:47 ETA 0:01:46 run ETA 9:12:05

at least every 10 % of the pass (and one at its end) and at most ``interval`` seconds apart, so a
log never stays silent long enough to be mistaken for a hang:

* each step checks the clock (a line when ``interval`` has passed since the last one);
* a heartbeat thread checks it too, every ``interval / 4`` seconds, so one long step (a slow
  batch, a first CUDA step, a long evaluation batch) does not hold the next line back;
* the time of the last line is shared by the passes writing to one stream, so an evaluation pass
  that follows a training pass writes its first line ``interval`` after the training pass's last
  one, not ``interval`` after its own start.

``ETA`` is this pass's; ``run ETA`` (when the caller gives ``run_eta``, as the trainer does) is the
whole run's: this pass's rest plus the epochs after this one at the mean of the last measured epoch
times (:func:`run_eta`).
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional, Sequence, TextIO

__all__ = ["Progress", "format_duration", "run_eta"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` of a non-negative duration."""
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_eta(history: Sequence[dict], epoch: int, epochs: int, spent: float = 0.0,
            recent: int = 5) -> Callable[[float, float], float]:
    """The whole run's remaining seconds as a function of (this pass's remaining seconds, this pass's projected
    total): the rest of this pass, plus the epochs after epoch ``epoch`` (0-based) of ``epochs`` at the mean
    ``epoch_time`` of the last ``recent`` records of ``history``; before any epoch is measured, at ``spent``
    (what this epoch's earlier passes took: the training pass, for an evaluation pass) plus this pass's total."""
    times = [h["epoch_time"] for h in list(history)[-recent:] if isinstance(h.get("epoch_time"), (int, float))]
    later = max(0, epochs - epoch - 1)

    def eta(pass_remaining: float, pass_total: float) -> float:
        per_epoch = sum(times) / len(times) if times else spent + pass_total
        return pass_remaining + later * per_epoch

    return eta


#: (stream id, clock) -> time of the last plain line written there by any pass
_LAST_LINE: dict = {}


class Progress:
    """Report ``update(images, loss)`` calls of a pass of ``total`` steps.

    Args:
        desc: prefix of every line, e.g. ``"epoch 3/350 train"``.
        total: steps in the pass (>= 0).
        enabled: False = silent (non-main ranks, ``log.progress=false``).
        interval: the most seconds between plain lines (> 0); a line is also written at each 10 % of ``total``.
        stream: where plain lines go (default stdout, next to the epoch summaries).
        tty: force terminal (tqdm) or plain mode; default: whether stderr is a terminal.
        clock: time source (seconds), replaceable in tests.
        run_eta: ``f(pass_remaining_s, pass_total_s) -> run_remaining_s`` (see :func:`run_eta`); adds ``run ETA``.
        heartbeat: check the clock from a background thread too (plain mode); default: only with the real clock
            (a test's fake clock is driven by calling :meth:`tick`).
    """

    def __init__(self, desc: str, total: int, enabled: bool = True, interval: float = 30.0,
                 stream: Optional[TextIO] = None, tty: Optional[bool] = None,
                 clock: Callable[[], float] = time.perf_counter,
                 run_eta: Optional[Callable[[float, float], float]] = None, heartbeat: Optional[bool] = None):
        if total < 0:
            raise ValueError(f"total={total} is not allowed; allowed: >= 0 steps")
        if not interval > 0:
            raise ValueError(f"interval={interval} is not allowed; allowed: > 0 seconds")
        self.desc, self.total, self.interval, self.clock, self.run_eta = desc, total, interval, clock, run_eta
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.step = self.images = 0
        self.loss_sum = 0.0
        self.start = clock()
        self._key = (id(self.stream), clock)
        previous = _LAST_LINE.get(self._key)
        self.last_line = previous if previous is not None and previous <= self.start else self.start
        self.next_tenth = 1
        self._bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if enabled and (sys.stderr.isatty() if tty is None else tty):
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
        elif enabled and (clock is time.perf_counter if heartbeat is None else heartbeat):
            self._thread = threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval / 4):
            self.tick()

    def update(self, images: int, loss: float) -> None:
        """One step of ``images`` images with mean loss ``loss``."""
        with self._lock:
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
                self._write(now)

    def tick(self) -> None:
        """Write a line if ``interval`` has passed since the last one (called by the heartbeat thread)."""
        with self._lock:
            if not self.enabled or self._bar is not None or self._stop.is_set():
                return
            now = self.clock()
            if now - self.last_line >= self.interval:
                self._write(now)

    def _write(self, now: float) -> None:
        self.last_line = now
        _LAST_LINE[self._key] = now
        print(self.line(now), file=self.stream, flush=True)

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.images if self.images else float("nan")

    def line(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        eta = elapsed / self.step * (self.total - self.step) if self.step else 0.0
        pct = 100 * self.step // self.total if self.total else 100
        text = (f"{self.desc} {self.step}/{self.total} ({pct}%) loss {self.mean_loss:.4f} {rate:.0f} img/s "
                f"elapsed {format_duration(elapsed)} ETA {format_duration(eta)}")
        if self.run_eta is not None and self.step:
            text += f" run ETA {format_duration(self.run_eta(eta, elapsed + eta))}"
        return text

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
