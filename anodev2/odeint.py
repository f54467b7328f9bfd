"""The public solve: ``anodev2.odeint``. Validates at the edge, normalises the state to a
tuple of tensors once, and dispatches to a gradient mode in :mod:`anodev2.adjoint`.

The defaults below are shared by :func:`odeint` and :class:`anodev2.ODEBlock` (one set):
``rk4`` with 4 steps is fourth order, so a default solve is accurate (error O(h^4)) for
16 evaluations of ``func``; ``Checkpoint()`` gives the exact gradient of that computed solve
with memory independent of the step count (every state held during backward, no graph kept
between forward and backward). Networks that want cheap blocks ask for them
(``anodev2.models`` variants use euler x 3; the ANODE repository's setting, euler x 2, is
what the paper configs pin).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from .adjoint import Backprop, Checkpoint, Grad, get_grad_mode
from .adjoint.registry import reject_loose_options
from .adjoint.base import SolveSpec
from .solvers import Method, StepCallback, get_tableau
from .stats import SolveStats

StateLike = Union[Tensor, tuple[Tensor, ...]]


#: Default number of steps Nt of :func:`odeint` and :class:`anodev2.ODEBlock`.
DEFAULT_STEPS = 4
#: Default explicit RK method (a name in :data:`anodev2.solvers.TABLEAUX`).
DEFAULT_METHOD = "rk4"
#: Default gradient mode: the exact checkpointed discrete adjoint, every state held.
DEFAULT_GRAD = Checkpoint()


def _as_time(name: str, value) -> float:
    """The float value of ``t0`` / ``t1`` (a real number or a one-element tensor)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        if value.requires_grad and not value.is_floating_point():
            raise TypeError(f"{name} requires grad but has dtype {value.dtype}; use a floating tensor")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number or a one-element tensor, got {value!r}")
    return float(value)


def _time_inputs(t0, t1, t0f: float, t1f: float) -> tuple[Tensor, ...]:
    """``(t0, t1)`` as tensors if either is a tensor that requires grad (under grad mode):
    then the solve differentiates with respect to the interval; else ``()``."""
    if not torch.is_grad_enabled() or not any(isinstance(t, Tensor) and t.requires_grad for t in (t0, t1)):
        return ()
    return tuple(t if isinstance(t, Tensor) else torch.tensor(f, dtype=torch.float64)
                 for t, f in ((t0, t0f), (t1, t1f)))


def _normalise_state(y0: StateLike) -> tuple[bool, tuple[Tensor, ...]]:
    """Return (was_a_tensor, state tuple) after checking every entry is a floating tensor."""
    is_tensor = isinstance(y0, Tensor)
    state = (y0,) if is_tensor else y0
    if not isinstance(state, (tuple, list)) or len(state) == 0:
        raise TypeError(f"y0 must be a Tensor or a non-empty tuple of Tensors, got {type(y0).__name__}")
    for i, y in enumerate(state):
        if not isinstance(y, Tensor):
            raise TypeError(f"y0[{i}] must be a Tensor, got {type(y).__name__}")
        if not y.is_floating_point():
            raise TypeError(f"y0{'' if is_tensor else f'[{i}]'} has dtype {y.dtype}; odeint needs a floating "
                            "dtype (float16, bfloat16, float32 or float64)")
    devices = {y.device for y in state}
    if len(devices) > 1:
        raise ValueError(f"all state tensors must be on one device, got {sorted(map(str, devices))}")
    return is_tensor, tuple(state)


def _tuple_func(func: Callable, is_tensor: bool, state: tuple[Tensor, ...]) -> Callable:
    """Wrap ``func`` so it maps tuples to tuples, checking its output structure every call.
    An output of another floating dtype (autocast) is cast to the state's dtype, so the state
    keeps its precision through the solve."""
    shapes = [y.shape for y in state]
    dtypes = [y.dtype for y in state]

    def wrapped(t: Tensor, y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        out = func(t, y[0] if is_tensor else y)
        if is_tensor:
            if not isinstance(out, Tensor):
                raise TypeError(f"func returned {type(out).__name__} but y0 is a Tensor; it must return a Tensor")
            out = (out,)
        elif not isinstance(out, (tuple, list)) or len(out) != len(state):
            got = f"{type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
            raise TypeError(f"func must return a tuple of {len(state)} Tensors like y0, got {got}")
        for i, (o, s) in enumerate(zip(out, shapes)):
            if not isinstance(o, Tensor) or o.shape != s or not o.is_floating_point():
                desc = f"{tuple(o.shape)} {o.dtype}" if isinstance(o, Tensor) else type(o).__name__
                raise ValueError(f"func output {i} is {desc}, but the state entry is {tuple(s)} {dtypes[i]}: "
                                 "dy/dt must be a floating tensor with the shape of y")
        if any(o.dtype != d for o, d in zip(out, dtypes)):  # e.g. a bf16 output under autocast
            out = tuple(o.to(d) for o, d in zip(out, dtypes))
        return tuple(out)

    return wrapped


def _normalise_params(func: Callable, params: Optional[Iterable[Tensor]]) -> tuple[Tensor, ...]:
    """The tensors to differentiate besides the state, each once (deduplicated by identity:
    a tensor listed twice would otherwise get its gradient twice from the adjoint modes)."""
    if params is None:
        params = tuple(func.parameters()) if isinstance(func, nn.Module) else ()
    out: dict[int, Tensor] = {}
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] must be a Tensor, got {type(p).__name__}")
        out.setdefault(id(p), p)
    return tuple(out.values())


def odeint(
    func: Callable[[Tensor, StateLike], StateLike],
    y0: StateLike,
    t0: Union[float, Tensor] = 0.0,
    t1: Union[float, Tensor] = 1.0,
    *,
    steps: int = DEFAULT_STEPS,
    method: Method = DEFAULT_METHOD,
    grad: Grad = DEFAULT_GRAD,
    params: Optional[Iterable[Tensor]] = None,
    stats: Optional[SolveStats] = None,
    callback: Optional[StepCallback] = None,
    **removed,
) -> StateLike:
    """Solve ``dy/dt = func(t, y)`` from ``t0`` to ``t1`` with ``steps`` fixed explicit RK steps.

    Args:
        func: ``func(t, y) -> dy/dt`` with the structure, shapes and dtypes of ``y``;
            ``t`` is a 0-dim tensor. If ``func`` is an ``nn.Module`` its BatchNorm running
            statistics are left untouched by recomputation in backward.
        y0: a Tensor, or a tuple of Tensors of any shapes (e.g. ``(z [B,C,H,W], θ [O,I,k,k])``),
            floating dtype, one device.
        t0, t1: integration interval, numbers or one-element tensors; ``t1 < t0`` integrates
            backwards in time. A tensor with ``requires_grad`` gets its gradient in every grad
            mode (exact for backprop and checkpoint; the continuous-adjoint formula for backsolve).
        steps: number of steps Nt >= 1 (step ``h = (t1 - t0) / Nt``). Default 4.
        method: a name ("euler", "midpoint" (alias "rk2"), "heun", "rk4"; default "rk4") or an
            :class:`anodev2.solvers.ButcherTableau`.
        grad: ``anodev2.Backprop()`` (autograd through the loop), ``anodev2.Checkpoint(...)``
            (exact discrete adjoint, ANODE; the default, every state held), ``anodev2.Backsolve()``
            (Chen et al. reverse-time adjoint; inexact baseline), their names "backprop",
            "checkpoint", "backsolve" (default options), or a mapping
            ``{"mode": "checkpoint", "checkpoints": 2}`` (the config spelling; mode defaults to
            "checkpoint"); resolved by
            :func:`anodev2.adjoint.get_grad_mode`.
        params: tensors ``func`` depends on that need gradients (default: ``func.parameters()``
            for a Module); duplicates are ignored. With checkpoint/backsolve, tensors ``func``
            closes over that are not listed here receive no gradient.
        stats: optional :class:`SolveStats`, reset and filled by this solve and its backward.
        callback: ``callback(n, y_n)`` sees the (tuple) state at every step time t_0..t_Nt.
    Returns:
        ``y(t1)`` with the structure of ``y0``.
    Raises:
        TypeError: for the API v1 keywords ``checkpoints``, ``keep_forward``, ``preserve_rng``
            (now ``grad=anodev2.Checkpoint(...)``), naming the new spelling.
    """
    reject_loose_options("odeint", removed)
    tableau = get_tableau(method)
    mode = get_grad_mode(grad, default_mode=DEFAULT_GRAD.name)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}")
    t0f, t1f = _as_time("t0", t0), _as_time("t1", t1)
    is_tensor, state = _normalise_state(y0)
    params = _normalise_params(func, params)
    times = _time_inputs(t0, t1, t0f, t1f)
    if stats is not None and not isinstance(stats, SolveStats):
        raise TypeError(f"stats must be an anodev2.SolveStats or None, got {type(stats).__name__} {stats!r}")
    stats = SolveStats() if stats is None else stats
    stats.reset(method=tableau.name, grad=mode.name, steps=int(steps), stages=tableau.stages,
                checkpoints=mode.checkpoints if isinstance(mode, Checkpoint) else None)
    spec = SolveSpec(func=_tuple_func(func, is_tensor, state), tableau=tableau, t0=t0f, t1=t1f, steps=int(steps),
                     n_state=len(state), stats=stats, module=func if isinstance(func, nn.Module) else None,
                     callback=callback, time_grad=bool(times))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (*state, *times, *params))
    y1 = (mode if needs_grad else Backprop()).solve(spec, state, times, params)
    return y1[0] if is_tensor else y1
