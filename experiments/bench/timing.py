"""Timed repetitions of a step: wall and process CPU time (the latter is not inflated by other
processes sharing the cores)."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def time_steps(step: Callable[[], object], warmup: int, repeats: int, on_timed: Callable[[], None] = None) -> dict:
    """Call ``step`` ``warmup`` times untimed, then ``repeats`` times timed.

    ``on_timed`` (optional) is called after every timed step, e.g. to record a split the step
    measured itself. Returns ``{"times_s", "cpu_times_s"}`` (one entry per timed step) and their
    medians ``"time_s"``, ``"cpu_s"``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    times, cpu = [], []
    for i in range(warmup + repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            if on_timed is not None:
                on_timed()
    return {"time_s": statistics.median(times), "times_s": times,
            "cpu_s": statistics.median(cpu), "cpu_times_s": cpu}
