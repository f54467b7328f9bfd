"""The public solve: ``anodev2.odeint``. Validates at the edge, normalises the state to a
tuple of tensors once, and dispatches to a gradient mode in :mod:`anodev2.adjoint`."""
from __future__ import annotations

import math
import numbers
from typing import Callable, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from .adjoint import GRAD_MODES, SolveSpec, solve_backprop, solve_backsolve, solve_checkpoint
from .solvers import StepCallback, get_tableau
from .stats import SolveStats

StateLike = Union[Tensor, tuple[Tensor, ...]]


def _as_float(name: str, value) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


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
    if params is None:
        return tuple(func.parameters()) if isinstance(func, nn.Module) else ()
    params = tuple(params)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] must be a Tensor, got {type(p).__name__}")
    return params


def odeint(
    func: Callable[[Tensor, StateLike], StateLike],
    y0: StateLike,
    t0: float = 0.0,
    t1: float = 1.0,
    steps: int = 4,
    method: str = "rk4",
    grad: str = "checkpoint",
    checkpoints: Optional[int] = None,
    params: Optional[Iterable[Tensor]] = None,
    stats: Optional[SolveStats] = None,
    *,
    callback: Optional[StepCallback] = None,
    preserve_rng: bool = True,
    keep_forward: bool = False,
) -> StateLike:
    """Solve ``dy/dt = func(t, y)`` from ``t0`` to ``t1`` with ``steps`` fixed explicit RK steps.

    Args:
        func: ``func(t, y) -> dy/dt`` with the structure, shapes and dtypes of ``y``;
            ``t`` is a 0-dim tensor. If ``func`` is an ``nn.Module`` its BatchNorm running
            statistics are left untouched by recomputation in backward.
        y0: a Tensor, or a tuple of Tensors of any shapes (e.g. ``(z [B,C,H,W], θ [O,I,k,k])``),
            floating dtype, one device.
        t0, t1: integration interval; ``t1 < t0`` integrates backwards in time.
        steps: number of steps Nt >= 1 (step ``h = (t1 - t0) / Nt``).
        method: "euler", "midpoint" (alias "rk2"), "heun" or "rk4".
        grad: "backprop" (autograd through the loop), "checkpoint" (exact discrete adjoint,
            ANODE) or "backsolve" (Chen et al. reverse-time adjoint; inexact baseline).
        checkpoints: for grad="checkpoint": None keeps every step state during backward,
            an int c >= 0 holds at most c states placed by the binomial (revolve) schedule.
        params: tensors ``func`` depends on that need gradients (default: ``func.parameters()``
            for a Module). With "checkpoint"/"backsolve", tensors ``func`` closes over that are
            not listed here receive no gradient.
        stats: optional :class:`SolveStats`, reset and filled by this solve and its backward.
        callback: ``callback(n, y_n)`` sees the (tuple) state at every step time t_0..t_Nt.
        preserve_rng: re-draw the forward pass's random numbers in recomputed steps.
        keep_forward: grad="checkpoint" only. Keep, from the forward pass, the states the
            backward's first sweep would recompute (every state for ``checkpoints=None``, the
            ``c`` revolve checkpoints otherwise) instead of only ``y0``: backward then skips
            that sweep (about ``steps`` fewer step evaluations), and the same gradient, at the
            price of holding those states from forward until backward.
    Returns:
        ``y(t1)`` with the structure of ``y0``.
    """
    tableau = get_tableau(method)
    if grad not in GRAD_MODES:
        raise ValueError(f"grad={grad!r} is not supported; allowed: {list(GRAD_MODES)}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if checkpoints is not None and (isinstance(checkpoints, bool) or not isinstance(checkpoints, numbers.Integral)
                                    or checkpoints < 0):
        raise ValueError(f"checkpoints must be None (keep every state) or an int >= 0, got {checkpoints!r}")
    if checkpoints is not None and grad != "checkpoint":
        raise ValueError(f"checkpoints={checkpoints!r} only applies to grad='checkpoint', not grad={grad!r}")
    if keep_forward and grad != "checkpoint":
        raise ValueError(f"keep_forward=True only applies to grad='checkpoint', not grad={grad!r}")
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}")
    t0, t1 = _as_float("t0", t0), _as_float("t1", t1)
    is_tensor, state = _normalise_state(y0)
    params = _normalise_params(func, params)
    stats = SolveStats() if stats is None else stats
    stats.reset(method=tableau.name, grad=grad, steps=int(steps), stages=tableau.stages,
                checkpoints=None if checkpoints is None else int(checkpoints))
    spec = SolveSpec(func=_tuple_func(func, is_tensor, state), tableau=tableau, t0=t0, t1=t1, steps=int(steps),
                     n_state=len(state), stats=stats, module=func if isinstance(func, nn.Module) else None,
                     checkpoints=None if checkpoints is None else int(checkpoints), preserve_rng=preserve_rng,
                     keep_forward=bool(keep_forward), callback=callback)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (*state, *params))
    if grad == "backprop" or not needs_grad:
        y1 = solve_backprop(spec, state)
    elif grad == "checkpoint":
        y1 = solve_checkpoint(spec, state, params)
    else:
        y1 = solve_backsolve(spec, state, params)
    return y1[0] if is_tensor else y1
