"""Binomial (revolve) checkpoint schedules, pure Python (Griewank & Walther 2000, "Algorithm 799: revolve").

Reversing ``n`` steps while holding at most ``c`` intermediate states (the input
state is always held and not counted) costs ``t(n, c)`` extra step evaluations,

    t(1, c) = 0;  t(n, 0) = n(n-1)/2;  t(n, c) = min_{1<=m<n} [ m + t(n-m, c-1) + t(m, c) ],

and :func:`revolve_schedule` produces a sequence of actions that attains it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import comb
from typing import Optional, Union


@dataclass(frozen=True)
class Advance:
    """Run steps ``start .. stop-1`` without a graph from the held state ``start``;
    hold the result as state ``stop``. ``store`` is False for a transient state that the
    next action consumes (it occupies no checkpoint slot)."""

    start: int
    stop: int
    store: bool


@dataclass(frozen=True)
class Reverse:
    """Re-evaluate step ``step`` from the held state ``step`` under autograd and pull the
    adjoint back through it (one vector–Jacobian product)."""

    step: int


@dataclass(frozen=True)
class Free:
    """Release held state ``index``."""

    index: int


Action = Union[Advance, Reverse, Free]


def _check(n: int, c: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of steps must be an int >= 1, got {n!r}")
    if not isinstance(c, int) or isinstance(c, bool) or c < 0:
        raise ValueError(f"checkpoint slots must be an int >= 0, got {c!r}")


def _cost(n: int, c: int) -> int:
    """Closed form of the recursion (Griewank 1992): with ``s = c + 1`` states held (input
    included) and ``r`` the least integer with ``C(s + r, s) >= n``, ``t(n, c) = r n - C(s + r, s + 1)``.
    The tests check it against the recursion itself."""
    s, r = c + 1, 0
    while comb(s + r, s) < n:
        r += 1
    return r * n - comb(s + r, s + 1)


@lru_cache(maxsize=4096)
def _split(n: int, c: int) -> int:
    """The least ``m`` attaining the minimum in the recursion (``n >= 2``, ``c >= 1``)."""
    if c >= n - 1:
        return 1
    return min(range(1, n), key=lambda m: m + _cost(n - m, c - 1) + _cost(m, c))


def binomial_cost(n: int, c: int) -> int:
    """``t(n, c)``: the minimal number of extra (recomputed) steps to reverse ``n`` steps
    with ``c`` checkpoint slots."""
    _check(n, c)
    return _cost(n, c)


def optimal_split(n: int, c: int) -> int:
    """The first state ``m`` to checkpoint when reversing ``n`` steps with ``c > 0`` slots."""
    _check(n, c)
    if c == 0 or n == 1:
        raise ValueError(f"optimal_split needs n >= 2 and c >= 1, got n={n}, c={c}")
    return _split(n, c)


def slots_for(n: int, checkpoints: Optional[int]) -> int:
    """Slots the schedule uses: ``checkpoints=None`` means every state (``n - 1`` slots);
    more than ``n - 1`` slots are never needed."""
    return n - 1 if checkpoints is None else min(checkpoints, n - 1)


def revolve_schedule(n: int, c: int) -> list[Action]:
    """Actions that reverse ``n`` steps from the held input state 0 with at most ``c`` slots.

    The reversals appear in the order ``n-1, ..., 0``; the total number of steps advanced
    equals :func:`binomial_cost` ``(n, c)``.
    """
    _check(n, c)
    actions: list[Action] = []

    def rec(s: int, n: int, c: int) -> None:
        if n == 1:
            actions.append(Reverse(s))
        elif c >= n - 1:  # every state fits: store them all (iteratively; deep recursion otherwise)
            actions.extend(Advance(s + k, s + k + 1, store=True) for k in range(n - 1))
            for k in range(n - 1, 0, -1):
                actions.extend([Reverse(s + k), Free(s + k)])
            actions.append(Reverse(s))
        elif c == 0:
            for k in range(n - 1, 0, -1):
                actions.extend([Advance(s, s + k, store=False), Reverse(s + k), Free(s + k)])
            actions.append(Reverse(s))
        else:
            m = _split(n, c)
            actions.append(Advance(s, s + m, store=True))
            rec(s + m, n - m, c - 1)
            actions.append(Free(s + m))
            rec(s, m, c)

    rec(0, n, c)
    return actions


def first_sweep(n: int, c: int) -> list[int]:
    """States that the schedule computes before its first reversal (in order): the states a
    forward pass can keep so that backward need not recompute them (``keep_forward``)."""
    out = []
    for action in revolve_schedule(n, c):
        if isinstance(action, Reverse):
            break
        if isinstance(action, Advance):
            out.append(action.stop)
    return out
