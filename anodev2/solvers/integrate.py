"""The fixed-step time loop shared by every gradient mode."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from torch import Tensor

from .stepper import State, Time, VectorField, rk_step, stage_times
from .tableau import ButcherTableau

#: ``callback(n, y_n)`` is called with the state at every step time ``t_n``, n = 0..steps.
StepCallback = Callable[[int, State], None]


def integrate(
    func: VectorField,
    y0: State,
    t0: Time,
    h: Time,
    steps: int,
    tableau: ButcherTableau,
    callback: Optional[StepCallback] = None,
    before_step: Optional[Callable[[int], None]] = None,
    times: Optional[Sequence[Sequence[Tensor]]] = None,
) -> State:
    """Take ``steps`` RK steps of size ``h`` from ``(t0, y0)``; returns ``y(t0 + steps*h)``.

    Step ``n`` starts at ``t_n = t0 + n h`` (computed, not accumulated, so the step times are
    reproducible when a step is recomputed in isolation); ``t0`` and ``h`` are floats, or 0-dim
    float64 tensors to differentiate with respect to the interval. ``before_step(n)`` runs before step
    ``n`` (used to log RNG states); ``callback(n, y_n)`` sees every step state. ``times`` is the
    table of stage times of :func:`~anodev2.solvers.stepper.stage_times` (made here with one
    tensor creation when ``t0`` and ``h`` are floats and it is not given).
    """
    y = y0
    if times is None and not isinstance(t0, Tensor) and not isinstance(h, Tensor):
        times = stage_times(t0, h, steps, tableau, y0[0])
    for n in range(steps):
        if callback is not None:
            callback(n, y)
        if before_step is not None:
            before_step(n)
        y = rk_step(func, t0 + n * h, y, h, tableau, None if times is None else times[n])
    if callback is not None:
        callback(steps, y)
    return y
