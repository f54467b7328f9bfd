"""The fixed-step time loop shared by every gradient mode."""
from __future__ import annotations

from typing import Callable, Optional

from .stepper import State, Time, VectorField, rk_step
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
) -> State:
    """Take ``steps`` RK steps of size ``h`` from ``(t0, y0)``; returns ``y(t0 + steps*h)``.

    Step ``n`` starts at ``t_n = t0 + n h`` (computed, not accumulated, so the step times are
    reproducible when a step is recomputed in isolation); ``t0`` and ``h`` are floats, or 0-dim
    float64 tensors to differentiate with respect to the interval. ``before_step(n)`` runs before step
    ``n`` (used to log RNG states); ``callback(n, y_n)`` sees every step state.
    """
    y = y0
    for n in range(steps):
        if callback is not None:
            callback(n, y)
        if before_step is not None:
            before_step(n)
        y = rk_step(func, t0 + n * h, y, h, tableau)
    if callback is not None:
        callback(steps, y)
    return y
