"""One explicit Runge–Kutta step over a tuple of tensors, written once for every tableau.

The state is always a tuple of tensors here (normalised at the edge in
:func:`anodev2.odeint`). The step is lean: each stage input and the update are
built with one fused ``torch.add(..., alpha=)`` followed by in-place
``add_(..., alpha=)`` per extra nonzero coefficient, so no temporary tensors are
allocated for the weighted sums (safe under autograd: ``add`` saves no inputs).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .tableau import ButcherTableau

State = tuple[Tensor, ...]
VectorField = Callable[[Tensor, State], State]


def _axpy(y: State, terms: Sequence[tuple[float, State]]) -> State:
    """Return ``y + Σ w_j k_j`` per tensor of the tuple (``terms`` with w_j != 0)."""
    if not terms:
        return y
    (w0, k0), rest = terms[0], terms[1:]
    out = []
    for i, yi in enumerate(y):
        acc = torch.add(yi, k0[i], alpha=w0)
        for w, k in rest:
            acc.add_(k[i], alpha=w)
        out.append(acc)
    return tuple(out)


def rk_step(func: VectorField, t: float, y: State, h: float, tableau: ButcherTableau) -> State:
    """Advance ``y`` from ``t`` to ``t + h`` with one step of ``tableau``.

    Args:
        func: ``func(t, y) -> dy/dt``; ``t`` is a 0-dim tensor of y[0]'s dtype and device.
        t: start time of the step.
        y: state, a tuple of tensors of any shapes.
        h: step size (negative integrates backwards in time).
        tableau: the explicit RK scheme.
    Returns:
        The state at ``t + h``, a new tuple with the shapes of ``y``.
    """
    ref = y[0]
    ks: list[State] = []
    for i in range(tableau.stages):
        yi = _axpy(y, [(h * a, ks[j]) for j, a in enumerate(tableau.a[i]) if a != 0.0])
        ti = torch.full((), t + tableau.c[i] * h, dtype=ref.dtype, device=ref.device)
        ks.append(func(ti, yi))
    return _axpy(y, [(h * b, ks[i]) for i, b in enumerate(tableau.b) if b != 0.0])
