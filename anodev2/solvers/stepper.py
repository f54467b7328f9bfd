"""One explicit Runge–Kutta step over a tuple of tensors, written once for every tableau.

The state is always a tuple of tensors here (normalised at the edge in
:func:`anodev2.odeint`). The step is lean: each stage input and the update are
built with one fused ``torch.add(..., alpha=)`` followed by in-place
``add_(..., alpha=)`` per extra nonzero coefficient, so no temporary tensors are
allocated for the weighted sums (safe under autograd: ``add`` saves no inputs), and
stage derivatives are released as soon as no later stage reads them.

The start time ``t`` and step ``h`` are Python floats, or 0-dim float64 tensors when the
gradient with respect to the integration interval is wanted; then the weights ``h a_ij``,
``h b_i`` and the stage times are tensors in the graph (``addcmul``, which saves ``k`` and
the weight but not the accumulator, so the in-place accumulation stays safe).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .tableau import ButcherTableau

State = tuple[Tensor, ...]
VectorField = Callable[[Tensor, State], State]
#: A time or step size: a float, or a 0-dim float64 tensor (differentiable times).
Time = Union[float, Tensor]


def _add_into(acc: Tensor, w: Time, k: Tensor) -> Tensor:
    """``acc += w k`` in place (``acc`` is a tensor this step created)."""
    if isinstance(w, Tensor):
        return acc.addcmul_(k, w.to(device=k.device, dtype=k.dtype))
    return acc.add_(k, alpha=w)


def _new_sum(y: Tensor, w: Time, k: Tensor) -> Tensor:
    """A new tensor ``y + w k``."""
    if isinstance(w, Tensor):
        return torch.addcmul(y, k, w.to(device=k.device, dtype=k.dtype))
    return torch.add(y, k, alpha=w)


def _axpy(y: State, terms: Sequence[tuple[Time, State]]) -> State:
    """Return ``y + Σ w_j k_j`` per tensor of the tuple (``terms`` with w_j != 0)."""
    if not terms:
        return y
    out = []
    for i, yi in enumerate(y):
        acc = _new_sum(yi, terms[0][0], terms[0][1][i])
        for w, k in terms[1:]:
            acc = _add_into(acc, w, k[i])
        out.append(acc)
    return tuple(out)


def _stage_time(t: Time, c: float, h: Time, like: Tensor) -> Tensor:
    if isinstance(t, Tensor) or isinstance(h, Tensor):
        return (t + c * h).to(device=like.device, dtype=like.dtype)
    return torch.full((), t + c * h, dtype=like.dtype, device=like.device)


_PLANS: dict[int, tuple[ButcherTableau, "_Plan"]] = {}


class _Plan:
    """What :func:`rk_step` reads from a tableau, precomputed once per tableau object (looked up
    by identity: hashing the frozen tableau costs more than the lookup saves): the number of
    stages, each stage's nonzero ``(j, a_ij)``, ``b``, and ``last[j]``, the last stage whose
    input reads ``k_j`` (``j`` itself if none does)."""

    __slots__ = ("stages", "rows", "b", "last")

    def __init__(self, tableau: ButcherTableau) -> None:
        s = tableau.stages
        self.stages = s
        self.rows = tuple(tuple((j, a) for j, a in enumerate(tableau.a[i]) if a != 0.0) for i in range(s))
        self.b = tableau.b
        self.last = tuple(max([i for i in range(j + 1, s) if tableau.a[i][j] != 0.0], default=j) for j in range(s))


def _plan(tableau: ButcherTableau) -> _Plan:
    hit = _PLANS.get(id(tableau))
    if hit is not None and hit[0] is tableau:
        return hit[1]
    plan = _Plan(tableau)
    if len(_PLANS) > 256:
        _PLANS.clear()
    _PLANS[id(tableau)] = (tableau, plan)
    return plan


def stage_time_values(t0: float, h: float, steps: int, tableau: ButcherTableau) -> list[float]:
    """The stage times ``(t0 + n h) + c_i h`` of a solve as Python floats, in evaluation order
    (step n, then stage i): the values :func:`rk_step` computes."""
    return [(t0 + n * h) + c * h for n in range(steps) for c in tableau.c]


def stage_times(t0: float, h: float, steps: int, tableau: ButcherTableau, like: Tensor) -> tuple[tuple[Tensor, ...], ...]:
    """The stage times ``t_n + c_i h`` of a whole solve as 0-dim tensors of ``like``'s dtype and
    device, ``[n][i]``, made with one tensor creation (views of one buffer; read-only for ``func``).
    Each value is the float ``(t0 + n h) + c_i h`` that :func:`rk_step` would compute, so a step
    gets bitwise the same ``t`` with or without this table. Each tensor also carries that float as
    the attribute ``time_value`` (:func:`time_value`), so a vector field that needs t on the host
    (per-time normalisation) reads it without a device-to-host copy."""
    values = stage_time_values(t0, h, steps, tableau)
    flat = torch.tensor(values, dtype=like.dtype, device=like.device).unbind(0)
    if not torch.compiler.is_compiling():  # dynamo cannot trace setattr on a tensor
        for v, t in zip(values, flat):
            t.time_value = v
    s = tableau.stages
    return tuple(flat[n * s:(n + 1) * s] for n in range(steps))


def time_value(t: Union[float, Tensor]) -> float:
    """``t`` as a Python float: the float a stage-time tensor of :func:`stage_times` was made from
    (no device-to-host copy), else ``float(t)``."""
    if isinstance(t, float):
        return t
    value = getattr(t, "time_value", None)
    return float(t) if value is None else value


def rk_step(func: VectorField, t: Time, y: State, h: Time, tableau: ButcherTableau,
            times: Optional[Sequence[Tensor]] = None) -> State:
    """Advance ``y`` from ``t`` to ``t + h`` with one step of ``tableau``.

    The update ``y + h Σ b_i k_i`` is accumulated as each stage finishes (same order of
    summation as the formula) and each ``k_j`` is released after the last stage input that
    reads it, so at most the stages still needed are alive (RK4: one or two instead of four).

    Args:
        func: ``func(t, y) -> dy/dt``; ``t`` is a 0-dim tensor of y[0]'s dtype and device.
        t: start time of the step (float or 0-dim tensor).
        y: state, a tuple of tensors of any shapes.
        h: step size (negative integrates backwards in time; float or 0-dim tensor).
        tableau: the explicit RK scheme.
        times: the step's stage times as tensors (a row of :func:`stage_times`), or None to
            make them here.
    Returns:
        The state at ``t + h``, a new tuple with the shapes of ``y``.
    """
    plan = _plan(tableau)
    last = plan.last
    ks: list[Optional[State]] = [None] * plan.stages
    out: Optional[list[Tensor]] = None
    for i, row in enumerate(plan.rows):
        yi = _axpy(y, [(h * a, ks[j]) for j, a in row]) if row else y
        for j in range(i):
            if last[j] == i:
                ks[j] = None
        k = func(_stage_time(t, tableau.c[i], h, y[0]) if times is None else times[i], yi)
        del yi
        b = plan.b[i]
        if b != 0.0:
            if out is None:
                out = [_new_sum(yv, h * b, kv) for yv, kv in zip(y, k)]
            else:
                out = [_add_into(acc, h * b, kv) for acc, kv in zip(out, k)]
        if last[i] > i:
            ks[i] = k
        del k
    assert out is not None  # sum(b) = 1 (checked by ButcherTableau)
    return tuple(out)
