"""One explicit Runge–Kutta step over a tuple of tensors, written once for every tableau.

The state is always a tuple of tensors here (normalised at the edge in
:func:`anodev2.odeint`). The step is lean: each stage input and the update are
built with one fused ``torch.add(..., alpha=)`` followed by in-place
``add_(..., alpha=)`` per extra nonzero coefficient, so no temporary tensors are
allocated for the weighted sums (safe under autograd: ``add`` saves no inputs).

The start time ``t`` and step ``h`` are Python floats, or 0-dim float64 tensors when the
gradient with respect to the integration interval is wanted; then the weights ``h a_ij``,
``h b_i`` and the stage times are tensors in the graph (``addcmul``, which saves ``k`` and
the weight but not the accumulator, so the in-place accumulation stays safe).
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from .tableau import ButcherTableau

State = tuple[Tensor, ...]
VectorField = Callable[[Tensor, State], State]
#: A time or step size: a float, or a 0-dim float64 tensor (differentiable times).
Time = Union[float, Tensor]


def _axpy(y: State, terms: Sequence[tuple[Time, State]]) -> State:
    """Return ``y + Σ w_j k_j`` per tensor of the tuple (``terms`` with w_j != 0)."""
    if not terms:
        return y
    out = []
    for i, yi in enumerate(y):
        acc = None
        for w, k in terms:
            if isinstance(w, Tensor):
                w = w.to(device=k[i].device, dtype=k[i].dtype)
                acc = torch.addcmul(yi, k[i], w) if acc is None else acc.addcmul_(k[i], w)
            else:
                acc = torch.add(yi, k[i], alpha=w) if acc is None else acc.add_(k[i], alpha=w)
        out.append(acc)
    return tuple(out)


def _stage_time(t: Time, c: float, h: Time, like: Tensor) -> Tensor:
    if isinstance(t, Tensor) or isinstance(h, Tensor):
        return (t + c * h).to(device=like.device, dtype=like.dtype)
    return torch.full((), t + c * h, dtype=like.dtype, device=like.device)


def rk_step(func: VectorField, t: Time, y: State, h: Time, tableau: ButcherTableau) -> State:
    """Advance ``y`` from ``t`` to ``t + h`` with one step of ``tableau``.

    Args:
        func: ``func(t, y) -> dy/dt``; ``t`` is a 0-dim tensor of y[0]'s dtype and device.
        t: start time of the step (float or 0-dim tensor).
        y: state, a tuple of tensors of any shapes.
        h: step size (negative integrates backwards in time; float or 0-dim tensor).
        tableau: the explicit RK scheme.
    Returns:
        The state at ``t + h``, a new tuple with the shapes of ``y``.
    """
    ref = y[0]
    ks: list[State] = []
    for i in range(tableau.stages):
        yi = _axpy(y, [(h * a, ks[j]) for j, a in enumerate(tableau.a[i]) if a != 0.0])
        ks.append(func(_stage_time(t, tableau.c[i], h, ref), yi))
    return _axpy(y, [(h * b, ks[i]) for i, b in enumerate(tableau.b) if b != 0.0])
